"""`mt sql` and `mt view`: the DuckDB catalogs the instance recorded, read-only."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from mt_cli.session import current_study, instance, settings_of


def store_root(settings, artifacts: str | None = None) -> Path | str:
    """The current study's artefact root: ``--artifacts`` if given, else ``mt_core.layout.artefact_root``; an object
    store URL stays a string."""
    from mt_core.layout import artefact_root
    from mt_resources.store import is_url

    if artifacts:
        return artifacts if is_url(artifacts) else Path(artifacts).resolve()
    return artefact_root(current_study(settings), settings.artifacts)


def cmd_sql(args) -> int:
    """Read-only SQL over the catalogs the instance recorded: a statement that is not a read is refused before
    anything is opened; each catalog is checked against the instance's record (retried while a rebuild replaces it)
    and every file it lists against the md5 it was verified at; the connection reads nothing else. Several statements
    (``SELECT 1; SELECT 2``, split by DuckDB's own parser) each run and print their result, under a header line per
    statement (``--format json``: a list with one ``{"statement", "rows"}`` per statement); one statement prints as
    it always did."""
    import duckdb

    from mt_core.report.catalog import CatalogChanged, CatalogError, check_query, open_catalogs, refusal
    from mt_resources.catalogs import study_catalogs

    s = settings_of(args)
    try:
        stmts = check_query(args.query)  # every statement of the list, each a read, as DuckDB parsed it
    except CatalogError as e:
        raise SystemExit(f"mt sql: {e}") from None
    only = current_study(s).name if args.study else None
    at = store_root(s, args.artifacts) if args.artifacts else None
    if at is not None:
        from mt_core.layout import Catalog, artefact_dir
        from mt_resources.store import is_url

        where = f"under {at}" if is_url(at) else f"at {artefact_dir(at, Catalog.asset) / Catalog.FILE}"
    results, last = [], None
    with instance(s) as inst:
        for _ in range(50):  # a rebuilt catalog is in place a moment before the instance records it
            try:
                recorded = {k: c for k, c in study_catalogs(inst, s.cache, at).items() if only is None or k == only}
            except CatalogError as e:
                raise SystemExit(f"mt sql: {e}") from None
            if not recorded:
                what = where if at else f"of study {only}" if only else "of any study"
                raise SystemExit(f"mt sql: no DuckDB catalog {what} is recorded in the Dagster instance "
                                 f"{s.dagster_home}; run `make demo` (or materialize duckdb_catalog) first")
            try:
                with open_catalogs({k: p for k, (p, _) in recorded.items()},
                                   {k: md5 for k, (_, md5) in recorded.items()}) as con:
                    results = []  # all or nothing: a statement that fails prints no result of the others
                    for n, stmt in enumerate(stmts, 1):
                        try:
                            rel = con.sql(stmt)
                            results.append((stmt, rel.pl() if rel is not None else None))
                        except duckdb.Error as e:
                            which = f"statement {n} of {len(stmts)}: " if len(stmts) > 1 else ""
                            raise SystemExit(f"mt sql: {which}{refusal(e)}") from None
                break
            except CatalogChanged as e:
                last = e
                time.sleep(0.2)
            except CatalogError as e:
                raise SystemExit(f"mt sql: {e}") from None
        else:
            raise SystemExit(f"mt sql: {last}")
    if len(results) == 1:
        _print_result(results[0][1], args)
    elif args.format == "json":
        import json

        sys.stdout.write(json.dumps([{"statement": _one_line(st.query), "rows": None if df is None else
                                      json.loads(df.write_json())} for st, df in results]) + "\n")
    else:
        for n, (st, df) in enumerate(results, 1):
            print(("\n" if n > 1 else "") + f"-- statement {n} of {len(results)}: {_one_line(st.query)}", flush=True)
            _print_result(df, args)
    return 0


def _one_line(sql: str, width: int = 120) -> str:
    """A statement's text on one line (whitespace collapsed), cut to ``width`` characters."""
    text = " ".join(sql.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _print_result(df, args) -> None:
    """One statement's result on stdout in ``args.format`` (a statement with no result prints nothing)."""
    if df is None:
        return
    if args.format == "csv":
        sys.stdout.write(df.write_csv())
    elif args.format == "json":
        sys.stdout.write(df.write_json() + "\n")
    else:
        import polars as pl

        with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
            print(df)
    sys.stdout.flush()


def cmd_view(args) -> int:
    """The study viewer (mt_view) on the catalogs the instance recorded, opened as `mt sql` opens them (read-only,
    checked against the instance and the files' md5s), until Ctrl-C. It reopens them when the instance records a
    new catalog, so it can stay up while a study runs."""
    import uvicorn

    from mt_core.config import load_study
    from mt_core.report.catalog import CatalogError
    from mt_resources.catalogs import study_catalogs
    from mt_view.app import create_app
    from mt_view.db import Catalogs

    s = settings_of(args)
    current = current_study(s)
    studies = [current, *(x for x in (load_study(p, s.profile) for p in s.studies) if x.name != current.name)]
    only = current.name if args.study else None
    with instance(s) as inst:
        catalogs = Catalogs(lambda: {k: c for k, c in study_catalogs(inst, s.cache).items() if only in (None, k)})
        try:
            with catalogs.session():  # a missing or failing catalog is one message now, not an error page later
                pass
        except CatalogError as e:
            raise SystemExit(f"mt view: {e}" + (f" (study {only})" if only else "")) from None
        local = ("127.0.0.1", "localhost", "::1")
        if args.host not in local:
            print(f"mt view: serving on {args.host}: anyone who can reach it can read the study", file=sys.stderr)
        where = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
        print(f"mt view: http://{where}:{args.port}/  (Ctrl-C stops)", flush=True)
        app = create_app(catalogs, studies, hosts=[*local, "[::1]"] if args.host in local else ["*"])
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
