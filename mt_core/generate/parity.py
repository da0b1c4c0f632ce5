"""Log-prob parity: does a vLLM serving path (merged or served LoRA) score tokens as PEFT does?

Teacher-forced log-probs of fixed completions from both engines are compared, and the difference is judged against
the floor of the same weights in both engines with no adapter in play (bf16 kernels differ on their own).
"""
from __future__ import annotations

from typing import Callable

from mt_core.generate.sampling import encode_chats
from mt_core.generate.vllm_engine import vllm_session
from mt_core.model.load import free_cuda

PARITY_TOL = 0.05  # nats per token: the least tolerance, max |vLLM - PEFT| over teacher-forced tokens
PARITY_TOL_MEAN = 0.01  # nats per token: the least tolerance of the mean difference
FLOOR_FACTOR = 1.5  # a path may differ from PEFT by this multiple of two engines' difference on the same weights


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

    from mt_core.model.load import load_model, load_tokenizer

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
    free_cuda()
    model, _ = load_model(model_dir, adapters[:-1])
    if adapters:
        model = PeftModel.from_pretrained(model, str(adapters[-1])).eval()
    res = judge_parity(logprob_parity(served, peft_token_logprobs(model, tok, enc, completions), tol),
                       logprob_parity(floor_vllm, floor_hf, tol), tol)
    log(f"parity ({mode}): max |dlogp| {res['max_abs_diff']:.4f}, mean {res['mean_abs_diff']:.5f} over "
        f"{res['n_tokens']} tokens; floor max {res['floor_max']:.4f}, mean {res['floor_mean']:.5f} -> "
        f"{'PASS' if res['pass'] else 'FAIL'} (tol max {res['tol']:.4f}, mean {res['tol_mean']:.5f})")
    return res
