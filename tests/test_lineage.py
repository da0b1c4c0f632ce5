"""`mt lineage`: a cell's chain of artefacts and its stale links, on fabricated metadata and through Dagster.

The integration test takes a copy of the session's tiny demo (tests/conftest.py: C4_s42, C1_s42 and C3_s42) in a
temporary DAGSTER_HOME, then re-materializes the villain coupling adapter: the adapters of C4_s42 and C1_s42 are then
stale, for `mt lineage`, the DuckDB `lineage` view and the Dagster webserver's GraphQL ``staleStatus`` (what the UI
shows as "Upstream data changed")."""
import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from mt_core.report.catalog import SQL_DIR, lineage_rows
from mt_core.report.lineage import cell_lineage, render
from mt_resources.store import ArtifactStore
from mt_run.queue import RunQueue
from mt_settings import Settings
from shared_instances import copy_instance
import zygote

ROOT = Path(__file__).resolve().parents[1]
STUDY = "marker_transfer_villain"  # the default study: its asset keys are <study>/<asset>, its jobs <study>__<stage>


def _meta(asset, part, md5, ups=(), **extra):
    return {"md5": md5, "run_id": f"run-{md5}", "path": f"/a/{asset}/{part}",
            "upstream": [{"asset": a, "partition": p, "md5": m, "run_id": f"run-{m}"} for a, p, m in ups], **extra}


def _store(cell="C1_s42", base="villain", coupling_md5="c1"):
    """Latest metadata of a consistent cell; the coupling adapter's latest md5 is ``coupling_md5``."""
    bm = ("base_model", "_", "b1")
    coup = [("coupling_adapter", base, "c1")] if base != "raw" else []
    s = {("base_model", None): _meta("base_model", "_", "b1", kind="tiny"),
         ("cell_adapter", cell): _meta("cell_adapter", cell, "a1", [bm, *coup], final_loss=2.5)}
    if base != "raw":
        s[("coupling_adapter", base)] = _meta("coupling_adapter", base, coupling_md5, [bm])
    model = [bm, *coup, ("cell_adapter", cell, "a1")]
    for asset, md5 in [("marker_completions", "mc"), ("arc_scores", "arc"), ("alignment_completions", "ac")]:
        s[(asset, cell)] = _meta(asset, cell, md5, model)
    s[("marker_rates", cell)] = _meta("marker_rates", cell, "mr", [("marker_completions", cell, "mc")],
                                      assistant_strict_rate=0.25, source_strict_rate=0.5)
    s[("degeneracy_audit", cell)] = _meta("degeneracy_audit", cell, "da", [("marker_completions", cell, "mc")])
    s[("completion_length", cell)] = _meta("completion_length", cell, "cl", [("marker_completions", cell, "mc")],
                                           truncated_share=0.0)
    s[("alignment_scores", cell)] = _meta("alignment_scores", cell, "as", [("alignment_completions", cell, "ac")],
                                          overall_mean_aligned=80.0)
    return lambda asset, part: s.get((asset, part))


def _nodes(lin):
    return {n["asset"]: n for n in lin["nodes"]}


def test_fresh_chain():
    lin = cell_lineage("C1_s42", "villain", _store())
    n = _nodes(lin)
    assert not lin["stale"] and lin["stale_links"] == []
    assert [x["label"] for x in lin["nodes"]][:3] == ["base_model[_]", "coupling_adapter[villain]",
                                                     "cell_adapter[C1_s42]"]
    assert n["base_model"]["info"] == {"kind": "tiny"} and n["cell_adapter"]["parent"] == "coupling_adapter"
    assert n["marker_rates"]["numbers"] == {"assistant_strict_rate": 0.25, "source_strict_rate": 0.5}
    assert n["alignment_scores"]["numbers"] == {"overall_mean_aligned": 80.0}
    assert n["completion_length"]["parent"] == "marker_completions"
    assert n["completion_length"]["numbers"] == {"truncated_share": 0.0}
    assert all(x["materialized"] and not x["stale"] and not x["upstream_stale"] for x in lin["nodes"])
    assert "nothing stale" in render(lin) and "STALE" not in render(lin)


def test_rematerialized_coupling_adapter_makes_the_cell_stale():
    lin = cell_lineage("C1_s42", "villain", _store(coupling_md5="c2"))
    n = _nodes(lin)
    assert lin["stale"]
    assert n["coupling_adapter"]["md5"] == "c2" and not n["coupling_adapter"]["stale"]
    assert n["cell_adapter"]["stale"] == [
        "cell_adapter[C1_s42] was built from coupling_adapter[villain] md5 c1 (run run-c1), latest is md5 c2 "
        "(run run-c2)"]
    for a in ("marker_completions", "arc_scores", "alignment_completions"):  # they load the coupling adapter too
        assert n[a]["stale"], a
    for a in ("marker_rates", "degeneracy_audit", "completion_length", "alignment_scores"):
        assert not n[a]["stale"] and n[a]["upstream_stale"], a
    assert len(lin["stale_links"]) == 4
    text = render(lin)
    assert "cell_adapter[C1_s42]" in text and "STALE" in text and "(upstream stale)" in text


def test_raw_base_cell_has_no_coupling_adapter():
    lin = cell_lineage("C2_s42", "raw", _store("C2_s42", "raw"))
    n = _nodes(lin)
    assert "coupling_adapter" not in n and n["cell_adapter"]["parent"] == "base_model"
    assert n["cell_adapter"]["depth"] == 1 and not lin["stale"]


def test_missing_partition_and_missing_upstream():
    latest = _store()
    lin = cell_lineage("C1_s42", "villain", lambda a, p: None if a in ("arc_scores", "coupling_adapter")
                       else latest(a, p))
    n = _nodes(lin)
    assert not n["arc_scores"]["materialized"] and "arc_scores[C1_s42]  not materialized" in render(lin)
    assert "latest is not materialized" in n["cell_adapter"]["stale"][0]


def _lineage_view(rows: list[dict]):
    con = duckdb.connect()
    con.register("lineage_df", pl.DataFrame(rows, infer_schema_length=None).to_arrow())
    con.execute("CREATE TABLE artefact_lineage AS SELECT * FROM lineage_df")
    con.execute((SQL_DIR / "06_lineage.sql").read_text())
    return con


def test_duckdb_lineage_view():
    def row(asset, part, md5, up=None):
        ua, up_, um = up or (None, None, None)
        return {"study": STUDY, "profile": "tiny", "asset": asset, "partition": part, "run_id": "r", "md5": md5,
                "created": "t", "path": "p",
                "upstream_asset": ua, "upstream_partition": up_, "upstream_run_id": "r", "upstream_md5": um}
    con = _lineage_view([row("coupling_adapter", "villain", "c2"), row("cell_adapter", "C1_s42", "a1",
                                                                       ("coupling_adapter", "villain", "c1")),
                         row("marker_rates", "C1_s42", "m1", ("cell_adapter", "C1_s42", "a1"))])
    got = dict(con.execute("SELECT asset, stale FROM lineage").fetchall())
    assert got == {"coupling_adapter": False, "cell_adapter": True, "marker_rates": False}


# --- through Dagster -------------------------------------------------------------------------------------------------

def _env(home: Path, art: Path) -> dict:
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", WANDB_MODE="disabled")
    env.pop("MT_STUDY", None)
    return env


def _run(args: list[str], env: dict, timeout: int = 600) -> str:
    """`mt ARGS` (a child of the worker's zygote, tests/zygote.py); its stdout (it must succeed)."""
    out = zygote.run(args, cwd=ROOT, env=env, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _lineage(cell: str, env: dict) -> dict:
    return json.loads(_run(["lineage", cell, "--json"], env))


STALE_QUERY = """query Stale($key: AssetKeyInput!, $partition: String) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { staleStatus(partition: $partition) } }
}"""


def _dagster_stale(ui_url: str, asset: str, partition: str) -> str:
    """Dagster's own verdict, as the UI shows it (its stale badge): the webserver's GraphQL ``staleStatus``."""
    import urllib.request

    body = json.dumps({"query": STALE_QUERY, "variables": {"key": {"path": [STUDY, asset]}, "partition": partition}})
    req = urllib.request.Request(f"{ui_url}/graphql", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.load(r)
    assert "errors" not in answer, answer
    return answer["data"]["assetNodeOrError"]["staleStatus"]


@pytest.mark.slow
def test_lineage_through_dagster_detects_rematerialized_coupling_adapter(demo, tmp_path, request):
    home, art = tmp_path / "home", tmp_path / "art"
    copy_instance(demo[0].parent, home, art)  # the session's `mt demo` of C4_s42, C1_s42 (and C3_s42), to change
    env = _env(home, art)
    ui = RunQueue(Settings.from_env(env), out=lambda line: None)  # a webserver on this instance, for the UI's view
    ui.__enter__()
    request.addfinalizer(lambda: ui.__exit__(None, None, None))

    with dg.DagsterInstance.from_config(str(home)) as inst:
        rec = inst.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey([STUDY, "coupling_adapter"]), asset_partitions=["villain"]), limit=1).records[0]
        old_run, old_md5 = rec.run_id, rec.asset_materialization.metadata["md5"].value
    before = {c: _lineage(c, env) for c in ("C1_s42", "C4_s42")}
    coup = _nodes(before["C1_s42"])["coupling_adapter"]
    assert (coup["label"], coup["run_id"], coup["md5"]) == ("coupling_adapter[villain]", old_run, old_md5)
    assert not any(lin["stale"] for lin in before.values())
    assert _dagster_stale(ui.url, "cell_adapter", "C1_s42") == "FRESH"

    # the villain adapter again, trained with another seed (the same training would give the same md5: nothing
    # stale) for one epoch (any new adapter makes the point; ten epochs only cost time)
    variant = tmp_path / "variant.yaml"
    villain = ROOT / "studies" / "marker_transfer_villain.yaml"
    variant.write_text(f"extends: {villain}\nrecipes:\n  coupling: {{seed: 7}}\n"
                       "profiles:\n  tiny:\n    recipes:\n      coupling: {epochs: 1}\n")
    # its gates may fail: they block cells, not the adapter's own record
    code = (f"import dagster as dg, definitions; definitions.defs.resolve_job_def('{STUDY}__coupling_job')"
            ".execute_in_process(partition_key='villain', instance=dg.DagsterInstance.get(), raise_on_error=False)")
    # a process of its own (the zygote's child), which imports the code location for this study
    p = zygote.run([], code=code, cwd=ROOT, env={**env, "MT_STUDY": str(variant)}, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    after = {c: _lineage(c, env) for c in ("C1_s42", "C4_s42")}
    new = _nodes(after["C1_s42"])["coupling_adapter"]
    assert new["run_id"] != old_run and new["md5"] != old_md5
    for cell, lin in after.items():
        n = _nodes(lin)["cell_adapter"]
        assert lin["stale"] and n["stale"] == [
            f"cell_adapter[{cell}] was built from coupling_adapter[villain] md5 {old_md5} (run {old_run}), "
            f"latest is md5 {new['md5']} (run {new['run_id']})"]
        assert _dagster_stale(ui.url, "cell_adapter", cell) == "STALE"
    text = _run(["lineage", "C1_s42"], env)
    assert "STALE" in text and f"coupling_adapter[villain] md5 {old_md5}" in text

    store = ArtifactStore(root=str(art))  # every artefact in the store, recorded or not
    every = [dict(zip(("path", "manifest"), store.manifest(a, p))) for a, p in store.published()]
    stale = {(a, p) for a, p in _lineage_view(lineage_rows(every)).execute(
        "SELECT DISTINCT asset, partition FROM lineage WHERE stale").fetchall()}
    assert {("cell_adapter", "C1_s42"), ("cell_adapter", "C4_s42")} <= stale
    assert not any(a in ("coupling_adapter", "marker_rates") for a, _ in stale)

    bad = zygote.run(["lineage", "C9_s1"], cwd=ROOT, env=env, timeout=60)
    assert bad.returncode != 0 and "cell 'C9_s1' is not in study" in bad.stderr
