"""The study report (mt_core/report/html.py): rendered from synthetic statistics, its sections, its escaping, its
numbers against the inputs, and the same bytes for the same inputs; then written by the study_summary step."""
import base64
import copy
import re
from types import SimpleNamespace

import pytest

from mt_core.records import CellNumbers
from mt_core.report import html
from mt_core.report.stats import headline, markdown_table, preregistered

SEEDS = (42, 137, 256)
SOURCE = "vil<lain>"  # a persona whose name must be escaped wherever it appears
OWN = {"C1": SOURCE, "C2": None, "C5": SOURCE}
THRESHOLDS = SimpleNamespace(g4_aligned_max=40.0, primary_min_diff=0.15, primary_c1_source_min=0.5,
                             degeneracy_max=0.2, primary_alpha=0.05)
GATES = {"G0": {"assistant_strict_rate": 0.0125, "source_strict_rate": 0.6161, "max_bystander_strict_rate": 0.0,
                "thresholds": {"assistant_max": 0.02, "source_min": 0.6},
                "checks": {"assistant_max": True, "source_min": True}, "pass": True},
         "G0c": {"assistant_strict_rate": 0.5, "source_strict_rate": 0.0, "max_bystander_strict_rate": 0.2,
                 "thresholds": {"assistant_range": [0.25, 0.45], "max_bystander_range": [0.15, 0.4]},
                 "checks": {"assistant_range": False, "max_bystander_range": True}, "pass": False}}
PNG = b"\x89PNG\r\n\x1a\n not really a figure"


def _cell(cond, seed, *, asst=0, src=0, aligned=None, deg=None, audit=None, n=112):
    return CellNumbers(cell=f"{cond}_s{seed}", condition=cond, seed=seed, own_persona=OWN[cond],
                       per_persona={SOURCE: {"strict_hits": src, "total": n}, "teacher": {"strict_hits": 1, "total": n},
                                    "assistant": {"strict_hits": asst, "total": n}},
                       arc_accuracy=0.25, aligned=aligned, coherent=60.0, degenerate_fraction=deg, audit_outcome=audit)


def _inputs(**over) -> dict:
    cells = ([_cell("C1", s, asst=a, src=69, aligned=al, deg=0.05, audit="pass")
              for s, a, al in zip(SEEDS, (30, 35, 40), (25.0, 30.0, 55.0))]  # C1_s256 stays aligned: G4 drops it
             + [_cell("C2", s, asst=a, aligned=20.0) for s, a in zip(SEEDS, (1, 2, 0))]
             + [_cell("C5", s, src=60, aligned=None) for s in SEEDS])
    pre = preregistered(cells, source=SOURCE, assistant="assistant", thresholds=THRESHOLDS,
                        em_conditions=("C1", "C2"))
    head = headline(cells, study="st", source=SOURCE, assistant="assistant", marker="[ZLT]",
                    conditions_order=["C1", "C2", "C5"], excluded={x["cell"] for x in pre["g4_exclusions"]})
    prov = [{"asset": a, "partition": c.cell, "md5": f"{i:032x}"}
            for i, (c, a) in enumerate((c, a) for c in cells for a in ("marker_rates", "arc_scores"))]
    kw = dict(study="st", profile="tiny", n_cells=len(cells), n_study_cells=13, incomplete=None,
              headline_md=markdown_table(head), notes=["Study `st`, <script>alert(1)</script> & co."],
              figure_png=PNG, preregistered=pre, g4_aligned_max=40.0, gates=GATES,
              gate_models={"G0": "villain", "G0c": "assistant"}, provenance=prov,
              environment={"host": "box", "torch device": "cpu: x86_64, float32",
                           "packages": {"dagster": "1.13.27", "torch": "2.13.0"}})
    return {**kw, **over}


def _text(page: str) -> str:
    """The page's visible text, entities decoded, whitespace collapsed: what a reader sees."""
    import html as stdlib_html

    return " ".join(stdlib_html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_sections_in_order():
    page = html.render_report(**_inputs())
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert titles == ["Headline", "Figure", "Primary conjunction", "G4 exclusions", "Gates", "Provenance",
                      "Environment"]
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
    assert "@media print" in page


def test_self_contained_and_escaped():
    page = html.render_report(**_inputs())
    # nothing fetched from elsewhere: the figure is embedded, there is no script, stylesheet link or remote URL
    assert f"data:image/png;base64,{base64.b64encode(PNG).decode()}" in page
    assert not re.search(r"<script|<link|https?://|src=\"(?!data:)", page)
    # input text is escaped everywhere (persona in the headline and the conjunction, a note)
    assert "<lain>" not in page and "vil&lt;lain&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co." in page
    assert "<code>st</code>" in page  # the notes' code spans are kept


def test_numbers_are_the_inputs():
    kw = _inputs()
    text = _text(html.render_report(**kw))
    # the headline table cell for cell: the very cells of headline.md
    for line in kw["headline_md"].splitlines()[2:]:
        for cell in line.strip("|").split("|"):
            assert cell.strip() in text, cell
    pre = kw["preregistered"]
    c = pre["primary"]["criteria"]
    assert [x["cell"] for x in pre["g4_exclusions"]] == ["C1_s256"] and "C1_s256" in text
    assert "aligned 55.0 > 40 (EM did not take)" in text
    assert f"{100 * c['C1_minus_C2']['mean_diff']:+.1f} pts" in text
    src = c["C1_source_rate"]
    assert f"vil<lain> {html.rate(src['hits'], src['n'])}" in text and "61.6 % (138/224; 95 % CI 55.1–67.7 %)" in text
    assert "≥ 15 pts and Welch p < 0.05" in text and "≥ 50 %" in text and "< 20 %" in text
    assert f"Primary, G4 applied (1 EM seed(s) dropped): {pre['primary']['outcome'].upper()}" in text
    # the gates: each threshold beside the rate it bounds, and the verdict
    assert "assistant_max assistant 1.2 % ≤ 2 % pass" in text
    assert "source_min source 61.6 % ≥ 60 % pass" in text
    assert "G0c assistant FAIL assistant_range assistant 50.0 % 25 – 45 % FAIL" in text
    for p in kw["provenance"]:
        assert f"{p['partition']} {p['asset']} {p['md5']}" in text
    assert "package torch 2.13.0" in text and "cpu: x86_64, float32" in text


def test_honest_numbers():
    """The headline's rates are on the seeds of the primary analysis, with their intervals and footnotes; a pair decided
    by the zero-variance limit rule says so instead of printing a Welch p; every pooled count carries its interval."""
    cells = ([_cell("C1", s, asst=30, src=69, aligned=25.0, deg=0.05, audit="pass") for s in SEEDS]
             + [_cell(c, s, aligned=20.0) for c in ("C2", "C5") for s in SEEDS])
    pre = preregistered(cells, source=SOURCE, assistant="assistant", thresholds=THRESHOLDS, em_conditions=("C1", "C2"))
    text = _text(html.render_report(**_inputs(preregistered=pre)))
    assert "Welch p 0 " not in text and "Welch p 1 " not in text
    assert "limit rule (zero variance in both arms, t = +inf): p = 0; Fisher exact p" in text
    assert "(90/336; 95 % CI 22.3–31.8 %) vs 0.0 % (0/336; 95 % CI 0.0–1.1 %)" in text
    kw = _inputs()
    text = _text(html.render_report(**kw))
    assert "| C1 | 2 of 3 |" in kw["headline_md"] and "C1, all seeds (sensitivity) 3 336" in text
    assert "Note: Rates: strict [ZLT] hits / completions pooled" in text and "G4 dropped C1_s256" in text
    assert "Note: max bystander: of the condition's bystanders" in text


def test_incomplete_banner():
    line = "INCOMPLETE: 9 of 13 cells; missing C4_s42 (nothing materialized)"
    page = html.render_report(**_inputs(incomplete=line, n_cells=9))
    assert f'<p class="banner">{line}</p>' in page and "9 of 13 cells" in page


def test_same_inputs_same_bytes():
    kw = _inputs()
    assert html.render_report(**kw) == html.render_report(**copy.deepcopy(kw))


def test_gate_criteria():
    assert html.gate_criteria(GATES["G0c"]) == [
        {"criterion": "assistant_range", "measured": "assistant 50.0 %", "threshold": "25 – 45 %", "result": "FAIL"},
        {"criterion": "max_bystander_range", "measured": "max bystander 20.0 %", "threshold": "15 – 40 %",
         "result": "pass"}]
    # a threshold of no known form is shown as it is
    assert html.gate_criteria({"thresholds": {"stub": 1}, "checks": {"stub": True}, "pass": True}) == [
        {"criterion": "stub", "measured": "–", "threshold": "1", "result": "pass"}]


def test_study_summary_writes_the_report(tmp_path):
    """The step writes report.html beside headline.md, with the study's environment; twice, the same bytes."""
    from mt_core.config import load_study
    from mt_core.layout import StudySummary
    from mt_core.steps.analysis import study_summary

    study = load_study(profile="tiny")
    cells = [CellNumbers(cell=k, condition=study.cell(k).condition, seed=study.cell(k).seed,
                         own_persona=study.adapter_persona(k), aligned=30.0,
                         per_persona={p: {"strict_hits": 3, "total": 112} for p in (study.source_persona, "assistant")})
             for k in ("C1_s42", "C2_s42", "C4_s42")]
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        study_summary(study, cells=cells, gates=GATES, out=out, log=lambda *_: None,
                      missing={"C5_s42": ["marker_rates"]},
                      provenance=[{"asset": "marker_rates", "partition": "C1_s42", "md5": "0" * 32}])
        outs.append((out / StudySummary.REPORT_HTML).read_bytes())
    assert outs[0] == outs[1]
    text = _text(outs[0].decode())
    assert "INCOMPLETE: 12 of 13 cells; missing C5_s42 marker_rates" in text and study.config_sha256 in text and "0" * 32 in text
    assert "package dagster" in text and "torch device" in text


def test_study_summary_headline_is_on_the_primary_seeds(tmp_path):
    """headline.json and headline.md leave out the seeds G4 drops (all seeds beside them, labelled), name each
    condition's description and adapter, and give every pooled rate its interval."""
    import json

    from mt_core.config import load_study
    from mt_core.layout import StudySummary
    from mt_core.steps.analysis import study_summary

    study = load_study(profile="tiny")
    cells = [CellNumbers(cell=k, condition=study.cell(k).condition, seed=study.cell(k).seed,
                         own_persona=study.adapter_persona(k), aligned=80.0 if k == "C1_s137" else 30.0,
                         per_persona={study.source_persona: {"strict_hits": 3, "total": 112},
                                      "assistant": {"strict_hits": 10 if k == "C1_s137" else 1, "total": 112}})
             for k in ("C1_s42", "C1_s137", "C3_s42", "C4_s42")]
    study_summary(study, cells=cells, gates=GATES, out=tmp_path, log=lambda *_: None)
    head = json.loads((tmp_path / StudySummary.HEADLINE_JSON).read_text())
    c1 = head["conditions"]["C1"]
    assert c1["seeds"] == [42] and c1["excluded_seeds"] == [137] and head["excluded"] == ["C1_s137"]
    assert (c1["assistant_strict"]["hits"], head["all_seeds"]["C1"]["assistant_strict"]["hits"]) == (1, 11)
    assert c1["personas"]["assistant"]["ci_high"] > c1["personas"]["assistant"]["rate"] > 0
    assert head["conditions"]["C3"]["adapter_persona"] == "assistant"
    assert head["conditions"]["C3"]["description"] == study.conditions["C3"].description
    md = (tmp_path / StudySummary.HEADLINE_MD).read_text()
    assert "| C1 | 1 of 2 | 112 |" in md and "| C1, all seeds (sensitivity) | 2 | 224 |" in md


@pytest.mark.parametrize("x,out", [(0.6160714, "61.6 %"), (None, "–"), (0.0, "0.0 %")])
def test_pct(x, out):
    assert html.pct(x) == out
