"""Populated study instances, each built once per test session and copied into the tests that change one.

A slow test used to build its own Dagster instance and its own study from nothing (pretrain the tiny base, train the
coupling adapter, then the cells it asserts about). The instances several tests stand on are built here once per
session, under a file lock, so that pytest-xdist workers share them (the first worker to ask builds, the others wait):

* ``small_base``: tests/test_compute.py's small study, `mt run --cells C1_s42 --until coupling`: the inputs and the
  villain coupling adapter, exactly what tests/test_faults.py's chain used to build first;
* ``small_cells``: ``small_base`` plus the cells C1_s42, C4_s42, C5_s42 (`mt run --cells ...`): the local
  reference of tests/test_ray.py and the inline run of tests/test_compute.py, read only;
* ``tiny_base`` and ``demo`` (tests/conftest.py): the first stages of the README's `mt demo` on three cells of the tiny
  profile (inputs and both coupling adapters), and the demo resuming a copy of them.

A test that changes an instance works on a copy (``copy_instance``). The instance's SQLite storage and the artefact
manifests record absolute paths (every materialization's ``path`` and ``upstream`` paths); the copy rewrites them
from the built folder to the copy's, so that the copy reads as if it had been built where it lies. The artefacts' own
files hold no path (their md5s stay valid), except the DuckDB catalog, whose views keep naming the built instance's
files (which stay in place, unchanged, for the whole session); a test that queries a copy's catalog rebuilds it first.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

import zygote

ROOT = Path(__file__).resolve().parents[1]
SMALL_CELLS = ["C1_s42", "C4_s42", "C5_s42"]  # what tests/test_ray.py compares (all on the villain adapter)


def session_root(tmp_path_factory) -> Path:
    """A folder of this test session that every xdist worker sees (each worker's basetemp is a child of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per test session, whichever worker asks first; the others wait for it. A build that
    failed fails every later ask at once, with the first failure's message (rather than building again)."""
    shared = session_root(tmp_path_factory) / "shared"
    shared.mkdir(exist_ok=True)
    folder, done, failed = shared / name, shared / f"{name}.built", shared / f"{name}.failed"
    with FileLock(str(shared / f"{name}.lock")):
        if failed.exists():
            pytest.fail(f"the shared instance {name!r} failed to build earlier in this session:\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            t0 = time.monotonic()
            try:
                build(folder)
            except BaseException as e:  # pytest.fail and assertion errors alike
                failed.write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()[-6000:]}")
                raise
            done.write_text(f"built in {time.monotonic() - t0:.0f}s by {os.environ.get('PYTEST_XDIST_WORKER', 'master')}\n")
    return folder


def _rewrite_sqlite(db: Path, pairs: list[tuple[str, str]]) -> None:
    con = sqlite3.connect(str(db))
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                                            "'sqlite_%'")]
        for t in tables:
            for col in [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]:
                for old, new in pairs:
                    con.execute(f'UPDATE "{t}" SET "{col}" = replace("{col}", ?, ?) WHERE typeof("{col}") = \'text\' '
                                f'AND instr("{col}", ?) > 0', (old, new, old))
        con.commit()
    finally:
        con.close()


def copy_instance(src: Path, home: Path, art: Path) -> None:
    """Copy the instance built in ``src`` (``src/home``, ``src/art``) to ``home`` and ``art`` (created, or empty),
    with every absolute path the instance and the manifests record moved along."""
    pairs = [(str((src / "home").resolve()), str(home.resolve())), (str((src / "art").resolve()), str(art.resolve()))]
    shutil.copytree(src / "home", home, dirs_exist_ok=True)
    shutil.copytree(src / "art", art, dirs_exist_ok=True)
    for db in home.rglob("*.db"):
        _rewrite_sqlite(db, pairs)
    for m in art.rglob("_manifest.json"):
        text = m.read_text()
        for old, new in pairs:
            text = text.replace(old, new)
        m.write_text(text)
    for left in [*home.rglob("*"), *art.rglob("*")]:  # nothing of the copy may still name the built instance
        if left.suffix in (".db", ".json") and left.is_file():
            assert str(src.resolve()).encode() not in left.read_bytes(), left


def small_env(home: Path, art: Path, study: Path, **extra) -> dict:
    """The environment the small-study tests run `mt` in (tests/test_faults.py's ``_env``)."""
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", MT_STUDY=str(study),
               WANDB_MODE="disabled", **extra)
    for k in ("MT_RECORD_CONFIG_READS", "MT_FAILPOINT", "MT_COMPUTE"):
        env.pop(k, None)
    return env


def mt(env: dict, *args: str, timeout: float = 1200) -> str:
    """`mt <args>` in its own process (a child of the worker's zygote, tests/zygote.py), as a researcher runs it; its
    stdout (it must succeed)."""
    p = zygote.run(list(args), cwd=ROOT, env=env, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def _new_instance(folder: Path) -> tuple[Path, Path]:
    home, art = folder / "home", folder / "art"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return home, art


def small_base(tmp_path_factory) -> Path:
    """tests/test_compute.py's small study with its inputs and the villain coupling adapter, built inline: the
    folder holds ``small.yaml``, ``home`` and ``art``."""
    from test_compute import _small_study

    def build(folder: Path) -> None:
        study = _small_study(folder / "small.yaml")
        home, art = _new_instance(folder)
        mt(small_env(home, art, study), "run", "--cells", "C1_s42", "--launch", "inline", "--until", "coupling")
    return built_once(tmp_path_factory, "small_base", build)


def small_cells(tmp_path_factory) -> Path:
    """``small_base`` and the cells SMALL_CELLS, as `mt run --cells ...` builds them (inline on a machine without
    GPUs), then the analysis. Read only: copy it to change it."""
    base = small_base(tmp_path_factory)

    def build(folder: Path) -> None:
        home, art = folder / "home", folder / "art"
        shutil.copyfile(base / "small.yaml", folder / "small.yaml")
        copy_instance(base, home, art)
        mt(small_env(home, art, folder / "small.yaml"), "run", "--cells", ",".join(SMALL_CELLS))
    return built_once(tmp_path_factory, "small_cells", build)
