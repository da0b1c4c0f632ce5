"""One generation engine for a block of calls:

    with session(study, model_dir, adapters) as gen:
        completions = gen(chats, spec, what)
        marker, alignment = gen.many([(chats, spec, what), (chats2, spec2, what2)])   # at once where it can
        model, tok = gen.hf_model()      # the same weights as a transformers model (ARC), after the last gen(...)

The engine is the study's ``backend``: transformers (the model loaded once, adapters merged in memory in training
order, or a model the caller already holds) or one vLLM engine (``backend.lora`` says how adapters are wired). Either
way the weights are ``mt_core.model.load.merged_weights`` (the one definition the cell adapter was also trained on) and
are merged at most once: ``hf_model`` hands over the transformers model, or shuts the vLLM engine down and loads the
merged scratch checkpoint it served. That checkpoint lives outside the artefact root and is deleted when the session
ends. ``gen.counts`` says how many engines started and how many merged copies of the weights were made.

In a worker that stays (``mt_core.model.resident``) with ``lora: merge``, nothing is written and no engine stops: the
held base gets the adapters merged in place, the worker's one engine is woken and given those weights in memory, and
``hf_model`` is the same merged model (``held_vllm``).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from mt_core.config import Study
from mt_core.generate.sampling import Completion, SamplingSpec

Generate = Callable[[list[list[dict]], SamplingSpec, str], list[list[Completion]]]


def one_by_one(generate: Generate):
    """``many`` for a backend that generates one batch at a time."""
    return lambda batches: [generate(*b) for b in batches]


class Engine:
    """``engine(chats, spec, what)`` generates; ``engine.many([(chats, spec, what), ...])`` generates several batches
    (at once where the backend can: vLLM); ``hf_model()`` gives the same weights as a transformers model."""

    def __init__(self, generate: Generate, hf_model: Callable[[], tuple], counts: dict, many=None):
        self._generate, self._hf_model, self.counts = generate, hf_model, counts
        self._many = many or one_by_one(generate)

    def __call__(self, chats: list[list[dict]], spec: SamplingSpec, what: str) -> list[list[Completion]]:
        return self._generate(chats, spec, what)

    def many(self, batches: list[tuple[list[list[dict]], SamplingSpec, str]]) -> list[list[list[Completion]]]:
        return self._many(batches)

    def hf_model(self) -> tuple:
        return self._hf_model()


@contextlib.contextmanager
def session(study: Study, model_dir: Path, adapters=(), *, loaded=None,
            log: Callable[[str], None] = print) -> Iterator[Engine]:
    adapters = list(adapters)
    if study.backend.kind == "vllm":
        from mt_core.generate.vllm_engine import require_vllm, vllm_session
        from mt_core import runtime
        from mt_core.layout import artefact_root
        from mt_core.model.load import load_tokenizer

        mode = study.backend.lora
        api = require_vllm()
        from mt_core.model import resident

        if (holder := resident.held()) is not None and mode == "merge":
            with held_vllm(holder, api, model_dir, adapters, log) as engine:
                yield engine
            return
        if holder is not None:  # serving a LoRA needs an engine of its own, and the GPU memory the held base takes
            holder.release()
        root = artefact_root(study, runtime.current().artifacts)  # a str only for an object store URL: no local folder to keep merges out of
        with vllm_session(model_dir, load_tokenizer(model_dir), adapters=adapters, mode=mode, log=log, api=api,
                          artefacts=None if isinstance(root, str) else root) as s:
            yield Engine(s.generate, s.hf_model, s.counts, s.generate_many)
        return
    from mt_core.generate.hf import generate
    from mt_core.model.resident import model_for

    counts = {"engine_starts": 1, "merges": 0 if loaded else int(bool(adapters))}
    with contextlib.nullcontext(loaded) if loaded else model_for(model_dir, adapters, log=log) as (model, tok):
        yield Engine(lambda chats, spec, what: generate(model, tok, chats, spec, log=log, what=what),
                     lambda: (model, tok), counts)


@contextlib.contextmanager
def held_vllm(holder, api, model_dir: Path, adapters: list, log) -> Iterator[Engine]:
    """A worker that stays: its held base with the adapters merged in place (``model_for``) is pushed into the one
    engine the worker keeps for that base (started on first use, asleep between sessions). ``hf_model`` is that
    same merged model: no engine is shut down and nothing is loaded again for ARC."""
    from mt_core.generate.vllm_engine import HeldEngine, VllmSession
    from mt_core.model.resident import model_for

    with model_for(model_dir, adapters, holder, log) as (model, tok):  # lent: holder.model_dir is model_dir now
        if holder.engine is None:
            holder.engine = HeldEngine(api, holder.model_dir, log)
        engine, starts = holder.engine, holder.engine.starts
        engine.log = log
        try:  # asleep again however the session ends (a failed push included): the next step may train
            engine.load(model)
            counts = {"engine_starts": engine.starts - starts, "merges": 0, "merges_in_memory": len(adapters),
                      "engine_pushes": engine.pushes}
            s = VllmSession(engine.llm, api, tok, None, log)
            yield Engine(s.generate, lambda: (model, tok), counts, s.generate_many)
        finally:
            engine.sleep()
