"""`mt run`: a study through the Dagster instance, doing only what is missing or stale, stage by stage.

The stages are the four jobs: inputs, then the coupling adapters the selected cells need (one run per source), then the
cells (one run per cell), then the analysis. Before each stage its plan is made from what the instance recorded, so a
stage sees what the one before it just published:

* an asset partition runs when it was never materialized (``missing``), when its asset's code version (the study
  values its step uses, mt_assets.study.code_version) differs from the one it was built with (``code``), when an
  artefact it was built from is no longer the latest of its partition (``upstream``), when ``--force`` says so, or
  when an asset it is built from runs in the same partition (``after <asset>``);
* the analysis runs when anything ran, or when it is missing or stale itself.

A run is tagged with this process's pid and host; runs of an earlier ``mt run`` that was killed (still STARTED, their
process gone) are marked failed and their pool slots freed before anything starts, so they never block the queue.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

PID_TAG, HOST_TAG, STUDY_TAG = "mt/pid", "mt/host", "mt/study"
STAGES = ("inputs_job", "coupling_job", "cell_job", "analysis_job")


@dataclass
class Item:
    """One run of the plan: a job on one partition (None: unpartitioned), the assets to materialize and why."""

    job: str
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


def plan_item(defs, job: str, partition: str | None, latest: Callable, force: bool = False) -> Item:
    """What ``job`` must materialize for ``partition``: stale assets and everything after them in the job."""
    graph = defs.resolve_asset_graph()
    keys = defs.resolve_job_def(job).asset_layer.selected_asset_keys
    order = [k for k in graph.toposorted_asset_keys if k in keys]
    item = Item(job, partition)
    for key in order:
        name = key.to_user_string()
        node = graph.get(key)
        why = "forced" if force else asset_status(name, partition, node.code_version, latest)
        if why is None:
            after = [p.to_user_string() for p in node.parent_keys if p.to_user_string() in item.assets]
            why = f"after {after[0]}" if after else None
        if why:
            item.assets.append(name)
            item.reasons[name] = why
    return item


def reconcile_dead_runs(instance, log: Callable[[str], None] = print) -> list[str]:
    """Runs of a killed ``mt run`` (STARTED or STARTING, their process gone on this host): marked failed, slots freed."""
    import dagster as dg

    host, dead = socket.gethostname(), []
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED,
                                                            dg.DagsterRunStatus.STARTING]))
    for run in runs:
        pid = run.tags.get(PID_TAG)
        if not pid or run.tags.get(HOST_TAG) != host or _alive(int(pid)):
            continue
        instance.report_run_failed(run, f"mt run: process {pid} that ran it is gone (killed?); marked failed")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        dead.append(run.run_id)
        log(f"run {run.run_id} ({run.job_name}) was left STARTED by dead process {pid}: marked failed, slots freed")
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runner:
    """Executes a study's plan stage by stage in this process (one Dagster run per item), printing progress."""

    def __init__(self, defs_module, instance, *, cells: list[str], force: bool = False, cells_only: bool = False,
                 log_level: str = "WARNING", out: Callable[[str], None] = print):
        self.d, self.instance, self.cells, self.force, self.cells_only = defs_module, instance, cells, force, cells_only
        self.log_level, self.out = log_level, out
        self.ran: list[Item] = []
        self.seconds: dict[str, float] = {}

    def latest(self, asset: str, partition: str | None):
        from mt_resources.store import latest_metadata

        return latest_metadata(self.instance, asset, partition)

    def stage_items(self, job: str) -> list[Item]:
        study = self.d.STUDY
        if job == "coupling_job":
            parts = [s for s in study.sources if any(study.cell(c).base == s for c in self.cells)]
        elif job == "cell_job":
            parts = list(self.cells)
        else:
            parts = [None]
        # --cells: inputs and coupling adapters are redone only when stale, never forced
        force = self.force and not (self.cells_only and job in ("inputs_job", "coupling_job"))
        return [plan_item(self.d.defs, job, p, self.latest, force=force) for p in parts]

    def run(self) -> list[Item]:
        for job in STAGES:
            items = self.stage_items(job)
            if job == "analysis_job" and self.ran and not items[0].assets:
                items[0].assets = [k.to_user_string() for k in
                                   self.d.defs.resolve_job_def(job).asset_layer.selected_asset_keys]
                items[0].reasons = {a: "cells ran" for a in items[0].assets}
            todo = [i for i in items if i.assets]
            current = [i.label for i in items if not i.assets]
            if current:
                self.out(f"{job.removesuffix('_job')}: up to date: {', '.join(current)}")
            t_stage = time.perf_counter()
            for n, item in enumerate(todo, 1):
                self.out(f"{item.label}: running {', '.join(item.assets)} ({_why(item)})")
                dt = self.execute(item)
                self.seconds[item.label] = dt
                done = time.perf_counter() - t_stage
                eta = done / n * (len(todo) - n)
                self.out(f"{item.label}: done in {dt:.0f}s  [{job.removesuffix('_job')} {n}/{len(todo)}, "
                         f"eta {eta:.0f}s]")
                self.ran.append(item)
        return self.ran

    def execute(self, item: Item) -> float:
        import dagster as dg

        t0 = time.perf_counter()
        tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), STUDY_TAG: self.d.STUDY.name}
        res = self.d.defs.resolve_job_def(item.job).execute_in_process(
            instance=self.instance, partition_key=item.partition, raise_on_error=False, tags=tags,
            asset_selection=[dg.AssetKey(a) for a in item.assets],
            run_config={"loggers": {"console": {"config": {"log_level": self.log_level}}}})
        dt = time.perf_counter() - t0
        if not res.success:
            failed = [e for e in res.all_events if e.is_step_failure]
            msg = failed[0].event_specific_data.error.message.strip() if failed and \
                failed[0].event_specific_data and failed[0].event_specific_data.error else "see the run's logs"
            step = failed[0].step_key if failed else "?"
            raise SystemExit(f"{item.label} FAILED after {dt:.0f}s in step {step} (run {res.run_id}): {msg}")
        return dt


def _why(item: Item) -> str:
    first = {}
    for a, r in item.reasons.items():
        first.setdefault(r.split(":")[0] if not r.startswith("after") else "after", (a, r))
    return "; ".join(f"{a}: {r}" for a, r in first.values())
