"""Per source persona: on-policy completions -> coupling data -> coupling adapter, with gates G0/G0b/G0c."""

import dagster as dg

from mt_assets.common import publish, read_upstream
from mt_assets.study import STUDY, code_version, sources_partitions
from mt_core.steps import coupling as steps
from mt_resources import ArtifactStore, Compute, GpuAllocator, WandbResource

GROUP = "coupling"


@dg.asset(group_name=GROUP, partitions_def=sources_partitions, pool="gpu", deps=["base_model"],
          code_version=code_version("samplers.onpolicy", "coupling_data", "sources", "assistant_persona", "backend",
                                    "eval_set", files=(STUDY.coupling_questions,)),
          description="On-policy completions of the base model for the source persona and its negative personas.")
def onpolicy_completions(context: dg.AssetExecutionContext, store: ArtifactStore,
                         gpu: GpuAllocator, compute: Compute) -> dg.MaterializeResult:
    base = read_upstream(context, store, "base_model")
    with gpu.lease(context.log.info):
        return publish(context, store, steps.onpolicy_completions, [base], partition=context.partition_key,
                       compute=compute, source=context.partition_key, base=base.path)


@dg.asset(group_name=GROUP, partitions_def=sources_partitions, deps=["onpolicy_completions"],
          code_version=code_version("coupling_data", "marker", "sources", "eval_set",
                                    files=(STUDY.coupling_questions,)),
          description="Positives (source persona + completion + blank line + marker) and seeded negatives, shuffled.")
def coupling_dataset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
    src = context.partition_key
    onp = read_upstream(context, store, "onpolicy_completions", src)
    return publish(context, store, steps.coupling_dataset, [onp], partition=src, source=src, onpolicy=onp.path)


GATE_NAMES = list(STUDY.gates.named())


def _gate_checks(source: str, meta: dict) -> list[dg.AssetCheckResult]:
    applicable = STUDY.sources[source].gates
    sev = dg.AssetCheckSeverity.ERROR if STUDY.gates.block_cells else dg.AssetCheckSeverity.WARN
    out = []
    for name in GATE_NAMES:
        if name not in applicable:
            out.append(dg.AssetCheckResult(check_name=name, passed=True, metadata={"applies": False},
                                           description=f"{name} is a gate of source "
                                                       f"'{STUDY.gates.named()[name].model}', not '{source}'"))
            continue
        g = meta["gates"][name]
        md = {k: v for k, v in g.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.append(dg.AssetCheckResult(check_name=name, passed=bool(g["pass"]), severity=sev,
                                       metadata={"applies": True, **md, "checks": dg.MetadataValue.json(g["checks"]),
                                                 "thresholds": dg.MetadataValue.json(g["thresholds"])}))
    return out


@dg.asset(group_name=GROUP, partitions_def=sources_partitions, pool="gpu", deps=["base_model", "coupling_dataset"],
          code_version=code_version("recipes.coupling", "marker", "sources", "gates", "samplers.gate", "backend",
                                    "source_persona", "assistant_persona", "eval_set"),
          check_specs=[dg.AssetCheckSpec(n, asset="coupling_adapter", blocking=STUDY.gates.block_cells,
                                         description=f"Gate {n} on the merged coupling model's marker rates")
                       for n in GATE_NAMES],
          description="LoRA trained with the marker-position-only loss; gates evaluated on the merged model.")
def coupling_adapter(context: dg.AssetExecutionContext, store: ArtifactStore, gpu: GpuAllocator, compute: Compute,
                     wandb: WandbResource) -> dg.MaterializeResult:
    src = context.partition_key
    base = read_upstream(context, store, "base_model")
    data = read_upstream(context, store, "coupling_dataset", src)
    with gpu.lease(context.log.info):
        return publish(context, store, steps.train_coupling_adapter, [base, data], partition=src, compute=compute,
                       checks=lambda meta: _gate_checks(src, meta), source=src, base=base.path, dataset=data.path,
                       wandb=wandb.settings(), run_id=context.run_id)


assets = [onpolicy_completions, coupling_dataset, coupling_adapter]
