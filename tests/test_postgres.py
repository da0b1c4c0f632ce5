"""The Dagster instance on a real Postgres server (dagster.postgres.yaml): `mt run` records its runs and
materializations there, through the daemon's queue with the gpu pool and run monitoring on; `mt status` and the
webserver read them back from it. Skips where the PostgreSQL server binaries are missing (`make services` installs
Debian's)."""
import contextlib
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
import zygote
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from mt_services import start_group, stop_group
from mt_services.postgres import PostgresUnavailable, find_bindir, free_port, postgres_server
from test_run import STUDY, _mt, _setup

ROOT = Path(__file__).resolve().parents[1]
CELLS = ["C4_s42", "C5_s42"]  # two cheap cells, so two runs share the gpu pool of 2


def test_the_postgres_variant_is_dagster_yaml_plus_storage():
    pg, lite = (yaml.safe_load((ROOT / f).read_text()) for f in ("dagster.postgres.yaml", "dagster.yaml"))
    assert pg.pop("storage") == {"postgres": {"postgres_url": {"env": "MT_PG_URL"}}}
    assert pg == lite and "storage" not in lite  # SQLite stays the default


@pytest.fixture
def pg():
    try:
        find_bindir()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    # not tmp_path: as root the server runs as the OS user postgres, which cannot enter pytest's 0700 folders
    folder = Path(tempfile.mkdtemp(prefix="mt_pg_"))
    try:
        with postgres_server(folder) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _gql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", json.dumps({"query": query}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["data"]


def _webserver_run_ids(env: dict, port: int, log: Path) -> set[str]:
    proc = start_group([str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml",
                        "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=ROOT, log=log)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"dagster-webserver exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                runs = _gql(port, "{ runsOrError { ... on Runs { results { runId status } } } }")
                break
            except OSError:  # not listening yet
                assert time.monotonic() < deadline, f"dagster-webserver did not answer:\n{log.read_text()[-4000:]}"
                time.sleep(1)
        results = runs["runsOrError"]["results"]
        assert {r["status"] for r in results} == {"SUCCESS"}
        return {r["runId"] for r in results}
    finally:
        stop_group(proc, grace_s=30)


@pytest.mark.slow
def test_a_study_on_postgres(gpu_locks, pg, tmp_path, monkeypatch):
    # 2 runs on 2 cores; each run's heavy steps in Pipes children (forked by the tests' zygote: MT_CHILD_PREFIX), so a
    # run worker the daemon starts imports Dagster and the code location, not the model stack
    _, home, env = _setup(tmp_path, MT_PG_URL=pg.dagster_url, MT_GPU_COUNT="2", MT_THREADS="1", MT_COMPUTE="pipes")
    shutil.copyfile(ROOT / "dagster.postgres.yaml", home / "dagster.yaml")
    monkeypatch.setenv("MT_PG_URL", pg.dagster_url)  # for DagsterInstance.from_config in this process
    # `mt run` sets every pool before the runs start: Dagster 1.13 writes a pool's default limit at a step's first
    # claim, and two runs doing that at once collide on Postgres (one step fails)
    # queued: the daemon launches the runs from Postgres's run queue, two cells at once through the gpu pool
    out = _mt(env, "--gpus", "2", "--launch", "queued", cells=",".join(CELLS))
    assert "launch: queued, up to 2 runs at once" in out

    with contextlib.closing(psycopg2.connect(pg.url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, pipeline_name, partition, status FROM runs")
        runs = cur.fetchall()
        cur.execute("SELECT asset_key, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        mats = {(tuple(json.loads(k)), p) for k, p in cur.fetchall()}
        cur.execute("SELECT concurrency_key, \"limit\" FROM concurrency_limits")
        pools = dict(cur.fetchall())
        cur.execute("SELECT daemon_type FROM daemon_heartbeats")
        daemons = {d for (d,) in cur.fetchall()}
    assert {s for *_, s in runs} == {"SUCCESS"}
    assert sorted((j.removeprefix(f"{STUDY}__"), p) for _, j, p, _ in runs) == sorted(
        [("inputs_job", None), ("coupling_job", "villain"), ("analysis_job", None)]
        + [("cell_job", c) for c in CELLS])
    assert {((STUDY, "cell_adapter"), c) for c in CELLS} | {((STUDY, "study_summary"), None)} <= mats
    assert pools == {"gpu": 2, "judge": 1}
    # the daemon `mt run` started and stopped left no heartbeat (the next `mt run` would take it for a live one)
    assert daemons == set()
    # the daemon's queue, run monitoring (dagster.yaml run_monitoring) and the event log consumer that does run_retries
    # all ran against this instance: their own log lines say so (their heartbeats went with them)
    log = (home / "mt_daemon.log").read_text()
    assert "QueuedRunCoordinatorDaemon - " in log and "Launched " in log
    assert "MonitoringDaemon - " in log and "Checking run " in log
    assert "EventLogConsumerDaemon" in log
    assert not (home / "history").exists()  # nothing went to SQLite

    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert isinstance(inst.run_storage, PostgresRunStorage)
        assert isinstance(inst.event_log_storage, PostgresEventLogStorage)
        assert {r.run_id for r in inst.get_runs()} == {r for r, *_ in runs}

    st = zygote.run(["status"], cwd=ROOT, env=env, timeout=300)
    assert st.returncode == 0, st.stdout[-3000:] + st.stderr[-3000:]
    line = next(x for x in st.stdout.splitlines() if x.split()[:1] == ["cell_adapter"])
    assert line.split()[1].startswith(f"{len(CELLS)}/") and not any(c in line for c in CELLS), line

    assert _webserver_run_ids(env, free_port(), tmp_path / "webserver.log") == {r for r, *_ in runs}
