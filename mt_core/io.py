"""Small, dependable I/O: md5, JSON, and chat JSONL validation that names file, row and field."""
from __future__ import annotations

import hashlib
import json
import os
import re
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
    """The file's md5, or ``error`` naming the file, both hashes and the config field that pins it (a missing file
    too). Called before the file is parsed: a file that is not the pinned one is never read."""
    if not Path(path).is_file():
        raise error(f"{path}: file not found" + (f" ({field})" if field else ""))
    got = md5_file(path)
    if got != expected:
        raise error(f"{path}: md5 {got} != expected {expected}" + (f" ({field})" if field else ""))
    return got


def write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _decode(path: Path, raw: bytes, line: int = 1, start: int = 0) -> str:
    """``raw`` (line ``line`` of ``path``, starting at byte ``start`` of the file; or the whole file) as UTF-8, or a
    DataError naming the line and the byte offset of the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[:e.start]
        row = line + before.count(b"\n")
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise DataError(f"{path}: line {row}: not UTF-8: byte 0x{raw[e.start]:02x} at byte offset {start + e.start} "
                        f"(column {col}); save the file as UTF-8") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A whole text file as UTF-8; a missing file or a byte that is not UTF-8 is a DataError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return _decode(path, path.read_bytes())


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """A JSON file; a missing or empty file, non-UTF-8 bytes or invalid JSON is a DataError naming file and line."""
    path = Path(path)
    text = read_text(path, what)
    if not text.strip():
        raise DataError(f"{path}: empty file (expected JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:  # json recurses once per level: a file nested ~1000 deep is hostile, not data
        raise DataError(f"{path}: nested too deeply to read (not a {what})") from None


# What one JSONL row may be: a chat row is kilobytes (max_length truncates what trains) nested 4 levels; anything far
# past that is refused before json.loads reads it (it would recurse once per level, and hold the whole line).
MAX_LINE_BYTES = 1 << 20
MAX_DEPTH = 64
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}:,]')  # a string (possessive: no backtracking) or a bracket


def _too_deep(line: str) -> tuple[str, int] | None:
    """(the field, the 1-based column) where ``line`` nests deeper than MAX_DEPTH, or None. A scan of its brackets
    outside strings: linear in the line, and skipped when the line has too few brackets to be that deep."""
    if line.count("[") + line.count("{") <= MAX_DEPTH:
        return None
    path: list = []  # per open container: its current key (an object) or index (a list)
    key = None
    for m in _JSON_TOKEN.finditer(line):
        t = m.group()
        if t in ("[", "{"):
            if len(path) == MAX_DEPTH:
                field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[:6] if p is not None)
                field = field.lstrip(".")
                return field + ("..." if len(path) > 6 else ""), m.start() + 1
            path.append(0 if t == "[" else None)
        elif t in ("]", "}"):
            if path:
                path.pop()
        elif t == ",":
            if path and isinstance(path[-1], int):
                path[-1] += 1
        elif t == ":":
            if path and not isinstance(path[-1], int):
                path[-1] = key
        else:
            key = t[1:-1]
    return None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (row, object) with 1-based row numbers; an empty file, an empty line, a line that is not a JSON object,
    is not UTF-8, is longer than ``MAX_LINE_BYTES`` or nests deeper than ``MAX_DEPTH`` is a DataError naming the file
    and the row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        i, offset = 0, 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            i += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}: row {i}: longer than {MAX_LINE_BYTES} bytes (at byte offset {offset}); "
                                f"not a JSONL row")
            line = _decode(path, raw, i, offset)
            offset += len(raw)
            if not line.strip():
                raise DataError(f"{path}: row {i}: empty line")
            if deep := _too_deep(line):
                field, col = deep
                raise DataError(f"{path}: row {i}: " + (f"field '{field}' " if field else "")
                                + f"nested deeper than {MAX_DEPTH} levels (at column {col}); not a JSONL row")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {i}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: row {i}: expected a JSON object, got {type(obj).__name__}")
            yield i, obj
        if i == 0:
            raise DataError(f"{path}: empty file (no rows)")


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
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{path}: row {row}: field '{field}': no assistant turn (a row trains on its assistant turn)")
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
