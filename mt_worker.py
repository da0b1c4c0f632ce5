"""The child process of one heavy task (``Compute(mode="pipes")``): ``python -m mt_worker``, launched through Pipes.

It reloads the study, runs one ``mt_core.tasks`` function into the staging directory the parent opened, sends the task's
log lines to Dagster's event log and its returned metadata back as a Pipes custom message (``{"result": ...}``, or
``{"error": ...}`` before exiting non-zero). torch, CUDA and the model live and die with this process. No Dagster
import here: only ``dagster_pipes``.
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path

PATH_TAG = "__path__"  # mt_resources.compute.encode tags Paths this way


def decode(v):
    if isinstance(v, dict):
        return Path(v[PATH_TAG]) if set(v) == {PATH_TAG} else {k: decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the Dagster step process dies (PR_SET_PDEATHSIG), so no orphan holds a GPU."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    _die_with_parent()
    with open_dagster_pipes() as pipes:
        x = pipes.extras
        try:
            from mt_core import tasks
            from mt_core.config import load_study

            study = load_study(x["study"], x["profile"])
            if study.config_sha256 != x["config_sha256"]:
                raise RuntimeError(f"{x['study']} (profile {x['profile']}) changed since the step started: "
                                   f"config sha256 {study.config_sha256} != {x['config_sha256']}")
            pipes.log.info(f"worker: {x['task']} (study {study.name}, profile {study.profile})")
            result = getattr(tasks, x["task"])(study, **decode(x["kwargs"]), out=Path(x["out"]), log=pipes.log.info)
        except BaseException as e:  # noqa: BLE001 - reported to the parent, then re-raised (non-zero exit)
            pipes.report_custom_message({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
            raise
        # default=str: what the inline path would render as text (e.g. numpy ints) arrives as text
        pipes.report_custom_message({"result": json.loads(json.dumps(result or {}, default=str))})


if __name__ == "__main__":
    main()
