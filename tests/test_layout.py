"""The artefact layout has one home: mt_core/layout.py names every artefact file, and the graph has its assets."""
import os
import re
from pathlib import Path

import pytest

from mt_core import layout

ROOT = Path(__file__).resolve().parents[1]
KINDS = [v for v in vars(layout).values() if isinstance(v, type) and v.__module__ == layout.__name__
         and v is not layout.Sample]
# what the reference pipeline itself called its files (mt_core/report/legacy.py reads them): its names, not ours
REFERENCE_INPUTS = {"marker_eval.json"}


def _file_names() -> set[str]:
    names = {layout.MANIFEST, layout.JUDGE_CACHE}
    for k in KINDS:
        names |= {v for a, v in vars(k).items() if a.isupper() and isinstance(v, str) and "." in v}
    return names


def test_every_kind_names_an_asset_of_the_graph():
    """Of the graph of every study in studies/ (the latent probe's assets exist only where a study asks for them)."""
    from mt_assets.location import build_defs
    from mt_settings import Settings

    studies = tuple(sorted((ROOT / "studies").glob("*.yaml")))
    defs = build_defs(Settings.from_env({"MT_STUDIES": os.pathsep.join(map(str, studies))}))
    keys = {k.path[-1] for k in defs.resolve_asset_graph().get_all_asset_keys()}  # <study>/<asset>
    assets = {a for k in KINDS for a in (getattr(k, n, None) for n in ("asset", "coupling", "cell"))
              if isinstance(a, str)}
    assets |= {layout.Dataset.asset(w) for w in ("em", "benign")}
    assert assets and assets <= keys, assets - keys
    assert set(layout.PER_CELL) <= keys


def test_artefact_file_names_are_spelled_only_in_the_layout():
    names = _file_names()
    assert "marker_eval.json" in names and "completions.parquet" in names  # the check can fail
    code = [p for d in ("mt_core", "mt_assets", "mt_resources") for p in (ROOT / d).rglob("*.py")]
    code += [p for d in ("mt_cli", "mt_run") for p in (ROOT / d).rglob("*.py")]
    code += [ROOT / f for f in ("mt_worker.py", "definitions.py")] + list((ROOT / "sql").glob("*.sql"))
    spelled = {}
    for p in code:
        if p.name == "layout.py":
            continue
        for n in names:
            if re.search(r"[\"'/]" + re.escape(n) + r"[\"']", p.read_text()):
                spelled.setdefault(n, []).append(str(p.relative_to(ROOT)))
    legacy = {n for n, ps in spelled.items() if ps == ["mt_core/report/legacy.py"] and n in REFERENCE_INPUTS}
    assert {n: ps for n, ps in spelled.items() if n not in legacy} == {}


def test_sql_placeholders_resolve_through_the_layout(tmp_path):
    from mt_core.report.catalog import expand_files, sql_files

    d = layout.artefact_dir(tmp_path, layout.MarkerRates.asset, "C1_s42")
    art = {"asset": layout.MarkerRates.asset, "partition": "C1_s42", "path": str(d),
           "files": {f: {"md5": "m", "size": 0} for f in (layout.MarkerRates.HITS, layout.MarkerRates.EVAL)}}
    rows = sql_files([art], "s")  # the layout's names pick the artefact's files: hits.parquet, not the JSON
    assert [(r["placeholder"], r["path"]) for r in rows] == [("marker_rates.HITS", str(d / layout.MarkerRates.HITS))]
    sql = expand_files("SELECT * FROM read_parquet({files:marker_rates.HITS})",
                       {"marker_rates.HITS": [rows[0]["path"]]})
    assert f"['{d / layout.MarkerRates.HITS}']" in sql
    with pytest.raises(KeyError, match="not one of"):
        expand_files("{files:marker_rates/*/hits.parquet}", {})


def test_sample_ids_are_stable_and_distinct():
    ids = {layout.sample_id("C1_s42", p, q, k) for p in ("villain", "assistant", "") for q in range(3) for k in range(2)}
    assert len(ids) == 18 and layout.sample_id("C1_s42", "", 3, 7) == "C1_s42/none/q3/s7"


def test_cell_numbers_with_missing_evaluations(tmp_path):
    from mt_core.io import write_json
    from mt_core.records import PersonaCounts

    rates = tmp_path / "rates"
    rates.mkdir()
    write_json(rates / layout.MarkerRates.EVAL, {"per_persona": {"villain": {"strict_hits": 3, "total": 10}},
                                                 "summary": {}})
    n = layout.cell_numbers("C4_s42", "C4", 42, rates, arc=None, scores=tmp_path / "nowhere", own_persona="villain")
    assert n.per_persona == {"villain": PersonaCounts(strict_hits=3, total=10)} and n.own_persona == "villain"
    assert (n.arc_accuracy, n.aligned, n.audit_outcome) == (None, None, None)


def test_artefact_root_is_one_function(monkeypatch, tmp_path):
    from mt_core.config import PROJECT_ROOT, load_study

    s = load_study(profile="tiny")
    assert layout.artefact_root(s) == PROJECT_ROOT / "artifacts" / s.name / "tiny"
    assert layout.artefact_root(s, str(tmp_path)) == tmp_path
