"""What a study's stage must materialize: every asset partition that is missing or stale, and what comes after it.

An asset partition runs when it was never materialized (``missing``), when its asset's code version (the study values
its step uses, ``mt_assets.study.StudyDefs.code_version``) differs from the one it was built with (the reason names
the study fields that changed: ``changed_inputs``), when an artefact it was built from is no longer the latest of its
partition (``upstream``), when ``--force`` says so, or when an asset it is built from runs in the same partition
(``after <asset>``).
"""
from __future__ import annotations

import json
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


def asset_status(asset: str, partition: str | None, code_version: str | None, latest: Callable,
                 inputs: dict | None = None) -> str | None:
    """Why ``asset[partition]`` must run (``missing``, the study fields or files its code version covers that changed,
    ``upstream: …``), or None when it is current. ``inputs``: what ``code_version`` covers
    (``StudyDefs.version_inputs``); without it, or for a materialization that did not record its own, the reason is
    the two code versions."""
    from mt_core.report.lineage import stale_links

    meta = latest(asset, partition)
    if meta is None:
        return "missing"
    if code_version is not None and meta.get("code_version") != code_version:
        return (changed_inputs(meta.get("code_version_inputs"), inputs)
                or f"code version {meta.get('code_version')} -> {code_version}")
    links = stale_links(asset, partition or "_", meta, latest)
    if links:
        return "upstream changed: " + links[0]
    return None


def changed_inputs(before: dict | None, now: dict | None, most: int = 3) -> str | None:
    """The first ``most`` differences between two records of what a code version covers (``StudyDefs.version_inputs``)
    as "samplers.alignment.temperature 1.0 -> 0.9, file reference/judge_prompts.json changed"; None when either is
    missing or they do not differ."""
    if not before or not now:
        return None
    old, new = _leaves(before.get("values") or {}), _leaves(now.get("values") or {})
    changes = [f"{k} {_short(old.get(k, _NONE))} -> {_short(new.get(k, _NONE))}"
               for k in sorted(old.keys() | new.keys()) if old.get(k, _NONE) != new.get(k, _NONE)]
    old_files, new_files = before.get("files") or {}, now.get("files") or {}
    changes += [f"file {f} changed" for f in sorted(old_files.keys() | new_files.keys())
                if old_files.get(f) != new_files.get(f)]
    if not changes:
        return None
    more = len(changes) - most
    return ", ".join(changes[:most]) + (f" and {more} more" if more > 0 else "")


_NONE = object()  # a field one side does not have


def _leaves(values: dict, prefix: str = "") -> dict:
    """{dotted path: value} down to the fields (a list is one value), so a change names the field, not its section."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v, width: int = 40) -> str:
    text = "(none)" if v is _NONE else json.dumps(v)
    return text if len(text) <= width else text[:width - 1] + "…"


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
        why = "forced" if force else asset_status(name, partition, node.code_version, latest,
                                                  sd.version_inputs(node.code_version))
        if why is None:
            after = [p.path[-1] for p in node.parent_keys if p.path[-1] in item.assets]
            why = f"after {after[0]}" if after else None
        if why:
            item.assets.append(name)
            item.reasons[name] = why
    return item
