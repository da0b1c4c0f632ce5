"""Runs as the platform tags, owns, reconciles and explains them.

Every run of a study's jobs carries ``mt/study=<study>``; the process that executes a run tags it with ``mt/pid`` and
``mt/host`` (``tag_run_process``), so a run whose process died (a killed ``mt run``, a killed run worker) is told from a
live one: ``reconcile_dead_runs`` marks it failed and frees its pool slots, ``claim_partition`` ignores it. Dagster's
default run launcher cannot tell a dead run worker from a live one, so its run monitoring never frees such a run's slots.
"""
from __future__ import annotations

import socket
from typing import Callable

PID_TAG, HOST_TAG, STUDY_TAG, GPU_TAG = "mt/pid", "mt/host", "mt/study", "mt/gpu"
PARTITION_TAG = "dagster/partition"
STAGES = ("inputs_job", "coupling_job", "cell_job", "analysis_job")
UNTIL = {"inputs": "inputs_job", "coupling": "coupling_job", "cells": "cell_job", "analysis": "analysis_job"}
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
ACTIVE = ("NOT_STARTED", "QUEUED", "STARTING", "STARTED")
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


def active_statuses() -> list:
    import dagster as dg

    return [dg.DagsterRunStatus(s) for s in ACTIVE]


def this_process() -> dict[str, str]:
    import os

    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def process_gone(run) -> bool:
    """Whether the process that executes ``run`` (its ``mt/pid`` tag, on this host) no longer exists; a run without
    the tag, or from another host, is never judged gone."""
    from mt_resources.store import pid_alive

    pid = run.tags.get(PID_TAG)
    return bool(pid) and run.tags.get(HOST_TAG) == socket.gethostname() and not pid_alive(int(pid))


def tag_run_process(context) -> None:
    """Tag the run with the process that executes it, once (runs execute their steps in one process:
    ``in_process_executor``, so this pid is the run's)."""
    if PID_TAG not in context.run.tags:
        context.instance.add_run_tags(context.run_id, this_process())


def reconcile_dead_runs(instance, log: Callable[[str], None] = print) -> list[str]:
    """Runs whose process is gone (STARTED or STARTING, tagged with a pid on this host that no longer exists: an
    inline run of a killed ``mt run``, or a queued run whose worker was killed): marked failed, their pool slots
    freed."""
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


def assign_waiting_steps(instance) -> list[str]:
    """Hand a free pool slot to a step that waits for one but was never assigned one (the pools it woke: each once).

    Dagster queues a step that finds its pool full and, when a slot is freed, assigns the oldest waiting step. The
    two are not atomic: a step that checks for a free slot just before another run frees one, and enqueues itself
    just after, is never assigned, and its run waits forever (seen in `mt run` with two forked cells and the judge
    pool of one slot: tests/test_run.py's resumed run). Runs in progress call this on every poll."""
    woken = []
    storage = instance.event_log_storage
    for key in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(key)
        claimed = {(c.run_id, c.step_key) for c in info.claimed_slots}
        waiting = [s for s in info.pending_steps if s.assigned_timestamp is None]
        assigned = [s for s in info.pending_steps
                    if s.assigned_timestamp is not None and (s.run_id, s.step_key) not in claimed]
        if waiting and info.slot_count - info.active_slot_count > len(assigned):
            storage.assign_pending_steps([key])
            woken.append(key)
    return woken


def partition_owner(instance, study: str, partition: str | None, this_run: str | None = None):
    """The run that owns ``partition`` of ``study`` now: of the runs in progress that materialize the study's assets in
    it, the oldest whose process is alive (``this_run`` counts as alive), or None."""
    import dagster as dg

    def ours(r: dg.DagsterRun) -> bool:
        return (r.tags.get(PARTITION_TAG) == partition
                and (r.tags.get(STUDY_TAG) == study or any(k.path[0] == study for k in r.asset_selection or ())))

    recs = instance.get_run_records(filters=dg.RunsFilter(statuses=active_statuses()))
    live = sorted(((r.create_timestamp, r.dagster_run.run_id, r.dagster_run) for r in recs
                   if ours(r.dagster_run) and (r.dagster_run.run_id == this_run or not process_gone(r.dagster_run))),
                  key=lambda x: (x[0], x[1]))
    return live[0][2] if live else None


def claim_partition(study: str, context, partition: str | None) -> None:
    """One run per partition of a study at a time (an unpartitioned asset counts as one partition): the owner
    (``partition_owner``) goes on, any other run stops here, before it publishes, so two runs never replace each
    other's artefacts under running evaluations (`mt run` then waits for the owner and uses what it made). A run left
    STARTED by a process that is gone owns nothing."""
    import dagster as dg

    owner = partition_owner(context.instance, study, partition, this_run=context.run_id)
    if owner is not None and owner.run_id != context.run_id:
        what = f"partition {partition} of study {study} is" if partition else \
            f"the unpartitioned assets of study {study} are"
        raise dg.Failure(allow_retries=False, description=
                         f"{what} being materialized by run {owner.run_id} "
                         f"({owner.job_name}, {owner.status.value}); this run stops without publishing. Wait for "
                         f"that run to finish or cancel it, then run again.",
                         metadata={"owner_run_id": owner.run_id, "partition": partition or ""})


def runs_in_progress(instance, study: str) -> list[str]:
    """The study's runs in progress, one line each: partition, age, and whether its process still exists (a run whose
    process is gone holds its pool slots until the next `mt run` marks it failed)."""
    import time

    import dagster as dg

    lines = []
    for rec in instance.get_run_records(filters=dg.RunsFilter(statuses=active_statuses(), tags={STUDY_TAG: study})):
        run = rec.dagster_run
        pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
        age = time.time() - rec.create_timestamp.timestamp()
        lines.append(f"run {run.run_id[:8]} {run.job_name.removeprefix(study + '__')}"
                     f"[{run.tags.get(PARTITION_TAG, '-')}] {run.status.value} for {age:.0f}s"
                     + (f": its process {pid} is gone; `mt run` marks it failed and frees its slots"
                        if process_gone(run) else f" (pid {pid} on {host})" if pid else ""))
    return lines or ["no run in progress"]


# ---- why a run failed, in one line -----------------------------------------------------------------------------------
def failure_info(instance, run_id: str) -> tuple[str, bool, str]:
    """(``step <key>: <cause>`` on one line, whether the cause is a user error, the cause's stack trace or "") of
    the first step failure of a run, naming any other step that failed in it. The cause is the error the step raised
    (Dagster wraps it), or the error a Pipes child reported; a user error's message is shown alone, any other error
    with its class. A run that failed without a failed step (cancelled, its process killed) gives the run's own
    message."""
    logs = instance.all_logs(run_id)
    failures = [e.dagster_event for e in logs if e.dagster_event is not None
                and e.dagster_event.is_step_failure and e.dagster_event.step_failure_data
                and e.dagster_event.step_failure_data.error]
    if not failures:
        msg = next((e.user_message for e in logs if e.dagster_event is not None
                    and e.dagster_event.event_type_value in ("RUN_FAILURE", "RUN_CANCELED")), "see the run's logs")
        return msg, False, ""
    first = failures[0]
    one, user, trace = cause(first.step_failure_data.error)
    others = list(dict.fromkeys(ev.step_key for ev in failures[1:] if ev.step_key != first.step_key))
    return (f"step {first.step_key}: {one}" + (f" (also failed: {', '.join(others)})" if others else ""), user,
            trace)


def cause(err) -> tuple[str, bool, str]:
    """(one line, user error?, stack trace or "") of a step's SerializableErrorInfo."""
    while err.cls_name == "DagsterExecutionStepExecutionError" and err.cause is not None:
        err = err.cause
    msg, cls = (err.message or "").strip(), err.cls_name or ""
    head, sep, rest = msg.partition(":")
    if sep and head.rsplit(".", 1)[-1] == cls:  # "mt_core.io.DataError: <message>"
        msg = rest.strip()
    if cls == "ChildTaskError":  # "<step> failed in its child process (exit code 1): DataError: <message>\nTraceback"
        msg = msg.split("\nTraceback", 1)[0].strip()
        child, sep, detail = msg.partition("): ")[2].partition(":")
        if sep and child in USER_ERRORS:
            cls, msg = child, detail.strip()
    user = cls in USER_ERRORS
    one = " ".join(line.strip() for line in msg.splitlines() if line.strip()) or cls
    return (one if user else f"{cls}: {one}"), user, ("" if user else err.to_string())


def run_warnings(instance, run_id: str) -> list[str]:
    """The warnings the run's steps logged (``context.log.warning``), in order."""
    import logging

    return [e.user_message for e in instance.all_logs(run_id)
            if e.dagster_event is None and e.level >= logging.WARNING and e.user_message]
