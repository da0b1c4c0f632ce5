"""The study this code location serves ($MT_STUDY, $MT_PROFILE) and the partitions generated from it."""
from __future__ import annotations

import dagster as dg

from mt_core.config import load_study

STUDY = load_study()

cells_partitions = dg.StaticPartitionsDefinition(STUDY.cells)
sources_partitions = dg.StaticPartitionsDefinition(STUDY.source_keys)
cell_to_source = dg.StaticPartitionMapping(STUDY.cell_source_map())


def code_version(*paths: str, files: tuple[str, ...] = ()) -> str:
    """An asset's code version: the study values its step uses (dotted config paths) and the contents of the files it
    reads by path, so the UI shows "code version changed" after a YAML edit and `mt run` redoes exactly what it
    affects."""
    from mt_core.io import md5_file

    return STUDY.version_of(*paths, extra="".join(md5_file(STUDY.path(f)) for f in files))
