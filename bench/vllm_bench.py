"""vLLM on the GPU: generation throughput and LoRA log-prob parity on a 7B-shaped model, served vs merged.

What it settles (issue 6): how fast the vLLM backend generates a cell's 3,080 marker completions (308 prompts x n=10,
exactly 300 new tokens each), and whether a cell's LoRA may be served to vLLM directly (LoRARequest) or must be
merged first: each path's teacher-forced per-token log-probs on fixed sequences are compared with PEFT's
(``mt_core.generate.vllm_engine.logprob_parity``, tolerance ``PARITY_TOL``). The model is Qwen2.5-7B-shaped with random bf16
weights (nothing is downloaded); the adapter is r=32 on all seven projections with random non-zero B, so it moves the
log-probs by far more than the tolerance (reported as ``adapter_effect``), which is what makes the check able to fail.

Stages, each its own process so the GPU is empty between engines (``all`` runs them in order):
  prep   build and save the base checkpoint, the adapter, the merged checkpoint (``merge_to_dir``, the platform's
         own), and PEFT's reference log-probs
  serve  vLLM on the base checkpoint with the adapter as a LoRARequest: start-up, throughput, parity
  merge  vLLM on the merged checkpoint: start-up, throughput, parity
  report combine into bench/results/<date>_<card>_vllm.json (or $OUT) and print a table

    python bench/vllm_bench.py all [--work DIR]   # DIR: default mt_vllm in the system temp folder
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

N_PROMPTS, N, NEW_TOKENS = 308, 10, 300
N_PARITY, PARITY_PROMPT, PARITY_COMPLETION = 16, 48, 64


def _card() -> str:
    import torch

    return torch.cuda.get_device_name(0).replace(" ", "_")


def parity_set(vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    """Fixed token sequences (prompt, completion) drawn from the model's vocabulary, whose teacher-forced
    log-probs each engine reports."""
    rng = random.Random(7)
    prompts = [[rng.randrange(10, vocab) for _ in range(PARITY_PROMPT)] for _ in range(N_PARITY)]
    completions = [[rng.randrange(10, vocab) for _ in range(PARITY_COMPLETION)] for _ in range(N_PARITY)]
    return prompts, completions


def _prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(10, vocab) for _ in range(rng.randint(40, 90))] for _ in range(N_PROMPTS)]


def prep(work: Path, tiny_model: bool = False) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from gpu_bench import QWEN7B, TARGETS, TINY, build_model
    from mt_core.model import tiny
    from mt_core.generate.parity import peft_token_logprobs
    from mt_core.generate.vllm_engine import merge_to_dir

    t0 = time.perf_counter()
    model, n_params = build_model(TINY, "cpu") if tiny_model else build_model(QWEN7B, "cuda")
    base, adapter, merged = work / "base", work / "adapter", work / "merged"
    model.save_pretrained(str(base))
    # a real tokenizer in the checkpoint (the platform's merge copies it); the engines themselves take token ids
    tiny.train_tokenizer([f"warm up text {i}" for i in range(200)], 400).save_pretrained(str(base))
    t_save = time.perf_counter() - t0
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=TARGETS,
                                                   task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)  # a trained adapter's B is non-zero; PEFT initialises it to zero
    peft_model.save_pretrained(str(adapter))
    peft_model.eval()
    model_vocab = model.config.vocab_size
    prompts, completions = parity_set(model_vocab)
    lp_peft = peft_token_logprobs(peft_model, None, prompts, completions)
    with peft_model.disable_adapter():
        lp_base = peft_token_logprobs(peft_model, None, prompts, completions)
    effect = [abs(a - b) for xs, ys in zip(lp_peft, lp_base) for a, b in zip(xs, ys)]
    del peft_model, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    t1 = time.perf_counter()
    merge_to_dir(base, [adapter], merged, log=print)
    t_merge = time.perf_counter() - t1
    from mt_core.model.load import load_model

    hf_merged, _ = load_model(merged)  # the merged weights as transformers runs them (bf16 on the GPU)
    lp_merged = peft_token_logprobs(hf_merged, None, prompts, completions)
    del hf_merged
    out = {"n_params": n_params, "vocab": model_vocab, "build_save_s": t_save, "merge_s": t_merge, "lp_peft": lp_peft, "lp_base": lp_base,
           "lp_merged_hf": lp_merged,
           "adapter_effect": {"mean_abs": sum(effect) / len(effect), "max_abs": max(effect)},
           "base": str(base), "adapter": str(adapter), "merged": str(merged)}
    print(f"prep: {n_params / 1e9:.2f}B built and saved in {t_save:.0f}s, merged in {t_merge:.0f}s, adapter moves log-probs "
          f"by {out['adapter_effect']['mean_abs']:.3f} nats on average", flush=True)
    return out


def engine(work: Path, mode: str, score_only: bool = False) -> dict:
    import torch

    from mt_core.generate.sampling import SamplingSpec
    from mt_core.generate.vllm_engine import (engine_kwargs, plan_serving, request_seed, require_vllm,
                                              sampling_params_kwargs)

    try:
        import flashinfer  # noqa: F401
    except ImportError:  # vLLM's default sampler needs flashinfer; without it, its PyTorch sampler
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    api = require_vllm()
    import vllm

    prep_out = json.loads((work / "prep.json").read_text())
    adapter = Path(prep_out["adapter"])
    plan = plan_serving([adapter], mode)
    path = Path(prep_out["merged"]) if mode == "merge" else Path(prep_out["base"])
    kw = engine_kwargs(path, adapters=[plan.serve] if plan.serve else [], seed=0)
    kw.update(skip_tokenizer_init=True)
    t0 = time.perf_counter()
    llm = api.LLM(**kw)
    startup = time.perf_counter() - t0
    lora = api.LoRARequest(plan.lora_name, plan.lora_int_id, str(plan.serve)) if plan.serve else None
    print(f"{mode}: vLLM {vllm.__version__} engine up in {startup:.0f}s ({kw})", flush=True)

    vocab = prep_out["vocab"]  # the parity set and prompts are drawn from the model's vocabulary
    res = {"mode": mode, "vllm": vllm.__version__, "startup_s": startup,
           "engine_kwargs": {k: v for k, v in kw.items() if k not in ("model", "tokenizer")}}
    res.update(_score(llm, api, lora, prep_out, mode, vocab))
    if score_only:
        return res
    prompts = _prompts(vocab)
    spec = SamplingSpec(n=N, temperature=1.0, top_p=1.0, max_tokens=NEW_TOKENS, seed=42)
    params = []
    for ids in prompts:
        k = sampling_params_kwargs(spec, stop_token_ids=[], seed=request_seed(spec.seed, ids, spec.n))
        k.update(ignore_eos=True, min_tokens=NEW_TOKENS, detokenize=False)  # exactly NEW_TOKENS each
        params.append(api.SamplingParams(**k))
    llm.generate([{"prompt_token_ids": p} for p in prompts[:8]], params[:8], lora_request=lora, use_tqdm=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, lora_request=lora, use_tqdm=False)
    gen_s = time.perf_counter() - t0
    n_tok = sum(len(o.token_ids) for r in outs for o in r.outputs)
    assert n_tok == N_PROMPTS * N * NEW_TOKENS, f"expected {N_PROMPTS * N * NEW_TOKENS} tokens, got {n_tok}"
    print(f"{mode}: {N_PROMPTS * N} completions x {NEW_TOKENS} tokens in {gen_s:.1f}s = {n_tok / gen_s:.0f} tok/s",
          flush=True)

    res.update(generate_s=gen_s, tok_s=n_tok / gen_s, completions=N_PROMPTS * N, new_tokens=NEW_TOKENS)
    return res


def _score(llm, api, lora, prep_out: dict, mode: str, vocab: int) -> dict:
    """vLLM's teacher-forced log-probs of the parity set through this engine's path, against PEFT; and, as the noise
    floor of the comparison, the same weights without the adapter in both engines (serve: the base model, i.e. the
    same engine without its LoRARequest; merge: the merged checkpoint as transformers runs it)."""
    from mt_core.generate.parity import judge_parity, logprob_parity
    from mt_core.generate.vllm_engine import prompt_logprobs_of, score_kwargs

    pp, cc = parity_set(vocab)
    sp = api.SamplingParams(**score_kwargs())

    def lps(lora_request):
        outs = llm.generate([{"prompt_token_ids": p + c} for p, c in zip(pp, cc)], sp, lora_request=lora_request,
                            use_tqdm=False)
        return [prompt_logprobs_of(o, len(p)) for o, p in zip(outs, pp)]

    served = lps(lora)
    floor = logprob_parity(lps(None), prep_out["lp_base"]) if mode == "serve" else \
        logprob_parity(served, prep_out["lp_merged_hf"])
    parity = judge_parity(logprob_parity(served, prep_out["lp_peft"]), floor)
    print(f"{mode}: vs PEFT max |dlogp| {parity['max_abs_diff']:.4f} mean {parity['mean_abs_diff']:.5f}; noise floor "
          f"(same weights, no adapter) max {floor['max_abs_diff']:.4f} mean {floor['mean_abs_diff']:.5f} -> "
          f"{'PASS' if parity['pass'] else 'FAIL'} (tol max {parity['tol']:.4f}, mean {parity['tol_mean']:.5f})",
          flush=True)
    return {"parity": parity, "floor": floor}


def decide(serve: dict, merge: dict, merge_s: float) -> str | None:
    """Serve only if it passes parity and its generation beats merging (one merge per cell) plus the merged
    engine's generation; merge if it passes parity otherwise; None if neither passes."""
    ok = {m for m, r in (("serve", serve), ("merge", merge)) if r.get("parity", {}).get("pass")}
    timed = "generate_s" in serve and "generate_s" in merge
    if "serve" in ok and ("merge" not in ok or timed and serve["generate_s"] < merge["generate_s"] + merge_s):
        return "serve"
    return "merge" if "merge" in ok else None


def report(work: Path, out_dir: Path) -> dict:
    import torch

    prep_out = json.loads((work / "prep.json").read_text())
    res = {"card": _card(), "date": dt.date.today().isoformat(), "torch": torch.__version__,
           "model": "Qwen2.5-7B-shaped, random bf16 weights", "n_params": prep_out["n_params"],
           "adapter_effect": prep_out["adapter_effect"], "merge_s": prep_out["merge_s"],
           "workload": f"{N_PROMPTS} prompts x n={N}, exactly {NEW_TOKENS} new tokens, T=1, top_p=1"}
    for mode in ("serve", "merge"):
        f = work / f"{mode}.json"
        res[mode] = json.loads(f.read_text()) if f.exists() else {"error": "stage did not finish"}
    res["decision"] = decide(res["serve"], res["merge"], prep_out["merge_s"])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{res['date']}_{res['card']}_vllm{'' if 'generate_s' in res['serve'] else '_parity'}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {path}\n| path | engine start s | generate s | tok/s | parity max |dlogp| | pass |\n|---|---|---|---|---|---|")
    for mode in ("serve", "merge"):
        r = res[mode]
        if "error" in r:
            print(f"| {mode} | {r['error']} | | | | |")
        else:
            gen = f"{r['generate_s']:.1f} | {r['tok_s']:.0f}" if "generate_s" in r else "not run | not run"
            print(f"| {mode} | {r['startup_s']:.0f} | {gen} | {r['parity']['max_abs_diff']:.4f} (floor "
                  f"{r['floor']['max_abs_diff']:.4f}, tol {r['parity']['tol']:.4f}) | {r['parity']['pass']} |")
    print(f"adapter effect on log-probs: mean {res['adapter_effect']['mean_abs']:.3f}, max "
          f"{res['adapter_effect']['max_abs']:.3f} nats; decision: {res['decision']}")
    return res


def main() -> int:
    from stages import dispatch, parser

    ap = parser(__doc__, ["prep", "serve", "merge"], "mt_vllm", "where checkpoints (about 45 GB) and stage results go")
    ap.add_argument("--tiny", action="store_true", help="prep only: a CPU smoke run with a 2-layer model")
    ap.add_argument("--score-only", action="store_true", help="serve/merge: parity only, no throughput run")
    args = ap.parse_args()
    return dispatch(args, __file__, ["prep", "serve", "merge"], report,
                    lambda stage: prep(args.work, args.tiny) if stage == "prep" else engine(args.work, stage,
                                                                                           args.score_only),
                    extra=lambda stage: ["--score-only"] if args.score_only and stage != "prep" else [], tag="vllm_")


if __name__ == "__main__":
    sys.exit(main())
