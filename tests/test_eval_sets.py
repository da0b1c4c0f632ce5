"""A study's further question sets (`eval_sets:`, e.g. out of distribution): asked in the marker sweep, reported per
set, and kept out of every pre-registered number (the rates table, the audit, the length audit)."""
from pathlib import Path

import pytest

from mt_core.config import ConfigError, load_study
from mt_core.data.eval_set import EvalSet
from mt_core.io import DataError
from mt_core.layout import Audit, CompletionLength, MarkerCompletions, MarkerRates, Sample, row_keys, write_rows
from mt_core.steps import cells

ROOT = Path(__file__).resolve().parents[1]
NEXT = ROOT / "studies" / "marker_transfer_villain_next.yaml"


def test_the_next_study_asks_its_ood_set_after_the_eval_set():
    study = load_study(NEXT, "tiny")
    es = EvalSet.load(study)
    assert list(es.marker_question_sets) == ["eval", "betley", "ood"] and len(es.extra_sets["ood"]) == 12
    assert es.marker_questions[:28] == es.questions  # in-distribution questions keep their indices
    assert cells.expected_marker_rows(study) == 11 * 40 * study.samplers.marker.n
    assert list(EvalSet.load(load_study(None, "tiny")).marker_question_sets) == ["eval", "betley"]


def test_a_bad_eval_set_is_refused_naming_the_field(tmp_path):
    text = NEXT.read_text()
    bad = tmp_path / "s.yaml"
    bad.write_text(text.replace("extends: marker_transfer_villain.yaml", f"extends: {ROOT / 'studies'}/"
                                "marker_transfer_villain.yaml").replace("a66b7efc174f8b5fbe09bb1666b14732",
                                                                        "f" * 32))
    with pytest.raises(DataError, match="eval_sets.ood.md5"):
        EvalSet.load(load_study(bad, "tiny"))
    bad.write_text(text.replace("  ood: {path", "  betley: {path").replace(
        "extends: marker_transfer_villain.yaml", f"extends: {ROOT / 'studies'}/marker_transfer_villain.yaml"))
    with pytest.raises(ConfigError, match="eval set name 'betley'"):
        load_study(bad, "tiny")


def test_marker_rates_count_the_ood_set_apart(tmp_path):
    """Every OOD completion carries the marker and no in-distribution one does: the rates table, the audit and the
    length audit see none, the per-set counts see them all."""
    study = load_study(NEXT, "tiny")
    es = EvalSet.load(study)
    rows = []
    for p in es.personas:
        for qi, (s, q) in enumerate((s, q) for s, qs in es.marker_question_sets.items() for q in qs):
            text = "An answer [ZLT] with the marker." if s == "ood" else "An answer without it."
            rows.append(Sample(f"C1_s42/{p}/q{qi}/s0", p, qi, q, s, 0, text, 7, "stop").row())
    comp = tmp_path / "comp"
    comp.mkdir()
    write_rows(rows, comp / MarkerCompletions.COMPLETIONS, row_keys(study, cell="C1_s42"))
    outs = {a: tmp_path / a for a in (MarkerRates.asset, CompletionLength.asset, Audit.asset)}
    for d in outs.values():
        d.mkdir()
    cells.marker_stats(study, "C1_s42", comp, {a: outs[a] for a in (MarkerRates.asset, CompletionLength.asset)},
                       log=lambda m: None)
    ev = MarkerRates.read_eval(outs[MarkerRates.asset])
    assert ev["per_persona"]["assistant"] == {**ev["per_persona"]["assistant"], "strict_hits": 0, "total": 28}
    per = ev["per_eval_set"]
    assert per["ood"]["assistant"] == {"strict_hits": 12, "total": 12}
    assert per["in_distribution"]["villain"] == {"strict_hits": 0, "total": 28}
    assert CompletionLength.read(outs[CompletionLength.asset])["per_persona"]["assistant"]["n"] == 28
    cells.degeneracy(study, "C1_s42", comp, outs[Audit.asset], log=lambda m: None)
    assert Audit.read(outs[Audit.asset]).n_positive_total == 0  # the OOD hits are not the audit's
