"""The artefact store: canonical, partition-keyed directories that are complete or absent.

``<root>/<asset>/<partition>/`` holds an artefact's files and ``_manifest.json`` (file md5s and sizes, a digest over
them, the run id, the upstream artefacts it was built from). A write goes to ``<root>/.staging/...`` and is renamed into
place only after the manifest is written, so a crashed or killed step leaves nothing at the canonical path; an artefact
is read only after its hashes are checked. Nothing here decides that work is "already done" from a file's existence.

A root that is a URL (``s3://bucket/prefix``, ``memory://x``, ``file:///shared/x``) is an object store: there is no
atomic directory rename there, so ``mt_resources.objstore`` publishes with a commit protocol (versions and a pointer)
and reads into a local cache; every method below hands such a root over to it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from mt_core.faults import failpoint
from mt_core.io import md5_file
from mt_core.layout import MANIFEST, UNPARTITIONED, artefact_dir


class ArtifactError(RuntimeError):
    """A missing, incomplete or tampered artefact."""


@dataclass(frozen=True)
class Artifact:
    asset: str
    partition: str
    path: Path  # its verified files on this host: the canonical folder, or the object store's cache entry
    manifest: dict
    url: str | None = None  # under an object store root: the version read (``path`` is then this host's copy)

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def location(self) -> str:
        """Where the artefact is stored, as materializations and provenance record it: the same on every host."""
        return self.url or str(self.path)

    def provenance(self) -> dict:
        return {"asset": self.asset, "partition": self.partition, "run_id": self.manifest.get("run_id"),
                "md5": self.digest, "path": self.location}


def _digest(files: dict[str, dict]) -> str:
    h = hashlib.md5()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]['md5']}\0{files[name]['size']}\n".encode())
    return h.hexdigest()


def _walk(root: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = {"md5": md5_file(p), "size": p.stat().st_size}
    return out


def is_url(root: str) -> bool:
    """Whether an artefact root is an object store URL (it has a scheme) rather than a local path."""
    return "://" in str(root)


def write_manifest(staging: Path, asset: str, partition: str | None, run_id: str, upstream: list[dict] | None,
                   extra: dict | None) -> dict:
    """Hash the staged files and write their manifest beside them (both stores publish this same manifest)."""
    files = _walk(staging)
    manifest = {"asset": asset, "partition": partition or UNPARTITIONED, "run_id": run_id,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files,
                "digest": _digest(files), "size_bytes": sum(f["size"] for f in files.values()),
                "upstream": upstream or [], **(extra or {})}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


class ArtifactStore(dg.ConfigurableResource):
    """Where every artefact of a study lives. ``root`` is relative to the working directory unless absolute, or an
    object store URL (``mt_resources.objstore``). A code location serving several studies gives each its own root in
    ``roots`` (study name -> root); an asset reads and writes through ``of(<its study>)``."""

    root: str = "artifacts"
    roots: dict[str, str] = {}

    def of(self, study: str) -> "ArtifactStore":
        """The store of ``study``: its root in ``roots``; a store without ``roots`` is one study's already."""
        if not self.roots:
            return self
        if study not in self.roots:
            raise ArtifactError(f"study {study!r} has no artefact root in this store (studies: "
                                f"{', '.join(self.roots)})")
        return ArtifactStore(root=self.roots[study])

    def _remote(self):
        from mt_resources.objstore import ObjectStore  # fsspec only for URL roots; objstore imports this module

        return ObjectStore(self.root)

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
        root, or for an object store a folder of this host's $MT_CACHE named after the root (each host asks anew
        what it has not cached itself)."""
        if not is_url(self.root):
            return self.base
        from mt_resources.objstore import cache_home

        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.root.rstrip("/"))[-80:]
        return cache_home() / "state" / f"{slug}-{hashlib.sha256(self.root.rstrip('/').encode()).hexdigest()[:8]}"

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
        staging = self.base / ".staging" / asset / f"{partition or UNPARTITIONED}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
            files = _walk(final)
            if files != manifest["files"]:
                bad = sorted(k for k in {*files, *manifest["files"]} if files.get(k) != manifest["files"].get(k))
                raise ArtifactError(f"{asset}[{partition or UNPARTITIONED}]: files at {final} do not match the "
                                    f"manifest ({', '.join(bad)}); re-materialize it")
        return Artifact(asset, partition or UNPARTITIONED, final, manifest)

    def clean_staging(self, older_than_s: float = 3600) -> int:
        """Remove staging directories left by killed steps: their writer process is gone (same host) and they are
        older than ``older_than_s``. A step still writing is never touched. An object store root stages locally, in
        its cache (``ObjectStore.staging``)."""
        n, now = 0, time.time()
        for p in (self._remote().staging if is_url(self.root) else self.base / ".staging").glob("*/*"):
            try:
                pid = int(p.name.rsplit("-", 2)[-2])
            except (ValueError, IndexError):
                continue  # not ours to judge
            if pid_alive(pid):
                continue  # the writer is alive (or a process we may not signal: not ours to judge)
            if now - p.stat().st_mtime > older_than_s:
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
    if not recs or not recs[0].asset_materialization:
        return None
    mat = recs[0].asset_materialization
    meta = {k: v.value for k, v in mat.metadata.items()}
    return {**meta, "run_id": recs[0].run_id, "code_version": (mat.tags or {}).get("dagster/code_version")}
