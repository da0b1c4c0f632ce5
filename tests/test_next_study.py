"""The write-up's next experiments as a study file (studies/marker_transfer_villain_next.yaml, docs/STUDIES.md), end to
end through Dagster on the tiny profile: `mt run` on a fresh instance materializes the probe's assets and the OOD
set's completions beside everything the villain study has, and `mt sql` answers from their views."""
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from conftest import demo_env

pytestmark = pytest.mark.slow  # a study through Dagster

ROOT = Path(__file__).resolve().parents[1]
NEXT = "marker_transfer_villain_next"
CELLS = ["C4_s42", "C1_s42", "C6_s42"]  # the probe's reference, a cell it scores, the plain-text second stage


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    home, art = tmp_path_factory.mktemp("next_home"), tmp_path_factory.mktemp("next_art")
    env = {**demo_env(home, art), "MT_STUDY": str(ROOT / "studies" / f"{NEXT}.yaml")}  # `mt sql` reads it too
    out = subprocess.run([sys.executable, "-m", "mt_cli", "run", "--cells", ",".join(CELLS)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return home, art, env, out.stdout


def sql(env: dict, query: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "mt_cli", "sql", "--format", "json", query], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout)


def test_the_probe_and_the_ood_set_are_materialized(ran):
    home, art, _, stdout = ran
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert inst.get_materialized_partitions(dg.AssetKey([NEXT, "probe_states"])) == set(CELLS)
        rec = inst.get_latest_materialization_event(dg.AssetKey([NEXT, "probe_scores"]))
        meta = {k: v.value for k, v in rec.asset_materialization.metadata.items()}
    assert meta["reference_cell"] == "C4_s42" and meta["n_cells"] == 3
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
    assert rates == [{"total": 28 * 4}]  # the rates table reads the 28 in-distribution questions only


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
