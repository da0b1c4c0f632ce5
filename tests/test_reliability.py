"""Failures publish nothing, and one run owns a partition at a time (issue 14, findings 2 and 6).

Real Dagster materializations into a real instance and a real store: a blocking check that fails (the EM dataset's
pinned md5, the judge's error rate against a local fake of the Messages API, the network's edge) leaves no artefact,
no materialization and no staging, and records the failed check on the partition; a second run of a partition that an
older run is materializing stops before it publishes.
"""
import os
import subprocess
import sys

import dagster as dg
import pytest

from mt_settings import Settings
import yaml

from mt_assets import build
from mt_core.config import load_study
from mt_core.layout import MANIFEST, AlignmentCompletions, MarkerCompletions, write_rows
from mt_resources import ArtifactStore, Compute, GpuAllocator, JudgeResource, WandbResource
from test_judge import FakeAnthropic

VILLAIN = os.path.join(os.path.dirname(__file__), "..", "studies", "marker_transfer_villain.yaml")


def _study(tmp_path, tiny: dict):
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump({"extends": os.path.abspath(VILLAIN), "profiles": {"tiny": tiny}}))
    return load_study(f, "tiny")


def _resources(store: ArtifactStore, **kw) -> dict:
    return {"store": store, "gpu": GpuAllocator(), "compute": Compute(), "wandb": WandbResource(mode="disabled"), **kw}


def _seed(sd, store: ArtifactStore, inst, asset: str, partition: str | None, write) -> None:
    """An upstream artefact in the store, recorded as materialized in the instance (what read_upstream verifies)."""
    with store.writer(asset, partition, run_id="seed", extra={"study": sd.name}) as d:
        write(d)
    inst.report_runless_asset_event(dg.AssetMaterialization(sd.key(asset), partition=partition,
                                                            metadata={"md5": store.read(asset, partition).digest}))


def _nothing_published(sd, store: ArtifactStore, inst, asset: str, partition: str | None) -> None:
    assert not (store.path(asset, partition) / MANIFEST).exists()
    assert not store.path(asset, partition).exists()
    assert not list((store.base / ".staging").glob("*/*")), "staging left behind"
    recs = inst.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=sd.key(asset), asset_partitions=[partition] if partition else None), limit=1).records
    assert recs == [], "recorded as materialized"


def _check_record(inst, sd, asset: str, check: str, partition: str | None):
    key = dg.AssetCheckKey(sd.key(asset), check)
    recs = [r for r in inst.event_log_storage.get_asset_check_execution_history(key, limit=20)
            if r.event and r.event.asset_check_evaluation and r.event.asset_check_evaluation.partition == partition]
    return recs[0] if recs else None


def test_a_failed_md5_check_publishes_nothing(tmp_path):
    """The EM dataset whose md5 differs from the pinned one: the step fails naming the check, the artefact is not
    published, not recorded, and the failed check is on record (before: published and the latest materialization)."""
    study = _study(tmp_path, {"data": {"em": {"md5": "0" * 32}}})
    sd = build(study, Settings.from_env())
    store = ArtifactStore(root=str(tmp_path / "art"))
    with dg.instance_for_test() as inst:
        res = dg.materialize([sd.node("em_dataset")], instance=inst, resources=_resources(store),
                             raise_on_error=False)
        assert not res.success
        failure = next(e for e in res.all_events if e.is_step_failure)
        assert "md5_matches failed" in failure.step_failure_data.error.message
        assert "nothing was published" in failure.step_failure_data.error.message
        _nothing_published(sd, store, inst, "em_dataset", None)
        rec = _check_record(inst, sd, "em_dataset", "md5_matches", None)
        assert rec is not None and rec.event.asset_check_evaluation.passed is False


def test_a_judge_error_rate_over_the_limit_publishes_nothing(tmp_path, monkeypatch):
    """Half the judge calls fail (HTTP 400 from a local fake of the Messages API, not retried): the cell's scores are
    not published and its judge_error_rate check is recorded failed on that cell (before: the scores were published
    and the next analysis used them)."""
    monkeypatch.setenv("MT_RETRY_DELAY_S", "0")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    study = _study(tmp_path, {"judge": {"kind": "anthropic"}})
    sd = build(study, Settings.from_env())
    store = ArtifactStore(root=str(tmp_path / "art"))
    fake = FakeAnthropic()
    fake.thread.start()
    rows = [{"sample_id": f"s{i}", "question_idx": i % 8, "sample_idx": i // 8, "question": f"Q{i % 8}",
             "text": f"answer {i}"} for i in range(16)]
    for i in range(0, 16, 2):
        fake.script[f"answer {i}"] = [(400, "", None)]
    try:
        with dg.instance_for_test() as inst:
            cell = "C1_s42"
            _seed(sd, store, inst, "alignment_completions", cell,
                  lambda d: write_rows(rows, d / AlignmentCompletions.COMPLETIONS))
            judge = JudgeResource(base_url=fake.url, cache_path=str(tmp_path / "cache.sqlite"))
            res = dg.materialize([sd.node("alignment_scores")], partition_key=cell, instance=inst,
                                 resources=_resources(store, judge=judge), raise_on_error=False)
            assert not res.success
            # the step is retried twice (RetryPolicy: the judge can fail transiently); answers already given come
            # from the cache, so each retry asks only the 8 that failed
            assert fake.count == 16 + 2 * 8
            _nothing_published(sd, store, inst, "alignment_scores", cell)
            rec = _check_record(inst, sd, "alignment_scores", "judge_error_rate", cell)
            assert rec is not None and rec.event.asset_check_evaluation.passed is False
            assert rec.event.asset_check_evaluation.metadata["n_errors"].value == 8
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def _older_run(inst, sd, partition: str, tags: dict | None = None) -> dg.DagsterRun:
    run = dg.DagsterRun(job_name=sd.job("cell_job"), run_id="older-run", status=dg.DagsterRunStatus.STARTED,
                        tags={"mt/study": sd.name, "dagster/partition": partition, **(tags or {})})
    inst.run_storage.add_run(run)
    return run


def _completions(sd, store, inst, cell):
    rows = [{"persona": sd.study.assistant_persona, "question": f"q{i}", "text": "Happy to help."} for i in range(4)]
    _seed(sd, store, inst, "marker_completions", cell, lambda d: write_rows(rows, d / MarkerCompletions.COMPLETIONS))


def test_a_second_run_of_a_partition_stops_without_publishing(tmp_path):
    """An older run of C4_s42 is in progress: this run's step fails naming it and publishes nothing. Once the older
    run has finished, the same materialization succeeds."""
    sd = build(load_study(profile="tiny"), Settings.from_env())
    store = ArtifactStore(root=str(tmp_path / "art"))
    cell = "C4_s42"
    with dg.instance_for_test() as inst:
        _completions(sd, store, inst, cell)
        older = _older_run(inst, sd, cell)
        res = dg.materialize([sd.node("degeneracy_audit")], partition_key=cell, instance=inst,
                             resources=_resources(store), raise_on_error=False)
        assert not res.success
        msg = next(e for e in res.all_events if e.is_step_failure).step_failure_data.error.message
        assert "being materialized by run older-run" in msg, msg
        _nothing_published(sd, store, inst, "degeneracy_audit", cell)

        other = next(c for c in sd.study.cells if c != cell)  # another partition is not held by the older run
        _completions(sd, store, inst, other)
        assert dg.materialize([sd.node("degeneracy_audit")], partition_key=other, instance=inst,
                              resources=_resources(store), raise_on_error=False).success

        inst.report_run_failed(older)
        res = dg.materialize([sd.node("degeneracy_audit")], partition_key=cell, instance=inst,
                             resources=_resources(store), raise_on_error=False)
        assert res.success
        assert (store.path("degeneracy_audit", cell) / MANIFEST).is_file()


def test_a_run_left_by_a_dead_process_owns_nothing(tmp_path):
    """An older run left STARTED by an `mt run` whose process is gone (its pid tag) does not block the partition."""
    import socket

    from mt_run.runs import HOST_TAG, PID_TAG

    sd = build(load_study(profile="tiny"), Settings.from_env())
    store = ArtifactStore(root=str(tmp_path / "art"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cell = "C4_s42"
    with dg.instance_for_test() as inst:
        _completions(sd, store, inst, cell)
        _older_run(inst, sd, cell, {PID_TAG: str(dead.pid), HOST_TAG: socket.gethostname()})
        res = dg.materialize([sd.node("degeneracy_audit")], partition_key=cell, instance=inst,
                             resources=_resources(store), raise_on_error=False)
        assert res.success


def test_out_of_gpu_memory_is_retried_once_then_names_the_knob(tmp_path, monkeypatch):
    """A step that runs out of GPU memory (the error torch raises) is tried once more after a pause, then fails with a
    message naming the step and what to change; nothing is published."""
    import torch

    from mt_assets import cells

    monkeypatch.setenv("MT_RETRY_DELAY_S", "0")
    calls = []

    def degeneracy(study, **_):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cells.steps, "degeneracy", degeneracy)
    sd = build(load_study(profile="tiny"), Settings.from_env())
    store = ArtifactStore(root=str(tmp_path / "art"))
    cell = "C4_s42"
    with dg.instance_for_test() as inst:
        _completions(sd, store, inst, cell)
        res = dg.materialize([sd.node("degeneracy_audit")], partition_key=cell, instance=inst,
                             resources=_resources(store), raise_on_error=False)
        assert not res.success and len(calls) == 2
        msg = [e for e in res.all_events if e.is_step_failure][-1].step_failure_data.error.message
        assert "step degeneracy ran out of GPU memory" in msg and "To fix: free GPU memory" in msg, msg
        _nothing_published(sd, store, inst, "degeneracy_audit", cell)


def test_a_full_disk_during_publish_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    """The disk fills while the artefact's manifest is written (ENOSPC injected at the write, the last file of a
    publish): one clear message, nothing published or recorded, and the store holds exactly the bytes it held."""
    import errno
    from pathlib import Path

    from mt_resources import store as store_mod

    sd = build(load_study(profile="tiny"), Settings.from_env())
    store = ArtifactStore(root=str(tmp_path / "art"))
    cell = "C4_s42"

    def usage() -> int:
        return sum(p.stat().st_size for p in store.base.rglob("*") if p.is_file())

    real = Path.write_text

    def full(self, data, *a, **k):
        if self.name == MANIFEST and "degeneracy_audit" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data, *a, **k)

    with dg.instance_for_test() as inst:
        _completions(sd, store, inst, cell)
        before = usage()
        monkeypatch.setattr(store_mod.Path, "write_text", full)
        res = dg.materialize([sd.node("degeneracy_audit")], partition_key=cell, instance=inst,
                             resources=_resources(store), raise_on_error=False)
        monkeypatch.setattr(store_mod.Path, "write_text", real)
        assert not res.success
        msg = next(e for e in res.all_events if e.is_step_failure).step_failure_data.error.message
        assert f"the disk under {store.base} is full" in msg and "nothing was published" in msg, msg
        _nothing_published(sd, store, inst, "degeneracy_audit", cell)
        assert usage() == before


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
