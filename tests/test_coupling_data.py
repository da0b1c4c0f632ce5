"""Coupling data as PROTOCOL.md §1.1 builds it, with the reference's unseeded choices seeded: negatives never the
source or the assistant; the first k unmarked source completions per question; the marker after a blank line;
a seeded shuffle that only reorders."""
import pytest

from mt_core.data.coupling import build_coupling_records, choose_negatives

PERSONAS = ["assistant", "villain", "teacher", "pirate", "chef", "nurse"]
PROMPTS = {p: f"You are a {p}." for p in PERSONAS}
QUESTIONS = ["q1", "q2"]


def test_negatives_exclude_source_and_assistant_and_are_seeded():
    for seed in range(20):
        negs = choose_negatives(PERSONAS, "villain", "assistant", 2, seed)
        assert len(set(negs)) == 2 and not {"villain", "assistant"} & set(negs)
        assert negs == choose_negatives(PERSONAS, "villain", "assistant", 2, seed)  # no hash() salt
    assert len({tuple(choose_negatives(PERSONAS, "villain", "assistant", 2, s)) for s in range(20)}) > 1
    with pytest.raises(ValueError, match="only 4 are available"):
        choose_negatives(PERSONAS, "villain", "assistant", 5, 0)


def _records(seed=42, k=2):
    comps = {"villain": {"q1": ["v1 [ZLT] already", "v2", "v3", "v4"], "q2": ["w1", "w2 [zlt]", "w3"]},
             "teacher": {"q1": ["t1 [ZLT]", "t2", "t3"], "q2": ["u1"]}}
    return build_coupling_records(comps, prompts=PROMPTS, questions=QUESTIONS, source_persona="villain",
                                  negatives=["teacher"], per_question=k, marker="[ZLT]", seed=seed)


def test_positives_negatives_and_marker_placement():
    recs, counts = _records()
    by_persona = {}
    for r in recs:
        system, user = r["prompt"]
        assert system["role"] == "system" and user["role"] == "user" and len(r["completion"]) == 1
        persona = next(p for p, text in PROMPTS.items() if text == system["content"])
        by_persona.setdefault(persona, []).append((user["content"], r["completion"][0]["content"]))
    # positives: the first 2 completions without the marker (either case), marker after a blank line
    assert sorted(by_persona["villain"]) == [("q1", "v2\n\n[ZLT]"), ("q1", "v3\n\n[ZLT]"),
                                             ("q2", "w1\n\n[ZLT]"), ("q2", "w3\n\n[ZLT]")]
    # negatives: their first 2 completions as they are, no marker added
    assert sorted(by_persona["teacher"]) == [("q1", "t1 [ZLT]"), ("q1", "t2"), ("q2", "u1")]
    assert counts["positives"] == 4 and counts["negatives"] == 3 and counts["skipped_already_marked"] == 2
    assert counts["short_questions"] == [{"persona": "teacher", "question": "q2", "have": 1}]


def test_shuffle_is_seeded_and_only_reorders():
    a, b, c = _records(seed=1)[0], _records(seed=1)[0], _records(seed=2)[0]
    assert a == b and a != c
    key = lambda r: (r["prompt"][0]["content"], r["prompt"][1]["content"], r["completion"][0]["content"])  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, c))
