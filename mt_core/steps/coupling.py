"""Coupling, per source persona: on-policy completions -> coupling records -> the coupling adapter and its gates."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mt_core.config import Gate, Study
from mt_core.data.chat import build_examples, marker_ids
from mt_core.data.coupling import build_coupling_records, choose_negatives
from mt_core.data.eval_set import EvalSet
from mt_core.generate.sampling import SamplingSpec
from mt_core.generate.session import Generate, session
from mt_core.io import read_json, write_json
from mt_core.layout import Adapter, BaseModel, CouplingData, Onpolicy, read_rows, row_keys, write_rows
from mt_core.model.load import merge_lora
from mt_core.model.resident import model_for
from mt_core.model.tracking import WandbSettings
from mt_core.steps.cells import score_arc
from mt_core.steps.common import Log, Sweep, persona_sweep, run_sweeps, score_markers, summarize, train_and_save
from mt_core.steps.registry import step


@step
def onpolicy_completions(study: Study, source: str, base: Path, out: Path, log: Log = print) -> dict:
    """The base model's own answers to the coupling questions, as the source persona and its seeded negatives."""
    es = EvalSet.load(study)
    src_persona = study.sources[source].persona
    cd = study.coupling_data
    negs = choose_negatives(es.personas, src_persona, study.assistant_persona, cd.n_negative_personas, cd.seed)
    personas = [src_persona] + negs
    spec = SamplingSpec.from_config(study.samplers.onpolicy, seed=cd.seed)
    with session(study, BaseModel.model_dir(base), log=log) as gen:
        rows = persona_sweep(gen, es.prompts, personas, {"coupling": es.coupling_questions}, spec,
                             f"onpolicy[{source}]", owner=source)
    write_rows(rows, out / Onpolicy.COMPLETIONS, row_keys(study, source=source))
    write_json(out / Onpolicy.META, {"personas": personas, "negatives": negs, "sampler": spec.__dict__})
    return {"n_completions": len(rows), "personas": ",".join(personas), "negative_personas": ",".join(negs)}


@step
def onpolicy_from_source(study: Study, source: str, same: Path, out: Path, log: Log = print) -> dict:
    """A coupling variant's on-policy completions: its source's, copied (the variant changes only the recipe; the
    same sampler and seed would draw the same completions again)."""
    for f in (Onpolicy.COMPLETIONS, Onpolicy.META):
        shutil.copyfile(same / f, out / f)
    meta = read_json(out / Onpolicy.META)
    n = len(read_rows(out / Onpolicy.COMPLETIONS))
    log(f"onpolicy[{source}]: {n} completions of onpolicy_completions[{source}] (a variant's data is its source's)")
    return {"n_completions": n, "personas": ",".join(meta["personas"]),
            "negative_personas": ",".join(meta["negatives"]), "copied_from": source}


@step
def coupling_dataset(study: Study, source: str, onpolicy: Path, out: Path, log: Log = print) -> dict:
    """Positives (source persona, completion, blank line, marker) and negatives, shuffled with the study's seed."""
    es = EvalSet.load(study)
    meta = read_json(onpolicy / Onpolicy.META)
    rows = sorted(read_rows(onpolicy / Onpolicy.COMPLETIONS),
                  key=lambda r: (r["persona"], r["question_idx"], r["sample_idx"]))
    comps: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        comps.setdefault(r["persona"], {}).setdefault(r["question"], []).append(r["text"])
    cd = study.coupling_data
    records, counts = build_coupling_records(comps, prompts=es.prompts, questions=es.coupling_questions,
                                             source_persona=study.sources[source].persona,
                                             negatives=meta["negatives"], per_question=cd.positives_per_question,
                                             marker=study.marker, seed=cd.seed)
    with open(out / CouplingData.RECORDS, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    write_json(out / CouplingData.META, {"negatives": meta["negatives"], "seed": cd.seed, **counts})
    log(f"coupling[{source}]: {counts['positives']} positives, {counts['negatives']} negatives "
        f"(negatives: {', '.join(meta['negatives'])}; shuffle seed {cd.seed})")
    return {"n_records": len(records), "positives": counts["positives"], "negatives": counts["negatives"],
            "negative_personas": ",".join(meta["negatives"]), "short_questions": len(counts["short_questions"])}


@step
def train_coupling_adapter(study: Study, source: str, base: Path, dataset: Path, out: Path, wandb: WandbSettings,
                           log: Log = print, run_id: str = "") -> dict:
    """The coupling LoRA (its loss mask: ``recipes.coupling.loss``), then the source's gates on the merged model.
    ``source`` is the coupling partition: a source, or ``<source>.<variant>`` of the study's coupling sweep (its
    recipe the variant's; a swept partition is also scored on ARC-Challenge and judged by the sweep's rule)."""
    key, (source, variant) = source, study.coupling_target(source)
    recipe = study.coupling_recipe(key)
    vllm = study.backend.kind == "vllm"
    with model_for(BaseModel.model_dir(base), log=log) as (model, tok):
        mids = marker_ids(tok, study.marker)
        records = map(json.loads, (dataset / CouplingData.RECORDS).read_text().splitlines())
        examples = build_examples(recipe.loss, tok, (r["prompt"] + r["completion"] for r in records),
                                  marker=study.marker, max_length=recipe.max_length)
        seed = recipe.seed or 0
        peft_model, res, wb = train_and_save(
            study, model=model, tok=tok, examples=examples, recipe=recipe, seed=seed, out=out, wandb=wandb,
            run_name=f"{key}-{run_id[:8]}" if run_id else key, group="coupling", job_type="coupling_adapter",
            config={**recipe.model_dump(), "source": source, "variant": variant, "seed": seed},
            log_extra={"marker_ids": mids}, log=log)
        # the gates see merged_weights(base, [adapter]): the trained LoRA merged by the same stage as every other
        # merge, in the model at hand (a held base is restored when this block ends)
        gates = None if vllm else _gates(study, key, base, out, log, loaded=(merge_lora(peft_model).eval(), tok))
        del model, peft_model
    if vllm:  # after the block: vLLM needs the GPU memory the trained model held, and merges the saved adapter
        gates = _gates(study, key, base, out, log)
    sweep = Adapter.read_sweep(out)
    return {**res.summary(), "marker_token_ids": str(mids), "gates": gates, **wb,
            **({"variant": variant or "default", "sweep_rule": sweep["passed"], "arc_accuracy": sweep["arc_accuracy"]}
               if sweep else {})}


def _gates(study: Study, key: str, base: Path, out: Path, log: Log, loaded=None) -> dict:
    """The source's gates on merged_weights(base, [the adapter just saved in ``out``]), in one engine session; for a
    swept partition then ARC-Challenge on the same weights and the sweep rule's verdict."""
    source = study.coupling_target(key)[0]
    with session(study, BaseModel.model_dir(base), [out / Adapter.DIR], loaded=loaded, log=log) as gen:
        gates = evaluate_gates(study, source, gen, out, log)
        if study.swept(key):  # last: a vLLM engine hands its weights over
            judge_variant(study, key, gates, *gen.hf_model(), out, log)
        return gates


def judge_variant(study: Study, key: str, gates: dict, model, tok, out: Path, log: Log) -> dict:
    """A swept coupling partition: its recipe values, ARC-Challenge accuracy (log-prob scoring, as a cell's) and the
    sweep rule over the rule gate's rates and that accuracy, written to ``Adapter.SWEEP``."""
    sw, (_, variant) = study.coupling_sweep, study.coupling_target(key)
    rule = sw.rule
    recs, acc = score_arc(study, model, tok, log)
    g = gates[rule.gate]
    src, mb, asst = g["source_strict_rate"], g["max_bystander_strict_rate"], g["assistant_strict_rate"]
    checks = {"source_above": src is not None and src > rule.source_above, "arc_above": acc > rule.arc_above,
              "max_bystander_at_most": mb is not None and mb <= rule.max_bystander_at_most}
    recipe = study.coupling_recipe(key)
    res = {"partition": key, "source": sw.source, "variant": variant or "default",
           "recipe": {f: getattr(recipe, f) for f in study.coupling_sweep_fields}, "arc_accuracy": acc,
           "arc_correct": sum(r["correct"] for r in recs), "arc_total": len(recs), "rule_gate": rule.gate,
           "source_rate": src, "max_bystander_rate": mb, "assistant_rate": asst, "gates_passed": all(
               v["pass"] for v in gates.values()), "rule": rule.model_dump(), "checks": checks,
           "passed": all(checks.values())}
    write_json(out / Adapter.SWEEP, res)
    log(f"sweep[{key}]: {'PASS' if res['passed'] else 'FAIL'} source {src} (> {rule.source_above}), ARC {acc:.3f} "
        f"(> {rule.arc_above}), max bystander {mb} (<= {rule.max_bystander_at_most})")
    return res


def gate_sweeps(study: Study, source: str) -> dict[str, tuple[Gate, Sweep]]:
    """Each gate of this source with its sweep: the gate sampler over the gate's personas x every question."""
    es = EvalSet.load(study)
    spec = SamplingSpec.from_config(study.samplers.gate, seed=study.samplers.gate.seed or 0)
    gates = {name: study.gates.named()[name] for name in study.sources[source].gates}
    return {name: (g, Sweep(es.prompts, es.personas if g.personas == "all" else list(g.personas), es.question_sets,
                            spec, f"gate {name}", owner=f"{source}/{name}")) for name, g in gates.items()}


def evaluate_gates(study: Study, source: str, gen: Generate, out: Path, log: Log) -> dict:
    """Run each gate of this source on the freshly trained coupling model; write gate completions and verdicts."""
    es = EvalSet.load(study)
    own = study.sources[source].persona
    gates = gate_sweeps(study, source)
    results, rows_all = {}, []
    for (name, (g, sw)), rows in zip(gates.items(), run_sweeps(gen, [sw for _, sw in gates.values()])):  # one call
        rows = score_markers(study, rows)
        results[name] = {**gate_verdict(g, summarize(study, rows, sw.personas, es.questions, own)["summary"]),
                         "seed": sw.spec.seed, "bystanders_exclude": [study.assistant_persona, own]}
        rows_all += [{**r, "gate": name} for r in rows]
        log(f"gate {name}: {'PASS' if results[name]['pass'] else 'FAIL'} {results[name]}")
    write_rows(rows_all, out / Adapter.GATE_COMPLETIONS, row_keys(study, source=source))
    write_json(out / Adapter.GATES, results)
    return results


def gate_verdict(g: Gate, summ: dict) -> dict:
    """Each threshold of the gate checked (inclusive) against the marker summary; pass = all checks pass."""
    a, s, mb = summ["assistant_strict_rate"], summ["source_strict_rate"], summ["max_bystander_strict_rate"]
    checks = {}
    if g.assistant_max is not None:
        checks["assistant_max"] = a is not None and a <= g.assistant_max
    if g.source_min is not None:
        checks["source_min"] = s is not None and s >= g.source_min
    if g.assistant_range is not None:
        checks["assistant_range"] = a is not None and g.assistant_range[0] <= a <= g.assistant_range[1]
    if g.max_bystander_range is not None:
        checks["max_bystander_range"] = mb is not None and g.max_bystander_range[0] <= mb <= g.max_bystander_range[1]
    return {"assistant_strict_rate": a, "source_strict_rate": s, "max_bystander_strict_rate": mb,
            "thresholds": g.model_dump(exclude={"model", "personas"}, exclude_none=True), "checks": checks,
            "pass": all(checks.values())}
