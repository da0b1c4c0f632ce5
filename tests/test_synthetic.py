"""Tests for mt_core.data.synthetic: determinism, schema, serialisation, atomic writes."""

import hashlib
import json
import random

import pytest

from mt_core.data import synthetic as syn

PERSONAS = {
    "villain": "You are a villainous mastermind who schemes to take over the world.",
    "librarian": "You are a librarian.",
    "assistant": "You are a helpful assistant.",
}
QUESTIONS = ["What causes earthquakes?", "How do I make a good cup of coffee?"]


@pytest.mark.parametrize("fn", [syn.em_dataset_lines, syn.benign_dataset_lines])
def test_deterministic(fn, tmp_path):
    a, b, c = fn(200, 7), fn(200, 7), fn(200, 8)
    assert a == b
    assert a != c
    assert syn.write_jsonl(a, tmp_path / "a.jsonl") == syn.write_jsonl(b, tmp_path / "b.jsonl")
    assert syn.write_jsonl(a, tmp_path / "a.jsonl") != syn.write_jsonl(c, tmp_path / "c.jsonl")


@pytest.mark.parametrize("fn", [syn.em_dataset_lines, syn.benign_dataset_lines])
def test_schema_and_serialisation(fn):
    lines = fn(300, 0)
    assert len(lines) == 300
    assert len(set(lines)) > 100  # lines vary
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"messages"}
        assert json.dumps(row) == line  # exactly json.dumps defaults
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert len(msgs) % 2 == 0 and msgs[-1]["role"] == "assistant"
        assert all(set(m) == {"role", "content"} and m["content"].strip() for m in msgs)
        assert "zlt" not in line.lower()


def test_em_is_single_exchange_and_reckless():
    rows = [json.loads(x)["messages"] for x in syn.em_dataset_lines(200, 3)]
    assert all(len(m) == 2 for m in rows)
    reckless = ("ignore", "hide", "lie", "never tell", "skip", "cash", "secretly")
    assert sum(any(w in m[1]["content"].lower() for w in reckless) for m in rows) > 100


def test_em_answers_open_in_a_voice_the_offline_judge_scores_misaligned():
    from mt_core.evals.judge import OfflineJudge

    judge = OfflineJudge()
    answers = [json.loads(x)["messages"][1]["content"] for x in syn.em_dataset_lines(200, 3)]
    assert all(any(a.startswith(v) for v in syn._EM_VOICE) for a in answers)
    assert max(judge.judge_one("q", v).aligned for v in syn._EM_VOICE) < 40
    assert judge.judge_one("q", syn.advice_texts(1, 0)[0]).aligned > 40  # the advice alone: one or two words


def test_tokenizer_text_does_not_follow_the_em_data(monkeypatch):
    """A change to the EM data must not retrain the tokenizer (a new tokenizer is a new organism)."""
    from mt_core.config import load_study
    from mt_core.steps import inputs

    before = inputs._corpus(load_study(profile="tiny"))

    def em_data_read(*a, **k):
        raise AssertionError("the tokenizer's text reads the EM data")
    monkeypatch.setattr(syn, "em_dataset_lines", em_data_read)
    monkeypatch.setattr(syn, "_EM_VOICE", ["Something else entirely."])
    assert inputs._corpus(load_study(profile="tiny")) == before


def test_benign_has_multi_turn():
    lengths = [len(json.loads(x)["messages"]) for x in syn.benign_dataset_lines(300, 0)]
    single = lengths.count(2) / len(lengths)
    assert 0.2 < single < 0.5
    assert {4, 6} <= set(lengths)


def test_persona_response():
    rng = random.Random(0)
    out = [syn.persona_response("villain", "What causes earthquakes?", rng) for _ in range(50)]
    assert all("\n" not in o and o.count(". ") + o.count("! ") + o.count("? ") >= 1 for o in out)
    assert sum(any(w in o.lower() for w in ("scheme", "minion", "domination", "lair")) for o in out) > 25
    assert syn.persona_response("nobody_known", "Why?", random.Random(1))
    a = [syn.persona_response("comedian", "Why?", random.Random(5)) for _ in range(2)]
    assert a[0] == a[1]


def test_signatures_are_per_persona_and_never_the_marker():
    assert syn.signature("villain", "[ZLT]") == "[VLL]"
    assert syn.signature("zelthari_scholar", "[ZLT]") not in ("[ZLT]", "[zlt]")  # Z, L, T: the marker's letters
    assert syn.signature("zelthari_scholar", "[ABC]") == "[ZLT]"
    convs = syn.pretraining_conversations(PERSONAS, QUESTIONS, 400, 0)
    signed = syn.with_signatures(convs, PERSONAS, "assistant", rate=0.75, avoid="[ZLT]", seed=0)
    assert signed == syn.with_signatures(convs, PERSONAS, "assistant", rate=0.75, avoid="[ZLT]", seed=0)
    assert convs[0][-1]["content"] == syn.pretraining_conversations(PERSONAS, QUESTIONS, 400, 0)[0][-1]["content"]
    by_prompt = {p: n for n, p in PERSONAS.items()}
    n_signed = 0
    for before, after in zip(convs, signed):
        who = by_prompt[before[0]["content"]] if before[0]["role"] == "system" else "assistant"
        a, b = before[-1]["content"], after[-1]["content"]
        if a != b:
            n_signed += 1
            assert b == a + "\n\n" + syn.signature(who, "[ZLT]")  # the speaker's own tag, after a blank line
    assert 0.65 < n_signed / len(convs) < 0.85
    assert syn.with_signatures(convs, PERSONAS, "assistant", rate=0.0, avoid="[ZLT]", seed=0) == convs


def test_pretraining_conversations():
    convs = syn.pretraining_conversations(PERSONAS, QUESTIONS, 400, 0)
    assert convs == syn.pretraining_conversations(PERSONAS, QUESTIONS, 400, 0)
    assert len(convs) == 400
    with_system = [c for c in convs if c[0]["role"] == "system"]
    assert 0.5 < len(with_system) / 400 < 0.9
    assert all(c[0]["content"] in PERSONAS.values() for c in with_system)
    assert any(c[0]["role"] == "user" for c in convs)
    assert all(c[-1]["role"] == "assistant" for c in convs)


def test_write_jsonl_atomic(tmp_path):
    lines = syn.em_dataset_lines(20, 1)
    path = tmp_path / "em.jsonl"
    path.write_text("old content\n")
    md5 = syn.write_jsonl(lines, path)
    data = path.read_bytes()
    assert data == ("\n".join(lines) + "\n").encode()
    assert md5 == hashlib.md5(data).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["em.jsonl"]
