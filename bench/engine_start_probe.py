"""Where a worker's vLLM engine start goes (issue 23: 77 s in the worker runs; in an in-process start about 16 s pass
between the CUDA graph capture and vLLM's "init engine" line that a separate engine process does not spend).

The worker's engine (its core in this process, sleep mode, the share of the card it has beside the held base) on
``gpu_smoke``'s random Qwen2.5-7B-shaped base, started once under cProfile; prints the functions by cumulative and by
own time, and the wall time.

    VLLM_USE_FLASHINFER_SAMPLER=0 python bench/engine_start_probe.py [--out DIR]
"""
import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # as mt_settings sets it for a worker
    from gen_bench import GPU_SHARE, _requests
    from mt_core.generate.vllm_engine import engine_kwargs, require_vllm

    model_dir, _ = _requests()
    api = require_vllm()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    llm = api.LLM(**engine_kwargs(model_dir, adapters=[], enable_sleep_mode=True, gpu_memory_utilization=GPU_SHARE))
    prof.disable()
    wall = time.perf_counter() - t0
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("cumulative").print_stats(45)
    st.sort_stats("tottime").print_stats(25)
    text = f"engine start (in process, under cProfile): {wall:.1f}s\n" + buf.getvalue()
    print(text, flush=True)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "engine_start_profile.txt").write_text(text)
    del llm


if __name__ == "__main__":
    main()
