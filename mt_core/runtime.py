"""The process-wide values of the science code that are not study values: where random-weight snapshots and scratch
copies live, how many torch threads, and the fault-injection failpoints.

``mt_core`` reads no environment variable: a process's entry point reads its settings once (``mt_settings``) and
installs them here with ``configure``; a test uses ``using`` to run code under other values. Outside any entry point
the defaults hold.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Runtime:
    artifacts: str | None = None  # the artefact root's template ($MT_ARTIFACTS; mt_core.layout.artefact_root)
    models: Path = Path.home() / ".cache" / "marker_transfer" / "models"  # random-weight snapshots (gpu_smoke)
    scratch: Path | None = None  # merged weights for vLLM; None: the system temp folder
    threads: int = 0  # torch threads; 0: every core
    failpoint: str | None = None  # mt_core.faults: ``<name>`` or ``<name>:<n>``
    failpoint_hold: str | None = None  # mt_core.faults: wait to be killed, writing this file
    node: str | None = None  # the Ray worker node this process runs on (mt_services.ray)


_current = Runtime()


def current() -> Runtime:
    return _current


def configure(rt: Runtime) -> None:
    global _current
    _current = rt


@contextlib.contextmanager
def using(rt: Runtime):
    """``rt`` for the code under it, the previous values after."""
    old = current()
    configure(rt)
    try:
        yield rt
    finally:
        configure(old)
