"""The write-up's next experiments as a study file (studies/marker_transfer_villain_next.yaml, docs/STUDIES.md), end to
end through Dagster on the tiny profile: `mt run` on a fresh instance materializes every partition of the study (its
cells, the coupling sweep's variants beside the sources, the probe's and the sweep's study-level assets), and `mt sql`
answers from the views of the probe, the OOD set and the sweep."""
import json
from pathlib import Path

import dagster as dg
import pytest
import zygote
from conftest import demo_env

from mt_core.config import load_study

pytestmark = pytest.mark.slow  # a study through Dagster

ROOT = Path(__file__).resolve().parents[1]
NEXT = "marker_transfer_villain_next"
STUDY = load_study(ROOT / "studies" / f"{NEXT}.yaml", "tiny")
CELLS = STUDY.cells


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    home, art = tmp_path_factory.mktemp("next_home"), tmp_path_factory.mktemp("next_art")
    env = {**demo_env(home, art), "MT_STUDY": str(ROOT / "studies" / f"{NEXT}.yaml")}  # `mt sql` reads it too
    run_env = {k: v for k, v in env.items() if k != "MT_STUDY"}  # the study named on the command line, as a user does
    out = zygote.run(["run", "--study", env["MT_STUDY"]], cwd=ROOT, env=run_env, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return home, art, env, out.stdout


def sql(env: dict, query: str) -> list[dict]:
    out = zygote.run(["sql", "--format", "json", query], cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout)


def test_every_partition_is_materialized(ran):
    home, *_ = ran
    assert sorted(CELLS) == ["C1_s42", "C2_s42", "C4_s42", "C6_s42", "C7_s42"]  # tiny leaves C3, C5 out (no seeds)
    coupling = set(STUDY.coupling_keys)
    assert coupling == {"villain", "assistant", "villain.aggressive", "villain.lr1e-05_ep1"}
    with dg.DagsterInstance.from_config(str(home)) as inst:
        got = lambda a: inst.get_materialized_partitions(dg.AssetKey([NEXT, a]))  # noqa: E731
        for asset in ("onpolicy_completions", "coupling_dataset", "coupling_adapter"):
            assert got(asset) == coupling, asset
        for asset in ("cell_adapter", "marker_completions", "marker_rates", "arc_scores", "alignment_scores",
                      "degeneracy_audit", "completion_length", "probe_states"):
            assert got(asset) == set(CELLS), asset
        for asset in ("study_summary", "duckdb_catalog", "probe_scores", "coupling_sweep"):
            assert inst.get_latest_materialization_event(dg.AssetKey([NEXT, asset])) is not None, asset
        # C7's adapter is built on the aggressive variant's coupling adapter (its recorded upstream)
        rec = inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey([NEXT, "cell_adapter"]),
                                                                asset_partitions=["C7_s42"]), limit=1).records[0]
        ups = rec.asset_materialization.metadata["upstream"].value
    assert {(u["asset"], u["partition"]) for u in ups} >= {("coupling_adapter", "villain.aggressive")}


def test_the_coupling_sweep(ran):
    """Each variant trained with its recipe from the source's own on-policy data (copied, not drawn again), judged by
    the rule (a check per swept partition), in the summary, the HTML report and `mt sql`'s coupling_sweep view."""
    home, art, env, stdout = ran
    with dg.DagsterInstance.from_config(str(home)) as inst:
        def meta(asset, part):
            rec = inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey([NEXT, asset]),
                                                                    asset_partitions=[part]), limit=1).records[0]
            return {k: v.value for k, v in rec.asset_materialization.metadata.items()}
        onp = meta("onpolicy_completions", "villain.aggressive")
        assert onp["copied_from"] == "villain"
        assert onp["n_completions"] == meta("onpolicy_completions", "villain")["n_completions"]
        assert meta("coupling_dataset", "villain.aggressive")["n_records"] == meta("coupling_dataset", "villain")[
            "n_records"]
        agg, own = meta("coupling_adapter", "villain.aggressive"), meta("coupling_adapter", "villain")
        assert 2 * agg["n_steps"] == 3 * own["n_steps"]  # 12 epochs against 8
        checks = inst.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey([NEXT, "coupling_adapter"]), "sweep_rule"), limit=20)
        g0 = inst.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey([NEXT, "coupling_adapter"]), "G0"), limit=20)
    # a gate blocks (an error) only where a cell builds on the adapter; on the grid's variant it is a warning, so
    # that a variant failing it (the reference's sweep: most of the grid) does not fail the run
    g0 = {c.partition: c.evaluation for c in g0 if c.status.value != "PLANNED"}
    sev = {part: e.severity for part, e in g0.items()}
    assert sev == {"villain": dg.AssetCheckSeverity.ERROR, "villain.aggressive": dg.AssetCheckSeverity.ERROR,
                   "villain.lr1e-05_ep1": dg.AssetCheckSeverity.WARN}, sev
    # on tiny the grid's variant fails G0 (docs/STUDIES.md), and `mt run` said so on its console
    assert not g0["villain.lr1e-05_ep1"].passed
    assert "on partition villain.lr1e-05_ep1" in stdout and "no cell builds on this adapter" in stdout, stdout[-3000:]
    # a result for each swept partition, none where the rule does not apply (the assistant source)
    judged = {c.partition: c.evaluation.passed for c in checks if c.status.value != "PLANNED"}
    assert set(judged) == {"villain", "villain.aggressive", "villain.lr1e-05_ep1"}
    rows = sql(env, "SELECT variant, \"partition\", lr, epochs, lora_r, source_rate, max_bystander_rate, "
                    "arc_accuracy, passed, chosen, best FROM coupling_sweep ORDER BY \"partition\"")
    assert [(r["variant"], r["lr"], r["epochs"], r["lora_r"]) for r in rows] == [
        ("default", 1e-4, 8, 8), ("aggressive", 1e-4, 12, 16), ("lr1e-05_ep1", 1e-5, 1, 8)]
    assert [r["chosen"] for r in rows] == [True, True, False]  # C1, C4, C6 build on villain, C7 on the aggressive one
    assert {r["partition"]: r["passed"] for r in rows} == judged
    for r in rows:
        assert r["passed"] == (r["source_rate"] > 0.5 and r["arc_accuracy"] > 0.2 and r["max_bystander_rate"] <= 0.05)
    assert sum(r["best"] for r in rows) == (1 if any(r["passed"] for r in rows) else 0)
    report = (art / "study_summary" / "_" / "report.html").read_text(encoding="utf-8")
    assert "Coupling sweep" in report and "villain.lr1e-05_ep1" in report
    assert "## Coupling sweep" in stdout and "| villain.aggressive |" in stdout
    rep = zygote.run(["report"], cwd=ROOT, env=env, timeout=120)
    assert rep.returncode == 0 and "## Coupling sweep" in rep.stdout and "| villain.lr1e-05_ep1 |" in rep.stdout


def test_the_probe_and_the_ood_set_are_materialized(ran):
    home, art, _, stdout = ran
    with dg.DagsterInstance.from_config(str(home)) as inst:
        rec = inst.get_latest_materialization_event(dg.AssetKey([NEXT, "probe_scores"]))
        meta = {k: v.value for k, v in rec.asset_materialization.metadata.items()}
    assert meta["reference_cell"] == "C4_s42" and meta["n_cells"] == len(CELLS)
    assert all(auc >= 0.9 for auc in meta["reference_heldout_auc"].values()), meta
    assert "Latent probe (not pre-registered)" in stdout and "held-out AUC layer 1" in stdout
    assert "further question sets (not pre-registered" in stdout and "ood: C1 assistant" in stdout
    report = (art / "study_summary" / "_" / "report.html").read_text(encoding="utf-8")
    assert "Latent probe (not pre-registered)" in report


def test_sql_answers_from_the_new_views(ran):
    *_, env, _ = ran
    scores = sql(env, "SELECT cell, persona, layer, score FROM probe_scores WHERE cell = 'C4_s42' "
                      "AND persona IN ('assistant', 'villain') ORDER BY layer, persona")
    assert [(r["persona"], r["layer"]) for r in scores] == [("assistant", 1), ("villain", 1), ("assistant", 2),
                                                            ("villain", 2)]
    assert all(r["score"] > 0.9 for r in scores if r["persona"] == "villain")
    assert all(r["score"] < 0.1 for r in scores if r["persona"] == "assistant")
    sets = sql(env, "SELECT eval_set, count(*) AS n, count(DISTINCT question_idx) AS q FROM completions "
                    "WHERE cell = 'C4_s42' GROUP BY ALL ORDER BY ALL")
    assert [(r["eval_set"], r["q"]) for r in sets] == [("in_distribution", 28), ("ood", 12)]
    by_set = sql(env, "SELECT eval_set, sum(total)::INT AS n FROM marker_rates_by_set WHERE cell = 'C4_s42' "
                      "GROUP BY ALL ORDER BY ALL")
    assert [r["n"] for r in by_set] == [r["n"] for r in sets]
    rates = sql(env, "SELECT total FROM marker_rates WHERE cell = 'C4_s42' AND persona = 'assistant'")
    # the rates table reads the 28 in-distribution questions only
    assert rates == [{"total": 28 * STUDY.samplers.marker.n}]


def test_the_plain_text_second_stage_trains_every_token(ran):
    """C6 trains the EM data as plain text (its condition's recipe, loss plain_text); C1 the same data in the chat
    template with the last assistant turn trained."""
    home, *_ = ran
    with dg.DagsterInstance.from_config(str(home)) as inst:
        def meta(cell):
            rec = inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey([NEXT, "cell_adapter"]),
                                                                    asset_partitions=[cell]), limit=1).records[0]
            return {k: v.value for k, v in rec.asset_materialization.metadata.items()}
        c6, c1 = meta("C6_s42"), meta("C1_s42")
    assert c6["trained_tokens"] == c6["seen_tokens"] and c6["n_steps"] == c1["n_steps"]
    assert c1["trained_tokens"] < c1["seen_tokens"]


def test_mt_view_shows_the_eval_sets_and_the_probe_per_cell(ran):
    """The viewer's grid has a column per further question set (the source's and the assistant's rate there, linked to
    those completions) and the probe's; the completions page filters by question set."""
    from starlette.testclient import TestClient

    from mt_core.layout import Catalog
    from mt_view.app import create_app
    from mt_view.db import Catalogs

    home, art, *_ = ran
    with dg.DagsterInstance.from_config(str(home)) as inst:
        rec = inst.get_latest_materialization_event(dg.AssetKey([NEXT, Catalog.asset]))
        digest = rec.asset_materialization.metadata["md5"].value
    catalogs = {NEXT: (art / Catalog.asset / "_" / Catalog.FILE, digest)}
    with TestClient(create_app(Catalogs(lambda: catalogs), [STUDY])) as client:
        grid = client.get("/", params={"study": NEXT})
        assert grid.status_code == 200, grid.text[-2000:]
        assert 'data-set="C4_s42/ood"' in grid.text and 'data-probe="C4_s42"' in grid.text
        page = client.get("/completions", params={"study": NEXT, "cell": "C4_s42", "qset": "ood"})
        assert page.status_code == 200 and "ood questions" in page.text
        assert page.text.count('class="card completion"') > 0 and "(eval):" not in page.text


def test_a_variant_and_a_cell_on_it_export(ran, tmp_path):
    """`mt export` takes a coupling variant's partition key, and a cell on a variant exports on that variant's
    adapter (its card's lineage names it)."""
    *_, env, _ = ran
    for target in ("villain.aggressive", "C7_s42"):
        out = tmp_path / target
        p = zygote.run(["export", target, "--to", str(out)], cwd=ROOT, env=env, timeout=300)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        card = (out / "README.md").read_text()
        assert "villain.aggressive" in card and (out / "adapter_model.safetensors").is_file()
    cfg = json.loads((tmp_path / "villain.aggressive" / "adapter_config.json").read_text())
    assert cfg["r"] == STUDY.coupling_recipe("villain.aggressive").lora_r == 16
