"""The study this code location serves ($MT_STUDY, $MT_PROFILE) and the partitions generated from it."""
from __future__ import annotations

import dagster as dg

from mt_core.config import load_study

STUDY = load_study()

cells_partitions = dg.StaticPartitionsDefinition(STUDY.cells)
sources_partitions = dg.StaticPartitionsDefinition(STUDY.source_keys)
cell_to_source = dg.StaticPartitionMapping(STUDY.cell_source_map())
