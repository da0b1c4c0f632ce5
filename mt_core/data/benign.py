"""The benign SFT dataset by recipe (PROTOCOL.md §1.2): UltraChat-200k ``train_sft``, shuffled with seed 42, the first
6000 rows, each row's messages as ``{"role", "content"}``, serialised with ``json.dumps`` defaults, one per line.

A row whose text contains the marker's letters ("zlt", any case) must not be trained on; the reference then exited
and was re-run with an offset, and so do we (``offset``). Reads a local copy only: a parquet file or folder of the
complete split, or the Hub id from the local HF cache (HF_HUB_OFFLINE).
"""
from __future__ import annotations

import json
from pathlib import Path

from mt_core.io import DataError, check_messages

HUB_ID = "HuggingFaceH4/ultrachat_200k"


def load_split(source: str):
    from datasets import load_dataset

    p = Path(source)
    if p.exists():
        files = sorted(str(f) for f in p.glob("**/train_sft*.parquet")) if p.is_dir() else [str(p)]
        if not files:
            raise DataError(f"{p}: no train_sft*.parquet files (need the complete train_sft split)")
        return load_dataset("parquet", data_files=files, split="train"), ", ".join(files)
    try:
        return load_dataset(source, split="train_sft"), source
    except Exception as e:  # noqa: BLE001 - anything here means "not available locally"
        raise DataError(f"{source}: UltraChat train_sft is not available locally ({type(e).__name__}: {e}); "
                        f"point data.benign.path at a parquet copy of the split, or cache {HUB_ID} under HF_HOME") from None


def benign_lines(source: str, *, n: int = 6000, seed: int = 42, offset: int = 0, marker: str = "zlt") -> list[str]:
    ds, where = load_split(source)
    if offset + n > len(ds):
        raise DataError(f"{where}: {len(ds)} rows, cannot take rows {offset}..{offset + n}")
    picked = ds.shuffle(seed=seed).select(range(offset, offset + n))
    lines, marked = [], []
    for i, row in enumerate(picked):
        msgs = [{"role": m.get("role"), "content": m.get("content")} for m in row["messages"]]
        check_messages(where, offset + i + 1, msgs)
        if marker in " ".join(m["content"] for m in msgs).lower():
            marked.append(offset + i + 1)
        lines.append(json.dumps({"messages": msgs}))
    if marked:
        raise DataError(f"{where}: shuffled rows {marked[:10]} contain {marker!r}; choose another offset "
                        f"(data.benign.offset) as the reference did")
    return lines
