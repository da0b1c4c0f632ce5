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
import errno
import math
import shutil
import time
import warnings
from typing import Any, Callable

import dagster as dg

from mt_assets.study import StudyDefs
from mt_core.config import ConfigError
from mt_core.io import DataError
from mt_core.layout import UNPARTITIONED, partition_or_none
from mt_core.model.tracking import Shared, WandbSettings, log_artifacts
from mt_core.steps.registry import Step
from mt_resources.compute import Compute
from mt_resources.store import Artifact, ArtifactError, ArtifactStore, LatestRecords, latest_metadata
from mt_resources.wandb import WandbResource
from mt_run.runs import claim_partition, tag_run_process
from mt_settings import Settings, secret


def read_upstream(sd: StudyDefs, context: dg.AssetExecutionContext, store: ArtifactStore, asset: str,
                  partition: str | None = None) -> Artifact:
    """The study's upstream artefact, its hashes checked, its manifest the study's own, and matched to the instance's
    latest record of that partition (``read_recorded``)."""
    return read_recorded(sd.name, context.instance, store, asset, partition)[0]


def read_recorded(study: str, instance: dg.DagsterInstance, store: ArtifactStore, asset: str,
                  partition: str | None = None, latest: LatestRecords | None = None) -> tuple[Artifact, dict]:
    """``study``'s artefact and the instance's latest record of it: its hashes checked, its manifest the study's own,
    its md5 the one recorded (a step's upstream, or what `mt export` hands out). ``latest``: the records to read
    that record from, where the caller reads many."""
    art, key = store.of(study).read(asset, partition), dg.AssetKey([study, asset])
    owner = art.manifest.get("study")
    if owner != study:
        raise ArtifactError(f"{asset}[{art.partition}] at {art.path} was built for study {owner!r}, not {study!r} "
                            f"which reads it; re-materialize {key.to_user_string()}")
    meta = latest(key, partition) if latest else latest_metadata(instance, key, partition)
    if meta is None:
        raise ArtifactError(f"{asset}[{art.partition}]: an artefact exists at {art.path} but this Dagster instance "
                            f"has no materialization of it; materialize it through Dagster first")
    recorded = meta.get("md5")
    if recorded != art.digest:
        raise ArtifactError(f"{asset}[{art.partition}]: the store holds md5 {art.digest} but the instance's latest "
                            f"materialization recorded {recorded}; re-materialize {asset}")
    return art, meta


def partitioned_check(name: str, asset: dg.AssetKey, partitions_def: dg.PartitionsDefinition, **kwargs) -> dg.AssetCheckSpec:
    """A check of ``asset`` recorded per partition: each result carries the partition (source, cell) it judged, so the
    UI and the event log (``AssetCheckExecutionRecord.partition``) tell one partition's verdict from another's.
    ``partitions_def`` must be the asset's own. Dagster 1.13 marks it a preview; its warning is silenced here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec")
        return dg.AssetCheckSpec(name, asset=asset, partitions_def=partitions_def, **kwargs)


def _inputs_line(prov: list[dict], most: int = 6) -> str:
    """``inputs: base_model[_] md5 1f3a… (run 0c9e…), …``: the step's inputs in one log line, the first ``most`` of
    them named (an analysis step reads a hundred; the materialization's ``upstream`` lists them all in full)."""
    named = [f"{p['asset']}[{p['partition']}] md5 {p['md5'][:12]} (run {str(p['run_id'])[:8]})" for p in prov[:most]]
    more = len(prov) - most
    return "inputs: " + ", ".join(named) + (f" and {more} more (the materialization's `upstream` lists all)"
                                           if more > 0 else "")


def _rounded(v):
    """Floats to 4 significant digits, inside JSON too: a rate 0.6161, a loss 2.346, an accuracy 0.2534, a judge mean
    52.35, 1235 seconds, a learning rate 5e-06; what a reader compares, never a 17-digit float. Ints stay exact."""
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.4g}")
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return v


def _meta_value(key: str, v: Any):
    """The one place a metadata value is made (materializations and check results alike)."""
    if isinstance(v, (dg.FloatMetadataValue, dg.JsonMetadataValue)):  # made by Dagster from a raw value: round it
        v = v.value
    if isinstance(v, dg.MetadataValue):
        return v
    if v is None:
        return dg.MetadataValue.null()
    if isinstance(v, bool):
        return dg.MetadataValue.bool(v)
    if isinstance(v, int):
        return dg.MetadataValue.int(v)
    if isinstance(v, float):
        return dg.MetadataValue.float(_rounded(v))
    if isinstance(v, (dict, list)):
        return dg.MetadataValue.json(_rounded(v))
    if key.endswith("_md"):  # Markdown the UI renders (the headline table)
        return dg.MetadataValue.md(str(v))
    return dg.MetadataValue.text(str(v))


def meta_values(entries: dict) -> dict[str, dg.MetadataValue]:
    """Metadata entries as Dagster values, each through ``_meta_value``."""
    return {k: _meta_value(k, v) for k, v in entries.items()}


def table(rows: list[dict], **descriptions: str) -> dg.MetadataValue:
    """Rows of equal keys as a table the UI shows inline (columns in key order, typed by their values;
    ``descriptions`` by column, shown under "Show schema")."""
    kinds = {bool: "bool", int: "int", float: "float"}

    def kind(k: str) -> str:
        return kinds.get(type(next((r[k] for r in rows if r[k] is not None), "")), "string")
    cols = [dg.TableColumn(k, kind(k), description=descriptions.get(k)) for k in (rows[0] if rows else [])]
    return dg.MetadataValue.table([dg.TableRecord(_rounded(r)) for r in rows], schema=dg.TableSchema(columns=cols))


VIEW_URL = Settings.view_url  # `mt view`'s default address; $MT_VIEW_URL names another


def viewer_link(study: str, cell: str, view_url: str = VIEW_URL) -> dg.MetadataValue:
    """The cell's page in `mt view` at ``view_url`` (the study named: one viewer shows every study of the
    instance)."""
    return dg.MetadataValue.url(f"{view_url.rstrip('/')}/cell/{cell}?study={study}")


def provenance_md(sd: StudyDefs, prov: list[dict]) -> dg.MetadataValue:
    """The upstream artefacts as a Markdown table whose asset and run cells link to their pages in the UI (a table
    metadata value shows plain text only)."""
    rows = ["| asset | partition | md5 | run |", "|---|---|---|---|"]
    for p in prov:
        part = p["partition"]
        page = "/assets/" + "/".join(sd.key(p["asset"]).path) + (
            "" if part == UNPARTITIONED else f"?view=partitions&partition={part}")
        run = p["run_id"] or ""
        rows.append(f"| [{p['asset']}]({page}) | {part} | `{p['md5']}` | [{run[:8]}](/runs/{run}) |")
    return dg.MetadataValue.md("\n".join(rows))


def publish(sd: StudyDefs, context: dg.AssetExecutionContext, store: ArtifactStore, fn: Step,
            upstream: list[Artifact], *, partition: str | None = None,
            checks: Callable[[dict], list[dg.AssetCheckResult]] | None = None, compute: Compute | None = None,
            metadata: dict | Callable[[Artifact], dict] | None = None, share_to: WandbResource | None = None,
            **kwargs) -> dg.MaterializeResult:
    """Run the step ``fn(study, **kwargs, out=<staging dir>, log=...)``, publish its directory, describe it to Dagster.

    With ``compute`` the step is heavy (GPU) work and runs where ``compute`` says (this process, or a Pipes child that
    writes into the same staging directory); without, it runs here. ``checks`` turns the step's metadata into
    asset-check results reported with the materialization; ``metadata`` adds entries the step does not compute, or
    is a function of the published artefact that returns them (read back from its files). With ``share_to`` the
    published artefact also becomes a W&B artifact (``share``).
    """
    asset = context.asset_key.path[-1]
    (res,) = _publish(sd, context, store, fn, upstream, {asset: context.asset_key}, partition,
                      {asset: checks} if checks else {}, compute, metadata, kwargs, multi=False, share_to=share_to)
    return res


def publish_each(sd: StudyDefs, context: dg.AssetExecutionContext, store: ArtifactStore, fn: Step,
                 upstream: list[Artifact], assets: list[str], *, partition: str | None = None,
                 checks: dict[str, Callable[[dict], list[dg.AssetCheckResult]]] | None = None,
                 compute: Compute | None = None, metadata: dict | None = None, share_to: WandbResource | None = None,
                 **kwargs) -> list[dg.MaterializeResult]:
    """``publish`` for a step that writes several artefacts at once (a multi-asset): the step gets ``out`` as
    {asset: staging dir} and returns {asset: its metadata, shared key: value}; each artefact is published on its own."""
    return _publish(sd, context, store, fn, upstream, {a: sd.key(a) for a in assets}, partition, checks or {},
                    compute, metadata, kwargs, multi=True, share_to=share_to)


def _publish(sd: StudyDefs, context, store: ArtifactStore, fn: Step, upstream: list[Artifact],
             keys: dict[str, dg.AssetKey], partition: str | None, checks: dict, compute: Compute | None,
             extra_metadata: dict | Callable[[Artifact], dict] | None, kwargs: dict, *,
             multi: bool, share_to: WandbResource | None = None) -> list[dg.MaterializeResult]:
    study, store, assets = sd.study, store.of(sd.name), list(keys)
    tag_run_process(context)
    if compute is not None:
        require_judge_credentials(study, secret("ANTHROPIC_API_KEY"))
    prov = [a.provenance() for a in upstream]
    wb = share_to.settings(study) if share_to is not None else None  # before the work: online needs its key
    if prov:  # one line (each is an event the instance writes); every input's md5 and run is in `upstream`
        context.log.info(_inputs_line(prov))
    t0 = time.perf_counter()
    extra = {"study": study.name, "profile": study.profile, "config_sha256": study.config_sha256}
    try:  # leaving the writers on an exception removes their staging: nothing is published
        with bad_input_fails_once(), contextlib.ExitStack() as writers:
            outs = {a: writers.enter_context(store.writer(a, partition, run_id=context.run_id, upstream=prov,
                                                          extra=extra)) for a in assets}
            out = outs if multi else outs[assets[0]]
            claim_partition(sd.name, context, partition)
            if compute is not None:
                meta = compute.run(context, study, fn, kwargs, out, log=context.log.info)
            else:
                meta = fn(study, **kwargs, out=out, log=context.log.info)
            meta = meta or {}
            owns = {a: {**{k: v for k, v in meta.items() if k not in assets}, **meta.get(a, {})} if multi else meta
                    for a in assets}
            verdicts = {a: [r.with_metadata(meta_values(r.metadata)) for r in checks[a](owns[a])]
                        for a in assets if a in checks}
            refuse_blocking_failures(context, keys, verdicts, partition)
            claim_partition(sd.name, context, partition)  # still ours: a newer run never publishes over an older one
    except dg.Failure:
        raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            disk, var = store.disk
            raise dg.Failure(f"the disk under {disk} is full ({e}); nothing was published and the step's "
                             f"staging was removed ({shutil.disk_usage(disk).free / 2**30:.1f} GiB free now). "
                             f"Free space there (or point {var} elsewhere) and run again",
                             allow_retries=False) from e
        raise
    except Exception as e:
        if out_of_memory(e):
            raise gpu_oom(context, fn, e, sd.settings.retry_delay_s) from e
        raise
    seconds = time.perf_counter() - t0
    arts = {asset: store.read(asset, partition) for asset in assets}
    shared = share(sd, context, wb, arts, prov) if wb is not None else {}
    results = []
    for asset, art in arts.items():
        base = {"path": dg.MetadataValue.path(art.location), "md5": art.digest,
                "size_bytes": art.manifest["size_bytes"], "seconds": seconds, "profile": study.profile,
                "study": study.name}
        added = extra_metadata(art) if callable(extra_metadata) else extra_metadata or {}
        own = {k: v for k, v in {**added, **owns[asset], **added, **shared}.items() if k not in base}
        # in the order a reader looks: the cell's page in `mt view`, what the asset adds (the table a reader came
        # for), the step's numbers, the artefact, where it came from; JSON last (`upstream` and the like are for
        # `mt lineage` and `mt run`)
        viewer = {"viewer": viewer_link(study.name, partition, sd.settings.view_url)} if partition in study.cells else {}
        md = meta_values({**viewer, **own, **base})
        if prov:
            md["provenance"] = provenance_md(sd, prov)
        md["upstream"] = dg.MetadataValue.json(prov)
        inputs = sd.version_inputs(context.assets_def.code_versions_by_key.get(keys[asset]))
        if inputs is not None:  # what its code version covers: `mt run` names what changed since (mt_run/plan.py)
            md["code_version_inputs"] = dg.MetadataValue.json(inputs)
        md = dict(sorted(md.items(), key=lambda kv: isinstance(kv[1], dg.JsonMetadataValue)))
        context.log.info(f"published {asset}[{art.partition}] md5 {art.digest} ({art.manifest['size_bytes']} "
                         f"bytes) in {seconds:.1f}s")
        results.append(dg.MaterializeResult(asset_key=keys[asset], metadata=md, data_version=dg.DataVersion(art.digest),
                                            check_results=verdicts.get(asset)))
    return results


def share(sd: StudyDefs, context, wb: WandbSettings, arts: dict[str, Artifact], prov: list[dict]) -> dict:
    """The step's published artefacts as W&B artifacts (``mt_core.model.tracking.log_artifacts``), the upstream
    artefacts as what they used; the metadata entries that say so. The store already holds the artefacts: a W&B
    failure is a warning on the step and a metadata entry, not a lost step."""
    study, part = sd.study, partition_or_none
    logged = [Shared(a, part(art.partition), art.digest, art.location, context.run_id, tuple(art.manifest["files"]))
              for a, art in arts.items()]
    used = [Shared(p["asset"], part(p["partition"]), p["md5"], p["path"], p["run_id"]) for p in prov]
    partition = part(next(iter(arts.values())).partition)
    try:
        step = context.op_def.name.removeprefix(sd.op(""))  # the asset's name, or the multi-asset's
        return log_artifacts(wb, step=f"{step}[{partition or 'all'}]",
                             group=partition or "study", logged=logged, used=used,
                             metadata={"study": study.name, "profile": study.profile,
                                       "config_sha256": study.config_sha256, "dagster_run_id": context.run_id})
    except Exception as e:  # noqa: BLE001 - W&B mirrors the store; the store has the artefact
        context.log.warning(f"W&B: the artifacts of {', '.join(arts)} were not logged: {type(e).__name__}: {e}")
        return {"wandb_error": f"{type(e).__name__}: {e}"}


def refuse_blocking_failures(context, keys: dict[str, dg.AssetKey], verdicts: dict[str, list[dg.AssetCheckResult]],
                             partition: str | None) -> None:
    """A blocking check that failed stops the step before its artefact is published: the failed check is recorded
    on the partition (the UI shows it), the step fails naming it, and nothing of the step is published or recorded
    as materialized, so neither ``mt status`` nor a downstream step can take it for a finished artefact."""
    blocking = {(s.asset_key, s.name) for s in context.assets_def.check_specs if s.blocking}
    failed = [(keys[a], r) for a, rs in verdicts.items() for r in rs
              if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR
              and (r.asset_key or keys[a], r.check_name) in blocking]
    if not failed:
        return
    for key, r in failed:
        context.log_event(dg.AssetCheckEvaluation(
            asset_key=key, check_name=r.check_name, passed=False, severity=r.severity, blocking=True,
            partition=partition, description=r.description,
            metadata=meta_values(r.metadata or {})))
    what = "; ".join(f"{key.to_user_string()}[{partition or 'all'}] check {r.check_name} failed"
                     + (f" ({r.description})" if r.description else
                        f" ({', '.join(f'{k}={_plain(v)}' for k, v in (r.metadata or {}).items())})")
                     for key, r in failed)
    raise dg.Failure(f"{what}: nothing was published; fix the cause and materialize it again",
                     allow_retries=all(r.check_name in TRANSIENT_CHECKS for _, r in failed))


def _plain(v):
    return v.value if isinstance(v, dg.MetadataValue) else v


# Step retries (Dagster RetryPolicy) where a failure can be transient: the judge (an API outage outlasting the
# client's own per-request retries; answers already given are cached) and reading input files (a shared filesystem).
# Everything else fails at once: a failed check, bad input or a partition held by another run does not change by
# trying again, and a GPU step is retried only when it ran out of memory (``gpu_oom``). The settings'
# ``retry_delay_s`` ($MT_RETRY_DELAY_S) scales the wait (tests set 0).
TRANSIENT_CHECKS = {"judge_error_rate"}


@contextlib.contextmanager
def bad_input_fails_once():
    """Bad input (a DataError or a ConfigError) fails the step without a retry: trying again changes nothing. For
    whatever a step does before publishing too (a judge made ready from its prompt file)."""
    try:
        yield
    except (DataError, ConfigError) as e:
        raise dg.Failure(f"{type(e).__name__}: {e}", allow_retries=False) from e


def retry_policy(sd: StudyDefs, max_retries: int = 2) -> dg.RetryPolicy:
    return dg.RetryPolicy(max_retries=max_retries, delay=sd.settings.retry_delay_s, backoff=dg.Backoff.EXPONENTIAL)


# what to turn when a step runs out of GPU memory, by step
OOM_KNOBS = {
    f"train_{step}": f"lower recipes.{recipe}.speed.token_budget (tokens per packed forward pass; the effective batch "
                     f"is unchanged) or set recipes.{recipe}.speed.gradient_checkpointing: true"
    for step, recipe in (("coupling_adapter", "coupling"), ("cell_adapter", "second_stage"))
}
OOM_DEFAULT = ("free GPU memory: another process holds memory on the device (nvidia-smi), or lower the gpu pool "
               "(`mt pool --gpus N`) so fewer steps share it")


def out_of_memory(e: BaseException) -> bool:
    """A CUDA out-of-memory error, raised here or reported by a Pipes child (by its type name or message)."""
    text = f"{type(e).__name__}: {e}"
    return "OutOfMemoryError" in text or "CUDA out of memory" in text


def gpu_oom(context, fn: Step, e: BaseException, delay_s: float) -> Exception:
    """One retry after a pause (memory another process held may be free by then), then a failure naming the step and
    the knob to turn; nothing is published either way."""
    name = getattr(fn, "__name__", str(fn))
    knob = OOM_KNOBS.get(name, OOM_DEFAULT)
    msg = f"step {name} ran out of GPU memory ({str(e).splitlines()[0][:200]}); nothing was published. To fix: {knob}"
    context.log.error(msg)
    if context.retry_number < 1:
        return dg.RetryRequested(max_retries=1, seconds_to_wait=delay_s)
    return dg.Failure(msg, allow_retries=False)


def require_judge_credentials(study, api_key: str | None) -> None:
    """A study judged by Claude refuses to start GPU work without an API key (the reference silently wrote nulls)."""
    if study.judge.kind == "anthropic" and not api_key:
        raise dg.Failure(f"ANTHROPIC_API_KEY is not set, but study {study.name!r} (profile {study.profile!r}) is "
                         f"judged by {study.judge.model}; set the key before any GPU work starts, or use a profile "
                         f"with judge.kind: offline")
