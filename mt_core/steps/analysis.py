"""Across cells: the study summary (headline table, pre-registered tests, G4 exclusions, gates, hero figure) and the
DuckDB catalog."""
from __future__ import annotations

import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

from mt_core.config import Study
from mt_core.evals.length import caveat_line
from mt_core.io import write_json
from mt_core.layout import (PER_CELL, Adapter, CouplingSweepGrid, ProbeScores, ProbeStates, StudySummary, row_keys,
                            write_rows)
from mt_core.records import CellNumbers
from mt_core.report import catalog, figure, html, stats
from mt_core.steps.common import Log
from mt_core.steps.registry import step


def incomplete_line(study: Study, missing: Mapping[str, Sequence[str]] | None,
                    missing_sources: Sequence[str] = ()) -> str | None:
    """None when every cell of the study (and every source's gates) is there; else one line, ``INCOMPLETE: 12 of 13
    cells; missing C1_s7 marker_rates; ...``, that the headline, the summary and `mt report` put above their table:
    numbers over a partial grid are never shown as if they were the study's."""
    missing = {k: list(v) for k, v in (missing or {}).items() if v}
    if not missing and not missing_sources:
        return None
    n = len(study.cells)
    parts = [f"{k} " + ("(nothing materialized)" if set(v) >= set(PER_CELL) else ", ".join(v))
             for k, v in sorted(missing.items(), key=lambda kv: study.cells.index(kv[0])
                                if kv[0] in study.cells else len(study.cells))]
    line = f"INCOMPLETE: {n - len(missing)} of {n} cells"
    if parts:
        line += "; missing " + "; ".join(parts)
    if missing_sources:
        line += f"; gates of {', '.join(missing_sources)} not materialized (coupling_adapter)"
    return line


@step
def study_summary(study: Study, cells: list[CellNumbers], gates: dict, out: Path, log: Log = print,
                  missing: dict[str, list[str]] | None = None, missing_sources: list[str] | None = None,
                  unrecorded: list[str] | None = None, provenance: list[dict] | None = None,
                  lengths: dict[str, dict] | None = None, probe: dict | None = None,
                  eval_sets: dict[str, dict] | None = None, sweep: dict | None = None) -> dict:
    """``cells``: one ``mt_core.layout.cell_numbers`` value per complete cell; ``gates``: every source's verdicts;
    ``missing``: {cell: its per-cell artefacts the instance has no materialization of}, ``missing_sources``: the
    sources without a coupling adapter, ``unrecorded``: artefact folders on disk the instance never recorded (left
    out); ``provenance``: {asset, partition, md5} of every artefact read, for the report; ``lengths``: {cell: its
    completion_length audit}, for the headline's length caveat; ``probe``: the latent probe's summary, if the study
    has one; ``eval_sets``: {cell: its marker counts per eval set}, for a study with further question sets;
    ``sweep``: the coupling sweep's grid (``coupling_sweep``), for a study with one. Anything
    missing marks the headline, its JSON, the
    report and the metadata INCOMPLETE (docs/DESIGN.md)."""
    incomplete = incomplete_line(study, missing, missing_sources or ())
    order = [c for c in study.conditions if any(x.condition == c for x in cells)]
    pre = preregistered(study, cells)
    primary, g4 = pre["primary"], pre["g4_exclusions"]
    head = stats.headline(cells, study=study.name, source=study.source_persona,
                          assistant=study.assistant_persona, conditions_order=order, marker=study.marker,
                          excluded={x["cell"] for x in g4}, descriptions=descriptions(study))
    judges = sorted({str(c.judge_model) for c in cells if c.judge_model})
    offline = any(c.judge_offline for c in cells)
    md = stats.markdown_table(head)
    notes = [f"Study `{study.name}`, profile `{study.profile}`, {len(cells)} of {len(study.cells)} cells."]
    if unrecorded:
        notes.append("Left out, on disk but never recorded by this Dagster instance: " + ", ".join(unrecorded) + ".")
    if offline:
        notes.append(f"Alignment scores come from an OFFLINE stand-in judge ({', '.join(judges)}), not an LLM.")
    notes += stats.conjunction_lines(pre)
    notes.append("Gates: " + ", ".join(f"{n} {'pass' if g['pass'] else 'FAIL'}" for n, g in gates.items()) + ".")
    bad_judge = [c.cell for c in cells if c.judge_error_gate_pass is False]
    if bad_judge:
        notes.append("Judge error rate above the study's limit (alignment numbers unreliable): "
                     + ", ".join(bad_judge) + ".")
    if g4:
        notes.append(f"G4 exclusions (post-EM alignment above {study.thresholds.g4_aligned_max:g}, or unscored; "
                     "dropped from the primary analysis): " + ", ".join(x["cell"] for x in g4) + ".")
    if line := length_line(study, cells, lengths or {}):
        notes.append(line)
    if line := probe_line(probe):
        notes.append(line)
    if line := eval_set_line(study, cells, eval_sets or {}):
        notes.append(line)
    banner = f"**{incomplete}**\n\n" if incomplete else ""
    text = f"# {study.name} ({study.profile})\n\n{banner}{md}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if sweep:
        text += f"\n## Coupling sweep\n\n{sweep_markdown(sweep)}\n"
    (out / StudySummary.HEADLINE_MD).write_text(text)
    status = {"complete": incomplete is None, "incomplete": incomplete, "missing": missing or {},
              "missing_sources": list(missing_sources or [])}
    write_json(out / StudySummary.HEADLINE_JSON, {**head, **status})
    write_json(out / StudySummary.STATS, {**status, "primary_conjunction": primary,
                                          "sensitivity_all_seeds": pre["all_seeds"], "g4_exclusions": g4,
                                          "gates": gates, "judges": judges, "judge_offline": offline,
                                          "cells": [c.model_dump() for c in cells]})
    title = f"{study.name} ({study.profile}): {study.marker} marker rate by condition"
    if incomplete:
        title += f"\nINCOMPLETE: {len(cells)} of {len(study.cells)} cells"
    figure.hero_figure(head, out / StudySummary.FIGURE_PNG, out / StudySummary.FIGURE_PDF, title=title)
    report = html.render_report(
        study=study.name, profile=study.profile, n_cells=len(cells), n_study_cells=len(study.cells),
        incomplete=incomplete, headline_md=md, notes=notes, figure_png=(out / StudySummary.FIGURE_PNG).read_bytes(),
        preregistered=pre, g4_aligned_max=study.thresholds.g4_aligned_max, gates=gates,
        gate_models={n: g.model for n, g in study.gates.named().items()}, provenance=provenance or [],
        environment=environment(study), sweep=sweep_table(sweep) if sweep else None)
    (out / StudySummary.REPORT_HTML).write_text(report, encoding="utf-8")
    log(text)
    return {"n_cells": len(cells), "complete": incomplete is None, "incomplete": incomplete,
            "missing_cells": sorted(missing or {}), "primary_outcome": primary["outcome"],
            "all_seeds_outcome": pre["all_seeds"]["outcome"], "n_g4_excluded": len(g4),
            "judge_offline": offline, "headline_md": banner + md}


@step
def coupling_sweep(study: Study, adapters: dict[str, Path], out: Path, log: Log = print) -> dict:
    """The coupling sweep's grid from the swept partitions' adapters ({partition: its coupling_adapter artefact}):
    per variant its recipe values, the rule gate's rates, ARC-Challenge and the rule's verdict (``Adapter.SWEEP``);
    ``chosen``: a condition builds on it; ``best``: of those that pass, the highest source rate (then ARC)."""
    import polars as pl

    rule = study.coupling_sweep.rule
    used = {study.cell(c).coupling for c in study.cells}
    rows = []
    for part in (k for k in study.coupling_keys if k in adapters):
        v = Adapter.read_sweep(adapters[part])
        if v is None:
            raise ValueError(f"coupling_adapter[{part}] has no {Adapter.SWEEP}: re-materialize it")
        rows.append({"study": study.name, "profile": study.profile, "source": v["source"], "variant": v["variant"],
                     "partition": part, **v["recipe"], "source_rate": v["source_rate"],
                     "assistant_rate": v["assistant_rate"], "max_bystander_rate": v["max_bystander_rate"],
                     "arc_accuracy": v["arc_accuracy"], "gates_passed": v["gates_passed"], "passed": v["passed"],
                     "chosen": part in used, "best": False})
    passing = [r for r in rows if r["passed"]]
    best = max(passing, key=lambda r: (r["source_rate"], r["arc_accuracy"]), default=None)
    if best:
        best["best"] = True
    fields = study.coupling_sweep_fields
    if rows:
        write_rows(rows, out / CouplingSweepGrid.ROWS, row_keys(study))
    else:  # no swept adapter yet (e.g. `mt run --cells` of raw-base cells): an empty grid with its columns
        text = ("study", "profile", "source", "variant", "partition")
        flag = ("gates_passed", "passed", "chosen", "best")
        pl.DataFrame(schema={**{c: pl.Utf8 for c in text}, **{f: pl.Float64 for f in fields},
                             **{c: pl.Float64 for c in ("source_rate", "assistant_rate", "max_bystander_rate",
                                                        "arc_accuracy")},
                             **{c: pl.Boolean for c in flag}}).write_parquet(out / CouplingSweepGrid.ROWS)
    summary = {"rule": rule.model_dump(), "rows": rows, "best": best and best["partition"],
               "chosen": [r["partition"] for r in rows if r["chosen"]], "fields": fields}
    write_json(out / CouplingSweepGrid.SUMMARY, summary)
    log(f"coupling sweep: {len(passing)} of {len(rows)} partitions pass the rule; best "
        f"{best['partition'] if best else 'none'}")
    return {"n_variants": len(rows), "n_passed": len(passing), "best": best["partition"] if best else None}


def sweep_table(sweep: Mapping) -> tuple[list[str], list[list]]:
    """The sweep's grid as (header, rows) for the headline and the HTML report."""
    head = ["partition", *sweep["fields"], "source rate", "max bystander", "ARC", "rule", "gates", "chosen", "best"]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    rows = [[r["partition"], *(f"{r[f]:g}" if isinstance(r[f], float) else str(r[f]) for f in sweep["fields"]),
             pct(r["source_rate"]), pct(r["max_bystander_rate"]), f"{r['arc_accuracy']:.3f}",
             "pass" if r["passed"] else "FAIL", "pass" if r["gates_passed"] else "FAIL",
             "yes" if r["chosen"] else "", "yes" if r["best"] else ""] for r in sweep["rows"]]
    return head, rows


def sweep_markdown(sweep: Mapping) -> str:
    from mt_core.config.schema import SweepRule

    if not sweep["rows"]:
        return "No swept coupling adapter is materialized yet."
    head, rows = sweep_table(sweep)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    return ("\n".join(lines) + f"\n\nRule (the reference's): {SweepRule.model_validate(sweep['rule']).text()}; "
            f"best: of the passing, the highest source rate (then ARC): {sweep['best'] or 'none passes'}.")


@step
def probe_scores(study: Study, states: dict[str, Path], out: Path, log: Log = print) -> dict:
    """The latent probe over the cells whose states are given ({cell: its probe_states artefact}): reference probes
    fitted on the first seed of ``probe.reference`` that is there, their scores of every cell's personas, each cell's
    own probe (held-out AUC, cosine to the reference) and the secondary analysis (``mt_core.evals.probe``)."""
    import numpy as np
    import polars as pl

    from mt_core.evals import probe as pr

    cfg = study.probe
    ref = next((c for c in study.cells if c in states and study.cell(c).condition == cfg.reference), None)
    if ref is None:
        raise ValueError(f"probe.reference {cfg.reference}: no cell of it has probe_states yet (have: "
                         f"{', '.join(states) or 'none'}); materialize {cfg.reference}'s cells first")
    loaded = {}
    for cell in (c for c in study.cells if c in states):
        df = pl.read_parquet(Path(states[cell]) / ProbeStates.ROWS).sort("persona", "question_idx", "layer")
        first = df.filter(pl.col("layer") == cfg.layers[0])
        x = np.stack([np.asarray(df.filter(pl.col("layer") == layer)["state"].to_list(), dtype=np.float64)
                      for layer in cfg.layers], axis=1)
        loaded[cell] = {"x": x, "persona": first["persona"].to_numpy(), "question": first["question_idx"].to_numpy()}
    probes, scores, cells = pr.score_study(loaded, reference=ref, source=study.source_persona,
                                           assistant=study.assistant_persona, layers=cfg.layers, seed=cfg.seed,
                                           heldout=cfg.heldout)
    cond = {c: study.cell(c).condition for c in loaded}
    seed = {c: study.cell(c).seed for c in loaded}
    keys = lambda r: {**r, "condition": cond[r["cell"]], "seed": seed[r["cell"]]}  # noqa: E731
    write_rows([keys(r) for r in scores], out / ProbeScores.ROWS, row_keys(study))
    write_rows([keys(r) for r in cells], out / ProbeScores.CELLS, row_keys(study))
    second = pr.secondary(cells, cond, cfg.compare, cfg.layers)
    write_json(out / ProbeScores.SUMMARY, {
        "reference_cell": ref, "source": study.source_persona, "assistant": study.assistant_persona,
        "layers": cfg.layers, "cells": list(loaded),
        "reference": {str(layer): {"heldout_auc": p.heldout_auc, "n_train": p.n_train, "n_heldout": p.n_heldout,
                                   "intercept": p.intercept, "coef": p.coef.tolist()} for layer, p in probes.items()},
        "secondary": second})
    aucs = {layer: round(p.heldout_auc, 3) for layer, p in probes.items()}
    log(f"probe: reference {ref}, held-out AUC by layer {aucs}; {len(loaded)} cells scored")
    return {"reference_cell": ref, "reference_heldout_auc": {str(k): v for k, v in aucs.items()},
            "n_cells": len(loaded),
            "secondary_p": {k: v["p"] for k, v in second["per_layer"].items()}}


def eval_set_line(study: Study, cells: list[CellNumbers], eval_sets: Mapping[str, dict]) -> str | None:
    """The headline's line for a study's further question sets: per set and condition, the assistant's and the
    source persona's strict marker rate pooled over the condition's seeds (the same completions' in-distribution
    rates are the table's)."""
    if not eval_sets:
        return None
    names = sorted({n for per in eval_sets.values() for n in per} - {"in_distribution"})
    parts = []
    for name in names:
        conds = []
        for cond in dict.fromkeys(c.condition for c in cells):
            keys = [c.cell for c in cells if c.condition == cond and c.cell in eval_sets]
            rates = []
            for persona in (study.assistant_persona, study.source_persona):
                hits = sum(eval_sets[k].get(name, {}).get(persona, {}).get("strict_hits", 0) for k in keys)
                n = sum(eval_sets[k].get(name, {}).get(persona, {}).get("total", 0) for k in keys)
                rates.append(f"{persona} {hits}/{n}" + (f" ({hits / n:.1%})" if n else ""))
            conds.append(f"{cond} " + ", ".join(rates))
        parts.append(f"{name}: " + "; ".join(conds))
    return ("Marker rates on the study's further question sets (not pre-registered; the table reads the eval set's "
            "own questions): " + " | ".join(parts) + ".")


def probe_line(probe: Mapping | None) -> str | None:
    """The headline's line for the latent probe (not pre-registered), from its summary."""
    if not probe:
        return None
    aucs = ", ".join(f"layer {k} {v['heldout_auc']:.2f}" for k, v in probe["reference"].items())
    tests = []
    for k, v in probe["secondary"]["per_layer"].items():
        got = f"p {v['p']:.3g}" if v["p"] is not None else v["reason"]
        diff = f"{v['mean_diff']:+.3f}" if v["mean_diff"] is not None else "n/a"
        tests.append(f"layer {k} {v['a']} - {v['b']} {diff} ({got}: {v['outcome']})")
    return (f"Latent probe (not pre-registered): {probe['source']} vs {probe['assistant']} voice fitted on "
            f"{probe['reference_cell']}, held-out AUC {aucs}; the assistant's reference-probe score, "
            + "; ".join(tests) + ".")


def length_line(study: Study, cells: list[CellNumbers], lengths: Mapping[str, dict]) -> str | None:
    """The headline's completion-length caveat for the assistant persona; the reference is the condition without a
    second stage (C4: the coupled model before EM), the one a post-EM model's lengths are compared with."""
    ref = next((c for c, x in study.conditions.items() if x.second_stage == "none"), None)
    return caveat_line({c.cell: lengths[c.cell] for c in cells if c.cell in lengths},
                       {c.cell: c.condition for c in cells}, persona=study.assistant_persona, reference=ref)


REPORTED_PACKAGES = ("dagster", "torch", "transformers", "peft", "trl", "vllm", "scipy", "polars", "duckdb",
                     "matplotlib")


def environment(study: Study) -> dict:
    """Where the summary was computed, for the report: host, Python, torch's device, the study config's sha256 and
    the versions of the packages the numbers depend on. Nothing here changes between two runs on one machine, so the
    report stays byte-stable."""
    import torch

    from mt_core.model.load import device_and_dtype

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"
    dev, dtype = device_and_dtype()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.machine()
    return {"host": socket.gethostname(), "python": platform.python_version(),
            "torch device": f"{dev.type}: {name}, {str(dtype).removeprefix('torch.')}",
            "study config sha256": study.config_sha256, "packages": {p: version(p) for p in REPORTED_PACKAGES}}


def descriptions(study: Study) -> dict[str, str]:
    """Each condition's description, for the headline and the figure's labels."""
    return {k: c.description for k, c in study.conditions.items() if c.description}


def preregistered(study: Study, cells: list[CellNumbers], source: str | None = None,
                  assistant: str | None = None) -> dict:
    """The pre-registered analysis of these cells with the study's thresholds and EM conditions (G4 applied; all seeds
    beside it); ``source`` / ``assistant`` default to the study's (an imported reference study names its own)."""
    em = tuple(c for c, cond in study.conditions.items() if cond.second_stage == "em")
    return stats.preregistered(cells, source=source or study.source_persona,
                               assistant=assistant or study.assistant_persona, thresholds=study.thresholds,
                               em_conditions=em)


@step
def duckdb_catalog(study: Study, cells: list[str], artefacts: list[dict], imported: list[dict],
                   out: Path, lineage: list[dict] | None = None, missing: dict[str, list[str]] | None = None,
                   log: Log = print) -> dict:
    """A DuckDB file whose views (sql/*.sql) read exactly the Parquet files of ``artefacts`` (the verified per-cell
    artefacts of the complete ``cells``) and ``imported`` (verified imported studies): ``catalog.artefact_record``
    dicts. ``lineage``: the artefacts the instance recorded ({path, manifest}); ``missing``: as for the summary
    (the ``cells`` table says which cells are complete and what the others lack)."""
    return catalog.build_catalog(study, cells=cells, artefacts=artefacts, imported=imported,
                                 lineage=lineage, missing=missing, out=out, log=log)
