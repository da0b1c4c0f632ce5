"""The child process of one heavy step (``Compute(mode="pipes")``): ``python -m mt_worker``, launched through Pipes.

It reloads the study, looks up the registered step it was named (``mt_core.steps.registry``), runs it into the staging
directory the parent opened, sends the step's log lines to Dagster's event log and its returned metadata back as a
Pipes custom message (``{"result": ...}``); an error is reported to the step as the pipes close (its class, message
and traceback), and the process exits non-zero. torch, CUDA and the model live and die with this process. No Dagster import here: only ``dagster_pipes``. ``encode``/``decode`` are the wire
format of the step's keyword arguments (JSON, with Paths and settings values tagged).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

PATH_TAG, WANDB_TAG = "__path__", "__wandb__"


def encode(v):
    """Step kwargs as JSON for the worker: Paths and W&B settings tagged so that ``decode`` restores them."""
    from mt_core.model.tracking import WandbSettings

    if isinstance(v, Path):
        return {PATH_TAG: str(v)}
    if isinstance(v, WandbSettings):
        return {WANDB_TAG: dataclasses.asdict(v)}
    if isinstance(v, (list, tuple)):
        return [encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): encode(x) for k, x in v.items()}
    return v


def decode(v):
    if isinstance(v, dict):
        if set(v) == {PATH_TAG}:
            return Path(v[PATH_TAG])
        if set(v) == {WANDB_TAG}:
            from mt_core.model.tracking import WandbSettings

            return WandbSettings(**v[WANDB_TAG])
        return {k: decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


def placement() -> dict:
    """Where a step ran: its host, its node (a Ray worker's MT_NODE, set by mt_services.ray; else the host) and the
    GPU ids it was given."""
    from mt_core import runtime
    from mt_settings import visible_devices

    host = socket.gethostname()
    return {"host": host, "node": runtime.current().node or host, "cuda_visible_devices": visible_devices()}


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

    from mt_settings import Settings

    _die_with_parent()
    Settings.from_env().install()  # this process's settings: its environment, inherited from the step
    with open_dagster_pipes() as pipes:  # an exception is reported to the step as the pipes close, then exits 1
        x = pipes.extras
        from mt_core.config import load_study
        from mt_core.steps.registry import lookup

        study = load_study(x["study"], x["profile"])
        if study.config_sha256 != x["config_sha256"]:
            raise RuntimeError(f"{x['study']} (profile {x['profile']}) changed since the step started: "
                               f"config sha256 {study.config_sha256} != {x['config_sha256']}")
        pipes.log.info(f"worker: {x['step']} in child pid {os.getpid()} (study {study.name}, profile {study.profile})")
        result = lookup(x["step"])(study, **decode(x["kwargs"]), out=decode(x["out"]), log=pipes.log.info)
        result = {**(result or {}), "placement": placement()}
        # default=str: what the inline path would render as text (e.g. numpy ints) arrives as text
        pipes.report_custom_message({"result": json.loads(json.dumps(result, default=str))})

if __name__ == "__main__":
    main()
