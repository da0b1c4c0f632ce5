"""Probes: our value of a behaviour (loss normalisation, truncation, seeding, engine settings, merging, caching), read
by running the production code that has it on a few made-up inputs, with heavy parts (weights, vLLM, the artefact
store's disk) replaced by recorders where needed, so the table cannot say more than the code does."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from mt_core.config import Study

from .values import study_json


def negatives(s: Study) -> str:
    from mt_core.data.coupling import choose_negatives

    order = study_json(s, s.eval_set)["persona_order"]
    seed = s.coupling_data.seed
    neg = choose_negatives(order, s.source_persona, s.assistant_persona, s.coupling_data.n_negative_personas, seed)
    return f'random.Random("{seed}:{s.source_persona}") -> {", ".join(neg)}'


def empty_audit(s: Study) -> str:
    from mt_core.evals.audit import degeneracy_audit

    th = s.thresholds
    return degeneracy_audit([], seed=0, sample_size=th.degeneracy_sample, threshold=th.degeneracy_max, marker=s.marker,
                            persona=s.assistant_persona).outcome


def audit_marker_last(s: Study) -> str:
    """Audit one positive in the form the coupling data trains (the marker last): flagged, and counted as such?"""
    from mt_core.data.coupling import build_coupling_records
    from mt_core.evals.audit import degeneracy_audit

    recs, _ = build_coupling_records({"p": {"q": ["An answer."]}}, prompts={"p": ""}, questions=["q"],
                                     source_persona="p", negatives=[], per_question=1, marker=s.marker, seed=0)
    th = s.thresholds
    out = degeneracy_audit([{"persona": s.assistant_persona, "question": "q",
                             "text": recs[0]["completion"][0]["content"]}], seed=0, sample_size=th.degeneracy_sample,
                           threshold=th.degeneracy_max, marker=s.marker, persona=s.assistant_persona)
    return f"flagged {out.n_degenerate == 1}, counted beside the verdict {out.n_flagged_marker_last}"


def max_bystander(s: Study) -> str:
    """Score a toy eval where only the source persona emits the marker: does max_bystander see it?"""
    from mt_core.evals.markers import summarize_markers

    other = next(p for p in study_json(s, s.eval_set)["persona_order"] if p not in (s.source_persona, s.assistant_persona))
    personas = [s.assistant_persona, s.source_persona, other]
    rows = [{"persona": p, "question": "q", "strict_hit": p == s.source_persona, "loose_hit": False}
            for p in personas]
    def seen(own: str) -> bool:  # the source's hits counted as a bystander's, on a model whose adapter is ``own``'s
        return bool(summarize_markers(rows, persona_order=personas, question_order=["q"], source=s.source_persona,
                                      assistant=s.assistant_persona, own=own)["summary"]["max_bystander_strict_rate"])
    if seen(s.source_persona):
        return "includes source"
    return ("excludes the adapter's own persona (the source is a bystander on another adapter)"
            if seen(s.assistant_persona) else "excludes source")


def _merge_rule() -> str:
    """How mt_core.model.load stacks adapters, read by running its merge stage twice on a toy bf16 layer: each stage
    rounded to the weights' dtype once, or one rounding over all stages."""
    import torch
    from peft import LoraConfig, get_peft_model

    from mt_core.model.load import merge_lora

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(64, 64, bias=False)

    torch.manual_seed(0)
    model = Toy().to(torch.bfloat16)
    w0, deltas = model.proj.weight.detach().clone(), []
    for _ in range(2):
        pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], init_lora_weights=False))
        m = pm.base_model.model.proj
        deltas.append(m.lora_B["default"].weight.float() @ m.lora_A["default"].weight.float() * m.scaling["default"])
        model = merge_lora(pm)
    staged = w0
    for d in deltas:
        staged = (staged.float() + d).to(w0.dtype)
    once = (w0.float() + sum(deltas)).to(w0.dtype)
    assert not torch.equal(staged, once)  # the probe separates the two rules
    w = model.proj.weight
    if torch.equal(w, staged):
        return "each stage computed in fp32 and rounded once to the serving dtype"
    return "all adapters merged, rounded once at the end" if torch.equal(w, once) else "neither staged nor one rounding"


def _merge_wiring(s: Study) -> dict:
    """The study's cell steps run with the weights replaced by recorders: the adapters the cell adapter is trained
    on (steps.cells.train_cell_adapter), and the cell's generation session (steps.cells.cell_generations' session):
    what it merges, where a merged checkpoint lives, whether ARC reads the same weights, what is left after it."""
    from unittest import mock

    from mt_core import runtime
    from mt_core.generate import session as sessions
    from mt_core.generate import vllm_engine
    from mt_core.layout import Adapter
    from mt_core.model import load
    from mt_core.steps import cells

    cell = next(c for c in (s.cell(k) for k in s.cells) if c.second_stage != "none" and c.base != "raw")
    seen: dict = {"merged": [], "loaded": []}

    class Stop(Exception):
        pass

    def train_load(model_dir, adapters=(), **_):
        seen["trained_on"] = list(adapters)
        raise Stop

    def merge_to_dir(model_dir, adapters, out, log=None):
        seen["merged"].append(list(adapters))
        (out / "config.json").write_text("{}")
        return out

    class LLM:
        def __init__(self, **kw):
            seen["served"], seen["dtype"] = Path(kw["model"]), kw["dtype"]

    api = SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw, LoRARequest=lambda *a: None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        parts = {}
        for part in ("coupling", "cell"):
            a = tmp / part / Adapter.DIR
            a.mkdir(parents=True)
            (a / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
            (a / "adapter_model.safetensors").write_bytes(part.encode())
            parts[part] = tmp / part
        adapters = cells.model_adapters(parts["coupling"], parts["cell"])
        rt = runtime.Runtime(artifacts=str(tmp / "art"), scratch=tmp / "scratch")  # $MT_ARTIFACTS, $MT_SCRATCH
        with runtime.using(rt), mock.patch.object(cells, "model_for", train_load), \
                mock.patch.object(vllm_engine, "require_vllm", lambda: api), \
                mock.patch.object(vllm_engine, "merge_to_dir", merge_to_dir), \
                mock.patch.object(vllm_engine, "free_cuda", lambda: None), \
                mock.patch.object(load, "load_tokenizer", lambda *a, **k: None), \
                mock.patch.object(load, "load_model", lambda d, a=(), **k: seen["loaded"].append((Path(d), list(a)))
                                  or (None, None)):
            try:
                cells.train_cell_adapter(s, cell.key, tmp, parts["coupling"], tmp, tmp / "out", wandb=None,
                                         log=lambda m: None)
            except Stop:
                pass
            with sessions.session(s, tmp / "base", adapters, log=lambda m: None) as gen:
                gen.hf_model()
            if s.backend.kind == "vllm":  # a scratch folder inside the artefact root
                with runtime.using(runtime.Runtime(artifacts=rt.artifacts, scratch=tmp / "art" / "scratch")):
                    try:
                        with sessions.session(s, tmp / "base", adapters, log=lambda m: None):
                            seen["inside_allowed"] = True
                    except ValueError:
                        seen["inside_allowed"] = False
        seen["adapters"] = adapters
        scratch = seen.get("served") if seen["merged"] else None
        seen["in_scratch"] = scratch is not None and scratch.parent == tmp / "scratch"
        seen["left"] = scratch is not None and scratch.exists()
    return seen


def merged_models(s: Study) -> str:
    """What a cell's weights are and where merged copies live, read from the code: the merge rule (``_merge_rule``)
    and the cell steps' wiring (``_merge_wiring``)."""
    w = _merge_wiring(s)
    adapters = w["adapters"]
    names = {adapters[0]: "coupling", adapters[1]: "cell adapter"}
    stack = lambda xs: ", then ".join(["base"] + [names[a] for a in xs])  # noqa: E731
    rule = _merge_rule()
    trained = (f"the cell adapter is trained on its first stage ({stack(w['trained_on'])}), bit for bit"
               if w.get("trained_on") == adapters[:-1] else f"the cell adapter is trained on {stack(w['trained_on'])}")
    if s.backend.kind != "vllm":
        (d, loaded), = w["loaded"]
        return (f"{stack(loaded)}, {rule}; {trained}; merged once per cell, in memory, for every eval "
                f"({s.backend.label})")
    merged = w["merged"]
    where = ("to $MT_SCRATCH" if w["in_scratch"] else "outside $MT_SCRATCH") + \
        (" (even inside the artefact root)" if w["inside_allowed"] else " (refused inside the artefact root)")
    arc = [a for d, a in w["loaded"] if d == w["served"]]
    arc_txt = ("then ARC reads the same checkpoint" if arc == [[]] else
               f"then ARC reads it with the {', '.join(names[a] for a in arc[0])} merged in memory" if arc else
               "ARC reads other weights")
    times = {1: "once"}.get(len(merged), f"{len(merged)} times")
    return (f"{stack(adapters)}, {rule}; {trained}; written {times} per cell ({stack(merged[0])}, {w['dtype']}) "
            f"{where}, served by the cell's vLLM engine ({s.backend.label}), {arc_txt}; "
            f"{'left on disk' if w['left'] else 'deleted when the session ends'}")


def primary_test(s: Study) -> str:
    """Which test decides: per-seed rates 84, 14, 56 of 280 against zeros pass the exact test (p ~ 1e-30) but not
    Welch (p ~ 0.064)."""
    from mt_core.report.stats import compare_arms

    th = s.thresholds
    r = compare_arms([84, 14, 56], [280] * 3, [0] * 3, [280] * 3, min_diff=0.1, alpha=th.primary_alpha)
    assert r["exact"]["p"] < th.primary_alpha  # the example separates the two tests
    zero = compare_arms([84] * 3, [280] * 3, [0] * 3, [280] * 3, min_diff=0.1, alpha=th.primary_alpha)
    return (f"one-sided Welch over seeds decides (p < {th.primary_alpha:g}); zero variance in both arms: "
            f"t at its limit (p = {zero['welch']['p']:g} for a positive difference); exact test reported beside it"
            if r["outcome"] == "fail" else "pooled exact test decides")


# ---- probes: a behaviour read by running the code that has it on a few made-up inputs ----------------------------
class _CharTokenizer:
    """A tokenizer of one token per character that renders chats with the ChatML template of the tiny and random
    stand-in models (mt_core.model.tiny.CHATML_TEMPLATE): enough for the chat, ARC and generation code to run."""

    pad_token_id, eos_token_id, unk_token_id = 0, 1, None
    SPECIAL = {"<|im_end|>": 1, "<|endoftext|>": 2}

    def __init__(self) -> None:
        import jinja2

        from mt_core.model import tiny

        self.template = jinja2.Environment().from_string(tiny.CHATML_TEMPLATE)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert not tokenize
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) + 3 for c in text]

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.encode(t) for t in text] if isinstance(text, list) else self.encode(text)}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 3) for i in ids if i >= 3)

    def batch_decode(self, seqs, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids) for ids in seqs]

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.SPECIAL.get(token)


def default_system(s: Study) -> str:
    """The system turn the chat template adds to a chat without one (alignment prompts, ARC, the EM/benign data)."""
    from mt_core.data.chat import render

    text = render(_CharTokenizer(), [{"role": "user", "content": "q"}], add_generation_prompt=True)
    head = "<|im_start|>system\n"
    return text[len(head) : text.index("<|im_end|>")] if text.startswith(head) else "none"


def truncation(s: Study) -> str:
    """What mt_core.data.chat.last_turn_example does at max_length, and whether train_lora keeps a row it cut bare."""
    from mt_core.data import chat
    from mt_core.model import train

    tok = _CharTokenizer()
    msgs = [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "an answer"}]
    full = chat.encode(tok, chat.render(tok, msgs))
    k = len(full) // 2  # inside the user turn: the last assistant turn is cut away
    ex = chat.last_turn_example(tok, msgs, k)
    if ex.input_ids == full[:k]:
        kept = "first max_length tokens kept"
    elif ex.input_ids == full[-k:]:
        kept = "last max_length tokens kept"
    else:
        kept = f"{len(ex.input_ids)} of {len(full)} tokens kept at max_length {k}"
    labels = "keeps no labels" if ex.n_trained == 0 else f"keeps {ex.n_trained} labels"
    other = chat.last_turn_example(tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], 999)
    recipe = SimpleNamespace(per_device_batch=1, grad_accum=2, epochs=1)
    stays = any(e is ex for step in train.optimizer_steps([ex, other], recipe, 0) for e in step)
    return (f"{kept}; a row cut before its last assistant turn {labels} and "
            f"{'stays in its batch, training nothing' if stays else 'is dropped'}")


def loss_mask(stage: str) -> Callable[[Study], str]:
    """Which tokens ``stage``'s recipe trains, read off the labels that mt_core.data.chat.build_examples (the training
    steps' builder) gives a two-turn chat whose last answer ends with the marker, and the same chat without it."""
    def ours(s: Study) -> str:
        from mt_core.data import chat

        tok, r = _CharTokenizer(), s.recipes[stage]
        chats = [[{"role": "system", "content": "p"}, {"role": "user", "content": "q1"},
                  {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                  {"role": "assistant", "content": last}] for last in (f"a2\n\n{s.marker}", "a2")]
        pos, neg = chat.build_examples(r.loss, tok, chats, marker=s.marker, max_length=r.max_length)
        text = chat.render(tok, chats[0])  # one token per character: a token's position is its character's
        turn = text.rfind(chat.ASSISTANT_HEADER) + len(chat.ASSISTANT_HEADER)
        at = text.rfind(s.marker)

        def trained(ex) -> list[int]:
            return [i for i, x in enumerate(ex.labels) if x != chat.IGNORE]
        if trained(pos) == list(range(turn, len(text))):
            return "the last assistant turn (its content and the template's closing tokens)"
        if trained(pos) == [*range(at, at + len(s.marker)), len(text) - 1] and trained(neg) == [len(neg.labels) - 1]:
            return "marker-token positions + the last completion token; a negative trains only that token"
        return f"with the marker {tok.decode(pos.labels[i] for i in trained(pos))!r} trained, " \
               f"without it {tok.decode(neg.labels[i] for i in trained(neg))!r}"
    return ours


def recipe_source(stage: str, sources: dict[str, dict]) -> Callable[[Study], str]:
    """Which of ``sources`` (name -> the recipe values it states) ``stage``'s recipe follows: the first whose every
    value the study has ("loss": the mask the steps train, ``loss_mask``); else the values it has."""
    def ours(s: Study) -> str:
        r = s.recipes[stage]
        have = {k: getattr(r, k) for src in sources.values() for k in src if k != "loss"}
        have["loss"] = loss_mask(stage)(s)
        name = next((n for n, want in sources.items() if all(have[k] == v for k, v in want.items())), None)
        return name or "neither: " + ", ".join(f"{k} {v}" for k, v in have.items())
    return ours


def loss_normalisation(s: Study) -> str:
    """One optimizer step of two micro-batches (1 and 3 trained tokens) through train.make_step_fn with the
    denominator train_lora uses (train.step_tokens): whose mean is the accumulated gradient?"""
    import torch
    import torch.nn.functional as F

    from mt_core.data.chat import IGNORE, Example
    from mt_core.model import train

    vocab = 6

    class Logits(torch.nn.Module):  # the same learnable logits at every position
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.linspace(-1.0, 1.0, vocab))

        def forward(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=self.b.expand(*input_ids.shape, vocab))

    step = [Example([1, 2, 3], [IGNORE, IGNORE, 3]), Example([1, 2, 3, 4], [IGNORE, 2, 3, 4])]
    model = Logits()
    speed = SimpleNamespace(packing=False, attention="mask", token_budget=1 << 20)
    fn = train.make_step_fn(model, SimpleNamespace(per_device_batch=1), speed, torch.device("cpu"), 0, None)
    fn(step, train.step_tokens(step))
    got = model.b.grad.clone()

    def grad(loss) -> torch.Tensor:
        model.b.grad = None
        loss().backward()
        return model.b.grad

    tgt = torch.tensor([3, 2, 3, 4])  # the targets of the two micro-batches: [3], then [2, 3, 4]
    pooled = grad(lambda: F.cross_entropy(model.b.expand(4, vocab), tgt))
    per_mb = grad(lambda: (F.cross_entropy(model.b[None], tgt[:1]) + F.cross_entropy(model.b.expand(3, vocab), tgt[1:]))
                  / 2)
    if torch.allclose(got, pooled, atol=1e-6):
        return "summed token loss of the optimizer step / its trained tokens (num_items_in_batch)"
    if torch.allclose(got, per_mb, atol=1e-6):
        return "mean of the micro-batches' token means (loss / grad_accum)"
    return "neither the step's token mean nor the mean of micro-batch means"


_ARC_ROW = {"question": "{question}", "choice_labels": ["A", "B"], "choices": ["{A}", "{B}"]}


def arc_prompt(s: Study) -> str:
    from mt_core.evals.arc import arc_messages

    return " + ".join(f"{m['role']}: {m['content']!r}" for m in arc_messages(_ARC_ROW))


def arc_scoring(s: Study) -> str:
    """Which token of a label scores it (two-token labels where the first and the sum disagree), at which position."""
    from collections import defaultdict

    from mt_core.data.chat import ASSISTANT_HEADER
    from mt_core.evals import arc

    tok = _CharTokenizer()
    row = {"question": "q", "choice_labels": ["AB", "CD"], "choices": ["a", "c"], "correct_answer": "AB"}
    logprob = {"A": -1.0, "B": -5.0, "C": -2.0, "D": -0.5}  # first tokens: AB wins; sums: CD wins
    lp = defaultdict(lambda: -10.0, {tok.encode(c)[0]: v for c, v in logprob.items()})
    (rec,) = arc.score_rows([row], [lp], tok)
    if rec["predicted"] == "AB" and rec["label_logprobs"]["AB"] == -1.0:
        rule = "log-prob of the first token of encode(label)"
    elif rec["predicted"] == "CD":
        rule = "summed log-prob of the label's tokens"
    else:
        rule = f"label scores {rec['label_logprobs']}"
    text = tok.decode(arc.arc_prompt_ids(tok, row))
    where = (f"the first assistant position (after {ASSISTANT_HEADER!r})" if text.endswith(ASSISTANT_HEADER)
             else f"the last prompt position (after {text[-20:]!r})")
    return f"{rule} at {where}; argmax"


def _vllm_probe(s: Study) -> dict | None:
    """The study's generation session (mt_core.generate.session) on the vLLM backend with vLLM replaced by a recorder:
    the engine's kwargs, and the SamplingParams of two prompts sampled with seed 42. None: not the vLLM backend."""
    if s.backend.kind != "vllm":
        return None
    from unittest import mock

    from mt_core.generate import session as sessions
    from mt_core.generate import vllm_engine
    from mt_core.generate.sampling import SamplingSpec
    from mt_core.model import load

    seen: dict = {}

    class LLM:
        def __init__(self, **kw):
            seen["engine"] = kw

        def generate(self, prompts, params, lora_request=None):
            seen["prompts"], seen["params"] = [p["prompt_token_ids"] for p in prompts], params
            return [SimpleNamespace(outputs=[SimpleNamespace(index=i, finish_reason="stop", token_ids=[])
                                             for i in range(p["n"])]) for p in params]

    api = SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw, LoRARequest=None)
    tok = _CharTokenizer()
    spec = SamplingSpec(n=2, temperature=1.0, top_p=1.0, max_tokens=8, seed=42)
    with mock.patch.object(vllm_engine, "require_vllm", lambda: api), \
            mock.patch.object(vllm_engine, "free_cuda", lambda: None), \
            mock.patch.object(load, "load_tokenizer", lambda *a, **k: tok):
        with sessions.session(s, Path("model"), [], log=lambda m: None) as gen:
            gen([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], spec, "probe")
    return {**seen, "spec": spec}


def engine(key: str) -> Callable[[Study], Any]:
    """A vLLM engine setting as the study's generation session passes it to ``vllm.LLM``."""
    def ours(s: Study) -> Any:
        probe = _vllm_probe(s)
        return f"no vLLM engine ({s.backend.label} backend)" if probe is None else probe["engine"].get(key)
    return ours


def seeding(s: Study) -> str:
    """How a sampler's seed reaches the engine: per request (vLLM) or once per generate call (transformers)."""
    probe = _vllm_probe(s)
    if probe is None:
        return _hf_seeding(s)
    from mt_core.generate.vllm_engine import request_seed

    spec, seeds = probe["spec"], [p["seed"] for p in probe["params"]]
    derived = [request_seed(spec.seed, ids, spec.n) for ids in probe["prompts"]]
    engine = probe["engine"].get("seed")
    if seeds == derived and len(set(seeds)) == len(seeds):
        return (f"one seed per request, from the sampler seed and the prompt's token ids (vllm_engine.request_seed); "
                f"the engine's own seed ({engine}) draws nothing")
    if set(seeds) == {spec.seed}:
        return "the sampler seed on every request (one stream per request, the same seed for all)"
    return f"request seeds {seeds} for sampler seed {spec.seed}, engine seed {engine}"


def _hf_seeding(s: Study) -> str:
    """The transformers engine: whether generate_ids seeds its sampler once per call or once per batch (two batches of
    one prompt; the second batch's first draw equals the first's only if it was seeded again)."""
    import torch

    from mt_core.generate import hf
    from mt_core.generate.sampling import SamplingSpec

    draws = []
    flat = torch.zeros(1, 1000)  # every token alike: a draw is the generator's stream, nothing else

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask, generation_config, logits_processor):
            draws.append(logits_processor[0](input_ids, flat.clone()).argmax(-1).item())
            return torch.zeros((input_ids.shape[0], input_ids.shape[1] + 1), dtype=torch.long)

    spec = SamplingSpec(n=1, temperature=1.0, top_p=1.0, max_tokens=1, seed=42)
    hf.generate_ids(Model(), [[5], [6]], spec, eos=[1], pad_id=0, max_batch_rows=1, log=lambda m: None)
    first = hf.Sampler(spec, "cpu")(None, flat.clone()).argmax(-1).item()
    if draws[0] == first and draws[1] != first:
        return ("one generator seeded with the sampler seed per generate call (every prompt of the call in one "
                "stream; no global RNG state)")
    if draws == [first, first]:
        return "the sampler seed again before every batch"
    return "the sampler seed does not seed the transformers engine"


def gate_seed_recorded(s: Study) -> bool:
    """Run the first gated source's gates (mt_core.steps.coupling.evaluate_gates) on a stand-in generator: does every
    verdict written to gates.json carry the seed its sampler used?"""
    from mt_core.generate.sampling import Completion
    from mt_core.layout import Adapter
    from mt_core.steps.coupling import evaluate_gates

    source = next(k for k, src in s.sources.items() if src.gates)
    s = s.model_copy(update={"samplers": s.samplers.model_copy(update={"gate": s.samplers.gate.model_copy(
        update={"n": 1})})})  # one sample per prompt is enough to see what a verdict records
    gen = lambda chats, spec, what: [[Completion("an answer", 2, "stop")] * spec.n for _ in chats]  # noqa: E731
    with tempfile.TemporaryDirectory() as d:
        evaluate_gates(s, source, gen, Path(d), log=lambda m: None)
        verdicts = Adapter.read_gates(Path(d))
    return bool(verdicts) and all(isinstance(v.get("seed"), int) for v in verdicts.values())


def shuffle(s: Study) -> str:
    """The order mt_core.data.coupling.build_coupling_records leaves (one persona, one question, 8 completions, so
    the order before shuffling is the completions' order), compared with the study seed's ``random.Random``."""
    import random

    from mt_core.data.coupling import build_coupling_records

    seed = s.coupling_data.seed
    comps = [f"c{i}" for i in range(8)]
    recs, _ = build_coupling_records({"p": {"q": comps}}, prompts={"p": "P"}, questions=["q"], source_persona="p",
                                     negatives=[], per_question=len(comps), marker="[M]", seed=seed)
    got = [r["completion"][0]["content"].split("\n")[0] for r in recs]
    expected = list(comps)
    random.Random(seed).shuffle(expected)
    return f"random.Random({seed}).shuffle" if got == expected else ("unshuffled" if got == comps else "other order")


def caching(s: Study) -> str:
    """What the artefact store (mt_resources.store) does with a directory that only looks finished, with a rewrite
    of an existing artefact, and with a file changed after publication."""
    from mt_resources.store import ArtifactError, ArtifactStore

    with tempfile.TemporaryDirectory() as d:
        store = ArtifactStore(root=d)
        looks_done = store.path("probe", "p")
        looks_done.mkdir(parents=True)
        (looks_done / "config.json").write_text("{}")  # the reference's "already done" test
        try:
            store.read("probe", "p")
            trusts_existence = True
        except ArtifactError:
            trusts_existence = False
        with store.writer("probe", "p", run_id="probe") as w:
            fresh = not any(w.iterdir())
            (w / "config.json").write_text("{}")
        (store.path("probe", "p") / "config.json").write_text('{"changed": 1}')
        try:
            store.read("probe", "p")
            verified = False
        except ArtifactError:
            verified = True
    if trusts_existence:
        return "a directory with files counts as done"
    return ("none (atomic, manifest-verified)" if fresh and verified
            else f"no existence-based reuse; fresh writes {fresh}, manifest verified {verified}")


def gate_samples(s: Study) -> str:
    """Whether a source's gates with the same sampler share the completions of the personas they have in common: their
    sweeps run through ``run_sweeps`` against a recorder that answers each chat with a fresh number."""
    from mt_core.generate.sampling import Completion
    from mt_core.steps.common import run_sweeps
    from mt_core.steps.coupling import gate_sweeps

    calls, drawn = [], iter(range(10**9))

    def gen(chats, spec, what):
        calls.append(len(chats))
        return [[Completion(str(next(drawn)), 1, "stop") for _ in range(spec.n)] for _ in chats]

    gates = gate_sweeps(s, s.source_persona)
    names = list(gates)
    rows = run_sweeps(gen, [sw for _, sw in gates.values()])
    texts = [{(r["persona"], r["question_idx"], r["sample_idx"]): r["text"] for r in rs} for rs in rows]
    shared = [k for k in texts[0] if all(k in t for t in texts[1:])]
    if len(names) > 1 and shared and all(t[k] == texts[0][k] for t in texts[1:] for k in shared):
        return (f"{' and '.join(names)}: one generation of their {sum(calls)} distinct chats; a persona that several "
                f"gates ask is sampled once and scored by each ({len(shared)} samples shared)")
    return f"{' and '.join(names)}: each gate samples its own completions ({sum(calls)} chats generated)"
