"""The viewer's data: the studies' catalogs, opened read-only, and the named queries of ``sql/view/``.

The catalogs are opened by ``open_catalogs``, as `mt sql` opens them: each catalog checked against the Dagster
instance's record, every file it lists against the md5 it was verified at, the connection locked to those files and
unable to write any file. Right after that check, what the pages read is copied into memory (``sql/view/snapshot.sql``,
the temporary tables ``v_<name>``), so every page is served from exactly the verified data, without reading Parquet
files on each request. Temporary tables belong to their connection, so requests take turns on the one connection
(each query still uses every core); it is opened again when the instance records another catalog.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

from mt_core.config import PROJECT_ROOT
from mt_core.report.catalog import (CatalogChanged, CatalogError, check_query, expand_files, files_by_placeholder,
                                    open_catalogs)

SQL_DIR = PROJECT_ROOT / "sql" / "view"
SNAPSHOT = "snapshot"  # sql/view/snapshot.sql: one query per temporary table v_<name>
Recorded = Mapping[str, tuple[Path, "str | None"]]  # {study: (its catalog file, the md5 the instance recorded)}


def load_queries(directory: Path = SQL_DIR) -> dict[str, str]:
    """{name: SQL} from ``directory``: a file is one query named by its stem, or, with ``-- name: <n>`` lines, the
    queries ``<stem>.<n>``, each the text before the first such line (shared CTEs) followed by its own part. Every
    query must be a reading statement (CatalogError otherwise)."""
    out = {}
    for f in sorted(directory.glob("*.sql")):
        head, *parts = re.split(r"^-- name: *(\w+) *$", f.read_text(), flags=re.M)
        named = dict(zip(parts[::2], parts[1::2])) if parts else {"": ""}
        for name, body in named.items():
            out[f"{f.stem}.{name}" if name else f.stem] = head + body
    for sql in out.values():
        check_query(sql)  # it parses with its {files:…} placeholders in place
    return out


class _Open:
    """One opening of the catalogs: its connection, with the snapshot in memory."""

    def __init__(self, recorded: Recorded, queries: Mapping[str, str]):
        self.recorded = dict(recorded)
        self.stack = contextlib.ExitStack()
        try:
            self.con = self.stack.enter_context(open_catalogs({s: p for s, (p, _) in recorded.items()},
                                                              {s: md5 for s, (_, md5) in recorded.items()}))
            files = files_by_placeholder({"placeholder": k, "path": p} for k, p in
                                         self.con.execute("SELECT placeholder, path FROM catalog_files").fetchall())
            views = {t for (t,) in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            self.tables: set[str] = set()
            for name, sql in queries.items():
                if name.startswith(SNAPSHOT + "."):
                    needs = re.search(r"^-- with: (\w+)", sql, flags=re.M)  # a view only some studies' catalogs have
                    if needs and needs.group(1) not in views:
                        continue
                    table = "v_" + name.split(".", 1)[1]
                    self.con.execute(f"CREATE TEMPORARY TABLE {table} AS {expand_files(sql, files)}")
                    self.tables.add(table)
        except BaseException:
            self.stack.close()
            raise


class Catalogs:
    """The catalogs ``recorded()`` names ({study: (catalog file, recorded md5)}), open read-only for the viewer.

    ``recorded`` is asked again at most every ``poll_s`` seconds, and the catalogs are opened again when its answer
    changes. A catalog that fails verification makes every request raise its CatalogError until it is fixed."""

    def __init__(self, recorded: Callable[[], Recorded], poll_s: float = 2.0):
        self._recorded, self.poll_s = recorded, poll_s
        self._lock = threading.Lock()
        self._open: _Open | None = None
        self._polled = -float("inf")
        self._queries = load_queries()

    def _current(self) -> _Open:
        cur, now = self._open, time.monotonic()
        if cur is not None and now - self._polled < self.poll_s:
            return cur
        self._polled = now
        rec = self._recorded()
        if cur is not None and rec == cur.recorded:
            return cur
        if cur is not None:  # replaced, or, if the new one fails, no catalogs at all (not the outdated ones)
            cur.stack.close()
            self._open = None
        if not rec:
            raise CatalogError("no DuckDB catalog is recorded in the Dagster instance; run `mt run` (or materialize "
                               "duckdb_catalog) first")
        for _ in range(25):  # a rebuilt catalog is in place a moment before the instance records it
            try:
                self._open = _Open(rec, self._queries)
                return self._open
            except CatalogChanged:
                time.sleep(0.2)
                rec = self._recorded()
        self._open = _Open(rec, self._queries)
        return self._open

    @contextlib.contextmanager
    def session(self) -> Iterator["Session"]:
        """The current catalogs, for one request (the others wait their turn)."""
        with self._lock:
            cur = self._current()
            yield Session(cur.con, self._queries, cur.tables)

    def close(self) -> None:
        with self._lock:
            if self._open is not None:
                self._open.stack.close()
                self._open = None


class Session:
    """Runs the named queries of ``sql/view/``; each gets the parameters its SQL names, and only those."""

    def __init__(self, con, queries: Mapping[str, str], tables: set[str] | None = None):
        self.con, self.queries, self.tables = con, queries, tables or set()

    def has(self, name: str) -> bool:
        """Whether the snapshot has ``v_<name>`` (a table of a view that only some studies' catalogs have)."""
        return f"v_{name}" in self.tables

    def rows(self, name: str, **params) -> list[dict]:
        sql = self.queries[name]
        cur = self.con.execute(sql, {k: params[k] for k in dict.fromkeys(re.findall(r"\$(\w+)", sql))})
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def one(self, name: str, **params) -> dict:
        rows = self.rows(name, **params)
        return rows[0] if rows else {}
