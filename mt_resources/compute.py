"""Where heavy steps run: in the step process (``inline``), in a child process through Dagster Pipes (``pipes``), or
as a Ray job on a Ray cluster (``ray``), also through Pipes.

``pipes`` runs ``python -m mt_worker`` per step: torch/CUDA and the model never live in the Dagster step process, and
their memory is freed when the step ends, at the price of the child's start and imports (torch, transformers, peft:
a few seconds a step). The child inherits the environment, so inside a ``gpu.lease`` it sees the leased
``CUDA_VISIBLE_DEVICES``; it streams its log lines to the event log and sends the step's metadata back. A failing
child raises ``ChildTaskError`` with its error text (the store's writer then discards the staging directory); an
interrupted step sends the child SIGINT, then SIGKILL after ``grace_s``.

``MT_CHILD_PREFIX`` (``child_prefix``) puts a command in front of the child of both (a profiler, ``numactl``, the
test suite's fork server). ``ray`` submits the same ``python -m mt_worker`` as a Ray job asking for ``num_gpus: 1``
(dagster-ray's ``PipesRayJobClient``): Ray, not ``GpuAllocator``, picks the node and the GPU and queues a step
until one is free; the job's log carries the Pipes messages, so the step's logs and metadata arrive as in ``pipes``,
plus where it ran. The job starts in the project directory with the same Python, so every node needs the project at
the same path and the artefact root shared (docs/SCALING.md). Under an object store root the step still hands the job
local paths (its staging folder and its inputs' copies, all in the launching host's $MT_CACHE): every node then needs
$MT_CACHE on a shared filesystem at the same path. Only non-secret settings travel in the job's environment (Ray
shows it in its dashboard and logs): a node brings its own credentials.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
import warnings
from pathlib import Path

import dagster as dg

from mt_core import runtime
from mt_core.config import Study
from mt_core.steps.registry import Step, registered
from mt_settings import COMPUTE_MODES as MODES
from mt_settings import PROJECT_ROOT, Settings, inherited_env, ray_job_env, visible_devices
from mt_worker import encode, placement


class ChildTaskError(RuntimeError):
    """A step that failed in its Pipes child process; the message carries the child's error."""


class Compute(dg.ConfigurableResource):
    mode: str = "inline"  # "inline" | "pipes" | "ray"
    grace_s: float = 20.0  # after SIGINT to an interrupted child, before SIGKILL
    ray_address: str = ""  # the Ray dashboard (http://host:8265; the settings' $RAY_ADDRESS)
    ray_poll_s: float = 1.0  # how often the step asks Ray whether its job ended
    workers: str = ""  # mode worker: the folder of the workers' locks, pid files and logs (``Settings.workers``)
    child_prefix: list[str] = []  # modes pipes and ray: the command a step's process starts under ($MT_CHILD_PREFIX)
    # the science code's process-wide values for an inline step (a Pipes child or a Ray job reads its own)
    models: str = str(runtime.Runtime.models)
    scratch: str | None = None
    threads: int = 0
    artifacts: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> "Compute":
        rt = settings.runtime
        return cls(mode=settings.compute_mode(), ray_address=settings.ray_address or "", workers=str(settings.workers),
                   child_prefix=list(settings.child_prefix),
                   models=str(rt.models), scratch=str(rt.scratch) if rt.scratch else None, threads=rt.threads,
                   artifacts=rt.artifacts)

    def runtime(self) -> runtime.Runtime:
        """The process's runtime (its failpoints among them) with this resource's folders and threads (0: the process's
        own, which is one in a run `mt run` forked: ``Settings.install_forked``)."""
        return dataclasses.replace(runtime.current(), models=Path(self.models),
                                   threads=self.threads or runtime.current().threads,
                                   scratch=Path(self.scratch) if self.scratch else None, artifacts=self.artifacts)

    def run(self, context, study: Study, fn: Step, kwargs: dict, out: Path | dict[str, Path], log=print) -> dict:
        """The step ``fn(study, **kwargs, out=out, log=log)``, here or in a Pipes child; its metadata."""
        if self.mode not in MODES:
            raise ValueError(f"compute mode {self.mode!r} is not one of {MODES} (MT_COMPUTE)")
        if self.mode == "inline":
            with runtime.using(self.runtime()):
                return {**(fn(study, **kwargs, out=out, log=log) or {}), "placement": placement()}
        extras = {"step": registered(fn), "kwargs": encode(kwargs), "out": encode(out),
                  "study": str(study.file), "profile": study.profile, "config_sha256": study.config_sha256}
        return {"ray": self._ray, "worker": self._worker}.get(self.mode, self._pipes)(context, extras, log)

    def child_command(self) -> list[str]:
        """The command of a pipes or ray step's process: ``python -m mt_worker`` under the settings' prefix."""
        return [*self.child_prefix, sys.executable, "-m", "mt_worker"]

    def _pipes(self, context, extras: dict, log) -> dict:
        fn_name, cvd = extras["step"], visible_devices()  # set by gpu.lease for the work under it; the child inherits it
        # Dagster's client: the child in the step's cwd and environment (the project importable); an interrupted step
        # sends it SIGINT and waits grace_s (it also dies with this process: mt_worker's PR_SET_PDEATHSIG)
        client = dg.PipesSubprocessClient(env=inherited_env(), forward_termination=True,
                                          termination_timeout_seconds=self.grace_s,
                                          context_injector=dg.PipesTempFileContextInjector(),
                                          message_reader=dg.PipesTempFileMessageReader())
        log(f"pipes: {fn_name} in a child process (CUDA_VISIBLE_DEVICES={'unset' if cvd is None else cvd})")
        with warnings.catch_warnings():  # Dagster's own message handler calls one of its preview APIs: not ours
            warnings.filterwarnings("ignore", message=".*expected_writer_count.*")
            try:
                done = client.run(context=context, command=self.child_command(), extras=extras)
            except Exception as e:  # the child exited non-zero ("... failed with code N"): its error is logged
                if type(e).__name__ != "DagsterPipesExecutionError":  # not exported by dagster: named, not imported
                    raise
                code = str(e).rsplit(" ", 1)[-1]
                raise ChildTaskError(f"{fn_name} failed in its child process (exit code {code}): "
                                     f"{_child_error(context)}") from None
        return _result(fn_name, done.get_custom_messages(), None)

    def _worker(self, context, extras: dict, log) -> dict:
        """The step in the worker that stays for this device (``mt_resources.worker``), through a Pipes session
        whose bootstrap parameters go over the worker's socket instead of a child's environment."""
        from mt_resources.worker import worker_for

        with worker_for(Path(self.workers), log) as w, dg.open_pipes_session(
                context=context, extras=extras, context_injector=dg.PipesTempFileContextInjector(),
                message_reader=dg.PipesTempFileMessageReader()) as session:
            reply = w.run(session.get_bootstrap_env_vars(), extras["step"])
            if not reply.get("ok"):
                raise ChildTaskError(f"{extras['step']} failed in the worker (pid {w.pid}): {reply.get('error')}")
        return {**_result(extras["step"], session.get_custom_messages(), None), "worker_pid": w.pid,
                "worker_reused": w.reused}

    def _ray(self, context, extras: dict, log) -> dict:
        from dagster_ray import PipesRayJobClient

        address = self.ray_address
        if not address:
            raise ValueError("compute mode ray needs the Ray dashboard's address: set RAY_ADDRESS (e.g. "
                             "http://head:8265) or the compute resource's ray_address")
        env = ray_job_env()
        params = {"entrypoint": f"cd {shlex.quote(str(PROJECT_ROOT))} && {shlex.join(self.child_command())}",
                  "entrypoint_num_gpus": 1, "entrypoint_num_cpus": 1, "runtime_env": {"env_vars": env}}
        client = PipesRayJobClient(address=address, poll_interval=self.ray_poll_s)
        log(f"ray: submitting {extras['step']} to {address} (num_gpus=1)")
        try:
            done = client.run(context=context, submit_job_params=params, extras=extras)
        except RuntimeError as e:  # the job failed or was stopped: Ray's message ends with the job's last log lines
            raise ChildTaskError(f"{extras['step']} failed as a Ray job: {e}") from e
        result = _result(extras["step"], done.get_custom_messages(), None)
        job = done.metadata.get("Ray Job ID")
        result["ray_job_id"] = job.value if isinstance(job, dg.MetadataValue) else job
        return result


def _child_error(context) -> str:
    """``<Class>: <message>`` and the traceback of the exception the step's Pipes child exited with, as it reported
    it when its pipes closed (Dagster logs it as an engine event of the step)."""
    key = context.get_step_execution_context().step.key
    for e in reversed(context.instance.all_logs(context.run_id)):
        ev = e.dagster_event
        if ev is not None and ev.is_engine_event and e.step_key == key and ev.engine_event_data.error is not None \
                and (ev.message or "").startswith("[pipes] external process pipes closed with exception"):
            err = ev.engine_event_data.error
            head, sep, msg = err.message.strip().partition(": ")  # "mt_core.io.DataError: <message>"
            msg = msg if sep and head.rsplit(".", 1)[-1] == err.cls_name else err.message.strip()
            return f"{err.cls_name}: {msg}\nTraceback (from the child):\n{''.join(err.stack)}"
    return "it reported no error; see the step's stderr"


def _result(fn_name: str, messages: list, failed: str | None) -> dict:
    """The step's metadata from its worker's Pipes messages, or ChildTaskError with the worker's own error."""
    msgs = [m for m in messages if isinstance(m, dict)]
    results = [m["result"] for m in msgs if "result" in m]
    if failed or not results:
        err = next((m for m in msgs if "error" in m), None)
        raise ChildTaskError(f"{fn_name} failed in its child process ({failed or 'no result'}): "
                             + (f"{err['error']}\n{err['traceback']}" if err else
                                "it reported no error; see the step's stderr"))
    return results[-1]
