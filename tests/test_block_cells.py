"""``gates.block_cells``: a cell built on a coupling adapter whose gate failed is refused, with a message naming the
adapter and the gate, when block_cells is true; with block_cells false it runs (and the run log says why).

The refusal lives in the Dagster asset (mt_assets.cells.coupling, called by every cell asset), so the test
materializes the real ``cell_adapter`` asset for C4_s42 (villain base, no second stage) in an ephemeral instance, on a
store holding a recorded base model and villain coupling adapter; only the step it would publish is replaced by a
recorder (no model is trained)."""
import json

import dagster as dg
import pytest

import mt_assets
from mt_assets import cells
from mt_core.config import load_study
from mt_resources import ArtifactStore, Compute, GpuAllocator, WandbResource

CELL = "C4_s42"


def _put(sd, instance, store: ArtifactStore, asset: str, partition: str | None, files: dict[str, str]):
    """Publish an artefact and record its materialization, as an upstream run would have."""
    with store.writer(asset, partition, run_id="setup", extra={"study": sd.name}) as d:
        for name, text in files.items():
            (d / name).write_text(text)
    art = store.read(asset, partition)
    instance.report_runless_asset_event(dg.AssetMaterialization(sd.key(asset), partition=partition,
                                                                metadata={"md5": art.digest}))


@pytest.fixture
def run(tmp_path, monkeypatch):
    base_study = load_study(profile="tiny")
    assert base_study.cell(CELL).base == "villain" and base_study.cell(CELL).second_stage == "none"

    def materialize(*, block: bool, gates: dict):
        instance = dg.DagsterInstance.ephemeral()
        store = ArtifactStore(root=str(tmp_path / f"art-{block}-{len(gates)}-{all(gates.values())}"))
        study = base_study.model_copy(update={"gates": base_study.gates.model_copy(update={"block_cells": block})})
        published = []

        def publish(sd, context, store, fn, upstream, **kwargs):
            published.append((fn.__name__, [(a.asset, a.partition) for a in upstream]))
            return dg.MaterializeResult()

        monkeypatch.setattr(cells, "publish", publish)
        sd = mt_assets.build(study)
        _put(sd, instance, store, "base_model", None, {"ref.json": "{}"})
        _put(sd, instance, store, "coupling_adapter", "villain",
             {"gates.json": json.dumps({n: {"pass": ok, "seed": 0} for n, ok in gates.items()})})
        res = dg.materialize([sd.node("cell_adapter")], partition_key=CELL, instance=instance, raise_on_error=False,
                             resources={"store": store, "gpu": GpuAllocator(n_gpus=0), "compute": Compute(),
                                        "wandb": WandbResource(mode="disabled")})
        logs = [e.user_message for e in instance.all_logs(res.run_id)]
        return res, published, logs
    return materialize


def test_a_failed_gate_blocks_the_cell(run):
    res, published, _ = run(block=True, gates={"G0": False, "G0b": True})
    assert not res.success and published == []  # refused before any work
    (failure,) = res.get_step_failure_events()
    msg = failure.step_failure_data.error.message
    assert "coupling adapter 'villain' failed gate(s) G0" in msg and "G0b" not in msg
    assert "cells built on it are blocked (gates.block_cells)" in msg


def test_a_failed_gate_only_warns_when_cells_are_not_blocked(run):
    res, published, logs = run(block=False, gates={"G0": False, "G0b": True})
    assert res.success
    assert published == [("train_cell_adapter", [("base_model", "_"), ("coupling_adapter", "villain")])]
    assert any("failed gate(s) G0" in m and "continuing because gates.block_cells is false" in m for m in logs)


def test_passed_gates_never_block(run):
    res, published, logs = run(block=True, gates={"G0": True, "G0b": True})
    assert res.success and len(published) == 1
    assert not any("failed gate" in m for m in logs)
