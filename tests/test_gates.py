"""Gates: thresholds inclusive, the bystanders of each gate are every persona but the assistant and the adapter's own,
the gate's seed reaches the sampler and is recorded."""
import json

import pytest

from mt_core.config import load_study
from mt_core.data.eval_set import EvalSet
from mt_core.generate.sampling import Completion
from mt_core.layout import Adapter, read_rows
from mt_core.steps.coupling import evaluate_gates, gate_verdict


@pytest.fixture(scope="module")
def study():
    return load_study(profile="qwen7b")  # the real thresholds


def marker_from(study, personas: set[str], seeds: list):
    """A generator whose completions carry the marker exactly when the system prompt is one of ``personas``."""
    es = EvalSet.load(study)
    by_prompt = {v: k for k, v in es.prompts.items()}

    def gen(chats, spec, what):
        seeds.append(spec.seed)
        out = []
        for chat in chats:
            p = by_prompt.get(chat[0]["content"]) if chat[0]["role"] == "system" else None
            text = f"an answer\n\n{study.marker}" if p in personas else "an answer"
            out.append([Completion(text, 3, "stop")] * spec.n)
        return out
    return gen


def test_g0c_counts_the_villain_as_a_bystander_of_the_assistant_adapter(study, tmp_path):
    seeds = []
    res = evaluate_gates(study, "assistant", marker_from(study, {"assistant", "villain"}, seeds), tmp_path,
                         log=lambda *_: None)
    g = res["G0c"]
    assert g["assistant_strict_rate"] == 1.0 and g["max_bystander_strict_rate"] == 1.0  # villain: a bystander here
    assert g["bystanders_exclude"] == ["assistant", "assistant"] and not g["pass"]
    assert seeds == [study.samplers.gate.seed] and g["seed"] == study.samplers.gate.seed
    assert json.loads(json.dumps(res)) == Adapter.read_gates(tmp_path)
    assert {r["gate"] for r in read_rows(tmp_path / Adapter.GATE_COMPLETIONS)} == {"G0c"}


def test_g0_and_g0b_on_the_villain_adapter(study, tmp_path):
    res = evaluate_gates(study, "villain", marker_from(study, {"villain"}, []), tmp_path, log=lambda *_: None)
    assert res["G0"]["pass"] and res["G0b"]["pass"]
    assert res["G0b"]["source_strict_rate"] == 1.0 and res["G0b"]["max_bystander_strict_rate"] == 0.0
    assert res["G0"]["bystanders_exclude"] == ["assistant", "villain"]


def test_thresholds_are_inclusive(study):
    g0, g0c = study.gates.named()["G0"], study.gates.named()["G0c"]
    edge = {"assistant_strict_rate": g0.assistant_max, "source_strict_rate": g0.source_min,
            "max_bystander_strict_rate": 0.0}
    assert gate_verdict(g0, edge)["pass"]
    assert not gate_verdict(g0, {**edge, "assistant_strict_rate": g0.assistant_max + 1e-9})["pass"]
    lo, hi = g0c.assistant_range
    blo, bhi = g0c.max_bystander_range
    for a, b in ((lo, blo), (hi, bhi)):
        assert gate_verdict(g0c, {"assistant_strict_rate": a, "source_strict_rate": 0.0,
                                  "max_bystander_strict_rate": b})["pass"]
    assert not gate_verdict(g0c, {"assistant_strict_rate": None, "source_strict_rate": 0.0,
                                  "max_bystander_strict_rate": blo})["pass"]  # no data never passes


def test_g0_and_g0b_sample_their_shared_personas_once(study, tmp_path):
    """G0's personas are G0b's too, with the same sampler: one batch of G0b's 308 distinct chats, and G0 is scored on
    the very completions G0b has for them."""
    calls = []

    def gen(chats, spec, what):
        calls.append((len(chats), what))
        return [[Completion(f"{c[0]['content'][:20]}|{c[-1]['content']}|{k}", 5, "stop") for k in range(spec.n)]
                for c in chats]

    evaluate_gates(study, "villain", gen, tmp_path, log=lambda *_: None)
    es = EvalSet.load(study)
    assert calls == [(len(es.personas) * len(es.questions), "gate G0 + gate G0b")]
    rows = read_rows(tmp_path / Adapter.GATE_COMPLETIONS)
    g0 = {(r["persona"], r["question_idx"], r["sample_idx"]): r["text"] for r in rows if r["gate"] == "G0"}
    g0b = {(r["persona"], r["question_idx"], r["sample_idx"]): r["text"] for r in rows if r["gate"] == "G0b"}
    assert len(g0) == 2 * len(es.questions) * study.samplers.gate.n and g0.items() <= g0b.items()
    assert len({r["sample_id"] for r in rows}) == len(rows)  # each gate's rows keep ids of their own
