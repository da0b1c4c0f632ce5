"""What a study's stage must materialize: every asset partition that is missing or stale, and what comes after it.

An asset partition runs when it was never materialized (``missing``), when its asset's code version (the study values
its step uses, ``mt_assets.study.StudyDefs.code_version``) differs from the one it was built with (``code``), when an
artefact it was built from is no longer the latest of its partition (``upstream``), when ``--force`` says so, or when
an asset it is built from runs in the same partition (``after <asset>``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Item:
    """One run of the plan: a job on one partition (None: unpartitioned), the assets to materialize and why."""

    job: str  # the stage (one of mt_run.runs.STAGES); the study's job is ``StudyDefs.job(stage)``
    partition: str | None
    assets: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return self.job.removesuffix("_job")

    @property
    def label(self) -> str:
        return f"{self.stage}[{self.partition}]" if self.partition else self.stage

    def why(self) -> str:
        """The reasons, one per kind (the first asset missing, the first whose code changed, ...)."""
        first = {}
        for a, r in self.reasons.items():
            first.setdefault(r.split(":")[0] if not r.startswith("after") else "after", (a, r))
        return "; ".join(f"{a}: {r}" for a, r in first.values())


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
