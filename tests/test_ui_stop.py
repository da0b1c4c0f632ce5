"""`mt ui` (what `make ui` runs) stops within 5 s on SIGTERM or SIGINT and leaves none of its processes behind.

`dagster dev` alone (before `mt ui`) left its code servers running after it exited (for 2-3 s on an idle instance, up
to their 45 s heartbeat), waited up to 60 s for a webserver still starting, and behind `make ui` a SIGINT to make's
pid never reached it. The test starts the command on a free port with a fresh DAGSTER_HOME, waits until it answers
HTTP, signals the command's pid only (not its group, as `kill` does), and checks that it has exited within 5 s and that
no process it started (nor any process of their process groups) is left.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mt_services import free_port

ROOT = Path(__file__).resolve().parents[1]
STOP_S = 5.0


def _command(port: int) -> list[str]:
    return [sys.executable, "-m", "mt_cli", "ui", "--port", str(port)]


def _live() -> dict[int, tuple[int, int]]:
    """Every live process (zombies are not): pid -> (parent pid, process group)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                state, ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
            if state not in "ZX":
                out[int(pid)] = (int(ppid), int(pgrp))
    return out


def _started_by(root: int) -> tuple[set[int], set[int]]:
    """The processes under ``root`` (itself included) and their process groups."""
    live, pids, todo = _live(), set(), [root]
    while todo:
        pid = todo.pop()
        pids.add(pid)
        todo += [p for p, (ppid, _) in live.items() if ppid == pid]
    return pids, {live[p][1] for p in pids if p in live}


@pytest.mark.slow  # a dagster dev each (about 13 s): out of `make test-fast`
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_ui_stops_within_5s_and_leaves_no_process(sig, tmp_path):
    home, log, port = tmp_path / "home", tmp_path / "ui.log", free_port()
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_PROFILE="tiny")
    env.pop("MT_STUDY", None)
    with open(log, "w") as fh:  # a session of its own, as a shell job is: only the pid is signalled
        proc = subprocess.Popen(_command(port), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    pids, groups = {proc.pid}, {proc.pid}
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5).close()
                break
            except OSError:  # not up yet
                assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"no answer on port {port}:\n{log.read_text()[-4000:]}"
                time.sleep(0.5)
        pids, groups = _started_by(proc.pid)
        assert len(pids) >= 4, f"webserver, daemon and code servers expected under it: {pids}"

        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_S:.0f} s after {sig.name}:\n{log.read_text()[-4000:]}")
        took = time.monotonic() - t0
        left = {p: g for p, (_, g) in _live().items() if p in pids or g in groups}
        assert not left, f"{sig.name}: exited after {took:.1f} s, leaving processes {left}:\n{log.read_text()[-3000:]}"
    finally:
        for g in groups:  # whatever a failure left
            with contextlib.suppress(ProcessLookupError):
                os.killpg(g, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
