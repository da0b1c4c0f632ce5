"""The headline of a study as `mt report` shows it: the current study as the Dagster instance recorded it (the same
rule as the study summary), or a study imported from the reference's result files."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    name: str
    head: dict  # mt_core.report.stats.headline
    preregistered: dict
    gates: dict
    incomplete: str | None = None  # the INCOMPLETE line of a partial grid
    missing: dict = field(default_factory=dict)
    unrecorded: list = field(default_factory=list)
    lengths: dict = field(default_factory=dict)  # {cell: its completion_length audit, None if it has none}
    sweep: dict | None = None  # the coupling sweep's grid (``coupling_sweep``), for a study with one


def current_cells(sd, instance, store):
    """(cells, gates, verified) of the current study: a ``cell_numbers`` value per complete cell, the gates of the
    sources' coupling adapters, and ``mt_assets.analysis.verify_study``'s findings (what is missing). Every artefact
    is the one the Dagster instance's latest materialization recorded (its md5), checked as an asset checks its
    upstream; a recorded artefact that fails verification raises ArtifactError naming it and the fix."""
    from mt_assets.analysis import verify_study
    from mt_core.layout import Adapter, AlignmentScores, ArcScores, Audit, MarkerRates, cell_numbers

    study = sd.study
    v = verify_study(sd, instance, store)
    cells = []
    for k, arts in v.cells.items():
        c = study.cell(k)
        cells.append(cell_numbers(k, c.condition, c.seed, *(arts[x.asset].path for x in (MarkerRates, ArcScores,
                                                                                        AlignmentScores, Audit)),
                                  own_persona=study.adapter_persona(k)))
    gates = {g: r for art in v.sources.values() for g, r in Adapter.read_gates(art.path).items()}
    return cells, gates, v


def cells_json(rep: Report) -> dict:
    """`mt report --json`'s per-cell blocks: {"cells": {cell: {"length": its completion-length audit, pooled over
    personas, with ``max_tokens`` and ``per_persona``}}}; ``length`` None where a cell has none (an imported study)."""
    return {"cells": {k: {"length": a and {x: v for x, v in a.items() if x not in ("cell", "marker")}}
                      for k, a in rep.lengths.items()}}


def study_report(sd, name: str, store, instance) -> Report | None:
    """The report of study ``name``: the current study ``sd`` (from ``instance``), or one imported under the store's
    root; None when there is no such study. Raises SystemExit when no cell has published its numbers yet."""
    from mt_core.io import read_json
    from mt_core.layout import LEGACY, CompletionLength, Legacy
    from mt_core.report import stats
    from mt_core.report.legacy import read_cells
    from mt_core.steps.analysis import descriptions, incomplete_line, preregistered

    study = sd.study
    out = Report(name, {}, {}, {})
    if name == study.name:
        cells, out.gates, v = current_cells(sd, instance, store)
        src, asst, marker = study.source_persona, study.assistant_persona, study.marker
        order = list(study.conditions)
        out.missing, out.unrecorded = v.missing, v.unrecorded
        out.incomplete = incomplete_line(study, v.missing, v.missing_sources)
        out.lengths = {k: CompletionLength.read(arts[CompletionLength.asset].path) for k, arts in v.cells.items()}
        if study.coupling_sweep:
            from mt_assets.analysis import recorded_artefact
            from mt_core.layout import CouplingSweepGrid

            sw = recorded_artefact(sd, instance, store.of(study.name), CouplingSweepGrid.asset, None)
            out.sweep = CouplingSweepGrid.read(sw.path) if sw else None
    elif name in [p for _, p in store.published(LEGACY)]:
        d = store.read(LEGACY, name).path
        meta, cells = read_cells(d)
        src, asst, marker = meta["source_persona"], meta["assistant_persona"], meta["marker"]
        order = list(dict.fromkeys(c.condition for c in cells))
        out.gates = read_json(d / Legacy.GATES)
        out.lengths = {c.cell: None for c in cells}  # the reference's result files record no lengths
    else:
        return None
    if not cells:
        raise SystemExit(f"study {name!r}: no cell has published marker rates (with all its other artefacts) "
                         f"recorded in the Dagster instance under {store.root} yet (run `make demo`)")
    out.preregistered = preregistered(study, cells, source=src, assistant=asst)  # the reference's EM conditions too
    out.head = stats.headline(cells, study=name, source=src, assistant=asst, conditions_order=order, marker=marker,
                              excluded={x["cell"] for x in out.preregistered["g4_exclusions"]},
                              descriptions=descriptions(study) if name == study.name else None)
    return out
