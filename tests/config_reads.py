"""Which study fields the code reads while it runs (tests/test_config_reads.py): a field of the YAML that nothing reads
is a bug. Test support only: the production models know nothing of it.

``record(setattr)`` patches the study models (``mt_core.config.ConfigModel``) so that every read of a field of a study
that ``load_study`` returned from then on is recorded by its dotted path (``recipes.coupling.speed.packing``).
Loading and validating a study is not reading it: a study is registered once ``load_study`` is done with it, and
serialising one (``model_dump``) reads no field one by one. A test passes ``monkeypatch.setattr`` (undone after it);
a whole process (the README's ``mt demo`` in tests/conftest.py) records from its start, through
``subprocess_env``: ``record_config_reads/sitecustomize.py`` calls ``record_on_import``, which writes the reads to a
file when the process exits.
"""
from __future__ import annotations

import atexit
import importlib.abc
import importlib.util
import json
import os
import sys
from pathlib import Path

ENV = "MT_RECORD_CONFIG_READS"  # the file a process writes its reads to at exit
SITE = Path(__file__).resolve().parent / "record_config_reads"  # holds the sitecustomize.py that reads ENV


def record(setattr=setattr) -> set[str]:
    """Record every field read on a study loaded from now on; returns the live set of dotted paths. ``setattr``:
    how the patches are made (``monkeypatch.setattr`` to undo them after a test)."""
    from mt_core import config
    from mt_core.config import load

    reads: set[str] = set()
    paths: dict[int, str] = {}  # id(model inside a loaded study) -> its dotted path in the study
    read_attribute = config.ConfigModel.__getattribute__
    load_study = load.load_study

    def getattribute(self, name: str):
        if name[0] != "_" and name in type(self).model_fields:
            path = paths.get(id(self))
            if path is not None:
                reads.add(f"{path}.{name}" if path else name)
        return read_attribute(self, name)

    def register(obj, path: str) -> None:
        """Map every model inside a loaded study to its dotted path, so reads of its fields can be recorded."""
        if isinstance(obj, config.ConfigModel):
            paths[id(obj)] = path
            for name in type(obj).model_fields:
                register(obj.__dict__[name], f"{path}.{name}" if path else name)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                register(v, f"{path}.{k}")

    def recorded_load_study(*args, **kwargs):
        study = load_study(*args, **kwargs)
        register(study, "")
        return study

    setattr(config.ConfigModel, "__getattribute__", getattribute)
    setattr(load, "load_study", recorded_load_study)
    setattr(config, "load_study", recorded_load_study)
    return reads


def subprocess_env(out: Path) -> dict[str, str]:
    """The environment variables under which a Python process (and every Python process it starts) records the study
    fields it reads and writes them to ``out`` as it exits."""
    return {ENV: str(out), "PYTHONPATH": os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH")) if p)}


def record_on_import(out: Path) -> None:
    """In a process that imports ``mt_core.config``: record from that import on (before any module can bind
    ``load_study``), and write the sorted reads to ``out`` at exit. A process that never imports it writes nothing."""
    sys.meta_path.insert(0, _AfterImport("mt_core.config", lambda: _write_at_exit(record(), out)))


def _write_at_exit(reads: set[str], out: Path) -> None:
    atexit.register(lambda: out.write_text(json.dumps(sorted(reads))))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then`` once, right after the module ``name`` has been executed by its own loader."""

    def __init__(self, name: str, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # the rest of the path finds the module's spec
        spec = importlib.util.find_spec(fullname)
        exec_module = spec.loader.exec_module

        def exec_then(module):
            exec_module(module)
            self.then()
        spec.loader.exec_module = exec_then
        return spec
