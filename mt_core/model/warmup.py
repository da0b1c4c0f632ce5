"""The compile ahead's own process: a compiled training's graphs compiled before it starts (issue 23).

A compiled LoRA training (``recipe.speed.compile``) spends its first step compiling one decoder layer's forward and
backward and the head loss: about 70 s on a fresh H100 machine (docs/BENCHMARKS.md). torch keeps what it compiled on
disk (Inductor's FX graph cache, AOTAutograd's cache, the Triton kernels), and a later compile of the same graphs in
any process is a load of a few seconds. So a worker that stays starts this process before its first compiled
training, while it does something else first (the coupling adapter's on-policy generation; a cell's base load and
tokenizing; ``mt_core.model.kernels.compile_ahead``): a two-layer copy of the base's architecture, random weights,
trains two steps of the same recipe through the same ``train_lora``. Two layers compile every layer graph the real
training compiles (the first layer's, whose input needs no gradient, and the other layers'; they share code). The
real training waits for it (``kernels.speed_context``), then finds the layers' graphs in the caches and compiles only
the small head loss (the copy's vocabulary is smaller: ``small_copy``).

Meant for a worker that stays, on CUDA, for a recipe that compiles, before the worker's first compiled training;
never while a vLLM engine starts (its memory profile would count this process's memory as its own). No step starts
it yet: on an H100 the worker's training did not reuse what it compiled (docs/BENCHMARKS.md, "a partial worker run,
session 25"); ``bench/compile_probe.py --ahead`` is the next measurement.

    python -m mt_core.model.warmup MODEL_DIR RECIPE_JSON PARENT_PID      # what ``compile_ahead`` runs
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

VOCAB = 4096  # the copy's vocabulary at most


def small_copy(model_dir: str | Path, layers: int = 2, vocab: int = VOCAB, device=None, dtype=None):
    """``model_dir``'s architecture with ``layers`` decoder layers and random weights, on the serving device, with at
    most ``vocab`` tokens and the output embedding tied to the input one. The layers' graphs do not depend on the
    vocabulary; the head loss's does, and the real training compiles that small graph itself (a few seconds): a 7B
    base's 152,064 x 3,584 embeddings would put 1-2 GB more on a card that also holds the worker's awake engine."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mt_core.model.load import device_and_dtype

    dev, dt = device_and_dtype()
    cfg = AutoConfig.from_pretrained(str(model_dir))
    cfg.num_hidden_layers, cfg.tie_word_embeddings = layers, True
    cfg.vocab_size = min(cfg.vocab_size, vocab)
    if getattr(cfg, "layer_types", None):  # one attention kind a layer (Qwen2's are all full attention)
        cfg.layer_types = cfg.layer_types[:layers]
    with torch.device(device or dev):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype or dt).eval()


def examples(recipe, vocab: int, steps: int = 2, seed: int = 0) -> list:
    """``steps`` optimizer steps of made-up examples: short token ids of varied lengths (the graphs are compiled for
    any length), the last four of each trained (the head's logits stay small)."""
    import random

    from mt_core.data.chat import IGNORE, Example

    rng, out = random.Random(seed), []
    for _ in range(steps * recipe.per_device_batch * recipe.grad_accum):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(16, min(128, recipe.max_length)))]
        out.append(Example(ids, [IGNORE] * (len(ids) - 4) + ids[-4:]))
    return out


def _die_with(parent: int) -> None:
    """End this process when ``parent`` ends (a worker killed mid-step leaves no compile holding GPU memory)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the line above
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    from mt_core.config import Recipe
    from mt_core.model.train import train_lora

    model_dir, recipe_json, parent = argv or sys.argv[1:]
    _die_with(int(parent))
    # vLLM's import sets TORCHINDUCTOR_COMPILE_THREADS=1 for a worker's process tree (for its own engine): compile
    # the Triton kernels in parallel here, as Inductor would by itself (the thread count is not in the cache keys)
    from torch._inductor import config as inductor_config

    inductor_config.compile_threads = min(32, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                          else os.cpu_count() or 1)
    recipe = Recipe.model_validate_json(recipe_json)
    model = small_copy(model_dir)
    t0 = time.perf_counter()
    train_lora(model, examples(recipe, model.config.vocab_size), recipe, seed=0, pad_id=0, max_steps=2,
               log=lambda m: print(m, flush=True))
    print(f"compiled {Path(model_dir).name}'s layers for the recipe in {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
