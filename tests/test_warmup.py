"""The compile ahead (``kernels.compile_ahead``, ``mt_core/model/warmup.py``): a process of its own compiles a
two-layer copy of the base for the recipe, and the real training then finds every graph in torch's on-disk caches
instead of compiling it. On the CPU with Inductor's C++ backend (the GPU's is Triton; the caches and their keys are
the same machinery)."""
from __future__ import annotations

import pytest
import torch

from mt_core.config import load_study
from mt_core.model import kernels


def _recipe(**speed):
    r = load_study(profile="tiny").recipes["second_stage"]
    return r.model_copy(update={"epochs": 1, "lr": 5e-3, "speed": r.speed.model_copy(update=speed)})


def test_begin_only_where_it_helps(tiny_model_dir, monkeypatch):
    """Not on a CPU, not outside a worker that stays, not for a recipe that does not compile, not twice."""
    from mt_core.model import resident

    monkeypatch.setattr(kernels, "_ahead", [])
    monkeypatch.setattr(kernels, "_compiled_here", False)
    assert kernels.compiles(_recipe(packing=True, compile="auto"), "cuda")
    assert not kernels.compiles(_recipe(packing=True, compile="auto"), "cpu")
    assert not kernels.compiles(_recipe(packing=False, compile="on"), "cuda")
    monkeypatch.setattr(resident, "_held", resident.Resident())
    assert not kernels.compile_ahead(tiny_model_dir, _recipe(packing=True, compile="on"), log=lambda m: None)  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels, "_compiled_here", True)
    assert not kernels.compile_ahead(tiny_model_dir, _recipe(packing=True, compile="on"), log=lambda m: None)
    monkeypatch.setattr(resident, "_held", None)
    monkeypatch.setattr(kernels, "_compiled_here", False)
    assert not kernels.compile_ahead(tiny_model_dir, _recipe(packing=True, compile="on"), log=lambda m: None)
    assert kernels._ahead == []


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
