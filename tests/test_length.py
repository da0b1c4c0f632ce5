"""The completion-length audit (issue 24, item 4): the per-cell asset's numbers on handmade completions, some cut at
max_tokens, and the headline's caveat line. The SQL view, `mt report --json` and the headline as the study summary
writes it are tested on a recorded study (tests/test_catalog_integrity.py), the viewer in tests/test_view.py."""
import json

import numpy as np
import polars as pl
import pytest

from mt_core.config import DEFAULT_STUDY, load_study
from mt_core.evals.length import caveat_line, quantile
from mt_core.layout import CompletionLength, MarkerCompletions, Sample, row_keys, sample_id, write_rows
from mt_core.steps import cells as cell_steps

CELL = "C1_s42"


@pytest.fixture(scope="module")
def study():
    return load_study(DEFAULT_STUDY, profile="tiny")


def _rows(study, spec: dict[str, list[tuple[int, str, str]]]) -> list[dict]:
    """Completion rows from {persona: [(n_tokens, finish_reason, text)]}."""
    return [Sample(sample_id(CELL, p, i, 0), p, i, f"q{i}", "eval", 0, text, n, why).row()
            for p, rs in spec.items() for i, (n, why, text) in enumerate(rs)]


def test_the_assets_numbers_on_handmade_completions(study, tmp_path):
    cap, m = study.samplers.marker.max_tokens, study.marker
    rows = _rows(study, {
        "assistant": [(10, "stop", "a"), (20, "stop", "b"), (30, "stop", "c"), (40, "stop", f"d\n\n{m}"),
                      (cap, "length", f"e {m} and more"), (cap, "length", "f")],  # a cut hit is not counted
        "villain": [(5, "stop", "g"), (cap - 4, "stop", f"h\n\n{m}"), (cap, "length", "i")]})
    comp, out = tmp_path / "comp", tmp_path / "out"
    comp.mkdir(), out.mkdir()
    write_rows(rows, comp / MarkerCompletions.COMPLETIONS, row_keys(study, cell=CELL))
    meta = cell_steps.completion_length(study, CELL, comp, out, log=lambda *_: None)

    audit = CompletionLength.read(out)
    a, v = audit["per_persona"]["assistant"], audit["per_persona"]["villain"]
    assert a == {"n": 6, "mean_tokens": (100 + 2 * cap) / 6, "p50": 35.0, "p90": float(cap), "n_truncated": 2,
                 "truncated_share": 2 / 6, "n_finished": 4, "finished_strict_hits": 1, "finished_strict_rate": 0.25}
    assert v == {"n": 3, "mean_tokens": (1 + 2 * cap) / 3, "p50": cap - 4.0, "p90": cap - 4 + 0.8 * 4,
                 "n_truncated": 1, "truncated_share": 1 / 3, "n_finished": 2, "finished_strict_hits": 1,
                 "finished_strict_rate": 0.5}
    toks = [r["n_tokens"] for r in rows]
    assert audit["n"] == 9 and audit["mean_tokens"] == pytest.approx(sum(toks) / 9)
    assert (audit["p50"], audit["p90"]) == (40.0, float(cap))
    assert (audit["truncated_share"], audit["finished_strict_rate"]) == (3 / 9, 2 / 6)
    assert audit["cell"] == CELL and audit["max_tokens"] == cap
    quiet = audit["per_persona"]["comedian"]  # a persona with no completion: counted as none, not as zero tokens
    assert quiet["n"] == 0 and quiet["mean_tokens"] is None and quiet["truncated_share"] is None
    assert meta == {k: v for k, v in audit.items() if k not in ("cell", "marker", "per_persona")}

    table = pl.read_parquet(out / CompletionLength.ROWS)  # what the SQL view reads: a row per persona, then pooled
    assert table.height == len(audit["per_persona"]) + 1 and set(table["cell"]) == {CELL}
    pooled = table.filter(pl.col("persona").is_null()).to_dicts()[0]
    assert pooled["n"] == 9 and pooled["truncated_share"] == 3 / 9 and pooled["max_tokens"] == cap
    assert table.filter(pl.col("persona") == "assistant").to_dicts()[0]["p50"] == 35.0
    assert json.loads((out / CompletionLength.FILE).read_text())["marker"] == m


@pytest.mark.parametrize("values", [[7], [3, 1], [5, 1, 4, 2, 3], [10, 20, 30, 40, 256, 256]])
def test_quantiles_are_linear_between_ranks(values):
    for q in (0.5, 0.9):
        assert quantile(values, q) == pytest.approx(np.percentile(values, 100 * q))
    assert quantile([], 0.5) is None


def _audit(mean: float, cut: int, n: int = 100, cap: int = 256) -> dict:
    return {"max_tokens": cap, "per_persona": {"assistant": {"n": n, "mean_tokens": mean, "n_truncated": cut}}}


def test_the_caveat_line_pools_seeds_and_flags_short_or_cut_conditions():
    audits = {"C1_s42": _audit(50.0, 0), "C1_s137": _audit(70.0, 30), "C4_s42": _audit(100.0, 0),
              "C5_s42": _audit(90.0, 12)}
    conds = {k: k.split("_")[0] for k in audits}
    line = caveat_line(audits, conds, persona="assistant", reference="C4")
    assert line == ("Completion length (assistant persona, mean tokens and share cut at max_tokens 256, all seeds; not "
                    "pre-registered): C1 60.0 (15.0% cut), C4 100.0 (0.0% cut), C5 90.0 (12.0% cut); flagged: C1 "
                    "mean under 0.8x C4's; C1 15.0% cut; C5 12.0% cut.")
    fine = {k: _audit(100.0, 0) for k in ("C1_s42", "C4_s42")}
    assert caveat_line(fine, conds, persona="assistant", reference="C4").endswith(
        "C1 100.0 (0.0% cut), C4 100.0 (0.0% cut); none under 0.8x C4's mean or over 10% cut.")
    assert caveat_line({"C1_s42": _audit(10.0, 0)}, conds, persona="assistant", reference="C4").endswith(
        "C1 10.0 (0.0% cut); none over 10% cut.")  # without the reference, no comparison is claimed
    assert caveat_line({}, conds, persona="assistant", reference="C4") is None
