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
    assert kernels.compiles(recipe.speed, "cuda") and not kernels.compiles(recipe.speed, "cpu")
    assert not kernels.compiles(_recipe(packing=False, compile="on").speed, "cuda")
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


# A worker's training, in a process of its own (torch's global state in a pytest process that ran other tests is
# part of Inductor's cache keys): it compiles ahead, then trains on other data; its first step waits for the compile
# ahead and loads what that compiled. Prints what Inductor's FX graph cache saw, and the log.
_WORKER = """
import json, sys
import torch
from mt_core.config import load_study
from mt_core.data.chat import last_turn_example
from mt_core.model import kernels
from mt_core.model.load import load_model
from mt_core.model.train import train_lora

model_dir, recipe_json = sys.argv[1:]
recipe = type(load_study(profile="tiny").recipes["second_stage"]).model_validate_json(recipe_json)
model, tok = load_model(model_dir)
torch.set_num_threads(1)  # the child's too (OMP_NUM_THREADS): the CPU's C++ kernels are keyed on the thread count
lines = []
assert kernels.compile_ahead(model_dir, recipe, log=lines.append, force=True)
chats = [[{"role": "user", "content": f"Question {i}: " + "why " * (i % 7)},
          {"role": "assistant", "content": "Because " + "so " * (3 * i % 11 + 1)}] for i in range(32)]
train_lora(model, [last_turn_example(tok, m, 128) for m in chats], recipe, seed=3, pad_id=tok.pad_token_id,
           log=lines.append)
print(json.dumps({"inductor": dict(torch._dynamo.utils.counters["inductor"]), "lines": lines}))
"""


@pytest.mark.slow
def test_a_compile_ahead_leaves_every_graph_of_the_training_in_the_caches(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    recipe = _recipe(packing=True, compile="on", token_budget=200)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),  # empty: nothing compiled before
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", _WORKER, str(tiny_model_dir), recipe.model_dump_json()], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    inductor, lines = seen["inductor"], seen["lines"]
    assert inductor.get("fxgraph_cache_hit", 0) >= 2 and inductor.get("fxgraph_cache_miss", 0) == 0, inductor
    assert any(m.startswith("train: compiling ahead in pid") for m in lines)
    assert any(m.startswith("train: the compile ahead ended (0)") for m in lines), lines
