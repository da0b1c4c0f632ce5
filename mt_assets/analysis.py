"""Study-level assets: the summary (table, tests, figure) and the DuckDB catalog over every per-cell file."""

import dagster as dg

from mt_assets.common import publish, read_upstream
from mt_assets.study import StudyDefs
from mt_core.layout import PER_CELL, Adapter, AlignmentScores, ArcScores, Audit, MarkerRates, cell_numbers
from mt_core.steps import analysis as steps
from mt_resources import ArtifactError, ArtifactStore

GROUP = "analysis"
DESCRIPTION = "Study summary, figure and DuckDB catalog."


def complete_cells(sd: StudyDefs, context, store: ArtifactStore):
    """Every cell of the study with all its per-cell artefacts, verified; the others are reported missing."""
    have, missing = {}, {}
    for key in sd.study.cells:
        try:
            have[key] = {a: read_upstream(sd, context, store, a, key) for a in PER_CELL}
        except ArtifactError as e:
            missing[key] = str(e)
    for key, why in missing.items():
        context.log.warning(f"cell {key} left out: {why}")
    return have, missing


def build(sd: StudyDefs) -> list:
    """The study's summary and its DuckDB catalog."""
    study, cv, key = sd.study, sd.code_version, sd.key
    common = dict(group_name=GROUP, key_prefix=sd.prefix)

    @dg.asset(**common, deps=[*map(key, PER_CELL), key("coupling_adapter")],
              code_version=cv("thresholds", "conditions", "sources", "marker", "source_persona",
                              "assistant_persona"),
              description="Headline table, pre-registered conjunction, G4 exclusions, gates and the hero figure.")
    def study_summary(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        have, missing = complete_cells(sd, context, store)
        if not have:
            raise dg.Failure("no cell has all its artefacts yet; materialize some cells first")
        gates, ups = {}, [a for arts in have.values() for a in arts.values()]
        for src in study.sources:
            try:
                art = read_upstream(sd, context, store, "coupling_adapter", src)
            except ArtifactError as e:
                context.log.warning(str(e))
                continue
            ups.append(art)
            gates.update(Adapter.read_gates(art.path))
        cells = []
        for k, a in have.items():
            c = study.cell(k)
            cells.append(cell_numbers(k, c.condition, c.seed, a[MarkerRates.asset].path, a[ArcScores.asset].path,
                                      a[AlignmentScores.asset].path, a[Audit.asset].path,
                                      own_persona=study.adapter_persona(k)))
        return publish(sd, context, store, steps.study_summary, ups, cells=cells, gates=gates,
                       metadata={"missing_cells": sorted(missing)})

    @dg.asset(**common, deps=[key("study_summary"), *map(key, PER_CELL)], code_version=cv("conditions"),
              description="A DuckDB file whose views (sql/*.sql) read every per-cell Parquet file of the study; "
                          "`mt sql` queries every study's catalog in the instance at once.")
    def duckdb_catalog(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        have, _ = complete_cells(sd, context, store)
        ups = [a for arts in have.values() for a in arts.values()]
        return publish(sd, context, store, steps.duckdb_catalog, ups, root=store.of(sd.name).base,
                       cells=sorted(have))

    return [study_summary, duckdb_catalog]
