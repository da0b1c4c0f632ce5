"""Study-level assets: the summary (table, tests, figure) and the DuckDB catalog over every per-cell file."""

import dagster as dg

from mt_assets.common import publish, read_upstream
from mt_assets.study import STUDY, code_version
from mt_core.layout import PER_CELL, Adapter, AlignmentScores, ArcScores, Audit, MarkerRates, cell_numbers
from mt_core.steps import analysis as steps
from mt_resources import ArtifactError, ArtifactStore

GROUP = "analysis"


def _cells(context, store: ArtifactStore):
    """Every cell with all its per-cell artefacts, verified; the others are reported missing."""
    have, missing = {}, {}
    for key in STUDY.cells:
        try:
            have[key] = {a: read_upstream(context, store, a, key) for a in PER_CELL}
        except ArtifactError as e:
            missing[key] = str(e)
    for key, why in missing.items():
        context.log.warning(f"cell {key} left out: {why}")
    return have, missing


@dg.asset(group_name=GROUP, deps=[*PER_CELL, "coupling_adapter"],
          code_version=code_version("thresholds", "conditions", "sources", "marker", "source_persona",
                                    "assistant_persona"),
          description="Headline table, pre-registered conjunction, G4 exclusions, gates and the hero figure.")
def study_summary(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
    have, missing = _cells(context, store)
    if not have:
        raise dg.Failure("no cell has all its artefacts yet; materialize some cells first")
    gates, ups = {}, [a for arts in have.values() for a in arts.values()]
    for src in STUDY.sources:
        try:
            art = read_upstream(context, store, "coupling_adapter", src)
        except ArtifactError as e:
            context.log.warning(str(e))
            continue
        ups.append(art)
        gates.update(Adapter.read_gates(art.path))
    cells = []
    for key, a in have.items():
        c = STUDY.cell(key)
        cells.append(cell_numbers(key, c.condition, c.seed, a[MarkerRates.asset].path, a[ArcScores.asset].path,
                                  a[AlignmentScores.asset].path, a[Audit.asset].path,
                                  own_persona=STUDY.adapter_persona(key)))
    return publish(context, store, steps.study_summary, ups, cells=cells, gates=gates,
                   metadata={"missing_cells": sorted(missing)})


@dg.asset(group_name=GROUP, deps=["study_summary", *PER_CELL], code_version=code_version("conditions"),
          description="A DuckDB file whose views (sql/*.sql) read every per-cell Parquet file of the study.")
def duckdb_catalog(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
    have, _ = _cells(context, store)
    ups = [a for arts in have.values() for a in arts.values()]
    return publish(context, store, steps.duckdb_catalog, ups, root=store.base, cells=sorted(have))


assets = [study_summary, duckdb_catalog]
