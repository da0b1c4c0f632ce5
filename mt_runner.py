"""`mt run`: a study through the Dagster instance, doing only what is missing or stale, stage by stage.

The stages are the study's four jobs (``<study>__inputs_job`` ...): inputs, then the coupling adapters the selected
cells need (one run per source), then the cells (one run per cell), then the analysis. Assets are planned by their
bare names (``coupling_adapter``) and materialized under the study's keys (``<study>/coupling_adapter``); every run
carries the tag ``mt/study=<study>``. Before each stage its plan is made from what the instance recorded, so a
stage sees what the one before it just published:

* an asset partition runs when it was never materialized (``missing``), when its asset's code version (the study
  values its step uses, mt_assets.study.StudyDefs.code_version) differs from the one it was built with (``code``), when an
  artefact it was built from is no longer the latest of its partition (``upstream``), when ``--force`` says so, or
  when an asset it is built from runs in the same partition (``after <asset>``);
* the analysis runs when anything ran, or when it is missing or stale itself.

How runs are executed (``launch``): ``inline`` runs each one in this process, one after another (no daemon; what a
CPU or one-GPU machine wants); ``queued`` submits them to the instance's run queue, where the Dagster daemon launches
each in its own process, at most as many at once as the ``gpu`` pool has slots (N cells on N GPUs at once; the pool
and the GPU leases keep their GPU steps apart). ``auto`` is queued when the pool has more than one slot.

Inline runs are tagged with this process's pid and host; runs of an earlier ``mt run`` that was killed (still STARTED,
their process gone) are marked failed and their pool slots freed before anything starts, so they never block the
queue. Queued runs are watched by the daemon's run monitoring, which does the same for a dead run worker.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent
WORKSPACE = ROOT / "workspace.yaml"
LOCATION = "marker_transfer"
PID_TAG, HOST_TAG, STUDY_TAG, GPU_TAG = "mt/pid", "mt/host", "mt/study", "mt/gpu"
STAGES = ("inputs_job", "coupling_job", "cell_job", "analysis_job")
UNTIL = {"inputs": "inputs_job", "coupling": "coupling_job", "cells": "cell_job", "analysis": "analysis_job"}
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
NO_DAEMON_RETRY = {"dagster/max_retries": "0"}  # `mt run` resumes its runs itself (dagster.yaml run_retries)
# errors whose message is the whole story (bad input, a study file, a missing artefact, a deliberate dg.Failure such as
# a blocked gate): `mt run` prints the one message and exits 2; anything else is a bug and shows its stack trace
USER_ERRORS = ("DataError", "ConfigError", "ArtifactError", "JudgeConfigError", "Failure")


class RunFailed(SystemExit):
    """A run of the plan failed: the message names the run, the step and the cause; ``exit_code`` is 2 when the cause
    is a user error (USER_ERRORS), else 1. A SystemExit, so a caller that does not catch it exits with the message."""

    def __init__(self, message: str, user: bool):
        super().__init__(message)
        self.user = user
        self.exit_code = 2 if user else 1


@dataclass
class Item:
    """One run of the plan: a job on one partition (None: unpartitioned), the assets to materialize and why."""

    job: str  # the stage (one of STAGES); the study's job is ``StudyDefs.job(stage)``
    partition: str | None
    assets: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.job.removesuffix('_job')}[{self.partition}]" if self.partition else self.job.removesuffix("_job")


def asset_status(asset: str, partition: str | None, code_version: str | None, latest: Callable) -> str | None:
    """Why ``asset[partition]`` must run (``missing``, ``code``, ``upstream: …``), or None when it is current."""
    from mt_core.report.lineage import stale_links

    meta = latest(asset, partition)
    if meta is None:
        return "missing"
    if code_version is not None and meta.get("code_version") != code_version:
        return f"code version {meta.get('code_version')} -> {code_version}"
    links = stale_links(asset, partition or "_", meta, latest)
    if links:
        return "upstream changed: " + links[0]
    return None


def stage_assets(defs, sd, stage: str) -> list[str]:
    """The bare names of the assets of the study's job for ``stage``, upstream first."""
    graph = defs.resolve_asset_graph()
    keys = defs.resolve_job_def(sd.job(stage)).asset_layer.selected_asset_keys
    return [k.path[-1] for k in graph.toposorted_asset_keys if k in keys]


def plan_item(defs, sd, job: str, partition: str | None, latest: Callable, force: bool = False) -> Item:
    """What the study's job for stage ``job`` must materialize for ``partition``: stale assets and everything after
    them in the job. ``latest(asset, partition)`` reads the study's record of a bare asset name."""
    graph = defs.resolve_asset_graph()
    item = Item(job, partition)
    for name in stage_assets(defs, sd, job):
        node = graph.get(sd.key(name))
        why = "forced" if force else asset_status(name, partition, node.code_version, latest)
        if why is None:
            after = [p.path[-1] for p in node.parent_keys if p.path[-1] in item.assets]
            why = f"after {after[0]}" if after else None
        if why:
            item.assets.append(name)
            item.reasons[name] = why
    return item


def process_gone(run) -> bool:
    """Whether the process that executes ``run`` (its ``mt/pid`` tag, on this host) no longer exists; a run without
    the tag, or from another host, is never judged gone."""
    from mt_resources.store import pid_alive

    pid = run.tags.get(PID_TAG)
    return bool(pid) and run.tags.get(HOST_TAG) == socket.gethostname() and not pid_alive(int(pid))


def reconcile_dead_runs(instance, log: Callable[[str], None] = print) -> list[str]:
    """Runs whose process is gone (STARTED or STARTING, tagged with a pid on this host that no longer exists: an
    inline run of a killed ``mt run``, or a queued run whose worker was killed; ``mt_assets.common.tag_run_process``):
    marked failed, their pool slots freed."""
    import dagster as dg

    dead = []
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED,
                                                            dg.DagsterRunStatus.STARTING]))
    for run in runs:
        if not process_gone(run):
            continue
        pid = run.tags[PID_TAG]
        instance.report_run_failed(run, f"mt run: process {pid} that ran it is gone (killed?); marked failed")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        dead.append(run.run_id)
        log(f"run {run.run_id} ({run.job_name}) was left STARTED by dead process {pid}: marked failed, slots freed")
    return dead


class Runner:
    """Executes a study's plan stage by stage in this process (one Dagster run per item), printing progress.
    ``defs``: the code location's Definitions; ``sd``: the study's ``mt_assets.study.StudyDefs``."""

    def __init__(self, defs, sd, instance, *, cells: list[str], force: bool = False, cells_only: bool = False,
                 log_level: str = "WARNING", launch: str = "auto", until: str = "analysis",
                 out: Callable[[str], None] = print):
        self.defs, self.sd, self.instance, self.cells = defs, sd, instance, cells
        self.force, self.cells_only = force, cells_only
        self.stages = STAGES[:STAGES.index(UNTIL[until]) + 1]
        self.log_level, self.out = log_level, out
        self.slots = max(1, instance.event_log_storage.get_concurrency_info("gpu").slot_count or 1)
        self.launch = ("queued" if self.slots > 1 else "inline") if launch == "auto" else launch
        self.ran: list[Item] = []

    def latest(self, asset: str, partition: str | None):
        from mt_resources.store import latest_metadata

        return latest_metadata(self.instance, self.sd.key(asset), partition)

    def stage_items(self, job: str) -> list[Item]:
        study = self.sd.study
        if job == "coupling_job":
            parts = [s for s in study.sources if any(study.cell(c).base == s for c in self.cells)]
        elif job == "cell_job":
            parts = list(self.cells)
        else:
            parts = [None]
        # --cells: inputs and coupling adapters are redone only when stale, never forced
        force = self.force and not (self.cells_only and job in ("inputs_job", "coupling_job"))
        return [plan_item(self.defs, self.sd, job, p, self.latest, force=force) for p in parts]

    def _whole(self, item: Item, why: str) -> None:
        """Every asset of the item's job runs (the analysis reads all cells: it runs after any of them ran)."""
        item.assets = stage_assets(self.defs, self.sd, item.job)
        item.reasons = {a: why for a in item.assets}

    def preview(self) -> list[Item]:
        """What would run now, stage by stage, without running anything (later stages are planned again when they
        start, so a stage whose inputs turn out unchanged may then have less to do)."""
        out = []
        for job in self.stages:
            for item in self.stage_items(job):
                if job == "analysis_job" and out and not item.assets:
                    self._whole(item, "earlier stages run")
                self.out(f"{item.label}: " + (f"would run {', '.join(item.assets)} ({_why(item)})" if item.assets
                                              else "up to date"))
                out += [item] if item.assets else []
        return out

    def run(self) -> list[Item]:
        self.out(f"launch: {self.launch}" + (f", up to {self.slots} runs at once (gpu pool)" if self.launch == "queued"
                                              else ", one run after another in this process"))
        with contextlib.ExitStack() as stack:
            self.stack = stack
            if self.launch == "queued":
                stack.enter_context(daemon(self.instance, self.out))
                self.queue = stack.enter_context(RunQueue(self.instance))
            return self._stages()

    def _stages(self) -> list[Item]:
        for job in self.stages:
            items = self.stage_items(job)
            if job == "analysis_job" and self.ran and not items[0].assets:
                self._whole(items[0], "earlier stages ran")
            todo = [i for i in items if i.assets]
            current = [i.label for i in items if not i.assets]
            if current:
                self.out(f"{job.removesuffix('_job')}: up to date: {', '.join(current)}")
            if self.launch == "queued":
                self._queued(job, todo)
                continue
            t_stage = time.perf_counter()
            for n, item in enumerate(todo, 1):
                self.out(f"{item.label}: running {', '.join(item.assets)} ({_why(item)})")
                dt = self.execute(item)
                done = time.perf_counter() - t_stage
                eta = done / n * (len(todo) - n)
                self.out(f"{item.label}: done in {dt:.0f}s  [{job.removesuffix('_job')} {n}/{len(todo)}, "
                         f"eta {eta:.0f}s]")
                self.ran.append(item)
        return self.ran

    def _queued(self, job: str, todo: list[Item]) -> None:
        """Submit the stage's runs, at most ``slots`` in flight; one status line per change; fail after the stage."""
        pending, flying, failed, t_stage = list(todo), {}, [], time.perf_counter()
        checked = time.monotonic()
        stage = job.removesuffix("_job")
        while pending or flying:
            while pending and len(flying) < self.slots:
                item = pending.pop(0)
                run_id = self.queue.submit(self.sd, item, {STUDY_TAG: self.sd.name, **NO_DAEMON_RETRY})
                flying[run_id] = Flight(item)
                self.out(f"{item.label}: queued {', '.join(item.assets)} ({_why(item)}) run {run_id[:8]}")
            time.sleep(1)
            if time.monotonic() - checked > 10:  # a run worker that died never finishes on its own
                reconcile_dead_runs(self.instance, self.out)
                if not _daemon_alive(self.instance):  # the daemon we used went away: queued runs need another
                    self.out("daemon: none serves this instance any more")
                    self.stack.enter_context(daemon(self.instance, self.out))
                checked = time.monotonic()
            for run_id, f in list(flying.items()):
                status = self.instance.get_run_by_id(run_id).status.value
                if status == "STARTED" and f.started is None:
                    f.started = time.perf_counter()
                    self.out(f"{f.item.label}: running")
                if status == "STARTED" and (gpu := _gpu_of(self.instance, run_id)) not in (None, f.gpu):
                    f.gpu = gpu
                    self.out(f"{f.item.label}: running on GPU {gpu}")
                if status not in FINISHED:
                    continue
                del flying[run_id]
                dt = time.perf_counter() - (f.started or t_stage)
                done = len(todo) - len(pending) - len(flying)
                eta = (time.perf_counter() - t_stage) / done * (len(todo) - done)
                if status == "SUCCESS":
                    self.ran.append(f.item)
                    self.out(f"{f.item.label}: done in {dt:.0f}s  [{stage} {done}/{len(todo)}, eta {eta:.0f}s]")
                else:
                    why, user, _ = _failure_info(self.instance, run_id)
                    failed.append((f"{f.item.label}: {why}", user))
                    self.out(f"{f.item.label}: FAILED after {dt:.0f}s (run {run_id}): {why}")
        if failed:
            raise RunFailed(f"{stage}: {len(failed)} of {len(todo)} run(s) failed; later stages not started:\n"
                            + "\n".join(f"  {f}" for f, _ in failed), all(u for _, u in failed))

    def execute(self, item: Item) -> float:
        t0 = time.perf_counter()
        tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), STUDY_TAG: self.sd.name,
                **NO_DAEMON_RETRY}
        # At the default level Dagster's console shows nothing; this process prints the run's warnings and, when a
        # step fails, one line with its cause (Dagster's console would print the cause inside a stack trace).
        # --log-level INFO/DEBUG or --debug show Dagster's own log.
        quiet = self.log_level == "WARNING" and not os.environ.get("MT_DEBUG")
        res = self.defs.resolve_job_def(self.sd.job(item.job)).execute_in_process(
            instance=self.instance, partition_key=item.partition, raise_on_error=False, tags=tags,
            asset_selection=[self.sd.key(a) for a in item.assets],
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL" if quiet else self.log_level}}}})
        dt = time.perf_counter() - t0
        if quiet:
            for line in _warnings(self.instance, res.run_id):
                self.out(f"{item.label}: warning: {line}")
        if not res.success:
            why, user, trace = _failure_info(self.instance, res.run_id)
            if trace and quiet:
                print(trace, file=sys.stderr)  # a bug, not the input: its stack trace
            raise RunFailed(f"{item.label} FAILED after {dt:.0f}s (run {res.run_id}) in {why}", user)
        return dt


@dataclass
class Flight:
    """A submitted run as `mt run` follows it."""
    item: Item
    started: float | None = None
    gpu: str | None = None


def _why(item: Item) -> str:
    first = {}
    for a, r in item.reasons.items():
        first.setdefault(r.split(":")[0] if not r.startswith("after") else "after", (a, r))
    return "; ".join(f"{a}: {r}" for a, r in first.values())


def _gpu_of(instance, run_id: str) -> str | None:
    """The device a run's latest GPU step leased (its "gpu: leased device i of n" log line), if any yet."""
    leased = [e.user_message.split()[3] for e in instance.all_logs(run_id)
              if (e.user_message or "").startswith("gpu: leased device ")]
    return leased[-1] if leased else None


def _failure_info(instance, run_id: str) -> tuple[str, bool, str]:
    """(``step <key>: <cause>`` on one line, whether the cause is a user error, the cause's stack trace or "") of
    the first step failure of a run, naming any other step that failed in it. The cause is the error the step raised
    (Dagster wraps it), or the error a Pipes child reported; a user error's message is shown alone, any other error
    with its class."""
    failures = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event is not None
                and e.dagster_event.is_step_failure and e.dagster_event.step_failure_data
                and e.dagster_event.step_failure_data.error]
    if not failures:
        msg = next((e.user_message for e in instance.all_logs(run_id)
                    if e.dagster_event is not None and e.dagster_event.event_type_value == "RUN_FAILURE"),
                   "see the run's logs")
        return msg, False, ""
    first = failures[0]
    one, user, trace = _cause(first.step_failure_data.error)
    others = list(dict.fromkeys(ev.step_key for ev in failures[1:] if ev.step_key != first.step_key))
    return (f"step {first.step_key}: {one}" + (f" (also failed: {', '.join(others)})" if others else ""), user,
            trace)


def _cause(err) -> tuple[str, bool, str]:
    """(one line, user error?, stack trace or "") of a step's SerializableErrorInfo."""
    while err.cls_name == "DagsterExecutionStepExecutionError" and err.cause is not None:
        err = err.cause
    msg, cls = err.message.strip(), err.cls_name or ""
    if msg.split(":", 1)[0].rsplit(".", 1)[-1] == cls:  # "mt_core.io.DataError: <message>"
        msg = msg.split(":", 1)[1].strip()
    if cls == "ChildTaskError":  # "<step> failed in its child process (exit code 1): DataError: <message>\nTraceback"
        msg = msg.split("\nTraceback", 1)[0].strip()
        head, _, rest = msg.partition("): ")
        child = rest.split(":", 1)[0]
        if child in USER_ERRORS:
            cls, msg = child, rest.split(":", 1)[1].strip()
    user = cls in USER_ERRORS
    one = " ".join(line.strip() for line in msg.splitlines() if line.strip())
    return (one if user else f"{cls}: {one}"), user, ("" if user else err.to_string())


def _warnings(instance, run_id: str) -> list[str]:
    """The warnings the run's steps logged (``context.log.warning``), in order."""
    import logging

    return [e.user_message for e in instance.all_logs(run_id)
            if e.dagster_event is None and e.level >= logging.WARNING and e.user_message]


class RunQueue:
    """Creates runs of the workspace's code location and submits them to the instance's run queue."""

    def __init__(self, instance):
        self.instance = instance

    def __enter__(self):
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        self._wpc = WorkspaceProcessContext(self.instance, WorkspaceFileTarget(paths=[str(WORKSPACE)]),
                                            code_server_log_level="WARNING")
        self._wpc.__enter__()
        self.ctx = self._wpc.create_request_context()
        err = self.ctx.get_code_location_error(LOCATION)
        if err:
            raise RuntimeError(f"code location {LOCATION} failed to load: {err.message}")
        self.loc = self.ctx.get_code_location(LOCATION)
        self.repo = next(iter(self.loc.get_repositories().values()))
        return self

    def __exit__(self, *exc):
        self._wpc.__exit__(*exc)

    def submit(self, sd, item: Item, tags: dict) -> str:
        from dagster._core.definitions.selector import JobSubsetSelector

        keys, job = frozenset(sd.key(a) for a in item.assets), sd.job(item.job)
        remote = self.loc.get_job(JobSubsetSelector(location_name=self.loc.name, repository_name=self.repo.name,
                                                    job_name=job, op_selection=None, asset_selection=keys,
                                                    asset_check_selection=None))
        tags = {**tags, **({"dagster/partition": item.partition} if item.partition else {})}
        plan = self.loc.get_execution_plan(remote, {}, step_keys_to_execute=None, known_state=None,
                                           instance=self.instance).execution_plan_snapshot
        run = self.instance.create_run(
            job_name=job, run_id=None, run_config={}, resolved_op_selection=remote.resolved_op_selection,
            step_keys_to_execute=plan.step_keys_to_execute, op_selection=None, status=None, root_run_id=None,
            parent_run_id=None, tags=tags, job_snapshot=remote.job_snapshot, execution_plan_snapshot=plan,
            parent_job_snapshot=remote.parent_job_snapshot, remote_job_origin=remote.get_remote_origin(),
            job_code_origin=remote.get_python_origin(), asset_selection=keys, asset_check_selection=None,
            asset_graph=self.repo.asset_graph)
        return self.instance.submit_run(run.run_id, self.ctx).run_id


@contextlib.contextmanager
def daemon(instance, out: Callable[[str], None] = print, timeout_s: float = 180):
    """A Dagster daemon serving this instance: one already running, or one started here and stopped on exit."""
    if _daemon_alive(instance):
        out("daemon: using the one already running for this instance")
        yield None
        return
    log = Path(os.environ["DAGSTER_HOME"]) / "mt_daemon.log"
    exe = Path(sys.executable).with_name("dagster-daemon")
    with open(log, "ab") as f:
        proc = subprocess.Popen([str(exe), "run", "-w", str(WORKSPACE)], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    out(f"daemon: started pid {proc.pid} (log {log})")
    try:
        deadline = time.monotonic() + timeout_s
        while not _daemon_alive(instance):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Dagster daemon did not come up (exit {proc.poll()}); see {log}")
            time.sleep(1)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # its last heartbeat stays fresh for a minute: the next `mt run` would take it for a live daemon and queue
        # runs that nobody launches
        instance.wipe_daemon_heartbeats()


def _daemon_alive(instance, fresh_s: float = 60) -> bool:
    """A daemon has sent a heartbeat for this instance's run queue in the last ``fresh_s`` seconds."""
    beats = instance.get_daemon_heartbeats()
    now = time.time()
    return any(k == "QUEUED_RUN_COORDINATOR" and now - hb.timestamp < fresh_s for k, hb in beats.items())
