"""What several steps do the same way: ask personas questions, score markers, train and save an adapter."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mt_core.config import Recipe, Study
from mt_core.evals.markers import loose_hit, strict_hit, summarize_markers
from mt_core.generate.sampling import SamplingSpec
from mt_core.generate.session import Generate, one_by_one
from mt_core.io import read_json, write_json
from mt_core.layout import Adapter, Sample, sample_id
from mt_core.model.tracking import WandbSettings, wandb_run
from mt_core.model.train import train_lora

Log = Callable[[str], None]


@dataclass(frozen=True)
class Sweep:
    """``spec.n`` completions for every persona (its system prompt; None: no system turn, the chat template's default
    applies) x question, as ``Sample`` rows; a question's index is its place in the concatenated sets."""
    prompts: dict[str, str | None]
    personas: list[str]
    question_sets: dict[str, list[str]]
    spec: SamplingSpec
    what: str
    owner: str

    def pairs(self) -> list[tuple]:
        return persona_pairs(self.personas, self.question_sets)

    def request(self) -> tuple[list[list[dict]], SamplingSpec, str]:
        return persona_chats(self.prompts, self.pairs()), self.spec, self.what

    def rows(self, comps) -> list[dict]:
        return [Sample(sample_id(self.owner, p, qi, k), p, qi, q, s, k, c.text, c.n_tokens, c.finish_reason).row()
                for (p, qi, s, q), cs in zip(self.pairs(), comps) for k, c in enumerate(cs)]


def persona_pairs(personas: list[str], question_sets: dict[str, list[str]]) -> list[tuple]:
    """(persona, question index, question set, question) for every persona x question, personas outermost."""
    questions = [(s, q) for s, qs in question_sets.items() for q in qs]
    return [(p, qi, s, q) for p in personas for qi, (s, q) in enumerate(questions)]


def persona_chats(prompts: dict[str, str | None], pairs: list[tuple]) -> list[list[dict]]:
    """The chat prompt of each ``persona_pairs`` entry: the persona's system prompt (None: no system turn), then the
    question."""
    return [([{"role": "system", "content": prompts[p]}] if prompts[p] is not None else [])
            + [{"role": "user", "content": q}] for p, _, _, q in pairs]


def run_sweeps(gen: Generate, sweeps: list[Sweep]) -> list[list[dict]]:
    """Each sweep's rows. An engine (``Engine.many``) gets all sweeps at once, which vLLM runs side by side; a plain
    generate function runs them one after another.

    A chat that several sweeps ask with the same sampler is generated once and its completions go to each of them:
    G0's two personas are G0b's too, and on vLLM (a seed per request, from the sampler's seed and the prompt) the
    second generation would only repeat the first. Sweeps with the same sampler become one batch of their distinct
    chats, in the order they first appear."""
    many = getattr(gen, "many", None) or one_by_one(gen)
    batches: dict[SamplingSpec, tuple[list, dict, list[str]]] = {}  # spec -> (distinct chats, chat key -> index, whats)
    where = []  # per sweep: (spec, the batch index of each of its chats)
    for chats, spec, what in (sw.request() for sw in sweeps):
        distinct, index, whats = batches.setdefault(spec, ([], {}, []))
        whats.append(what)
        idx = []
        for chat in chats:
            key = tuple((m["role"], m["content"]) for m in chat)
            if key not in index:
                index[key] = len(distinct)
                distinct.append(chat)
            idx.append(index[key])
        where.append((spec, idx))
    out = dict(zip(batches, many([(chats, spec, " + ".join(whats)) for spec, (chats, _, whats) in batches.items()])))
    return [sw.rows([out[spec][i] for i in idx]) for sw, (spec, idx) in zip(sweeps, where)]


def persona_sweep(gen: Generate, prompts: dict[str, str | None], personas: list[str],
                  question_sets: dict[str, list[str]], spec: SamplingSpec, what: str, owner: str) -> list[dict]:
    """One ``Sweep``'s rows."""
    return run_sweeps(gen, [Sweep(prompts, personas, question_sets, spec, what, owner)])[0]


def score_markers(study: Study, rows: list[dict]) -> list[dict]:
    """Each completion row with its strict and loose marker hits (each scorer runs once per text)."""
    return [{**r, "strict_hit": strict_hit(r["text"], study.marker), "loose_hit": loose_hit(r["text"], study.marker)}
            for r in rows]


def summarize(study: Study, scored: list[dict], personas: list[str], questions: list[str], own: str | None) -> dict:
    """Marker rates of one model; ``own``: the persona of its coupling adapter (None: raw), never a bystander."""
    return summarize_markers(scored, persona_order=personas, question_order=questions,
                             source=study.source_persona, assistant=study.assistant_persona, own=own)


def train_and_save(study: Study, *, model, tok, examples: list, recipe: Recipe, seed: int, out: Path,
                   wandb: WandbSettings, run_name: str, group: str, job_type: str, config: dict, log_extra: dict,
                   log: Log) -> tuple[object, object, dict]:
    """Train a LoRA inside a W&B run, save it and its training log into ``out``; (peft_model, result, W&B metadata)."""
    config = {**config, "profile": study.profile, "study": study.name, "config_sha256": study.config_sha256}
    with wandb_run(wandb, name=run_name, group=group, job_type=job_type, config=config) as wb:
        if wb.id:
            log(f"W&B {wb.mode} run {wb.id} {wb.url or ''}")
        on_step = (lambda d: wb.log({f"train/{k}": v for k, v in d.items() if k != "step"}, step=d["step"])) \
            if wb.id else None
        peft_model, res = train_lora(model=model, examples=examples, recipe=recipe, seed=seed,
                                     pad_id=tok.pad_token_id, log=log, on_step=on_step)
        wb.summary(res.summary())
    save_adapter(study, peft_model, out / Adapter.DIR)
    write_json(out / Adapter.TRAIN_LOG, {"recipe": recipe.model_dump(), **log_extra, **res.record(),
                                         "losses": res.losses, "lrs": res.lrs})
    return peft_model, res, {"wandb_run_id": wb.id, "wandb_url": wb.url, "wandb_mode": wb.mode}


def save_adapter(study: Study, peft_model, d: Path) -> None:
    """PEFT's save, made a function of the weights and the recipe alone, so the same training gives the same md5 in
    any artefact root and any process: the config names the study's model instead of the base artefact's path, its
    target modules are sorted (PEFT writes a set, whose order changes from process to process), and PEFT's model card
    (README.md, a template around the same path) is not kept."""
    peft_model.save_pretrained(str(d))
    cfg = read_json(d / "adapter_config.json")
    m = study.model
    cfg["base_model_name_or_path"] = m.id if m.kind == "hf" else f"{m.kind}:{study.name}/{study.profile}"
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    write_json(d / "adapter_config.json", cfg)
    (d / "README.md").unlink(missing_ok=True)
