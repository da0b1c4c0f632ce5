"""The one Dagster code location of the platform: assets, checks, jobs and resources for every configured study.

The studies are ``$MT_STUDIES`` (os.pathsep-separated study YAMLs; default ``$MT_STUDY``, else
studies/marker_transfer_villain.yaml) under one profile, ``$MT_PROFILE`` (default ``tiny``). Each study's asset keys
are prefixed with its name (``marker_transfer_villain/coupling_adapter``) and its jobs are ``<study>__<stage>``, so
several studies share one instance, one UI and one catalog. Artefacts live under ``mt_core.layout.artefact_root``
($MT_ARTIFACTS, default ``artifacts/<study>/<profile>``), one root per study.
"""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from mt_assets import build
from mt_assets.study import StudyDefs, load_studies
from mt_core.config import ConfigError
from mt_resources import ArtifactStore, Compute, GpuAllocator, JudgeResource, WandbResource

STUDIES: dict[str, StudyDefs] = {s.name: build(s) for s in load_studies()}
PROFILE = next(iter(STUDIES.values())).study.profile


def study_defs(path: str | os.PathLike | None = None) -> StudyDefs:
    """The study of this code location loaded from ``path`` (default: $MT_STUDY, else the first study)."""
    path = path or os.environ.get("MT_STUDY")
    if path is None:
        return next(iter(STUDIES.values()))
    for sd in STUDIES.values():
        if sd.study.file == Path(path).resolve():
            return sd
    raise ConfigError(f"{path}: not a study of this code location ($MT_STUDIES: "
                      f"{', '.join(str(sd.study.file) for sd in STUDIES.values())})")


COMPUTE = os.environ.get("MT_COMPUTE", "inline" if PROFILE == "tiny" else "pipes")

defs = dg.Definitions(
    assets=[a for sd in STUDIES.values() for a in sd.assets],
    jobs=[j for sd in STUDIES.values() for j in sd.jobs.values()],
    resources={
        # each study reads and writes its own root; judge and W&B are each asset's study's (mt_resources)
        "store": ArtifactStore(roots={name: str(sd.root) for name, sd in STUDIES.items()}),
        "gpu": GpuAllocator(ray=COMPUTE == "ray"),
        # heavy steps in the step process (the fast tiny demo), in a Pipes child process (MT_COMPUTE=pipes) or as a
        # Ray job on a cluster (MT_COMPUTE=ray, RAY_ADDRESS: docs/SCALING.md)
        "compute": Compute(mode=COMPUTE),
        "judge": JudgeResource(),
        "wandb": WandbResource.from_env(),
    },
    # One process per run: torch/peft are imported once per run, not once per step (docs/DESIGN.md: import cost).
    executor=dg.in_process_executor,
)
