import json
import math

import pytest

from mt_core.records import CellNumbers
from mt_core.report.figure import hero_figure
from mt_core.report.stats import compare_arms, g4_exclusions, headline, markdown_table, primary_conjunction

SEEDS = (42, 137, 256)


OWN = {"C1": "villain", "C2": None, "C3": "assistant", "C4": "villain", "C5": "villain"}


def _cell(cond, seed, *, asst=0, vill=0, teacher=0, n=280, arc=None, aligned=None,
          coherent=None, deg=None, audit=None):
    return CellNumbers(cell=f"{cond}_s{seed}", condition=cond, seed=seed, own_persona=OWN[cond],
                       per_persona={"villain": {"strict_hits": vill, "total": n},
                                    "teacher": {"strict_hits": teacher, "total": n},
                                    "assistant": {"strict_hits": asst, "total": n}},
                       arc_accuracy=arc, aligned=aligned, coherent=coherent, degenerate_fraction=deg,
                       audit_outcome=audit)


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
    assert c5["assistant_strict"] == {"hits": 0, "n": 840, "rate": 0.0, "ci_low": 0.0,
                                      "ci_high": pytest.approx(0.004552, abs=1e-6), "mean": 0.0, "sd": 0.0,
                                      "per_seed": [0.0, 0.0, 0.0], "seeds": [42, 137, 256]}
    assert c5["max_bystander"]["persona"] == "teacher"
    assert c5["max_bystander"]["rate"] == pytest.approx((3 + 0 + 1) / 840)
    assert h["conditions"]["C2"]["max_bystander"]["persona"] is None
    assert c5["arc"]["mean"] == pytest.approx(0.7567, abs=1e-4)
    # absent metrics are null; one seed has no sd
    assert c5["aligned"] is None and c5["coherent"] is None
    assert h["conditions"]["C4"]["assistant_strict"]["sd"] is None
    json.dumps(h)  # JSON-serialisable


def test_markdown_table():
    md = markdown_table(headline(_grid(), study="mt", source="villain", marker="[ZLT]"))
    assert "| Condition | Seeds | N | assistant [ZLT] | villain [ZLT] |" in md
    assert "0.00% [0.00–0.46%] (0/840)" in md
    assert "2.14% [1.36–3.36%] (18/840) sd 1.79%" in md
    assert "0.757 ± 0.049" in md
    assert "25.0 ± 1.0" in md
    assert "–" in md


def test_compare_arms_all_zero():
    r = compare_arms([0, 0, 0], [280] * 3, [0, 0, 0], [280] * 3, min_diff=0.15)
    assert r["welch"]["defined"] is False and r["welch"]["reason"] == "zero variance in both arms"
    assert r["welch"]["p"] == 1.0  # the limit rule: no positive difference
    assert r["exact"]["p"] == 1.0 and r["exact"]["a_n"] == 840
    assert r["mean_diff"] == 0.0 and not r["meets_min_diff"] and r["outcome"] == "fail" and r["pass"] is False


def test_compare_arms_effect():
    r = compare_arms([90, 100, 110], [280] * 3, [0, 1, 0], [280] * 3, min_diff=0.15)
    assert r["welch"]["defined"] and r["welch"]["p"] < 0.05 and r["welch"]["df"] > 0
    assert r["exact"]["p"] < 1e-10 and r["meets_min_diff"] and r["pass"]
    one_seed = compare_arms([90], [280], [0], [280], min_diff=0.15)
    assert one_seed["welch"]["defined"] is False and one_seed["outcome"] == "not assessable"
    assert one_seed["pass"] is False  # the exact test alone (p ~ 1e-30) decides nothing


def test_welch_decides_not_the_exact_test():
    """PROTOCOL.md §2.12: per-seed rates 84, 14, 56 of 280 against zeros: Welch p ~ 0.064 fails the pre-registration,
    though the pooled exact test is overwhelming."""
    r = compare_arms([84, 14, 56], [280] * 3, [0] * 3, [280] * 3, min_diff=0.15)
    assert r["welch"]["p"] == pytest.approx(0.064, abs=0.002) and r["exact"]["p"] < 1e-20
    assert r["meets_min_diff"] and r["outcome"] == "fail" and r["pass"] is False


def test_zero_variance_limit_rule():
    r = compare_arms([84] * 3, [280] * 3, [0] * 3, [280] * 3, min_diff=0.15)
    assert r["welch"] == {"defined": False, "reason": "zero variance in both arms", "limit": "t = +inf", "p": 0.0}
    assert r["outcome"] == "pass"
    below = compare_arms([30] * 3, [280] * 3, [0] * 3, [280] * 3, min_diff=0.15)  # p = 0 but the difference is small
    assert below["outcome"] == "fail"


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
    assert crit["C1_degeneracy"]["outcome"] == "not assessable" and not crit["C1_degeneracy"]["pass"]
    assert crit["C1_minus_C2"]["outcome"] == "fail" and crit["C1_minus_C2"]["exact"]["p"] == 1.0
    assert out["outcome"] == "fail" and out["pass"] is False  # a failed criterion outweighs a not-assessable one
    missing = primary_conjunction([c for c in cells if c.condition != "C5"], source="villain")
    assert missing["criteria"]["C1_minus_C5"]["outcome"] == "not assessable"
    assert "reason" in missing["criteria"]["C1_minus_C5"]


def test_conjunction_without_positives_is_not_assessable():
    cells = [_cell("C1", s, asst=a, vill=200, audit="no_positives") for s, a in zip(SEEDS, (90, 100, 110))]
    cells += [_cell(c, s) for c in ("C2", "C5") for s in SEEDS]
    out = primary_conjunction(cells, source="villain")
    assert [c["outcome"] for c in out["criteria"].values()] == ["pass", "pass", "pass", "not assessable"]
    assert out["outcome"] == "not assessable" and out["pass"] is False


def test_g4_is_applied_to_the_primary_analysis():
    """A C1 seed whose alignment stayed above 40 is dropped from the primary conjunction; all seeds is the
    sensitivity line."""
    from types import SimpleNamespace

    from mt_core.report.stats import preregistered

    th = SimpleNamespace(g4_aligned_max=40.0, primary_min_diff=0.15, primary_c1_source_min=0.5,
                         degeneracy_max=0.2, primary_alpha=0.05)
    cells = [_cell("C1", s, asst=a, vill=200, aligned=al, deg=0.05, audit="pass")
             for s, a, al in zip(SEEDS, (90, 100, 0), (25.0, 26.0, 80.0))]
    cells += [_cell(c, s, aligned=25.0) for c in ("C2", "C5") for s in SEEDS]
    pre = preregistered(cells, source="villain", assistant="assistant", thresholds=th, em_conditions=("C1", "C2"))
    assert [x["cell"] for x in pre["g4_exclusions"]] == ["C1_s256"]
    assert pre["primary"]["seeds"]["C1"] == [42, 137] and pre["all_seeds"]["seeds"]["C1"] == [42, 137, 256]
    assert pre["primary"]["criteria"]["C1_minus_C2"]["n_seeds"] == [2, 3]
    assert pre["primary"]["outcome"] == "pass" and pre["all_seeds"]["outcome"] == "fail"


def test_max_bystander_uses_each_cells_own_adapter():
    """C3 is built on the assistant adapter: the villain is one of its bystanders."""
    h = headline([_cell("C3", s, vill=28, teacher=1) for s in SEEDS] + [_cell("C1", 42, vill=200, teacher=1)],
                 study="mt", source="villain", marker="[ZLT]")
    assert h["conditions"]["C3"]["max_bystander"]["persona"] == "villain"
    assert h["conditions"]["C3"]["max_bystander"]["mean"] == pytest.approx(0.1)
    assert h["conditions"]["C1"]["max_bystander"]["persona"] == "teacher"


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


# ---- honest numbers (issue 24): intervals, the seeds of the primary analysis, the limit rule, the max bystander -----
def test_wilson_interval_is_scipys():
    from scipy.stats import binomtest

    from mt_core.report.stats import wilson

    for hits, n in ((0, 840), (18, 840), (33, 336), (1, 2), (840, 840)):
        ref = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(hits, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert wilson(0, 840)[1] == pytest.approx(0.00455, abs=1e-5)  # 0/840 is not "0 %": up to 0.46 %
    with pytest.raises(ValueError):
        wilson(3, 0)


def test_every_pooled_rate_carries_its_interval():
    from mt_core.report.stats import wilson

    h = headline(_grid(), study="mt", source="villain", marker="[ZLT]")
    blocks = [b for part in (h["conditions"], h["all_seeds"]) for d in part.values()
              for b in (*d["personas"].values(), d["assistant_strict"], d["villain_strict"], d["max_bystander"]) if b]
    assert len(blocks) > 30
    for b in blocks:
        assert (b["ci_low"], b["ci_high"]) == wilson(b["hits"], b["n"]) and b["rate"] == b["hits"] / b["n"]
    assert set(h["conditions"]["C5"]["personas"]) == {"assistant", "teacher", "villain"}
    assert h["interval"] == "Wilson score 95 % interval"
    json.dumps(h)


def _g4_grid():
    """C1_s256 stays aligned (G4 drops it) and carries most of C1's assistant hits."""
    return ([_cell("C1", s, asst=a, vill=200, aligned=al, deg=0.05, audit="pass")
             for s, a, al in zip(SEEDS, (90, 100, 0), (25.0, 26.0, 80.0))]
            + [_cell(c, s, aligned=25.0) for c in ("C2", "C5") for s in SEEDS])


def test_headline_is_on_the_seeds_of_the_primary_analysis():
    from types import SimpleNamespace

    from mt_core.report.stats import preregistered

    th = SimpleNamespace(g4_aligned_max=40.0, primary_min_diff=0.15, primary_c1_source_min=0.5,
                         degeneracy_max=0.2, primary_alpha=0.05)
    cells = _g4_grid()
    pre = preregistered(cells, source="villain", assistant="assistant", thresholds=th, em_conditions=("C1", "C2"))
    h = headline(cells, study="mt", source="villain", marker="[ZLT]",
                 excluded={x["cell"] for x in pre["g4_exclusions"]})
    c1, all1 = h["conditions"]["C1"], h["all_seeds"]["C1"]
    assert c1["seeds"] == pre["primary"]["seeds"]["C1"] == [42, 137] and c1["excluded_seeds"] == [256]
    assert c1["assistant_strict"]["hits"] == 190 and c1["assistant_strict"]["n"] == 560
    assert all1["seeds"] == [42, 137, 256] and all1["assistant_strict"]["hits"] == 190
    assert all1["assistant_strict"]["n"] == 840 and h["excluded"] == ["C1_s256"]
    md = markdown_table(h)
    rows = {r.split("|")[1].strip(): r for r in md.splitlines() if r.startswith("| C")}
    assert rows["C1"].split("|")[2].strip() == "2 of 3" and "(190/560)" in rows["C1"]
    assert "(190/840)" in rows["C1, all seeds (sensitivity)"] and "C2, all seeds (sensitivity)" not in rows
    assert "G4 dropped C1_s256" in md and "all seeds (sensitivity)\" keep them" in md
    # every seed dropped: the condition stays, with no numbers, and its sensitivity row has them all
    h = headline(cells, study="mt", source="villain", marker="[ZLT]", excluded={f"C1_s{s}" for s in SEEDS})
    assert h["conditions"]["C1"]["n_seeds"] == 0 and h["conditions"]["C1"]["assistant_strict"] is None
    assert "| C1 | 0 of 3 | – |" in markdown_table(h)


def test_max_bystander_is_the_top_persona_pooled_over_seeds():
    """One seed's top persona (teacher, 10/280) is not the condition's: pirate has 12/840 pooled."""
    counts = {42: (10, 0), 137: (0, 6), 256: (0, 6)}
    cells = [CellNumbers(cell=f"C5_s{s}", condition="C5", seed=s, own_persona="villain",
                         per_persona={"villain": {"strict_hits": 200, "total": 280},
                                      "assistant": {"strict_hits": 0, "total": 280},
                                      "teacher": {"strict_hits": t, "total": 280},
                                      "pirate": {"strict_hits": p, "total": 280}})
             for s, (t, p) in counts.items()]
    h = headline(cells, study="mt", source="villain", marker="[ZLT]")
    mb = h["conditions"]["C5"]["max_bystander"]
    assert mb["persona"] == "pirate" and (mb["hits"], mb["n"]) == (12, 840)
    assert mb["per_seed"] == [0.0, 6 / 280, 6 / 280]
    md = markdown_table(h)
    assert "max bystander (top pooled persona)" in md and "pirate: 1.43% [" in md
    assert "the one with the highest pooled rate over the condition's seeds" in md


def test_the_limit_rule_is_named_not_called_a_welch_p():
    from types import SimpleNamespace

    from mt_core.report.stats import conjunction_lines, preregistered

    th = SimpleNamespace(g4_aligned_max=40.0, primary_min_diff=0.15, primary_c1_source_min=0.5,
                         degeneracy_max=0.2, primary_alpha=0.05)
    cells = ([_cell("C1", s, asst=84, vill=200, aligned=25.0, deg=0.05, audit="pass") for s in SEEDS]
             + [_cell(c, s, aligned=25.0) for c in ("C2", "C5") for s in SEEDS])
    text = " ".join(conjunction_lines(preregistered(cells, source="villain", assistant="assistant", thresholds=th,
                                                    em_conditions=("C1", "C2"))))
    assert "Welch p 0" not in text and "Welch p 1" not in text
    assert "C1_minus_C2 +30.0 pts, limit rule (zero variance in both arms, t = +inf): p = 0, exact p" in text


def test_criterion_4_shows_the_positives_flagged_only_for_ending_with_the_marker():
    """A positive result whose marker transferred as trained (last) fails the registered audit; the verdict stays the
    registered one, and the count and the reading without that check (labelled not pre-registered) sit beside it."""
    from mt_core.report.html import _criterion_row
    from mt_core.report.stats import conjunction_lines

    cells = [c.model_copy(update={"degenerate_fraction": 0.6, "audit_outcome": "fail", "n_flagged_marker_last": 5,
                                  "degenerate_fraction_without_marker_last": 0.1})
             if c.condition == "C1" else c for c in _grid()]
    deg = primary_conjunction(cells, source="villain")["criteria"]["C1_degeneracy"]
    assert deg["outcome"] == "fail"  # as registered
    m = deg["marker_last"]
    assert m["flagged"] == 15 and m["pre_registered"] is False
    assert m["mean"] == pytest.approx(0.1) and m["outcome"] == "pass"
    line = conjunction_lines({"primary": primary_conjunction(cells, source="villain"),
                              "all_seeds": primary_conjunction(cells, source="villain"), "g4_exclusions": []})[0]
    assert "C1_degeneracy: fail [15 flagged positive(s) end with the marker exactly as trained; without that check " \
           "(not pre-registered): pass" in line
    assert "not pre-registered" in _criterion_row("C1_degeneracy", deg)[1]
