"""Issue 25, item 5 (friction): `mt sql` with several statements prints every result, not the last one only; `mt run`
sends what the libraries print while a step runs in its process (W&B banners, transformers' FutureWarnings, tqdm
bars) to a log file, so the console shows the progress lines.

No model runs here: `mt sql` reads a one-table DuckDB catalog written through the real store and recorded in a
Dagster instance in a temporary DAGSTER_HOME; the console routing (``mt_run.runner.libraries_to``) and the W&B
settings (``mt_core.model.tracking.wandb_run``) are tested on their own.
"""
from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest

import mt_cli
from mt_core.layout import Catalog
from mt_resources.store import ArtifactStore

ROOT = Path(__file__).resolve().parents[1]
STUDY = "friction_study"


# ---- mt sql: several statements ------------------------------------------------------------------------------------
@pytest.fixture
def catalog(tmp_path, monkeypatch):
    """A DAGSTER_HOME whose instance recorded one study's catalog: a table ``t`` of three rows (i = 0, 1, 2)."""
    import duckdb

    home, art = tmp_path / "home", tmp_path / "art"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    store = ArtifactStore(root=str(art))
    with store.writer(Catalog.asset, None, run_id="friction") as out:
        con = duckdb.connect(str(out / Catalog.FILE))
        con.execute("CREATE TABLE t AS SELECT range AS i FROM range(3)")
        con.close()
    a = store.read(Catalog.asset)
    inst = dg.DagsterInstance.from_config(str(home))
    inst.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=dg.AssetKey([STUDY, Catalog.asset]),
        metadata={"md5": a.digest, "path": dg.MetadataValue.path(str(a.path))}))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MT_ARTIFACTS", str(art))
    for k in ("MT_STUDY", "MT_STUDIES", "MT_DEBUG"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    yield a.path / Catalog.FILE
    inst.dispose()


def mt(capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mt ARGS` in this process."""
    capsys.readouterr()
    code = mt_cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


TWO = "SELECT 1 AS a; SELECT count(*) AS n, max(i) AS m FROM t -- the ';' in 'x;y' is no separator\n"


def test_mt_sql_runs_every_statement(catalog, capsys):
    code, out, err = mt(capsys, "sql", TWO, "--format", "json")
    assert code == 0, err
    assert json.loads(out) == [{"statement": "SELECT 1 AS a", "rows": [{"a": 1}]},
                               {"statement": "SELECT count(*) AS n, max(i) AS m FROM t -- the ';' in 'x;y' is no "
                                             "separator", "rows": [{"n": 3, "m": 2}]}]
    code, out, _ = mt(capsys, "sql", TWO)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "-- statement 1 of 2: SELECT 1 AS a", out
    assert sum(x.startswith("-- statement 2 of 2: SELECT count(*)") for x in lines) == 1, out
    assert out.index("-- statement 2 of 2") > out.index("│ a ") and out.rindex("│ n ") > out.index("-- statement 2")
    code, out, _ = mt(capsys, "sql", TWO, "--format", "csv")
    assert code == 0
    assert out.split("\n\n") == ["-- statement 1 of 2: SELECT 1 AS a\na\n1",
                                 "-- statement 2 of 2: " + " ".join(TWO.split(";", 1)[1].split()) + "\nn,m\n3,2\n"]
    # one statement prints as it always did (no header; json a list of rows)
    code, out, _ = mt(capsys, "sql", "SELECT 'x;y' AS s", "--format", "json")
    assert (code, json.loads(out)) == (0, [{"s": "x;y"}])


@pytest.mark.parametrize("stmts,words", [
    ("SELECT 1; SET enable_external_access = true", ("refused", "read-only")),  # checked before anything runs
    ("SELECT 1; SELECT * FROM read_csv('/etc/passwd')", ("statement 2 of 2", "refused")),  # the connection refuses
    ("SELECT 1; SELECT * FROM no_such_table", ("statement 2 of 2", "no_such_table")),
])
def test_mt_sql_a_bad_statement_of_several_is_one_line_and_no_result(catalog, capsys, stmts, words):
    code, out, err = mt(capsys, "sql", stmts)
    assert code == 2 and out == "", (out, err)
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err


# ---- the quiet console ---------------------------------------------------------------------------------------------
def test_library_output_goes_to_the_log_not_the_console(tmp_path, capsys):
    from tqdm import tqdm

    from mt_run.runner import libraries_to

    hf = logging.getLogger("friction_transformers")  # as transformers' logger: a handler bound to stderr at import
    hf.propagate = False
    hf.addHandler(handler := logging.StreamHandler(sys.stderr))
    before = sys.stdout, sys.stderr, warnings.showwarning
    log_path = tmp_path / "mt.log"
    try:
        with open(log_path, "a", encoding="utf-8") as log, warnings.catch_warnings():
            warnings.simplefilter("always")
            with libraries_to(log):
                print("wandb: Tracking run with wandb version 0.29.0")
                warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
                for _ in tqdm(range(3), desc="Loading weights"):
                    pass
                hf.warning("hf: a library's own logger")
                hf.addHandler(made := logging.StreamHandler(sys.stderr))  # a handler made while it runs
            assert (sys.stdout, sys.stderr, warnings.showwarning) == before
            assert handler.stream is sys.stderr and made.stream is sys.stderr  # on the console again
            hf.removeHandler(made)
            print("cell[C1_s42]: done in 13s")
            hf.warning("hf: after the step")
        console = capsys.readouterr()
    finally:
        hf.removeHandler(handler)
    text = log_path.read_text()
    for noise in ("wandb: Tracking run", "FutureWarning: `is_gradient_checkpointing` is deprecated", "Loading weights",
                  "hf: a library's own logger"):
        assert noise in text, text
        assert noise not in console.out + console.err, console
    assert console.out == "cell[C1_s42]: done in 13s\n" and console.err == "hf: after the step\n", console


def test_wandb_runs_print_nothing_and_leave_the_console_alone(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from mt_core.model.tracking import WandbSettings, wandb_run

    seen = {}

    class Run:
        id, url = "r1", None

        def finish(self, exit_code: int = 0):
            seen["finished"] = exit_code

    def init(**kw):
        seen.update(kw)
        return Run()

    monkeypatch.setattr(wandb, "init", init)
    with wandb_run(WandbSettings(mode="offline", project="p", dir=str(tmp_path)), name="n", group="g", job_type="j",
                   config={}) as run:
        assert run.id == "r1"
    s = seen["settings"]
    assert (s.silent, s.console, seen["finished"]) == (True, "off", 0)
