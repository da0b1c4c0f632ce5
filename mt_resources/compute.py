"""Where heavy steps run: in the step process (``inline``) or in a child process through Dagster Pipes (``pipes``).

``pipes`` runs ``python -m mt_worker`` per step: torch/CUDA and the model never live in the Dagster step process, and
their memory is freed when the step ends, at the price of the child's start and imports (torch, transformers, peft:
a few seconds a step). The child inherits the environment, so inside a ``gpu.lease`` it sees the leased
``CUDA_VISIBLE_DEVICES``; it streams its log lines to the event log and sends the step's metadata back. A failing
child raises ``ChildTaskError`` with its error text (the store's writer then discards the staging directory); an
interrupted step sends the child SIGINT, then SIGKILL after ``grace_s``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg

from mt_core.config import PROJECT_ROOT, Study
from mt_core.steps.registry import Step, registered
from mt_worker import encode

MODES = ("inline", "pipes")


@contextlib.contextmanager
def _pipes_session(context, extras: dict):
    with warnings.catch_warnings():  # Dagster's own message handler calls one of its preview APIs: not ours to act on
        warnings.filterwarnings("ignore", message=".*expected_writer_count.*")
        with dg.open_pipes_session(context=context, extras=extras, context_injector=dg.PipesTempFileContextInjector(),
                                   message_reader=dg.PipesTempFileMessageReader()) as session:
            yield session


class ChildTaskError(RuntimeError):
    """A step that failed in its Pipes child process; the message carries the child's error."""


class Compute(dg.ConfigurableResource):
    mode: str = "inline"  # "inline" | "pipes"
    grace_s: float = 20.0  # after SIGINT to an interrupted child, before SIGKILL

    def run(self, context, study: Study, fn: Step, kwargs: dict, out: Path | dict[str, Path], log=print) -> dict:
        """The step ``fn(study, **kwargs, out=out, log=log)``, here or in a Pipes child; its metadata."""
        if self.mode not in MODES:
            raise ValueError(f"compute mode {self.mode!r} is not one of {MODES} (MT_COMPUTE)")
        if self.mode == "inline":
            return fn(study, **kwargs, out=out, log=log)
        return self._pipes(context, study, registered(fn), kwargs, out, log)

    def _pipes(self, context, study: Study, fn_name: str, kwargs: dict, out: Path | dict[str, Path], log) -> dict:
        extras = {"step": fn_name, "kwargs": encode(kwargs), "out": encode(out),
                  "study": str(study.file), "profile": study.profile,
                  "config_sha256": study.config_sha256}
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")  # set by gpu.lease for the work under it; the child inherits it
        with _pipes_session(context, extras) as session:
            # same cwd and environment as the step, so relative paths mean the same; the project importable
            path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
            proc = subprocess.Popen([sys.executable, "-m", "mt_worker"],
                                    env={**os.environ, "PYTHONPATH": path, **session.get_bootstrap_env_vars()})
            log(f"pipes: {fn_name} in child pid {proc.pid} (CUDA_VISIBLE_DEVICES={'unset' if cvd is None else cvd})")
            try:
                rc = proc.wait()
            finally:
                if proc.poll() is None:  # the step was interrupted: stop the child, never leave it holding a GPU
                    log(f"pipes: interrupted; stopping child pid {proc.pid}")
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(self.grace_s)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        msgs = [m for m in session.get_custom_messages() if isinstance(m, dict)]
        results = [m["result"] for m in msgs if "result" in m]
        if rc != 0 or not results:
            err = next((m for m in msgs if "error" in m), None)
            raise ChildTaskError(f"{fn_name} failed in its child process (exit code {rc}): "
                                 + (f"{err['error']}\n{err['traceback']}" if err else
                                    "it reported no error; see the step's stderr"))
        return results[-1]
