"""`mt run`: a second run does nothing, a config change redoes exactly what it affects, cells run at once on distinct
devices up to the gpu pool, dead runs never block it."""
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

import zygote
from test_compute import _small_study

ROOT = Path(__file__).resolve().parents[1]
CELL = "C4_s42"  # no second stage: the cheapest cell that still has every evaluation
STUDY = "marker_transfer_villain"  # the small study's name: the prefix of its asset keys and job names


def _mt(env: dict, *args: str, cells: str = CELL) -> str:
    p = zygote.run(["run", "--cells", cells, *args], cwd=ROOT, env=env, timeout=1200)  # tests/zygote.py
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def _runs(home: Path) -> list[tuple[str, str | None, set[str]]]:
    """(stage, partition, assets) of every run of the study in the instance, oldest first: its jobs are
    ``<study>__<stage>``, its asset keys ``<study>/<asset>``, and each run is tagged with the study."""
    with dg.DagsterInstance.from_config(str(home)) as inst:
        runs = list(reversed(inst.get_runs()))
        assert all(r.job_name.startswith(f"{STUDY}__") and r.tags.get("mt/study") == STUDY for r in runs)
        assert all(k.path[0] == STUDY for r in runs for k in r.asset_selection or ())
        return [(r.job_name.removeprefix(f"{STUDY}__"), r.tags.get("dagster/partition"),
                 {k.path[-1] for k in r.asset_selection or ()}) for r in runs]


def _setup(tmp_path: Path, **extra) -> tuple[Path, Path, dict]:
    study = _small_study(tmp_path / "small.yaml")
    home, art = tmp_path / "home", tmp_path / "art"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", MT_STUDY=str(study),
               WANDB_MODE="disabled", **extra)
    env.pop("MT_RECORD_CONFIG_READS", None)
    return study, home, env


@pytest.mark.slow
def test_resume_and_redo_only_what_a_change_affects(tmp_path):
    study, home, env = _setup(tmp_path)

    _mt(env)
    first = _runs(home)
    assert [j for j, _, _ in first] == ["inputs_job", "coupling_job", "cell_job", "analysis_job"]
    # bench/cell_bench.py reads step walls and the engine counts back from this instance
    sys.path.insert(0, str(ROOT / "bench"))
    import cell_bench

    with dg.DagsterInstance.from_config(str(home)) as inst:
        res = cell_bench.report(inst, "tiny", [CELL], "villain", {})
    assert res["engine_starts_per_cell"] == [1] and res["merges_per_cell"] == [1]  # the coupling adapter, merged once
    assert {f"{CELL}/cell_adapter", f"{CELL}/cell_generations", "coupling/coupling_adapter"} <= set(res["steps"])
    assert 0 < res["steps"][f"{CELL}/cell_generations"] <= res["cell_walls_s"][0]
    assert any("published marker_completions" in m for m in res["messages"])

    # a second run finds everything current and starts no run
    out = _mt(env)
    assert "nothing to do" in out and _runs(home) == first

    # one sampler value changes: only the cell's alignment steps and the analysis run again
    raw = yaml.safe_load(study.read_text())
    n = raw["profiles"]["tiny"]["samplers"]["alignment"]["max_tokens"]
    raw["profiles"]["tiny"]["samplers"]["alignment"]["max_tokens"] = n + 1
    study.write_text(yaml.safe_dump(raw))
    plan = _mt(env, "--dry-run")  # says what would run and why (the field that changed), runs nothing
    changed = f"samplers.alignment.max_tokens {n} -> {n + 1}"
    assert f"cell[{CELL}]: would run alignment_completions, alignment_scores (alignment_completions: {changed}" \
        in plan and "coupling[villain]: up to date" in plan and _runs(home) == first, plan
    out = _mt(env)
    new = _runs(home)[len(first):]
    assert [(j, p) for j, p, _ in new] == [("cell_job", CELL), ("analysis_job", None)], new
    assert new[0][2] == {"alignment_completions", "alignment_scores"}
    assert changed in out and "inputs: up to date" in out and "coupling: up to date" in out

    # (--force with --cells redoing the cell and nothing upstream: tests/test_faults.py, the concurrent --force runs)


def test_a_dead_run_is_marked_failed_and_frees_its_slot():
    """A run left STARTED by a killed `mt run` (its pid gone) would hold its gpu slot for ever."""
    import socket

    from mt_run.runs import HOST_TAG, PID_TAG, reconcile_dead_runs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists
    with dg.instance_for_test() as inst:
        inst.event_log_storage.set_concurrency_slots("gpu", 1)
        runs = {}
        for name, pid in (("dead", dead.pid), ("alive", os.getpid())):
            run = dg.DagsterRun(job_name="cell_job", run_id=f"{name}-run", status=dg.DagsterRunStatus.STARTED,
                                tags={PID_TAG: str(pid), HOST_TAG: socket.gethostname()})
            inst.run_storage.add_run(run)
            runs[name] = run
        assert inst.event_log_storage.claim_concurrency_slot("gpu", "dead-run", "cell_adapter").is_claimed
        assert inst.event_log_storage.get_concurrency_info("gpu").active_slot_count == 1
        assert reconcile_dead_runs(inst, log=lambda *_: None) == ["dead-run"]
        assert inst.get_run_by_id("dead-run").status == dg.DagsterRunStatus.FAILURE
        assert inst.get_run_by_id("alive-run").status == dg.DagsterRunStatus.STARTED
        assert inst.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0


def test_a_daemon_mt_run_stopped_is_not_taken_for_a_live_one(tmp_path, monkeypatch):
    """The daemon `mt run` starts is stopped when it ends; the next `mt run` must not take its last heartbeat (fresh
    for a minute) for a live daemon and queue runs that nobody launches (seen as a hang in CI)."""
    from mt_run.queue import daemon, daemon_alive as _daemon_alive
    from mt_settings import Settings

    _, home, env = _setup(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as inst:
        with daemon(inst, Settings.from_env(), out=lambda *_: None) as proc:
            assert proc is not None and _daemon_alive(inst)
        assert proc.poll() is not None and not _daemon_alive(inst)


@pytest.mark.slow
def test_cells_run_at_once_on_distinct_devices(gpu_locks, tmp_path, tmp_path_factory):
    """With 2 (simulated) GPUs, 3 cells are queued through the daemon and run two at a time; no two GPU steps hold one
    device at once (one device serves two cells); 0 collisions in the store. (A 2-core machine shows the overlap, not
    a speed-up.)"""
    from shared_instances import copy_instance, small_base

    cells = ["C1_s42", "C1_s137", "C5_s42"]
    # 2 runs on 2 cores: no oversubscription. Inline, not pipes: runs of a few seconds each (Pipes children forked by
    # the tests' zygote) can end before the daemon starts the next, and the overlap below is the point
    _, home, env = _setup(tmp_path, MT_GPU_COUNT="2", MT_THREADS="1")
    copy_instance(small_base(tmp_path_factory), home, Path(env["MT_ARTIFACTS"]))  # inputs and coupling: the session's
    out = _mt(env, "--gpus", "2", cells=",".join(cells))
    assert "launch: queued, up to 2 runs at once" in out and "running on GPU" in out
    with dg.DagsterInstance.from_config(str(home)) as inst:
        runs = [r for r in inst.get_runs() if r.job_name == f"{STUDY}__cell_job"]
        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(cells)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        stats = [inst.get_run_stats(r.run_id) for r in runs]
        # runs overlapped: at some moment two or more were in progress. (How many at once depends on how fast a
        # loaded 2-core machine boots run workers, one every 2-5 s against runs of 12-20 s, so more is not asserted.)
        starts = sorted(s.start_time for s in stats)
        assert max(sum(s.start_time <= t < s.end_time for s in stats) for t in starts) >= 2
        leases = []  # (device, start, end) of every GPU step, from the event log
        for r in runs:
            logs = inst.all_logs(r.run_id)
            for e in logs:
                if (e.user_message or "").startswith("gpu: leased device "):
                    end = next(x.timestamp for x in logs if x.step_key == e.step_key and x.dagster_event
                               and x.dagster_event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"))
                    leases.append((e.user_message.split()[3], e.timestamp, end))
    # 0 collisions: each cell's artefacts on disk are the ones its own run published and the instance recorded
    import json

    from mt_core.layout import MANIFEST, artefact_dir

    by_cell = {r.tags["dagster/partition"]: r.run_id for r in runs}
    for cell in cells:
        for asset in ("cell_adapter", "marker_completions", "marker_rates", "alignment_scores"):
            manifest = json.loads((artefact_dir(Path(env["MT_ARTIFACTS"]), asset, cell) / MANIFEST).read_text())
            assert manifest["run_id"] == by_cell[cell] and manifest["partition"] == cell, (asset, cell)
    assert len({d for d, _, _ in leases}) >= 2  # the work really was spread over devices
    for i, (d, a0, a1) in enumerate(leases):
        for d2, b0, b1 in leases[i + 1:]:
            assert d != d2 or a1 <= b0 or b1 <= a0, f"device {d} held by two steps at once"


@pytest.mark.slow
def test_cells_run_side_by_side_in_forked_processes_without_a_gpu(tmp_path, tmp_path_factory):
    """On a machine without GPUs the gpu pool's slots are CPU jobs: `mt run` executes that many cells at once, each
    in a forked copy of itself with one torch thread (a forked OpenMP pool deadlocks on more), and the stage waits for
    all of them; each cell's artefacts are its own run's."""
    import json

    from shared_instances import copy_instance, small_base

    from mt_core.layout import MANIFEST, artefact_dir

    cells = ["C1_s42", "C4_s42"]
    _, home, env = _setup(tmp_path, MT_THREADS="1")
    env.pop("MT_GPU_COUNT", None)
    copy_instance(small_base(tmp_path_factory), home, Path(env["MT_ARTIFACTS"]))  # inputs and coupling: the session's
    proc = zygote.popen(["run", "--cells", ",".join(cells), "--gpus", "2"], cwd=ROOT, env=env)
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0 and "launch: inline, up to 2 runs at once (no GPU: each in a forked process" in out, out
    with dg.DagsterInstance.from_config(str(home)) as inst:
        runs = [r for r in inst.get_runs() if r.job_name == f"{STUDY}__cell_job"]
        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(cells)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert len({r.tags["mt/pid"] for r in runs}) == 2  # two processes
        # `mt run` itself runs no step, not even the lone analysis run: a library pool used here (polars' writer)
        # would hang the children forked after it
        lone = [r for r in inst.get_runs() if r.job_name == f"{STUDY}__analysis_job"]
        assert len(lone) == 1 and str(proc.pid) not in {r.tags["mt/pid"] for r in [*runs, *lone]}
        stats = [inst.get_run_stats(r.run_id) for r in runs]
        starts = sorted(s.start_time for s in stats)
        assert max(sum(s.start_time <= t < s.end_time for s in stats) for t in starts) == 2  # they overlapped
    by_cell = {r.tags["dagster/partition"]: r.run_id for r in runs}
    for cell in cells:
        manifest = json.loads((artefact_dir(Path(env["MT_ARTIFACTS"]), "marker_rates", cell) / MANIFEST).read_text())
        assert manifest["run_id"] == by_cell[cell]


@pytest.mark.slow
def test_a_killed_forked_run_fails_its_stage_and_the_next_mt_run_resumes(tmp_path, tmp_path_factory):
    """Both forked cells are SIGKILLed inside their training (failpoint ``train``): `mt run` names each dead process,
    fails the stage, publishes nothing and leaves their runs failed, not STARTED; the next `mt run` makes each cell
    once."""
    from shared_instances import copy_instance, small_base

    from mt_core.layout import artefact_dir

    cells = ["C1_s42", "C1_s137"]
    _, home, env = _setup(tmp_path, MT_THREADS="1")
    env.pop("MT_GPU_COUNT", None)
    art = Path(env["MT_ARTIFACTS"])
    copy_instance(small_base(tmp_path_factory), home, art)
    cmd = ["run", "--cells", ",".join(cells), "--gpus", "2", "--until", "cells"]
    p = zygote.run(cmd, cwd=ROOT, env={**env, "MT_FAILPOINT": "train"}, timeout=600)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stdout.count("FAILED: its process died (exit code -9)") == 2, p.stdout[-2000:]
    assert "cell: 2 of 2 run(s) failed; later stages not started" in p.stderr + p.stdout
    for cell in cells:
        assert not artefact_dir(art, "cell_adapter", cell).exists()
    left = {p.name.split("-")[0] for p in (art / ".staging" / "cell_adapter").iterdir()}
    assert left == set(cells), left  # the killed writers' staging folders
    with dg.DagsterInstance.from_config(str(home)) as inst:
        runs = [r for r in inst.get_runs() if r.job_name == f"{STUDY}__cell_job"]
        assert sorted(r.status.value for r in runs) == ["FAILURE", "FAILURE"]  # reconciled by the killed runs' stage
    out = _mt(env, "--until", "cells", cells=",".join(cells))
    # the next run removes them at once (their writers ran on this host and are gone), not an hour later
    assert "removed 2 staging folder(s) left by killed steps" in out, out[-2000:]
    assert not list((art / ".staging" / "cell_adapter").iterdir())
    with dg.DagsterInstance.from_config(str(home)) as inst:
        runs = [r for r in inst.get_runs() if r.job_name == f"{STUDY}__cell_job"]
        by = {c: sorted(r.status.value for r in runs if r.tags["dagster/partition"] == c) for c in cells}
        assert by == {c: ["FAILURE", "SUCCESS"] for c in cells}, by
    for cell in cells:
        assert artefact_dir(art, "cell_adapter", cell).exists()
