"""`mt` in its own process, without paying its imports every time: a fork server for the tests.

Most of what a test's `mt run` costs on the 2-core test machine is not its work but its start: about 8 CPU seconds
importing torch, transformers, PEFT, Dagster, polars and the rest, paid again by every `mt` a test starts (about 60 per
suite). A zygote pays them once per xdist worker: a Python process that imports the libraries (never the code
location, which reads the environment) and then forks one child per command. The child is a process of its own, with
its own pid, environment, working directory, stdout and stderr, and default signal handlers; it runs
``mt_cli.main(argv)`` exactly as ``python -m mt_cli`` does, runs the exit handlers, and exits with the CLI's code (a
child killed by a signal reports ``-signal``, as ``subprocess`` does). ``run`` and ``popen`` stand in for
``subprocess.run`` and ``subprocess.Popen`` of ``[sys.executable, "-m", "mt_cli", ...]``; ``run(code=...)`` for a
``python -c`` script (the tests that execute one job of the code location in a process of its own).

The process of a pipes or ray step that an `mt` of the tests starts (about 20 per suite, each about 7 CPU seconds of
imports when fresh) comes from the zygote too: tests/conftest.py puts ``python tests/zygote.py`` in front of it
(MT_CHILD_PREFIX), whose ``client`` asks the worker's zygote over a socket to fork it with the client's stdio,
environment and directory, and stands in for it (signals forwarded, its exit status returned as its own).

What still starts a fresh interpreter: the README's `mt demo` (tests/conftest.py), the tests of signals and of
process start itself (tests/test_interrupt.py, tests/test_ui_stop.py), Dagster's servers and the runs they launch,
and a worker that stays (MT_COMPUTE=worker).
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
# the socket of an xdist worker's zygote: `mt` processes the tests start fork the process of a pipes or ray step there
# too (tests/conftest.py puts ``python tests/zygote.py`` in MT_CHILD_PREFIX, so ``client`` runs in front of it)
SOCKET_ENV = "MT_TEST_ZYGOTE"


# ---- the server: one per xdist worker ------------------------------------------------------------------------------
def _child(req: dict, server_fds: tuple[int, ...], fds: list[int] | None = None) -> None:
    """In the forked child: become the command's process, run it, exit with its code (never returns). ``fds``: the
    stdin, stdout and stderr a socket client passed (else the request names files for stdout and stderr)."""
    code = 1
    try:
        for fd in server_fds:  # the server's pipes and sockets are not the command's
            os.close(fd)
        os.setpgid(0, 0) if req.get("new_group") else None
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if fds:
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
                os.close(fd)
        else:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, 1)
            os.dup2(out if req["stderr"] == req["stdout"] else
                    os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        code_text, module = req.get("code"), req.get("module")  # `python -c CODE` or `python -m MODULE ARGS`
        sys.argv = (["-c"] if code_text is not None else ["-m", *req["argv"]] if module
                    else [str(ROOT / "mt_cli" / "__main__.py"), *req["argv"]])
        # the exit handlers the server's imports registered are the server's (polars' waits for a thread a fork does
        # not copy); the command registers its own, and gets the two every Python process has
        atexit._clear()
        import logging

        atexit.register(logging.shutdown)
        if "multiprocessing.util" in sys.modules:  # joins the command's own child processes, as at any exit
            atexit.register(sys.modules["multiprocessing.util"]._exit_function)
        if os.environ.get("MT_RECORD_CONFIG_READS"):  # what record_config_reads/sitecustomize.py does in a fresh
            # process, whose `mt_core.config` is imported after it: here it was imported already, and `record` patches
            # the names that bind `load_study` (no module that binds it at import is preloaded: the code location)
            import config_reads

            config_reads._write_at_exit(config_reads.record(), Path(os.environ["MT_RECORD_CONFIG_READS"]))
        import mt_cli

        try:
            if code_text is not None:
                exec(compile(code_text, "<string>", "exec"), {"__name__": "__main__"})
                code = 0
            elif module:
                import runpy

                runpy.run_module(module, run_name="__main__", alter_sys=True)
                code = 0
            else:
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
    exit status when it ends, one JSON line each on stdout. Also a child per connection to the socket at
    $MT_TEST_ZYGOTE (``client``): the pid, then the exit status, go back over the connection; a connection that closes
    first (its client died) kills its child."""
    import socket

    for m in PRELOAD:
        __import__(m)
    from mt_run.runner import STEP_IMPORTS

    for m in STEP_IMPORTS:
        __import__(m)
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "stdin")
    listener = None
    if os.environ.get(SOCKET_ENV):
        listener = socket.socket(socket.AF_UNIX)
        if os.path.exists(os.environ[SOCKET_ENV]):  # an earlier zygote's of a process with this pid
            os.unlink(os.environ[SOCKET_ENV])
        listener.bind(os.environ[SOCKET_ENV])
        atexit.register(os.unlink, os.environ[SOCKET_ENV])
        listener.listen(16)
        sel.register(listener, selectors.EVENT_READ, "listen")
    children: set[int] = set()
    conns: dict[int, socket.socket] = {}  # a socket client's child -> its connection
    pending = b""
    stdin_open = True

    def drop(pid: int) -> socket.socket:
        """A socket client's connection, no longer watched (the caller answers on it and closes it)."""
        conn = conns.pop(pid)
        sel.unregister(conn)
        return conn

    def reap(pid: int, flags: int) -> None:
        """Report a child's exit (its code, and the CPU seconds it and its own waited children used), to its socket
        client too."""
        done, status, usage = os.wait4(pid, flags)
        if not done:
            return
        children.discard(pid)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if pid in conns:
            with drop(pid) as conn:
                try:
                    conn.sendall(json.dumps({"rc": rc}).encode() + b"\n")
                except OSError:
                    pass
        try:
            reply.write(json.dumps({"pid": pid, "rc": rc, "cpu": usage.ru_utime + usage.ru_stime}) + "\n")
        except BrokenPipeError:
            pass

    def fork(req: dict, fds: list[int] | None = None, conn=None) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            own = [reply.fileno(), *(c.fileno() for c in (*conns.values(), conn, listener) if c is not None)]
            _child(req, tuple(own), fds)
        children.add(pid)
        return pid

    while stdin_open or conns:
        for key, _ in sel.select(timeout=0.05):
            if key.data == "stdin":
                data = os.read(0, 65536)
                if not data:
                    stdin_open = False
                    sel.unregister(0)
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    req = json.loads(line)
                    reply.write(json.dumps({"id": req["id"], "pid": fork(req)}) + "\n")
            elif key.data == "listen":
                conn, _ = listener.accept()
                conn.settimeout(30)
                msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                while not msg.endswith(b"\n"):
                    more = conn.recv(1 << 20)
                    if not more:
                        break
                    msg += more
                try:
                    pid = fork(json.loads(msg), list(fds), conn)
                finally:
                    for fd in fds:
                        os.close(fd)
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                conns[pid] = conn
                sel.register(conn, selectors.EVENT_READ, pid)
            else:  # a client's connection closed before its child ended: the client is gone, so is the child
                pid = key.data
                drop(pid).close()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in list(children):
            reap(pid, os.WNOHANG)
    for pid in list(children):  # the client is gone: wait for what it started
        reap(pid, 0)


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
                what = req.get("code") or "mt " + " ".join(req["argv"])
                raise RuntimeError(f"the zygote did not start {what!r} (exit {self.proc.poll()})")
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

    def __init__(self, args: list[str], env: dict | None, cwd: Path | str | None, merge: bool, new_group: bool,
                 code: str | None = None):
        self.args = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "mt_cli", *args]
        self._tmp = tempfile.TemporaryDirectory(prefix="mt-zygote-")  # removed with this object (or at exit)
        self._dir = Path(self._tmp.name)
        out, err = self._dir / "stdout", self._dir / ("stdout" if merge else "stderr")
        self._merge = merge
        self.returncode: int | None = None
        self.pid = _the_server().start({"argv": list(args), "env": dict(env if env is not None else os.environ),
                                        "cwd": str(cwd or ROOT), "stdout": str(out), "stderr": str(err),
                                        "new_group": new_group, "code": code})

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
        timeout: float | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, "-m", "mt_cli", *args], capture_output=True, text=True)``, in the zygote;
    on timeout the child is killed and ``subprocess.TimeoutExpired`` raised. With ``code`` (``args`` then empty):
    ``python -c CODE`` instead, run in the child as ``-c`` runs it (a script that imports the code location, which
    reads the child's environment)."""
    p = Proc(args, env, cwd, False, False, code)
    t0 = time.monotonic()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(30)
        raise subprocess.TimeoutExpired(p.args, time.monotonic() - t0, p._text("stdout"), p._text("stderr"))
    out, err = p.communicate()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


# ---- a process `mt` starts (MT_CHILD_PREFIX): ``python tests/zygote.py python -m mt_worker`` ------------------------
def client(argv: list[str]) -> None:
    """Run ``argv`` (``python -m MODULE ARGS``) as a child of this test worker's zygote, as if it were this process:
    the child gets this process's stdin, stdout, stderr, environment and working directory; the signals Dagster and
    Ray send this process (SIGINT, SIGTERM, SIGHUP) go to it; this process ends as it ended (its exit code, or killed
    by its signal); killed, this process takes the child with it (the zygote sees the connection close). Without a
    zygote to ask (none started in this worker yet), it execs ``argv`` itself."""
    import ctypes
    import socket

    # as mt_worker does: killed when the process that started it dies (a Ray node's job supervisor, a step process),
    # and the zygote then kills the child
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    path = os.environ.get(SOCKET_ENV)
    if argv[1:2] == ["-m"] and path and os.path.exists(path):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
        except OSError:
            s.close()
        else:
            req = {"module": argv[2], "argv": argv[3:], "env": dict(os.environ), "cwd": os.getcwd()}
            socket.send_fds(s, [json.dumps(req).encode() + b"\n"], [0, 1, 2])
            answers = s.makefile("r")
            pid = json.loads(answers.readline())["pid"]
            def forward(n, _):
                try:
                    os.kill(pid, n)
                except ProcessLookupError:  # it ended meanwhile: its status is on its way
                    pass

            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, forward)
            line = answers.readline()
            rc = json.loads(line)["rc"] if line else 1
            if rc < 0:
                signal.signal(-rc, signal.SIG_DFL)
                os.kill(os.getpid(), -rc)
            os._exit(rc)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    client(sys.argv[1:])
