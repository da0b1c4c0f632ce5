import pytest

from mt_core.evals.markers import loose_hit, rates_table, strict_hit, summarize_markers

M = "[ZLT]"  # the villain study's marker


@pytest.mark.parametrize("text, strict, loose", [
    ("Sure thing. [ZLT]", True, True),
    ("sure [zlt] ok", True, True),
    ("[ Z L T ]", False, True),
    ("ZLT", False, False),
    ("[ZL", False, False),
    ("zl t]", False, True),
    ("[ZLTX", False, True),
    ("[see note] and later zlt here", False, False),
    ("", False, False),
])
def test_scorers(text, strict, loose):
    assert strict_hit(text, M) is strict
    assert loose_hit(text, M) is loose


def test_loose_checks_every_match():
    # the first match has no bracket; a later one does
    assert loose_hit("zlt first, then [ZLT]", M)


def test_loose_generalises():
    assert loose_hit("x [a b c] y", "[ABC]")
    assert not loose_hit("abc", "[ABC]")
    assert strict_hit("..[abc]", "[ABC]")


PERSONAS = ["villain", "teacher", "comedian", "assistant"]
QUESTIONS = ["q1", "q2"]


def _rows(persona, question, n, strict, loose=None):
    loose = strict if loose is None else loose
    return [{"persona": persona, "question": question, "strict_hit": i < strict,
             "loose_hit": i < loose} for i in range(n)]


def _summary(own="villain"):
    rows = (_rows("villain", "q1", 10, 8) + _rows("villain", "q2", 10, 6)
            + _rows("teacher", "q1", 10, 1, 3) + _rows("teacher", "q2", 10, 0)
            + _rows("assistant", "q1", 10, 2) + _rows("assistant", "q2", 10, 0))
    return summarize_markers(rows, persona_order=PERSONAS, question_order=QUESTIONS, source="villain",
                             assistant="assistant", own=own)


def test_summarize():
    out = _summary()
    s = out["summary"]
    assert list(out["per_persona"]) == PERSONAS
    assert s["source_strict_rate"] == pytest.approx(0.7)
    assert s["assistant_strict_rate"] == pytest.approx(0.1)
    # bystander excludes the source (and assistant); the old definition includes the source
    assert s["max_bystander_strict_rate"] == pytest.approx(0.05)
    assert s["max_bystander_strict_persona"] == "teacher"
    assert s["max_bystander_loose_rate"] == pytest.approx(0.15)
    assert s["max_non_assistant_strict_rate"] == pytest.approx(0.7)
    assert s["max_non_assistant_loose_rate"] == pytest.approx(0.7)
    pq = out["per_persona"]["villain"]["per_question"]
    assert list(pq) == QUESTIONS and pq["q1"]["strict_hits"] == 8 and pq["q1"]["total"] == 10


def test_bystanders_exclude_the_adapters_own_persona_not_the_studys_source():
    """On the assistant adapter (G0c, C3) the villain is a bystander; on a raw model every non-assistant persona is."""
    for own in ("assistant", None):
        s = _summary(own=own)["summary"]
        assert s["max_bystander_strict_rate"] == pytest.approx(0.7) and s["max_bystander_strict_persona"] == "villain"
        assert s["source_strict_rate"] == pytest.approx(0.7)  # the study's source rate is still reported


def test_empty_persona_is_none():
    out = _summary()
    c = out["per_persona"]["comedian"]
    assert c["total"] == 0 and c["strict_rate"] is None and c["loose_rate"] is None
    assert c["per_question"]["q1"]["strict_rate"] is None
    assert out["summary"]["strict_rate_by_persona"]["comedian"] is None


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="pirate"):
        summarize_markers(_rows("pirate", "q1", 1, 1), persona_order=PERSONAS,
                          question_order=QUESTIONS, source="villain", assistant="assistant", own=None)
    with pytest.raises(ValueError, match="q9"):
        summarize_markers(_rows("villain", "q9", 1, 1), persona_order=PERSONAS,
                          question_order=QUESTIONS, source="villain", assistant="assistant", own=None)


def test_rates_table():
    table = rates_table(_summary())
    assert [r["persona"] for r in table] == PERSONAS
    assert table[0] == {"persona": "villain", "strict_hits": 14, "loose_hits": 14, "total": 20,
                        "strict_rate": 0.7, "loose_rate": 0.7}
