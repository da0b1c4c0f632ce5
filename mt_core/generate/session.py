"""One generation engine for a block of calls:

    with session(study, model_dir, adapters) as gen:
        completions = gen(chats, spec, what)

The engine is the study's ``backend``: transformers (the model loaded once, adapters merged in memory in training
order, or a model the caller already holds) or one vLLM engine (``backend.lora`` says how adapters are wired).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from mt_core.config import Study
from mt_core.generate.sampling import Completion, SamplingSpec

Generate = Callable[[list[list[dict]], SamplingSpec, str], list[list[Completion]]]


@contextlib.contextmanager
def session(study: Study, model_dir: Path, adapters=(), *, loaded=None,
            log: Callable[[str], None] = print) -> Iterator[Generate]:
    if study.backend.kind == "vllm":
        from mt_core.generate.vllm_engine import require_vllm, vllm_session
        from mt_core.model.load import load_tokenizer

        mode = study.backend.lora
        require_vllm()
        with vllm_session(model_dir, load_tokenizer(model_dir), adapters=list(adapters), mode=mode, log=log) as s:
            yield s.generate
        return
    from mt_core.generate.hf import generate
    from mt_core.model.load import load_model

    model, tok = loaded or load_model(model_dir, adapters)
    yield lambda chats, spec, what: generate(model, tok, chats, spec, log=log, what=what)
