"""The vLLM generation backend (``pip install .[gpu]``; vllm is imported only inside functions).

Same sampling semantics as ``mt_core.generate`` (the transformers backend): explicit sampler, nothing taken from the
model's generation_config, stop on <|im_end|>/<|endoftext|>, prompts rendered and tokenized the same way, completions
decoded with the same tokenizer. Seeding differs from the reference on purpose: the reference set one engine-level seed
(``LLM(seed=S)``), so a prompt's samples depended on what else was in the batch (PROTOCOL §2.8: the same villain model
gave 261/280, 267/280 and 252/280). Here every request carries its own seed, derived from ``spec.seed`` and the prompt's
token ids (vLLM gives the n children seeds seed+0..n-1), so a prompt's samples do not depend on batch composition or
position (only on bf16 batch numerics), and different prompts do not share one random stream.

LoRA wiring (``mode``): "merge" merges every adapter with PEFT, in fp32, into a temporary bf16 checkpoint outside the
artefact store ($MT_SCRATCH or /tmp), serves that, and deletes it; "serve" serves the last adapter through a
LoRARequest (vLLM cannot stack two LoRAs, so any earlier adapter, e.g. the coupling one, is merged first).
Both were measured on an H200 with a 7B-shaped model and an r=32 adapter (bench/vllm_bench.py, docs/BENCHMARKS.md):
both match PEFT's log-probs within the noise floor of two bf16 engines on the same weights (vllm-project/vllm#10798
reported served LoRA outputs differing from PEFT; not seen here), and "merge" is the default because it is faster per
cell: 42.7 s for the 3,080 marker completions plus a 27-32 s merge, against 78.8 s served, and its engine starts in
about 60 s instead of 125-150 s.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from mt_core.generate import Completion, SamplingSpec, encode_chats, eos_ids
from mt_core.io import DataError, md5_file

MODES = ("merge", "serve")
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM accepts only these as max_lora_rank
PARITY_TOL = 0.05  # nats per token: the least tolerance, max |vLLM - PEFT| over teacher-forced tokens
PARITY_TOL_MEAN = 0.01  # nats per token: the least tolerance of the mean difference
FLOOR_FACTOR = 1.5  # a path may differ from PEFT by this multiple of two engines' difference on the same weights


class VllmMissing(ImportError):
    pass


def require_vllm():
    """The vllm API (LLM, SamplingParams, LoRARequest), or a clear error naming the install command."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise VllmMissing("backend 'vllm' needs vLLM, which is not installed here: `pip install .[gpu]` "
                          f"(vllm==0.28.0, CUDA only), or use `backend: transformers` ({e})") from None
    return SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, LoRARequest=LoRARequest)


def vllm_mode() -> str:
    mode = os.environ.get("MT_VLLM_MODE", "merge")
    if mode not in MODES:
        raise ValueError(f"MT_VLLM_MODE={mode!r}: expected one of {MODES}")
    return mode


# ---------------------------------------------------------------------------------------------------------------
def sampling_params_kwargs(spec: SamplingSpec, *, stop_token_ids: list[int] | None = None,
                           seed: int | None = None) -> dict:
    """``SamplingParams`` kwargs equal in semantics to ``generate.generation_config`` (HF order: repetition penalty,
    temperature, top_k, top_p; vLLM applies the same). top_k None -> 0, vLLM's "all tokens" (it also takes -1)."""
    return dict(n=spec.n, temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k or 0, min_p=0.0,
                repetition_penalty=spec.repetition_penalty or 1.0, presence_penalty=0.0, frequency_penalty=0.0,
                max_tokens=spec.max_tokens, seed=spec.seed if seed is None else seed,
                stop_token_ids=list(stop_token_ids or []), skip_special_tokens=True, ignore_eos=False)


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
                  seed: int = 0) -> dict:
    """``vllm.LLM`` kwargs; ``adapters`` are the ones served through LoRARequests (none when all are merged)."""
    kw = dict(model=str(model_dir), tokenizer=str(model_dir), dtype="bfloat16", seed=seed,
              max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
              generation_config="vllm")  # no sampler defaults from the model's generation_config
    if adapters:
        r = max([32, *(adapter_rank(Path(a)) for a in adapters)])
        kw.update(enable_lora=True, max_loras=1, max_lora_rank=next(x for x in LORA_RANKS if x >= r))
    return kw


# ---------------------------------------------------------------------------------------------------------------
def _free_cuda() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def merge_to_dir(model_dir, adapters: list[Path], out: Path, log: Callable[[str], None] = print) -> Path:
    """Base + adapters merged in order (fp32, one rounding to bf16 at the end), saved with the tokenizer to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mt_core.models import merge_adapter

    t0 = time.perf_counter()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, device_map=dev)
    for a in adapters:
        model = merge_adapter(model, a)
    model.to(torch.bfloat16).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    del model
    _free_cuda()
    log(f"vllm: merged {len(adapters)} adapter(s) into {out} in {time.perf_counter() - t0:.0f}s")
    return out


class VllmSession:
    def __init__(self, llm, api, tokenizer, lora, log, path=None):
        self.llm, self.api, self.tok, self.lora, self.log, self.path = llm, api, tokenizer, lora, log, path

    def generate(self, prompts: list[list[dict]], spec: SamplingSpec, what: str = "generate") -> list[list[Completion]]:
        """``spec.n`` completions per chat prompt, in prompt order: one ``llm.generate`` call for all prompts."""
        enc, stop = encode_chats(self.tok, prompts), eos_ids(self.tok)
        params = [self.api.SamplingParams(**sampling_params_kwargs(spec, stop_token_ids=stop,
                                                                   seed=request_seed(spec.seed, ids, spec.n)))
                  for ids in enc]
        self.log(f"{what}: vLLM, {len(enc)} prompts x n={spec.n}, max_tokens={spec.max_tokens}, "
                 f"T={spec.temperature}, top_p={spec.top_p}, top_k={spec.top_k}, seed={spec.seed} (per request), "
                 f"lora={self.lora.lora_name if self.lora else None}")
        t0 = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in enc], params, lora_request=self.lora)
        res = [to_completions(o, self.tok, stop) for o in outs]
        el = time.perf_counter() - t0
        self.log(f"{what}: {sum(c.n_tokens for cs in res for c in cs) / el:.0f} new tok/s, {el:.0f}s")
        return res

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
              adapter: bool = True) -> list[list[float]]:
        """vLLM's teacher-forced log-probs of each completion token (the served path of the parity check);
        ``adapter=False`` leaves out the served LoRA (the engine's own base weights)."""
        params = self.api.SamplingParams(**score_kwargs())
        outs = self.llm.generate([{"prompt_token_ids": p + c} for p, c in zip(prompt_ids, completion_ids)], params,
                                 lora_request=self.lora if adapter else None)
        return [prompt_logprobs_of(o, len(p)) for o, p in zip(outs, prompt_ids)]


def to_completions(request_output, tokenizer, stop: list[int]) -> list[Completion]:
    out = []
    for o in sorted(request_output.outputs, key=lambda o: o.index):
        if o.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM request finished with {o.finish_reason!r}")
        ids = list(o.token_ids)
        if o.finish_reason == "stop" and ids and ids[-1] in stop:
            ids = ids[:-1]  # the transformers backend counts and decodes tokens before the stop token
        out.append(Completion(tokenizer.decode(ids, skip_special_tokens=True), len(ids), o.finish_reason))
    return out


@contextlib.contextmanager
def vllm_session(model_dir, tokenizer, *, adapters: list, mode: str = "merge", seed: int = 0,
                 log: Callable[[str], None] = print, api=None, **engine_kw):
    """One vLLM engine for a block of generate calls; a merged checkpoint, if any, is deleted on exit."""
    api = api or require_vllm()
    plan = plan_serving(adapters, mode)
    tmp, llm = None, None
    try:
        path = Path(model_dir)
        if plan.merge:
            scratch = os.environ.get("MT_SCRATCH")
            if scratch:
                Path(scratch).mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix="mt-merged-", dir=scratch))
            path = merge_to_dir(model_dir, plan.merge, tmp, log)
        _free_cuda()
        log(f"vllm: mode {mode}, merged {[str(a) for a in plan.merge]}, served {plan.serve} ({plan.lora_name})")
        llm = api.LLM(**engine_kwargs(path, adapters=[plan.serve] if plan.serve else [], seed=seed, **engine_kw))
        lora = api.LoRARequest(plan.lora_name, plan.lora_int_id, str(plan.serve)) if plan.serve else None
        yield VllmSession(llm, api, tokenizer, lora, log, path)
    finally:
        llm = None
        _free_cuda()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def vllm_generate(model_dir, tokenizer, prompts: list[list[dict]], spec: SamplingSpec, *, adapters: list,
                  mode: str = "merge", log: Callable[[str], None] = print, what: str = "generate",
                  api=None) -> list[list[Completion]]:
    with vllm_session(model_dir, tokenizer, adapters=adapters, mode=mode, seed=spec.seed, log=log, api=api) as s:
        return s.generate(prompts, spec, what)


# ---------------------------------------------------------------------------------------------------------------
# parity: the served path's teacher-forced log-probs against PEFT's
def score_kwargs() -> dict:
    """SamplingParams kwargs to read the log-probs of a fixed prompt+completion (prompt_logprobs=0: the actual token;
    vLLM's default logprobs mode is the raw model distribution, before any sampler transform)."""
    return dict(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)


def prompt_logprobs_of(request_output, n_prompt: int) -> list[float]:
    ids, lps = request_output.prompt_token_ids, request_output.prompt_logprobs
    return [lps[i][ids[i]].logprob for i in range(n_prompt, len(ids))]


def peft_token_logprobs(model, tokenizer, prompt_ids: list, completion_ids: list[list[int]]) -> list[list[float]]:
    """Teacher-forced log p(completion token | prefix) from a (PEFT) transformers model, one sequence at a time;
    a prompt may be token ids or a chat (rendered with ``tokenizer``'s template)."""
    import torch

    dev = next(model.parameters()).device
    out = []
    for p, c in zip(prompt_ids, completion_ids):
        p = encode_chats(tokenizer, [p])[0] if p and isinstance(p[0], dict) else list(p)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + list(c)], device=dev)).logits[0]
        lp = torch.log_softmax(logits[len(p) - 1 : len(p) + len(c) - 1].float(), dim=-1)
        out.append(lp.gather(-1, torch.tensor(c, device=dev)[:, None])[:, 0].tolist())
    return out


def logprob_parity(served: list[list[float]], peft: list[list[float]], tol: float = PARITY_TOL) -> dict:
    if len(served) != len(peft) or any(len(a) != len(b) for a, b in zip(served, peft)):
        raise ValueError("parity: served and PEFT log-probs must cover the same tokens")
    diffs = [abs(a - b) for xs, ys in zip(served, peft) for a, b in zip(xs, ys)]
    mx = max(diffs, default=0.0)
    return {"max_abs_diff": mx, "mean_abs_diff": sum(diffs) / max(1, len(diffs)), "n_tokens": len(diffs),
            "tol": tol, "pass": mx < tol}


def judge_parity(vs_peft: dict, floor: dict, tol: float = PARITY_TOL) -> dict:
    """Is a serving path faithful to PEFT? ``vs_peft`` compares it with PEFT; ``floor`` compares two engines on the
    same weights with no adapter in play (bf16 kernels differ: on a 7B model that alone reaches a few tenths of a
    nat on single tokens). It passes when both its max and its mean difference are within ``FLOOR_FACTOR`` x the
    floor's, never held to less than ``tol`` (max) and ``PARITY_TOL_MEAN`` (mean)."""
    tol_max = max(tol, FLOOR_FACTOR * floor["max_abs_diff"])
    tol_mean = max(PARITY_TOL_MEAN, FLOOR_FACTOR * floor["mean_abs_diff"])
    return {**vs_peft, "tol": tol_max, "tol_mean": tol_mean, "floor_max": floor["max_abs_diff"],
            "floor_mean": floor["mean_abs_diff"],
            "pass": vs_peft["max_abs_diff"] <= tol_max and vs_peft["mean_abs_diff"] <= tol_mean}


def parity_check(model_dir, prompts: list[list[dict]], completions: list[list[int]], *, adapters: list,
                 mode: str = "serve", tol: float = PARITY_TOL, log: Callable[[str], None] = print, api=None) -> dict:
    """GPU: the vLLM path (``mode``) against PEFT as trained (earlier adapters merged, the last one unmerged), judged
    against the floor of the same weights in both engines: serve, the engine without its LoRARequest against the
    transformers model without the adapter; merge, the merged checkpoint in vLLM against it in transformers."""
    from peft import PeftModel

    from mt_core.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    enc = encode_chats(tok, prompts)
    with vllm_session(model_dir, tok, adapters=adapters, mode=mode, log=log, api=api,
                      gpu_memory_utilization=0.5) as s:
        served = s.score(enc, completions)
        if s.lora:  # the floor: the same weights in both engines, no adapter in play
            floor_vllm, floor_model = s.score(enc, completions, adapter=False), load_model(model_dir, adapters[:-1])[0]
        else:
            floor_vllm, floor_model = served, load_model(s.path)[0]  # (read before the session deletes it)
        floor_hf = peft_token_logprobs(floor_model, tok, enc, completions)
        del floor_model
    _free_cuda()
    model, _ = load_model(model_dir, adapters[:-1])
    if adapters:
        model = PeftModel.from_pretrained(model, str(adapters[-1])).eval()
    res = judge_parity(logprob_parity(served, peft_token_logprobs(model, tok, enc, completions), tol),
                       logprob_parity(floor_vllm, floor_hf, tol), tol)
    log(f"parity ({mode}): max |dlogp| {res['max_abs_diff']:.4f}, mean {res['mean_abs_diff']:.5f} over "
        f"{res['n_tokens']} tokens; floor max {res['floor_max']:.4f}, mean {res['floor_mean']:.5f} -> "
        f"{'PASS' if res['pass'] else 'FAIL'} (tol max {res['tol']:.4f}, mean {res['tol_mean']:.5f})")
    return res
