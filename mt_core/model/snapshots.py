"""Model snapshots built once per content under ``$MT_MODELS`` (the random weights of a real shape, the tiny organism):
two studies, two `mt run`s or two test workers that ask for the same one get one build; whoever asks first builds it
under a file lock, the others wait and reuse it. A snapshot is named by the hash of everything it is built from, so
a changed input (a study value, the training data, the builder's code) is a new snapshot, never a stale one."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

COMPLETE, INFO = ".complete", ".build_info.json"


def content_key(*parts: Any) -> str:
    """A short hash of JSON-able ``parts`` (file contents go in as their md5s)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def source_md5(*modules) -> list[str]:
    """The md5s of modules' source files: a builder's code is part of what its snapshot is built from."""
    from mt_core.io import md5_file

    return [md5_file(Path(m.__file__)) for m in modules]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        yield


def built_once(dest: Path, key: str, build: Callable[[Path], dict], log: Callable[[str], None] = print
               ) -> tuple[Path, dict, bool]:
    """(``dest``, the build's info, whether it was reused): ``build(folder)`` fills a fresh folder that is renamed to
    ``dest`` once complete, unless a complete snapshot of ``key`` is there. A killed build leaves only its temporary
    folder, which the next build replaces."""
    with _locked(dest.parent / f".{dest.name}.lock"):
        if (dest / COMPLETE).is_file() and (dest / COMPLETE).read_text().strip() == key:
            log(f"model snapshot {dest.name}: reusing {dest} (built from the same inputs)")
            return dest, json.loads((dest / INFO).read_text()) if (dest / INFO).is_file() else {}, True
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            info = build(tmp) or {}
            (tmp / INFO).write_text(json.dumps(info, sort_keys=True, default=str))
            (tmp / COMPLETE).write_text(key + "\n")
            shutil.rmtree(dest, ignore_errors=True)  # an unfinished or other-key snapshot of the same name
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest, info, False
