"""The code location: it loads, its partitions are the study's, and its graph matches the reviewed snapshot.

After a deliberate change to the graph, regenerate the snapshot with ``UPDATE_SNAPSHOT=1 make test`` and review the
diff of tests/snapshots/asset_graph.json.
"""
import json
import os
from pathlib import Path

import dagster as dg
import pytest

import definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"
V = "marker_transfer_villain"  # the default study: its asset keys are <study>/<asset>, its jobs <study>__<stage>


def _mapping(m: dg.StaticPartitionMapping) -> dict:
    return {k: sorted(v) if not isinstance(v, str) else [v]
            for k, v in m.downstream_partition_keys_by_upstream_partition_key.items()}


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        pdef = node.partitions_def
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": pdef.get_partition_keys() if pdef else None,
            "pool": next(iter(node.pools), None) if node.pools else None,
            "checks": sorted(c.name for c in node.check_keys),
            "mappings": {p.to_user_string(): _mapping(graph.get_partition_mapping(key, p))
                         for p in sorted(node.parent_keys, key=lambda k: k.to_user_string())
                         if isinstance(graph.get_partition_mapping(key, p), dg.StaticPartitionMapping)},
        }
    checks = {f"{c.asset_key.to_user_string()}:{c.name}": bool(graph.get(c).blocking)
              for c in sorted(graph.asset_check_keys, key=lambda c: (c.asset_key.to_user_string(), c.name))}
    # which op evaluates each check, and whether its results are recorded per partition of its asset
    specs = {f"{c.asset_key.to_user_string()}:{c.name}": {
        "op": graph.assets_def_for_key(c).node_def.name,
        "per_partition": graph.get(c).partitions_def is not None
        and graph.get(c).partitions_def == graph.get(c.asset_key).partitions_def}
        for c in graph.asset_check_keys}
    jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    return {"assets": assets, "check_blocking": checks, "check_specs": specs, "jobs": jobs}


def test_definitions_load():
    dg.Definitions.validate_loadable(definitions.defs)


def test_partitions():
    g = definitions.defs.resolve_asset_graph()
    cells = g.get(dg.AssetKey([V, "cell_adapter"])).partitions_def.get_partition_keys()
    assert len(cells) == 13 and cells[0] == "C1_s42" and "C4_s42" in cells and "C4_s137" not in cells
    assert g.get(dg.AssetKey([V, "coupling_adapter"])).partitions_def.get_partition_keys() == ["villain", "assistant"]
    assert {k.path[0] for k in g.get_all_asset_keys()} == {V}  # one study unless $MT_STUDIES names several


def test_unknown_cell_is_rejected_before_any_work():
    job = definitions.defs.resolve_job_def(f"{V}__cell_job")
    with pytest.raises(dg.DagsterUnknownPartitionError, match="C4_s137"):
        job.execute_in_process(partition_key="C4_s137", instance=dg.DagsterInstance.ephemeral())


def test_asset_graph_snapshot():
    snap = graph_snapshot(definitions.defs)
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
    assert snap == json.loads(SNAPSHOT.read_text())


def test_asset_modules_do_not_import_heavy_libraries():
    """Asset modules, SQL and summary code stay light: torch/peft/trl load only inside the steps that need them."""
    import subprocess
    import sys

    code = ("import sys, definitions; heavy = [m for m in ('torch', 'peft', 'trl', 'transformers', 'vllm') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(definitions.__file__).parent)
    assert out.stdout.strip() == ""


def test_the_latent_probe_exists_only_in_a_study_that_asks_for_it():
    """studies/marker_transfer_villain_next.yaml has a `probe:` block: its cells get probe_states (per cell, on the
    GPU pool, from the cell's model) and its analysis probe_scores, read by the summary and the catalog; the villain
    study, without one, has neither (its snapshot above is unchanged)."""
    from mt_assets.location import build_defs
    from mt_settings import Settings

    nxt = "marker_transfer_villain_next"
    study = Path(__file__).resolve().parents[1] / "studies" / f"{nxt}.yaml"
    defs = build_defs(Settings.from_env({"MT_STUDIES": os.pathsep.join([str(study)])}))
    dg.Definitions.validate_loadable(defs)
    g = defs.resolve_asset_graph()
    k = lambda a: dg.AssetKey([nxt, a])  # noqa: E731
    states, scores = g.get(k("probe_states")), g.get(k("probe_scores"))
    assert states.partitions_def.get_partition_keys()[0] == "C1_s42" and states.pools == {"gpu"}
    assert {k("base_model"), k("cell_adapter"), k("coupling_adapter")} <= set(states.parent_keys)
    assert scores.partitions_def is None and set(scores.parent_keys) == {k("probe_states")}
    assert k("probe_scores") in g.get(k("study_summary")).parent_keys
    assert k("probe_scores") in g.get(k("duckdb_catalog")).parent_keys
    jobs = {j.name: j for j in defs.resolve_all_job_defs()}
    assert k("probe_states") in jobs[f"{nxt}__cell_job"].asset_layer.selected_asset_keys
    assert k("probe_scores") in jobs[f"{nxt}__analysis_job"].asset_layer.selected_asset_keys
    villain = {key.path[-1] for key in definitions.defs.resolve_asset_graph().get_all_asset_keys()}
    assert not {"probe_states", "probe_scores"} & villain


def test_the_coupling_sweep_is_partitions_of_the_coupling_stage():
    """The next study's coupling assets (and their checks, and the UI's Partitions tab, which reads the same
    definition) have the sweep's variants as partitions beside the sources; the villain study keeps its two."""
    from mt_assets.location import build_defs
    from mt_settings import Settings

    nxt = "marker_transfer_villain_next"
    study = Path(__file__).resolve().parents[1] / "studies" / f"{nxt}.yaml"
    defs = build_defs(Settings.from_env({"MT_STUDIES": str(study)}))
    g = defs.resolve_asset_graph()
    k = lambda a: dg.AssetKey([nxt, a])  # noqa: E731
    keys = ["villain", "assistant", "villain.aggressive", "villain.lr1e-05_ep1"]
    for asset in ("onpolicy_completions", "coupling_dataset", "coupling_adapter"):
        assert g.get(k(asset)).partitions_def.get_partition_keys() == keys, asset
    sweep = g.get(k("coupling_sweep"))
    assert sweep.partitions_def is None and set(sweep.parent_keys) == {k("coupling_adapter")}
    assert k("coupling_sweep") in g.get(k("study_summary")).parent_keys
    checks = {c.name for c in defs.resolve_asset_graph().asset_check_keys if c.asset_key == k("coupling_adapter")}
    assert "sweep_rule" in checks
    villain = definitions.defs.resolve_asset_graph()
    vk = dg.AssetKey(["marker_transfer_villain", "coupling_adapter"])
    assert villain.get(vk).partitions_def.get_partition_keys() == ["villain", "assistant"]
    assert not any(c.name == "sweep_rule" for c in villain.asset_check_keys)
