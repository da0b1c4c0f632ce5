"""Where a training step and a decode step spend their time on the GPU (torch.profiler), for tuning the fast paths.

    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python bench/profile_steps.py
"""
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gpu_bench import OURS, QWEN7B, TINY, build_model, recipe, sft_examples, sync, with_speed  # noqa: E402
from mt_core.generate.sampling import SamplingSpec  # noqa: E402
from mt_core.generate.hf import generate_ids  # noqa: E402
from mt_core.model.train import train_lora  # noqa: E402


def prof(fn, label, rows=18):
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
        by_kind(p.key_averages(), wall)


KINDS = (("matrix products", ("gemm", "matmul", "cutlass", "xmma", "sm90", "cublas")),
         ("attention", ("flash", "fmha", "attention")), ("fused elementwise (inductor)", ("triton",)),
         ("optimizer", ("adam", "foreach", "multi_tensor")), ("copies", ("memcpy", "memset", "copy_")))


def by_kind(events, wall: float) -> None:
    """GPU time by kind of kernel, and the share of the wall during which the GPU ran nothing (host- or sync-bound)."""
    tot = {}
    for e in events:
        t = getattr(e, "self_device_time_total", 0) or 0
        if t <= 0:
            continue
        name = e.key.lower()
        kind = next((k for k, words in KINDS if any(w in name for w in words)), "other")
        tot[kind] = tot.get(kind, 0) + t / 1e6
    busy = sum(tot.values())
    for kind, t in sorted(tot.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:32s} {t:8.3f} s  {t / wall:6.1%} of the wall")
    print(f"  {'GPU idle':32s} {max(0.0, wall - busy):8.3f} s  {max(0.0, wall - busy) / wall:6.1%} of the wall")


def main():
    tiny = "--tiny" in sys.argv
    dev = "cpu" if tiny or not torch.cuda.is_available() else "cuda"
    model, n = build_model(TINY if tiny else QWEN7B, dev)
    rng = random.Random(0)
    ex = sft_examples(16 * 6, model.config.vocab_size, 300.0, rng)
    rc = with_speed(recipe(), **OURS)
    pm, res = train_lora(model, ex[:32], rc, seed=1, pad_id=0, log=lambda *_: None)
    model = pm.unload()
    prof(lambda: train_lora(model, ex[64:80], rc, seed=1, pad_id=0, log=lambda *_: None)[0].unload(),
         "one packed training step", rows=25)
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
