"""Execution: GPU leases, and heavy steps run in a Dagster Pipes child process (Compute(mode="pipes")).

The Pipes test runs one tiny cell end to end through `mt demo` through Pipes, on a shrunken copy of the study (fewer
pretraining steps, samples and ARC rows), and checks that it gives the same artefacts and metadata keys as the inline
run of the same study (tests/shared_instances.py's ``small_cells``, built once per session), and that the child's log
lines reached Dagster's event log.
"""
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
import zygote

from mt_assets.common import publish
from mt_assets.study import StudyDefs
from mt_core.config import load_study
from mt_core.steps import cells as cell_steps
from mt_resources import ArtifactStore, Compute, GpuAllocator

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["base_model", "onpolicy_completions", "coupling_adapter", "cell_adapter", "marker_completions", "arc_scores",
         "alignment_completions"]
CELL = "C4_s42"


# ---------------------------------------------------------------------------------------------------------------
# GPU leases with a simulated device count
def _hold(lock_dir, n, q):
    with GpuAllocator(lock_dir=lock_dir, n_gpus=n, wait_s=1).lease(lambda *_: None) as i:
        q.put((os.getpid(), i, os.environ["CUDA_VISIBLE_DEVICES"]))
        time.sleep(600)


def test_leases_distinct_exported_waiting_and_freed_by_kill(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(str(tmp_path), 3, q)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        held = [q.get(timeout=60) for _ in procs]
        assert sorted(i for _, i, _ in held) == [0, 1, 2]
        assert all(env == str(i) for _, i, env in held)  # each process sees its own device only
        alloc = GpuAllocator(lock_dir=str(tmp_path), n_gpus=3, wait_s=1)
        with pytest.raises(TimeoutError, match="no free GPU among 3"):  # a 4th waits, then gives up
            with alloc.lease(lambda *_: None):
                pass
        pid, idx, _ = held[1]
        os.kill(pid, signal.SIGKILL)  # the kernel drops a dead process's flock: its GPU is free again
        next(p for p in procs if p.pid == pid).join(10)
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        with alloc.lease(lambda *_: None) as i:
            assert i == idx and os.environ["CUDA_VISIBLE_DEVICES"] == str(idx)
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == before
    finally:
        for p in procs:
            p.kill()
            p.join()


def test_no_second_device_once_cuda_is_initialised(tmp_path, monkeypatch):
    """In a process that already initialised CUDA, a lease of another device would not move the work: refused."""
    import sys
    from types import SimpleNamespace

    fake = SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    alloc = GpuAllocator(lock_dir=str(tmp_path), n_gpus=2, wait_s=1)
    with alloc.lease(lambda *_: None) as i:  # device 0: the one CUDA already uses
        assert i == 0
        with pytest.raises(RuntimeError, match="MT_COMPUTE=pipes"):
            with alloc.lease(lambda *_: None):
                pass
    with alloc.lease(lambda *_: None) as i:  # the refused lease left no lock behind
        assert i == 0
    fake.cuda.is_initialized = lambda: False
    with alloc.lease(lambda *_: None) as a, alloc.lease(lambda *_: None) as b:
        assert (a, b) == (0, 1)


def test_no_gpu_means_cpu(tmp_path):
    with GpuAllocator(lock_dir=str(tmp_path), n_gpus=0).lease(lambda *_: None) as i:
        assert i is None
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# a failing child fails the step with its error text and publishes nothing
def test_failing_child_fails_the_step_and_publishes_nothing(tmp_path):
    store = ArtifactStore(root=str(tmp_path / "art"))
    missing = tmp_path / "no_such_completions"

    @dg.asset(name="marker_rates", partitions_def=dg.StaticPartitionsDefinition([CELL]))
    def broken(context: dg.AssetExecutionContext, store: ArtifactStore, compute: Compute):
        return publish(StudyDefs(load_study(profile="tiny")), context, store, cell_steps.marker_rates, [],
                       partition=CELL, compute=compute, cell_key=CELL, completions=missing)

    res = dg.materialize([broken], partition_key=CELL, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
                         resources={"store": store, "compute": Compute(mode="pipes")})
    assert not res.success
    err, text = res.get_step_failure_events()[0].step_failure_data.error, ""
    while err:
        text, err = text + err.message, err.cause
    assert "failed in its child process" in text and "no_such_completions" in text, text
    assert not store.path("marker_rates", CELL).exists()
    assert not [p for p in (tmp_path / "art").rglob("*") if p.is_file()]
    with pytest.raises(ValueError, match="not one of"):
        Compute(mode="gpu").run(None, None, cell_steps.marker_rates, {}, tmp_path)


def test_only_registered_steps_cross_to_a_worker():
    """A worker runs a step it looks up by its registered name; anything else is refused before a child starts."""
    from mt_core.steps.registry import lookup, registered

    assert lookup(registered(cell_steps.marker_rates)) is cell_steps.marker_rates

    def not_a_step(study, out, log):
        return {}
    with pytest.raises(KeyError, match="not a registered step"):
        registered(not_a_step)
    with pytest.raises(KeyError, match="no step named"):
        lookup("os.system")


# ---------------------------------------------------------------------------------------------------------------
# the Pipes path end to end on CPU, against the inline path
def _small_study(path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "studies" / "marker_transfer_villain.yaml").read_text())
    tiny = raw["profiles"]["tiny"]
    tiny["model"]["pretrain_steps"] = 20
    tiny["arc"] = {"limit": 10}
    tiny["recipes"]["coupling"]["epochs"] = 1
    tiny["data"] = {"em": {"kind": "synthetic", "rows": 64, "seed": 1, "md5": None},  # 4 training steps, not 30
                    "benign": {"kind": "synthetic", "rows": 64, "seed": 2, "md5": None}}
    tiny["samplers"] = {"onpolicy": {"n": 1, "max_tokens": 8}, "marker": {"n": 1, "max_tokens": 8},
                        "gate": {"n": 1, "max_tokens": 8}, "alignment": {"n": 1, "max_tokens": 8}}
    tiny["wandb"] = "disabled"
    tiny["gates"]["block_cells"] = False  # 20 pretraining steps and one coupling epoch teach no marker
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from shared_instances import small_cells

    study = _small_study(tmp_path_factory.mktemp("study") / "small.yaml")
    # inline: the session's `mt run` of this study (inline, the tiny profile's default), whose cells include CELL
    inline = small_cells(tmp_path_factory)
    out = {"inline": (inline / "home", inline / "art")}
    for mode in ("pipes",):
        home, art = tmp_path_factory.mktemp(f"home_{mode}"), tmp_path_factory.mktemp(f"art_{mode}")
        env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", MT_STUDY=str(study),
                   MT_COMPUTE=mode, WANDB_MODE="disabled")
        t0 = time.perf_counter()
        p = zygote.run(["demo", "--cells", CELL, "--log-level", "WARNING"], cwd=ROOT, env=env, timeout=600)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        print(f"{mode}: {time.perf_counter() - t0:.1f}s")
        out[mode] = home, art
    return out


STUDY = "marker_transfer_villain"  # the small study's name: its keys are <study>/<asset>, its steps <study>__<asset>


def _latest(inst, asset):
    part = {"onpolicy_completions": "villain", "coupling_adapter": "villain", "base_model": None}.get(asset, CELL)
    rec = inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey([STUDY, asset]),
                                                            asset_partitions=[part] if part else None),
                                      limit=1).records[0]
    return rec.run_id, rec.asset_materialization.metadata


@pytest.mark.slow
def test_pipes_matches_inline(runs):
    metas = {}
    for mode, (home, art) in runs.items():
        with dg.DagsterInstance.from_config(str(home)) as inst:
            metas[mode] = {a: _latest(inst, a)[1] for a in HEAVY}
    for a in HEAVY:
        inline, pipes = metas["inline"][a], metas["pipes"][a]
        assert set(inline) == set(pipes), (a, set(inline) ^ set(pipes))
        assert {k: type(v) for k, v in inline.items()} == {k: type(v) for k, v in pipes.items()}, a
        # published, and seeded on CPU: the same weights and rows either way (JSON files hold paths and timings)
        files = [json.loads(Path(metas[m][a]["path"].value, "_manifest.json").read_text())["files"] for m in runs]
        data = [{f: v["md5"] for f, v in fs.items() if f.endswith((".safetensors", ".parquet", "model_ref.json"))}
                for fs in files]  # the base: a reference to its content-addressed snapshot (name, weights md5)
        assert data[0] == data[1] and (data[0] or a == "cell_adapter"), a  # C4's cell adapter is "none"


@pytest.mark.slow
def test_child_logs_reach_the_event_log(runs):
    home, _ = runs["pipes"]
    with dg.DagsterInstance.from_config(str(home)) as inst:
        for asset, text in [("coupling_adapter", "gate G0"), ("cell_generations", "marker["),
                            ("base_model", "tiny")]:  # "tiny: pretrain step", or its snapshot reused
            run_id, _ = _latest(inst, {"cell_generations": "marker_completions"}.get(asset, asset))
            msgs = [e.user_message for e in inst.all_logs(run_id) if e.step_key == f"{STUDY}__{asset}"]
            assert any(m.startswith("worker: ") for m in msgs), asset
            assert any(text in m for m in msgs), (asset, text)
            assert any(m.startswith("pipes: ") and "child process" in m for m in msgs), asset
            assert any(m.startswith("worker: ") and "child pid" in m for m in msgs), asset


def test_gpu_pool_limit(monkeypatch):
    from mt_cli import set_gpu_pool
    from mt_settings import Settings

    with dg.instance_for_test() as inst:
        monkeypatch.setenv("MT_GPU_COUNT", "3")
        assert set_gpu_pool(inst, Settings.from_env()) == 3 and inst.event_log_storage.get_concurrency_info("gpu").slot_count == 3
        monkeypatch.setenv("MT_GPU_COUNT", "0")  # no GPU: one step at a time, on CPU
        assert set_gpu_pool(inst, Settings.from_env()) == 1 and inst.event_log_storage.get_concurrency_info("gpu").slot_count == 1
        assert set_gpu_pool(inst, Settings.from_env(), 2) == 2
