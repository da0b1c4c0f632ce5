"""The vLLM generation backend (``pip install .[gpu]``; vllm is imported only inside functions).

Same sampling semantics as ``mt_core.generate`` (the transformers backend): explicit sampler, nothing taken from the
model's generation_config, stop on <|im_end|>/<|endoftext|>, prompts rendered and tokenized the same way, completions
decoded with the same tokenizer. Seeding differs from the reference on purpose: the reference set one engine-level seed
(``LLM(seed=S)``), so a prompt's samples depended on what else was in the batch (PROTOCOL §2.8: the same villain model
gave 261/280, 267/280 and 252/280). Here every request carries its own seed, derived from ``spec.seed`` and the prompt's
token ids (vLLM gives the n children seeds seed+0..n-1), so a prompt's samples do not depend on batch composition or
position (only on bf16 batch numerics), and different prompts do not share one random stream.

LoRA wiring (``mode``, the study's ``backend.lora``): "merge" writes the cell's weights (``mt_core.model.load.
merged_weights`` in bf16: base, then each adapter merged in training order, each stage computed in fp32 and rounded to
bf16 once) as one scratch checkpoint outside the artefact root ($MT_SCRATCH or the system temp folder), serves that,
and deletes it when the session ends (``scratch_checkpoint``); "serve" serves the last adapter through a LoRARequest
(vLLM cannot stack two LoRAs, so any earlier adapter, e.g. the coupling one, is merged into the scratch checkpoint).
Both match PEFT's log-probs within the noise floor of two bf16 engines on the same weights; "merge" is the default
because it is faster per cell (docs/BENCHMARKS.md has the measurements).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from mt_core.generate.sampling import Completion, SamplingSpec, encode_chats, eos_ids
from mt_core.io import DataError, md5_file
from mt_core.model.load import free_cuda

MODES = ("merge", "serve")
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM accepts only these as max_lora_rank
# a held engine sizes itself so that, with the held base, this share of the card is in use; the engine's overhead
# beyond its share comes on top, and the worker must fit an H100 80 GB with room (docs/BENCHMARKS.md)
HELD_CARD_SHARE = 0.80
# decode steps of up to this many sequences run as CUDA graphs (vLLM stops at 512 by default while it batches up to
# 1,024 on an 80 GB card): 6 % more tokens a second on a cell's sweeps (docs/BENCHMARKS.md, gen_bench)
CUDA_GRAPH_MAX_BATCH = 1024


class VllmMissing(ImportError):
    pass


def require_vllm():
    """The vllm API (LLM, SamplingParams, LoRARequest), or a clear error naming the install command."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise VllmMissing("backend 'vllm' needs vLLM, which is not installed here: `pip install .[gpu]` "
                          f"(vllm==0.28.0, CUDA only), or use `backend: {{kind: transformers}}` ({e})") from None
    return SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, LoRARequest=LoRARequest)


# ---------------------------------------------------------------------------------------------------------------
def sampling_params_kwargs(spec: SamplingSpec, *, stop_token_ids: list[int] | None = None,
                           seed: int | None = None) -> dict:
    """``SamplingParams`` kwargs equal in semantics to ``generate.generation_config`` (HF order: repetition penalty,
    temperature, top_k, top_p; vLLM applies the same). top_k None -> 0, vLLM's "all tokens" (it also takes -1).
    ``detokenize=False``: ``to_completions`` decodes the token ids once at the end; vLLM's incremental decoding would
    run on the engine's step loop (in a worker's process, between GPU steps) and its text is never read."""
    return dict(n=spec.n, temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k or 0, min_p=0.0,
                repetition_penalty=spec.repetition_penalty or 1.0, presence_penalty=0.0, frequency_penalty=0.0,
                max_tokens=spec.max_tokens, seed=spec.seed if seed is None else seed,
                stop_token_ids=list(stop_token_ids or []), skip_special_tokens=True, ignore_eos=False,
                detokenize=False)


def request_seed(seed: int, prompt_ids: list[int], n: int = 1) -> int:
    """A per-request seed from the sampler's seed and the prompt (children use seed..seed+n-1; kept below 2**31)."""
    h = hashlib.md5(f"{seed}:{','.join(map(str, prompt_ids))}".encode()).hexdigest()
    return int(h[:8], 16) % (2**31 - n)


def adapter_md5(adapter: Path) -> str:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapter / name).is_file():
            return md5_file(adapter / name)
    raise DataError(f"{adapter}: no adapter_model.safetensors or adapter_model.bin")


def adapter_rank(adapter: Path) -> int:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    return max([int(cfg["r"]), *map(int, (cfg.get("rank_pattern") or {}).values())])


@dataclass(frozen=True)
class ServingPlan:
    merge: list[Path]           # merged into the base weights, in this order
    serve: Path | None = None   # served through a LoRARequest
    lora_name: str | None = None
    lora_int_id: int | None = None


def plan_serving(adapters: list[Path], mode: str) -> ServingPlan:
    """How a stack of adapters (training order) reaches vLLM. Serve: only the last is served, the rest merged."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    adapters = [Path(a) for a in adapters]
    if mode == "merge" or not adapters:
        return ServingPlan(merge=adapters)
    a = adapters[-1]
    md5 = adapter_md5(a)
    cell = a.parent.name if a.name == "adapter" else a.name  # artefact partition: a cell key or a source
    return ServingPlan(merge=adapters[:-1], serve=a, lora_name=f"{cell}-{md5[:8]}", lora_int_id=int(md5[:7], 16) + 1)


def engine_kwargs(model_dir, *, adapters: list, max_model_len: int = 2048, gpu_memory_utilization: float = 0.85,
                  seed: int = 0, enable_sleep_mode: bool = False) -> dict:
    """``vllm.LLM`` kwargs; ``adapters`` are the ones served through LoRARequests (none when all are merged)."""
    kw = dict(model=str(model_dir), tokenizer=str(model_dir), dtype="bfloat16", seed=seed,
              max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
              generation_config="vllm",  # no sampler defaults from the model's generation_config
              # prompts go in as token ids, stop on our stop ids, and come back as ids decoded here
              # (to_completions): the engine needs no tokenizer of its own (its load, about 9 s of a profiled start)
              skip_tokenizer_init=True,
              compilation_config={"max_cudagraph_capture_size": CUDA_GRAPH_MAX_BATCH})
    if enable_sleep_mode:
        kw["enable_sleep_mode"] = True
    if adapters:
        r = max([32, *(adapter_rank(Path(a)) for a in adapters)])
        kw.update(enable_lora=True, max_loras=1, max_lora_rank=next(x for x in LORA_RANKS if x >= r))
    return kw


# ---------------------------------------------------------------------------------------------------------------
def merge_to_dir(model_dir, adapters: list[Path], out: Path, log: Callable[[str], None] = print) -> Path:
    """``merged_weights(model_dir, adapters)`` in bf16 (vLLM's dtype; merged on the GPU when there is one, as training
    merges), saved with the tokenizer's files to ``out``."""
    import torch

    from mt_core.model.load import merged_weights

    t0 = time.perf_counter()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = merged_weights(model_dir, adapters, device=dev, dtype=torch.bfloat16)
    model.save_pretrained(str(out))
    for f in Path(model_dir).iterdir():  # the tokenizer's files, copied (loading a large tokenizer takes seconds)
        if f.is_file() and not (out / f.name).exists() and not f.name.startswith("model") and f.suffix != ".bin":
            shutil.copyfile(f, out / f.name)
    del model
    free_cuda()
    log(f"vllm: merged {len(adapters)} adapter(s) into {out} in {time.perf_counter() - t0:.0f}s")
    return out


def _inside(p: Path, root: Path) -> bool:
    p, root = Path(p).resolve(), Path(root).resolve()
    return p == root or root in p.parents


@contextlib.contextmanager
def scratch_checkpoint(model_dir, adapters: list[Path], *, artefacts: Path | None = None,
                       log: Callable[[str], None] = print):
    """The merged weights written once to a fresh folder under $MT_SCRATCH (or the system temp folder), yielded, and
    deleted on exit (also when the body raises). Refused inside the artefact root ``artefacts``: merged weights never
    sit beside artefacts."""
    from mt_core import runtime

    base = Path(runtime.current().scratch or tempfile.gettempdir())
    if artefacts is not None and _inside(base, artefacts):
        raise ValueError(f"scratch folder {base} is inside the artefact root {artefacts}: point MT_SCRATCH elsewhere")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mt-merged-", dir=base))
    try:
        yield merge_to_dir(model_dir, adapters, tmp, log)
    finally:
        free_cuda()
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            log(f"vllm: WARNING could not delete the scratch checkpoint {tmp}")


@contextlib.contextmanager
def gc_pauses():
    """How often and how long Python's garbage collector ran during the block ({n, seconds}, filled on exit): the
    engine's loop runs in this process in a worker, whose heap (a held model, training data) each full pass walks."""
    import gc

    out, start = {"n": 0, "seconds": 0.0}, [0.0]

    def cb(phase, info):
        if phase == "start":
            start[0] = time.perf_counter()
        else:
            out["n"] += 1
            out["seconds"] += time.perf_counter() - start[0]
    gc.callbacks.append(cb)
    try:
        yield out
    finally:
        gc.callbacks.remove(cb)


def shutdown(llm) -> None:
    """Shut an engine down (its core, in this process or its own, and its GPU memory)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if hasattr(core, "shutdown"):
        core.shutdown()
    free_cuda()


class VllmSession:
    def __init__(self, llm, api, tokenizer, lora, log, path=None, merged: bool = False, serve=None):
        self.llm, self.api, self.tok, self.lora, self.log, self.path = llm, api, tokenizer, lora, log, path
        self.serve = serve  # the adapter served as a LoRA (serve mode), merged in memory by hf_model
        self.counts = {"engine_starts": 1, "merges": int(merged)}

    def close(self) -> None:
        """Shut the engine down (its core process and GPU memory) and drop it."""
        shutdown(self.llm)
        self.llm = None

    def hf_model(self) -> tuple:
        """The served weights as a transformers model: the engine is shut down first (its GPU memory freed), then the
        checkpoint it served is loaded (plus the served LoRA, in serve mode). No further generate calls."""
        from mt_core.model.load import load_model

        t0 = time.perf_counter()
        self.close()
        model, tok = load_model(self.path, [self.serve] if self.serve else [])
        self.counts["merges"] += int(bool(self.serve))
        self.log(f"vllm: engine shut down, {self.path} loaded for transformers in {time.perf_counter() - t0:.0f}s")
        return model, tok

    def generate(self, prompts: list[list[dict]], spec: SamplingSpec, what: str = "generate") -> list[list[Completion]]:
        """``spec.n`` completions per chat prompt, in prompt order: one ``llm.generate`` call for all prompts."""
        return self.generate_many([(prompts, spec, what)])[0]

    def generate_many(self, batches: list[tuple[list[list[dict]], SamplingSpec, str]]) -> list[list[list[Completion]]]:
        """``generate`` for several (prompts, spec, what) at once, in one ``llm.generate`` call: their requests run side
        by side, so a small batch (80 alignment samples) rides along a large one instead of decoding alone. Each
        request keeps its own sampler and seed, so what it samples does not depend on its companions (bf16 batch
        numerics aside)."""
        stop, encs, params = eos_ids(self.tok), [], []
        for prompts, spec, what in batches:
            enc = encode_chats(self.tok, prompts)
            params += [self.api.SamplingParams(**sampling_params_kwargs(spec, stop_token_ids=stop,
                                                                        seed=request_seed(spec.seed, ids, spec.n)))
                       for ids in enc]
            encs.append(enc)
            self.log(f"{what}: vLLM, {len(enc)} prompts x n={spec.n}, max_tokens={spec.max_tokens}, "
                     f"T={spec.temperature}, top_p={spec.top_p}, top_k={spec.top_k}, seed={spec.seed} (per request), "
                     f"lora={self.lora.lora_name if self.lora else None}")
        t0 = time.perf_counter()
        with gc_pauses() as gc_s:
            outs = self.llm.generate([{"prompt_token_ids": ids} for enc in encs for ids in enc], params,
                                     lora_request=self.lora)
        res = to_completions(outs, self.tok, stop)
        el = time.perf_counter() - t0
        self.log(f"{' + '.join(w for _, _, w in batches)}: {sum(c.n_tokens for cs in res for c in cs) / el:.0f} "
                 f"new tok/s, {el:.0f}s (Python's garbage collector: {gc_s['n']} passes, {gc_s['seconds']:.1f}s)")
        split, i = [], 0
        for enc in encs:
            split.append(res[i:i + len(enc)])
            i += len(enc)
        return split

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
              adapter: bool = True) -> list[list[float]]:
        """vLLM's teacher-forced log-probs of each completion token (the served path of the parity check);
        ``adapter=False`` leaves out the served LoRA (the engine's own base weights)."""
        params = self.api.SamplingParams(**score_kwargs())
        outs = self.llm.generate([{"prompt_token_ids": p + c} for p, c in zip(prompt_ids, completion_ids)], params,
                                 lora_request=self.lora if adapter else None)
        return [prompt_logprobs_of(o, len(p)) for o, p in zip(outs, prompt_ids)]


_registry_warmups: dict[Path, subprocess.Popen] = {}
# vLLM inspects a model's architecture in a fresh Python that imports torch and vLLM (24 s of a cold engine start,
# docs/BENCHMARKS.md) and caches the answer on disk: run it early, in a process of its own, and the engine finds it
# (in that process itself: vLLM's would start another Python, 48 s instead of about 25 on an H100 host)
_WARM_REGISTRY = ("import json, sys; from vllm.model_executor.models import registry; "
                  "registry._run_in_subprocess = lambda fn: fn(); "
                  "[registry.ModelRegistry.models[a].inspect_model_cls() for a in json.loads(sys.argv[1]) "
                  "if a in registry.ModelRegistry.models]")


def warm_registry(model_dir) -> None:
    """Start vLLM's inspection of ``model_dir``'s architecture now, beside whatever this process does next (a worker:
    while it loads the base); ``HeldEngine`` waits for it before it starts. Nothing without vLLM or a GPU."""
    import importlib.util

    import torch

    model_dir = Path(model_dir).resolve()
    if model_dir in _registry_warmups or not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        return
    archs = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    _registry_warmups[model_dir] = subprocess.Popen([sys.executable, "-c", _WARM_REGISTRY, json.dumps(archs)],
                                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _registry_warmed(model_dir: Path, log: Callable[[str], None]) -> None:
    """Wait for ``warm_registry(model_dir)``, if it was started (the engine would otherwise inspect again)."""
    proc = _registry_warmups.get(model_dir)
    if proc is None:
        return
    t0 = time.perf_counter()
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "killed after 120 s"
    log(f"vllm: the architecture's inspection, started beside the base's load, ended ({rc}); "
        f"waited {time.perf_counter() - t0:.1f}s")


class HeldEngine:
    """One vLLM engine that outlives its sessions, in a worker that stays (``mt_core.model.resident``): started once
    per base model with sleep mode on and kept asleep between sessions (sleep level 2: its weights and KV cache are
    freed for training). A session wakes it and pushes its weights in memory: the held transformers model with the
    session's adapters merged in place, which is ``merged_weights`` bit for bit, so no checkpoint is written. The
    prefix cache is reset after every push: cached KV of other weights must not be reused."""

    def __init__(self, api, model_dir, log: Callable[[str], None] = print):
        self.api, self.model_dir, self.log = api, Path(model_dir).resolve(), log
        self.starts = self.pushes = 0
        self.llm, self.awake = None, False

    def _start(self) -> None:
        import torch

        from mt_core.model.kernels import wait_compile_ahead

        wait_compile_ahead(self.log)  # a compile beside vLLM's memory profile would be counted as the engine's
        kw = {}
        if torch.cuda.is_available():  # vLLM's share is of the whole card, the held base's memory included
            free, total = torch.cuda.mem_get_info()
            kw["gpu_memory_utilization"] = round(min(0.85, HELD_CARD_SHARE - (total - free) / total), 3)
        _registry_warmed(self.model_dir, self.log)
        t0 = time.perf_counter()
        # dummy weights: every session pushes its own before it generates (``load`` checks that the push covers
        # every parameter), so the engine does not read the 15 GB the worker has just loaded
        self.llm = self.api.LLM(**engine_kwargs(self.model_dir, adapters=[], enable_sleep_mode=True, **kw),
                                load_format="dummy")
        self.starts, self.awake = self.starts + 1, True
        self.log(f"vllm: engine started in {time.perf_counter() - t0:.0f}s (held: asleep between sessions, "
                 f"gpu_memory_utilization {kw.get('gpu_memory_utilization', 'default')})")

    def load(self, model) -> None:
        """Wake the engine (start it the first time) and give it ``model``'s weights; sync: the copy is done when
        this returns."""
        if self.llm is None:
            self._start()
        elif not self.awake:
            free_cuda()  # what training left in torch's cache goes back before the engine takes its memory again
            self.llm.wake_up()
            self.awake = True
        t0 = time.perf_counter()  # the push alone (a first session's start is logged by _start)
        state = model.state_dict()
        loaded, params = self.llm.apply_model(
            lambda m: (set(m.load_weights(state.items())), {n for n, _ in m.named_parameters()}))[0]
        if missing := params - loaded:  # they would keep the engine's start-up (dummy) values
            raise RuntimeError(f"the held engine got no weights for {len(missing)} of its {len(params)} parameters "
                               f"({', '.join(sorted(missing)[:4])}, ...) from {len(state)} pushed tensors")
        self.llm.reset_prefix_cache()
        self.pushes += 1
        self.log(f"vllm: {len(state)} tensors pushed to the held engine in {time.perf_counter() - t0:.1f}s "
                 f"(all {len(params)} of its parameters loaded)")

    def sleep(self) -> None:
        if self.llm is not None and self.awake:
            self.llm.sleep(level=2)
            self.awake = False
            free_cuda()

    def close(self) -> None:
        shutdown(self.llm)
        self.llm = None


def score_kwargs() -> dict:
    """SamplingParams kwargs to read the log-probs of a fixed prompt+completion (prompt_logprobs=0: the actual token;
    vLLM's default logprobs mode is the raw model distribution, before any sampler transform)."""
    return dict(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)


def prompt_logprobs_of(request_output, n_prompt: int) -> list[float]:
    ids, lps = request_output.prompt_token_ids, request_output.prompt_logprobs
    return [lps[i][ids[i]].logprob for i in range(n_prompt, len(ids))]


def to_completions(request_outputs, tokenizer, stop: list[int]) -> list[list[Completion]]:
    """Each request's completions in the order of its samples, decoded in one batch call."""
    ids, finish = [], []
    for r in request_outputs:
        for o in sorted(r.outputs, key=lambda o: o.index):
            if o.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM request finished with {o.finish_reason!r}")
            t = list(o.token_ids)
            if o.finish_reason == "stop" and t and t[-1] in stop:
                t = t[:-1]  # the transformers backend counts and decodes tokens before the stop token
            ids.append(t)
            finish.append(o.finish_reason)
    texts = iter(tokenizer.batch_decode(ids, skip_special_tokens=True))
    flat = iter(zip(ids, finish))
    return [[Completion(next(texts), len(t), f) for t, f in (next(flat) for _ in r.outputs)] for r in request_outputs]


@contextlib.contextmanager
def vllm_session(model_dir, tokenizer, *, adapters: list, mode: str = "merge", seed: int = 0,
                 log: Callable[[str], None] = print, api=None, artefacts: Path | None = None, **engine_kw):
    """One vLLM engine for a block of generate calls. The merged weights, if any, are written once to a scratch
    checkpoint outside ``artefacts`` (the artefact root) and deleted when the session ends (after the engine is shut
    down; also when a call raises)."""
    api = api or require_vllm()
    plan = plan_serving(adapters, mode)
    sess = None
    with contextlib.ExitStack() as stack:
        try:
            path = Path(model_dir)
            if plan.merge:
                path = stack.enter_context(scratch_checkpoint(model_dir, plan.merge, artefacts=artefacts, log=log))
            free_cuda()
            log(f"vllm: mode {mode}, merged {[str(a) for a in plan.merge]}, served {plan.serve} ({plan.lora_name})")
            t0 = time.perf_counter()
            # the session holds the only reference to the engine, so hf_model() can shut it down
            sess = VllmSession(api.LLM(**engine_kwargs(path, adapters=[plan.serve] if plan.serve else [], seed=seed,
                                                       **engine_kw)),
                               api, tokenizer, None, log, path, merged=bool(plan.merge), serve=plan.serve)
            log(f"vllm: engine started in {time.perf_counter() - t0:.0f}s")
            if plan.serve:
                sess.lora = api.LoRARequest(plan.lora_name, plan.lora_int_id, str(plan.serve))
            yield sess
        finally:
            if sess is not None:
                sess.close()
            free_cuda()
