"""W&B artifacts with lineage (issue 27): after the README's `mt demo` (tests/conftest.py's ``tiny_base`` and
``demo``, W&B offline as the tiny profile has it), the offline run directories hold one artifact per dataset, adapter,
cell table and the summary, each with the store's md5 and its files by reference to the store, and the upstream
artefacts it was made from: the edges of the asset graph.

The offline runs are read the way `wandb sync` reads them (tests/wandb_log.py).
"""
import base64
import json
from pathlib import Path

import dagster as dg
import pytest

from mt_resources.store import ArtifactStore
from wandb_log import offline_records

pytestmark = pytest.mark.slow  # stands on the session's demo

STUDY = "marker_transfer_villain"
CELLS = ["C4_s42", "C1_s42", "C3_s42"]  # tests/conftest.py's DEMO_CELLS
PER_CELL = ["cell_adapter", "marker_completions", "alignment_completions", "arc_scores", "marker_rates",
            "completion_length", "alignment_scores"]


@pytest.fixture(scope="module")
def artifacts(tiny_base, demo) -> dict[str, dict]:
    """name -> {type, metadata, aliases, entries (path -> (md5 hex, reference))}, over both runs of the demo."""
    got = {}
    for folder in (tiny_base, demo[0].parent):
        for kind, a in offline_records(folder / "wandb"):
            if kind != "artifact":
                continue
            assert a.name not in got, f"{a.name} logged twice"
            got[a.name] = {"type": a.type, "metadata": json.loads(a.metadata), "aliases": set(a.aliases),
                           "entries": {e.path: (base64.b64decode(e.digest).hex(), e.ref) for e in a.manifest.contents}}
    return got


def test_one_artifact_per_shared_artefact_with_the_store_md5(artifacts, tiny_base, demo):
    home, art, _, _ = demo
    expected = {"base_model", "em_dataset", "benign_dataset", "coupling_adapter-villain", "coupling_adapter-assistant",
                "study_summary", *(f"{a}-{c}" for a in PER_CELL for c in CELLS)}
    assert set(artifacts) == expected, sorted(set(artifacts) ^ expected)
    store = ArtifactStore(root=str(art))
    with dg.DagsterInstance.from_config(str(home)) as inst:
        for name, a in artifacts.items():
            asset, _, part = name.partition("-")
            stored = store.read(asset, part or None)
            md = a["metadata"]
            # the store's digest, the Dagster run that recorded it, the md5 as the version's alias
            assert (md["asset"], md["partition"], md["md5"]) == (asset, part or None, stored.digest), name
            assert a["type"] == asset and f"md5-{stored.digest}" in a["aliases"], name
            rec = inst.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey([STUDY, asset]), asset_partitions=[part] if part else None), limit=1).records[0]
            assert md["dagster_run_id"] == rec.run_id and rec.asset_materialization.metadata["md5"].value == md["md5"]
            assert name in [r.split(":")[0] for r in rec.asset_materialization.metadata["wandb_artifacts"].value]
            # every file by reference to where the store published it, with the store's own md5 (what the demo's
            # first run published was copied into the demo's instance since: its references name the first store)
            files = {f: v["md5"] for f, v in stored.manifest["files"].items()}
            assert {p: h for p, (h, _) in a["entries"].items()} == files, name
            where = Path(md["location"])
            roots = [r for r in (art, tiny_base / "art") if where.is_relative_to(r)]
            assert roots and where.relative_to(roots[0]) == stored.path.relative_to(art), (name, where)
            assert all(ref == (where / p).resolve().as_uri() for p, (_, ref) in a["entries"].items()), name


def test_upstream_edges_are_the_asset_graph(artifacts, demo):
    """Each artifact names, by ``name:md5-…``, the artefacts its step read: the asset graph's edges, resolvable to
    the artifacts W&B holds (a cell adapter uses its coupling adapter and its dataset)."""
    home, _, _, _ = demo

    def ups(name: str) -> set[str]:
        return {u["artifact"] for u in artifacts[name]["metadata"]["upstream"]}

    def ref(name: str) -> str:
        return f"{name}:md5-{artifacts[name]['metadata']['md5']}"

    assert {ref("coupling_adapter-villain"), ref("em_dataset")} <= ups("cell_adapter-C1_s42")
    assert {ref("coupling_adapter-assistant"), ref("em_dataset")} <= ups("cell_adapter-C3_s42")
    assert ref("coupling_adapter-villain") in ups("cell_adapter-C4_s42")
    assert not {ref("em_dataset"), ref("benign_dataset")} & ups("cell_adapter-C4_s42")  # no second stage
    for c in CELLS:
        for table in ("marker_completions", "alignment_completions", "arc_scores"):
            assert ref(f"cell_adapter-{c}") in ups(f"{table}-{c}")
        assert ups(f"marker_rates-{c}") == ups(f"completion_length-{c}") == {ref(f"marker_completions-{c}")}
        assert ups(f"alignment_scores-{c}") == {ref(f"alignment_completions-{c}")}
        assert {ref(f"marker_rates-{c}"), ref(f"alignment_scores-{c}")} <= ups("study_summary")
    # and every edge is one of the Dagster asset graph's (the upstream of each asset), partition for partition
    import definitions

    graph = definitions.defs.resolve_asset_graph()
    for name, a in artifacts.items():
        key = dg.AssetKey([STUDY, a["metadata"]["asset"]])
        parents = {k.path[-1] for k in graph.get(key).parent_keys}
        for u in a["metadata"]["upstream"]:
            assert u["asset"] in parents, (name, u["asset"], parents)
            assert u["artifact"] == f"{u['asset']}{'-' + u['partition'] if u['partition'] else ''}:md5-{u['md5']}"


def test_offline_runs_are_publish_runs_of_the_study(artifacts, tiny_base, demo):
    """The runs that logged them are W&B runs of the study's project, one per publishing step, named after it."""
    runs = [r for folder in (tiny_base, demo[0].parent) for kind, r in offline_records(folder / "wandb")
            if kind == "run" and r.job_type == "publish"]
    names = {r.display_name for r in runs}
    assert {f"{step}[{c}]" for c in CELLS for step in ("cell_adapter", "cell_generations", "marker_rates",
                                                        "alignment_scores")} <= names, sorted(names)
    assert {r.project for r in runs} == {STUDY}
    assert {"study_summary[all]", "em_dataset[all]", "coupling_adapter[villain]"} <= names, sorted(names)
