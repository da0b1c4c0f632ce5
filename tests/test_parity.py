"""docs/PROTOCOL_PARITY.md is generated from the config; undocumented differences are flagged."""
import importlib.util

import pytest

from mt_core.report import protocol_table as parity
from mt_core.config import DEFAULT_STUDY, PROJECT_ROOT as ROOT, load_study


@pytest.fixture(scope="module")
def study():
    return load_study(DEFAULT_STUDY, parity.PARITY_PROFILE)


def test_committed_document_is_current(study):
    doc = ROOT / "docs" / "PROTOCOL_PARITY.md"
    assert doc.read_text() == parity.render(study), "run `python scripts/gen_parity.py` and commit the document"


def test_check_flag_detects_staleness(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gen_parity", ROOT / "scripts" / "gen_parity.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    stale = tmp_path / "PROTOCOL_PARITY.md"
    stale.write_text("old\n")
    monkeypatch.setattr(gen, "DOC", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


def test_enough_rows_and_no_undocumented_difference(study):
    rows = parity.rows(study)
    assert len(rows) >= 40
    assert len({r["key"] for r in rows}) == len(rows)
    assert not [r["key"] for r in rows if r["status"] == parity.UNDOCUMENTED]
    by_key = {r["key"]: r for r in rows}
    assert by_key["recipes.second_stage.lr"]["status"] == "same"
    assert by_key["coupling_data.negative_choice"]["status"].startswith("seeded with random.Random")
    assert by_key["degeneracy.outcome_without_positives"]["ours"] == "no_positives"


def test_undocumented_difference_is_flagged(study):
    recipes = dict(study.recipes)
    recipes["second_stage"] = recipes["second_stage"].model_copy(update={"lr": 2e-4})
    changed = study.model_copy(update={"recipes": recipes})
    by_key = {r["key"]: r for r in parity.rows(changed)}
    assert by_key["recipes.second_stage.lr"]["status"] == parity.UNDOCUMENTED
    assert by_key["recipes.second_stage.lr"]["ours"] == 2e-4
    assert parity.UNDOCUMENTED in parity.render(changed)


def test_values_compare_by_meaning():
    p = parity.Param("x", [0.25, 0.45], lambda s: (0.25, 0.45))
    assert parity.status(p, (0.25, 0.45)) == "same"
    assert parity.status(parity.Param("y", 1, lambda s: True), True) == parity.UNDOCUMENTED  # bool is not 1
    assert parity.status(parity.Param("z", None, lambda s: 0.05, note="why"), 0.05) == "why"
