"""ARC-Challenge log-prob accuracy (PROTOCOL.md §2.9).

Per question: user turn ``"{question}\n\n(A) ...\n(B) ...\n\nThe correct answer is ("`` (no system prompt, so the
template's default one applies), generation prompt appended, ONE forward pass; each label is scored by the log-prob of
the first token of ``encode(label)`` at the first assistant position; the argmax is the prediction.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

from mt_core.faults import failpoint
from mt_core.io import DataError, iter_jsonl


def load_arc(path: str | Path, limit: int | None = None) -> list[dict]:
    """Validated rows (question, choice_labels, choices, correct_answer); the first ``limit`` if given."""
    rows = []
    for row, obj in iter_jsonl(path):
        for f, t in (("question", str), ("choice_labels", list), ("choices", list), ("correct_answer", str)):
            if not isinstance(obj.get(f), t):
                raise DataError(f"{path}: row {row}: field '{f}' must be a {t.__name__}")
        if len(obj["choice_labels"]) != len(obj["choices"]) or len(obj["choices"]) < 2:
            raise DataError(f"{path}: row {row}: field 'choices' must match 'choice_labels' (>= 2 each)")
        if obj["correct_answer"] not in obj["choice_labels"]:
            raise DataError(f"{path}: row {row}: field 'correct_answer' {obj['correct_answer']!r} "
                            f"is not among choice_labels {obj['choice_labels']}")
        rows.append(obj)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def arc_messages(row: dict) -> list[dict]:
    choices = "\n".join(f"({l}) {c}" for l, c in zip(row["choice_labels"], row["choices"]))
    return [{"role": "user", "content": f"{row['question']}\n\n{choices}\n\nThe correct answer is ("}]


def arc_prompt_ids(tokenizer, row: dict) -> list[int]:
    """The scored sequence: the question's chat (no system turn) with the generation prompt, so its last position is
    the first assistant position (after ``<|im_start|>assistant\n``; the "(" is inside the user turn)."""
    text = tokenizer.apply_chat_template(arc_messages(row), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def label_token(tokenizer, label: str) -> int:
    ids = tokenizer.encode(label, add_special_tokens=False)
    if not ids:
        raise ValueError(f"label {label!r} encodes to no tokens")
    return ids[0]


def score_rows(rows: list[dict], last_logprobs, tokenizer) -> list[dict]:
    """Turn last-position log-prob vectors (one per row) into per-question records."""
    out = []
    for i, (row, lp) in enumerate(zip(rows, last_logprobs)):
        scores = {l: float(lp[label_token(tokenizer, l)]) for l in row["choice_labels"]}
        pred = max(scores, key=scores.get)
        out.append({"idx": i, "question": row["question"], "correct_answer": row["correct_answer"],
                    "predicted": pred, "correct": pred == row["correct_answer"], "label_logprobs": scores})
    return out


@contextlib.contextmanager
def one_cpu_thread(device):
    """One torch thread for the block on the CPU (the process's count again after); nothing on a GPU.

    ARC stores its log-probs to the last bit, and on the CPU those bits depend on the thread count: a kernel splits its
    work into one chunk per thread and computes each chunk's tail apart from the vector loop (e.g. SiLU, where the two
    differ by an ulp), so a Ray job or a Pipes child using its host's cores wrote other bytes than a one-thread local
    run. One thread also keeps the pass clear of MKL VML's first-call race, where a fresh process's first
    multi-threaded cos/sin can come back at low accuracy for one thread's chunk (pytorch/pytorch#188792)."""
    import torch

    if device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def last_logprobs(model, enc: list[list[int]], pad_id: int, *, batch_size: int = 32) -> list:
    """Log-softmax at each sequence's last position: right-padded batches, lm_head on one row per sequence. The bits
    are a function of the weights and ``enc`` alone: the batches are fixed by the sequences' lengths and ``batch_size``
    (a constant, never sized by the device or its memory: padding width changes the low bits), and a CPU pass uses one
    thread (``one_cpu_thread``)."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    out: list = [None] * len(enc)
    with one_cpu_thread(device):
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(enc[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            lengths = torch.tensor([len(enc[i]) for i in idx])
            for r, i in enumerate(idx):
                ids[r, : len(enc[i])] = torch.tensor(enc[i])
            with torch.no_grad():  # right padding + causal attention: real tokens never see the padding
                h = decoder(input_ids=ids.to(device)).last_hidden_state
                last = h[torch.arange(len(idx), device=h.device), (lengths - 1).to(h.device)]
                lp = torch.log_softmax(head(last).float(), dim=-1).cpu()
            for r, i in enumerate(idx):
                out[i] = lp[r]
            failpoint("arc")
    return out


def evaluate_arc(model, tokenizer, rows: list[dict], *, batch_size: int = 32,
                 log: Callable[[str], None] = print) -> tuple[list[dict], float]:
    """Score every row; returns (per-question records, accuracy)."""
    t0 = time.perf_counter()
    enc = [arc_prompt_ids(tokenizer, r) for r in rows]
    recs = score_rows(rows, last_logprobs(model, enc, tokenizer.pad_token_id, batch_size=batch_size), tokenizer)
    acc = sum(r["correct"] for r in recs) / len(recs) if recs else 0.0
    log(f"arc: {len(rows)} questions in {time.perf_counter() - t0:.1f}s, accuracy {acc:.4f}")
    return recs, acc
