"""One-run GPU benchmark of a cell's heavy steps, reference recipe against ours, on a 7B-shaped model.

Random weights with the Qwen2.5-7B-Instruct configuration (nothing is downloaded) and synthetic data:
  (a) LoRA training, r=32 on all seven projections, effective batch 16:
      reference = HF-Trainer style: 4 x 4 micro-batches, gradient checkpointing, sdpa with a padding mask, right
      padding to a multiple of 8, logits and cross-entropy at every position;
      ours      = mt_core.model.train with the recipe's default speed options (packing, attention and compile
      "auto"): the 16 examples of a step packed into one row (no padding), flash variable-length attention within
      each example, no checkpointing, lm_head + cross-entropy only at label positions, decoder layers and head loss
      through regional torch.compile. The eager variants (compile "off" with attention "mask": block-diagonal mask
      over a few rows; with "varlen") are timed too, to show what each change buys.
      Example lengths: lognormal with mean 300 tokens (sigma 0.6 in log space, clipped to [32, 2048]); the first
      30% of each example is the (masked) prompt. tokens/s counts non-pad tokens.
  (b) generation of 3,080 completions of exactly 300 new tokens (308 prompts x n=10): plain HF generate as the
      reference ran it (one prompt, num_return_sequences=5 per call) against mt_core.generate (large batches).
  (c) ARC-Challenge log-prob scoring of 1,172 prompts whose token lengths follow the real file.
Writes bench/results/<date>_<card>.json (or --out DIR) and prints a table.

    python bench/gpu_bench.py                 # on the GPU machine
    python bench/gpu_bench.py --tiny          # a seconds-long smoke run of the same code on CPU
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mt_core.config import Recipe  # noqa: E402
from mt_core.data.chat import IGNORE, Example  # noqa: E402
from mt_core.evals.arc import last_logprobs  # noqa: E402
from mt_core.generate.sampling import SamplingSpec  # noqa: E402
from mt_core.generate.hf import generate_ids  # noqa: E402
from mt_core.config import load_study  # noqa: E402
from mt_core.model.random_snapshot import qwen2_shape  # noqa: E402
from mt_core.model.train import train_lora  # noqa: E402

QWEN7B = qwen2_shape(load_study(profile="gpu_smoke").model)  # Qwen2.5-7B-Instruct's shape, from the study YAML
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
# speed options of each training arm (recipe.speed); "ours" is the default, compiled + varlen on CUDA
REFERENCE = dict(packing=False, gradient_checkpointing=True)
OURS = dict(packing=True, gradient_checkpointing=False)
# what each change of ours buys (compiled + mask is left out: each compiled variant costs a long compile on the GPU)
VARIANTS = {"eager_mask": dict(OURS, compile="off", attention="mask"),
            "eager_varlen": dict(OURS, compile="off", attention="varlen")}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def recipe(**kw) -> Recipe:
    base = dict(lora_r=32, lora_alpha=64, lora_dropout=0.05, use_rslora=False, target_modules=TARGETS, lr=1e-4,
                epochs=1, per_device_batch=4, grad_accum=4, warmup_ratio=0.03, weight_decay=0.01,
                scheduler="linear", max_grad_norm=1.0, loss="last_assistant_turn", max_length=2048)
    return Recipe(**{**base, **kw})


def with_speed(rc: Recipe, **speed) -> Recipe:
    """``rc`` with these speed options (recipes are frozen)."""
    return rc.model_copy(update={"speed": rc.speed.model_copy(update=speed)})


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_model(cfg: dict, device: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**cfg)
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    n = sum(p.numel() for p in model.parameters())
    return model, n


def chat_lengths(n: int, mean: float, sigma: float, rng: random.Random) -> list[int]:
    mu = math.log(mean) - sigma ** 2 / 2
    return [min(2048, max(32, int(rng.lognormvariate(mu, sigma)))) for _ in range(n)]


def sft_examples(n: int, vocab: int, mean: float, rng: random.Random) -> list[Example]:
    out = []
    for length in chat_lengths(n, mean, 0.6, rng):
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        cut = int(0.3 * length)
        out.append(Example(ids, [IGNORE] * cut + ids[cut:]))
    return out


def time_training(model, examples, rc: Recipe, *, steps: int, warmup: int) -> dict:
    """Train ``warmup`` steps, then time ``steps`` steps on fresh examples, with ``rc``'s speed options."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    per_step = rc.per_device_batch * rc.grad_accum
    data = examples[: per_step * (steps + warmup)]
    # warm-up steps first (kernels, allocator), then the timed steps on fresh examples
    peft_model, res_w = train_lora(model, data[: per_step * warmup], rc, seed=42, pad_id=0, log=lambda *_: None)
    base = peft_model.unload()
    sync()
    peft_model, res = train_lora(base, data[per_step * warmup:], rc, seed=42, pad_id=0, log=lambda *_: None)
    sync()
    peak = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None
    model = peft_model.unload()
    return {"model": model, "tok_s": res.seen_tokens / res.seconds, "s_per_step": res.seconds / res.n_steps,
            "steps": res.n_steps, "seen_tokens": res.seen_tokens, "padding_fraction": 1 - res.seen_tokens /
            max(1, res.padded_tokens), "peak_gb": peak, "losses": res.losses,
            "warmup_s": res_w.seconds, "warmup_steps": res_w.n_steps}  # warm-up includes any compile


def equivalence(model, examples, rc: Recipe, token_budget: int) -> dict:
    """Per-step losses of both arms on the same steps, seed and data (dropout off: its RNG depends on shapes)."""
    rc0 = rc.model_copy(update={"lora_dropout": 0.0})
    data = examples[: 2 * rc.per_device_batch * rc.grad_accum]
    out = {}
    for fast in (False, True):
        arm = with_speed(rc0, **(OURS if fast else REFERENCE), token_budget=token_budget)
        pm, res = train_lora(model, data, arm, seed=7, pad_id=0, log=lambda *_: None)
        model = pm.unload()
        out["fast" if fast else "reference"] = res.losses
        out[("fast" if fast else "reference") + "_seconds"] = res.seconds  # fast: includes its compile
    rel = max(abs(a - b) / abs(a) for a, b in zip(out["reference"], out["fast"]))
    return {"model": model, "losses": out, "max_rel_diff": rel}


def time_generation(model, vocab: int, *, n_prompts: int, n: int, new_tokens: int, reference_calls: int,
                    max_batch_rows: int, rng: random.Random) -> dict:
    prompts = [[rng.randrange(10, vocab) for _ in range(rng.randint(40, 90))] for _ in range(n_prompts)]
    spec = SamplingSpec(n=n, temperature=1.0, top_p=1.0, max_tokens=new_tokens, seed=42)
    quiet = lambda *_: None  # noqa: E731
    # reference: one prompt per call, 5 return sequences per call (run_em_multiseed.py's loop), a few calls
    ref5 = SamplingSpec(n=5, temperature=1.0, top_p=1.0, max_tokens=new_tokens, seed=42)
    generate_ids(model, prompts[:1], SamplingSpec(5, 1.0, 1.0, 8, 0), eos=[1], pad_id=0, max_batch_rows=5,
                 ignore_eos=True, log=quiet)
    sync()
    t0 = time.perf_counter()
    got = generate_ids(model, prompts[:reference_calls], ref5, eos=[1], pad_id=0, max_batch_rows=5,
                       ignore_eos=True, log=quiet)
    sync()
    ref_s = time.perf_counter() - t0
    ref_tokens = sum(len(ids) for outs in got for ids, _ in outs)
    t0 = time.perf_counter()
    got = generate_ids(model, prompts, spec, eos=[1], pad_id=0, max_batch_rows=max_batch_rows, ignore_eos=True,
                       log=print, what="generate(ours)")
    sync()
    ours_s = time.perf_counter() - t0
    ours_tokens = sum(len(ids) for outs in got for ids, _ in outs)
    assert ours_tokens == n_prompts * n * new_tokens, "every completion must have exactly new_tokens tokens"
    return {"reference_tok_s": ref_tokens / ref_s, "reference_calls": reference_calls,
            "ours_tok_s": ours_tokens / ours_s, "ours_seconds": ours_s, "completions": n_prompts * n,
            "new_tokens": new_tokens, "max_batch_rows": max_batch_rows}


def time_arc(model, vocab: int, *, limit: int | None, batch_size: int, rng: random.Random) -> dict:
    rows = [json.loads(x) for x in (ROOT / "reference" / "arc_challenge_test.jsonl").read_text().splitlines()]
    rows = rows[:limit] if limit else rows
    # token counts from the real text (about 4 characters a token) plus the chat template's overhead
    enc = [[rng.randrange(10, vocab) for _ in range(30 + (len(r["question"]) + sum(len(c) + 5 for c in r["choices"])
                                                         + 30) // 4)] for r in rows]
    last_logprobs(model, enc[:batch_size], 0, batch_size=batch_size)  # warm-up
    sync()
    t0 = time.perf_counter()
    lp = last_logprobs(model, enc, 0, batch_size=batch_size)
    sync()
    assert len(lp) == len(rows)
    return {"seconds": time.perf_counter() - t0, "questions": len(rows),
            "mean_prompt_tokens": sum(map(len, enc)) / len(enc)}


def matmul_tflops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 10 * 2 * 8192 ** 3 / (time.perf_counter() - t0) / 1e12


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run with a 2-layer model")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--ref-steps", type=int, default=3)
    ap.add_argument("--ours-steps", type=int, default=6)
    ap.add_argument("--token-budget", type=int, default=6144)
    ap.add_argument("--gen-batch-rows", type=int, default=1540)
    ap.add_argument("--no-variants", dest="variants", action="store_false",
                    help="skip timing the eager / mask variants of our training arm")
    args = ap.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    card = torch.cuda.get_device_name(0).replace(" ", "_") if device == "cuda" else "cpu"
    rng = random.Random(0)
    t_all = time.perf_counter()
    model, n_params = build_model(TINY if args.tiny else QWEN7B, device)
    vocab = model.config.vocab_size
    print(f"{card}: model with {n_params / 1e9:.3f}B parameters built in {time.perf_counter() - t_all:.1f}s",
          flush=True)
    rc = recipe()
    examples = sft_examples(16 * (args.ref_steps + args.ours_steps + 4), vocab, 300.0, rng)

    eq = equivalence(model, examples, rc, args.token_budget)
    model = eq.pop("model")
    print(f"equivalence: max relative per-step loss difference {eq['max_rel_diff']:.2e}", flush=True)
    ref = time_training(model, examples, with_speed(rc, **REFERENCE, token_budget=args.token_budget),
                        steps=args.ref_steps, warmup=1)
    model = ref.pop("model")
    print(f"train reference: {ref['tok_s']:.0f} tok/s, {ref['s_per_step']:.2f} s/step, peak {ref['peak_gb']} GB",
          flush=True)
    ours = time_training(model, examples, with_speed(rc, **OURS, token_budget=args.token_budget),
                         steps=args.ours_steps, warmup=1)
    model = ours.pop("model")
    print(f"train ours: {ours['tok_s']:.0f} tok/s, {ours['s_per_step']:.2f} s/step, peak {ours['peak_gb']} GB, "
          f"warm-up (compile) {ours['warmup_s']:.1f}s", flush=True)
    variants = {}
    for name, kw in (VARIANTS if args.variants else {}).items():
        try:
            v = time_training(model, examples, with_speed(rc, **kw, token_budget=args.token_budget),
                              steps=args.ours_steps, warmup=1)
            model = v.pop("model")
            v.pop("losses")
            variants[name] = v
            print(f"train variant {name}: {v['tok_s']:.0f} tok/s, peak {v['peak_gb']} GB, "
                  f"warm-up {v['warmup_s']:.1f}s", flush=True)
        except Exception as e:  # noqa: BLE001 - record and go on with a fresh model
            variants[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"train variant {name} FAILED: {variants[name]['error']}", flush=True)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
            model, _ = build_model(TINY if args.tiny else QWEN7B, device)
    if device == "cuda":
        torch.cuda.empty_cache()
    gen = time_generation(model, vocab, n_prompts=308 if not args.tiny else 12, n=10,
                          new_tokens=300 if not args.tiny else 16, reference_calls=2 if not args.tiny else 2,
                          max_batch_rows=args.gen_batch_rows, rng=rng)
    print(f"generate: reference {gen['reference_tok_s']:.0f} tok/s, ours {gen['ours_tok_s']:.0f} tok/s", flush=True)
    arc = time_arc(model, vocab, limit=None if not args.tiny else 50, batch_size=64, rng=rng)
    print(f"arc: {arc['questions']} questions in {arc['seconds']:.1f}s", flush=True)
    peak_rate = matmul_tflops()

    flops_per_token = 4 * n_params  # the convention: 4N per trained token for LoRA (fwd 2N + act-grad 2N)
    steps375 = 375
    cell_train_s = steps375 * ours["s_per_step"]
    marker_s = gen["ours_seconds"]  # 3,080 completions x 300 tokens
    align_s = marker_s * 80 / 3080 * 512 / 300 * 4  # 80 completions x 512 tokens, small batch: ~4x less efficient
    result = {
        "card": card, "date": dt.date.today().isoformat(), "device": device, "n_params": n_params,
        "torch": torch.__version__, "matmul_bf16_tflops": peak_rate,
        "train": {"reference_tok_s": ref["tok_s"], "ours_tok_s": ours["tok_s"],
                  "reference_s_per_375_steps": ref["s_per_step"] * steps375,
                  "ours_s_per_375_steps": ours["s_per_step"] * steps375,
                  "reference_peak_gb": ref["peak_gb"], "ours_peak_gb": ours["peak_gb"],
                  "mfu": (ours["tok_s"] * flops_per_token / 989.4e12) if device == "cuda" else None,
                  "mfu_vs_measured_matmul": (ours["tok_s"] * flops_per_token / (peak_rate * 1e12)) if peak_rate else None,
                  "speedup": ours["tok_s"] / ref["tok_s"], "reference_padding_fraction": ref["padding_fraction"],
                  "ours_warmup_s": ours["warmup_s"], "variants": variants,
                  "ours_padding_fraction": ours["padding_fraction"], "reference_steps_timed": ref["steps"],
                  "ours_steps_timed": ours["steps"], "equivalence": eq,
                  "data": "lognormal lengths, mean 300 tokens, sigma 0.6, clipped [32, 2048]; 30% masked prompt"},
        "generate": {**gen, "backend": "transformers", "speedup": gen["ours_tok_s"] / gen["reference_tok_s"],
                     "vllm": "bench/vllm_bench.py (its own <date>_<card>_vllm.json beside this file)"},
        "arc": arc,
        "projected_cell_s": {"train_375_steps": cell_train_s, "arc": arc["seconds"], "marker_3080x300": marker_s,
                             "alignment_80x512_estimate": align_s,
                             "total": cell_train_s + arc["seconds"] + marker_s + align_s},
        "bench_wall_s": time.perf_counter() - t_all,
    }
    out = Path(os.environ.get("OUT", args.out))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['date']}_{card}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
    print(f"| metric | reference | ours | ratio |\n|---|---|---|---|\n"
          f"| train tok/s | {ref['tok_s']:.0f} | {ours['tok_s']:.0f} | {ours['tok_s'] / ref['tok_s']:.2f}x |\n"
          f"| train peak GB | {ref['peak_gb']} | {ours['peak_gb']} | |\n"
          f"| generate tok/s | {gen['reference_tok_s']:.0f} | {gen['ours_tok_s']:.0f} | {result['generate']['speedup']:.1f}x |\n"
          f"| ARC seconds | | {arc['seconds']:.1f} | |\n"
          f"| projected cell s | | {result['projected_cell_s']['total']:.0f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
