"""`mt run` interrupted as a user interrupts it (Ctrl-C is SIGINT, `kill` and a scheduler's stop are SIGTERM): one
line on stderr saying what was interrupted, that nothing partial was published and that a rerun resumes; exit 130;
nothing recorded or published for the step it stopped. Before: a traceback ending in an IndexError."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zygote

from mt_run.runs import cause

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a study's `mt run` through Dagster, stopped mid-run: about 15 s each
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_mt_run_says_so_in_one_line_and_publishes_nothing(tmp_path, sig):
    import dagster as dg

    home, art = tmp_path / "home", tmp_path / "art"
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", WANDB_MODE="disabled",
               PYTHONUNBUFFERED="1",  # its progress lines as they are printed
               MT_MODELS=str(tmp_path / "models"))  # a base of its own to build: no snapshot to reuse
    for k in ("MT_STUDY", "MT_STUDIES", "MT_FAILPOINT", "MT_DEBUG"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-m", "mt_cli", "run", "--until", "inputs"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:  # wait for the inputs run to be inside its steps (pretraining the tiny base takes a while)
        seen.append(line)
        if line.startswith("inputs: running"):
            break
    else:
        pytest.fail("mt run never started its inputs run:\n" + "".join(seen) + proc.stderr.read())
    time.sleep(4)
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"mt run did not stop within 180 s of {sig.name}:\n{out[-3000:]}\n{err[-3000:]}")
    lines = [x for x in err.splitlines() if x.strip()]
    assert proc.returncode == 130, (out, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("mt run: interrupted during inputs") and "nothing partial was published" in lines[0] \
        and "again to resume" in lines[0], lines[0]
    assert "Traceback" not in out + err
    # the step it stopped left nothing a rerun could take for a finished artefact: no record, no published folder
    with dg.DagsterInstance.from_config(str(home)) as inst:
        key = dg.AssetKey(["marker_transfer_villain", "base_model"])
        assert inst.get_latest_materialization_event(key) is None
    assert not (art / "base_model").exists() or not any((art / "base_model").iterdir())
    # and a rerun plans it again
    plan = zygote.run(["run", "--until", "inputs", "--dry-run"], cwd=ROOT, env=env, timeout=300)
    assert plan.returncode == 0 and "base_model" in plan.stdout, plan.stdout + plan.stderr


def test_a_cause_without_a_colon_is_one_line_not_an_index_error():
    """The interrupted step's error message has no ``Class: message`` shape (mt_runner._cause raised IndexError)."""
    from types import SimpleNamespace

    err = SimpleNamespace(cls_name="DagsterExecutionInterruptedError", message="DagsterExecutionInterruptedError",
                          cause=None, to_string=lambda: "trace")
    assert cause(err) == ("DagsterExecutionInterruptedError: DagsterExecutionInterruptedError", False, "trace")
    child = SimpleNamespace(cls_name="ChildTaskError", message="train failed in its child process (exit code 1)",
                            cause=None, to_string=lambda: "trace")
    assert cause(child)[0] == "ChildTaskError: train failed in its child process (exit code 1)"
