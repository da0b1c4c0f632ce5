"""Weights & Biases as a resource: the one place W&B is configured (mode, project, entity, host, folder).

The training steps receive ``settings()`` and open their run in the process that trains (mt_core.model.tracking). In
online mode the resource first logs in through dagster-wandb's own resource (key from $WANDB_API_KEY, never stored in
config or metadata), so a bad or missing key fails the step before any GPU work, not after the training.
"""
from __future__ import annotations

import os

import dagster as dg

from mt_core.config import PROJECT_ROOT, Study
from mt_core.model.tracking import MODES, WandbSettings

KEY_ENV = "WANDB_API_KEY"


class WandbResource(dg.ConfigurableResource):
    mode: str = "disabled"  # online | offline | disabled
    project: str = "marker-transfer"
    entity: str | None = None
    host: str | None = None  # a W&B server; None: W&B's cloud
    dir: str = str(PROJECT_ROOT / ".wandb")

    @classmethod
    def for_study(cls, study: Study) -> "WandbResource":
        """The study's ``wandb`` mode and name; the standard W&B variables override (WANDB_MODE, WANDB_PROJECT,
        WANDB_ENTITY, WANDB_BASE_URL, WANDB_DIR), so a run can be silenced or redirected without editing the study."""
        default = study.wandb
        mode = os.environ.get("WANDB_MODE") or default
        return cls(mode="offline" if mode == "dryrun" else mode,
                   project=os.environ.get("WANDB_PROJECT") or study.name, entity=os.environ.get("WANDB_ENTITY"),
                   host=os.environ.get("WANDB_BASE_URL"),
                   dir=os.environ.get("WANDB_DIR") or cls.model_fields["dir"].default)

    def settings(self) -> WandbSettings:
        if self.mode not in MODES:
            raise dg.Failure(f"W&B mode {self.mode!r} (study `wandb:` or $WANDB_MODE): expected one of "
                             f"{', '.join(MODES)}")
        if self.mode == "online":
            self._login()
        return WandbSettings(mode=self.mode, project=self.project, entity=self.entity, host=self.host, dir=self.dir)

    def _login(self) -> None:
        if not os.environ.get(KEY_ENV):
            raise dg.Failure(f"W&B mode is online but ${KEY_ENV} is not set; set it, or run offline "
                             f"(WANDB_MODE=offline, upload later with `wandb sync`)")
        from dagster_wandb import wandb_resource

        config = {"api_key": os.environ[KEY_ENV], **({"host": self.host} if self.host else {})}
        wandb_resource(dg.build_init_resource_context(config=config))
