"""What the first steps of a compiled 7B LoRA training pay for compiling (issue 23: about 85 s of the coupling
adapter's first 76 steps on a cold machine), and how often it compiles.

Qwen2.5-7B's shape with random bf16 weights, the cell recipe (r=32, all seven projections, dropout 0.05, packed,
varlen attention, regional compile), data of the coupling data's shape (lognormal lengths, mean 560 tokens). Two
trainings in one process: the first on a cold process (the compile caches on disk as the machine has them), the
second with everything compiled in memory. Each logs every step's wall time; Dynamo's recompilations and graph breaks
are printed (TORCH_LOGS) and its compile-time table at the end.

    TORCH_LOGS=recompiles,graph_breaks python bench/compile_probe.py [--steps 24]
    python bench/compile_probe.py --ahead     # first the compile ahead (kernels.compile_ahead) in its own process,
                                              # timed, then the same two trainings: the cold one now loads its graphs
"""
import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch

    from gpu_bench import OURS, QWEN7B, build_model, recipe, sft_examples, sync, with_speed
    from mt_core.model.train import train_lora

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--mean-tokens", type=float, default=560)
    ap.add_argument("--ahead", action="store_true", help="compile ahead in a process of its own first (a worker's way)")
    a = ap.parse_args()
    rc = with_speed(recipe(), **OURS)
    if a.ahead:  # the child reads the architecture from a folder: the same config, written once
        import tempfile

        from transformers import Qwen2Config

        from mt_core.model import kernels

        cfg_dir = Path(tempfile.mkdtemp(prefix="mt-compile-probe-"))
        Qwen2Config(**QWEN7B).save_pretrained(str(cfg_dir))
        t0 = time.perf_counter()
        kernels.compile_ahead(cfg_dir, rc, log=print, force=True)
        kernels.wait_compile_ahead(log=print)
        print(f"== ahead: {time.perf_counter() - t0:.1f}s in its own process", flush=True)
    model, _ = build_model(QWEN7B, "cuda")
    per_step = rc.per_device_batch * rc.grad_accum
    examples = sft_examples(per_step * a.steps * 2, QWEN7B["vocab_size"], a.mean_tokens, random.Random(0))
    for run, data in (("cold", examples[: per_step * a.steps]), ("warm", examples[per_step * a.steps:])):
        sync()
        t0 = last = time.perf_counter()

        def on_step(d: dict) -> None:
            nonlocal last
            now = time.perf_counter()
            print(f"[{run}] step {d['step']:3d} {now - last:6.2f}s ({d['tokens']} tokens) at {now - t0:6.1f}s",
                  flush=True)
            last = now
        pm, res = train_lora(model, data, rc, seed=42, pad_id=0, log=lambda m: print(f"[{run}] {m}", flush=True),
                             on_step=on_step)
        sync()
        wall = time.perf_counter() - t0
        model = pm.unload()
        print(f"== {run}: {res.n_steps} steps, {res.seen_tokens} tokens in {wall:.1f}s "
              f"({res.seen_tokens / wall:.0f} tok/s over the whole training)", flush=True)
        counters = torch._dynamo.utils.counters  # what the caches saw (hits, misses, bypasses and why)
        print(f"== {run} caches: inductor {dict(counters['inductor'])}; aot_autograd {dict(counters['aot_autograd'])}",
              flush=True)
        counters.clear()
    try:
        from torch._dynamo.utils import compile_times
        print(compile_times(repr="str", aggregate=True))
    except Exception as e:  # a private table: its absence is not this probe's failure
        print(f"(no compile_times: {e})")
    print(torch.cuda.get_device_name(0))


if __name__ == "__main__":
    main()
