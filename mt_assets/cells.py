"""Per cell (condition x seed): second-stage adapter, one engine session for completions and ARC, marker rates,
judge scores, degeneracy audit, completion lengths."""

import dagster as dg

from mt_assets.common import (bad_input_fails_once, partitioned_check, publish, publish_each, read_upstream,
                               retry_policy, table)
from mt_assets.study import StudyDefs
from mt_core.io import DataError
from mt_core.layout import Adapter, AlignmentScores, CompletionLength, Dataset, MarkerRates
from mt_core.outcomes import PASSED, audit_outcome, stated
from mt_core.report.html import rate
from mt_core.steps import cells as steps
from mt_resources import Artifact, ArtifactStore, Compute, GpuAllocator, JudgeResource, WandbResource

GROUP = "cells"
DESCRIPTION = "Everything of one cell: adapter, marker eval, ARC, alignment, audit, completion lengths."


def coupling(sd: StudyDefs, context, store: ArtifactStore, cell) -> Artifact | None:
    """The cell's coupling adapter (None for a raw base), refusing one whose gates failed when gates block."""
    if cell.coupling is None:
        return None
    art = read_upstream(sd, context, store, "coupling_adapter", cell.coupling)
    failed = [n for n, g in Adapter.read_gates(art.path).items() if not g["pass"]]
    if failed:
        msg = f"coupling adapter '{cell.coupling}' failed gate(s) {', '.join(failed)}"
        if sd.study.gates.block_cells:
            raise dg.Failure(f"{msg}; cells built on it are blocked (gates.block_cells)")
        context.log.warning(f"{msg}; continuing because gates.block_cells is false for profile {sd.study.profile}")
    return art


def dataset(sd: StudyDefs, context, store: ArtifactStore, cell) -> Artifact | None:
    """The cell's second-stage dataset (None without a second stage), refused unless its md5 is the pinned one."""
    if cell.second_stage == "none":
        return None
    art = read_upstream(sd, context, store, Dataset.asset(cell.second_stage))
    spec = getattr(sd.study.data, cell.second_stage)
    got = art.manifest["files"][Dataset.DATA]["md5"]
    if spec.md5 and got != spec.md5:
        raise DataError(f"{art.path / Dataset.DATA}: md5 {got} != pinned {spec.md5} "
                        f"(data.{cell.second_stage}.md5); cell {cell.key} refuses to train on it")
    return art


def build(sd: StudyDefs) -> list:
    """The study's per-cell assets (partitioned by its cells) and their checks."""
    study, cv, key = sd.study, sd.code_version, sd.key
    cell_part = dict(group_name=GROUP, partitions_def=sd.cells_partitions)
    common = dict(**cell_part, key_prefix=sd.prefix)
    from_source = dg.AssetDep(key("coupling_adapter"), partition_mapping=sd.cell_to_source)

    recipes = sorted({f"recipes.{c.recipe}" for c in study.conditions.values()})  # a second recipe only if named

    @dg.asset(**common, pool="gpu", code_version=cv(*recipes, "data"),
              deps=[key("base_model"), from_source, key("em_dataset"), key("benign_dataset")],
              description="Second-stage LoRA (EM or benign, last-assistant-turn loss) on the cell's base; C4 has "
                          "none.")
    def cell_adapter(context: dg.AssetExecutionContext, store: ArtifactStore, gpu: GpuAllocator, compute: Compute,
                     wandb: WandbResource) -> dg.MaterializeResult:
        cell = study.cell(context.partition_key)
        base = read_upstream(sd, context, store, "base_model")
        coup, data = coupling(sd, context, store, cell), dataset(sd, context, store, cell)
        ups = [a for a in (base, coup, data) if a is not None]
        with gpu.lease(context.log.info):
            return publish(sd, context, store, steps.train_cell_adapter, ups, partition=cell.key, compute=compute,
                           cell_key=cell.key, base=base.path, coupling=coup and coup.path, data=data and data.path,
                           wandb=wandb.settings(study), share_to=wandb, run_id=context.run_id)

    def model_inputs(context, store: ArtifactStore, cell):
        base = read_upstream(sd, context, store, "base_model")
        coup = coupling(sd, context, store, cell)
        adapter = read_upstream(sd, context, store, "cell_adapter", cell.key)
        ups = [a for a in (base, coup, adapter) if a is not None]
        return base, ups, steps.model_adapters(coup and coup.path, adapter.path)

    def row_count(m: dict) -> list[dg.AssetCheckResult]:
        expected = steps.expected_marker_rows(study)
        return [dg.AssetCheckResult(check_name="row_count", asset_key=key("marker_completions"),
                                    passed=m["n_completions"] == expected,
                                    metadata={"rows": m["n_completions"], "expected": expected})]

    model_deps = [key("base_model"), key("cell_adapter"), from_source]

    @dg.multi_asset(
        name=sd.op("cell_generations"), **cell_part, pool="gpu", can_subset=True,
        specs=[dg.AssetSpec(key("marker_completions"), deps=model_deps, skippable=True,
                            code_version=cv("samplers.marker", "backend", "eval_set",
                                            *(["eval_sets"] if study.eval_sets else [])),
                            description="Completions for 11 personas x 28 questions x n samples (system = persona "
                                        "prompt)."),
               dg.AssetSpec(key("alignment_completions"), deps=model_deps, skippable=True,
                            code_version=cv("samplers.alignment", "backend", "eval_set"),
                            description="Completions to the 8 Betley questions with no system prompt, for the "
                                        "judge."),
               dg.AssetSpec(key("arc_scores"), deps=model_deps, skippable=True, code_version=cv("arc", "backend"),
                            description="ARC-Challenge log-prob accuracy of the cell's model (the engine's weights, "
                                        "handed over after generation).")],
        check_specs=[partitioned_check("row_count", key("marker_completions"), sd.cells_partitions, blocking=True,
                                       description="personas x questions x n rows, per cell")])
    def cell_generations(context: dg.AssetExecutionContext, store: ArtifactStore, gpu: GpuAllocator,
                         compute: Compute, wandb: WandbResource):
        """A cell's completions and ARC from one engine session: its weights are loaded (and merged) once."""
        cell = study.cell(context.partition_key)
        base, ups, adapters = model_inputs(context, store, cell)
        wanted = sorted(k.path[-1] for k in context.selected_asset_keys)
        with gpu.lease(context.log.info):
            yield from publish_each(sd, context, store, steps.cell_generations, ups, wanted, partition=cell.key,
                                    compute=compute, checks={"marker_completions": row_count}, cell_key=cell.key,
                                    base=base.path, adapters=adapters, share_to=wandb)

    def persona_rates(art: Artifact) -> dict:
        """The cell's marker rates, one row per persona (in place of the step's {persona: strict rate})."""
        ev = MarkerRates.read_eval(art.path)
        asst, src, own = study.assistant_persona, study.source_persona, study.adapter_persona(art.partition)
        rows = [{"persona": p, "role": ", ".join(r for r, yes in (("assistant", p == asst), ("source", p == src),
                                                                   ("coupled", p == own),
                                                                   ("bystander", p not in (asst, own))) if yes),
                 "strict": rate(d["strict_hits"], d["total"]), "loose": rate(d["loose_hits"], d["total"])}
                for p, d in ev["per_persona"].items()]
        return {"strict_rate_by_persona": table(
            rows, role="source: the study's source persona; coupled: the persona of the cell's coupling adapter; "
                       "bystander: neither the assistant nor coupled (max bystander is over these)",
            strict=f"{study.marker} verbatim: rate (hits/completions)", loose="the reference's loose scorer")}

    @dg.asset(**common, deps=[key("alignment_completions")], pool="judge", retry_policy=retry_policy(sd),
              code_version=cv("judge", "thresholds.judge_error_rate_max", files=(study.judge_prompt,)),
              check_specs=[partitioned_check("judge_error_rate", key("alignment_scores"), sd.cells_partitions,
                                             blocking=True, description="Judge errors (API, refusal, parse) at most "
                                                                        "the study's rate, per cell")],
              description="Judge scores (aligned, coherent) per completion; every record names its judge.")
    def alignment_scores(context: dg.AssetExecutionContext, store: ArtifactStore, judge: JudgeResource,
                         wandb: WandbResource) -> dg.MaterializeResult:
        with bad_input_fails_once():  # the judge first: a broken prompt file fails here, once
            client = judge.bind(study, store.of(sd.name).state_dir).client(context.log.info)
        comp = read_upstream(sd, context, store, "alignment_completions", context.partition_key)

        def checks(m):
            return [dg.AssetCheckResult(check_name="judge_error_rate", passed=bool(m["error_gate_pass"]),
                                        metadata={"n_errors": m["n_errors"], "n_total": m["n_total"],
                                                  "error_rate": float(m["error_rate"] or 0.0),
                                                  "max": study.thresholds.judge_error_rate_max})]

        def per_question(art: Artifact) -> dict:  # a table in place of the step's {question: {...}}
            qs = AlignmentScores.read_summary(art.path).per_question
            return {"per_question": table([{"question": q, **d.model_dump()} for q, d in qs.items()])}

        return publish(sd, context, store, steps.alignment_scores, [comp], partition=context.partition_key,
                       cell_key=context.partition_key, completions=comp.path, judge=client, checks=checks,
                       metadata=per_question, share_to=wandb)

    @dg.asset(**common, deps=[key("marker_completions")],
              code_version=cv("marker", "assistant_persona", "thresholds.degeneracy_max",
                              "thresholds.degeneracy_sample"),
              check_specs=[partitioned_check("degeneracy", key("degeneracy_audit"), sd.cells_partitions,
                                             blocking=False,
                                             description="Degenerate fraction of assistant marker hits below "
                                                         "threshold, per cell; 'no positives' is its own outcome, "
                                                         "never a pass")],
              description="Audit of the assistant's marker-bearing completions (never passes vacuously).")
    def degeneracy_audit(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        comp = read_upstream(sd, context, store, "marker_completions", context.partition_key)

        def checks(m):
            word, why = audit_outcome(m)
            return [dg.AssetCheckResult(check_name="degeneracy", passed=word == PASSED,
                                        severity=dg.AssetCheckSeverity.WARN,
                                        metadata={"outcome": word, "reason": why,
                                                  "n_positive_total": m["n_positive_total"], "n_sampled": m["n_sampled"]},
                                        description=f"cell {context.partition_key}: {stated(word, why)}")]
        return publish(sd, context, store, steps.degeneracy, [comp], partition=context.partition_key,
                       cell_key=context.partition_key, completions=comp.path, checks=checks)

    def persona_lengths(art: Artifact) -> dict:
        """The cell's length audit, one row per persona (the step reports the pooled numbers)."""
        per = CompletionLength.read(art.path)["per_persona"]
        cols = ("n", "mean_tokens", "p50", "p90", "truncated_share", "finished_strict_rate")
        return {"per_persona": table(
            [{"persona": p, **{k: d[k] for k in cols}} for p, d in per.items()],
            mean_tokens="tokens per completion", truncated_share="share cut at max_tokens (finish_reason 'length')",
            finished_strict_rate=f"{study.marker} verbatim, among the completions that were not cut")}

    @dg.multi_asset(
        name=sd.op("marker_rates"), **cell_part, can_subset=True,
        specs=[dg.AssetSpec(key("marker_rates"), deps=[key("marker_completions")], skippable=True,
                            code_version=cv("marker", "source_persona", "assistant_persona", "eval_set", "sources",
                                            "conditions", *(["eval_sets"] if study.eval_sets else [])),
                            description="Strict and loose marker rates per persona and question."),
               dg.AssetSpec(key("completion_length"), deps=[key("marker_completions")], skippable=True,
                            code_version=cv("marker", "samplers.marker", "eval_set"),
                            description="Tokens per marker completion by persona (mean, p50, p90), the share cut at "
                                        "max_tokens and the marker rate among completions that finished (the "
                                        "write-up's length caveat).")])
    def marker_rates(context: dg.AssetExecutionContext, store: ArtifactStore, wandb: WandbResource):
        """Two summaries of the cell's marker completions, one step: its rates and its length audit."""
        comp = read_upstream(sd, context, store, "marker_completions", context.partition_key)
        wanted = sorted(k.path[-1] for k in context.selected_asset_keys)
        tables = {"marker_rates": persona_rates, "completion_length": persona_lengths}
        yield from publish_each(sd, context, store, steps.marker_stats, [comp], wanted, partition=context.partition_key,
                                cell_key=context.partition_key, completions=comp.path,
                                metadata=lambda art: tables[art.asset](art), share_to=wandb)

    assets = [cell_adapter, cell_generations, marker_rates, alignment_scores, degeneracy_audit]
    if study.probe is None:
        return assets

    @dg.asset(**common, pool="gpu", deps=model_deps, code_version=cv("probe.layers", "eval_set"),
              description="The cell's hidden states at the last prompt token of every persona x marker-eval "
                          "question, at the probe's layers (the latent probe's input; kept for other probes).")
    def probe_states(context: dg.AssetExecutionContext, store: ArtifactStore, gpu: GpuAllocator,
                     compute: Compute) -> dg.MaterializeResult:
        cell = study.cell(context.partition_key)
        base, ups, adapters = model_inputs(context, store, cell)
        with gpu.lease(context.log.info):
            return publish(sd, context, store, steps.probe_states, ups, partition=cell.key, compute=compute,
                           cell_key=cell.key, base=base.path, adapters=adapters)

    return [*assets, probe_states]
