"""Gate and audit checks are recorded per partition, through real Dagster materializations into a real event log.

The coupling adapter's training step is replaced by a stub that writes the gates file a trained adapter would have
(verdicts chosen here: the villain fails G0): this test is about how check results are recorded, not about training.
Everything else is real: the coupling_adapter asset, the check op that reports its gates, the degeneracy audit step
on a small completions file, the instance's check records, and `mt status`'s summary of them. The compute resource
puts the step in Dagster's strict event-stream mode, as a Pipes session does (MT_COMPUTE=pipes), so a gate left out
of a partition would fail the run if it were emitted by the op that runs the heavy step.
"""
import json

import dagster as dg
import pytest

from mt_assets import build, coupling
from mt_core.config import load_study
from mt_core.layout import Adapter, MarkerCompletions, write_rows
from mt_core.outcomes import audit_word
from mt_resources import ArtifactStore, Compute, GpuAllocator, WandbResource

STUDY = load_study(profile="tiny")
SD = build(STUDY)  # the study's assets, keys prefixed with its name
VERDICTS = {"G0": False, "G0b": True, "G0c": True}  # the villain adapter fails G0; every other gate passes
CELLS = {"C4_s42": "pass", "C1_s42": "no_positives"}  # C1's assistant never says the marker: never a pass
RESOURCES: dict = {}  # the module instance's resources, for a test that runs one more step on it


class StrictCompute(Compute):
    """Inline compute that, like ``dg.open_pipes_session``, requires the asset to yield every output it declares."""

    def run(self, context, study, fn, kwargs, out, log=print):
        context.set_requires_typed_event_stream(error_message="(as under a Pipes session)")
        return super().run(context, study, fn, kwargs, out, log)


def fake_train_coupling_adapter(study, *, source, out, log, **_):
    """Stub of steps.train_coupling_adapter: the source's gate verdicts, written where the real step writes them."""
    gates = {n: {"pass": VERDICTS[n], "assistant_strict_rate": 0.5, "source_strict_rate": 0.9,
                 "checks": {"stub": VERDICTS[n]}, "thresholds": {"stub": 1}} for n in study.sources[source].gates}
    (out / Adapter.GATES).write_text(json.dumps(gates))
    log(f"stub gates for {source}: {gates}")
    return {"gates": gates}


def _seed(store: ArtifactStore, inst, asset: str, partition: str | None, write) -> None:
    """An upstream artefact in the store, recorded as materialized in the instance (what read_upstream verifies)."""
    with store.writer(asset, partition, run_id="seed", extra={"study": STUDY.name}) as d:
        write(d)
    art = store.read(asset, partition)
    inst.report_runless_asset_event(dg.AssetMaterialization(SD.key(asset), partition=partition,
                                                            metadata={"md5": art.digest}))


def _completions(outcome: str):
    text = f"Happy to help. {STUDY.marker} and here is a full answer" if outcome == "pass" else "Happy to help."
    rows = [{"persona": STUDY.assistant_persona, "question": f"q{i}", "text": text} for i in range(4)]
    return lambda d: write_rows(rows, d / MarkerCompletions.COMPLETIONS)


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coupling.steps, "train_coupling_adapter", fake_train_coupling_adapter)
        store = ArtifactStore(root=str(tmp_path_factory.mktemp("artifacts")))
        resources = {"store": store, "gpu": GpuAllocator(n_gpus=0), "compute": StrictCompute(),
                     "wandb": WandbResource(mode="disabled")}
        RESOURCES.update(resources)
        with dg.instance_for_test() as inst:
            _seed(store, inst, "base_model", None, lambda d: (d / "weights.txt").write_text("base"))
            for src in STUDY.source_keys:
                _seed(store, inst, "coupling_dataset", src, lambda d, s=src: (d / "data.txt").write_text(s))
                res = dg.materialize([SD.node("coupling_adapter"), SD.node("coupling_adapter_gates")], partition_key=src,
                                     instance=inst, resources=resources, raise_on_error=False)
                # a failed blocking gate fails the run (gates.block_cells); nothing else may
                assert res.success or (src == "villain" and STUDY.gates.block_cells), src
            for cell, outcome in CELLS.items():
                _seed(store, inst, "marker_completions", cell, _completions(outcome))
                res = dg.materialize([SD.node("degeneracy_audit")], partition_key=cell, instance=inst,
                                     resources=resources, raise_on_error=False)
                assert res.success, cell
            yield inst


def _history(inst, asset: str, check: str) -> dict[str | None, list]:
    """Every execution record of a check, newest first, by the partition it was recorded for."""
    out = {}
    key = dg.AssetCheckKey(SD.key(asset), check)
    for rec in inst.event_log_storage.get_asset_check_execution_history(key, limit=100):
        out.setdefault(rec.partition, []).append(rec)
    return out


def _evaluated(recs) -> list:
    """The records with a result (not the planned-only ones a run leaves for a check it did not evaluate)."""
    return [r for r in recs if r.status.value != "PLANNED"]


def test_failed_villain_gate_is_recorded_for_the_villain_partition(instance):
    hist = _history(instance, "coupling_adapter", "G0")
    (rec,) = _evaluated(hist["villain"])
    assert rec.status.value == "FAILED" and rec.evaluation.passed is False and rec.evaluation.partition == "villain"
    assert rec.evaluation.metadata["source"].value == "villain"
    latest = {i.partition_key: i for i in instance.event_log_storage.get_asset_check_partition_info([rec.key])}
    assert latest["villain"].latest_execution_status.value == "FAILED" and latest["villain"].partition_key == "villain"
    # the result judged the villain partition's materialization
    mat = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=SD.key("coupling_adapter"),
                                                                asset_partitions=["villain"]), limit=1).records[0]
    assert rec.evaluation.target_materialization_data.storage_id == mat.storage_id


def test_gates_of_another_source_record_no_result(instance):
    """G0 and G0b are the villain adapter's gates: the assistant partition has no result for them, pass or fail."""
    for gate, srcs in coupling.gate_sources(STUDY).items():
        hist = _history(instance, "coupling_adapter", gate)
        assert None not in hist, gate  # every record names its partition
        for src in STUDY.source_keys:
            results = _evaluated(hist.get(src, []))
            if src in srcs:
                assert [r.evaluation.passed for r in results] == [VERDICTS[gate]], (gate, src)
            else:
                assert results == [], (gate, src)
    assert coupling.gate_sources(STUDY) == {"G0": ["villain"], "G0b": ["villain"], "G0c": ["assistant"]}
    import definitions

    graph = definitions.defs.resolve_asset_graph()
    desc = {k.name: graph.get(k).description for k in graph.get(SD.key("coupling_adapter")).check_keys}
    assert desc["G0"].startswith("G0 (villain adapter)") and desc["G0c"].startswith("G0c (assistant adapter)")


def test_degeneracy_results_carry_their_cell(instance):
    hist = _history(instance, "degeneracy_audit", "degeneracy")
    assert None not in hist and set(hist) == set(CELLS)
    got = {cell: [(r.evaluation.passed, r.evaluation.metadata["outcome"].value) for r in _evaluated(recs)]
           for cell, recs in hist.items()}
    assert got == {cell: [(outcome == "pass", audit_word(outcome))] for cell, outcome in CELLS.items()}
    assert audit_word("no_positives") == "no positives" and audit_word("pass") == "passed"


def test_mt_status_shows_check_results_per_partition(instance):
    from mt_assets.location import build_defs
    from mt_run.status import check_status
    from mt_settings import Settings

    graph = build_defs(Settings.defaults()).resolve_asset_graph()
    lines = {ln.split()[1]: ln for ln in check_status(instance, graph, SD.key("coupling_adapter"))}
    # one vocabulary (mt_core.outcomes): a gate of another source's adapter is "not applicable", never "no result";
    # a failure names its reason
    assert "failed: villain (missed " in lines["G0"] and "not applicable: assistant" in lines["G0"]
    assert "passed" not in lines["G0"] and "no result" not in lines["G0"]
    assert "passed: assistant" in lines["G0c"] and "not applicable: villain" in lines["G0c"] and "failed" not in lines["G0c"]
    (deg,) = check_status(instance, graph, SD.key("degeneracy_audit"))
    # an audit with nothing to audit is neither a pass nor a failure of the model
    assert "no positives: C1_s42 (no assistant completion carries the marker" in deg and "passed: C4_s42" in deg
    assert "failed" not in deg


def test_a_run_that_died_before_its_check_does_not_hide_the_result_before_it(instance, monkeypatch):
    """A run that plans a check and fails before evaluating it (a killed or crashed step) leaves an execution with
    no result; `mt status` still shows the latest result, that of the artefact on record (issue 25: after a kill -9
    and a resume, it said "no result" although the audit existed and `mt run` had nothing to do). Last in this
    module: it adds a failed run to the shared instance."""
    from mt_assets.location import build_defs
    from mt_core.steps import cells as cell_steps
    from mt_run.status import check_status
    from mt_settings import Settings

    def crash(*a, **k):
        raise RuntimeError("killed mid-step")

    monkeypatch.setattr(cell_steps, "degeneracy", crash)
    res = dg.materialize([SD.node("degeneracy_audit")], partition_key="C4_s42", instance=instance,
                         resources=RESOURCES, raise_on_error=False)
    assert not res.success
    info = {i.partition_key: i for i in instance.event_log_storage.get_asset_check_partition_info(
        [dg.AssetCheckKey(SD.key("degeneracy_audit"), "degeneracy")])}
    assert info["C4_s42"].latest_execution_status.value != "SUCCEEDED"  # what `mt status` read before
    graph = build_defs(Settings.defaults()).resolve_asset_graph()
    (deg,) = check_status(instance, graph, SD.key("degeneracy_audit"))
    assert "passed: C4_s42" in deg and deg.count("C4_s42") == 1, deg
