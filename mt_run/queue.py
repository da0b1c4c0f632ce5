"""The services a queued ``mt run`` needs: a Dagster daemon that launches queued runs, and a Dagster webserver whose
GraphQL API (Dagster's public ``DagsterGraphQLClient``) submits them to the instance's run queue with their asset
selection, partition and tags, as the UI's "Materialize" does. Each is the one already serving the instance, or one
started here for the command and stopped after it.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from mt_services import free_port, start_group, stop_group
from mt_settings import PROJECT_ROOT, Settings

LOCATION = "marker_transfer"  # pyproject's code_location_name, as workspace.yaml loads it
REPOSITORY = "__repository__"  # the repository Dagster makes of a Definitions object


def _stop(proc: subprocess.Popen, wait_s: float = 30) -> None:
    # SIGTERM to the service's group; its run workers left to end the runs they were asked to stop
    stop_group(proc, wait_s, kill_rest=False)


def _start(settings: Settings, argv: list[str], log: Path) -> subprocess.Popen:
    return start_group(argv, env=settings.to_env(), cwd=PROJECT_ROOT, log=log)


@contextlib.contextmanager
def daemon(instance, settings: Settings, out: Callable[[str], None] = print, timeout_s: float = 180):
    """A Dagster daemon serving this instance: one already running, or one started here and stopped on exit."""
    if daemon_alive(instance):
        out("daemon: using the one already running for this instance")
        yield None
        return
    log = settings.dagster_home / "mt_daemon.log"
    proc = _start(settings, [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w",
                             str(settings.workspace)], log)
    out(f"daemon: started pid {proc.pid} (log {log})")
    try:
        deadline = time.monotonic() + timeout_s
        while not daemon_alive(instance):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Dagster daemon did not come up (exit {proc.poll()}); see {log}")
            time.sleep(1)
        yield proc
    finally:
        _stop(proc)
        # its last heartbeat stays fresh for a minute: the next `mt run` would take it for a live daemon and queue
        # runs that nobody launches
        instance.wipe_daemon_heartbeats()


def daemon_alive(instance, fresh_s: float = 60) -> bool:
    """A daemon has sent a heartbeat for this instance's run queue in the last ``fresh_s`` seconds."""
    beats = instance.get_daemon_heartbeats()
    now = time.time()
    return any(k == "QUEUED_RUN_COORDINATOR" and now - hb.timestamp < fresh_s for k, hb in beats.items())


class RunQueue:
    """Submits runs of the code location to the instance's run queue through a webserver's GraphQL API (one started
    here on a free local port, stopped on exit)."""

    def __init__(self, settings: Settings, out: Callable[[str], None] = print, timeout_s: float = 240):
        self.settings, self.out, self.timeout_s = settings, out, timeout_s

    def __enter__(self) -> "RunQueue":
        import urllib.request

        from dagster_graphql import DagsterGraphQLClient

        port = free_port()
        log = self.settings.dagster_home / "mt_webserver.log"
        self.proc = _start(self.settings, [str(Path(sys.executable).with_name("dagster-webserver")), "-w",
                                           str(self.settings.workspace), "-h", "127.0.0.1", "-p", str(port)], log)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:  # it serves once its code location is loaded
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5).close()
                break
            except OSError:  # not up yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    _stop(self.proc)
                    raise RuntimeError(f"the Dagster webserver did not come up (exit {self.proc.poll()}); see {log}")
                time.sleep(1)
        self.url = f"http://127.0.0.1:{port}"
        self.client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=120)
        self.out(f"webserver: started pid {self.proc.pid} on 127.0.0.1:{port} to submit runs (log {log})")
        return self

    def __exit__(self, *exc) -> None:
        _stop(self.proc)

    def submit(self, sd, item, tags: dict) -> str:
        """One run of ``item`` (the study's job for its stage, its assets, its partition) with ``tags``; its id."""
        from mt_run.runs import PARTITION_TAG

        tags = {**tags, **({PARTITION_TAG: item.partition} if item.partition else {})}
        return self.client.submit_job_execution(sd.job(item.job), repository_location_name=LOCATION,
                                                repository_name=REPOSITORY, tags=tags,
                                                asset_selection=[sd.key(a) for a in item.assets])

    def cancel(self, run_ids: list[str]) -> None:
        """Ask the runs to stop (a run in progress stops its step; what it staged is discarded)."""
        with contextlib.suppress(Exception):
            if run_ids:
                self.client.terminate_runs(run_ids)
