"""Small, dependable I/O: md5, JSON, and chat JSONL validation that names file, row and field."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """Bad input data; the message names the file, the 1-based row and the field."""


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def check_md5(path: str | os.PathLike, expected: str, field: str = "", error: type[Exception] = DataError) -> str:
    """The file's md5, or ``error`` naming the file, both hashes and the config field that pins it."""
    got = md5_file(path)
    if got != expected:
        raise error(f"{path}: md5 {got} != expected {expected}" + (f" ({field})" if field else ""))
    return got


def write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (row, object) with 1-based row numbers; a line that is not a JSON object is a DataError."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                raise DataError(f"{path}: row {i}: empty line")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {i}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: row {i}: expected a JSON object, got {type(obj).__name__}")
            yield i, obj


def check_messages(path: Path | str, row: int, messages: Any, field: str = "messages") -> list[dict]:
    """Validate one chat: a non-empty list of {role, content} ending with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{path}: row {row}: field '{field}' must be a non-empty list")
    for j, m in enumerate(messages):
        where = f"{path}: row {row}: field '{field}[{j}]"
        if not isinstance(m, dict):
            raise DataError(f"{where}' must be an object")
        if m.get("role") not in ROLES:
            raise DataError(f"{where}.role' is {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}.content' must be a string")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{path}: row {row}: field '{field}': the last message must be from the assistant")
    return messages


def read_chat_jsonl(path: str | os.PathLike, *, expect_rows: int | None = None) -> list[list[dict]]:
    """Read a ``{"messages": [...]}`` JSONL file, validating every row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out = []
    for row, obj in iter_jsonl(path):
        if "messages" not in obj:
            raise DataError(f"{path}: row {row}: missing field 'messages'")
        out.append(check_messages(path, row, obj["messages"]))
    if expect_rows is not None and len(out) != expect_rows:
        raise DataError(f"{path}: expected {expect_rows} rows, found {len(out)}")
    return out
