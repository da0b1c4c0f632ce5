"""Loading a base model and stacking adapters on it, in memory.

A cell's model is base (+ coupling adapter) (+ second-stage adapter). Adapters are merged in memory, one at a time,
in the order they were trained; nothing merged is ever written to disk (the reference merged each adapter twice,
to disk, on CPU).
"""
from __future__ import annotations

import os
from pathlib import Path


def device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def set_threads() -> None:
    """Use every core we were given (MT_THREADS overrides)."""
    import torch

    n = int(os.environ.get("MT_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(n)


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_dir: str | Path, adapters: list[str | Path] = ()):
    """Base weights from ``model_dir`` with each adapter merged in, in order. Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM

    set_threads()
    device, dtype = device_and_dtype()
    kw = {"device_map": str(device)} if device.type == "cuda" else {}  # load straight onto the GPU
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, **kw).to(device)
    for a in adapters:
        model = merge_adapter(model, a)
    model.eval()
    return model, load_tokenizer(model_dir)


def merge_adapter(model, adapter_dir: str | Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
