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

