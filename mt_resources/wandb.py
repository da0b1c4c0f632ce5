"""Weights & Biases as a resource: the one place W&B is configured (mode, project, entity, host, folder).

The training steps receive ``settings(study)`` and open their run in the process that trains (mt_core.model.tracking);
mode and project left unset on the resource are the study's (one resource serves every study of the code location). In
online mode the resource first logs in through dagster-wandb's own resource (key from $WANDB_API_KEY, never stored in
config or metadata), so a bad or missing key fails the step before any GPU work, not after the training.
"""
from __future__ import annotations

import dagster as dg

from mt_core.config import Study
from mt_core.model.tracking import MODES, WandbSettings
from mt_settings import PROJECT_ROOT, Settings, secret

KEY_ENV = "WANDB_API_KEY"


class WandbResource(dg.ConfigurableResource):
    mode: str | None = None  # online | offline | disabled; None: the study's `wandb:`
    project: str | None = None  # None: the study's name
    entity: str | None = None
    host: str | None = None  # a W&B server; None: W&B's cloud
    dir: str = str(PROJECT_ROOT / ".wandb")

    @classmethod
    def of(cls, settings: Settings) -> "WandbResource":
        """What the standard W&B variables set (WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY, WANDB_BASE_URL, WANDB_DIR), so
        a run can be silenced or redirected without editing the study; the rest is each study's."""
        w = settings.wandb
        return cls(mode=w.mode, project=w.project, entity=w.entity, host=w.host,
                   dir=w.dir or cls.model_fields["dir"].default)

    @classmethod
    def for_study(cls, study: Study, settings: Settings) -> "WandbResource":
        """The study's ``wandb`` mode and name, the standard W&B variables overriding them."""
        env = cls.of(settings)
        return env.model_copy(update={"mode": env.mode or study.wandb, "project": env.project or study.name})

    def settings(self, study: Study | None = None) -> WandbSettings:
        """The settings a training of ``study`` logs with (mode and project: this resource's, else the study's)."""
        default = study.wandb if study is not None else None  # the study's mode, unless this resource's overrides it
        mode = self.mode or default
        project = self.project or (study.name if study is not None else "marker-transfer")
        if mode not in MODES:
            raise dg.Failure(f"W&B mode {mode!r} (study `wandb:` or $WANDB_MODE): expected one of "
                             f"{', '.join(MODES)}")
        if mode == "online":
            self._login()
        return WandbSettings(mode=mode, project=project, entity=self.entity, host=self.host, dir=self.dir)

    def _login(self) -> None:
        key = secret(KEY_ENV)
        if not key:
            raise dg.Failure(f"W&B mode is online but ${KEY_ENV} is not set; set it, or run offline "
                             f"(WANDB_MODE=offline, upload later with `wandb sync`)")
        from dagster_wandb import wandb_resource

        config = {"api_key": key, **({"host": self.host} if self.host else {})}
        wandb_resource(dg.build_init_resource_context(config=config))
