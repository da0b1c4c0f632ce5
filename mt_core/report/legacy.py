"""Import the reference pipeline's result files (PROTOCOL.md §3) into our per-cell layout.

Reads ``prepare_result.json``, ``c{N}/run_result_c{N}_seed{S}.json`` and ``c{N}/marker_eval_seed{S}/marker_eval.json``
(+ ``degeneracy_audit.json``) and writes what the platform's own cells write (marker rates, ARC, alignment and audit
summaries in the ``mt_core.layout`` per-cell layout), plus one row per cell, the gates and what was imported.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mt_core.config import cell_key, parse_cell_key
from mt_core.io import DataError, md5_file, read_json, write_json
from mt_core.layout import (AlignmentScores, ArcScores, Audit, Legacy, MarkerRates, artefact_dir, cell_numbers,
                            write_rows)

PROFILE = "legacy"
JUDGE = "claude-sonnet-4-5-20250929 (legacy import)"
STAGES = {"em": "em", "benign_sft": "benign", None: "none"}
RUN_RESULT = re.compile(r"run_result_c(\d+)_seed(\d+)\.json")
NUM = (int, float)


def _bases(source: str) -> dict[str, tuple[str, str]]:
    """Condition -> (base, description), from PROTOCOL.md §1.5."""
    return {"C1": (source, f"{source}+[ZLT] coupling adapter, then EM"),
            "C2": ("raw", "raw Instruct, then EM"),
            "C3": ("assistant", "assistant+[ZLT] coupling adapter, then EM"),
            "C4": (source, f"{source}+[ZLT] coupling adapter, no second stage"),
            "C5": (source, f"{source}+[ZLT] coupling adapter, then benign SFT")}


# ---- validation --------------------------------------------------------------------------------------------------
def _load(path: Path) -> dict:
    obj = read_json(path)  # a DataError naming the file (and the line) when missing, not UTF-8 or not JSON
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object")
    return obj


def _get(path: Path, obj: dict, field: str, kinds: type | tuple, what: str, *, nullable: bool = False,
         required: bool = True) -> Any:
    """``obj[field]`` (a dotted path) checked against ``kinds``; the error names the file and the field."""
    cur: Any = obj
    for part in field.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if not required:
                return None
            raise DataError(f"{path}: missing field '{field}'")
        cur = cur[part]
    if cur is None and (nullable or not required):
        return None
    if isinstance(cur, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise DataError(f"{path}: field '{field}' must be {what}")
    if not isinstance(cur, kinds):
        raise DataError(f"{path}: field '{field}' must be {what}")
    return cur


def _per_persona(path: Path, me: dict, source: str, assistant: str) -> dict:
    per = _get(path, me, "per_persona", dict, "an object")
    if not per:
        raise DataError(f"{path}: field 'per_persona' is empty")
    out = {}
    for p in per:
        f = f"per_persona.{p}"
        _get(path, me, f, dict, "an object")
        row = {k: _get(path, me, f"{f}.{k}", int, "an integer") for k in ("strict_hits", "loose_hits", "total")}
        t = row["total"]
        if t <= 0 or not (0 <= row["strict_hits"] <= t and 0 <= row["loose_hits"] <= t):
            raise DataError(f"{path}: field '{f}' needs total > 0 and 0 <= strict_hits, loose_hits <= total")
        for kind in ("strict", "loose"):
            rate = _get(path, me, f"{f}.{kind}_rate", NUM, "a number")
            if abs(rate - row[f"{kind}_hits"] / row["total"]) > 1e-9:
                raise DataError(f"{path}: field '{f}.{kind}_rate' is {rate} but {kind}_hits/total is "
                                f"{row[f'{kind}_hits']}/{row['total']}")
            row[f"{kind}_rate"] = row[f"{kind}_hits"] / row["total"]
        pq = _get(path, me, f"{f}.per_question", dict, "an object", required=False)
        out[p] = {**row, "per_question": pq or {}}
    for name in (source, assistant):
        if name not in out:
            raise DataError(f"{path}: field 'per_persona' has no '{name}' persona (have: {', '.join(out)})")
    return out


def _own(condition: str, source: str) -> str | None:
    """The persona of a reference cell's coupling adapter (None for the raw base)."""
    base = _bases(source).get(condition, (None, ""))[0]
    return None if base in (None, "raw") else base


def _summary(per: dict, source: str, assistant: str, own: str | None) -> dict:
    """Our summary keys, computed by mt_core.evals.markers from the per-persona counts."""
    from mt_core.evals.markers import summarize_markers

    rows = [{"persona": p, "question": "all", "strict_hit": i < d["strict_hits"], "loose_hit": i < d["loose_hits"]}
            for p, d in per.items() for i in range(d["total"])]
    return summarize_markers(rows, persona_order=list(per), question_order=["all"], source=source,
                             assistant=assistant, own=own)["summary"]


def _audit(path: Path, obj: dict, prefix: str = "") -> dict:
    """Our audit record from a legacy one (``prefix`` names where it sits inside ``obj``)."""
    def get(field, kinds, what, **kw):
        return _get(path, obj, prefix + field, kinds, what, **kw)

    n_pos, n_sampled = get("n_positive_total", int, "an integer"), get("n_sampled", int, "an integer")
    frac, passed = get("degenerate_fraction", NUM, "a number"), get("pass", bool, "true or false")
    return {"outcome": "no_positives" if n_pos == 0 else ("pass" if passed else "fail"),
            "n_positive_total": n_pos, "n_sampled": n_sampled, "n_degenerate": get("n_degenerate", int, "an integer"),
            "degenerate_fraction": None if n_sampled == 0 else frac,
            "gate_threshold": get("gate_threshold", NUM, "a number", required=False),
            "legacy_pass": passed, "per_item": get("per_item", list, "a list", required=False) or []}


# ---- import ------------------------------------------------------------------------------------------------------
def _read_cell(rr_path: Path, n: int, seed: int, source: str, assistant: str) -> dict:
    rr = _load(rr_path)
    cond = _get(rr_path, rr, "condition", str, "a string")
    if cond.lower() != f"c{n}":
        raise DataError(f"{rr_path}: field 'condition' is {cond!r} but the file name says c{n}")
    if _get(rr_path, rr, "seed", int, "an integer") != seed:
        raise DataError(f"{rr_path}: field 'seed' is {rr['seed']} but the file name says seed {seed}")
    kind = _get(rr_path, rr, "second_stage.kind", str, "a string or null", nullable=True)
    if kind not in STAGES:
        raise DataError(f"{rr_path}: field 'second_stage.kind' is {kind!r}; expected em, benign_sft or null")

    me_dir = rr_path.parent / f"marker_eval_seed{seed}"
    me_path = me_dir / "marker_eval.json"
    if not me_path.is_file():
        raise DataError(f"{rr_path}: its marker eval {me_path} is missing")
    me = _load(me_path)
    per = _per_persona(me_path, me, source, assistant)
    marker = _get(me_path, me, "config.marker", str, "a string", required=False) or "[ZLT]"

    cell = {"condition": f"C{n}", "seed": seed, "key": cell_key(f"C{n}", seed), "stage": STAGES[kind],
            "marker": marker, "per_persona": per, "arc": None, "alignment": None, "audit": None,
            "inputs": [rr_path, me_path]}
    sub = _get(rr_path, rr, "em_sub_run_result", dict, "an object or null", nullable=True)
    if sub is not None:
        f = "em_sub_run_result.capability"
        if _get(rr_path, rr, f, dict, "an object or null", required=False) is not None:
            cell["arc"] = {"arc_challenge_logprob": _get(rr_path, rr, f"{f}.arc_challenge_logprob", NUM, "a number"),
                           "correct": _get(rr_path, rr, f"{f}.correct", int, "an integer"),
                           "total": _get(rr_path, rr, f"{f}.total", int, "an integer")}
        f = "em_sub_run_result.alignment"
        if _get(rr_path, rr, f, dict, "an object or null", required=False) is not None:
            cell["alignment"] = {
                "overall_mean_aligned": _get(rr_path, rr, f"{f}.overall_mean_aligned", NUM, "a number or null",
                                             nullable=True),
                "overall_mean_coherent": _get(rr_path, rr, f"{f}.overall_mean_coherent", NUM, "a number or null",
                                              nullable=True),
                "n_errors": _get(rr_path, rr, f"{f}.n_errors", int, "an integer"),
                "judge_model": JUDGE, "judge_offline": False}
    au_path = me_dir / "degeneracy_audit.json"
    if au_path.is_file():
        cell["audit"] = _audit(au_path, _load(au_path))
        cell["inputs"].append(au_path)
    elif _get(rr_path, rr, "degeneracy_audit", dict, "an object or null", required=False) is not None:
        cell["audit"] = _audit(rr_path, rr, "degeneracy_audit.")
    return cell


def import_legacy(src_dir: str | Path, name: str, out_dir: str | Path, *, source: str = "villain",
                  assistant: str = "assistant") -> dict:
    """Read a reference result directory and write it into ``out_dir`` in the platform's per-cell layout."""
    import polars as pl

    from mt_core.evals.markers import rates_table

    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise DataError(f"{src}: not a directory")
    prep_path = src / "prepare_result.json"
    gates = _get(prep_path, _load(prep_path), "gates", dict, "an object")

    cells, inputs = [], [prep_path]
    for cdir in sorted(p for p in src.iterdir() if p.is_dir() and re.fullmatch(r"c\d+", p.name)):
        for rr_path in sorted(cdir.glob("run_result_*.json")):
            m = RUN_RESULT.fullmatch(rr_path.name)
            if not m or f"c{m.group(1)}" != cdir.name:
                continue  # not a run result of this condition: ignored like any other unknown file
            cells.append(_read_cell(rr_path, int(m.group(1)), int(m.group(2)), source, assistant))
    if not cells:
        raise DataError(f"{src}: no c<N>/run_result_c<N>_seed<S>.json files")
    cells.sort(key=lambda c: (int(c["condition"][1:]), c["seed"]))

    bases, rows = _bases(source), []
    for c in cells:
        key, per = c["key"], c["per_persona"]
        summ = _summary(per, source, assistant, _own(c["condition"], source))
        d = artefact_dir(out, MarkerRates.asset, key)
        d.mkdir(parents=True)
        write_json(d / MarkerRates.EVAL, {"cell": key, "marker": c["marker"], "per_persona": per, "summary": summ})
        write_rows(rates_table(per), d / MarkerRates.RATES, {"study": name, "profile": PROFILE, "cell": key})
        for kind, fname, obj in ((ArcScores, ArcScores.SUMMARY, c["arc"]),
                                 (AlignmentScores, AlignmentScores.SUMMARY, c["alignment"]),
                                 (Audit, Audit.FILE, c["audit"] and {"cell": key, **c["audit"]})):
            if obj is not None:
                artefact_dir(out, kind.asset, key).mkdir(parents=True)
                write_json(artefact_dir(out, kind.asset, key) / fname, obj)
        base, desc = bases.get(c["condition"], (None, ""))
        al = c["alignment"] or {}
        rows.append({"study": name, "profile": PROFILE, "cell": key, "condition": c["condition"], "seed": c["seed"],
                     "base": base, "second_stage": c["stage"], "complete": True, "description": desc,
                     "assistant_strict_rate": summ["assistant_strict_rate"],
                     "source_strict_rate": summ["source_strict_rate"],
                     "max_bystander_strict_rate": summ["max_bystander_strict_rate"],
                     "arc_accuracy": c["arc"]["arc_challenge_logprob"] if c["arc"] else None,
                     "aligned": al.get("overall_mean_aligned"), "coherent": al.get("overall_mean_coherent"),
                     "audit_outcome": c["audit"]["outcome"] if c["audit"] else None})
        inputs += c["inputs"]

    schema = {"study": pl.Utf8, "profile": pl.Utf8, "cell": pl.Utf8, "condition": pl.Utf8, "seed": pl.Int64,
              "base": pl.Utf8, "second_stage": pl.Utf8, "complete": pl.Boolean, "description": pl.Utf8,
              "assistant_strict_rate": pl.Float64, "source_strict_rate": pl.Float64,
              "max_bystander_strict_rate": pl.Float64, "arc_accuracy": pl.Float64, "aligned": pl.Float64,
              "coherent": pl.Float64, "audit_outcome": pl.Utf8}
    pl.DataFrame(rows, schema=schema).write_parquet(out / Legacy.CELLS)
    write_json(out / Legacy.GATES, gates)
    meta = {"study": name, "profile": PROFILE, "source_dir": str(src.resolve()), "source_persona": source,
            "assistant_persona": assistant, "marker": cells[0]["marker"], "cells": [c["key"] for c in cells],
            "inputs": {str(p.relative_to(src)): md5_file(p) for p in inputs}}
    write_json(out / Legacy.IMPORT, meta)
    return {k: meta[k] for k in ("study", "source_persona", "cells")} | {"n_cells": len(cells)}


# ---- reading an imported study back ------------------------------------------------------------------------------
def read_cells(root: str | Path) -> tuple[dict, list[dict]]:
    """(import.json, one ``mt_core.report.stats``-shaped dict per cell) from an imported study's directory."""
    root = Path(root)
    meta = read_json(root / Legacy.IMPORT)
    cells = []
    for key in meta["cells"]:
        cond, seed = parse_cell_key(key)
        cells.append(cell_numbers(key, cond, seed, *(artefact_dir(root, k.asset, key)
                                                    for k in (MarkerRates, ArcScores, AlignmentScores, Audit)),
                                  own_persona=_own(cond, meta["source_persona"])))
    return meta, cells
