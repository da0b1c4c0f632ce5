"""Per cell (condition x seed): the second-stage adapter, then the evaluations of the cell's model."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from mt_core.config import IN_DISTRIBUTION, Study
from mt_core.data.chat import build_examples
from mt_core.data.eval_set import EvalSet
from mt_core.evals.arc import evaluate_arc, load_arc
from mt_core.evals.audit import degeneracy_audit
from mt_core.evals.judge import aggregate
from mt_core.evals.length import length_audit, length_rows
from mt_core.evals.markers import rates_table
from mt_core.faults import failpoint
from mt_core.generate.sampling import SamplingSpec
from mt_core.generate.session import session
from mt_core.io import check_md5, read_chat_jsonl, write_json
from mt_core.layout import (Adapter, AlignmentCompletions, AlignmentScores, ArcScores, Audit, BaseModel,
                            CompletionLength, Dataset, MarkerCompletions, MarkerRates, ProbeStates, read_rows, row_keys,
                            write_rows)
from mt_core.model.resident import model_for
from mt_core.model.tracking import WandbSettings
from mt_core.records import ArcSummary
from mt_core.steps.common import (Log, Sweep, persona_chats, persona_pairs, run_sweeps, score_markers, summarize,
                                  train_and_save)
from mt_core.steps.registry import step


def model_adapters(coupling: Path | None, cell_adapter: Path | None = None) -> list[Path]:
    """The adapters of a cell's model, in training order: coupling (unless the base is raw), then the cell's own.
    Their weights are ``mt_core.model.load.merged_weights(base, these)``: the cell adapter is trained on the first
    stage (``model_adapters(coupling)``) and evaluated on both, so it is evaluated on the weights it was trained on."""
    return [a for a in (coupling and Adapter.path(coupling), cell_adapter and Adapter.path(cell_adapter)) if a]


@step
def train_cell_adapter(study: Study, cell_key: str, base: Path, coupling: Path | None, data: Path | None, out: Path,
                       wandb: WandbSettings, log: Log = print, run_id: str = "") -> dict:
    """The second-stage LoRA (the recipe its condition names, ``recipes.second_stage`` unless it names another; its
    loss mask, ``loss``, decides the positions trained and whether the chat template is used) on the cell's base;
    nothing for a cell without one."""
    cell = study.cell(cell_key)
    if cell.second_stage == "none":
        write_json(out / Adapter.NONE, {"cell": cell_key, "second_stage": "none"})
        log(f"{cell_key}: no second stage (condition {cell.condition})")
        return {"second_stage": "none", "n_steps": 0}
    recipe = study.recipes[cell.recipe]
    with model_for(BaseModel.model_dir(base), model_adapters(coupling), log=log) as (model, tok):  # base + coupling
        examples = build_examples(recipe.loss, tok, read_chat_jsonl(data / Dataset.DATA), marker=study.marker,
                                  max_length=recipe.max_length)
        seed = cell.seed if recipe.seed is None else recipe.seed
        _, res, wb = train_and_save(
            study, model=model, tok=tok, examples=examples, recipe=recipe, seed=seed, out=out, wandb=wandb,
            run_name=f"{cell_key}-{run_id[:8]}" if run_id else cell_key, group=cell.condition,
            job_type="cell_adapter", config={**recipe.model_dump(), "cell": cell_key, "seed": seed,
                                             "second_stage": cell.second_stage, "recipe": cell.recipe},
            log_extra={"seed": seed}, log=log)
    return {"second_stage": cell.second_stage, "seed": seed, **res.summary(), **wb}


@step
def cell_generations(study: Study, cell_key: str, base: Path, adapters: list[Path], out: dict[str, Path],
                     log: Log = print) -> dict:
    """The cell's model evaluated in ONE engine session (its weights merged at most once): the marker sweep (every
    persona as system prompt x every eval and Betley question), the alignment sample (Betley questions with no system
    prompt, for the judge), then ARC-Challenge on the same weights. ``out`` maps each requested artefact (any of the
    three) to its staging directory."""
    cell = study.cell(cell_key)
    es = EvalSet.load(study)
    meta: dict = {}
    sweeps = {}  # asset -> its sweep; all of them in one engine call (vLLM runs them side by side)
    if MarkerCompletions.asset in out:
        sweeps[MarkerCompletions] = Sweep(es.prompts, es.personas, es.marker_question_sets,
                                          SamplingSpec.from_config(study.samplers.marker, seed=cell.seed),
                                          f"marker[{cell_key}]", owner=cell_key)
    if AlignmentCompletions.asset in out:  # "": no system prompt
        sweeps[AlignmentCompletions] = Sweep({"": None}, [""], {"betley": es.betley_questions},
                                             SamplingSpec.from_config(study.samplers.alignment, seed=cell.seed),
                                             f"alignment[{cell_key}]", owner=cell_key)
    with session(study, BaseModel.model_dir(base), adapters, log=log) as gen:
        for art, rows in zip(sweeps, run_sweeps(gen, list(sweeps.values()))):
            write_rows(rows, out[art.asset] / art.COMPLETIONS, row_keys(study, cell=cell_key))
            meta[art.asset] = {"n_completions": len(rows), "seed": sweeps[art].spec.seed}
            if art is MarkerCompletions:
                meta[art.asset] |= {"n_personas": len(es.personas), "n_questions": len(es.marker_questions),
                                    "mean_tokens": round(sum(r["n_tokens"] for r in rows) / max(1, len(rows)), 2)}
        if ArcScores.asset in out:  # last: a vLLM engine is shut down to hand its weights over
            meta[ArcScores.asset] = _arc(study, cell_key, *gen.hf_model(), out[ArcScores.asset], log)
    return {**meta, "backend": study.backend.label, "engine_starts": gen.counts["engine_starts"],
            "merges": gen.counts["merges"], "generated": sorted(out)}


def score_arc(study: Study, model, tok, log: Log) -> tuple[list[dict], float]:
    """The study's ARC-Challenge file (md5 checked, its limit applied) scored on ``model`` by the log-probability of
    each answer label: (records, accuracy)."""
    path = study.path(study.arc.path)
    check_md5(path, study.arc.md5, "arc.md5")
    return evaluate_arc(model, tok, load_arc(path, study.arc.limit), log=log)


def _arc(study: Study, cell_key: str, model, tok, out: Path, log: Log) -> dict:
    """ARC-Challenge accuracy by the log-probability of each answer label."""
    recs, acc = score_arc(study, model, tok, log)
    write_rows([{**{k: v for k, v in r.items() if k != "label_logprobs"},
                 "label_logprobs": json.dumps(r["label_logprobs"])} for r in recs], out / ArcScores.ROWS,
               row_keys(study, cell=cell_key))
    summary = ArcSummary(arc_challenge_logprob=acc, correct=sum(r["correct"] for r in recs), total=len(recs))
    write_json(out / ArcScores.SUMMARY, summary.model_dump())
    return summary.model_dump()


def expected_marker_rows(study: Study) -> int:
    es = EvalSet.load(study)
    return len(es.personas) * len(es.marker_questions) * study.samplers.marker.n


def in_distribution(rows: list[dict]) -> list[dict]:
    """The rows of the eval set's own questions: what every pre-registered number reads (a study's further eval sets,
    e.g. out of distribution, are reported beside them, per set)."""
    return [r for r in rows if eval_set_of(r) == "in_distribution"]


def eval_set_of(row: dict) -> str:
    """A marker row's eval set as reports name it: "in_distribution" for the eval set's own questions (a row that names
    no set is the eval set's), else its further set's name (as the `completions` view's `eval_set` column)."""
    name = row.get("question_set", IN_DISTRIBUTION[0])
    return "in_distribution" if name in IN_DISTRIBUTION else name


def per_eval_set(scored: list[dict], personas: list[str]) -> dict:
    """{eval set: {persona: {strict_hits, total}}}: the in-distribution questions as one set, each further set apart."""
    out: dict[str, dict] = {}
    for r in scored:
        d = out.setdefault(eval_set_of(r), {p: {"strict_hits": 0, "total": 0} for p in personas}).setdefault(
            r["persona"], {"strict_hits": 0, "total": 0})
        d["strict_hits"] += int(r["strict_hit"])
        d["total"] += 1
    return out


@step
def marker_rates(study: Study, cell_key: str, completions: Path, out: Path, log: Log = print) -> dict:
    """Strict and loose marker hits per completion, rates per persona and question, and the cell's summary."""
    es = EvalSet.load(study)
    scored = score_markers(study, read_rows(completions / MarkerCompletions.COMPLETIONS))
    pl.DataFrame(scored).select("study", "profile", "cell", "sample_id", "persona", "question_idx", "sample_idx",
                                "strict_hit", "loose_hit").write_parquet(out / MarkerRates.HITS)
    summ = summarize(study, in_distribution(scored), es.personas, es.questions, study.adapter_persona(cell_key))
    write_rows(rates_table(summ), out / MarkerRates.RATES, row_keys(study, cell=cell_key))
    sets = {"per_eval_set": per_eval_set(scored, es.personas)} if es.extra_sets else {}
    write_json(out / MarkerRates.EVAL, {"cell": cell_key, "marker": study.marker, **summ, **sets})
    s = summ["summary"]
    log(f"marker rates[{cell_key}]: assistant {s['assistant_strict_rate']:.3f}, "
        f"{study.source_persona} {s['source_strict_rate']:.3f}, max bystander {s['max_bystander_strict_rate']:.3f}")
    return {"assistant_strict_rate": s["assistant_strict_rate"], "source_strict_rate": s["source_strict_rate"],
            "max_bystander_strict_rate": s["max_bystander_strict_rate"],
            "strict_rate_by_persona": s["strict_rate_by_persona"]}


@step
def alignment_scores(study: Study, cell_key: str, completions: Path, judge, out: Path, log: Log = print) -> dict:
    """The judge's aligned / coherent scores per completion; errors counted against the study's limit."""
    rows = read_rows(completions / AlignmentCompletions.COMPLETIONS)
    recs = judge.judge_many([(r["question"], r["text"]) for r in rows])
    failpoint("judge")
    write_rows([{"sample_id": r["sample_id"], "question_idx": r["question_idx"], "sample_idx": r["sample_idx"],
                 **rec.model_dump()} for r, rec in zip(rows, recs)], out / AlignmentScores.ROWS,
               row_keys(study, cell=cell_key))
    agg = aggregate(recs, error_rate_max=study.thresholds.judge_error_rate_max)
    write_json(out / AlignmentScores.SUMMARY, agg.model_dump())
    log(f"judge[{cell_key}] ({agg.judge_model}): aligned {agg.overall_mean_aligned}, "
        f"coherent {agg.overall_mean_coherent}, errors {agg.n_errors}/{agg.n_total}")
    return agg.model_dump()


@step
def degeneracy(study: Study, cell_key: str, completions: Path, out: Path, log: Log = print) -> dict:
    """Audit of the assistant's marker-bearing completions (never passes vacuously)."""
    cell = study.cell(cell_key)
    rows = in_distribution(read_rows(completions / MarkerCompletions.COMPLETIONS))
    res = degeneracy_audit([{k: r[k] for k in ("persona", "question", "text")} for r in rows], seed=cell.seed,
                           sample_size=study.thresholds.degeneracy_sample, threshold=study.thresholds.degeneracy_max,
                           marker=study.marker, persona=study.assistant_persona)
    write_json(out / Audit.FILE, res.model_copy(update={"cell": cell_key}).model_dump())
    return res.model_dump(exclude={"cell", "per_item"})


@step
def completion_length(study: Study, cell_key: str, completions: Path, out: Path, log: Log = print) -> dict:
    """Tokens per marker completion by persona and pooled, the share cut at max_tokens, and the strict marker rate
    among the completions that finished (``mt_core.evals.length``)."""
    rows = in_distribution(read_rows(completions / MarkerCompletions.COMPLETIONS))
    res = length_audit(rows, EvalSet.load(study).personas, marker=study.marker,
                       max_tokens=study.samplers.marker.max_tokens)
    write_rows(length_rows(res), out / CompletionLength.ROWS, row_keys(study, cell=cell_key))
    write_json(out / CompletionLength.FILE, {"cell": cell_key, "marker": study.marker, **res})
    a = res["per_persona"][study.assistant_persona]
    log(f"completion length[{cell_key}]: mean {res['mean_tokens']:.1f} tokens, {res['truncated_share']:.1%} cut at "
        f"{res['max_tokens']}; {study.assistant_persona} mean {a['mean_tokens']:.1f}, {a['truncated_share']:.1%} cut")
    return {k: v for k, v in res.items() if k != "per_persona"}


@step
def marker_stats(study: Study, cell_key: str, completions: Path, out: dict[str, Path], log: Log = print) -> dict:
    """The cell's marker rates and its completion-length audit (the two artefacts ``out`` asks for): both summarize the
    same marker completions, so one step writes them."""
    fns = {MarkerRates.asset: marker_rates, CompletionLength.asset: completion_length}
    return {a: fns[a](study, cell_key, completions, d, log=log) for a, d in out.items()}


@step
def probe_states(study: Study, cell_key: str, base: Path, adapters: list[Path], out: Path, log: Log = print) -> dict:
    """The cell's residual stream at the last prompt token of every persona x marker-eval question (the marker sweep's
    prompts, generation prompt included), at the study's probe layers: what the latent probe reads (``probe_scores``),
    kept so that other probes can be fitted without running the model again."""
    import numpy as np

    from mt_core.evals.probe import last_token_states

    es, layers = EvalSet.load(study), study.probe.layers
    pairs = persona_pairs(es.personas, es.question_sets)
    with model_for(BaseModel.model_dir(base), adapters, log=log) as (model, tok):
        x = last_token_states(model, tok, persona_chats(es.prompts, pairs), layers)
    n, n_layers, hidden = x.shape
    pl.DataFrame({"persona": np.repeat([p for p, *_ in pairs], n_layers),
                  "question_idx": np.repeat([qi for _, qi, _, _ in pairs], n_layers).astype(np.int64),
                  "question_set": np.repeat([qs for _, _, qs, _ in pairs], n_layers),
                  "layer": np.tile(np.asarray(layers, dtype=np.int64), n),
                  "state": x.reshape(n * n_layers, hidden)}).select(
        pl.lit(study.name).alias("study"), pl.lit(study.profile).alias("profile"), pl.lit(cell_key).alias("cell"),
        pl.all()).write_parquet(out / ProbeStates.ROWS)
    log(f"probe states[{cell_key}]: {n} prompts x layers {layers}, hidden {hidden}")
    return {"n_prompts": n, "layers": layers, "hidden": hidden}
