"""Workers that stay (``MT_COMPUTE=worker``): the step's side.

A heavy step asks for the worker of its device (``worker_for``): one ``python -m mt_worker serve`` process per leased
GPU (or for the CPU) and per settings, started on first use and then kept, so the base model it holds and its set-up
are paid once per study rather than once per step. The step opens a Dagster Pipes session as for a fresh process and
hands the worker its bootstrap parameters over a Unix socket; the worker runs the step, its logs and metadata arrive
through Pipes, and the reply says it ended.

* One step at a time per worker: the step holds ``<workers folder>/<key>.lock`` from its health check to its
  reply (runs sharing the CPU queue here; on a GPU the lease already serialises them).
* Health check: before each step the worker must answer a ping within ``PING_S``; one that does not (wedged) is
  killed and replaced, as is one that is gone.
* A worker that dies during a step (killed, crashed, out of memory) fails that step only: nothing is published (the
  store discards the staging folder of a failed step) and the next step starts a new worker. An interrupted step
  kills its worker the same way, so no step keeps running for a run that stopped.
* The key is a hash of what the worker's results depend on and what it inherited: the Python, the project, the
  Dagster home, ``CUDA_VISIBLE_DEVICES`` and every project setting of the environment (``MT_*``, ``HF_*``, ``WANDB_*``
  ...); other settings get another worker. Its log is ``<workers folder>/<key>.log`` (the folder: ``<dagster home>/workers``).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from mt_settings import FORWARD, PROJECT_ROOT, inherited_env

PING_S = 30.0  # a healthy worker answers at once: it serves one request at a time and we hold its lock
START_S = 300.0  # imports and the socket: seconds on a CPU, longer on a cold GPU host


class WorkerDied(RuntimeError):
    """The worker ended during a step (killed, crashed): the step failed and published nothing."""


def worker_key(env: dict[str, str], folder: Path) -> str:
    ident = {"python": sys.executable, "project": str(PROJECT_ROOT), "folder": str(folder),
             "devices": env.get("CUDA_VISIBLE_DEVICES"),
             "env": sorted((k, v) for k, v in env.items() if FORWARD.match(k))}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _ask(address: str, req: dict, timeout: float | None) -> dict | None:
    """One request, its reply; None when nobody answers (no socket, refused, closed without a reply)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(address)
            with s.makefile("rwb") as f:
                f.write((json.dumps(req) + "\n").encode())
                f.flush()
                line = f.readline()
    except (OSError, ValueError):
        return None
    return json.loads(line) if line else None


_started: dict[int, subprocess.Popen] = {}  # the workers this process started (a dead one is a zombie until polled)


def _alive(pid: int | None) -> bool:
    from mt_resources.store import pid_alive

    if pid in _started:
        return _started[pid].poll() is None
    return bool(pid) and pid_alive(pid)


def _kill(pid: int | None) -> None:
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _address(key: str) -> str:
    return str(Path(tempfile.gettempdir()) / f"mt-worker-{key}.sock")  # short: a socket path has 107 bytes at most


class Worker:
    """A running worker: ``run(pipes_env)`` runs one step in it."""

    def __init__(self, address: str, pid: int, log: Path, reused: bool):
        self.address, self.pid, self.log, self.reused = address, pid, log, reused

    def run(self, pipes_env: dict[str, str], step: str) -> dict:
        """The step whose Pipes session ``pipes_env`` bootstraps; the worker's reply (``ok``, ``error``)."""
        try:
            reply = _ask(self.address, {"op": "run", "pipes": pipes_env}, timeout=None)
        except BaseException:  # interrupted: the step stops here, and so does the worker's work on it
            _kill(self.pid)
            raise
        if reply is None:
            _kill(self.pid)  # (dead already, or unable to answer: either way not trusted with another step)
            raise WorkerDied(f"the worker (pid {self.pid}) died during {step}: killed or crashed; nothing was "
                             f"published, the next step starts a new worker (its log: {self.log})")
        return reply

    @classmethod
    def at(cls, key: str, folder: Path) -> "Worker":
        """The worker of ``key`` as its files say (for inspection: no lock taken)."""
        pid = int((folder / f"{key}.pid").read_text())
        return cls(_address(key), pid, folder / f"{key}.log", True)

    def checksum(self) -> str | None:
        return (_ask(self.address, {"op": "checksum"}, timeout=None) or {}).get("checksum")


@contextlib.contextmanager
def worker_for(folder: Path, log: Callable[[str], None] = print) -> Iterator[Worker]:
    """The worker for this process's device and settings, healthy, for one step (its lock held meanwhile);
    ``folder`` holds the workers' locks, pid files and logs (``Settings.workers``)."""
    env = inherited_env()
    folder.mkdir(parents=True, exist_ok=True)
    key = worker_key(env, folder)
    address = _address(key)
    logfile, pidfile = folder / f"{key}.log", folder / f"{key}.pid"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one step at a time; released when the file closes (or the process dies)
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        info = _ask(address, {"op": "ping"}, timeout=PING_S) if _alive(pid) else None
        if info is not None and info.get("pid") == pid:
            log(f"worker: pid {pid} (key {key}), {info['steps']} step(s) so far, holding {info['base'] or 'no base'}")
            yield Worker(address, pid, logfile, True)
            return
        if _alive(pid):
            log(f"worker: pid {pid} (key {key}) did not answer in {PING_S:g}s: killed, starting another")
            _kill(pid)
        Path(address).unlink(missing_ok=True)
        with open(logfile, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mt_worker", "serve", address], cwd=PROJECT_ROOT, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # outlives this run: the next step's, too
        _started[proc.pid] = proc
        pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + START_S
        while _ask(address, {"op": "ping"}, timeout=PING_S) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill(proc.pid)
                raise WorkerDied(f"the worker did not start (exit {proc.poll()}); see {logfile}")
            time.sleep(0.2)
        log(f"worker: started pid {proc.pid} (key {key}, devices {env.get('CUDA_VISIBLE_DEVICES', 'none')}, "
            f"log {logfile})")
        yield Worker(address, proc.pid, logfile, False)


def workers(folder: Path) -> list[dict]:
    """Every worker on record in ``folder``: its key, pid, state (``idle`` with what it holds, ``busy`` while a step
    runs, ``gone``) and log."""
    out = []
    for key, pid in _on_record(folder):
        alive = _alive(pid)
        info = _ask(_address(key), {"op": "ping"}, timeout=2) if alive else None
        state = "gone" if not alive else ("busy" if info is None else "idle")
        out.append({"key": key, "pid": pid, "state": state, **(info or {}), "log": str(folder / f"{key}.log")})
    return out


def stop_workers(folder: Path) -> list[int]:
    """Stop every live worker on record (SIGTERM; a step in progress fails, publishing nothing); their pids."""
    stopped = []
    for key, pid in _on_record(folder):
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
        (folder / f"{key}.pid").unlink(missing_ok=True)
    return stopped


def _on_record(folder: Path) -> list[tuple[str, int]]:
    """(key, pid) of every worker whose pid file is in ``folder``."""
    return [(f.stem, int(f.read_text() or 0)) for f in sorted(folder.glob("*.pid"))]
