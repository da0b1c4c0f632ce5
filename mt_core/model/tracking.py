"""The Weights & Biases run around one training, in the process that trains (``report_to="wandb"`` semantics).

What to log where is a ``WandbSettings`` value: the Dagster resource ``mt_resources.wandb.WandbResource`` is the one
place it is configured (mode, project, entity, host, folder; the key stays in the environment), and the training steps
receive it. Mode ``disabled`` never imports wandb; offline runs upload later with ``wandb sync``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbSettings:
    mode: str = "disabled"  # online | offline | disabled
    project: str = ""
    entity: str | None = None
    host: str | None = None  # W&B server URL; None: W&B's cloud
    dir: str = ".wandb"  # where runs are written

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"W&B mode {self.mode!r}: expected one of {', '.join(MODES)}")


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


@contextlib.contextmanager
def wandb_run(settings: WandbSettings, *, name: str, group: str, job_type: str,
              config: dict) -> Iterator[NullRun]:
    """A W&B run around one training; finished on exit (``exit_code=1`` if the body raised). W&B prints nothing
    (``silent``: no "wandb: ..." banners; the run's id, URL and mode are the step's metadata) and leaves the process's
    console alone (``console="off"``: it neither captures nor echoes stdout/stderr)."""
    if settings.mode == "disabled":
        yield NullRun()
        return
    import wandb

    d = Path(settings.dir)
    d.mkdir(parents=True, exist_ok=True)
    extra = {"base_url": settings.host} if settings.host else {}
    run = wandb.init(project=settings.project, entity=settings.entity, name=name, group=group, job_type=job_type,
                     config=config, mode=settings.mode, dir=str(d), reinit="finish_previous",
                     settings=wandb.Settings(quiet=True, silent=True, console="off", **extra))
    try:
        yield WandbRun(run, settings.mode)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
