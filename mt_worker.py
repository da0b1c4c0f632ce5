"""The process that runs heavy steps: ``python -m mt_worker`` runs one step in a fresh process (``Compute(mode=
"pipes")``, launched through Pipes); ``python -m mt_worker serve <socket>`` is a worker that stays and runs one step
after another with the base model held in memory (``mode="worker"``, started by ``mt_resources.worker``).

Either way it reloads the study, looks up the registered step it was named (``mt_core.steps.registry``), runs it into
the staging directory the parent opened, sends the step's log lines to Dagster's event log and its returned metadata
back as a Pipes custom message (``{"result": ...}``); an error is reported to the step as the pipes close (its class,
message and traceback). A fresh child then exits non-zero, and torch, CUDA and the model die with it; a worker that
stays answers the step that it failed and waits for the next. No Dagster import here: only ``dagster_pipes``.
``encode``/``decode`` are the wire format of the step's keyword arguments (JSON, with Paths and settings values
tagged).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

PATH_TAG, WANDB_TAG = "__path__", "__wandb__"


def encode(v):
    """Step kwargs as JSON for the worker: Paths and W&B settings tagged so that ``decode`` restores them."""
    from mt_core.model.tracking import WandbSettings

    if isinstance(v, Path):
        return {PATH_TAG: str(v)}
    if isinstance(v, WandbSettings):
        return {WANDB_TAG: dataclasses.asdict(v)}
    if isinstance(v, (list, tuple)):
        return [encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): encode(x) for k, x in v.items()}
    return v


def decode(v):
    if isinstance(v, dict):
        if set(v) == {PATH_TAG}:
            return Path(v[PATH_TAG])
        if set(v) == {WANDB_TAG}:
            from mt_core.model.tracking import WandbSettings

            return WandbSettings(**v[WANDB_TAG])
        return {k: decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


def placement() -> dict:
    """Where a step ran: its host, its node (a Ray worker's MT_NODE, set by mt_services.ray; else the host) and the
    GPU ids it was given."""
    from mt_core import runtime
    from mt_settings import visible_devices

    host = socket.gethostname()
    return {"host": host, "node": runtime.current().node or host, "cuda_visible_devices": visible_devices()}


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the Dagster step process dies (PR_SET_PDEATHSIG), so no orphan holds a GPU."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def run_step(pipes) -> None:
    """The step the Pipes context names, on the study it names; its metadata sent back as ``{"result": ...}``."""
    x = pipes.extras
    from mt_core.config import load_study
    from mt_core.steps.registry import lookup

    study = load_study(x["study"], x["profile"])
    if study.config_sha256 != x["config_sha256"]:
        raise RuntimeError(f"{x['study']} (profile {x['profile']}) changed since the step started: "
                           f"config sha256 {study.config_sha256} != {x['config_sha256']}")
    pipes.log.info(f"worker: {x['step']} in child pid {os.getpid()} (study {study.name}, profile {study.profile})")
    result = lookup(x["step"])(study, **decode(x["kwargs"]), out=decode(x["out"]), log=pipes.log.info)
    result = {**(result or {}), "placement": placement()}
    # default=str: what the inline path would render as text (e.g. numpy ints) arrives as text
    pipes.report_custom_message({"result": json.loads(json.dumps(result, default=str))})


def main() -> None:
    """One step in this fresh process (``python -m mt_worker``, a Pipes child)."""
    from dagster_pipes import open_dagster_pipes

    from mt_settings import Settings

    _die_with_parent()
    Settings.from_env().install()  # this process's settings: its environment, inherited from the step
    with open_dagster_pipes() as pipes:  # an exception is reported to the step as the pipes close, then exits 1
        run_step(pipes)


def serve(address: str) -> None:
    """A worker that stays (``python -m mt_worker serve <socket>``, ``MT_COMPUTE=worker``): one step after another,
    each a Pipes session the step opened (its bootstrap parameters arrive over the socket instead of the
    environment), with the base model held across them (``mt_core.model.resident``). One request per connection, a
    JSON line each way: ``{"op": "ping"}`` (health and what it holds), ``{"op": "run", "pipes": {...}}`` (a step;
    the reply comes when it ended), ``{"op": "checksum"}`` (of the held base). It exits after ``worker_idle_s``
    without a request, or when putting the base back after a failed step fails."""
    import sys
    import time
    import traceback

    from dagster_pipes import (PipesContext, PipesDefaultContextLoader, PipesDefaultMessageWriter,
                               PipesMappingParamsLoader)

    from mt_core.model import resident
    from mt_settings import Settings

    settings = Settings.from_env().install(worker=True)
    holder = resident.hold()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(address).unlink(missing_ok=True)
    srv.bind(address)
    srv.listen(8)
    srv.settimeout(settings.worker_idle_s)
    steps, started = 0, time.time()
    print(f"worker pid {os.getpid()} serving on {address} (idle exit after {settings.worker_idle_s:g}s)", flush=True)
    try:
        while True:
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                print(f"worker pid {os.getpid()}: idle for {settings.worker_idle_s:g}s, exiting", flush=True)
                return
            with conn, conn.makefile("rwb") as f:
                req = json.loads(f.readline() or "{}")
                reply: dict = {"pid": os.getpid()}
                if req.get("op") == "ping":
                    reply.update(steps=steps, up_s=round(time.time() - started, 1), loads=holder.loads,
                                 lends=holder.lends, base=str(holder.model_dir) if holder.model_dir else None)
                elif req.get("op") == "checksum":
                    reply.update(checksum=holder.checksum() if holder.model is not None else None)
                elif req.get("op") == "run":
                    steps += 1
                    try:  # an exception is reported to the step as the pipes close, then raised here
                        # this step's own context (open_dagster_pipes would hand back the first step's, closed)
                        pipes = PipesContext(PipesMappingParamsLoader(req["pipes"]), PipesDefaultContextLoader(),
                                             PipesDefaultMessageWriter())
                        PipesContext.set(pipes)
                        with pipes:
                            run_step(pipes)
                        reply.update(ok=True)
                    except Exception as e:  # noqa: BLE001 - the step failed, the worker goes on
                        reply.update(ok=False, error=f"{type(e).__name__}: {e}")
                        print(f"worker pid {os.getpid()}: step {steps} failed: {reply['error']}", flush=True)
                        traceback.print_exc()
                else:
                    reply.update(error=f"unknown request {req!r}")
                f.write((json.dumps(reply) + "\n").encode())
                f.flush()
            if reply.get("ok") is False:
                holder.restore()  # (a step's block restores it already; this fails loudly if that could not)
    finally:
        Path(address).unlink(missing_ok=True)
        sys.stdout.flush()


if __name__ == "__main__":
    import sys

    serve(sys.argv[2]) if sys.argv[1:2] == ["serve"] else main()
