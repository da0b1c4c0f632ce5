"""The code location as a value: every study of one ``Settings``, built into one ``Definitions``.

``definitions.py`` (what Dagster's processes load) is ``build_defs(Settings.from_env())``; the ``mt`` command builds
its own from its settings (the command line's ``--study``/``--profile`` applied), and tests build as many as they like
in one process.
"""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from mt_assets import build
from mt_assets.study import StudyDefs, load_studies
from mt_core.config import ConfigError
from mt_resources import ArtifactStore, Compute, GpuAllocator, JudgeResource, WandbResource
from mt_settings import Settings


class CodeLocation:
    """The studies of one set of settings and their ``Definitions``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.studies: dict[str, StudyDefs] = {s.name: build(s, settings) for s in load_studies(settings)}
        self.profile = settings.profile
        self.compute = settings.compute_mode()
        self.defs = dg.Definitions(
            assets=[a for sd in self.studies.values() for a in sd.assets],
            jobs=[j for sd in self.studies.values() for j in sd.jobs.values()],
            resources={
                # each study reads and writes its own root; judge and W&B are each asset's study's (mt_resources)
                "store": ArtifactStore(roots={name: str(sd.root) for name, sd in self.studies.items()},
                                       cache=str(settings.cache)),
                "gpu": GpuAllocator.of(settings),
                # heavy steps in the step process (the fast tiny demo), in a Pipes child process (MT_COMPUTE=pipes) or
                # as a Ray job on a cluster (MT_COMPUTE=ray, RAY_ADDRESS: docs/SCALING.md)
                "compute": Compute.of(settings),
                "judge": JudgeResource(base_url=settings.anthropic_base_url),
                "wandb": WandbResource.of(settings),
            },
            # One process per run: torch/peft are imported once per run, not once per step (DESIGN.md: import cost).
            executor=dg.in_process_executor,
        )

    def study(self, path: str | os.PathLike | None = None) -> StudyDefs:
        """The study of this code location loaded from ``path`` (default: the settings' current study)."""
        want = Path(path or self.settings.current_study).resolve()
        for sd in self.studies.values():
            if sd.study.file == want:
                return sd
        raise ConfigError(f"{path or want}: not a study of this code location ($MT_STUDIES: "
                          f"{', '.join(str(sd.study.file) for sd in self.studies.values())})")


def build_defs(settings: Settings) -> dg.Definitions:
    return CodeLocation(settings).defs
