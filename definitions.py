"""The one Dagster code location of the platform: assets, checks, jobs and resources for the configured study.

The study is ``$MT_STUDY`` (default: studies/marker_transfer_villain.yaml) under profile ``$MT_PROFILE`` (default
``tiny``). Artefacts live under ``mt_core.layout.artefact_root`` ($MT_ARTIFACTS, default
``artifacts/<study>/<profile>``).
"""
from __future__ import annotations

import os

import dagster as dg

from mt_assets import ALL_ASSETS, analysis, cells, coupling, inputs
from mt_assets.study import STUDY, cells_partitions, sources_partitions
from mt_core.layout import artefact_root
from mt_resources import ArtifactStore, Compute, GpuAllocator, JudgeResource, WandbResource

ARTIFACTS = artefact_root(STUDY)

inputs_job = dg.define_asset_job("inputs_job", selection=inputs.assets,
                                 description="Reference data, base model and second-stage datasets.")
coupling_job = dg.define_asset_job("coupling_job", selection=coupling.assets, partitions_def=sources_partitions,
                                   description="One source persona's coupling adapter, from on-policy data to gates.")
cell_job = dg.define_asset_job("cell_job", selection=cells.assets, partitions_def=cells_partitions,
                               description="Everything of one cell: adapter, marker eval, ARC, alignment, audit.")
analysis_job = dg.define_asset_job("analysis_job", selection=analysis.assets,
                                   description="Study summary, figure and DuckDB catalog.")

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[inputs_job, coupling_job, cell_job, analysis_job],
    resources={
        "store": ArtifactStore(root=str(ARTIFACTS)),
        "gpu": GpuAllocator(),
        # heavy steps in the step process (the fast tiny demo) or in a Pipes child process (MT_COMPUTE=pipes)
        "compute": Compute(mode=os.environ.get("MT_COMPUTE", "inline" if STUDY.profile == "tiny" else "pipes")),
        "judge": JudgeResource.for_study(STUDY, ARTIFACTS),
        "wandb": WandbResource.for_study(STUDY),
    },
    # One process per run: torch/peft are imported once per run, not once per step (docs/DESIGN.md: import cost).
    executor=dg.in_process_executor,
)
