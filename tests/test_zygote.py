"""tests/zygote.py runs `mt` as `subprocess` would: exit codes, stdout and stderr apart (or merged), a process of its
own. (A kill reading as ``-signal``: tests/test_faults.py's kill chain, which asserts ``-SIGKILL`` through it.)"""
import os

import pytest
import zygote


@pytest.mark.slow  # the zygote serves the slow tests' `mt` commands; starting one costs its imports (about 10 s)
def test_exit_codes_and_streams_as_a_process_of_its_own():
    ok = zygote.run(["--help"], timeout=120)
    assert ok.returncode == 0 and "usage: mt" in ok.stdout and ok.stderr == ""
    bad = zygote.run(["no-such-command"], timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and bad.stdout == ""
    merged = zygote.popen(["no-such-command"], merge=True)
    assert merged.wait(120) == 2 and "invalid choice" in merged.stdout.read() and merged.stderr is None
    assert merged.pid not in (os.getpid(), zygote._server.proc.pid)  # a process of its own



@pytest.mark.slow
def test_a_client_stands_in_for_its_child(tmp_path):
    """``python tests/zygote.py python -m MODULE`` (what MT_CHILD_PREFIX puts in front of a pipes or ray step's
    process): the module runs in a child of the zygote with the client's stdout, environment and directory; the client
    ends as the child did (exit code, or its signal), forwards SIGTERM to it, and killed, takes the child with it."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    zygote.run(["--help"], timeout=120)  # the zygote is up, its socket listening
    mod = tmp_path / "probe_mod.py"
    mod.write_text("import os, sys, time\nprint('pid', os.getpid(), os.getcwd(), os.environ['PROBE'], flush=True)\n"
                   "time.sleep(float(sys.argv[1]))\nsys.exit(int(sys.argv[2]))\n")
    client = [sys.executable, str(Path(zygote.__file__)), sys.executable, "-m", "probe_mod"]
    env = {**os.environ, "PROBE": "yes", "PYTHONPATH": str(tmp_path)}

    def start(*args):
        return subprocess.Popen([*client, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)

    p = start("0", "3")
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 3 and f"{tmp_path} yes" in out, out
    child = int(out.split()[1])
    assert child != p.pid and zygote._server.proc.pid != child  # forked by the zygote, not the client

    def child_of(p):
        line = p.stdout.readline()
        assert line.startswith("pid "), line
        return int(line.split()[1])

    p = start("60", "0")  # SIGTERM to the client reaches the child, and the client dies of it too
    child_of(p)  # the child is running
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == -signal.SIGTERM

    p = start("60", "0")  # the client killed: the zygote kills the child
    child = child_of(p)
    p.kill()
    p.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the child {child} outlived its killed client")
