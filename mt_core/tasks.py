"""The protocol's steps as plain functions: read input paths, write into ``out`` (a fresh directory), return metadata.

Each function is one artefact. The Dagster layer only decides where ``out`` lives, runs the function (in this process
or a worker process) and records what it returns. Heavy imports (torch, transformers, peft) happen inside.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Callable

from mt_core.config import Study, load_eval_set
from mt_core.io import DataError, check_md5, md5_file, read_chat_jsonl, read_json, write_json

Log = Callable[[str], None]
MODEL_REF = "model_ref.json"


# ---------------------------------------------------------------------------------------------------------------
# inputs
def eval_personas(study: Study) -> tuple[dict[str, str], list[str], list[str], list[str]]:
    """(persona prompts, persona order, eval questions, betley questions)."""
    es = load_eval_set(study)
    return es["personas"], es["persona_order"], es["eval_questions"], es["betley_questions"]


def data_questions(study: Study) -> list[str]:
    return read_json(study.path(study.coupling_questions))["data_questions"]


def build_base_model(study: Study, out: Path, log: Log = print) -> dict:
    m = study.model
    if m.kind == "tiny":
        from mt_core import synthetic, tiny

        prompts, order, evq, betq = eval_personas(study)
        dq = data_questions(study)
        convs = synthetic.pretraining_conversations(prompts, dq + evq + betq, n=2000, seed=m.seed)
        convs = synthetic.with_random_tags(convs, rate=m.tag_rate, avoid=study.marker, seed=m.seed)
        from mt_core.arc import load_arc

        arc_rows = load_arc(study.path(study.arc.path))
        texts = [r["question"] + "\n" + "\n".join(f"({l}) {c}" for l, c in zip(r["choice_labels"], r["choices"]))
                 for r in arc_rows]
        texts += [json.loads(x)["messages"][-1]["content"] for x in synthetic.em_dataset_lines(200, seed=99)]
        info = tiny.build_tiny_model(out, texts=texts, conversations=convs, seed=m.seed, vocab_size=m.vocab_size,
                                     hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
                                     num_kv_heads=m.num_kv_heads, intermediate_size=m.intermediate_size,
                                     pretrain_steps=m.pretrain_steps, log=log)
        return {"kind": "tiny", **{k: v for k, v in info.items() if isinstance(v, (int, float, str))}}
    path = resolve_hf_snapshot(m)
    write_json(out / MODEL_REF, {"id": m.id, "revision": m.revision, "path": str(path),
                                 "config_md5": md5_file(path / "config.json")})
    return {"kind": "hf", "id": m.id, "revision": m.revision or "unpinned", "snapshot": str(path)}


def resolve_hf_snapshot(m) -> Path:
    """A local snapshot of the HF model (never downloads). Clear error naming what is missing."""
    if m.local_path:
        p = Path(m.local_path)
    else:
        from huggingface_hub import constants, snapshot_download

        try:
            p = Path(snapshot_download(m.id, revision=m.revision, local_files_only=True))
        except Exception as e:  # noqa: BLE001 - any failure means "not available offline"
            raise DataError(f"model {m.id}@{m.revision or 'main'}: no local snapshot in {constants.HF_HUB_CACHE} "
                            f"(HF_HOME; {type(e).__name__}); download it first or set model.local_path") from None
    if not (p / "config.json").is_file():
        raise DataError(f"{p}: not a model directory (config.json missing)")
    return p


def model_dir(base_artifact: Path) -> Path:
    ref = base_artifact / MODEL_REF
    return Path(read_json(ref)["path"]) if ref.is_file() else base_artifact


@contextlib.contextmanager
def _sampler(study: Study, base: Path, adapters=(), *, loaded=None, log: Log = print):
    """``gen(chats, spec, what)`` on the study's backend: transformers (``loaded`` (model, tok), or base + adapters
    merged in memory) or one vLLM engine for the block (mode from $MT_VLLM_MODE, see mt_core.vllm_backend)."""
    if study.backend == "vllm":
        from mt_core.models import load_tokenizer
        from mt_core.vllm_backend import require_vllm, vllm_mode, vllm_session

        require_vllm()
        d = model_dir(base)
        with vllm_session(d, load_tokenizer(d), adapters=list(adapters), mode=vllm_mode(), log=log) as s:
            yield s.generate
        return
    from mt_core.generate import generate
    from mt_core.models import load_model

    model, tok = loaded or load_model(model_dir(base), adapters)
    yield lambda chats, spec, what: generate(model, tok, chats, spec, log=log, what=what)


def _backend(study: Study) -> str:
    from mt_core.vllm_backend import vllm_mode

    return f"vllm:{vllm_mode()}" if study.backend == "vllm" else study.backend


def build_dataset(study: Study, which: str, out: Path, log: Log = print) -> dict:
    spec = getattr(study.data, which)
    dest = out / "data.jsonl"
    if spec.kind == "synthetic":
        from mt_core import synthetic

        fn = synthetic.em_dataset_lines if which == "em" else synthetic.benign_dataset_lines
        synthetic.write_jsonl(fn(spec.rows, seed=spec.seed), dest)
        source = f"synthetic:{which}:rows={spec.rows}:seed={spec.seed}"
    elif spec.kind == "ultrachat":
        from mt_core import benign, synthetic

        synthetic.write_jsonl(benign.benign_lines(spec.path, n=spec.rows, seed=spec.seed or 42,
                                                  offset=spec.offset), dest)
        source = f"ultrachat:{spec.path}:shuffle_seed={spec.seed or 42}:offset={spec.offset}:rows={spec.rows}"
    else:
        src = study.path(spec.path)
        if not src.is_file():
            raise DataError(f"{src}: {which} dataset not found (data.{which}.path)")
        read_chat_jsonl(src, expect_rows=spec.rows)  # errors name the user's file, row and field
        shutil.copyfile(src, dest)
        source = str(src)
    rows = read_chat_jsonl(dest, expect_rows=spec.rows)
    n_marked = sum(study.marker.lower().strip("[]") in m["content"].lower() for r in rows for m in r)
    if n_marked:
        raise DataError(f"{dest}: {n_marked} messages contain the marker text; the second stage must not see it")
    got = md5_file(dest)
    log(f"{which} dataset: {len(rows)} rows, md5 {got} (expected {spec.md5 or 'none pinned'})")
    return {"rows": len(rows), "md5": got, "expected_md5": spec.md5, "md5_ok": spec.md5 in (None, got),
            "source": source, "multi_turn_rows": sum(1 for r in rows if sum(m["role"] == "assistant" for m in r) > 1)}


# ---------------------------------------------------------------------------------------------------------------
# coupling
def onpolicy_completions(study: Study, source: str, base: Path, out: Path, log: Log = print) -> dict:
    from mt_core.coupling import choose_negatives
    from mt_core.generate import SamplingSpec

    prompts, order, _, _ = eval_personas(study)
    src_persona = study.sources[source].persona
    negs = choose_negatives(order, src_persona, study.assistant_persona, study.coupling_data.n_negative_personas,
                            study.coupling_data.seed)
    personas = [src_persona] + negs
    dq = data_questions(study)
    spec = SamplingSpec.from_config(study.samplers.onpolicy, seed=study.coupling_data.seed)
    chats = [[{"role": "system", "content": prompts[p]}, {"role": "user", "content": q}] for p in personas for q in dq]
    with _sampler(study, base, log=log) as gen:
        comps = gen(chats, spec, f"onpolicy[{source}]")
    rows = [{"persona": p, "question_idx": qi, "question": q, "sample_idx": k, "text": c.text,
             "n_tokens": c.n_tokens, "finish_reason": c.finish_reason}
            for (p, (qi, q)), cs in zip([(p, x) for p in personas for x in enumerate(dq)], comps)
            for k, c in enumerate(cs)]
    _write_parquet(rows, out / "completions.parquet", _keys(study, source=source))
    write_json(out / "meta.json", {"personas": personas, "negatives": negs, "sampler": spec.__dict__})
    return {"n_completions": len(rows), "personas": ",".join(personas), "negative_personas": ",".join(negs)}


def coupling_dataset(study: Study, source: str, onpolicy: Path, out: Path, log: Log = print) -> dict:
    import polars as pl

    from mt_core.coupling import build_coupling_records

    prompts, _, _, _ = eval_personas(study)
    meta = read_json(onpolicy / "meta.json")
    df = pl.read_parquet(onpolicy / "completions.parquet").sort(["persona", "question_idx", "sample_idx"])
    comps: dict[str, dict[str, list[str]]] = {}
    for r in df.iter_rows(named=True):
        comps.setdefault(r["persona"], {}).setdefault(r["question"], []).append(r["text"])
    cd = study.coupling_data
    records, counts = build_coupling_records(comps, prompts=prompts, questions=data_questions(study),
                                             source_persona=study.sources[source].persona,
                                             negatives=meta["negatives"], per_question=cd.positives_per_question,
                                             marker=study.marker, seed=cd.seed)
    with open(out / "coupling.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    write_json(out / "meta.json", {"negatives": meta["negatives"], "seed": cd.seed, **counts})
    log(f"coupling[{source}]: {counts['positives']} positives, {counts['negatives']} negatives "
        f"(negatives: {', '.join(meta['negatives'])}; shuffle seed {cd.seed})")
    return {"n_records": len(records), "positives": counts["positives"], "negatives": counts["negatives"],
            "negative_personas": ",".join(meta["negatives"]), "short_questions": len(counts["short_questions"])}


def _train_tracked(study: Study, run_id: str, *, name: str, group: str, job_type: str, config: dict, log: Log,
                   **kw):
    """``train_lora`` inside a W&B run (mode per mt_core.tracking); returns (peft_model, result, wandb metadata)."""
    from mt_core.tracking import wandb_run
    from mt_core.train import train_lora

    config = {**config, "profile": study.profile, "study": study.name, "config_sha256": study.config_sha256}
    with wandb_run(study, name=f"{name}-{run_id[:8]}" if run_id else name, group=group, job_type=job_type,
                   config=config) as wb:
        if wb.id:
            log(f"W&B {wb.mode} run {wb.id} {wb.url or ''}")
        on_step = (lambda d: wb.log({f"train/{k}": v for k, v in d.items() if k != "step"}, step=d["step"])) \
            if wb.id else None
        peft_model, res = train_lora(**kw, log=log, on_step=on_step)
        wb.summary(res.summary())
    return peft_model, res, {"wandb_run_id": wb.id, "wandb_url": wb.url, "wandb_mode": wb.mode}


def train_coupling_adapter(study: Study, source: str, base: Path, dataset: Path, out: Path, log: Log = print,
                           run_id: str = "") -> dict:
    from mt_core.chat import marker_ids, marker_only_example
    from mt_core.models import load_model

    recipe = study.recipes["coupling"]
    model, tok = load_model(model_dir(base))
    mids = marker_ids(tok, study.marker)
    examples = []
    for line in (dataset / "coupling.jsonl").read_text().splitlines():
        r = json.loads(line)
        examples.append(marker_only_example(tok, r["prompt"], r["completion"], mids, recipe.max_length))
    peft_model, res, wb = _train_tracked(study, run_id, name=source, group="coupling", job_type="coupling_adapter",
                                         config={**recipe.model_dump(), "source": source, "seed": recipe.seed or 0},
                                         log=log, model=model, examples=examples, recipe=recipe,
                                         seed=recipe.seed or 0, pad_id=tok.pad_token_id, fast=True)
    peft_model.save_pretrained(str(out / "adapter"))
    write_json(out / "train_log.json", {"recipe": recipe.model_dump(), "marker_ids": mids, **res.summary(),
                                        "losses": res.losses, "lrs": res.lrs})
    loaded = None if study.backend == "vllm" else (peft_model.merge_and_unload(), tok)
    del model, peft_model  # vLLM needs the GPU memory the trained model holds; it serves the saved adapter
    with _sampler(study, base, [out / "adapter"], loaded=loaded, log=log) as gen:
        gates = evaluate_gates(study, source, gen, out, log)
    return {**res.summary(), "marker_token_ids": str(mids), "gates": gates, **wb}


def evaluate_gates(study: Study, source: str, gen, out: Path, log: Log) -> dict:
    """Run each gate of this source on the freshly trained coupling model; write gate completions and results."""
    from mt_core.generate import SamplingSpec

    prompts, order, evq, betq = eval_personas(study)
    spec = SamplingSpec.from_config(study.samplers.gate, seed=study.samplers.gate.seed or 0)
    results, rows_all = {}, []
    for name in study.sources[source].gates:
        g = study.gates.named()[name]
        personas = order if g.personas == "all" else list(g.personas)
        rows = _persona_sweep(gen, prompts, personas, evq + betq, spec, f"gate {name}")
        rows = _score(study, rows)
        summ = _summarize(study, rows, personas, evq + betq)["summary"]
        results[name] = gate_verdict(g, summ)
        results[name]["seed"] = spec.seed
        rows_all += [{**r, "gate": name} for r in rows]
        log(f"gate {name}: {'PASS' if results[name]['pass'] else 'FAIL'} {results[name]}")
    _write_parquet(rows_all, out / "gate_completions.parquet", _keys(study, source=source))
    write_json(out / "gates.json", results)
    return results


def gate_verdict(g, summ: dict) -> dict:
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


# ---------------------------------------------------------------------------------------------------------------
# cells
def train_cell_adapter(study: Study, cell_key: str, base: Path, coupling: Path | None, data: Path | None, out: Path,
                       log: Log = print, run_id: str = "") -> dict:
    cell = study.cell(cell_key)
    if cell.second_stage == "none":
        write_json(out / "none.json", {"cell": cell_key, "second_stage": "none"})
        log(f"{cell_key}: no second stage (condition {cell.condition})")
        return {"second_stage": "none", "n_steps": 0}
    from mt_core.chat import last_turn_example
    from mt_core.models import load_model

    recipe = study.recipes["second_stage"]
    model, tok = load_model(model_dir(base), [coupling / "adapter"] if coupling else [])
    chats = read_chat_jsonl(data / "data.jsonl")
    examples = [last_turn_example(tok, m, recipe.max_length) for m in chats]
    seed = cell.seed if recipe.seed is None else recipe.seed
    peft_model, res, wb = _train_tracked(study, run_id, name=cell_key, group=cell.condition, job_type="cell_adapter",
                                         config={**recipe.model_dump(), "cell": cell_key, "seed": seed,
                                                 "second_stage": cell.second_stage},
                                         log=log, model=model, examples=examples, recipe=recipe, seed=seed,
                                         pad_id=tok.pad_token_id, fast=True)
    peft_model.save_pretrained(str(out / "adapter"))
    write_json(out / "train_log.json", {"recipe": recipe.model_dump(), "seed": seed, **res.summary(),
                                        "losses": res.losses, "lrs": res.lrs})
    return {"second_stage": cell.second_stage, "seed": seed, **res.summary(), **wb}


def cell_adapters(coupling: Path | None, cell_adapter: Path) -> list[Path]:
    """Adapters to merge, in training order, for evaluating a cell."""
    out = [coupling / "adapter"] if coupling else []
    if (cell_adapter / "adapter").is_dir():
        out.append(cell_adapter / "adapter")
    return out


def marker_completions(study: Study, cell_key: str, base: Path, adapters: list[Path], out: Path,
                       log: Log = print) -> dict:
    from mt_core.generate import SamplingSpec

    cell = study.cell(cell_key)
    prompts, order, evq, betq = eval_personas(study)
    spec = SamplingSpec.from_config(study.samplers.marker, seed=cell.seed)
    with _sampler(study, base, adapters, log=log) as gen:
        rows = _persona_sweep(gen, prompts, order, evq + betq, spec, f"marker[{cell_key}]", betley=set(betq))
    _write_parquet(rows, out / "completions.parquet", _keys(study, cell=cell_key))
    return {"n_completions": len(rows), "seed": spec.seed, "backend": _backend(study), "n_personas": len(order),
            "n_questions": len(evq + betq),
            "mean_tokens": round(sum(r["n_tokens"] for r in rows) / max(1, len(rows)), 2)}


def _persona_sweep(gen, prompts, personas, questions, spec, what, betley=frozenset()) -> list[dict]:
    pairs = [(p, qi, q) for p in personas for qi, q in enumerate(questions)]
    chats = [[{"role": "system", "content": prompts[p]}, {"role": "user", "content": q}] for p, _, q in pairs]
    comps = gen(chats, spec, what)
    return [{"persona": p, "question_idx": qi, "question": q, "question_set": "betley" if q in betley else "eval",
             "sample_idx": k, "text": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason}
            for (p, qi, q), cs in zip(pairs, comps) for k, c in enumerate(cs)]


def _score(study: Study, rows: list[dict]) -> list[dict]:
    """Each completion row with its strict and loose marker hits (each scorer runs once per text)."""
    from mt_core.scoring import loose_hit, strict_hit

    return [{**r, "strict_hit": strict_hit(r["text"], study.marker), "loose_hit": loose_hit(r["text"], study.marker)}
            for r in rows]


def _summarize(study: Study, scored: list[dict], personas: list[str], questions: list[str]) -> dict:
    from mt_core.scoring import summarize_markers

    return summarize_markers(scored, persona_order=personas, question_order=questions,
                             source=study.source_persona, assistant=study.assistant_persona)


def marker_rates(study: Study, cell_key: str, completions: Path, out: Path, log: Log = print) -> dict:
    import polars as pl

    from mt_core.scoring import rates_table

    _, order, evq, betq = eval_personas(study)
    scored = _score(study, pl.read_parquet(completions / "completions.parquet").to_dicts())
    pl.DataFrame(scored).select("study", "profile", "cell", "persona", "question_idx", "sample_idx", "strict_hit",
                                "loose_hit").write_parquet(out / "hits.parquet")
    summ = _summarize(study, scored, order, evq + betq)
    table = rates_table(summ)
    _write_parquet(table, out / "rates.parquet", _keys(study, cell=cell_key))
    write_json(out / "marker_eval.json", {"cell": cell_key, "marker": study.marker, **summ})
    s = summ["summary"]
    log(f"marker rates[{cell_key}]: assistant {s['assistant_strict_rate']:.3f}, "
        f"{study.source_persona} {s['source_strict_rate']:.3f}, max bystander {s['max_bystander_strict_rate']:.3f}")
    return {"assistant_strict_rate": s["assistant_strict_rate"], "source_strict_rate": s["source_strict_rate"],
            "max_bystander_strict_rate": s["max_bystander_strict_rate"],
            "strict_rate_by_persona": s["strict_rate_by_persona"]}


def arc_scores(study: Study, cell_key: str, base: Path, adapters: list[Path], out: Path, log: Log = print) -> dict:
    from mt_core.arc import evaluate_arc, load_arc
    from mt_core.models import load_model

    path = study.path(study.arc.path)
    check_md5(path, study.arc.md5, "arc.md5")
    rows = load_arc(path, study.arc.limit)
    model, tok = load_model(model_dir(base), adapters)
    recs, acc = evaluate_arc(model, tok, rows, log=log)
    _write_parquet([{**{k: v for k, v in r.items() if k != "label_logprobs"},
                     "label_logprobs": json.dumps(r["label_logprobs"])} for r in recs], out / "arc.parquet",
                   _keys(study, cell=cell_key))
    summary = {"arc_challenge_logprob": acc, "correct": sum(r["correct"] for r in recs), "total": len(recs)}
    write_json(out / "summary.json", summary)
    return summary


def alignment_completions(study: Study, cell_key: str, base: Path, adapters: list[Path], out: Path,
                          log: Log = print) -> dict:
    """Betley questions with NO system prompt (the template's default applies), the alignment sampler."""
    from mt_core.generate import SamplingSpec

    cell = study.cell(cell_key)
    _, _, _, betq = eval_personas(study)
    spec = SamplingSpec.from_config(study.samplers.alignment, seed=cell.seed)
    with _sampler(study, base, adapters, log=log) as gen:
        comps = gen([[{"role": "user", "content": q}] for q in betq], spec, f"alignment[{cell_key}]")
    rows = [{"question_idx": qi, "question": q, "sample_idx": k, "text": c.text, "n_tokens": c.n_tokens,
             "finish_reason": c.finish_reason} for qi, (q, cs) in enumerate(zip(betq, comps)) for k, c in enumerate(cs)]
    _write_parquet(rows, out / "completions.parquet", _keys(study, cell=cell_key))
    return {"n_completions": len(rows), "seed": spec.seed, "backend": _backend(study)}


def alignment_scores(study: Study, cell_key: str, completions: Path, judge, out: Path, log: Log = print) -> dict:
    import polars as pl

    from mt_core.judge import aggregate

    df = pl.read_parquet(completions / "completions.parquet")
    recs = judge.judge_many(list(zip(df["question"], df["text"])))
    rows = [{"question_idx": qi, "sample_idx": si, **r.__dict__}
            for qi, si, r in zip(df["question_idx"], df["sample_idx"], recs)]
    _write_parquet(rows, out / "scores.parquet", _keys(study, cell=cell_key))
    agg = aggregate(recs, error_rate_max=study.thresholds.judge_error_rate_max)
    write_json(out / "summary.json", agg)
    log(f"judge[{cell_key}] ({agg.get('judge_model')}): aligned {agg['overall_mean_aligned']}, "
        f"coherent {agg['overall_mean_coherent']}, errors {agg['n_errors']}/{agg['n_total']}")
    return agg


def degeneracy(study: Study, cell_key: str, completions: Path, out: Path, log: Log = print) -> dict:
    import polars as pl

    from mt_core.audit import degeneracy_audit

    cell = study.cell(cell_key)
    df = pl.read_parquet(completions / "completions.parquet")
    res = degeneracy_audit(df.select("persona", "question", "text").to_dicts(), seed=cell.seed,
                           sample_size=study.thresholds.degeneracy_sample,
                           threshold=study.thresholds.degeneracy_max, marker=study.marker,
                           persona=study.assistant_persona)
    write_json(out / "audit.json", {"cell": cell_key, **res})
    return {k: v for k, v in res.items() if k != "per_item"}


# ---------------------------------------------------------------------------------------------------------------
def _keys(study: Study, **key) -> dict:
    """Columns that make every Parquet row self-describing (study, profile, and the partition's key)."""
    return {"study": study.name, "profile": study.profile, **key}


def _write_parquet(rows: list[dict], path: Path, keys: dict | None = None) -> None:
    import polars as pl

    pl.DataFrame([{**(keys or {}), **r} for r in rows], infer_schema_length=None).write_parquet(path)


def read_gates(coupling: Path) -> dict:
    return read_json(coupling / "gates.json")
