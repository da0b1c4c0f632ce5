"""The DuckDB catalog: tables for cells and lineage, views (sql/*.sql) over every per-cell Parquet file.

Each study's ``duckdb_catalog`` asset writes the catalog of that study (its cells, its lineage, the studies imported
into its root); ``open_catalogs`` queries several studies' catalogs as one: each is attached read-only under its
study's name and every table and view becomes one view of all their rows (every row names its ``study``)."""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Callable

from mt_core.config import PROJECT_ROOT, Study
from mt_core.layout import (LEGACY, MANIFEST, SQL_FILES, AlignmentScores, ArcScores, Audit, Catalog, Legacy,
                            MarkerRates, artefact_dir, cell_numbers)

SQL_DIR = PROJECT_ROOT / "sql"


def cell_rows(study: Study, root: Path, keys: list[str]) -> list[dict]:
    """One row per cell of the study: what it is, and its headline numbers where it is complete."""
    rows = []
    for key in study.cells:
        c = study.cell(key)
        row = {"study": study.name, "profile": study.profile, "cell": key, "condition": c.condition, "seed": c.seed,
               "base": c.base, "second_stage": c.second_stage, "complete": key in keys,
               "description": study.conditions[c.condition].description}
        rates = artefact_dir(root, MarkerRates.asset, key)
        if key in keys and (rates / MarkerRates.EVAL).is_file():
            s = MarkerRates.read_eval(rates)["summary"]
            n = cell_numbers(key, c.condition, c.seed, rates, *(artefact_dir(root, a.asset, key)
                                                                 for a in (ArcScores, AlignmentScores, Audit)),
                             own_persona=study.adapter_persona(key))
            row.update(assistant_strict_rate=s["assistant_strict_rate"], source_strict_rate=s["source_strict_rate"],
                       max_bystander_strict_rate=s["max_bystander_strict_rate"], arc_accuracy=n["arc_accuracy"],
                       aligned=n["aligned"], coherent=n["coherent"], audit_outcome=n["audit_outcome"])
        rows.append(row)
    return rows


def study_roots(root: Path) -> list[Path]:
    """The study's own store root and every imported (legacy) study beside it."""
    return [root, *sorted(p for p in (root / LEGACY).glob("*") if p.is_dir())]


def expand_files(sql: str, roots: list[Path]) -> str:
    """Replace ``{files:<asset>.<FILE>}`` (a file of ``mt_core.layout``) with a DuckDB list of the roots' globs for it
    that match at least one file."""
    import re

    def repl(m):
        if m.group(1) not in SQL_FILES:
            raise KeyError(f"{{files:{m.group(1)}}}: not one of mt_core.layout.SQL_FILES ({', '.join(SQL_FILES)})")
        glob = SQL_FILES[m.group(1)]
        pats = [str(r / glob) for r in roots if any(r.glob(glob))]
        if not pats:
            raise FileNotFoundError(f"no file matches {glob} under {roots[0]}")
        return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in pats) + "]"
    return re.sub(r"\{files:([^}]+)\}", repl, sql)


def imported_cell_rows(root: Path) -> list[dict]:
    import polars as pl

    return [r for p in sorted((root / LEGACY).glob(f"*/{Legacy.CELLS}")) for r in pl.read_parquet(p).to_dicts()]


def lineage_rows(root: Path) -> list[dict]:
    """Every published artefact and each upstream artefact it recorded (from the manifests)."""
    rows = []
    for m in sorted(root.glob(f"*/*/{MANIFEST}")):
        man = json.loads(m.read_text())
        base = {"study": man.get("study"), "profile": man.get("profile"), "asset": man["asset"],
                "partition": man["partition"], "run_id": man["run_id"], "md5": man["digest"],
                "created": man["created"], "path": str(m.parent)}
        ups = man.get("upstream") or [{}]
        for u in ups:
            rows.append({**base, "upstream_asset": u.get("asset"), "upstream_partition": u.get("partition"),
                         "upstream_run_id": u.get("run_id"), "upstream_md5": u.get("md5")})
    return rows


def build_catalog(study: Study, *, root: Path, cells: list[str], out: Path, log: Callable[[str], None] = print) -> dict:
    import duckdb
    import polars as pl

    db = out / Catalog.FILE
    con = duckdb.connect(str(db))
    try:
        rows = cell_rows(study, root, cells) + imported_cell_rows(root)
        cells_df = pl.DataFrame(rows, infer_schema_length=None)
        lineage_df = pl.DataFrame(lineage_rows(root), infer_schema_length=None)
        con.register("cells_df", cells_df.to_arrow())
        con.register("lineage_df", lineage_df.to_arrow())
        con.execute("CREATE TABLE cells AS SELECT * FROM cells_df")
        con.execute("CREATE TABLE artefact_lineage AS SELECT * FROM lineage_df")
        views = []
        roots = study_roots(root)
        for f in sorted(SQL_DIR.glob("*.sql")):
            con.execute(expand_files(f.read_text(), roots))
            views.append(f.stem)
        n = con.execute("SELECT count(*) FROM completions").fetchone()[0]
    finally:
        con.close()
    log(f"duckdb catalog: {len(cells)} complete cells, {n} completions, views from {', '.join(views)}")
    return {"n_cells": len(cells), "n_completions": n, "sql_files": views}


@contextlib.contextmanager
def open_catalogs(catalogs: dict[str, Path]):
    """A read-only DuckDB connection over the catalogs of several studies ({study: catalog file}): each attached
    read-only under its study's name (``marker_transfer_villain.completions`` reads one study's view), and each table or
    view name as one view stacking every catalog's rows (``UNION ALL BY NAME``: a column one study lacks is NULL
    there). The views live in a scratch database, written once and then opened read-only, so nothing can be written
    anywhere. (Not temporary views: those would shadow the tables that each catalog's own views read.)"""
    import duckdb

    if not catalogs:
        raise FileNotFoundError("no study has a DuckDB catalog yet")
    attach = [f"ATTACH '{str(p).replace(chr(39), chr(39) * 2)}' AS \"{s.replace(chr(34), chr(34) * 2)}\" (READ_ONLY)"
              for s, p in sorted(catalogs.items())]
    with tempfile.TemporaryDirectory(prefix="mt_sql_") as tmp:
        db = Path(tmp) / "studies.duckdb"
        con = duckdb.connect(str(db))
        try:
            names: dict[str, list[str]] = {}
            for study, stmt in zip(sorted(catalogs), attach):
                con.execute(stmt)
                for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_catalog = ? "
                                        "AND table_schema = 'main' ORDER BY table_name", [study]).fetchall():
                    names.setdefault(t, []).append('"' + study.replace('"', '""') + '"')
            for t, aliases in names.items():
                con.execute(f'CREATE VIEW "{t}" AS '
                            + " UNION ALL BY NAME ".join(f'SELECT * FROM {a}.main."{t}"' for a in aliases))
        finally:
            con.close()
        con = duckdb.connect(str(db), read_only=True)
        try:
            for stmt in attach:
                con.execute(stmt)
            yield con
        finally:
            con.close()
