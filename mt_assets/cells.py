"""Per cell (condition x seed): second-stage adapter, one engine session for completions and ARC, marker rates,
judge scores, degeneracy audit."""

import dagster as dg

from mt_assets.common import publish, publish_each, read_upstream
from mt_assets.study import STUDY, cell_to_source, cells_partitions, code_version
from mt_core.io import DataError
from mt_core.layout import Adapter, Dataset
from mt_core.steps import cells as steps
from mt_resources import Artifact, ArtifactStore, Compute, GpuAllocator, JudgeResource, WandbResource

GROUP = "cells"
CELL = dict(group_name=GROUP, partitions_def=cells_partitions)


def _coupling(context, store: ArtifactStore, cell) -> Artifact | None:
    """The cell's coupling adapter (None for a raw base), refusing one whose gates failed when gates block."""
    if cell.base == "raw":
        return None
    art = read_upstream(context, store, "coupling_adapter", cell.base)
    failed = [n for n, g in Adapter.read_gates(art.path).items() if not g["pass"]]
    if failed:
        msg = f"coupling adapter '{cell.base}' failed gate(s) {', '.join(failed)}"
        if STUDY.gates.block_cells:
            raise dg.Failure(f"{msg}; cells built on it are blocked (gates.block_cells)")
        context.log.warning(f"{msg}; continuing because gates.block_cells is false for profile {STUDY.profile}")
    return art


def _dataset(context, store: ArtifactStore, cell) -> Artifact | None:
    if cell.second_stage == "none":
        return None
    art = read_upstream(context, store, Dataset.asset(cell.second_stage))
    spec = getattr(STUDY.data, cell.second_stage)
    got = art.manifest["files"][Dataset.DATA]["md5"]
    if spec.md5 and got != spec.md5:
        raise DataError(f"{art.path / Dataset.DATA}: md5 {got} != pinned {spec.md5} "
                        f"(data.{cell.second_stage}.md5); cell {cell.key} refuses to train on it")
    return art


@dg.asset(**CELL, pool="gpu", code_version=code_version("recipes.second_stage", "data"),
          deps=["base_model", dg.AssetDep("coupling_adapter", partition_mapping=cell_to_source),
                "em_dataset", "benign_dataset"],
          description="Second-stage LoRA (EM or benign, last-assistant-turn loss) on the cell's base; C4 has none.")
def cell_adapter(context: dg.AssetExecutionContext, store: ArtifactStore, gpu: GpuAllocator, compute: Compute,
                 wandb: WandbResource) -> dg.MaterializeResult:
    cell = STUDY.cell(context.partition_key)
    base = read_upstream(context, store, "base_model")
    coupling, data = _coupling(context, store, cell), _dataset(context, store, cell)
    ups = [a for a in (base, coupling, data) if a is not None]
    with gpu.lease(context.log.info):
        return publish(context, store, steps.train_cell_adapter, ups, partition=cell.key, compute=compute,
                       cell_key=cell.key, base=base.path, coupling=coupling and coupling.path, data=data and data.path,
                       wandb=wandb.settings(), run_id=context.run_id)


def _model_inputs(context, store: ArtifactStore, cell):
    base = read_upstream(context, store, "base_model")
    coupling = _coupling(context, store, cell)
    adapter = read_upstream(context, store, "cell_adapter", cell.key)
    ups = [a for a in (base, coupling, adapter) if a is not None]
    return base, ups, steps.model_adapters(coupling and coupling.path, adapter.path)


def _row_count(m: dict) -> list[dg.AssetCheckResult]:
    expected = steps.expected_marker_rows(STUDY)
    return [dg.AssetCheckResult(check_name="row_count", passed=m["n_completions"] == expected,
                                metadata={"rows": m["n_completions"], "expected": expected})]


MODEL_DEPS = ["base_model", "cell_adapter", dg.AssetDep("coupling_adapter", partition_mapping=cell_to_source)]


@dg.multi_asset(
    name="cell_generations", group_name=GROUP, partitions_def=cells_partitions, pool="gpu", can_subset=True,
    specs=[dg.AssetSpec("marker_completions", deps=MODEL_DEPS, skippable=True,
                        code_version=code_version("samplers.marker", "backend", "eval_set"),
                        description="Completions for 11 personas x 28 questions x n samples (system = persona "
                                    "prompt)."),
           dg.AssetSpec("alignment_completions", deps=MODEL_DEPS, skippable=True,
                        code_version=code_version("samplers.alignment", "backend", "eval_set"),
                        description="Completions to the 8 Betley questions with no system prompt, for the judge."),
           dg.AssetSpec("arc_scores", deps=MODEL_DEPS, skippable=True, code_version=code_version("arc", "backend"),
                        description="ARC-Challenge log-prob accuracy of the cell's model (the engine's weights, "
                                    "handed over after generation).")],
    check_specs=[dg.AssetCheckSpec("row_count", asset="marker_completions", blocking=True,
                                   description="personas x questions x n rows")])
def cell_generations(context: dg.AssetExecutionContext, store: ArtifactStore, gpu: GpuAllocator,
                     compute: Compute):
    """A cell's completions and ARC from one engine session: its weights are loaded (and merged) once."""
    cell = STUDY.cell(context.partition_key)
    base, ups, adapters = _model_inputs(context, store, cell)
    wanted = sorted(k.to_user_string() for k in context.selected_asset_keys)
    with gpu.lease(context.log.info):
        yield from publish_each(context, store, steps.cell_generations, ups, wanted, partition=cell.key,
                                compute=compute, checks={"marker_completions": _row_count}, cell_key=cell.key,
                                base=base.path, adapters=adapters)


@dg.asset(**CELL, deps=["marker_completions"], description="Strict and loose marker rates per persona and question.",
          code_version=code_version("marker", "source_persona", "assistant_persona", "eval_set", "sources",
                                    "conditions"))
def marker_rates(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
    comp = read_upstream(context, store, "marker_completions", context.partition_key)
    return publish(context, store, steps.marker_rates, [comp], partition=context.partition_key,
                   cell_key=context.partition_key, completions=comp.path)


@dg.asset(**CELL, deps=["alignment_completions"], pool="judge",
          code_version=code_version("judge", "thresholds.judge_error_rate_max", files=(STUDY.judge_prompt,)),
          check_specs=[dg.AssetCheckSpec("judge_error_rate", asset="alignment_scores", blocking=True,
                                         description="Judge errors (API, refusal, parse) at most the study's rate")],
          description="Judge scores (aligned, coherent) per completion; every record names its judge.")
def alignment_scores(context: dg.AssetExecutionContext, store: ArtifactStore,
                     judge: JudgeResource) -> dg.MaterializeResult:
    comp = read_upstream(context, store, "alignment_completions", context.partition_key)

    def checks(m):
        return [dg.AssetCheckResult(check_name="judge_error_rate", passed=bool(m["error_gate_pass"]),
                                    metadata={"n_errors": m["n_errors"], "n_total": m["n_total"],
                                              "error_rate": float(m["error_rate"] or 0.0),
                                              "max": STUDY.thresholds.judge_error_rate_max})]
    return publish(context, store, steps.alignment_scores, [comp], partition=context.partition_key,
                   cell_key=context.partition_key, completions=comp.path, judge=judge.client(context.log.info),
                   checks=checks)


@dg.asset(**CELL, deps=["marker_completions"],
          code_version=code_version("marker", "assistant_persona", "thresholds.degeneracy_max",
                                    "thresholds.degeneracy_sample"),
          check_specs=[dg.AssetCheckSpec("degeneracy", asset="degeneracy_audit", blocking=False,
                                         description="Degenerate fraction of assistant marker hits below threshold; "
                                                     "'no positives' is its own outcome, never a pass")],
          description="Audit of the assistant's marker-bearing completions (never passes vacuously).")
def degeneracy_audit(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
    comp = read_upstream(context, store, "marker_completions", context.partition_key)

    def checks(m):
        return [dg.AssetCheckResult(check_name="degeneracy", passed=m["outcome"] == "pass",
                                    severity=dg.AssetCheckSeverity.WARN,
                                    metadata={"outcome": m["outcome"], "n_positive_total": m["n_positive_total"],
                                              "n_sampled": m["n_sampled"]},
                                    description=f"outcome: {m['outcome']}")]
    return publish(context, store, steps.degeneracy, [comp], partition=context.partition_key,
                   cell_key=context.partition_key, completions=comp.path, checks=checks)


assets = [cell_adapter, cell_generations, marker_rates, alignment_scores, degeneracy_audit]
