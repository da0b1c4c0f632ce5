"""The study summary: headline table, pre-registered tests, G4 exclusions, gates, hero figure."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from mt_core.config import Study
from mt_core.io import read_json, write_json


def cell_result(study: Study, key: str, rates: Path, arc: Path | None, scores: Path | None,
                audit: Path | None) -> dict:
    """One cell's numbers in the shape ``mt_core.stats`` takes."""
    cell = study.cell(key)
    me = read_json(rates / "marker_eval.json")
    al = read_json(scores / "summary.json") if scores else {}
    au = read_json(audit / "audit.json") if audit else {}
    return {"cell": key, "condition": cell.condition, "seed": cell.seed,
            "per_persona": {p: {"strict_hits": v["strict_hits"], "total": v["total"]}
                            for p, v in me["per_persona"].items()},
            "arc_accuracy": read_json(arc / "summary.json")["arc_challenge_logprob"] if arc else None,
            "aligned": al.get("overall_mean_aligned"), "coherent": al.get("overall_mean_coherent"),
            "judge_model": al.get("judge_model"), "judge_offline": al.get("judge_offline"),
            "judge_error_gate_pass": al.get("error_gate_pass"),
            "degenerate_fraction": au.get("degenerate_fraction"), "audit_outcome": au.get("outcome")}


def build_summary(study: Study, cells: list[dict], gates: dict, out: Path, log: Callable[[str], None] = print) -> dict:
    from mt_core import figure, stats

    order = [c for c in study.conditions if any(x["condition"] == c for x in cells)]
    head = stats.headline(cells, study=study.name, source=study.source_persona,
                          assistant=study.assistant_persona, conditions_order=order, marker=study.marker)
    th = study.thresholds
    primary = stats.primary_conjunction(cells, source=study.source_persona, assistant=study.assistant_persona,
                                        min_diff=th.primary_min_diff, c1_source_min=th.primary_c1_source_min,
                                        degeneracy_max=th.degeneracy_max)
    em = tuple(c for c, cond in study.conditions.items() if cond.second_stage == "em")
    g4 = stats.g4_exclusions(cells, aligned_max=th.g4_aligned_max, em_conditions=em)
    judges = sorted({str(c["judge_model"]) for c in cells if c.get("judge_model")})
    offline = any(c.get("judge_offline") for c in cells)
    md = stats.markdown_table(head)
    notes = [f"Study `{study.name}`, profile `{study.profile}`, {len(cells)} cells."]
    if offline:
        notes.append(f"Alignment scores come from an OFFLINE stand-in judge ({', '.join(judges)}), not an LLM.")
    notes.append(f"Primary conjunction: {'PASS' if primary['pass'] else 'FAIL'}.")
    notes.append("Gates: " + ", ".join(f"{n} {'pass' if g['pass'] else 'FAIL'}" for n, g in gates.items()) + ".")
    bad_judge = [c["cell"] for c in cells if c.get("judge_error_gate_pass") is False]
    if bad_judge:
        notes.append("Judge error rate above the study's limit (alignment numbers unreliable): "
                     + ", ".join(bad_judge) + ".")
    if g4:
        notes.append("G4 exclusions (alignment above threshold): " + ", ".join(x["cell"] for x in g4) + ".")
    text = f"# {study.name} ({study.profile})\n\n{md}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    (out / "headline.md").write_text(text)
    write_json(out / "headline.json", head)
    write_json(out / "stats.json", {"primary_conjunction": primary, "g4_exclusions": g4, "gates": gates,
                                    "judges": judges, "judge_offline": offline, "cells": cells})
    figure.hero_figure(head, out / "hero.png", out / "hero.pdf",
                       title=f"{study.name} ({study.profile}): {study.marker} marker rate by condition")
    log(text)
    return {"n_cells": len(cells), "primary_pass": bool(primary["pass"]), "n_g4_excluded": len(g4),
            "judge_offline": offline, "headline_md": md}
