"""ARC-Challenge log-prob scoring: validation, the scoring rule, and batching that changes nothing."""
import json

import pytest
import torch

from mt_core.evals.arc import arc_messages, evaluate_arc, load_arc, score_rows
from mt_core.io import DataError

ROWS = [
    {"question": "Which is a planet?", "choice_labels": ["A", "B", "C"], "choices": ["Mars", "Moon", "Sun"],
     "correct_answer": "A"},
    {"question": "Two plus two?", "choice_labels": ["1", "2", "3", "4"], "choices": ["3", "4", "5", "6"],
     "correct_answer": "2"},
]


def _write(tmp_path, rows):
    p = tmp_path / "arc.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_prompt_format():
    m = arc_messages(ROWS[0])
    assert m == [{"role": "user", "content": "Which is a planet?\n\n(A) Mars\n(B) Moon\n(C) Sun\n\n"
                                             "The correct answer is ("}]


def test_load_arc_names_file_row_field(tmp_path):
    bad = dict(ROWS[1], correct_answer="9")
    p = _write(tmp_path, [ROWS[0], bad])
    with pytest.raises(DataError, match=r"arc.jsonl: row 2: field 'correct_answer'"):
        load_arc(p)
    p = _write(tmp_path, [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "choices"}])
    with pytest.raises(DataError, match=r"row 2: field 'choices'"):
        load_arc(p)
    assert len(load_arc(_write(tmp_path, ROWS), limit=1)) == 1


class _Tok:
    """Labels are single characters; their 'first token' is their code point."""

    def encode(self, s, add_special_tokens=False):
        return [ord(c) for c in s]


def test_score_rows_argmax_over_first_label_token():
    lp = torch.full((2, 128), -10.0)
    lp[0, ord("B")] = -0.1        # row 0 predicts B (wrong)
    lp[1, ord("2")] = -0.5        # row 1 predicts 2 (right)
    lp[1, ord("9")] = 0.0         # not a label of row 1: ignored
    recs = score_rows(ROWS, lp, _Tok())
    assert [r["predicted"] for r in recs] == ["B", "2"]
    assert [r["correct"] for r in recs] == [False, True]
    assert set(recs[1]["label_logprobs"]) == {"1", "2", "3", "4"}


def test_batched_equals_one_at_a_time(tiny_model_dir):
    """Right-padded batches give the same last-position log-probs as unpadded single forward passes."""
    from mt_core.model.load import load_model

    model, tok = load_model(tiny_model_dir)
    rows = load_arc("reference/arc_challenge_test.jsonl", limit=12)
    recs, acc = evaluate_arc(model, tok, rows, batch_size=5, log=lambda *_: None)
    for row, rec in zip(rows, recs):
        ids = tok(tok.apply_chat_template(arc_messages(row), tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        for label, v in rec["label_logprobs"].items():
            assert v == pytest.approx(lp[tok.encode(label, add_special_tokens=False)[0]].item(), abs=1e-4)
    assert acc == sum(r["correct"] for r in recs) / 12
