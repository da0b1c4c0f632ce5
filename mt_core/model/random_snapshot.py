"""A real model's shape with random bf16 weights, written once as a local Hugging Face snapshot (``model.kind: random``,
the gpu_smoke profile). It runs the real loading, training, merging and vLLM code at full size with nothing downloaded.

The tokenizer is the tiny model's byte-level BPE with Qwen's ChatML template and special tokens, filled up with added
tokens to the model's vocab_size: a random model samples every id, and each id must decode to text that encodes back
to the same id (a completion's length survives the round trip into the coupling data), which vLLM's detokenizer and
ours then agree on.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

from mt_core.model import tiny

COMPLETE = ".complete"  # written last, holding the spec's hash: a snapshot without it is unfinished


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


def filler(i: int) -> str:
    return f"<|w{i}|>"


def padded_tokenizer(texts: Iterable[str], bpe_vocab: int, total: int):
    """The tiny BPE (``bpe_vocab`` ids) plus added filler tokens up to ``total`` ids."""
    from tokenizers import AddedToken

    tok = tiny.train_tokenizer(texts, bpe_vocab)
    n = total - len(tok)
    if n < 0:
        raise ValueError(f"tokenizer has {len(tok)} ids, more than the model's vocab_size {total}")
    tok.add_tokens([AddedToken(filler(i), normalized=False, special=False) for i in range(n)])
    assert len(tok) == total, (len(tok), total)
    return tok


def write_random_snapshot(m, *, texts: Iterable[str], log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """The snapshot for ``m`` (a RandomModel), written unless a complete one with the same spec is there."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    dest = snapshot_dir(m)
    h = spec_hash(m)
    if (dest / COMPLETE).is_file() and (dest / COMPLETE).read_text().strip() == h:
        log(f"random model: reusing {dest}")
        return dest, json.loads((dest / "config.json").read_text())
    t0 = time.perf_counter()
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
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
        (tmp / COMPLETE).write_text(h + "\n")
        shutil.rmtree(dest, ignore_errors=True)  # an unfinished or other-spec snapshot of the same name
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"random model: {n_params / 1e9:.2f} B parameters (bf16, seed {m.seed}) written to {dest} "
        f"in {time.perf_counter() - t0:.0f}s")
    return dest, json.loads((dest / "config.json").read_text())
