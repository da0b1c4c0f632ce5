"""Workers that stay (issue 23): the base model held across steps, and ``MT_COMPUTE=worker`` through Dagster.

* The held base is put back bit for bit after a step trained a LoRA on it or merged adapters into it, and a training
  on it computes exactly what a training on a freshly loaded base computes (its losses and its LoRA weights).
* The small study (tests/test_compute.py) run by one worker, cell after cell, gives the same artefacts, md5 for md5,
  as the session's inline run, where every step loads its own base (tests/test_compute.py shows that run equal to
  the fresh-process Pipes run). Before that, kill -9 of the worker during training and during generation: the step
  fails, nothing is published, and the next `mt run` resumes with a new worker.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mt_core.layout import MANIFEST, artefact_dir
import zygote

ROOT = Path(__file__).resolve().parents[1]
STUDY = "marker_transfer_villain"


def _lora_state(peft_model) -> dict:
    return {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}


def test_host_snapshot_is_one_buffer_of_exact_copies():
    """Every tensor of any dtype and size copied bit for bit into views of one host buffer, none sharing memory with
    the tensor it copies (the base changes in place during a step; the snapshot must not)."""
    import torch

    from mt_core.model.resident import host_snapshot

    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(7, 3, generator=g).bfloat16(), "b": torch.randn(5, generator=g),
             "t": torch.randn(4, 6, generator=g).t(), "i": torch.arange(3), "m": torch.tensor([True, False, True])}
    snap = host_snapshot(state)
    assert snap.keys() == state.keys()
    assert all(snap[k].dtype == t.dtype and snap[k].shape == t.shape and torch.equal(snap[k], t)
               for k, t in state.items())
    assert len({v.untyped_storage().data_ptr() for v in snap.values()}) == 1  # one buffer
    assert all(v.data_ptr() % 64 == 0 for v in snap.values())
    for t in state.values():
        t.zero_() if t.dtype != torch.bool else t.fill_(False)
    assert not any(torch.equal(snap[k], t) for k, t in state.items())  # copies, not views


def test_held_base_is_restored_exactly_and_trains_like_a_fresh_one(tiny_model_dir, tmp_path, monkeypatch):
    import torch

    from mt_core.config import load_study
    from mt_core.model import resident
    from mt_core.model.load import load_model, merge_lora
    from mt_core.model.resident import model_for
    from mt_core.model.train import train_lora
    from test_train import _examples, _speed

    recipe = _speed(load_study(profile="tiny").recipes["second_stage"].model_copy(update={"epochs": 2, "lr": 5e-3}),
                    packing=False)

    def train(model, tok, seed):
        return train_lora(model, _examples(tok, 16), recipe, seed=seed, pad_id=tok.pad_token_id,
                          log=lambda *_: None)

    # the oracle: a freshly loaded base; its LoRA saved as an adapter to merge later
    model, tok = load_model(tiny_model_dir)
    fresh_peft, fresh = train(model, tok, seed=7)
    fresh_lora = _lora_state(fresh_peft)
    fresh_peft.save_pretrained(str(tmp_path / "adapter"))
    del model, fresh_peft

    holder = resident.Resident()
    monkeypatch.setattr(resident, "_held", holder)
    holder.lend(tiny_model_dir)
    holder.restore()
    loaded = holder.checksum()
    assert loaded == resident_checksum_of_fresh_load(tiny_model_dir)

    # a previous "cell": a LoRA trained on the held base, then merged into it
    with model_for(tiny_model_dir) as (model, tok):
        peft_model, _ = train(model, tok, seed=3)
        merge_lora(peft_model)
        assert holder.checksum() != loaded
    assert holder.checksum() == loaded

    # another: an adapter merged by model_for itself
    with model_for(tiny_model_dir, [tmp_path / "adapter"]) as (model, tok):
        assert holder.checksum() != loaded
    assert holder.checksum() == loaded

    # now the oracle's training on the held base: the same losses and the same LoRA, bit for bit
    with model_for(tiny_model_dir) as (model, tok):
        peft_model, res = train(model, tok, seed=7)
        held_lora = _lora_state(peft_model)
    assert res.losses == fresh.losses
    assert held_lora.keys() == fresh_lora.keys()
    assert all(torch.equal(held_lora[k], fresh_lora[k]) for k in fresh_lora)

    # and the base is the loaded one again, with no PEFT module left on it, loaded once for all of the above
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert holder.checksum() == loaded
    assert not any(isinstance(m, BaseTunerLayer) for m in holder.model.modules())
    assert all(p.requires_grad for p in holder.model.parameters()) and not holder.model.training
    assert (holder.loads, holder.lends) == (1, 4)


def resident_checksum_of_fresh_load(model_dir) -> str:
    from mt_core.model import resident

    r = resident.Resident()
    r.lend(model_dir)
    return r.checksum()


# --- through Dagster -------------------------------------------------------------------------------------------------

def _env(home: Path, art: Path, study: Path, **extra) -> dict:
    from shared_instances import small_env

    return {**small_env(home, art, study), "MT_COMPUTE": "worker", "MT_WORKER_IDLE_S": "120", **extra}


def _mt(env: dict, cells: str) -> subprocess.CompletedProcess:
    return zygote.run(["run", "--cells", cells, "--launch", "inline"], cwd=ROOT, env=env, timeout=900)


def _latest(home: Path) -> dict[tuple[str, str | None], dict]:
    """{(asset, partition): metadata} of the latest materialization of every asset partition."""
    out = {}
    with dg.DagsterInstance.from_config(str(home)) as inst:
        for key in inst.get_asset_keys():
            for rec in inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records:
                m = rec.asset_materialization
                out.setdefault((key.path[-1], m.partition), {k: v.value for k, v in m.metadata.items()})
    return out


@pytest.fixture
def workers_stopped(tmp_path):
    """Every worker a test started is killed when it ends (they outlive the runs that start them)."""
    yield
    for pidfile in tmp_path.rglob("workers/*.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.mark.slow
def test_cells_in_one_worker_match_fresh_loads_and_a_killed_worker_publishes_nothing(tmp_path, tmp_path_factory,
                                                                                     workers_stopped):
    from shared_instances import copy_instance, small_base, small_cells

    base, oracle = small_base(tmp_path_factory), small_cells(tmp_path_factory)
    study = tmp_path / "small.yaml"
    study.write_text((base / "small.yaml").read_text())
    home, art = tmp_path / "home", tmp_path / "art"
    copy_instance(base, home, art)

    # kill -9 of the worker: during C5_s42's training, then (a new worker) during its generation
    for point, unpublished in (("train", "cell_adapter"), ("generate", "marker_completions")):
        p = _mt(_env(home, art, study, MT_FAILPOINT=point), "C5_s42")
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "died during" in out and "Traceback" not in p.stdout, out[-3000:]
        assert not (artefact_dir(art, unpublished, "C5_s42") / MANIFEST).exists(), point
    assert (artefact_dir(art, "cell_adapter", "C5_s42") / MANIFEST).exists()  # trained by the second worker

    # the rest in one new worker: C5_s42 resumes, then C1_s42 (trained after another cell's steps)
    p = _mt(_env(home, art, study), "C5_s42,C1_s42")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    ran, ref = _latest(home), _latest(oracle / "home")
    cells = {"C5_s42", "C1_s42"}
    # one entry per step that ran in a worker (cell_generations also made the alignment completions and ARC scores)
    steps = {k: m for k, m in ran.items() if k[1] in cells and k[0] in ("cell_adapter", "marker_completions")}
    assert len(steps) == 4 and all("worker_pid" in m for m in steps.values()), steps
    assert len({m["worker_pid"] for k, m in steps.items() if k != ("cell_adapter", "C5_s42")}) == 1, steps
    assert sum(not m["worker_reused"] for m in steps.values()) == 2  # the second kill's worker, and this run's

    # the same artefacts as the inline run's, md5 for md5
    mine = {k: m["md5"] for k, m in ran.items() if k[1] in cells}
    assert len(mine) >= 2 * 7 and {k: ref[k]["md5"] for k in mine} == mine

    # and the base the worker holds is the loaded one, bit for bit
    from mt_core.layout import BaseModel
    from mt_resources.worker import Worker

    pid = next(iter(steps.values()))["worker_pid"]
    key = next(f.stem for f in (home / "workers").glob("*.pid") if f.read_text() == str(pid))
    held = Worker.at(key, home / "workers").checksum()
    assert held == resident_checksum_of_fresh_load(BaseModel.model_dir(artefact_dir(art, "base_model", None)))

    # `mt workers` lists it (idle, what it holds), and --stop ends it
    env = _env(home, art, study)
    listed = zygote.run(["workers"], cwd=ROOT, env=env, timeout=120)
    assert listed.returncode == 0 and f"pid {pid}" in listed.stdout, listed.stdout + listed.stderr
    line = next(x for x in listed.stdout.splitlines() if f"pid {pid}" in x)
    assert " idle, " in line and "step(s)" in line and "holding " in line and "/tiny-" in line, line  # its snapshot
    stop = zygote.run(["workers", "--stop"], cwd=ROOT, env=env, timeout=120)
    assert stop.returncode == 0 and f"pids {pid}" in stop.stdout.replace(",", ""), stop.stdout + stop.stderr
