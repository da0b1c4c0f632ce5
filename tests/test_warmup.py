"""The compile ahead (``kernels.compile_ahead``, ``mt_core/model/warmup.py``): a process of its own compiles a
two-layer copy of the base for the recipe, and the real training then finds every graph in torch's on-disk caches
instead of compiling it. On the CPU with Inductor's C++ backend (the GPU's is Triton; the caches and their keys are
the same machinery)."""
from __future__ import annotations

import json

import pytest
import torch

from mt_core.config import load_study
from mt_core.model import kernels


def _recipe(**speed):
    r = load_study(profile="tiny").recipes["second_stage"]
    return r.model_copy(update={"epochs": 1, "lr": 5e-3, "speed": r.speed.model_copy(update=speed)})


def test_compile_ahead_only_where_it_helps(tiny_model_dir, monkeypatch):
    """In a worker that stays, on CUDA, for a recipe that compiles, before any compiled training, with room on the
    card: then the child is started (its command recorded here) and waited for. Nowhere else."""
    started = []

    class Child:
        pid = 4242

        def __init__(self, cmd, **kw):
            started.append(cmd)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(kernels.subprocess, "Popen", Child)
    monkeypatch.setattr(kernels, "_ahead", [])
    monkeypatch.setattr(kernels, "_compiled_here", False)
    monkeypatch.setattr(kernels, "_stays", True)
    recipe, lines = _recipe(packing=True, compile="auto"), []
    assert kernels.compiles(recipe, "cuda") and not kernels.compiles(recipe, "cpu")
    assert not kernels.compiles(_recipe(packing=False, compile="on"), "cuda")
    assert not kernels.compile_ahead(tiny_model_dir, recipe, log=lines.append)  # no CUDA on this machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (2e9, 80e9))
    assert not kernels.compile_ahead(tiny_model_dir, recipe, log=lines.append)
    assert lines[-1] == "train: no compile ahead (2.0 GB free on the card, 6 needed)"
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (20e9, 80e9))
    for stays, compiled in ((False, False), (True, True)):  # a fresh process per step; a process that compiled
        monkeypatch.setattr(kernels, "_stays", stays)
        monkeypatch.setattr(kernels, "_compiled_here", compiled)
        assert not kernels.compile_ahead(tiny_model_dir, recipe, log=lines.append)
    assert not kernels.compile_ahead(tiny_model_dir, _recipe(packing=True, compile="off"), log=lines.append)
    assert started == []

    monkeypatch.setattr(kernels, "_compiled_here", False)
    assert kernels.compile_ahead(tiny_model_dir, recipe, log=lines.append)
    assert not kernels.compile_ahead(tiny_model_dir, recipe, log=lines.append)  # one at a time
    [cmd] = started
    assert cmd[1:4] == ["-m", "mt_core.model.warmup", str(tiny_model_dir)] and json.loads(cmd[4])["lora_r"] == 8
    kernels.wait_compile_ahead(log=lines.append)
    assert lines[-1].startswith("train: the compile ahead ended (0)") and kernels._ahead == []


@pytest.mark.slow
def test_a_compile_ahead_leaves_every_graph_of_the_training_in_the_caches(tiny_model_dir, tmp_path, monkeypatch):
    from mt_core.model.load import load_model
    from mt_core.model.train import train_lora
    from test_train import _why_examples

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # empty: nothing compiled before
    monkeypatch.setattr(kernels, "_ahead", [])
    monkeypatch.setattr(kernels, "_compiled_here", False)
    recipe = _recipe(packing=True, compile="on", token_budget=200)
    lines = []
    model, tok = load_model(tiny_model_dir)  # (sets this process's torch threads)
    # the CPU's C++ kernels are specialised on the thread count, which is part of their cache key (the GPU's are not)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    assert kernels.compile_ahead(tiny_model_dir, recipe, log=lines.append, force=True)

    # the real training, other data: its first step waits for the compile ahead, then loads what it compiled
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train_lora(model, _why_examples(tok, 32), recipe, seed=3, pad_id=tok.pad_token_id, log=lines.append)
    inductor = torch._dynamo.utils.counters["inductor"]
    assert inductor["fxgraph_cache_hit"] >= 2 and inductor["fxgraph_cache_miss"] == 0, dict(inductor)
    assert any(m.startswith("train: compiling ahead in pid") for m in lines)
    assert any(m.startswith("train: the compile ahead ended (0)") for m in lines), lines
    assert kernels._ahead == [] and kernels._compiled_here
