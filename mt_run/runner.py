"""`mt run`: a study through the Dagster instance, doing only what is missing or stale, stage by stage.

The stages are the study's four jobs (``<study>__inputs_job`` ...): inputs, then the coupling adapters the selected
cells need (one run per source), then the cells (one run per cell), then the analysis. Assets are planned by their
bare names (``coupling_adapter``, ``mt_run.plan``) and materialized under the study's keys
(``<study>/coupling_adapter``); every run carries the tag ``mt/study=<study>``. Before each stage its plan is made from
what the instance recorded, so a stage sees what the one before it just published; the analysis runs when anything
ran, or when it is missing or stale itself.

How runs are executed (``launch``): ``inline`` runs each one in this process, one after another (no daemon; what a
one-GPU machine wants), or, on a machine without GPUs, as many of a stage at once as the ``gpu`` pool has slots
(``Settings.jobs`` by default), each in a forked copy of this process whose imports are made, with one torch
thread; ``queued`` submits them to the instance's run queue (``mt_run.queue``), where the Dagster daemon launches each
in its own process, at most as many at once as the ``gpu`` pool has slots (N cells on N GPUs at
once; the pool and the GPU leases keep their GPU steps apart). ``auto`` is queued when there are GPUs and the pool has
more than one slot.

Inline runs are tagged with this process's pid and host; runs of an earlier ``mt run`` that was killed (still STARTED,
their process gone) are marked failed and their pool slots freed before anything starts, so they never block the
queue. Queued runs are watched here too: a run whose worker died is reconciled, and a daemon that went away is
replaced.

At the default log level, what the libraries print while an inline run executes (W&B, transformers' warnings, tqdm
bars, Python warnings) goes to a log file (``libraries_to``; `mt run` names it in its first lines), and the console
shows the progress lines, the steps' warnings and a failed step's cause.

Interrupted (Ctrl-C, SIGTERM: ``Interrupted``), the step in progress stops, its staging is discarded, queued runs in
flight are cancelled, and nothing partial is published: the next ``mt run`` resumes.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from mt_run.plan import Item, plan_item, stage_assets
from mt_run.runs import (FINISHED, GPU_TAG, NO_DAEMON_RETRY, PID_TAG, STAGES, STUDY_TAG, UNTIL, RunFailed,
                         assign_waiting_steps, failure_info, partition_owner, process_gone, reconcile_dead_runs,
                         run_warnings, this_process)
from mt_settings import Settings

__all__ = ["Runner", "Item", "RunFailed", "Interrupted", "GPU_TAG", "libraries_to"]


class Interrupted(KeyboardInterrupt):
    """``mt run`` was interrupted (SIGINT or SIGTERM) while ``what`` ran."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what

    def message(self) -> str:
        return (f"mt run: interrupted during {self.what}; nothing partial was published (its staging was discarded); "
                f"run the same command again to resume")


# What a step imports, imported once here before the stage's runs are forked, so that no child pays it (about 11 s of
# a tiny cell's 35 s): none of them starts a thread at import. Polars, pyarrow and duckdb are not imported for this:
# their pools would not survive a fork, and this process never uses them (``Runner._forked``).
STEP_IMPORTS = ("torch", "transformers.models.qwen2.modeling_qwen2", "peft", "safetensors.torch")


class Runner:
    """Executes a study's plan stage by stage (one Dagster run per item), printing progress.
    ``defs``: the code location's Definitions; ``sd``: the study's ``mt_assets.study.StudyDefs``. ``library_log``:
    the file that what the libraries print while a run executes in this process goes to (``libraries_to``; inline
    launch at the default log level), so that the console shows the progress lines, the steps' warnings and a failed
    step's cause; None leaves it on the console."""

    def __init__(self, defs, sd, instance, *, settings: Settings, cells: list[str], force: bool = False,
                 cells_only: bool = False, log_level: str = "WARNING", launch: str = "auto",
                 until: str = "analysis", out: Callable[[str], None] = print, library_log: Path | None = None):
        self.defs, self.sd, self.instance, self.cells, self.settings = defs, sd, instance, cells, settings
        self.force, self.cells_only = force, cells_only
        self.stages = STAGES[:STAGES.index(UNTIL[until]) + 1]
        self.log_level, self.out = log_level, out
        self.slots = max(1, instance.event_log_storage.get_concurrency_info("gpu").slot_count or 1)
        from mt_resources import GpuAllocator

        gpus = GpuAllocator.of(settings).count()
        self.launch = ("queued" if self.slots > 1 and gpus else "inline") if launch == "auto" else launch
        # inline without GPUs: the pool's slots are CPU jobs, runs of a stage side by side in forked processes of one
        # torch thread each (not where $MT_THREADS asks for more: a forked OpenMP pool cannot run them)
        self.at_once = self.slots if self.launch == "inline" and not gpus and settings.runtime.threads <= 1 else 1
        self.ran: list[Item] = []
        self.current = "planning"  # what runs now, for the interrupt message
        self.library_log, self._log = library_log, None  # the path, and the file while run() runs

    @property
    def quiet(self) -> bool:
        """Dagster's console shows nothing and `mt` prints the progress, the runs' warnings and a failed step's cause
        (the default); --log-level INFO/DEBUG or --debug show Dagster's own log and leave the libraries' output on the
        console."""
        return self.log_level == "WARNING" and not self.settings.debug

    def latest(self) -> Callable[[str, str | None], dict | None]:
        """The study's record of a bare asset name, ``latest(asset, partition)``, as the instance holds it now (read
        once per asset: a plan asks for every partition of a stage and their upstreams)."""
        from mt_resources.store import LatestRecords

        records = LatestRecords(self.instance)
        return lambda asset, partition: records(self.sd.key(asset), partition)

    def stage_items(self, job: str) -> list[Item]:
        study = self.sd.study
        if job == "coupling_job":  # with --cells the adapters those cells build on; else every partition (the whole
            # sweep, and a source no cell of this profile builds on: its adapter and gates are the study's too)
            used = {study.cell(c).coupling for c in self.cells}
            parts = [k for k in study.coupling_keys if k in used or not self.cells_only]
        elif job == "cell_job":
            parts = list(self.cells)
        else:
            parts = [None]
        # --cells: inputs and coupling adapters are redone only when stale, never forced
        force = self.force and not (self.cells_only and job in ("inputs_job", "coupling_job"))
        latest = self.latest()
        return [plan_item(self.defs, self.sd, job, p, latest, force=force) for p in parts]

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
                self.out(f"{item.label}: " + (f"would run {', '.join(item.assets)} ({item.why()})" if item.assets
                                              else "up to date"))
                out += [item] if item.assets else []
        return out

    def run(self) -> list[Item]:
        from mt_run.queue import RunQueue, daemon

        self.out(f"launch: {self.launch}" + (f", up to {self.slots} runs at once (gpu pool)" if self.launch == "queued"
                                              else f", up to {self.at_once} runs at once (no GPU: each in a forked "
                                                   f"process, gpu pool slots as CPU jobs)" if self.at_once > 1
                                              else ", one run after another in this process"))
        with contextlib.ExitStack() as stack:
            self.stack = stack
            try:
                stack.enter_context(interrupts_that_stick())
                if self.launch == "inline" and self.quiet and self.library_log is not None:
                    Path(self.library_log).parent.mkdir(parents=True, exist_ok=True)
                    stack.callback(_drop_if_empty, Path(self.library_log))  # nothing ran, or nothing was printed
                    self._log = stack.enter_context(open(self.library_log, "a", buffering=1, encoding="utf-8",
                                                         errors="replace"))
                    stack.callback(setattr, self, "_log", None)
                    self.out(f"library output (W&B, transformers, warnings, progress bars): {self.library_log}")
                if self.launch == "queued":
                    stack.enter_context(daemon(self.instance, self.settings, self.out))
                    self.queue = stack.enter_context(RunQueue(self.settings, self.out))
                return self._stages()
            except Interrupted:
                raise
            except KeyboardInterrupt:
                raise Interrupted(self.current) from None

    def _stages(self) -> list[Item]:
        for job in self.stages:
            self.current = f"the plan of stage {job.removesuffix('_job')}"
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
            if self.at_once > 1:  # every stage, a lone run too: this process never runs a step (``_forked``)
                self._forked(job, todo)
                continue
            t_stage = time.perf_counter()
            for n, item in enumerate(todo, 1):
                self.out(f"{item.label}: running {', '.join(item.assets)} ({item.why()})")
                dt = self.execute(item)
                done = time.perf_counter() - t_stage
                eta = done / n * (len(todo) - n)
                if dt is not None:
                    self.out(f"{item.label}: done in {dt:.0f}s  [{item.stage} {n}/{len(todo)}, eta {eta:.0f}s]")
                    self.ran.append(item)
        return self.ran

    def _queued(self, job: str, todo: list[Item]) -> None:
        """Submit the stage's runs, at most ``slots`` in flight; one status line per change; fail after the stage."""
        from mt_run.queue import daemon, daemon_alive

        pending, flying, failed, t_stage = list(todo), {}, [], time.perf_counter()
        waiting: dict[str, tuple[Item, object]] = {}  # partitions another live run owns: (item, that run)
        checked = time.monotonic()
        stage = job.removesuffix("_job")

        def wait_for_owner(item: Item) -> bool:
            if (owner := partition_owner(self.instance, self.sd.name, item.partition)) is None:
                return False
            waiting[item.label] = (item, owner)
            self._say_waiting(item, owner)
            return True

        try:
            while pending or flying or waiting:
                while pending and len(flying) < self.slots:
                    item = pending.pop(0)
                    if wait_for_owner(item):
                        continue
                    run_id = self.queue.submit(self.sd, item, {STUDY_TAG: self.sd.name, **NO_DAEMON_RETRY})
                    flying[run_id] = Flight(item)
                    self.out(f"{item.label}: queued {', '.join(item.assets)} ({item.why()}) run {run_id[:8]}")
                self.current = ", ".join([*(f.item.label for f in flying.values()), *waiting])
                time.sleep(1)
                assign_waiting_steps(self.instance)
                if time.monotonic() - checked > 10:  # a run worker that died never finishes on its own
                    reconcile_dead_runs(self.instance, self.out)
                    if not daemon_alive(self.instance):  # the daemon we used went away: queued runs need another
                        self.out("daemon: none serves this instance any more")
                        self.stack.enter_context(daemon(self.instance, self.settings, self.out))
                    checked = time.monotonic()
                for label, (item, owner) in list(waiting.items()):  # an owner that ended: only what it left
                    if self._owner_ended(owner):
                        del waiting[label]
                        if self._left_by(owner, item):
                            pending.append(item)
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
                    done = len(todo) - len(pending) - len(flying) - len(waiting)
                    eta = (time.perf_counter() - t_stage) / max(1, done) * (len(todo) - done)
                    if status == "SUCCESS":
                        self.ran.append(f.item)
                        self.out(f"{f.item.label}: done in {dt:.0f}s  [{stage} {done}/{len(todo)}, eta {eta:.0f}s]")
                    elif not wait_for_owner(f.item):  # lost the partition to a run started at the same time: wait
                        why, user, _ = failure_info(self.instance, run_id)
                        failed.append((f"{f.item.label}: {why}", user))
                        self.out(f"{f.item.label}: FAILED after {dt:.0f}s (run {run_id}): {why}")
        except KeyboardInterrupt:
            self.queue.cancel(list(flying))  # the runs in flight stop too: their staging is discarded
            raise Interrupted(f"{stage} ({', '.join(f.item.label for f in flying.values()) or 'between runs'})")
        if failed:
            raise _stage_failed(stage, failed, len(todo))

    def _forked(self, job: str, todo: list[Item]) -> None:
        """Up to ``at_once`` runs of the stage at once, each executed inline in a forked copy of this process (``_child``);
        one status line per change; fail after the stage, as ``_queued``.

        A fork copies a library's thread pool without its threads: a child that uses a pool this process has used
        waits forever (polars' writer did, after a lone coupling adapter had run here). So this process runs no step
        at all, and a stage's lone run gets every torch thread: no pool here has been started."""
        import multiprocessing as mp
        from multiprocessing.connection import wait

        ctx = mp.get_context("fork")  # the child inherits this process's imports and code location: no start-up
        for m in STEP_IMPORTS:
            __import__(m)
        if _wandb_mode(self.sd.study, self.settings) != "disabled":  # disabled never imports wandb
            __import__("wandb")
        stage, t_stage = job.removesuffix("_job"), time.perf_counter()
        pending, flying, failed, done = list(todo), {}, [], 0
        try:
            while pending or flying:
                while pending and len(flying) < self.at_once:
                    item = pending.pop(0)
                    r, w = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=self._child, args=(item, w, len(todo) == 1), name=f"mt {item.label}")
                    proc.start()
                    w.close()
                    flying[r] = (item, proc, time.perf_counter())
                    self.out(f"{item.label}: running {', '.join(item.assets)} ({item.why()})")
                self.current = ", ".join(i.label for i, _, _ in flying.values())
                ready = wait(list(flying), timeout=2)
                if not ready:  # meanwhile: a step of a child may wait for a pool slot nobody hands it
                    assign_waiting_steps(self.instance)
                for r in ready:
                    item, proc, t0 = flying.pop(r)
                    try:
                        status, detail, user = r.recv()
                    except EOFError:  # killed, or died in native code: its run is left STARTED with its pid
                        status = None
                    r.close()
                    proc.join()  # before its exit code is read: the pipe can close first
                    if status is None:
                        status, detail, user = "failed", f"its process died (exit code {proc.exitcode})", False
                    done += 1
                    eta = (time.perf_counter() - t_stage) / done * (len(todo) - done)
                    if status == "ok":
                        self.ran.append(item)
                        self.out(f"{item.label}: done in {time.perf_counter() - t0:.0f}s  "
                                 f"[{stage} {done}/{len(todo)}, eta {eta:.0f}s]")
                    elif status == "made elsewhere":  # another run made it meanwhile (the child said so)
                        pass
                    elif status == "interrupted":
                        raise KeyboardInterrupt
                    else:
                        failed.append((detail, user))
                        self.out(f"{item.label}: FAILED: {detail}")
        except KeyboardInterrupt:  # Ctrl-C reached the children too; SIGTERM reached only this process
            _stop([proc for _, proc, _ in flying.values()])
            raise Interrupted(f"{stage} ({', '.join(i.label for i, _, _ in flying.values()) or 'between runs'})")
        finally:
            reconcile_dead_runs(self.instance, self.out)  # a child that died left its run STARTED
        if failed:
            raise _stage_failed(stage, failed, len(todo))

    def _child(self, item: Item, conn, alone: bool) -> None:
        """A forked run: its own connection to the instance, one torch thread (every one if ``alone`` in its stage),
        the outcome sent to the parent."""
        import dagster as dg

        outcome = ("failed", f"{item.label}: the run did not report", False)
        try:
            self.settings = self.settings.install_forked(None if alone else 1)
            self.instance = dg.DagsterInstance.from_ref(self.instance.get_ref())
            dt = self.execute(item)
            outcome = ("ok", f"{dt:.1f}", False) if dt is not None else ("made elsewhere", item.label, False)
        except Interrupted:
            outcome = ("interrupted", item.label, False)
        except RunFailed as e:
            outcome = ("failed", str(e), e.user)
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the stage
            outcome = ("failed", f"{item.label}: {type(e).__name__}: {e}", False)
        finally:
            with contextlib.suppress(Exception):
                conn.send(outcome)
                conn.close()
            sys.stdout.flush()
            os._exit(0)  # the parent's exit handlers are not this process's to run

    def execute(self, item: Item) -> float | None:
        """Run ``item`` (its seconds); or, where another live run owns its partition (another `mt run`, a launch from
        the UI), wait for that run and do only what it left undone: None when it left nothing. One partition, one
        piece of work, also when both started at once (the later run's claim fails before it publishes)."""
        while True:
            owner = partition_owner(self.instance, self.sd.name, item.partition)
            if owner is None:
                try:
                    return self._execute_once(item)
                except RunFailed:
                    if (owner := partition_owner(self.instance, self.sd.name, item.partition)) is None:
                        raise
            self._say_waiting(item, owner)
            self.current = f"{item.label} (waiting for run {owner.run_id[:8]})"
            while not self._owner_ended(owner):
                time.sleep(2)
            if not self._left_by(owner, item):
                return None

    def _say_waiting(self, item: Item, owner) -> None:
        pid = owner.tags.get(PID_TAG)
        self.out(f"{item.label}: run {owner.run_id[:8]} ({owner.job_name.removeprefix(self.sd.name + '__')}"
                 f"{f', pid {pid}' if pid else ''}) is making it; waiting for it")

    def _owner_ended(self, owner) -> bool:
        """Whether ``owner`` (a run that owned a partition) has ended or its process is gone."""
        run = self.instance.get_run_by_id(owner.run_id)
        return run is None or run.status.value in FINISHED or process_gone(run)

    def _left_by(self, owner, item: Item) -> bool:
        """``item`` planned again once ``owner`` ended, never forced: whether that run left any of it undone (then
        ``item`` holds what is left)."""
        left = plan_item(self.defs, self.sd, item.job, item.partition, self.latest())
        if not left.assets:
            self.out(f"{item.label}: made by run {owner.run_id[:8]} meanwhile: up to date")
            return False
        item.assets, item.reasons = left.assets, left.reasons
        self.out(f"{item.label}: run {owner.run_id[:8]} left {', '.join(item.assets)} ({item.why()})")
        return True

    def _execute_once(self, item: Item) -> float:
        t0 = time.perf_counter()
        self.current = item.label
        tags = {**this_process(), STUDY_TAG: self.sd.name, **NO_DAEMON_RETRY}
        # At the default level Dagster's console shows nothing; this process prints the run's warnings and, when a
        # step fails, one line with its cause (Dagster's console would print the cause inside a stack trace).
        # --log-level INFO/DEBUG or --debug show Dagster's own log.
        # What the libraries print meanwhile (W&B, transformers, tqdm, Python warnings) goes to the library log.
        quiet = self.quiet
        routed = libraries_to(self._log) if quiet and self._log is not None else contextlib.nullcontext()
        try:
            with routed:
                res = self.defs.resolve_job_def(self.sd.job(item.job)).execute_in_process(
                    instance=self.instance, partition_key=item.partition, raise_on_error=False, tags=tags,
                    asset_selection=[self.sd.key(a) for a in item.assets],
                    run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL" if quiet else
                                                                   self.log_level}}}})
        except KeyboardInterrupt:  # between Dagster's own interrupt checks
            raise Interrupted(item.label) from None
        dt = time.perf_counter() - t0
        if quiet:
            for line in run_warnings(self.instance, res.run_id):
                self.out(f"{item.label}: warning: {line}")
        if not res.success:
            if _interrupted(self.instance, res.run_id):
                raise Interrupted(item.label)
            why, user, trace = failure_info(self.instance, res.run_id)
            if trace and quiet:
                print(trace, file=sys.stderr)  # a bug, not the input: its stack trace
            if self._log is not None:
                self.out(f"{item.label}: what the libraries printed during it: {self.library_log}")
            raise RunFailed(f"{item.label} FAILED after {dt:.0f}s (run {res.run_id}) in {why}", user)
        return dt


def _stage_failed(stage: str, failed: list[tuple[str, bool]], total: int) -> RunFailed:
    """A stage's failed runs ((message, user error) each) as one error; a user error only if every one was."""
    return RunFailed(f"{stage}: {len(failed)} of {total} run(s) failed; later stages not started:\n"
                     + "\n".join(f"  {f}" for f, _ in failed), all(u for _, u in failed))


def _stop(procs) -> None:
    """Interrupt forked runs and wait for them to discard their staging (SIGINT every 2 s, as ``interrupts_that_stick``
    does), at most 60 s; then kill what is left (its run is reconciled as dead, its staging removed by the next run)."""
    deadline = time.monotonic() + 60
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        try:
            for p in procs:
                if p.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGINT)
            for p in procs:
                p.join(2)
        except KeyboardInterrupt:  # this process's own repeated SIGINT: keep waiting
            continue
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def _drop_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()


@contextlib.contextmanager
def libraries_to(log: TextIO):
    """While a run executes in this process, what its libraries write goes to ``log`` (an open text file) instead
    of the console: whatever is written to ``sys.stdout``/``sys.stderr`` (W&B's "wandb: ..." lines, tqdm bars such as
    transformers' "Loading weights", ``print``), the logging handlers that write to the console (transformers' own
    logger keeps one bound to the stderr of its import), and Python warnings (transformers' FutureWarnings): a
    warning is written there once, as Python would show it. Everything is put back on exit. What `mt` prints itself
    (the progress, the steps' warnings and a failed step's cause, read from the Dagster instance) is printed outside
    it. Output written below Python (a C library's, a child process's) stays on the console."""
    import logging
    import warnings

    out, err = sys.stdout, sys.stderr
    consoles = {id(x) for x in (out, err, sys.__stdout__, sys.__stderr__) if x is not None}

    def stream_handlers():
        loggers = [logging.getLogger(), *(x for x in list(logging.Logger.manager.loggerDict.values())
                                          if isinstance(x, logging.Logger))]
        return [h for lg in loggers for h in list(lg.handlers)
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                and not isinstance(getattr(type(h), "stream", None), property)]  # one that follows sys.stderr

    def show(message, category, filename, lineno, file=None, line=None):
        log.write(warnings.formatwarning(message, category, filename, lineno, line))

    for f in (out, err):
        with contextlib.suppress(Exception):
            f.flush()
    moved = [(h, h.stream) for h in stream_handlers() if id(h.stream) in consoles]
    for h, _ in moved:
        h.setStream(log)
    shown = warnings.showwarning
    warnings.showwarning = show
    sys.stdout = sys.stderr = log
    try:
        yield log
    finally:
        sys.stdout, sys.stderr = out, err
        warnings.showwarning = shown
        for h, stream in moved:
            if h.stream is log:
                h.setStream(stream)
        for h in stream_handlers():  # made while it ran, bound to the log: to the console it would have had
            if h.stream is log:
                h.setStream(err)
        with contextlib.suppress(Exception):
            log.flush()


@contextlib.contextmanager
def interrupts_that_stick(every_s: float = 2.0):
    """Dagster stops a step by raising from its SIGINT (and SIGTERM) handler; when the signal lands while the garbage
    collector runs a callback, Python prints "Exception ignored in ..." and the step runs on, so one Ctrl-C can be
    lost. Here every SIGINT or SIGTERM the process receives is also written to a wake-up pipe, and a thread sends
    SIGINT again every ``every_s`` seconds until the block is left (the interruption took)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    left = threading.Event()

    def watch():
        while not left.is_set():
            if not select.select([r], [], [], 0.5)[0]:
                continue
            if {signal.SIGINT, signal.SIGTERM} & set(os.read(r, 512)):
                while not left.wait(every_s):
                    os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=watch, name="mt-interrupts", daemon=True)
    t.start()
    try:
        yield
    finally:
        left.set()
        signal.set_wakeup_fd(old)
        t.join()
        os.close(r)
        os.close(w)


@dataclass
class Flight:
    """A submitted run as `mt run` follows it."""
    item: Item
    started: float | None = None
    gpu: str | None = None


def _interrupted(instance, run_id: str) -> bool:
    """Whether the run stopped because this process was interrupted (Dagster turns SIGINT inside a step into
    ``DagsterExecutionInterruptedError`` and fails or cancels the run)."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status.value == "CANCELED":
        return True
    for e in instance.all_logs(run_id):
        ev = e.dagster_event
        err = ev.step_failure_data.error if ev is not None and ev.is_step_failure and ev.step_failure_data else None
        while err is not None:
            if err.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt", "Interrupted"):
                return True
            err = err.cause
    return False


def _gpu_of(instance, run_id: str) -> str | None:
    """The device a run's latest GPU step leased (its "gpu: leased device i of n" log line), if any yet."""
    leased = [e.user_message.split()[3] for e in instance.all_logs(run_id)
              if (e.user_message or "").startswith("gpu: leased device ")]
    return leased[-1] if leased else None


def _wandb_mode(study, settings: Settings) -> str | None:
    from mt_resources.wandb import WandbResource

    return WandbResource.for_study(study, settings).mode
