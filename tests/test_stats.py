import json
import math

import pytest

from mt_core.report.figure import hero_figure
from mt_core.report.stats import compare_arms, g4_exclusions, headline, markdown_table, primary_conjunction

SEEDS = (42, 137, 256)


def _cell(cond, seed, *, asst=0, vill=0, teacher=0, n=280, arc=None, aligned=None,
          coherent=None, deg=None, audit=None):
    return {"cell": f"{cond}_s{seed}", "condition": cond, "seed": seed,
            "per_persona": {"villain": {"strict_hits": vill, "total": n},
                            "teacher": {"strict_hits": teacher, "total": n},
                            "assistant": {"strict_hits": asst, "total": n}},
            "arc_accuracy": arc, "aligned": aligned, "coherent": coherent,
            "degenerate_fraction": deg, "audit_outcome": audit}


def _grid():
    return ([_cell("C1", s, asst=a, vill=200, arc=0.75, aligned=25.0, coherent=60.0, deg=0.05,
                   audit="pass") for s, a in zip(SEEDS, (90, 100, 110))]
            + [_cell("C2", s, aligned=24.0 + i) for i, s in enumerate(SEEDS)]
            + [_cell("C4", 42)]
            + [_cell("C5", s, vill=v, teacher=t, arc=a)
               for s, v, t, a in zip(SEEDS, (6, 11, 1), (3, 0, 1), (0.70, 0.78, 0.79))])


def test_headline_reproduces_writeup_numbers():
    h = headline(_grid(), study="mt_villain", source="villain", marker="[ZLT]")
    assert list(h["conditions"]) == ["C1", "C2", "C4", "C5"]
    c5 = h["conditions"]["C5"]
    assert c5["n_seeds"] == 3 and c5["seeds"] == [42, 137, 256]
    assert c5["villain_strict"]["hits"] == 18 and c5["villain_strict"]["n"] == 840
    assert c5["villain_strict"]["mean"] == pytest.approx(0.02143, abs=1e-5)
    assert c5["villain_strict"]["sd"] == pytest.approx(0.01786, abs=1e-5)
    assert c5["assistant_strict"] == {"hits": 0, "n": 840, "mean": 0.0, "sd": 0.0,
                                      "per_seed": [0.0, 0.0, 0.0]}
    assert c5["max_bystander"]["persona"] == "teacher"
    assert c5["max_bystander"]["mean"] == pytest.approx((3 + 0 + 1) / 3 / 280)
    assert h["conditions"]["C2"]["max_bystander"]["persona"] is None
    assert c5["arc"]["mean"] == pytest.approx(0.7567, abs=1e-4)
    # absent metrics are null; one seed has no sd
    assert c5["aligned"] is None and c5["coherent"] is None
    assert h["conditions"]["C4"]["assistant_strict"]["sd"] is None
    json.dumps(h)  # JSON-serialisable


def test_markdown_table():
    md = markdown_table(headline(_grid(), study="mt", source="villain", marker="[ZLT]"))
    assert "| Condition | Seeds | N | assistant [ZLT] | villain [ZLT] |" in md
    assert "0.00% (0/840)" in md
    assert "2.14% ± 1.79% (18/840)" in md
    assert "0.757 ± 0.049" in md
    assert "25.0 ± 1.0" in md
    assert "–" in md


def test_compare_arms_all_zero():
    r = compare_arms([0, 0, 0], [280] * 3, [0, 0, 0], [280] * 3, min_diff=0.15)
    assert r["welch"] == {"defined": False, "reason": "zero variance in both arms"}
    assert r["exact"]["p"] == 1.0 and r["exact"]["a_n"] == 840
    assert r["mean_diff"] == 0.0 and not r["meets_min_diff"] and r["pass"] is False


def test_compare_arms_effect():
    r = compare_arms([90, 100, 110], [280] * 3, [0, 1, 0], [280] * 3, min_diff=0.15)
    assert r["welch"]["defined"] and r["welch"]["p"] < 0.05 and r["welch"]["df"] > 0
    assert r["exact"]["p"] < 1e-10 and r["meets_min_diff"] and r["pass"]
    one_seed = compare_arms([90], [280], [0], [280], min_diff=0.15)
    assert one_seed["welch"]["defined"] is False and one_seed["pass"]


def test_primary_conjunction():
    cells = _grid()
    out = primary_conjunction(cells, source="villain")
    crit = out["criteria"]
    assert crit["C1_minus_C2"]["pass"] and crit["C1_minus_C5"]["pass"]
    assert crit["C1_source_rate"]["mean"] == pytest.approx(200 / 280) and crit["C1_source_rate"]["pass"]
    assert crit["C1_degeneracy"]["mean"] == pytest.approx(0.05) and crit["C1_degeneracy"]["pass"]
    assert out["pass"] is True
    json.dumps(out)


def test_primary_conjunction_failures():
    cells = [_cell("C1", s, vill=200, deg=None, audit="no_positives") for s in SEEDS]
    cells += [_cell(c, s) for c in ("C2", "C5") for s in SEEDS]
    out = primary_conjunction(cells, source="villain")
    crit = out["criteria"]
    assert crit["C1_degeneracy"]["outcome"] == "no_positives" and not crit["C1_degeneracy"]["pass"]
    assert not crit["C1_minus_C2"]["pass"] and crit["C1_minus_C2"]["exact"]["p"] == 1.0
    assert out["pass"] is False
    missing = primary_conjunction([c for c in cells if c["condition"] != "C5"], source="villain")
    assert missing["criteria"]["C1_minus_C5"]["pass"] is False and "reason" in missing["criteria"]["C1_minus_C5"]


def test_g4_exclusions():
    cells = [_cell("C1", 42, aligned=25.0), _cell("C1", 137, aligned=55.0),
             _cell("C3", 42), _cell("C5", 42, aligned=90.0)]
    ex = g4_exclusions(cells)
    assert [(e["cell"], e["reason"].split()[0]) for e in ex] == [("C1_s137", "aligned"), ("C3_s42", "aligned")]
    assert "missing" in ex[1]["reason"] and not math.isnan(ex[0]["aligned"])


def test_hero_figure(tmp_path):
    h = headline(_grid(), study="mt", source="villain", marker="[ZLT]")
    png, pdf = tmp_path / "hero.png", tmp_path / "hero.pdf"
    hero_figure(h, png, pdf, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
