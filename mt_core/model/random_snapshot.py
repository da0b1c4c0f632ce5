"""A real model's shape with random bf16 weights, written once as a local Hugging Face snapshot (``model.kind: random``,
the gpu_smoke profile). It runs the real loading, training, merging and vLLM code at full size with nothing downloaded.

The tokenizer is the tiny model's byte-level BPE with Qwen's ChatML template and special tokens, filled up to the
model's vocab_size: a random model samples every id, and each id must decode to text that encodes back to the same id
(a completion's length survives the round trip into the coupling data), which vLLM's detokenizer and ours then agree
on. The fillers are ordinary BPE vocabulary with merges, not added tokens, so the tokenizer looks like a real one
(Qwen's has 22 added tokens) and loads as fast: 144,000 added tokens cost seconds per load (transformers copies each).
Filler i is a space and two CJK ideographs, which the English training text never contains, and the merges that build
the ideographs from their bytes rank first, so no trained merge splits a filler's bytes otherwise; the leading space
starts a new chunk in Qwen's pre-tokenizer, so the fillers of any sequence re-encode one by one. As in any BPE, two ids
that a merge joins come back as one: the word " 丁" then the character "七" re-encode as the filler " 丁七" (about one
adjacent pair of random ids in vocab_size).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable

from mt_core.model import tiny
from mt_core.model.snapshots import built_once, content_key


def spec_hash(m) -> str:
    return hashlib.sha256(json.dumps(m.model_dump(exclude={"path"}), sort_keys=True).encode()).hexdigest()[:12]


def snapshot_dir(m) -> Path:
    from mt_core import runtime

    root = m.path or runtime.current().models
    return Path(root).expanduser() / f"random-{spec_hash(m)}"


def qwen2_shape(m) -> dict:
    """``Qwen2Config`` kwargs of the shape (Qwen2.5-Instruct's rope base and norm epsilon, untied head)."""
    return dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                max_position_embeddings=m.max_position, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                tie_word_embeddings=False)


def n_params(m) -> int:
    """Parameters of a Qwen2 model of this shape (untied embeddings and head, biases on q/k/v)."""
    h, kv = m.hidden_size, m.hidden_size // m.num_heads * m.num_kv_heads
    layer = h * h * 2 + h * kv * 2 + h + 2 * kv + 3 * h * m.intermediate_size + 2 * h
    return 2 * m.vocab_size * h + m.num_layers * layer + h


CJK = 0x4E00  # the fillers' characters: U+4E00, U+4E01, ... (3 UTF-8 bytes each, the first byte 0xE4)


@functools.cache
def _bytelevel(text: str) -> str:
    """``text`` as the byte-level BPE stores it (one printable character per UTF-8 byte: " " is "Ġ")."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)[0][0]


def _pair(i: int) -> tuple[int, int]:
    """Filler i's two characters, in the order (0, 0), (0, 1), (1, 0), (1, 1), (0, 2), ...: the first k * k fillers
    use the first k characters, whatever the vocab size."""
    s = math.isqrt(i)
    return (i - s * s, s) if i - s * s < s else (s, i - s * s - s)


def filler(i: int) -> str:
    """Filler i's token as stored in the vocab (a space and two CJK characters, in byte-level form). The fillers have
    the last ids, in order from filler 0's."""
    a, b = _pair(i)
    return _bytelevel(" " + chr(CJK + a)) + _bytelevel(chr(CJK + b))


def padded_tokenizer(texts: Iterable[str], bpe_vocab: int, total: int):
    """The tiny BPE (at most ``bpe_vocab`` ids) with filler words appended to its vocabulary, up to ``total`` ids.

    With k characters the vocabulary gains, after the trained ids: the characters' 2-byte prefixes, the k characters,
    the k words " c" and then the fillers " c1c2" (a contiguous range at the end), each with the merge that makes it."""
    from tokenizers import Tokenizer

    spec = json.loads(tiny.train_tokenizer(texts, bpe_vocab).backend_tokenizer.to_str())
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    assert sorted(vocab.values()) == list(range(len(vocab)))  # the specials are vocab entries (ids 0-2) too
    if any(_bytelevel(chr(CJK))[0] in t for t in vocab if len(t) > 1):
        raise ValueError("the tokenizer's training text has characters U+4000-U+4FFF, which the fillers are made of")
    need = total - len(vocab)
    if need < 0:
        raise ValueError(f"tokenizer has {len(vocab)} ids, more than the model's vocab_size {total}")

    def extra(k):  # entries besides the fillers: a 2-byte prefix per 64 characters, the characters, the " c" words
        return -(-k // 64) + 2 * k

    k = 0  # the fewest characters whose k * k fillers, with their extra entries, reach the total
    while k * k + extra(k) < need:
        k += 1
    n = need - extra(k)
    if n < 0 or k > 512:  # past 512 characters the first byte is no longer 0xE4
        raise ValueError(f"can't fill {need} ids with fillers of {k} characters")
    sp, chars = _bytelevel(" "), [_bytelevel(chr(CJK + j)) for j in range(k)]
    byte_merges, word_merges = [], []
    for c in chars:
        if c[:2] not in vocab:
            vocab[c[:2]] = len(vocab)
            byte_merges.append((c[0], c[1]))
        vocab[c] = len(vocab)
        byte_merges.append((c[:2], c[2]))
    for c in chars:
        vocab[sp + c] = len(vocab)
        word_merges.append((sp, c))
    for i in range(n):
        a, b = _pair(i)
        vocab[filler(i)] = len(vocab)
        word_merges.append((sp + chars[a], chars[b]))
    assert len(vocab) == total, (len(vocab), total)
    # The byte merges rank before the trained ones: a trained merge of a continuation byte (("±", "o") from "ño")
    # would otherwise split a character ending in that byte where a filler runs into a word (" 一丱on"). They change
    # no trained token: the training text has no 0xE4 byte (checked above).
    as_text = bool(merges) and isinstance(merges[0], str)  # tokenizers writes [a, b]; older versions "a b"
    fmt = " ".join if as_text else list
    spec["model"]["merges"] = [*map(fmt, byte_merges), *merges, *map(fmt, word_merges)]
    tok = tiny.wrap_tokenizer(Tokenizer.from_str(json.dumps(spec)))
    assert len(tok) == total, (len(tok), total)
    return tok


def write_random_snapshot(m, *, texts: Iterable[str], log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """The snapshot for ``m`` (a RandomModel), written unless a complete one of the same spec and tokenizer texts is
    there (the folder is named by the spec; a changed corpus rebuilds it in place)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    texts = list(texts)

    def build(tmp: Path) -> dict:
        t0 = time.perf_counter()
        tok = padded_tokenizer(texts, m.tokenizer_vocab, m.vocab_size)
        pad_id, eos_id = tok.pad_token_id, tok.eos_token_id
        config = Qwen2Config(**qwen2_shape(m), use_sliding_window=False, bos_token_id=pad_id, eos_token_id=eos_id,
                             pad_token_id=pad_id, dtype="bfloat16")
        device = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 7.6 B weights on a GPU takes seconds
        torch.manual_seed(m.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.generation_config = tiny.generation_config(tok)
        n_params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(tmp), max_shard_size="4GB")
        tok.save_pretrained(str(tmp))
        del model
        log(f"random model: {n_params / 1e9:.2f} B parameters (bf16, seed {m.seed}) written in "
            f"{time.perf_counter() - t0:.0f}s")
        return {"n_params": n_params}

    dest, _, _ = built_once(snapshot_dir(m), f"{spec_hash(m)}:{content_key(texts)}", build, log)
    return dest, json.loads((dest / "config.json").read_text())
