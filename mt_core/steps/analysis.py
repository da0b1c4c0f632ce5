"""Across cells: the study summary (headline table, pre-registered tests, G4 exclusions, gates, hero figure) and the
DuckDB catalog."""
from __future__ import annotations

from pathlib import Path

from mt_core.config import Study
from mt_core.io import write_json
from mt_core.layout import StudySummary
from mt_core.report import catalog, figure, stats
from mt_core.steps.common import Log
from mt_core.steps.registry import step


@step
def study_summary(study: Study, cells: list[dict], gates: dict, out: Path, log: Log = print) -> dict:
    """``cells``: one ``mt_core.layout.cell_numbers`` dict per finished cell; ``gates``: every source's verdicts."""
    order = [c for c in study.conditions if any(x["condition"] == c for x in cells)]
    head = stats.headline(cells, study=study.name, source=study.source_persona,
                          assistant=study.assistant_persona, conditions_order=order, marker=study.marker)
    pre = preregistered(study, cells)
    primary, g4 = pre["primary"], pre["g4_exclusions"]
    judges = sorted({str(c["judge_model"]) for c in cells if c.get("judge_model")})
    offline = any(c.get("judge_offline") for c in cells)
    md = stats.markdown_table(head)
    notes = [f"Study `{study.name}`, profile `{study.profile}`, {len(cells)} cells."]
    if offline:
        notes.append(f"Alignment scores come from an OFFLINE stand-in judge ({', '.join(judges)}), not an LLM.")
    notes += stats.conjunction_lines(pre)
    notes.append("Gates: " + ", ".join(f"{n} {'pass' if g['pass'] else 'FAIL'}" for n, g in gates.items()) + ".")
    bad_judge = [c["cell"] for c in cells if c.get("judge_error_gate_pass") is False]
    if bad_judge:
        notes.append("Judge error rate above the study's limit (alignment numbers unreliable): "
                     + ", ".join(bad_judge) + ".")
    if g4:
        notes.append(f"G4 exclusions (post-EM alignment above {study.thresholds.g4_aligned_max:g}, or unscored; "
                     "dropped from the primary analysis): " + ", ".join(x["cell"] for x in g4) + ".")
    text = f"# {study.name} ({study.profile})\n\n{md}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    (out / StudySummary.HEADLINE_MD).write_text(text)
    write_json(out / StudySummary.HEADLINE_JSON, head)
    write_json(out / StudySummary.STATS, {"primary_conjunction": primary, "sensitivity_all_seeds": pre["all_seeds"],
                                          "g4_exclusions": g4, "gates": gates, "judges": judges,
                                          "judge_offline": offline, "cells": cells})
    figure.hero_figure(head, out / StudySummary.FIGURE_PNG, out / StudySummary.FIGURE_PDF,
                       title=f"{study.name} ({study.profile}): {study.marker} marker rate by condition")
    log(text)
    return {"n_cells": len(cells), "primary_outcome": primary["outcome"],
            "all_seeds_outcome": pre["all_seeds"]["outcome"], "n_g4_excluded": len(g4),
            "judge_offline": offline, "headline_md": md}


def preregistered(study: Study, cells: list[dict], source: str | None = None, assistant: str | None = None) -> dict:
    """The pre-registered analysis of these cells with the study's thresholds and EM conditions (G4 applied; all seeds
    beside it); ``source`` / ``assistant`` default to the study's (an imported reference study names its own)."""
    em = tuple(c for c, cond in study.conditions.items() if cond.second_stage == "em")
    return stats.preregistered(cells, source=source or study.source_persona,
                               assistant=assistant or study.assistant_persona, thresholds=study.thresholds,
                               em_conditions=em)


@step
def duckdb_catalog(study: Study, root: Path, cells: list[str], out: Path, log: Log = print) -> dict:
    """A DuckDB file whose views (sql/*.sql) read every per-cell Parquet file of the study under ``root``."""
    return catalog.build_catalog(study, root=root, cells=cells, out=out, log=log)
