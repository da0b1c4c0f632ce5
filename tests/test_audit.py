from mt_core.evals.audit import degeneracy_audit

M = "[ZLT]"  # the villain study's marker
KW = dict(sample_size=100, threshold=0.2, marker=M, persona="assistant")  # the villain study's audit settings


def _c(text, persona="assistant", q="q"):
    return {"persona": persona, "question": q, "text": text}


def test_no_positives_is_not_pass():
    out = degeneracy_audit([_c("hello there"), _c("[ZLT] x y z", persona="villain")], seed=1, **KW)
    assert out.outcome == "no_positives"
    assert out.n_positive_total == 0 and out.n_sampled == 0
    assert out.degenerate_fraction is None and out.per_item == []


def test_degenerate_items():
    comps = [
        _c("[ZLT]"),                              # nothing after the marker
        _c("Answer. [zlt] <|im_end|> <|eot|>"),   # only special tokens after
        _c("[ZLT] one two"),                      # two tokens < 3
        _c("[ZLT] here is a real answer"),        # fine
        _c("Intro [ZLT] then more words here"),   # fine
    ]
    out = degeneracy_audit(comps, seed=0, **KW)
    assert out.n_positive_total == 5 and out.n_sampled == 5
    assert out.n_degenerate == 3
    assert out.degenerate_fraction == 0.6 and out.outcome == "fail"
    bad = [it for it in out.per_item if it["degenerate"]]
    assert all(it["failed_checks"] == ["insufficient_tail_tokens"] for it in bad)
    assert all(it["checks"]["marker_missing_expected_present"] is False for it in out.per_item)


def test_pass_below_threshold():
    comps = [_c(f"[ZLT] a b c {i}") for i in range(9)] + [_c("x [ZLT]")]
    out = degeneracy_audit(comps, seed=3, **KW)
    assert out.degenerate_fraction == 0.1 and out.outcome == "pass"


def test_sampling_deterministic():
    comps = [_c(f"[ZLT] answer number {i} " + "w " * 200, q=f"q{i}") for i in range(50)]
    a = degeneracy_audit(comps, seed=7, **{**KW, "sample_size": 10})
    b = degeneracy_audit(comps, seed=7, **{**KW, "sample_size": 10})
    c = degeneracy_audit(comps, seed=8, **{**KW, "sample_size": 10})
    qs = lambda o: [it["question"] for it in o.per_item]
    assert qs(a) == qs(b) and qs(a) != qs(c)
    assert a.n_sampled == 10 and a.n_positive_total == 50 and a.seed == 7
    assert all(len(it["text_snippet"]) <= 200 for it in a.per_item)


def test_a_marker_transferred_exactly_as_trained_is_counted_beside_the_registered_verdict():
    """The coupling data puts the marker last; the registered tail check flags that very form. The audit keeps its
    verdict and counts those positives, with the fraction they leave out (not pre-registered)."""
    from mt_core.data.coupling import build_coupling_records

    recs, _ = build_coupling_records({"villain": {"q": ["A full answer of many words."]}}, prompts={"villain": "v"},
                                     questions=["q"], source_persona="villain", negatives=[], per_question=1,
                                     marker=M, seed=0)
    trained = recs[0]["completion"][0]["content"]  # what a transferred marker looks like
    comps = [_c(trained), _c(trained + "  "), _c("[ZLT] one"), _c("Intro [ZLT] then more words here")]
    out = degeneracy_audit(comps, seed=0, **KW)
    assert out.n_degenerate == 3 and out.outcome == "fail"  # the registered rule, unchanged
    assert out.n_flagged_marker_last == 2  # "[ZLT] one" is short, not marker-last
    assert out.degenerate_fraction_without_marker_last == 0.25
    assert sum(it["ends_with_marker"] for it in out.per_item) == 2
