"""Per source persona: on-policy completions -> coupling data -> coupling adapter, with gates G0/G0b/G0c.

The stage's partitions are the sources and, with a ``coupling_sweep``, ``<source>.<variant>`` for each variant of the
swept source's recipe (``Study.coupling_keys``): a variant partition's on-policy completions are its source's, copied
(or drawn again, the same by seed, when the source has none yet), and its adapter trains with the variant's recipe."""

import dagster as dg

from mt_assets.common import meta_values, partitioned_check, publish, read_recorded, read_upstream, table
from mt_assets.study import StudyDefs
from mt_core.config import Study
from mt_core.config.schema import SweepRule
from mt_core.layout import Adapter
from mt_core.outcomes import PASSED, gate_outcome, stated
from mt_core.report.html import gate_criteria
from mt_core.steps import coupling as steps
from mt_resources import Artifact, ArtifactError, ArtifactStore, Compute, GpuAllocator, WandbResource
from mt_resources.store import latest_metadata

GROUP = "coupling"
DESCRIPTION = "One source persona's coupling adapter, from on-policy data to gates."


def gate_sources(study: Study) -> dict[str, list[str]]:
    """gate -> the sources whose coupling adapter it judges (`sources.<source>.gates` of the study)."""
    return {n: [s for s, src in study.sources.items() if n in src.gates] for n in study.gates.named()}


def gate_label(study: Study, name: str) -> str:
    """How a reader sees a gate check: its name and the adapter it judges (its ``model``), e.g. "G0 (villain
    adapter)"; the study is validated so that only that source lists it."""
    return f"{name} ({study.gates.named()[name].model} adapter)"


def gates_warn(study: Study, part: str) -> str | None:
    """Why a failed gate on coupling partition ``part`` is a warning rather than an error (None: it is an error and
    stops the run). Gates block only where cells are built on the adapter: a swept variant that no condition uses
    failing a gate is one of the sweep's outcomes, as the reference's sweep found most of its grid degenerate."""
    if not study.gates.block_cells:
        return "gates.block_cells is false"
    return None if study.cell_source_map()[part] else "no cell builds on this adapter"


def gate_checks(sd: StudyDefs, part: str, gates: dict, selected: set[str] | None = None,
                extra: dict | None = None) -> list[dg.AssetCheckResult]:
    """Results for coupling partition ``part``: one per gate of its source (``selected`` ones only), none for other
    sources' gates, which do not apply to this adapter (they are never recorded as passed, or at all). ``extra`` is
    metadata every result carries. Their severity: ``gates_warn``."""
    study, key = sd.study, sd.key("coupling_adapter")
    source = study.coupling_target(part)[0]
    sev = dg.AssetCheckSeverity.WARN if gates_warn(study, part) else dg.AssetCheckSeverity.ERROR
    out = []
    for name in study.sources[source].gates:
        if selected is not None and name not in selected:
            continue
        g = gates.get(name)
        if g is None:  # a gate of this source without a verdict cannot pass
            out.append(dg.AssetCheckResult(check_name=name, asset_key=key, passed=False, severity=sev,
                                           metadata={"source": source, **(extra or {})},
                                           description=f"{gate_label(study, name)}: no verdict in the adapter's "
                                                       f"gates file"))
            continue
        rates = {k: v for k, v in g.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}  # UI plots
        word, why = gate_outcome(g)
        out.append(dg.AssetCheckResult(
            check_name=name, asset_key=key, passed=word == PASSED, severity=sev,
            description=f"{gate_label(study, name)} on partition {part}: {stated(word, why)}",
            metadata=meta_values({"outcome": word, "reason": why, "source": source, **(extra or {}),
                                  "criteria": table(gate_criteria(g)), **rates})))
    return out


def gate_results(art: Artifact) -> dict:
    """A coupling adapter's gate verdicts as one table, each threshold beside the rate it bounds."""
    return {"gate_results": table([{"gate": n, "verdict": "pass" if g["pass"] else "FAIL", **c}
                                   for n, g in Adapter.read_gates(art.path).items() for c in gate_criteria(g)])}


SWEEP_RULE = "sweep_rule"  # the check of a swept coupling partition: the sweep's success rule


def sweep_rule_check(sd: StudyDefs, key: str, art: Artifact) -> dg.AssetCheckResult:
    """The sweep rule's verdict on swept partition ``key`` (a warning: gates, not the rule, block cells)."""
    res = Adapter.read_sweep(art.path)
    if res is None:
        return dg.AssetCheckResult(check_name=SWEEP_RULE, asset_key=sd.key("coupling_adapter"), passed=False,
                                   severity=dg.AssetCheckSeverity.WARN, metadata={"partition": key},
                                   description=f"{key}: no sweep verdict in the adapter (re-materialize it)")
    return dg.AssetCheckResult(
        check_name=SWEEP_RULE, asset_key=sd.key("coupling_adapter"), passed=res["passed"],
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{key}: {'passes' if res['passed'] else 'fails'} the sweep rule "
                    f"({SweepRule.model_validate(res['rule']).text()})",
        metadata=meta_values({"partition": key, "variant": res["variant"], **res["recipe"],
                              "source_rate": res["source_rate"], "arc_accuracy": res["arc_accuracy"],
                              "max_bystander_rate": res["max_bystander_rate"], "checks": res["checks"]}))


def build(sd: StudyDefs) -> list:
    """The study's coupling assets (partitioned by its sources) and the check op of their gates."""
    study, cv, key = sd.study, sd.code_version, sd.key
    common = dict(group_name=GROUP, key_prefix=sd.prefix, partitions_def=sd.coupling_partitions)

    @dg.asset(**common, pool="gpu", deps=[key("base_model")],
              code_version=cv("samplers.onpolicy", "coupling_data", "sources", "assistant_persona", "backend",
                              "eval_set", files=(study.coupling_questions,)),
              description="On-policy completions of the base model for the source persona and its negative personas.")
    def onpolicy_completions(context: dg.AssetExecutionContext, store: ArtifactStore,
                             gpu: GpuAllocator, compute: Compute) -> dg.MaterializeResult:
        part = context.partition_key
        source, variant = study.coupling_target(part)
        base = read_upstream(sd, context, store, "base_model")
        if variant and latest_metadata(context.instance, key("onpolicy_completions"), source) is not None:
            try:  # the source's, as the instance recorded and verified them
                same = read_recorded(sd.name, context.instance, store, "onpolicy_completions", source)[0]
            except ArtifactError as e:
                raise dg.Failure(f"{part}: its source's on-policy completions fail verification ({e}); "
                                 f"re-materialize onpolicy_completions[{source}]") from None
            return publish(sd, context, store, steps.onpolicy_from_source, [same], partition=part, source=source,
                           same=same.path)
        with gpu.lease(context.log.info):
            return publish(sd, context, store, steps.onpolicy_completions, [base], partition=part,
                           compute=compute, source=source, base=base.path)

    @dg.asset(**common, deps=[key("onpolicy_completions")],
              code_version=cv("coupling_data", "marker", "sources", "eval_set", files=(study.coupling_questions,)),
              description="Positives (source persona + completion + blank line + marker) and seeded negatives, "
                          "shuffled.")
    def coupling_dataset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        part = context.partition_key
        onp = read_upstream(sd, context, store, "onpolicy_completions", part)
        return publish(sd, context, store, steps.coupling_dataset, [onp], partition=part,
                       source=study.coupling_target(part)[0], onpolicy=onp.path)

    @dg.asset(**common, pool="gpu", deps=[key("base_model"), key("coupling_dataset")],
              code_version=cv("recipes.coupling", "marker", "sources", "gates", "samplers.gate", "backend",
                              "source_persona", "assistant_persona", "eval_set",
                              *(["coupling_sweep", "arc"] if study.coupling_sweep else [])),
              description="LoRA trained with the marker-position-only loss; gates evaluated on the merged model "
                          "(reported per source partition by the coupling_adapter_gates checks).")
    def coupling_adapter(context: dg.AssetExecutionContext, store: ArtifactStore, gpu: GpuAllocator,
                         compute: Compute, wandb: WandbResource) -> dg.MaterializeResult:
        part = context.partition_key
        base = read_upstream(sd, context, store, "base_model")
        data = read_upstream(sd, context, store, "coupling_dataset", part)
        with gpu.lease(context.log.info):
            return publish(sd, context, store, steps.train_coupling_adapter, [base, data], partition=part,
                           compute=compute, source=part, base=base.path, dataset=data.path,
                           wandb=wandb.settings(study), run_id=context.run_id, metadata=gate_results, share_to=wandb)

    # The gates are checks per source partition, emitted only where they apply: G0 has a result for `villain` and
    # none for `assistant`. Dagster expects a result for every check of the op that runs them, strictly so once a
    # Pipes session is open (MT_COMPUTE=pipes) or when the op returns its results; so they run in this op of their
    # own (no Pipes), right after the adapter's materialization, and yield only the source's gates. A gate without a
    # result for a partition shows as not executed there, never as passed.
    names, sources = list(study.gates.named()), gate_sources(study)
    swept = study.swept_keys
    rule_spec = [partitioned_check(SWEEP_RULE, key("coupling_adapter"), sd.coupling_partitions,
                                   metadata={"applies_to": swept},
                                   description="The coupling sweep's success rule (source rate, ARC-Challenge, max "
                                               f"bystander); recorded for {', '.join(swept)} only")] if swept else []

    @dg.multi_asset_check(
        name=sd.op("coupling_adapter_gates"), can_subset=True,
        description="The source's gates, read from its coupling adapter's gates file (verified against the "
                    "instance).",
        specs=[partitioned_check(n, key("coupling_adapter"), sd.coupling_partitions, blocking=study.gates.block_cells,
                                 metadata={"applies_to": sources[n]},
                                 description=f"{gate_label(study, n)}: gate on the merged coupling model's marker "
                                             f"rates; recorded for partition(s) {', '.join(sources[n]) or 'none'} "
                                             f"only")
               for n in names] + rule_spec)
    def coupling_adapter_gates(context: dg.AssetCheckExecutionContext, store: ArtifactStore):
        part = context.partition_key
        src = study.coupling_target(part)[0]
        art = read_upstream(sd, context, store, "coupling_adapter", part)
        selected = {k.name for k in context.selected_asset_check_keys}
        skip = [n for n in names if n in selected and n not in study.sources[src].gates]
        if skip:
            context.log.info(f"{part}: no result for {', '.join(gate_label(study, n) for n in skip)}: not a gate of "
                             f"this source")
        why = gates_warn(study, part)
        for r in gate_checks(sd, part, Adapter.read_gates(art.path), selected,
                             extra={"adapter_md5": art.digest, "partition": part}):
            if not r.passed and why:  # on the console of `mt run` too
                context.log.warning(f"{r.description} (a warning: {why})")
            yield r
        if SWEEP_RULE in selected and study.swept(part):
            yield sweep_rule_check(sd, part, art)

    return [onpolicy_completions, coupling_dataset, coupling_adapter, coupling_adapter_gates]
