"""Thin Dagster assets over ``mt_core``: inputs, coupling (per source), cells (per cell), analysis; built per study."""
import dagster as dg

from mt_assets import analysis, cells, coupling, inputs
from mt_assets.study import StudyDefs
from mt_core.config import Study
from mt_run.runs import STAGES, STUDY_TAG
from mt_settings import Settings

MODULES = dict(zip(STAGES, (inputs, coupling, cells, analysis)))


def build(study: Study, settings: Settings | None = None) -> StudyDefs:
    """One study's assets, checks and jobs (``<study>__inputs_job`` ...), every key prefixed with the study's name;
    every run of its jobs carries the tag ``mt/study=<name>``."""
    sd = StudyDefs(study, settings)
    for stage, module in MODULES.items():
        defs = module.build(sd)
        sd.assets += defs
        parts = {"coupling_job": sd.coupling_partitions, "cell_job": sd.cells_partitions}.get(stage)
        sd.jobs[stage] = dg.define_asset_job(sd.job(stage), selection=defs, partitions_def=parts,
                                             tags={STUDY_TAG: study.name},
                                             description=f"{study.name}: {module.DESCRIPTION}")
    return sd
