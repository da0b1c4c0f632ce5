"""Weights & Biases runs for the process that trains (``report_to="wandb"`` semantics), without Dagster.

Mode: ``$WANDB_MODE`` if set, else the study's ``wandb`` setting (online | offline | disabled). Disabled never imports
wandb. Runs are written under ``$WANDB_DIR`` (default ``.wandb/`` in the project root, independent of the artefact
store); the project is ``$WANDB_PROJECT`` (default: the study's name). Offline runs upload later with ``wandb sync``.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


class NullRun:
    """The disabled-mode handle: every call is a no-op."""
    id: str | None = None
    url: str | None = None
    mode = "disabled"

    def log(self, data: dict, step: int | None = None) -> None:
        pass

    def summary(self, data: dict) -> None:
        pass


class WandbRun(NullRun):
    def __init__(self, run, mode: str):
        self.run, self.mode, self.id = run, mode, run.id
        self.url = run.url if mode == "online" else None

    def log(self, data: dict, step: int | None = None) -> None:
        self.run.log(data, step=step)

    def summary(self, data: dict) -> None:
        self.run.summary.update(data)


def resolve_mode(study) -> str:
    mode = os.environ.get("WANDB_MODE") or study.wandb
    if mode == "dryrun":
        mode = "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"WANDB_MODE={mode!r}: expected online, offline or disabled")
    return mode


@contextlib.contextmanager
def wandb_run(study, *, name: str, group: str, job_type: str, config: dict) -> Iterator[NullRun]:
    """A W&B run around one training; finished on exit (``exit_code=1`` if the body raised)."""
    mode = resolve_mode(study)
    if mode == "disabled":
        yield NullRun()
        return
    import wandb

    d = Path(os.environ.get("WANDB_DIR") or ROOT / ".wandb")
    d.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", study.name), name=name, group=group,
                     job_type=job_type, config=config, mode=mode, dir=str(d), reinit="finish_previous",
                     settings=wandb.Settings(quiet=True))
    try:
        yield WandbRun(run, mode)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
