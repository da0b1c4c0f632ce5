"""Does the worker's early inspection of the base's architecture (``vllm_engine.warm_registry``) leave vLLM's engine
nothing to do at that point? A cold inspection (vLLM's cache of it emptied) timed in this process, then the same
after ``warm_registry`` ran: the engine's own call should find the cache.

    PYTHONPATH=.vbundle/site python bench/registry_probe.py [--arch Qwen2ForCausalLM]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="Qwen2ForCausalLM")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="vllm-cache-"))
    os.environ["VLLM_CACHE_ROOT"] = str(cache)  # before vllm reads it; the warm-up's child inherits it
    from vllm.model_executor.models.registry import ModelRegistry

    from mt_core.generate import vllm_engine

    model_dir = Path(tempfile.mkdtemp(prefix="arch-"))
    (model_dir / "config.json").write_text(json.dumps({"architectures": [a.arch]}))
    reg = ModelRegistry.models[a.arch]
    rows = {}

    t0 = time.perf_counter()
    reg.inspect_model_cls()  # cold: vLLM's own subprocess
    rows["cold_inspect_s"] = round(time.perf_counter() - t0, 2)

    shutil.rmtree(cache / "modelinfos", ignore_errors=True)
    t0 = time.perf_counter()
    vllm_engine.warm_registry(model_dir)
    rows["warm_registry_returns_s"] = round(time.perf_counter() - t0, 3)
    vllm_engine._registry_warmed(model_dir.resolve(), print)
    rows["warm_registry_done_s"] = round(time.perf_counter() - t0, 2)
    rows["cache_files"] = sorted(p.name for p in (cache / "modelinfos").glob("*"))
    t0 = time.perf_counter()
    reg.inspect_model_cls()  # what the engine's start does next: a cache hit
    rows["inspect_after_warm_s"] = round(time.perf_counter() - t0, 3)
    import torch

    rows["card"] = torch.cuda.get_device_name(0)
    print(json.dumps(rows, indent=1))
    if a.out:
        import datetime as dt

        Path(a.out, f"{dt.date.today()}_{rows['card'].replace(' ', '_')}_registry.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
