"""What every asset does the same way: read verified upstream artefacts, publish one artefact, report metadata.

Provenance is explicit: each materialization records, for every upstream artefact it read, the asset, partition, run
id, path and md5, and checks that md5 against the instance's record of that partition's latest materialization
(Dagster's automatic input pointer names the latest materialization of *any* partition, which is not enough), and
that the artefact's manifest belongs to the consuming study. Every function takes the study's ``StudyDefs`` first:
artefacts are named bare (``coupling_adapter``) in the store and in manifests, and by the study's prefixed key
(``marker_transfer_villain/coupling_adapter``) in Dagster.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any, Callable

import dagster as dg

from mt_assets.study import StudyDefs
from mt_core.steps.registry import Step
from mt_resources.compute import Compute
from mt_resources.store import Artifact, ArtifactError, ArtifactStore, latest_metadata


def read_upstream(sd: StudyDefs, context: dg.AssetExecutionContext, store: ArtifactStore, asset: str,
                  partition: str | None = None) -> Artifact:
    """The study's upstream artefact, its hashes checked, its manifest the study's own, and matched to the instance's
    latest record of that partition."""
    art = store.of(sd.name).read(asset, partition)
    owner = art.manifest.get("study")
    if owner != sd.name:
        raise ArtifactError(f"{asset}[{art.partition}] at {art.path} was built for study {owner!r}, not {sd.name!r} "
                            f"which reads it; re-materialize {sd.key(asset).to_user_string()}")
    meta = latest_metadata(context.instance, sd.key(asset), partition)
    if meta is None:
        raise ArtifactError(f"{asset}[{art.partition}]: an artefact exists at {art.path} but this Dagster instance "
                            f"has no materialization of it; materialize it through Dagster first")
    recorded = meta.get("md5")
    if recorded != art.digest:
        raise ArtifactError(f"{asset}[{art.partition}]: the store holds md5 {art.digest} but the instance's latest "
                            f"materialization recorded {recorded}; re-materialize {asset}")
    return art


def partitioned_check(name: str, asset: dg.AssetKey, partitions_def: dg.PartitionsDefinition, **kwargs) -> dg.AssetCheckSpec:
    """A check of ``asset`` recorded per partition: each result carries the partition (source, cell) it judged, so the
    UI and the event log (``AssetCheckExecutionRecord.partition``) tell one partition's verdict from another's.
    ``partitions_def`` must be the asset's own. Dagster 1.13 marks it a preview; its warning is silenced here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec")
        return dg.AssetCheckSpec(name, asset=asset, partitions_def=partitions_def, **kwargs)


def _meta_value(key: str, v: Any):
    if isinstance(v, dg.MetadataValue):
        return v
    if v is None:
        return dg.MetadataValue.null()
    if isinstance(v, bool):
        return dg.MetadataValue.bool(v)
    if isinstance(v, int):
        return dg.MetadataValue.int(v)
    if isinstance(v, float):
        return dg.MetadataValue.float(v)
    if isinstance(v, (dict, list)):
        return dg.MetadataValue.json(v)
    if key.endswith("_md"):  # Markdown the UI renders (the headline table)
        return dg.MetadataValue.md(str(v))
    return dg.MetadataValue.text(str(v))


def publish(sd: StudyDefs, context: dg.AssetExecutionContext, store: ArtifactStore, fn: Step,
            upstream: list[Artifact], *, partition: str | None = None,
            checks: Callable[[dict], list[dg.AssetCheckResult]] | None = None, compute: Compute | None = None,
            metadata: dict | None = None, **kwargs) -> dg.MaterializeResult:
    """Run the step ``fn(study, **kwargs, out=<staging dir>, log=...)``, publish its directory, describe it to Dagster.

    With ``compute`` the step is heavy (GPU) work and runs where ``compute`` says (this process, or a Pipes child that
    writes into the same staging directory); without, it runs here. ``checks`` turns the step's metadata into
    asset-check results reported with the materialization; ``metadata`` adds entries the step does not compute.
    """
    asset = context.asset_key.path[-1]
    (res,) = _publish(sd, context, store, fn, upstream, {asset: context.asset_key}, partition,
                      {asset: checks} if checks else {}, compute, metadata, kwargs, multi=False)
    return res


def publish_each(sd: StudyDefs, context: dg.AssetExecutionContext, store: ArtifactStore, fn: Step,
                 upstream: list[Artifact], assets: list[str], *, partition: str | None = None,
                 checks: dict[str, Callable[[dict], list[dg.AssetCheckResult]]] | None = None,
                 compute: Compute | None = None, metadata: dict | None = None, **kwargs) -> list[dg.MaterializeResult]:
    """``publish`` for a step that writes several artefacts at once (a multi-asset): the step gets ``out`` as
    {asset: staging dir} and returns {asset: its metadata, shared key: value}; each artefact is published on its own."""
    return _publish(sd, context, store, fn, upstream, {a: sd.key(a) for a in assets}, partition, checks or {},
                    compute, metadata, kwargs, multi=True)


def _publish(sd: StudyDefs, context, store: ArtifactStore, fn: Step, upstream: list[Artifact],
             keys: dict[str, dg.AssetKey], partition: str | None, checks: dict, compute: Compute | None,
             metadata: dict | None, kwargs: dict, *, multi: bool) -> list[dg.MaterializeResult]:
    study, store, assets = sd.study, store.of(sd.name), list(keys)
    if compute is not None:
        require_judge_credentials(study)
    prov = [a.provenance() for a in upstream]
    for p in prov:
        context.log.info(f"input {p['asset']}[{p['partition']}] md5 {p['md5']} from run {p['run_id']}")
    t0 = time.perf_counter()
    extra = {"study": study.name, "profile": study.profile, "config_sha256": study.config_sha256}
    with contextlib.ExitStack() as writers:
        outs = {a: writers.enter_context(store.writer(a, partition, run_id=context.run_id, upstream=prov,
                                                      extra=extra)) for a in assets}
        out = outs if multi else outs[assets[0]]
        if compute is not None:
            meta = compute.run(context, study, fn, kwargs, out, log=context.log.info)
        else:
            meta = fn(study, **kwargs, out=out, log=context.log.info)
    seconds = round(time.perf_counter() - t0, 3)
    meta = meta or {}
    results = []
    for asset in assets:
        own = {**{k: v for k, v in meta.items() if k not in assets}, **meta.get(asset, {})} if multi else meta
        art = store.read(asset, partition)
        md = {"path": dg.MetadataValue.path(str(art.path)), "md5": art.digest,
              "size_bytes": art.manifest["size_bytes"], "seconds": seconds, "profile": study.profile,
              "study": study.name, "upstream": dg.MetadataValue.json(prov)}
        for k, v in {**own, **(metadata or {})}.items():
            md.setdefault(k, _meta_value(k, v))
        context.log.info(f"published {asset}[{art.partition}] md5 {art.digest} ({art.manifest['size_bytes']} "
                         f"bytes) in {seconds}s")
        check = checks.get(asset)
        results.append(dg.MaterializeResult(asset_key=keys[asset], metadata=md, data_version=dg.DataVersion(art.digest),
                                            check_results=check(own) if check else None))
    return results


def require_judge_credentials(study) -> None:
    """A study judged by Claude refuses to start GPU work without an API key (the reference silently wrote nulls)."""
    if study.judge.kind == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise dg.Failure(f"ANTHROPIC_API_KEY is not set, but study {study.name!r} (profile {study.profile!r}) is "
                         f"judged by {study.judge.model}; set the key before any GPU work starts, or use a profile "
                         f"with judge.kind: offline")
