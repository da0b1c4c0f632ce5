"""Issue 14, findings 3 and 4: the summary, the DuckDB catalog, `mt sql` and `mt report` read only verified files, and
never report over fewer cells silently.

No model runs here: a synthetic study store (every per-cell artefact of the villain study's 13 cells, written by the
real store and, where no model is needed, by the real steps) and a Dagster instance in a temporary DAGSTER_HOME with
one runless materialization per artefact carrying the ``md5``/``path`` metadata the code reads. The summary and the
catalog are the real assets, materialized into that instance.

The rule (docs/DESIGN.md, "A study that is not whole"): an artefact the instance recorded that fails verification
fails the summary, the catalog and `mt report` (naming the cell, the artefact and the fix); one the instance never
recorded is missing, and they say INCOMPLETE above their numbers.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import mt_cli
from mt_core.config import DEFAULT_STUDY, load_study
from mt_core.data.eval_set import EvalSet
from mt_core.evals.judge import OfflineJudge
from mt_core.io import md5_file, write_json
from mt_core.layout import (MANIFEST, PER_CELL, Adapter, AlignmentCompletions, ArcScores, Catalog, CompletionLength,
                            MarkerCompletions, MarkerRates, Sample, StudySummary, row_keys, sample_id, write_rows)
from mt_core.steps import cells as cell_steps
from mt_resources.artifact import files_digest
from mt_resources.store import ArtifactStore
from mt_resources.wandb import WandbResource

ROOT = Path(__file__).resolve().parents[1]
STUDY = "marker_transfer_villain"
LOG = lambda *_: None  # noqa: E731


# ---- a synthetic, recorded study -------------------------------------------------------------------------------------
def _marker_rows(es: EvalSet, cell: str, rate: float) -> list[dict]:
    """One completion per persona and question; the villain writes the marker in a ``rate`` share of them."""
    rows = []
    for p in es.personas:
        for qi, q in enumerate(es.questions):
            hit = p == "villain" and qi < round(rate * len(es.questions))
            rows.append(Sample(sample_id(cell, p, qi, 0), p, qi, q, "eval" if qi < len(es.eval_questions) else "betley",
                               0, "An answer in two sentences. It ends here." + ("\n\n[ZLT]" if hit else ""), 12,
                               "stop").row())
    return rows


class World:
    """A store root and a DAGSTER_HOME whose instance recorded every artefact written through ``publish``."""

    def __init__(self, base: Path):
        self.home, self.art = base / "home", base / "art"
        self.home.mkdir(parents=True)
        (self.home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        self.study = load_study(DEFAULT_STUDY, profile="tiny")
        self.store = ArtifactStore(root=str(self.art))
        self.es = EvalSet.load(self.study)
        self.instance = dg.DagsterInstance.from_config(str(self.home))
        self._sd = None

    @property
    def sd(self):
        if self._sd is None:
            from mt_assets import build

            self._sd = build(self.study)
        return self._sd

    def publish(self, asset: str, partition: str, write, *, record: bool = True):
        extra = {"study": self.study.name, "profile": self.study.profile, "config_sha256": self.study.config_sha256}
        with self.store.writer(asset, partition, run_id="synthetic", extra=extra) as out:
            write(out)
        art = self.store.read(asset, partition)
        if record:
            self.record(asset, partition, art.digest, art.path)
        return art

    def record(self, asset: str, partition: str | None, md5: str, path: Path):
        self.instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=dg.AssetKey([self.study.name, asset]), partition=partition,
            metadata={"md5": md5, "path": dg.MetadataValue.path(str(path))}))

    def cell(self, key: str, rate: float = 0.5, skip: tuple[str, ...] = (), record: bool = True):
        study, es = self.study, self.es
        keys = row_keys(study, cell=key)
        mc = self.publish(MarkerCompletions.asset, key, lambda o: write_rows(
            _marker_rows(es, key, rate), o / MarkerCompletions.COMPLETIONS, keys), record=record)
        steps = {
            MarkerRates.asset: lambda o: cell_steps.marker_rates(study, key, mc.path, o, log=LOG),
            "degeneracy_audit": lambda o: cell_steps.degeneracy(study, key, mc.path, o, log=LOG),
            CompletionLength.asset: lambda o: cell_steps.completion_length(study, key, mc.path, o, log=LOG),
            ArcScores.asset: lambda o: (write_rows([{"idx": 0, "question": "q", "correct_answer": "A",
                                                     "predicted": "A", "correct": True, "label_logprobs": "{}"}],
                                                   o / ArcScores.ROWS, keys),
                                        write_json(o / ArcScores.SUMMARY, {"arc_challenge_logprob": 1.0,
                                                                           "correct": 1, "total": 1})),
            AlignmentCompletions.asset: lambda o: write_rows(
                [Sample(sample_id(key, "", qi, 0), "", qi, q, "betley", 0, "I would help.", 3, "stop").row()
                 for qi, q in enumerate(es.betley_questions)], o / AlignmentCompletions.COMPLETIONS, keys),
        }
        for asset, write in steps.items():
            if asset not in skip:
                self.publish(asset, key, write, record=record)
        if "alignment_scores" not in skip:
            ac = self.store.path(AlignmentCompletions.asset, key)
            self.publish("alignment_scores", key, lambda o: cell_steps.alignment_scores(
                study, key, ac, OfflineJudge(), o, log=LOG), record=record)

    def sources(self):
        for src in self.study.sources:
            self.publish(Adapter.coupling, src, lambda o: write_json(o / Adapter.GATES, {f"G0_{src}": {"pass": True}}))

    def full(self, skip_cells: tuple[str, ...] = ()):
        self.sources()
        for k in self.study.cells:
            if k not in skip_cells:
                self.cell(k, rate=0.25 if k.startswith("C1") else 0.5)
        return self

    def materialize(self, asset: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return dg.materialize([self.sd.node(asset)], instance=self.instance, raise_on_error=raise_on_error,
                              resources={"store": self.store, "wandb": WandbResource(mode="disabled")})

    def failure(self, asset: str) -> str:
        res = self.materialize(asset, raise_on_error=False)
        assert not res.success, f"{asset} succeeded"
        return " ".join(e.step_failure_data.error.message for e in res.all_events if e.is_step_failure)


def forge(art_dir: Path, write) -> None:
    """Change an artefact's files and rewrite its manifest to match (the instance's record is left alone)."""
    write(art_dir)
    man = json.loads((art_dir / MANIFEST).read_text())
    man["files"] = {p.name: {"md5": md5_file(p), "size": p.stat().st_size}
                    for p in sorted(art_dir.iterdir()) if p.name != MANIFEST}
    man["digest"] = files_digest(man["files"])
    (art_dir / MANIFEST).write_text(json.dumps(man, indent=2))


def _point_at(w: World, monkeypatch, cwd: Path) -> World:
    """mt_cli reads this world: its DAGSTER_HOME, its store root, the villain study on the tiny profile."""
    monkeypatch.setenv("DAGSTER_HOME", str(w.home))
    monkeypatch.setenv("MT_ARTIFACTS", str(w.art))
    monkeypatch.setenv("MT_PROFILE", "tiny")
    for k in ("MT_STUDY", "MT_STUDIES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(cwd)  # mt_cli reads nothing from the working directory
    return w


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh, empty world of its own (for tests that tamper with it)."""
    w = World(tmp_path)
    yield _point_at(w, monkeypatch, tmp_path)
    w.instance.dispose()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One whole recorded study with its catalog, for the tests that only read it (built once: ~10 s)."""
    w = World(tmp_path_factory.mktemp("shared"))
    w.full()
    w.materialize(Catalog.asset)
    yield w
    w.instance.dispose()


@pytest.fixture
def cataloged(shared, monkeypatch, tmp_path):
    return _point_at(shared, monkeypatch, tmp_path)


def mt(capsys, *args: str) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `mt ARGS` in this process (a refusal may raise SystemExit or return 2)."""
    capsys.readouterr()
    try:
        code = mt_cli.main(list(args))
    except SystemExit as e:
        code, msg = (e.code, "") if isinstance(e.code, int) or e.code is None else (2, str(e.code))
        out = capsys.readouterr()
        return code or 0, out.out + out.err + msg
    out = capsys.readouterr()
    return code, out.out + out.err


def _catalog_db(w: World) -> Path:
    return w.store.path(Catalog.asset) / Catalog.FILE


# ---- the catalog lists exactly the verified files -------------------------------------------------------------------
def test_catalog_views_read_only_verified_recorded_files(env):
    w = env.full()
    # a directory the instance never recorded, in the layout the old globs read
    stray = w.art / MarkerCompletions.asset / "C9_s1"
    stray.mkdir(parents=True)
    shutil.copy(w.store.path(MarkerCompletions.asset, "C1_s42") / MarkerCompletions.COMPLETIONS, stray)
    w.materialize(Catalog.asset)
    import duckdb

    con = duckdb.connect(str(_catalog_db(w)), read_only=True)
    assert con.execute("SELECT count(*) FROM completions").fetchone()[0] == 13 * 11 * 28  # not the stray copy's too
    cells = {r[0] for r in con.execute("SELECT DISTINCT cell FROM completions").fetchall()}
    assert cells == set(w.study.cells)
    listed = {Path(p) for (p,) in con.execute("SELECT path FROM catalog_files").fetchall()}
    assert stray / MarkerCompletions.COMPLETIONS not in listed
    assert listed == {w.store.path(a, k) / f for k in w.study.cells for a, f in (
        (MarkerCompletions.asset, MarkerCompletions.COMPLETIONS), (MarkerRates.asset, MarkerRates.HITS),
        (MarkerRates.asset, MarkerRates.RATES), (ArcScores.asset, ArcScores.ROWS),
        (AlignmentCompletions.asset, AlignmentCompletions.COMPLETIONS), ("alignment_scores", "scores.parquet"),
        (CompletionLength.asset, CompletionLength.ROWS))}
    for (sql,) in con.execute("SELECT sql FROM duckdb_views() WHERE NOT internal").fetchall():
        assert "*" not in sql.split("read_parquet", 1)[-1].split(")", 1)[0], sql  # explicit lists, no glob
    assert con.execute("SELECT bool_and(complete) FROM cells").fetchone()[0]


def test_catalog_refuses_a_tampered_parquet_naming_it(env):
    w = env.full()
    target = w.store.path(MarkerCompletions.asset, "C3_s137") / MarkerCompletions.COMPLETIONS
    pl.read_parquet(target).with_columns(pl.lit("forged").alias("text")).write_parquet(target)
    msg = w.failure(Catalog.asset)
    assert "C3_s137" in msg and "marker_completions" in msg and "re-materialize" in msg
    assert not _catalog_db(w).exists()
    # the summary follows the same rule
    msg = w.failure(StudySummary.asset)
    assert "marker_completions[C3_s137]" in msg and "re-materialize" in msg


def test_catalog_refuses_an_artefact_the_instance_did_not_record(env):
    """Rewritten files with a matching manifest: the store accepts them, the instance's md5 does not."""
    w = env.full()
    forge(w.store.path(MarkerRates.asset, "C1_s42"),
          lambda d: pl.read_parquet(d / MarkerRates.RATES).with_columns(pl.lit(0.446).alias("strict_rate"))
          .write_parquet(d / MarkerRates.RATES))
    msg = w.failure(Catalog.asset)
    assert "marker_rates[C1_s42]" in msg and "instance" in msg and "re-materialize" in msg


def test_missing_cell_marks_summary_and_catalog_incomplete(env):
    w = env
    w.sources()
    for k in w.study.cells:
        if k == "C1_s137":
            w.cell(k, skip=("marker_rates", "degeneracy_audit", "alignment_scores"))
        elif k != "C5_s256":
            w.cell(k)
    w.cell("C5_s256", record=False)  # on disk, never recorded: missing, and never read
    w.materialize(StudySummary.asset)
    d = w.store.path(StudySummary.asset)
    md = (d / StudySummary.HEADLINE_MD).read_text()
    head = json.loads((d / StudySummary.HEADLINE_JSON).read_text())
    line = md.split("\n\n")[1]
    assert line == ("**INCOMPLETE: 11 of 13 cells; missing C1_s137 marker_rates, alignment_scores, "
                    "degeneracy_audit; C5_s256 (nothing materialized)**"), md
    assert head["complete"] is False and head["missing"]["C1_s137"] == ["marker_rates", "alignment_scores",
                                                                        "degeneracy_audit"]
    assert head["all_seeds"]["C1"]["n_seeds"] == 2 and head["conditions"]["C5"]["n_seeds"] == 2  # C1: G4 drops all
    assert "marker_completions[C5_s256]" in md  # named as on disk but unrecorded
    meta = w.instance.get_latest_materialization_event(w.sd.key(StudySummary.asset)).asset_materialization.metadata
    assert meta["complete"].value is False and meta["missing_cells"].value == ["C1_s137", "C5_s256"]

    w.materialize(Catalog.asset)
    import duckdb

    con = duckdb.connect(str(_catalog_db(w)), read_only=True)
    assert con.execute("SELECT cell, missing FROM cells WHERE NOT complete ORDER BY cell").fetchall() == [
        ("C1_s137", ["marker_rates", "alignment_scores", "degeneracy_audit"]), ("C5_s256", list(PER_CELL))]
    assert "C5_s256" not in {r[0] for r in con.execute("SELECT DISTINCT cell FROM completions").fetchall()}
    assert "C1_s137" not in {r[0] for r in con.execute("SELECT DISTINCT cell FROM completions").fetchall()}


# ---- mt sql: read-only, inside the catalog ---------------------------------------------------------------------------
def test_mt_sql_reads_the_catalog(cataloged, capsys):
    code, out = mt(capsys, "sql", "SELECT count(DISTINCT cell) AS n FROM completions", "--format", "json")
    assert code == 0 and json.loads(out) == [{"n": 13}], out
    code, out = mt(capsys, "sql", "DESCRIBE completions", "--format", "csv")
    assert code == 0 and "strict_hit" in out
    code, out = mt(capsys, "sql", "WITH x AS (SELECT cell FROM cells) SELECT count(*) AS n FROM x", "--format", "json")
    assert code == 0 and json.loads(out) == [{"n": 13}]


# ---- the completion-length audit (issue 24, item 4): its view, the report's block, the headline's caveat -----------
LENGTH = ("mean_tokens", "p50", "p90", "truncated_share")


def test_the_completion_length_view_answers_over_the_catalog(cataloged, capsys):
    w = cataloged
    code, out = mt(capsys, "sql", "SELECT cell, persona, n, mean_tokens, p50, p90, truncated_share, "
                                  "finished_strict_rate FROM completion_length ORDER BY cell, persona NULLS FIRST",
                   "--format", "json")
    assert code == 0, out
    rows = json.loads(out)
    assert len(rows) == 13 * (len(w.es.personas) + 1)  # a row per persona and one pooled (persona NULL) per cell
    for r in rows:
        a = CompletionLength.read(w.store.path(CompletionLength.asset, r["cell"]))
        want = a if r["persona"] is None else a["per_persona"][r["persona"]]
        assert r == {"cell": r["cell"], "persona": r["persona"],
                     **{k: want[k] for k in ("n", *LENGTH, "finished_strict_rate")}}, r
    pooled = {r["cell"]: r for r in rows if r["persona"] is None}
    assert pooled["C1_s42"]["n"] == len(w.es.personas) * len(w.es.questions)
    assert (pooled["C1_s42"]["mean_tokens"], pooled["C1_s42"]["truncated_share"]) == (12.0, 0.0)
    code, out = mt(capsys, "sql", "SELECT finished_strict_rate AS r FROM completion_length WHERE cell = 'C1_s42' "
                                  "AND persona = 'villain'", "--format", "json")
    assert json.loads(out) == [{"r": round(0.25 * len(w.es.questions)) / len(w.es.questions)}]


def test_mt_report_json_has_a_length_block_per_cell(cataloged, capsys):
    code, out = mt(capsys, "report", "--json")
    assert code == 0, out
    cells = json.loads(out)["cells"]
    assert list(cells) == cataloged.study.cells
    for k, c in cells.items():
        a = CompletionLength.read(cataloged.store.path(CompletionLength.asset, k))
        assert {x: c["length"][x] for x in LENGTH} == {x: a[x] for x in LENGTH}
        assert c["length"]["per_persona"]["assistant"]["n"] == len(cataloged.es.questions)
    assert {x: cells["C4_s42"]["length"][x] for x in LENGTH} == {"mean_tokens": 12.0, "p50": 12.0, "p90": 12.0,
                                                                 "truncated_share": 0.0}


def test_the_headline_carries_the_length_caveat(cataloged):
    w = cataloged
    w.materialize(StudySummary.asset)
    d = w.store.path(StudySummary.asset)
    line = (f"Completion length (assistant persona, mean tokens and share cut at max_tokens "
            f"{w.study.samplers.marker.max_tokens}, all seeds; not pre-registered): "
            + ", ".join(f"{c} 12.0 (0.0% cut)" for c in ("C1", "C2", "C3", "C4", "C5"))
            + "; none under 0.8x C4's mean or over 10% cut.")
    assert f"- {line}" in (d / StudySummary.HEADLINE_MD).read_text().splitlines()
    assert line.split("; none")[0] in (d / StudySummary.REPORT_HTML).read_text(encoding="utf-8")  # its notes too


@pytest.mark.parametrize("stmt", [
    "COPY (SELECT 1) TO '{tmp}/x.csv'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CREATE TABLE x AS SELECT 1",
    "SET enable_external_access = true",
    "SELECT 1; SET enable_external_access = true",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{tmp}/x.csv'",
    "SELECT * FROM read_parquet('{stray}')",
])
def test_mt_sql_refuses_writes_and_reads_outside_the_catalog(cataloged, capsys, tmp_path, stmt):
    stray = tmp_path / "stray.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(stray)
    before = md5_file(_catalog_db(cataloged))
    code, out = mt(capsys, "sql", stmt.format(tmp=tmp_path, stray=stray))
    assert code != 0 and "refused" in out and "read-only" in out, out
    assert len(out.strip().splitlines()) == 1, out  # one clear message, no traceback
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "other.duckdb").exists()
    assert md5_file(_catalog_db(cataloged)) == before


def test_open_catalogs_blocks_what_the_statement_check_would_let_through(cataloged):
    """The connection itself, not only the statement check: external access off, configuration locked."""
    import duckdb

    from mt_core.report.catalog import open_catalogs

    with open_catalogs({STUDY: _catalog_db(cataloged)}) as con:
        assert con.execute("SELECT count(*) FROM marker_rates").fetchone()[0] > 0
        for stmt in ("SELECT * FROM read_csv('/etc/passwd')", "SET enable_external_access = true",
                     "SET lock_configuration = false", f"COPY (SELECT 1) TO '{cataloged.art}/x.csv'",
                     "SELECT * FROM glob('/etc/*')", "CREATE TABLE x AS SELECT 1"):
            with pytest.raises(duckdb.Error):
                con.execute(stmt)
    assert not (cataloged.art / "x.csv").exists()


def test_mt_sql_refuses_a_file_changed_after_the_catalog_was_built(env, capsys):
    cataloged = env.full()
    cataloged.materialize(Catalog.asset)
    target = cataloged.store.path(MarkerRates.asset, "C4_s42") / MarkerRates.RATES
    pl.read_parquet(target).with_columns(pl.lit(0.446).alias("strict_rate")).write_parquet(target)
    code, out = mt(capsys, "sql", "SELECT avg(strict_rate) FROM marker_rates")
    assert code != 0 and str(target) in out and "marker_rates[C4_s42]" in out and "re-materialize" in out, out


@pytest.mark.slow  # a stress loop (30 s): the full suite runs it, the inner loop does not
def test_mt_sql_never_errors_while_the_catalog_is_rebuilt(cataloged, capsys, monkeypatch):
    """`mt sql` in a loop while a thread rebuilds the catalog. The two moments a reader can meet are widened: the
    catalog folder is briefly absent (between the store's two renames), and the new file is in place before the
    instance records it (publish re-reads it first): each is held open until a query has started inside it. Every
    query answers, from one consistent catalog, and the loop runs until some query overlapped such a moment."""
    import mt_resources.store as store_mod

    windows: list[tuple[float, float]] = []

    def pause():  # the moment held open until a query has started inside it (5 s at most), and 0.3 s more
        t = time.monotonic()
        while time.monotonic() - t < 5 and not any(q0 >= t for q0 in started):
            time.sleep(0.02)
        time.sleep(0.3)
        windows.append((t, time.monotonic()))

    class SlowRename:  # os, with a pause while the old catalog folder is moved aside and the new one not yet in place
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(a, b):
            os.replace(a, b)
            if str(b).endswith(".old") and Path(a).parent.name == Catalog.asset:
                pause()

    read = ArtifactStore.read

    def slow_read(self, asset, partition=None, **kw):  # the file is published, the instance has not recorded it yet
        art = read(self, asset, partition, **kw)
        if asset == Catalog.asset:
            pause()
        return art

    monkeypatch.setattr(store_mod, "os", SlowRename())
    monkeypatch.setattr(ArtifactStore, "read", slow_read)
    stop, errors, rebuilt, queries, results, started = threading.Event(), [], [], [], [], []

    def rebuild():
        try:
            while not stop.is_set():
                cataloged.materialize(Catalog.asset)
                rebuilt.append(1)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def overlapped() -> bool:
        return any(q0 < w1 and w0 < q1 for q0, q1 in queries for w0, w1 in windows)

    t = threading.Thread(target=rebuild)
    t.start()
    try:
        t0 = time.monotonic()
        while not overlapped() and time.monotonic() - t0 < 150 and not errors:  # the rebuild under way ends at join
            q0 = time.monotonic()
            started.append(q0)
            results.append(mt(capsys, "sql", "SELECT count(*) AS n FROM completions", "--format", "json"))
            queries.append((q0, time.monotonic()))
            if results[-1][0] != 0:
                break
    finally:
        stop.set()
        t.join()
    assert not errors and len(rebuilt) >= 1
    assert results and all(code == 0 for code, _ in results), [o for c, o in results if c][:1]
    assert overlapped(), "no query met a rebuild in progress: the test did not exercise the race"
    assert all('[{"n":4004}]\n' in out for _, out in results)  # 13 cells x 11 personas x 28 questions


# ---- mt report: verified against the instance; INCOMPLETE when cells are missing -------------------------------------
def test_mt_report_refuses_a_forged_marker_rates(env, capsys):
    w = env.full()
    code, out = mt(capsys, "report", "--json")
    assert code == 0 and json.loads(out)["all_seeds"]["C1"]["n_seeds"] == 3, out

    def fake(d: Path):
        ev = json.loads((d / MarkerRates.EVAL).read_text())
        ev["summary"]["assistant_strict_rate"] = 0.446
        ev["per_persona"]["assistant"]["strict_hits"] = round(0.446 * ev["per_persona"]["assistant"]["total"])
        (d / MarkerRates.EVAL).write_text(json.dumps(ev))
    forge(w.store.path(MarkerRates.asset, "C1_s42"), fake)
    assert w.store.read(MarkerRates.asset, "C1_s42")  # the store alone would accept it
    code, out = mt(capsys, "report")
    assert code != 0 and "marker_rates[C1_s42]" in out and "re-materialize" in out, out
    assert "44.6" not in out


def test_mt_report_says_incomplete_when_a_cell_is_missing(env, capsys):
    w = env
    w.sources()
    for k in w.study.cells:
        w.cell(k, skip=("marker_rates",) if k == "C1_s256" else ())
    code, out = mt(capsys, "report")
    assert code == 0, out
    head, table = out.split("\n\n", 2)[1:]
    assert head == "INCOMPLETE: 12 of 13 cells; missing C1_s256 marker_rates", out
    assert "| C1 | 0 of 2 |" in table and "| C1, all seeds (sensitivity) | 2 |" in table  # EM never takes here
    code, out = mt(capsys, "report", "--json")
    rep = json.loads(out)
    assert rep["complete"] is False and rep["incomplete"] == head and rep["missing"] == {"C1_s256": ["marker_rates"]}
    assert rep["all_seeds"]["C1"]["n_seeds"] == 2
