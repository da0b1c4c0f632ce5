"""`mt` in its own process, without paying its imports every time: a fork server for the tests.

Most of what a test's `mt run` costs on the 2-core test machine is not its work but its start: about 8 CPU seconds
importing torch, transformers, PEFT, Dagster, polars and the rest, paid again by every `mt` a test starts (about 60 per
suite). A zygote pays them once per xdist worker: a Python process that imports the libraries (never the code
location, which reads the environment) and then forks one child per command. The child is a process of its own, with
its own pid, environment, working directory, stdout and stderr, and default signal handlers; it runs
``mt_cli.main(argv)`` exactly as ``python -m mt_cli`` does, runs the exit handlers, and exits with the CLI's code (a
child killed by a signal reports ``-signal``, as ``subprocess`` does). ``run`` and ``popen`` stand in for
``subprocess.run`` and ``subprocess.Popen`` of ``[sys.executable, "-m", "mt_cli", ...]``.

What still starts a fresh interpreter: the README's `mt demo` (tests/conftest.py), the tests of signals and of
process start itself (tests/test_interrupt.py, tests/test_ui_stop.py), and everything `mt` itself starts (Dagster's
servers, Pipes children, workers).
"""
from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what every `mt` imports and most of its import time: `mt run`'s own preload for its forked runs
# (mt_run.runner.STEP_IMPORTS) and the CLI's, and the summary's (its figure, its tests); not polars, pyarrow or duckdb
# (their pools do not survive a fork), nor the code location (it reads the environment)
PRELOAD = ("mt_run.runner", "dagster", "matplotlib.figure", "scipy.stats", "mt_cli")


# ---- the server: one per xdist worker ------------------------------------------------------------------------------
def _child(req: dict, server_fds: tuple[int, ...]) -> None:
    """In the forked child: become the command's process, run it, exit with its code (never returns)."""
    code = 1
    try:
        for fd in server_fds:  # the server's pipes are not the command's
            os.close(fd)
        os.setpgid(0, 0) if req.get("new_group") else None
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out if req["stderr"] == req["stdout"] else
                os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        sys.argv = [str(ROOT / "mt_cli" / "__main__.py"), *req["argv"]]
        # the exit handlers the server's imports registered are the server's (polars' waits for a thread a fork does
        # not copy); the command registers its own, and gets the two every Python process has
        atexit._clear()
        import logging

        atexit.register(logging.shutdown)
        if "multiprocessing.util" in sys.modules:  # joins the command's own child processes, as at any exit
            atexit.register(sys.modules["multiprocessing.util"]._exit_function)
        import mt_cli

        try:
            code = mt_cli.main(req["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else (print(e.code, file=sys.stderr)
                                                                                    or 1))
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            import traceback

            traceback.print_exc()
            code = 1
        threading._shutdown()  # what the interpreter does at exit: wait for non-daemon threads
        atexit._run_exitfuncs()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code or 0)


def serve() -> None:
    """Import the libraries, then fork a child per request line on stdin; report each child's pid at once and its
    exit status when it ends, one JSON line each on stdout."""
    for m in PRELOAD:
        __import__(m)
    from mt_run.runner import STEP_IMPORTS

    for m in STEP_IMPORTS:
        __import__(m)
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    children: set[int] = set()
    pending = b""
    while True:
        if sel.select(timeout=0.05):
            data = os.read(0, 65536)
            if not data:
                break
            pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            req = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(req, (reply.fileno(),))
            children.add(pid)
            reply.write(json.dumps({"id": req["id"], "pid": pid}) + "\n")
        for pid in list(children):
            _reap(pid, os.WNOHANG, children, reply)
    for pid in list(children):  # the client is gone: wait for what it started
        _reap(pid, 0, children, reply)


def _reap(pid: int, flags: int, children: set[int], reply) -> None:
    """Report a child's exit (its code, and the CPU seconds it and its own waited children used)."""
    done, status, usage = os.wait4(pid, flags)
    if done:
        children.discard(pid)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        try:
            reply.write(json.dumps({"pid": pid, "rc": rc, "cpu": usage.ru_utime + usage.ru_stime}) + "\n")
        except BrokenPipeError:
            pass


# ---- the client ----------------------------------------------------------------------------------------------------
class _Server:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "tests"), str(ROOT),
                                                                         os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-c", "import zygote; zygote.serve()"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lock = threading.Lock()
        self.codes: dict[int, int] = {}
        self.pids: dict[int, int] = {}
        self.next = 0
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        global cpu_seconds
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.cond:
                if "rc" in msg:
                    self.codes[msg["pid"]] = msg["rc"]
                    cpu_seconds += msg["cpu"]
                else:
                    self.pids[msg["id"]] = msg["pid"]
                self.cond.notify_all()

    def start(self, req: dict) -> int:
        with self.lock:
            self.next += 1
            req["id"] = self.next
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        with self.cond:
            self.cond.wait_for(lambda: req["id"] in self.pids or self.proc.poll() is not None, timeout=600)
            if req["id"] not in self.pids:
                raise RuntimeError(f"the zygote did not start `mt {' '.join(req['argv'])}` (exit {self.proc.poll()})")
            return self.pids.pop(req["id"])

    def wait(self, pid: int, timeout: float | None) -> int | None:
        with self.cond:
            self.cond.wait_for(lambda: pid in self.codes, timeout=timeout)
            return self.codes.get(pid)


_server: _Server | None = None
cpu_seconds = 0.0  # what the commands this process started used (tests/conftest.py's timeline reads it)


@atexit.register
def _stop() -> None:
    """The server ends when its stdin does, after its children: waited for here, so it and they count as this
    process's children (``time``, ``getrusage``)."""
    if _server is not None and _server.proc.poll() is None:
        _server.proc.stdin.close()
        try:
            _server.proc.wait(120)
        except subprocess.TimeoutExpired:
            _server.proc.kill()


def _the_server() -> _Server:
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = _Server()
    return _server


class Proc:
    """A ``subprocess.Popen`` of `mt`, for what the tests use of one: pid, poll, wait, send_signal, kill, and its
    output as text (``stdout``/``stderr`` readable once it ended; ``stderr`` is None when merged into stdout)."""

    def __init__(self, args: list[str], env: dict | None, cwd: Path | str | None, merge: bool, new_group: bool):
        self.args = [sys.executable, "-m", "mt_cli", *args]
        self._dir = Path(tempfile.mkdtemp(prefix="mt-zygote-"))
        out, err = self._dir / "stdout", self._dir / ("stdout" if merge else "stderr")
        self._merge = merge
        self.returncode: int | None = None
        self.pid = _the_server().start({"argv": list(args), "env": dict(env if env is not None else os.environ),
                                        "cwd": str(cwd or ROOT), "stdout": str(out), "stderr": str(err),
                                        "new_group": new_group})

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = _the_server().wait(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = _the_server().wait(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _text(self, name: str) -> str:
        return (self._dir / name).read_text(errors="replace") if (self._dir / name).exists() else ""

    @property
    def stdout(self):
        import io

        return io.StringIO(self._text("stdout"))

    @property
    def stderr(self):
        import io

        return None if self._merge else io.StringIO(self._text("stderr"))

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        self.wait(timeout)
        return self._text("stdout"), None if self._merge else self._text("stderr")


def popen(args: list[str], *, env: dict | None = None, cwd: Path | str | None = None, merge: bool = False,
          new_group: bool = False) -> Proc:
    """`mt ARGS` started in a child of the zygote (``merge``: stderr into stdout)."""
    return Proc(args, env, cwd, merge, new_group)


def run(args: list[str], *, env: dict | None = None, cwd: Path | str | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, "-m", "mt_cli", *args], capture_output=True, text=True)``, in the zygote;
    on timeout the child is killed and ``subprocess.TimeoutExpired`` raised."""
    p = popen(args, env=env, cwd=cwd)
    t0 = time.monotonic()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(30)
        raise subprocess.TimeoutExpired(p.args, time.monotonic() - t0, p._text("stdout"), p._text("stderr"))
    out, err = p.communicate()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)
