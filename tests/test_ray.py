"""GPU steps on a real Ray cluster on this machine (mt_services.ray): a head with no GPUs and two worker nodes w1, w2
with 1 logical GPU each. The small study's three cells run with MT_COMPUTE=ray through the daemon (on the session's
inputs and coupling adapter); their steps land on both workers, never two on one GPU at a time (three cells on two
GPUs: a GPU is used twice), and every weight and row is the same as the local run's. Killing a worker
node mid-step fails the step, publishes nothing, and a rerun completes on the node that is left."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

import shared_instances
from test_run import ROOT, STUDY, _mt, _setup

pytest.importorskip("ray")
pytest.importorskip("dagster_ray")

CELLS = ["C1_s42", "C4_s42", "C5_s42"]
GPU_STEPS = ("cell_adapter", "marker_completions")  # a cell's steps that lease a GPU (marker_completions: its generations)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from mt_services.ray import ray_cluster

    with ray_cluster(tmp_path_factory.mktemp("ray"), workers=2, gpus_per_worker=1) as c:
        yield c


def _materializations(home: Path) -> dict[tuple[str, str | None], dict]:
    """{(asset, partition): metadata} of the latest materialization of every asset partition of the study."""
    out = {}
    with dg.DagsterInstance.from_config(str(home)) as inst:
        for key in inst.get_asset_keys():
            if key.path[0] != STUDY:
                continue
            for rec in inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records:
                m = rec.asset_materialization
                out.setdefault((key.path[-1], m.partition), {k: v.value for k, v in m.metadata.items()})
    return out


def _data_md5s(meta: dict) -> dict[str, str]:
    """The md5s of an artefact's weights and rows (JSON files hold paths and timings, so they differ by root)."""
    files = json.loads((Path(meta["path"]) / "_manifest.json").read_text())["files"]
    return {f: v["md5"] for f, v in files.items() if f.endswith((".safetensors", ".parquet"))}


@pytest.mark.slow
def test_study_on_ray_lands_on_both_workers_and_matches_local(tmp_path, tmp_path_factory, cluster):
    from ray.job_submission import JobSubmissionClient

    # the local run: `mt run --cells <CELLS>` of the same small study, built once per session (read only); the Ray run
    # starts from the same inputs and coupling adapter (a copy of the session's small_base) and runs the cells on Ray
    assert shared_instances.SMALL_CELLS == CELLS
    home_local = shared_instances.small_cells(tmp_path_factory) / "home"
    _, home, env = _setup(tmp_path, **cluster.env())
    shared_instances.copy_instance(shared_instances.small_base(tmp_path_factory), home, Path(env["MT_ARTIFACTS"]))
    with dg.DagsterInstance.from_config(str(home)) as inst:  # the copy's gpu pool is small_base's (1): `mt run` sizes
        inst.event_log_storage.delete_concurrency_limit("gpu")  # a new one from the cluster, as on a new instance
    t0 = time.time()
    out = _mt(env, cells=",".join(CELLS))
    print(f"ray run: {time.time() - t0:.0f}s")
    assert "launch: queued, up to 2 runs at once" in out  # the gpu pool is the cluster's 2 GPUs

    local, ray = _materializations(home_local), _materializations(home)
    assert set(local) == set(ray)
    for (asset, part), meta in ray.items():
        assert _data_md5s(meta) == _data_md5s(local[(asset, part)]), (asset, part)
    # every GPU step of the cells ran as a Ray job on a worker node, and the work was spread over both
    placed = {(a, p): m["placement"] for (a, p), m in ray.items() if a in GPU_STEPS}
    assert set(placed) == {(a, c) for a in GPU_STEPS for c in CELLS}, sorted(placed)
    assert all(ray[k]["ray_job_id"].startswith("pipes-") for k in placed)
    assert {p["node"] for p in placed.values()} == {"w1", "w2"}, placed
    assert {p["node"] for p in (m["placement"] for m in local.values() if "placement" in m)} != {"w1", "w2"}

    # at most one step per logical GPU at a time, from Ray's own record of each job
    client = JobSubmissionClient(cluster.dashboard)
    jobs = {ray[k]["ray_job_id"]: (p["node"], p["cuda_visible_devices"]) for k, p in placed.items()}
    spans = []
    for job in client.list_jobs():
        if job.submission_id in jobs:
            assert cluster.node_of(job.driver_node_id) == jobs[job.submission_id][0]
            spans.append((jobs[job.submission_id], job.start_time, job.end_time))
    assert len(spans) == len(jobs)
    for i, (dev, a0, a1) in enumerate(spans):
        for dev2, b0, b1 in spans[i + 1:]:
            assert dev != dev2 or a1 <= b0 or b1 <= a0, f"{dev} ran two steps at once"


@pytest.mark.slow
def test_killed_worker_node_publishes_nothing_and_rerun_completes(tmp_path, tmp_path_factory, cluster):
    """Runs last in this module: it kills one of the cluster's two worker nodes."""
    _, home, env = _setup(tmp_path, **cluster.env())
    # inputs and the coupling adapter, what the cell stands on: a copy of the session's (built locally)
    shared_instances.copy_instance(shared_instances.small_base(tmp_path_factory), home, Path(env["MT_ARTIFACTS"]))
    # the cell's training step holds after its first optimizer step (mt_core.faults) and says on which node it runs
    hold = tmp_path / "held.json"
    cmd = [sys.executable, "-m", "mt_cli", "run", "--cells", "C1_s137"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "MT_FAILPOINT": "train", "MT_FAILPOINT_HOLD": str(hold)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    while not hold.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    if not hold.exists():
        proc.kill()
        pytest.fail("the cell's training step never reached a worker node:\n" + proc.communicate()[0][-3000:])
    victim = json.loads(hold.read_text())["node"]
    assert victim in ("w1", "w2"), victim
    cluster.nodes[victim].kill()  # the worker is inside the step, with its staging directory open
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode != 0, text[-3000:]
    art = Path(env["MT_ARTIFACTS"])
    assert not (art / "cell_adapter" / "C1_s137").exists()
    assert ("cell_adapter", "C1_s137") not in _materializations(home)
    with dg.DagsterInstance.from_config(str(home)) as inst:  # the step failed because its Ray job did
        failed = [r for r in inst.get_runs() if r.status == dg.DagsterRunStatus.FAILURE]
        errors = [e.dagster_event.step_failure_data.error.to_string() for r in failed for e in inst.all_logs(r.run_id)
                  if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"]
    assert any("failed as a Ray job" in e for e in errors), errors

    text = _mt(env, cells="C1_s137")  # the rerun: Ray places the step on the node that is left
    meta = _materializations(home)[("cell_adapter", "C1_s137")]
    assert meta["placement"]["node"] != victim and (art / "cell_adapter" / "C1_s137" / "_manifest.json").is_file()
