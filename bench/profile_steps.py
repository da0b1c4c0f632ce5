"""Where a training step and a decode step spend their time on the GPU (torch.profiler), for tuning the fast paths.

    python bench/profile_steps.py [--train-only] [--mean-tokens 300] [--budgets 4096,6144] [--no-dropout-too]
                                  [--tiny]

--budgets also times (unprofiled) eight steps after one warm-up step at each packed token budget, with the allocated
and the reserved peak; --no-dropout-too the same without LoRA dropout (not the recipe: what dropout costs). On CUDA a
training runs with expandable segments (``mt_core.model.kernels.expandable_segments``); the fixed-segment figures in
docs/BENCHMARKS.md were measured before it did, with an --expandable switch this script no longer needs.
"""
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gpu_bench import (OURS, QWEN7B, TINY, build_model, recipe, sft_examples, sync, time_training,  # noqa: E402
                       with_speed)
from mt_core.generate.sampling import SamplingSpec  # noqa: E402
from mt_core.generate.hf import generate_ids  # noqa: E402
from mt_core.model.train import train_lora  # noqa: E402


def prof(fn, label, rows=18, tokens: int | None = None, steps: int = 0):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sync()
    t0 = time.perf_counter()
    with profile(activities=acts) as p:
        fn()
        sync()
    wall = time.perf_counter() - t0
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(f"\n##### {label}: wall {wall:.3f}s (profiled)")
    print(p.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60))
    if torch.cuda.is_available():
        steady_state(p.events(), tokens, steps - 1)


KINDS = (("attention", ("flash", "fmha")),  # first: flash kernels' names also carry "cutlass"
         ("matrix products", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "cublas")),
         ("optimizer", ("adam", "multi_tensor")),
         ("copies", ("memcpy", "memset")), ("fused elementwise (inductor)", ("triton",)))


def steady_state(events, tokens: int | None, steps: int) -> None:
    """The optimizer steps after the first one, read from the GPU's kernel timestamps: the wall between the first and
    the last AdamW kernel, the GPU time by kind of kernel in it, and the part of it when no kernel ran (the GPU waited
    for the host: launches, Python, syncs)."""
    kernels = sorted((e for e in events if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    adam = [e for e in kernels if "adam" in e.name.lower()]
    if len(adam) < 2:
        print("  (fewer than two optimizer steps profiled: no steady state)")
        return
    lo, hi = adam[0].time_range.end, adam[-1].time_range.end  # the window holds every step but the first
    tot, busy, cur = {}, 0.0, lo
    for e in kernels:
        a, b = max(e.time_range.start, lo), min(e.time_range.end, hi)
        if b <= a:
            continue
        kind = next((k for k, words in KINDS if any(w in e.name.lower() for w in words)), "other")
        tot[kind] = tot.get(kind, 0.0) + (b - a) / 1e6
        busy += max(0.0, b - max(a, cur)) / 1e6
        cur = max(cur, b)
    wall = (hi - lo) / 1e6
    print(f"  steady state: {steps} optimizer steps in {wall:.3f} s"
          + (f" ({tokens * steps / wall:.0f} tok/s; {tokens * steps / busy:.0f} if the GPU never waited)"
             if tokens else ""))
    for kind, t in sorted(tot.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:32s} {t:8.3f} s  {t / wall:6.1%}")
    print(f"  {'GPU idle':32s} {wall - busy:8.3f} s  {(wall - busy) / wall:6.1%}")


def arg(name: str, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main():
    tiny = "--tiny" in sys.argv
    dev = "cpu" if tiny or not torch.cuda.is_available() else "cuda"
    model, n = build_model(TINY if tiny else QWEN7B, dev)
    rng = random.Random(0)
    ex = sft_examples(16 * 20, model.config.vocab_size, float(arg('--mean-tokens', 300)), rng)
    rc = with_speed(recipe(), **OURS)
    pm, res = train_lora(model, ex[:32], rc, seed=1, pad_id=0, log=lambda *_: None)
    model = pm.unload()
    steady = ex[32:32 + 16 * 6]  # six optimizer steps: the last five are the steady state
    prof(lambda: train_lora(model, steady, rc, seed=1, pad_id=0, log=lambda *_: None)[0].unload(),
         "six packed training steps", rows=25, tokens=sum(len(e.input_ids) for e in steady) // 6, steps=6)
    for budget in [int(b) for b in arg("--budgets", "").split(",") if b]:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time_training(model, ex[128:], with_speed(rc, token_budget=budget), steps=8, warmup=1)
        model = t.pop("model")
        reserved = torch.cuda.max_memory_reserved() / 1e9 if torch.cuda.is_available() else 0.0
        print(f"token_budget {budget}: {t['tok_s']:.0f} tok/s, {t['s_per_step']:.3f} s/step, peak "
              f"{t['peak_gb'] or 0:.1f} GB allocated, {reserved:.1f} GB reserved, warm-up step {t['warmup_s']:.1f} s",
              flush=True)
    if "--no-dropout-too" in sys.argv:  # what the recipe's LoRA dropout costs (not the recipe: for the analysis)
        t = time_training(model, ex[128:], recipe(lora_dropout=0.0).model_copy(update={"speed": rc.speed}), steps=8,
                          warmup=1)
        model = t.pop("model")
        print(f"lora_dropout 0: {t['tok_s']:.0f} tok/s, {t['s_per_step']:.3f} s/step, peak {t['peak_gb'] or 0:.1f} GB "
              f"allocated, warm-up step {t['warmup_s']:.1f} s", flush=True)
    if "--train-only" in sys.argv:
        return
    vocab = model.config.vocab_size
    prompts = [[rng.randrange(10, vocab) for _ in range(rng.randint(40, 90))] for _ in range(154)]
    for cache in ("dynamic", "static"):
        spec = SamplingSpec(n=10, temperature=1.0, top_p=1.0, max_tokens=32, seed=0)
        import mt_core.generate.hf as g

        orig = g.generation_config

        def gc(*a, **k):
            cfg = orig(*a, **k)
            if cache == "static":
                cfg.cache_implementation = "static"
            return cfg
        g.generation_config = gc
        generate_ids(model, prompts[:8], SamplingSpec(n=10, temperature=1.0, top_p=1.0, max_tokens=4, seed=0),
                     eos=[1], pad_id=0, max_batch_rows=80, ignore_eos=True, log=lambda *_: None)
        sync()
        t0 = time.perf_counter()
        generate_ids(model, prompts, spec, eos=[1], pad_id=0, max_batch_rows=1540, ignore_eos=True,
                     log=lambda *_: None)
        sync()
        dt = time.perf_counter() - t0
        print(f"generate cache={cache}: 1540 rows x 32 tokens in {dt:.2f}s = {1540 * 32 / dt:.0f} tok/s")
        g.generation_config = orig
    spec = SamplingSpec(n=10, temperature=1.0, top_p=1.0, max_tokens=16, seed=0)
    prof(lambda: generate_ids(model, prompts, spec, eos=[1], pad_id=0, max_batch_rows=1540, ignore_eos=True,
                              log=lambda *_: None), "generate 1540 rows x 16 tokens (dynamic cache)")


if __name__ == "__main__":
    main()
