"""The artefact store: canonical, partition-keyed directories that are complete or absent.

``<root>/<asset>/<partition>/`` holds an artefact's files and ``_manifest.json`` (file md5s and sizes, a digest over
them, the run id, the upstream artefacts it was built from). A write goes to ``<root>/.staging/...`` and is renamed into
place only after the manifest is written, so a crashed or killed step leaves nothing at the canonical path; an artefact
is read only after its hashes are checked. Nothing here decides that work is "already done" from a file's existence.

A root that is a URL (``s3://bucket/prefix``, ``memory://x``, ``file:///shared/x``) is an object store: there is no
atomic directory rename there, so ``mt_resources.objstore`` publishes with a commit protocol (versions and a pointer)
and reads into a local cache; every method below hands such a root over to it. What both stores share (``Artifact``,
``ArtifactError``, the manifest) is ``mt_resources.artifact``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import dagster as dg

from mt_core.faults import failpoint
from mt_core.layout import MANIFEST, UNPARTITIONED, artefact_dir
from mt_resources.artifact import (Artifact, ArtifactError, default_cache_dir, is_url, staging_host, staging_name,
                                   staging_writer, walk, write_manifest)


class ArtifactStore(dg.ConfigurableResource):
    """Where every artefact of a study lives. ``root`` is relative to the working directory unless absolute, or an
    object store URL (``mt_resources.objstore``). A code location serving several studies gives each its own root in
    ``roots`` (study name -> root); an asset reads and writes through ``of(<its study>)``."""

    root: str = "artifacts"
    roots: dict[str, str] = {}
    cache: str | None = None  # this host's folder for an object store root's copies and state (the settings' $MT_CACHE)

    def of(self, study: str) -> "ArtifactStore":
        """The store of ``study``: its root in ``roots``; a store without ``roots`` is one study's already."""
        if not self.roots:
            return self
        if study not in self.roots:
            raise ArtifactError(f"study {study!r} has no artefact root in this store (studies: "
                                f"{', '.join(self.roots)})")
        return ArtifactStore(root=self.roots[study], cache=self.cache)

    @property
    def cache_home(self) -> Path:
        """This host's folder for what an object store root keeps locally (``cache``, else its default)."""
        return default_cache_dir(self.cache)

    def _remote(self):
        from mt_resources.objstore import ObjectStore, artefact_cache  # fsspec only for URL roots

        return ObjectStore(self.root, artefact_cache(self.cache_home))

    @property
    def base(self) -> Path:
        if is_url(self.root):  # an artefact there is a version behind a pointer, never a fixed folder to open
            raise ArtifactError(f"the artefact root {self.root} is an object store: this code path assumes a local "
                                f"root; read artefacts through store.read() (docs/SCALING.md)")
        return Path(self.root).resolve()

    def path(self, asset: str, partition: str | None = None) -> Path:
        return artefact_dir(self.base, asset, partition)

    @property
    def disk(self) -> tuple[Path, str]:
        """The folder on this host whose disk the study's artefacts fill, and the variable that moves it: the root
        ($MT_ARTIFACTS), or for an object store the cache its steps stage in and read through ($MT_CACHE)."""
        return (self._remote().cache, "MT_CACHE") if is_url(self.root) else (self.base, "MT_ARTIFACTS")

    @property
    def state_dir(self) -> Path:
        """Where the study keeps what is mutable and no artefact (the judge cache, rewritten as answers come): the
        root, or for an object store a folder of this host's cache (``cache_home``) named after the root (each host
        asks anew what it has not cached itself)."""
        if not is_url(self.root):
            return self.base
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.root.rstrip("/"))[-80:]
        return self.cache_home / "state" / f"{slug}-{hashlib.sha256(self.root.rstrip('/').encode()).hexdigest()[:8]}"

    def published(self, asset: str = "*") -> list[tuple[str, str]]:
        """(asset, partition) of every complete artefact in the store (of ``asset`` only, if given), sorted; a
        listing, not a verification: read one to use it."""
        if is_url(self.root):
            return self._remote().published(asset)
        return [(m.parent.parent.name, m.parent.name) for m in sorted(self.base.glob(f"{asset}/*/{MANIFEST}"))]

    def manifest(self, asset: str, partition: str | None = None) -> tuple[str, dict]:
        """Where the published artefact is (``Artifact.location``) and its manifest, its files not read: for
        listings that need no bytes (the lineage table). ArtifactError if there is none."""
        if is_url(self.root):
            return self._remote().manifest(asset, partition)
        final = self.path(asset, partition)
        try:
            return str(final), json.loads((final / MANIFEST).read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{asset}[{partition or UNPARTITIONED}]: no complete artefact at {final} "
                                f"(materialize it first)") from None

    @contextlib.contextmanager
    def writer(self, asset: str, partition: str | None, *, run_id: str, upstream: list[dict] | None = None,
               extra: dict | None = None):
        """Yield an empty staging directory; on success publish it atomically with its manifest."""
        if is_url(self.root):
            with self._remote().writer(asset, partition, run_id=run_id, upstream=upstream, extra=extra) as out:
                yield out
            return
        final = self.path(asset, partition)
        staging = self.base / ".staging" / asset / staging_name(partition)
        staging.mkdir(parents=True)
        try:
            yield staging
            write_manifest(staging, asset, partition, run_id, upstream, extra)
            failpoint("publish")
            final.parent.mkdir(parents=True, exist_ok=True)
            old = None
            if final.exists():
                old = staging.with_name(staging.name + ".old")
                os.replace(final, old)
            os.replace(staging, final)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def read(self, asset: str, partition: str | None = None, *, verify: bool = True) -> Artifact:
        """The artefact at the canonical path, its files checked against its manifest."""
        if is_url(self.root):
            return self._remote().read(asset, partition, verify=verify)
        final = self.path(asset, partition)
        mpath = final / MANIFEST
        if not mpath.is_file():
            raise ArtifactError(f"{asset}[{partition or UNPARTITIONED}]: no complete artefact at {final} "
                                f"(materialize it first)")
        manifest = json.loads(mpath.read_text())
        if verify:
            files = walk(final)
            if files != manifest["files"]:
                bad = sorted(k for k in {*files, *manifest["files"]} if files.get(k) != manifest["files"].get(k))
                raise ArtifactError(f"{asset}[{partition or UNPARTITIONED}]: files at {final} do not match the "
                                    f"manifest ({', '.join(bad)}); re-materialize it")
        return Artifact(asset, partition or UNPARTITIONED, final, manifest)

    def clean_staging(self, older_than_s: float = 3600) -> int:
        """Remove staging directories left by killed steps. One whose writer ran on this host and is gone is removed
        at once; one written on another host (a shared root: a Ray node) once it is older than ``older_than_s``, and
        one named without its host (before the name had it) once it is that old and no process here has its pid. A
        step still writing here is never touched. An object store root stages locally, in its cache
        (``ObjectStore.staging``)."""
        n, now, here = 0, time.time(), staging_host()
        for p in (self._remote().staging if is_url(self.root) else self.base / ".staging").glob("*/*"):
            writer = staging_writer(p.name.removesuffix(".old"))
            if writer is None:
                continue  # not ours to judge
            host, pid = writer
            if host == here:
                gone = not pid_alive(pid)
            else:  # another host's pid means nothing here: by age (and, for an older name, no such pid here)
                gone = now - p.stat().st_mtime > older_than_s and (host is not None or not pid_alive(pid))
            if gone:
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        return n


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetKey | str, partition: str | None) -> dict | None:
    """The latest materialization of an asset partition (``asset``: its key, e.g. ``StudyDefs.key(name)``; a string is
    a one-part key): its metadata as plain values, its run id and the code version of the asset when it was built."""
    key = asset if isinstance(asset, dg.AssetKey) else dg.AssetKey(asset)
    recs = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=key, asset_partitions=[partition] if partition else None), limit=1).records
    return _record_metadata(recs[0]) if recs else None


def _record_metadata(rec) -> dict | None:
    mat = rec.asset_materialization
    if not mat:
        return None
    meta = {k: v.value for k, v in mat.metadata.items()}
    return {**meta, "run_id": rec.run_id, "code_version": (mat.tags or {}).get("dagster/code_version")}


class LatestRecords:
    """``latest_metadata`` for many partitions of a few assets, as a planner, a status table or the analysis asks:
    an asset's newest materializations are read once, a page of them, and a partition whose latest record is older
    than that page is looked up alone (one query per asset rather than one per partition, each about 10 ms on SQLite,
    and never more than that on an instance with a long history). What it read is kept: make a new one to see what
    was materialized since."""
    PAGE = 1000

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self._assets: dict[dg.AssetKey, tuple[dict, bool]] = {}  # key -> ({partition: metadata or None}, more)

    def __call__(self, asset: dg.AssetKey | str, partition: str | None) -> dict | None:
        key = asset if isinstance(asset, dg.AssetKey) else dg.AssetKey(asset)
        if key not in self._assets:
            res = self.instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=self.PAGE)
            seen: dict = {}
            for rec in res.records:  # newest first: a partition's first record is its latest
                seen.setdefault(rec.partition_key, _record_metadata(rec))
            self._assets[key] = (seen, res.has_more)
        seen, more = self._assets[key]
        if partition not in seen and more:  # its latest, if any, is older than the page
            seen[partition] = latest_metadata(self.instance, key, partition)
        return seen.get(partition)
