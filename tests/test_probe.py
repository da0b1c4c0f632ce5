"""The latent probe (mt_core/evals/probe.py): it recovers a planted direction, holds out by question, and reads the
residual stream of a real model at the last prompt token."""
from pathlib import Path

import numpy as np
import pytest

from mt_core.evals import probe


def _planted(seed: int = 0, n_questions: int = 60, per: int = 20, dim: int = 64, gap: float = 4.0):
    """Activations with a known direction: noise, plus ``gap`` along ``u`` for the source voice."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    groups = np.repeat(np.arange(n_questions), per)
    y = np.tile(np.arange(per) % 2, n_questions)
    x = rng.normal(size=(len(y), dim)) + gap * y[:, None] * u + rng.normal(size=dim)  # an offset the bias absorbs
    return x, y, groups, u


def test_the_probe_recovers_a_planted_direction():
    x, y, groups, u = _planted()
    p = probe.fit(x, y, groups, layer=3, seed=0)
    assert p.heldout_auc >= 0.95 and probe.cosine(p.direction, u) >= 0.9, (p.heldout_auc, probe.cosine(p.direction, u))
    assert p.n_heldout == 300 and p.n_train == 900  # a quarter of the 60 questions, all their rows
    assert p.scores(x[y == 1]).mean() > 0.8 > 0.2 > p.scores(x[y == 0]).mean()
    assert np.array_equal(probe.fit(x, y, groups, layer=3, seed=0).coef, p.coef)  # seeded


def test_no_signal_gives_chance_auc_and_no_direction():
    x, y, groups, u = _planted(gap=0.0)
    p = probe.fit(x, y, groups, layer=0, seed=0)
    assert p.heldout_auc < 0.7 and abs(probe.cosine(p.direction, u)) < 0.5


def test_questions_are_held_out_whole():
    """A probe that could see a held-out question in training would score well by its question alone: here the label
    is the question's (every row of a question one class), so only held-out questions test the probe."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(20), 6)
    qvec = rng.normal(size=(20, 32))
    y = (np.arange(20) % 2)[groups]
    x = qvec[groups] + 0.01 * rng.normal(size=(len(groups), 32))  # each question's rows nearly identical
    p = probe.fit(x, y, groups, layer=0, seed=0)
    assert p.heldout_auc < 0.9  # memorising questions does not carry to unseen ones


def test_refuses_what_it_cannot_fit():
    x, y, groups, _ = _planted()
    with pytest.raises(ValueError, match="both classes"):
        probe.fit(x, np.zeros_like(y), groups, layer=0, seed=0)


def test_last_token_states_of_a_real_model(tiny_model_dir):
    from mt_core.model.load import load_model

    model, tok = load_model(tiny_model_dir)
    prompts = [[{"role": "system", "content": s}, {"role": "user", "content": q}]
               for s in ("You are a villain.", "You are a helpful assistant.") for q in ("Why?", "What is a tree made of?")]
    n = model.config.num_hidden_layers
    states = probe.last_token_states(model, tok, prompts, [0, n], batch_size=3)  # two batches, left-padded
    assert states.shape == (4, 2, model.config.hidden_size) and states.dtype == np.float32
    one = probe.last_token_states(model, tok, prompts[3:], [0, n])
    assert np.allclose(states[3], one[0], atol=1e-5)  # padding does not move the last token's state
    with pytest.raises(ValueError, match="layers"):
        probe.last_token_states(model, tok, prompts, [n + 1])


NEXT = Path(__file__).resolve().parents[1] / "studies" / "marker_transfer_villain_next.yaml"


@pytest.mark.slow
def test_the_probe_steps_separate_the_villain_on_the_coupling_only_cell(demo, tmp_path):
    """The probe's two steps on the demo's cells (the villain study's weights; the next study only adds the probe):
    states for each cell, then the reference probes fitted on C4_s42 separate the villain's voice from the assistant's
    on questions they never saw, and score the villain above the assistant on every cell but the assistant-coupled
    one's (C3: its adapter bent the assistant toward the marker)."""
    import json

    import polars as pl

    from mt_core.config import load_study
    from mt_core.layout import ProbeScores, ProbeStates
    from mt_core.steps import analysis, cells

    _, art, _, _ = demo
    # the next study's tiny profile with C3 back (it leaves C3 out: seeds [])
    f = tmp_path / "next_with_c3.yaml"
    f.write_text(f"extends: {NEXT}\nprofiles: {{tiny: {{conditions: {{C3: {{seeds: [42]}}}}}}}}\n")
    study = load_study(f, "tiny")
    models = {"C4_s42": ["coupling_adapter/villain/adapter"],
              "C1_s42": ["coupling_adapter/villain/adapter", "cell_adapter/C1_s42/adapter"],
              "C3_s42": ["coupling_adapter/assistant/adapter", "cell_adapter/C3_s42/adapter"]}
    states = {}
    for cell, adapters in models.items():
        states[cell] = tmp_path / cell
        states[cell].mkdir()
        meta = cells.probe_states(study, cell, art / "base_model/_", [art / a for a in adapters], states[cell],
                                  log=lambda m: None)
        assert meta["layers"] == [1, 2] and meta["n_prompts"] == 11 * 28
        rows = pl.read_parquet(states[cell] / ProbeStates.ROWS)
        assert rows.height == 11 * 28 * 2 and set(rows["cell"]) == {cell}
    out = tmp_path / "scores"
    out.mkdir()
    meta = analysis.probe_scores(study, states, out, log=lambda m: None)
    assert meta["reference_cell"] == "C4_s42" and meta["n_cells"] == 3
    summary = ProbeScores.read(out)
    for layer, ref in summary["reference"].items():
        assert ref["heldout_auc"] >= 0.9 and ref["n_heldout"] > 0, (layer, ref)
    own = pl.read_parquet(out / ProbeScores.CELLS)
    c4 = own.filter(pl.col("cell") == "C4_s42")
    assert (c4["source_score"] > 0.9).all() and (c4["assistant_score"] < 0.1).all(), c4
    assert (own.filter(pl.col("cell") == "C1_s42")["source_score"] > own.filter(pl.col("cell") == "C1_s42")[
        "assistant_score"]).all()
    scores = pl.read_parquet(out / ProbeScores.ROWS)
    assert scores.height == 3 * 11 * 2 and set(scores["condition"]) == {"C4", "C1", "C3"}
    second = summary["secondary"]["per_layer"]
    assert all(v["outcome"] == "not assessable" for v in second.values())  # C2 is not among the demo's cells
    line = analysis.probe_line(json.loads((out / ProbeScores.SUMMARY).read_text()))
    assert line.startswith("Latent probe (not pre-registered)") and "C4_s42" in line

    # the catalog: the probe's views where the study has its artefacts, none where it has not
    import duckdb

    from mt_core.io import md5_file
    from mt_core.layout import MANIFEST, PER_CELL
    from mt_core.report.catalog import artefact_record, build_catalog

    def record(asset, part, path):
        m = (json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).is_file() else
             {"digest": asset, "files": {f.name: {"md5": md5_file(f), "size": f.stat().st_size}
                                            for f in path.iterdir()}})
        return artefact_record(asset, part, path, m)

    per_cell = [record(a, c, art / a / c) for a in PER_CELL for c in models]
    probe = [record(ProbeStates.asset, c, d) for c, d in states.items()] + [record(ProbeScores.asset, "_", out)]
    for with_probe in (True, False):
        where = tmp_path / f"catalog_{with_probe}"
        where.mkdir()
        built = build_catalog(study, cells=list(models), artefacts=per_cell + (probe if with_probe else []),
                              imported=[], out=where, log=lambda m: None)
        assert ("08_probe" in built["sql_files"]) is with_probe
    con = duckdb.connect(str(tmp_path / "catalog_True" / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM probe_scores").fetchone()[0] == 3 * 11 * 2
    assert con.execute("SELECT count(*), min(heldout_auc) FROM probe_cells WHERE cell = 'C4_s42'").fetchone()[0] == 2
    n, width = con.execute("SELECT count(*), max(len(state)) FROM probe_states").fetchone()
    assert n == 3 * 11 * 28 * 2 and width == study.model.hidden_size
    con.close()
    # `mt view`'s grid: a probe column for the study with a probe, none for one without
    from starlette.testclient import TestClient

    from mt_view.app import create_app
    from mt_view.db import Catalogs

    for with_probe in (True, False):
        db = tmp_path / f"catalog_{with_probe}" / "catalog.duckdb"
        (db.parent / MANIFEST).write_text(json.dumps({"digest": "recorded",  # as the store writes it
                                                       "files": {db.name: {"md5": md5_file(db)}}}))
        rec = {study.name: (db, "recorded")}
        with TestClient(create_app(Catalogs(lambda: rec), [study])) as client:
            page = client.get("/", params={"study": study.name})
            assert page.status_code == 200, page.text[-2000:]
            assert ('data-probe="C4_s42"' in page.text) is with_probe
            if with_probe:
                assert "layer 2 · AUC" in page.text


def test_the_secondary_analysis_is_welchs_test_of_the_primary():
    """The assistant's scores of C1's seeds against C2's: the primary test's one-sided Welch (stats.welch_greater);
    no test without two seeds an arm or with no variance in either."""
    from mt_core.report.stats import welch_greater

    cond = {"a1": "C1", "a2": "C1", "a3": "C1", "b1": "C2", "b2": "C2", "b3": "C2"}
    rows = [{"cell": c, "layer": 2, "assistant_score": s} for c, s in
            zip(cond, (0.61, 0.66, 0.70, 0.20, 0.25, 0.22))]
    got = probe.secondary(rows, cond, ("C1", "C2"), [2])["per_layer"]["2"]
    assert got["outcome"] == "higher" and got["p"] == welch_greater([0.61, 0.66, 0.70], [0.20, 0.25, 0.22])["p"]
    flat = [{**r, "assistant_score": 0.5} for r in rows]
    assert probe.secondary(flat, cond, ("C1", "C2"), [2])["per_layer"]["2"]["reason"] == "no variance"
    one = [r for r in rows if r["cell"] in ("a1", "b1", "b2")]
    assert probe.secondary(one, cond, ("C1", "C2"), [2])["per_layer"]["2"]["reason"] == "fewer than 2 seeds in an arm"
