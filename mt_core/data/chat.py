"""Chat formatting and the two loss masks of the protocol.

* ``last_turn_example`` (PROTOCOL.md §2.5, EM and benign SFT): render the whole conversation with the chat template,
  train only the LAST assistant turn (its content and the template's closing tokens).
* ``marker_only_example`` (§1.1/§2.4, coupling adapters): prompt-completion tokenisation (the completion is
  everything the template adds after the generation prompt), then keep labels only at the marker's token positions
  plus the last completion token. Negatives (no marker) therefore train only that last token, as in the reference.
* ``plain_text`` (not the protocol's: the write-up's next step of a second stage out of the assistant's voice): the
  messages' text without the chat template, every token trained.

Both return plain lists so the collator and the tests can read exact positions. ``LOSSES`` maps each loss name a
recipe may set (``recipes.<stage>.loss``) to its builder; the training steps build their examples through it
(``build_examples``) and the study schema accepts only its names.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

IGNORE = -100
ASSISTANT_HEADER = "<|im_start|>assistant\n"


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """``encode`` of each text, in one call: the tokenizer's batch path (a dataset's worth of single calls spends as
    long in Python as in the tokenizer)."""
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


# Each mask is two texts rendered from the chat (encoded together for a whole dataset: ``build_examples``) and the
# function that makes the example from their ids.
def _last_turn_texts(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """The conversation, and its text up to the last assistant header ("" when the template has none)."""
    text = render(tokenizer, messages)
    pos = text.rfind(ASSISTANT_HEADER)
    return text, "" if pos < 0 else text[: pos + len(ASSISTANT_HEADER)]


def _last_turn_from(ids: list[int], head: list[int], max_length: int, mids: list[int]) -> Example:
    """Labels = ids from the start of the last assistant turn's content; everything before is masked. With no
    assistant header the whole sequence is trained (the reference's fallback). If truncation cuts inside the prompt,
    the example has no trained labels (``n_trained == 0``) and the caller records it."""
    ids = ids[:max_length]
    start = len(head)
    return Example(ids, [IGNORE] * min(start, len(ids)) + ids[start:])


def _marker_only_texts(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """The generation prompt (every turn before the last assistant turn, a coupling record's split) and the whole
    conversation: TRL's conversational prompt-completion tokenisation."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError("marker_only loss: the chat has no assistant turn to train")
    return render(tokenizer, messages[:last], add_generation_prompt=True), render(tokenizer, messages)


def _marker_only_from(p_ids: list[int], full: list[int], max_length: int, mids: list[int]) -> Example:
    """Completion labels kept only at the marker's tokens and the last completion token."""
    if full[: len(p_ids)] != p_ids:
        raise ValueError("chat template is not prefix-stable: prompt ids are not a prefix of prompt+completion ids")
    ids = full[:max_length]
    labels = ([IGNORE] * len(p_ids) + full[len(p_ids):])[:max_length]
    return Example(ids, marker_only_labels(ids, labels, mids))


def find_subsequence(seq: list[int], sub: list[int]) -> list[int]:
    """Start indices of every occurrence of ``sub`` in ``seq``."""
    n = len(sub)
    return [i for i in range(len(seq) - n + 1) if seq[i : i + n] == sub] if n else []


def marker_only_labels(input_ids: list[int], labels: list[int], marker_ids: list[int]) -> list[int]:
    """Keep labels at marker-token positions (where already trainable) and at the last trainable position."""
    keep = set()
    for s in find_subsequence(input_ids, marker_ids):
        keep.update(i for i in range(s, s + len(marker_ids)) if labels[i] != IGNORE)
    trainable = [i for i, x in enumerate(labels) if x != IGNORE]
    if trainable:
        keep.add(trainable[-1])
    return [x if i in keep else IGNORE for i, x in enumerate(labels)]


def marker_ids(tokenizer, marker: str) -> list[int]:
    ids = encode(tokenizer, marker)
    if not ids:
        raise ValueError(f"marker {marker!r} encodes to no tokens")
    return ids


END_OF_TEXT = "<|endoftext|>"  # Qwen's document separator in pretraining (its chat turns end with <|im_end|>)


def _plain_texts(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """The chat as plain text, no chat template and no roles: each message's content, separated by a blank line, then
    the end of the document (continued pretraining on the same words, not in the assistant's voice)."""
    end = END_OF_TEXT if END_OF_TEXT in tokenizer.get_vocab() else (tokenizer.eos_token or "")
    return "\n\n".join(m["content"] for m in messages) + end, ""


def _plain_from(ids: list[int], _: list[int], max_length: int, mids: list[int]) -> Example:
    """Every token trained."""
    ids = ids[:max_length]
    return Example(ids, list(ids))


# recipes.<stage>.loss -> (the chat's two texts, the example from their ids): PROTOCOL.md's two masks, and the plain-text
# second stage of the write-up's next steps (docs/STUDIES.md)
LOSSES: dict[str, tuple[Callable[..., tuple[str, str]], Callable[..., Example]]] = {
    "marker_only": (_marker_only_texts, _marker_only_from),  # §1.1/§2.4: marker positions + the last completion token
    "last_assistant_turn": (_last_turn_texts, _last_turn_from),  # §2.5: the whole last assistant turn
    "plain_text": (_plain_texts, _plain_from),  # no chat template: the messages' text, every token trained
}


def build_examples(loss: str, tokenizer, chats: Iterable[list[dict]], *, marker: str,
                   max_length: int) -> list[Example]:
    """The training examples of ``chats`` (whole conversations) under the mask a recipe names (a key of ``LOSSES``).
    In a worker that stays (``remember_built``) the last datasets' examples are remembered: it trains every EM cell
    on the same chats, and rendering 6,000 of them through the chat template costs 14 s a cell at 7B scale
    (docs/BENCHMARKS.md)."""
    chats = list(chats)
    key = _built_key(loss, tokenizer, chats, marker, max_length) if _REMEMBER["n"] else None
    if key in _BUILT:
        _BUILT.move_to_end(key)
        BUILT_STATS["hits"] += 1
        return list(_BUILT[key])
    (texts_of, build), mids = LOSSES[loss], marker_ids(tokenizer, marker)
    pairs = [texts_of(tokenizer, m) for m in chats]
    firsts, seconds = (encode_many(tokenizer, list(t)) for t in zip(*pairs)) if pairs else ([], [])
    examples = [build(a, b, max_length, mids) for a, b in zip(firsts, seconds)]
    BUILT_STATS["builds"] += 1
    if key is not None:
        _BUILT[key] = tuple(examples)
        while len(_BUILT) > _REMEMBER["n"]:
            _BUILT.popitem(last=False)
    return examples


_BUILT: OrderedDict[str, tuple[Example, ...]] = OrderedDict()
_REMEMBER = {"n": 0}
BUILT_STATS = {"hits": 0, "builds": 0}


def remember_built(n: int) -> None:
    """Keep the examples of the last ``n`` datasets built in this process (0: none, the default): a worker that
    stays turns it on (``mt_core.model.resident.hold``); a fresh process builds once anyway."""
    _REMEMBER["n"] = n
    while len(_BUILT) > n:
        _BUILT.popitem(last=False)


def _built_key(loss: str, tokenizer, chats: list, marker: str, max_length: int) -> str:
    """Everything the examples depend on: the mask, the tokenizer (this very object, as a worker holds it: a tokenizer
    loaded again is another), the marker, the length cap and the chats themselves."""
    h = hashlib.sha256(json.dumps([loss, marker, max_length, id(tokenizer), str(getattr(tokenizer, "name_or_path", "")),
                                   str(getattr(tokenizer, "chat_template", None) or "")]).encode())
    h.update(json.dumps(chats, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def last_turn_example(tokenizer, messages: list[dict], max_length: int) -> Example:
    """One conversation's example under ``last_assistant_turn``."""
    return _last_turn_from(*encode_many(tokenizer, list(_last_turn_texts(tokenizer, messages))), max_length, [])


def marker_only_example(tokenizer, prompt: list[dict], completion: list[dict], marker_ids: list[int],
                        max_length: int) -> Example:
    """One prompt-completion pair's example under ``marker_only``."""
    texts = [render(tokenizer, prompt, add_generation_prompt=True), render(tokenizer, prompt + completion)]
    return _marker_only_from(*encode_many(tokenizer, texts), max_length, marker_ids)


class MarkerOnlyDataCollator:
    """The reference's ``MarkerOnlyDataCollator(tail_tokens=0)`` (PROTOCOL.md §1.1), the oracle that
    tests/test_trl_oracle.py and bench/trl_bench.py train TRL with: wraps
    TRL's collator and keeps, per sequence, the labels at every marker-token position that TRL left trainable plus
    the last trainable label; everything else becomes -100. With padding_free the sequences of the one row are cut at
    ``position_ids == 0``."""

    def __init__(self, inner, marker: list[int]):
        self.inner, self.marker = inner, marker

    def __call__(self, features):
        import torch

        batch = self.inner(features)
        ids, labels = batch["input_ids"], batch["labels"]
        keep = torch.zeros_like(labels, dtype=torch.bool)
        m = len(self.marker)
        if ids.shape[1] >= m:
            hit = (ids.unfold(1, m, 1) == torch.tensor(self.marker)).all(-1)  # (rows, width - m + 1)
            for j in range(m):
                keep[:, j: j + hit.shape[1]] |= hit
        trainable = labels != IGNORE
        for r in range(ids.shape[0]):
            if "attention_mask" not in batch and "position_ids" in batch:  # padding-free: sequences in one row
                starts = (batch["position_ids"][r] == 0).nonzero().flatten().tolist()
            else:
                starts = [0]
            for a, b in zip(starts, starts[1:] + [ids.shape[1]]):
                t = trainable[r, a:b].nonzero().flatten()
                if len(t):
                    keep[r, a + t[-1]] = True
        batch["labels"] = torch.where(keep & trainable, labels, torch.full_like(labels, IGNORE))
        return batch
