"""The servers a cluster deployment talks to, started for real on this machine by the tests and by hand:
a Postgres server for the Dagster instance (``postgres``) and a Ray cluster for GPU steps (``ray``).
Each is a context manager that starts the server in a folder of its own and stops it on exit.

Also what starts and stops a Dagster service (`mt ui`'s `dagster dev`, the daemon and webserver of `mt run`): a
command in a process group of its own (``start_group``), stopped with every process it started (``stop_group``).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the server that binds it next may race another: fine on a test machine)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_group(argv: list[str], *, env: dict, cwd: Path, log: Path | None = None,
                die_with_parent: bool = False) -> subprocess.Popen:
    """``argv`` as the leader of a new session and process group: everything it starts (Dagster's webserver, daemon,
    code servers, run workers) stays in that group, so ``stop_group`` reaches them all and a Ctrl-C meant for the
    caller's terminal does not. Output appended to ``log``, else the caller's. ``die_with_parent`` (Linux): it gets
    SIGTERM when the caller dies, even by SIGKILL, as it would have with the caller's group, which it left."""
    with open(log, "ab") if log else contextlib.nullcontext() as f:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT if f else None,
                                start_new_session=True, preexec_fn=_term_with_parent if die_with_parent else None)


def _term_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: nothing to set
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def group_alive(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (not zombies left to a parent that never reaps them)."""
    if not os.path.isdir("/proc"):  # not Linux: any process of the group, zombies included
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]  # after "(comm)", which may hold spaces
        except OSError:  # gone meanwhile
            continue
        if int(pgrp) == pgid and state not in "ZX":
            alive.append(int(pid))
    return alive


def stop_group(proc: subprocess.Popen, grace_s: float = 3.0, sig: int = signal.SIGTERM, kill_rest: bool = True) -> None:
    """Stop ``proc`` and the processes of its group (``start_group``): ``sig`` to all of them, then SIGKILL to whatever
    is left once ``proc`` has exited, or ``grace_s`` has passed. A Dagster service stops its webserver and daemon before
    it exits; what outlives it is a code server finishing in its own time (up to its 45 s heartbeat) and any run worker
    still winding down. ``kill_rest=False`` leaves those be, if ``proc`` exited within ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(grace_s)
        if not kill_rest:
            return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5  # the kernel takes a moment to end what SIGKILL hit
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
