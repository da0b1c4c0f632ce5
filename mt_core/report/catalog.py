"""The DuckDB catalog: tables for cells and lineage, views (sql/*.sql) over the study's verified Parquet files.

Each study's ``duckdb_catalog`` asset writes the catalog of that study (its cells, its lineage, the studies imported
into its root). Its views read an explicit list of files: those of the artefacts the asset verified (every file's md5
against the artefact's manifest, the manifest's digest against the Dagster instance's latest materialization of that
partition; an imported study against its manifest). A file of no such artefact (a cell the catalog left out, a
directory the instance never recorded) is in no view, and the table ``catalog_files`` records each listed file's md5.

``open_catalogs`` queries several studies' catalogs as one, read-only and inside the catalog: each catalog is
verified and copied, every file it lists is hashed against ``catalog_files``, and the connection is locked to those
files (``enable_external_access = false`` with ``allowed_paths``; ``lock_configuration``). ``check_query`` admits only
reading statements."""
from __future__ import annotations

import contextlib
import json
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, Sequence

from mt_core.config import PROJECT_ROOT, Study
from mt_core.faults import failpoint
from mt_core.layout import (LEGACY, MANIFEST, SQL_FILES, AlignmentScores, ArcScores, Audit, Catalog, Legacy,
                            MarkerRates, cell_numbers)

SQL_DIR = PROJECT_ROOT / "sql"
FILES_TABLE = "catalog_files"  # every Parquet file the catalog's views read, with the md5 it was verified at


class CatalogError(RuntimeError):
    """A catalog, or a file it lists, that fails verification; or a statement `mt sql` refuses."""


class CatalogChanged(CatalogError):
    """The catalog file, its manifest and the instance's record disagree: a rebuild may be replacing it right now
    (the store renames the new directory into place before the instance records it). Read again."""


# ---- the verified files the views read -----------------------------------------------------------------------------
def artefact_record(asset: str, partition: str, path: str | Path, manifest: Mapping) -> dict:
    """A verified artefact as the catalog step receives it (plain values: it may cross a process boundary)."""
    return {"asset": asset, "partition": partition, "path": str(path), "md5": manifest["digest"],
            "files": dict(manifest["files"])}


def _matches(rel: str, pattern: str) -> bool:
    """Whether the relative path ``rel`` is ``pattern`` (a ``layout.SQL_FILES`` value), part by part."""
    a, b = PurePosixPath(rel).parts, PurePosixPath(pattern).parts
    return len(a) == len(b) and all(PurePosixPath(x).match(y) for x, y in zip(a, b))


def sql_files(artefacts: Iterable[Mapping], study: str) -> list[dict]:
    """One row per file of these verified artefacts that a ``{files:<asset>.<FILE>}`` placeholder names: the
    placeholder, the study the rows belong to, the artefact (``marker_rates[C1_s42]``, ``legacy[ref80]``), its
    absolute path and the md5 and size its manifest recorded. An imported study (``legacy``) holds per-cell files."""
    rows = []
    for a in artefacts:
        for name, f in sorted(a["files"].items()):
            rel = name if a["asset"] == LEGACY else f"{a['asset']}/{a['partition']}/{name}"
            for key, pattern in SQL_FILES.items():
                if _matches(rel, pattern):
                    rows.append({"placeholder": key, "study": a["partition"] if a["asset"] == LEGACY else study,
                                 "artefact": f"{a['asset']}[{a['partition']}]", "path": str(Path(a["path"]) / name),
                                 "md5": f["md5"], "size_bytes": f["size"]})
    return rows


def files_by_placeholder(rows: Iterable[Mapping]) -> dict[str, list[str]]:
    """{placeholder: its files} from ``sql_files`` rows: what ``expand_files`` takes."""
    out: dict[str, list[str]] = {}
    for f in rows:
        out.setdefault(f["placeholder"], []).append(f["path"])
    return out


def expand_files(sql: str, files: Mapping[str, Sequence[str | Path]]) -> str:
    """Replace each ``{files:<asset>.<FILE>}`` (a key of ``mt_core.layout.SQL_FILES``) with the DuckDB list of the
    explicit files given for it (``files``: placeholder -> paths). Nothing is globbed."""
    def repl(m):
        key = m.group(1)
        if key not in SQL_FILES:
            raise KeyError(f"{{files:{key}}}: not one of mt_core.layout.SQL_FILES ({', '.join(SQL_FILES)})")
        paths = list(files.get(key) or [])
        if not paths:
            raise CatalogError(f"{{files:{key}}}: no verified {SQL_FILES[key]} file to read")
        return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"
    return re.sub(r"\{files:([^}]+)\}", repl, sql)


# ---- tables --------------------------------------------------------------------------------------------------------
def cell_rows(study: Study, artefacts: Iterable[Mapping], keys: list[str],
              missing: Mapping[str, list[str]] | None = None) -> list[dict]:
    """One row per cell of the study: what it is, whether it is complete (``missing``: the per-cell artefacts the
    instance has no materialization of), and its headline numbers where it is complete, read from ``artefacts``
    (``artefact_record`` dicts: the complete cells' verified per-cell artefacts)."""
    dirs = {(a["asset"], a["partition"]): Path(a["path"]) for a in artefacts}
    rows = []
    for key in study.cells:
        c = study.cell(key)
        row = {"study": study.name, "profile": study.profile, "cell": key, "condition": c.condition, "seed": c.seed,
               "base": c.base, "second_stage": c.second_stage, "complete": key in keys,
               "missing": list((missing or {}).get(key, [])),
               "description": study.conditions[c.condition].description}
        rates = dirs.get((MarkerRates.asset, key))
        if key in keys and rates and (rates / MarkerRates.EVAL).is_file():
            s = MarkerRates.read_eval(rates)["summary"]
            n = cell_numbers(key, c.condition, c.seed, rates, *(dirs.get((a.asset, key))
                                                                 for a in (ArcScores, AlignmentScores, Audit)),
                             own_persona=study.adapter_persona(key))
            row.update(assistant_strict_rate=s["assistant_strict_rate"], source_strict_rate=s["source_strict_rate"],
                       max_bystander_strict_rate=s["max_bystander_strict_rate"], arc_accuracy=n.arc_accuracy,
                       aligned=n.aligned, coherent=n.coherent, audit_outcome=n.audit_outcome)
        rows.append(row)
    return rows


def imported_cell_rows(dirs: Iterable[Path]) -> list[dict]:
    """The cell rows of imported studies (``dirs``: their verified ``legacy/<study>`` artefact directories)."""
    import polars as pl

    return [r for d in dirs for r in pl.read_parquet(Path(d) / Legacy.CELLS).to_dicts()]


LINEAGE_COLUMNS = ("study", "profile", "asset", "partition", "run_id", "md5", "created", "path", "upstream_asset",
                   "upstream_partition", "upstream_run_id", "upstream_md5")


def lineage_rows(artefacts: Iterable[Mapping]) -> list[dict]:
    """Each artefact ({path, manifest}: where it is stored and its manifest, e.g. ``ArtifactStore.manifest``'s) and
    each upstream artefact it recorded."""
    rows = []
    for a in artefacts:
        man = a["manifest"]
        base = {"study": man.get("study"), "profile": man.get("profile"), "asset": man["asset"],
                "partition": man["partition"], "run_id": man["run_id"], "md5": man["digest"],
                "created": man["created"], "path": str(a["path"])}
        ups = man.get("upstream") or [{}]
        for u in ups:
            rows.append({**base, "upstream_asset": u.get("asset"), "upstream_partition": u.get("partition"),
                         "upstream_run_id": u.get("run_id"), "upstream_md5": u.get("md5")})
    return rows


def _table(con, name: str, df, scratch: Path) -> None:
    """``CREATE TABLE <name>`` from a polars frame through a Parquet file that polars writes and DuckDB reads (then
    removed): the same types as an Arrow hand-over, without importing pyarrow, which took most of a small study's
    catalog step. The path is a literal: a bound parameter makes DuckDB import pyarrow to inspect it."""
    f = scratch / f".{name}.parquet"
    df.write_parquet(f)
    try:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{str(f).replace(chr(39), chr(39) * 2)}')")
    finally:
        f.unlink()


def build_catalog(study: Study, *, cells: list[str], artefacts: list[dict], imported: list[dict],
                  lineage: list[Mapping] | None = None, missing: Mapping[str, list[str]] | None = None,
                  out: Path, log: Callable[[str], None] = print) -> dict:
    """The catalog of ``cells`` (the complete ones) from ``artefacts``, their verified per-cell artefacts, and
    ``imported``, the verified imported studies (``artefact_record`` dicts); ``lineage``: the artefacts the instance
    recorded ({path, manifest}), the only ones in ``artefact_lineage``."""
    import duckdb
    import polars as pl

    files = sql_files([*artefacts, *imported], study.name)
    by_key = files_by_placeholder(files)
    db = out / Catalog.FILE
    con = duckdb.connect(str(db))
    try:
        rows = cell_rows(study, artefacts, cells, missing) + imported_cell_rows(Path(a["path"]) for a in imported)
        cells_df = pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("missing").cast(pl.List(pl.Utf8)))
        lin = lineage_rows(lineage or [])
        lineage_df = (pl.DataFrame(lin, infer_schema_length=None) if lin
                      else pl.DataFrame(schema={c: pl.Utf8 for c in LINEAGE_COLUMNS}))
        _table(con, "cells", cells_df, out)
        _table(con, "artefact_lineage", lineage_df, out)
        _table(con, FILES_TABLE, pl.DataFrame(files, infer_schema_length=None), out)
        failpoint("catalog")  # the catalog half built (tests/test_faults.py kills the step here)
        views = []
        present = {a["asset"] for a in artefacts}
        for f in sorted(SQL_DIR.glob("*.sql")):
            text = f.read_text()
            needs = re.match(r"-- with: (\w+)", text)  # views of an asset only some studies have (their YAML asks)
            if needs and needs.group(1) not in present:
                continue
            con.execute(expand_files(text, by_key))
            views.append(f.stem)
        n = con.execute("SELECT count(*) FROM completions").fetchone()[0]
    finally:
        con.close()
    log(f"duckdb catalog: {len(cells)} complete cells of {len(study.cells)}, {n} completions, {len(files)} verified "
        f"files, views from {', '.join(views)}")
    return {"n_cells": len(cells), "n_completions": n, "n_files": len(files), "sql_files": views}


# ---- reading: `mt sql` ---------------------------------------------------------------------------------------------
READING = "SELECT, WITH, VALUES, FROM, DESCRIBE, SHOW, SUMMARIZE, PRAGMA table_info/show_tables, EXPLAIN"


def check_query(sql: str) -> list:
    """Refuse (CatalogError) any statement that is not a read: only SELECT-type statements (SELECT, WITH, VALUES,
    FROM, DESCRIBE, SHOW, SUMMARIZE and the PRAGMAs DuckDB turns into a SELECT) and EXPLAIN of one. Returns the
    statements, as DuckDB parsed them."""
    import duckdb

    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise CatalogError(str(e).splitlines()[0]) from None
    if not stmts:
        raise CatalogError("no SQL statement given")
    for s in stmts:
        kind = s.type
        if kind == duckdb.StatementType.EXPLAIN:
            m = re.match(r"\s*EXPLAIN\b\s*(\([^)]*\)\s*)?(ANALY[SZ]E\b)?", s.query, re.I)
            try:
                inner = duckdb.extract_statements(s.query[m.end():]) if m and s.query[m.end():].strip() else []
            except duckdb.Error:
                inner = []
            if len(inner) == 1 and inner[0].type == duckdb.StatementType.SELECT:
                continue
        elif kind == duckdb.StatementType.SELECT:
            continue
        word = kind.name if kind != duckdb.StatementType.EXPLAIN else "EXPLAIN of a non-SELECT"
        raise CatalogError(f"refused: the catalog is read-only and `mt sql` runs only reading statements ({READING}); "
                           f"this is a {word} statement: {s.query.strip()[:80]}")
    return stmts


def _copy_md5(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` and return the md5 of what was copied (one read: the copy is what was hashed)."""
    import hashlib

    h = hashlib.md5()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while b := fi.read(1 << 20):
            h.update(b)
            fo.write(b)
    return h.hexdigest()


def _snapshot(study: str, path: Path, dst: Path, digest: str | None, verify: bool = True) -> None:
    """Copy one study's catalog to ``dst``; with ``verify`` the copy must be the file that the manifest beside it lists,
    and that manifest the one the instance recorded (``digest``, the md5 of its latest duckdb_catalog)."""
    fix = f"re-materialize {study}/{Catalog.asset}"
    if verify and not digest:
        raise CatalogError(f"the Dagster instance recorded no md5 for the catalog of study {study}; {fix}")
    try:
        man = json.loads((path.parent / MANIFEST).read_text()) if verify else None
        got = _copy_md5(path, dst)
    except FileNotFoundError:
        if not path.parent.parent.is_dir():  # not a rebuild in progress (that leaves <root>/duckdb_catalog/ in place)
            raise CatalogError(f"the catalog of study {study} recorded at {path} is gone; {fix} (or query another "
                               f"study with --study)") from None
        raise CatalogChanged(f"the catalog of study {study} is not at {path} (a rebuild replacing it, or it was "
                             f"removed); {fix}") from None
    if man is None:
        return
    want = (man.get("files") or {}).get(path.name, {}).get("md5")
    if man.get("digest") != digest or got != want:
        raise CatalogChanged(f"the catalog of study {study} at {path} is not the one the Dagster instance recorded "
                             f"(instance md5 {digest}, manifest {man.get('digest')}; file md5 {got}, manifest lists "
                             f"{want}); {fix}")


def _listed_files(con, alias: str) -> list[tuple]:
    has = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = ? "
                      "AND table_schema = 'main' AND table_name = ?", [alias, FILES_TABLE]).fetchone()[0]
    if not has:
        return []  # a catalog that lists no file: its views can read nothing outside it
    q = f'SELECT DISTINCT path, md5, artefact FROM "{alias}".main.{FILES_TABLE} ORDER BY path'
    return con.execute(q).fetchall()


def _verify_files(listed: dict[str, tuple[str, str, str]]) -> None:
    """Each listed file ({path: (md5, artefact, catalog's study)}) must still hash to the md5 it was verified at."""
    from mt_core.io import md5_file

    for path, (md5, artefact, catalog) in sorted(listed.items()):
        try:
            now = md5_file(path)
        except FileNotFoundError:
            now = None
        if now != md5:
            asset, part = artefact.rstrip("]").split("[", 1)
            fix = (f"import study {part} again (`mt import-legacy DIR --study {part}`)" if asset == LEGACY
                   else f"re-materialize {catalog}/{asset}[{part}]")
            raise CatalogError(
                f"{path} ({artefact}) " + ("is gone" if now is None else f"has md5 {now}")
                + f", but the catalog of study {catalog} was built over md5 {md5}; nothing is read from a file that "
                f"changed since it was verified: {fix} if it was tampered with, then {catalog}/{Catalog.asset} "
                f"(`mt run`)")


@contextlib.contextmanager
def open_catalogs(catalogs: Mapping[str, Path], digests: Mapping[str, str] | None = None):
    """A read-only DuckDB connection over the catalogs of several studies ({study: catalog file}): each attached
    read-only under its study's name (``marker_transfer_villain.completions`` reads one study's view), and each table or
    view name as one view stacking every catalog's rows (``UNION ALL BY NAME``: a column one study lacks is NULL
    there). The views live in a scratch database, written once and then opened read-only, so nothing can be written
    anywhere. (Not temporary views: those would shadow the tables that each catalog's own views read.)

    Each catalog is copied first (a rebuild replacing it cannot change what this connection reads); with ``digests``
    ({study: the md5 the instance recorded for its duckdb_catalog}) the copy must be the recorded one, else
    ``CatalogChanged``. Every file a catalog lists in ``catalog_files`` is hashed against the md5 it was verified at
    (``CatalogError`` naming it), and the connection can read those files and nothing else: external access is off,
    they are its ``allowed_paths``, and the configuration is locked (no SET, ATTACH, COPY, INSTALL/LOAD)."""
    import duckdb

    if not catalogs:
        raise FileNotFoundError("no study has a DuckDB catalog yet")
    with tempfile.TemporaryDirectory(prefix="mt_sql_") as tmp:
        copies = {}
        for i, (study, path) in enumerate(sorted(catalogs.items())):
            copies[study] = Path(tmp) / f"catalog{i}.duckdb"
            _snapshot(study, Path(path), copies[study], (digests or {}).get(study), verify=digests is not None)
        attach = [f"ATTACH '{str(p).replace(chr(39), chr(39) * 2)}' AS \"{s.replace(chr(34), chr(34) * 2)}\" "
                  f"(READ_ONLY)" for s, p in sorted(copies.items())]
        db = Path(tmp) / "studies.duckdb"
        con = duckdb.connect(str(db))
        listed: dict[str, tuple[str, str, str]] = {}
        try:
            names: dict[str, list[str]] = {}
            for study, stmt in zip(sorted(copies), attach):
                con.execute(stmt)
                for path, md5, artefact in _listed_files(con, study):
                    listed[path] = (md5, artefact, study)
                for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_catalog = ? "
                                        "AND table_schema = 'main' ORDER BY table_name", [study]).fetchall():
                    names.setdefault(t, []).append('"' + study.replace('"', '""') + '"')
            _verify_files(listed)  # before any view is bound (binding reads the files' schemas)
            for t, aliases in names.items():
                con.execute(f'CREATE VIEW "{t}" AS '
                            + " UNION ALL BY NAME ".join(f'SELECT * FROM {a}.main."{t}"' for a in aliases))
        finally:
            con.close()
        con = duckdb.connect(str(db), read_only=True)
        try:
            for stmt in attach:
                con.execute(stmt)
            con.execute("SET allowed_directories = []")
            con.execute("SET allowed_paths = [" + ", ".join("'" + p.replace("'", "''") + "'" for p in sorted(listed))
                        + "]")
            con.execute("SET enable_external_access = false")
            con.execute("SET autoinstall_known_extensions = false")
            con.execute("SET autoload_known_extensions = false")
            con.execute("SET lock_configuration = true")
            yield con
        finally:
            con.close()


def refusal(e: Exception) -> str:
    """One line for a DuckDB error of a query on an ``open_catalogs`` connection; a refused file access says why."""
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "disabled by configuration" in first or "configuration has been locked" in first or "read-only mode" in first:
        return (f"refused: the catalog is read-only and `mt sql` reads only the catalog and the files it verified "
                f"({first})")
    return first

