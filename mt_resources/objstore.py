"""Artefacts on object storage (S3-compatible, GCS, ``memory://``, ``file://``): complete or absent without a rename.

An object store cannot rename a directory atomically, so an artefact is committed in steps, under a version prefix
that is new for every write:

    <root>/<asset>/<partition>/_v/<start>-<run_id>-<uid>/...              1. every file, uploaded one by one
    <root>/<asset>/<partition>/_v/<start>-<run_id>-<uid>/_manifest.json   2. the manifest (as the local store's), last
    <root>/<asset>/<partition>/_current.json                              3. the pointer: {"version", "digest"}

The pointer is replaced whole (a new object, or a rename on a filesystem) and only after the manifest is there. A
reader starts from it: the manifest of the version it names, its digest against the pointer's, the version's listing
against the manifest, then every file's md5 and size as it is downloaded. Anything else (no pointer, a version without
its manifest or files, a mismatch) is an ArtifactError, so a writer killed at any step leaves no pointer, or the old
one, naming a complete version.

Steps need local paths, so a writer stages in a local folder (as with a local root) and uploads when the step
succeeds, and a reader downloads into this host's cache, ``<cache>/artefacts/<digest>`` (``<cache>``: the settings'
$MT_CACHE, default ``~/.cache/mt``; ``artifact.default_cache_dir``): into a temporary folder first, renamed to its
digest once every file is verified, so a half-downloaded entry is never taken for one. ``Artifact.path`` is that
local copy, ``Artifact.url`` the version it was read from. Every ``file://`` root takes this path too: it is how the
protocol is tested on a local filesystem, and it is the safe choice on a shared filesystem whose renames are not atomic
(a bucket mounted through FUSE). ``gc`` removes versions the pointer no longer names.
"""
from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from mt_core.faults import failpoint
from mt_core.layout import MANIFEST, UNPARTITIONED
from mt_resources.artifact import Artifact, ArtifactError, files_digest, staging_name, walk, write_manifest

POINTER = "_current.json"
VERSIONS = "_v"
STARTED = "%Y%m%dT%H%M%SZ"  # a version's name begins with the UTC time its upload started (gc reads its age from it)


def artefact_cache(home: Path) -> Path:
    """Where the copies of artefacts go in this host's cache folder ``home`` (``artifact.default_cache_dir``)."""
    return Path(home) / "artefacts"


def read_url(url: str, cache: Path) -> Artifact:
    """The artefact of the partition whose version ``url`` names (an ``Artifact.url``, as a materialization records
    it), read through that partition's pointer into ``cache`` (``artefact_cache``): the current version, which may be
    newer than ``url``'s; a caller that expects a digest compares it."""
    base = url.rpartition(f"/{VERSIONS}/")[0]
    root, asset, partition = base.rsplit("/", 2)
    return ObjectStore(root, cache).read(asset, partition)


def _mismatch(got: dict, want: dict) -> str:
    return ", ".join(sorted(k for k in {*got, *want} if got.get(k) != want.get(k)))


class ObjectStore:
    """The artefacts under ``url``, credentials and endpoints from the usual fsspec / boto environment
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``FSSPEC_S3_*``, ``GOOGLE_APPLICATION_CREDENTIALS``...)."""

    def __init__(self, url: str, cache: Path):
        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url)
        if isinstance(self.fs, LocalFileSystem):
            self.fs = LocalFileSystem(auto_mkdir=True)  # a filesystem needs the folders an object key only names
        self.cache = Path(cache)  # this host's verified copies, one folder per digest (``artefact_cache``)
        self.staging = self.cache / ".staging"  # beside the entries: a published staging folder is renamed into one

    def _url(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def _base(self, asset: str, partition: str) -> str:
        return f"{self.root}/{asset}/{partition}"

    @contextlib.contextmanager
    def writer(self, asset: str, partition: str | None, *, run_id: str, upstream: list[dict] | None = None,
               extra: dict | None = None):
        """Yield an empty local staging directory; on success upload it as a new version and switch the pointer."""
        part = partition or UNPARTITIONED
        staging = self.staging / asset / staging_name(part)
        staging.mkdir(parents=True)
        try:
            yield staging
            manifest = write_manifest(staging, asset, partition, run_id, upstream, extra)
            self._commit(self._base(asset, part), staging, manifest)
            # the staged files are the version's bytes (the manifest was hashed from them): keeping them as the cache
            # entry spares the writer's own read-back a download; an entry already there is the same bytes
            with contextlib.suppress(OSError):
                os.rename(staging, self.cache / manifest["digest"])
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, base: str, staging: Path, manifest: dict) -> None:
        run = re.sub(r"[^A-Za-z0-9_.-]", "_", manifest["run_id"])
        version = f"{VERSIONS}/{time.strftime(STARTED, time.gmtime())}-{run}-{uuid.uuid4().hex[:8]}"
        prefix = f"{base}/{version}"
        for name in sorted(manifest["files"]):
            self.fs.put_file(str(staging / name), f"{prefix}/{name}")
            failpoint("upload")
        self.fs.put_file(str(staging / MANIFEST), f"{prefix}/{MANIFEST}")  # last: a version without it is partial
        failpoint("publish")
        pointer = {"version": version, "digest": manifest["digest"], "run_id": manifest["run_id"],
                   "switched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        # written beside, then moved over the old one: a rename on a filesystem, a server-side copy (one new object)
        # on an object store; a reader sees the old pointer or the new one, never a torn one
        tmp = f"{base}/{POINTER}.{uuid.uuid4().hex[:8]}.tmp"
        self.fs.pipe_file(tmp, json.dumps(pointer, indent=2).encode())
        self.fs.mv(tmp, f"{base}/{POINTER}")

    def _json(self, path: str, what: str, missing: str, *keys: str) -> dict:
        """The JSON object at ``path`` with ``keys``; ArtifactError ``missing`` if absent, naming it if unreadable."""
        try:
            obj = json.loads(self.fs.cat_file(path))
            for k in keys:
                obj[k]
        except FileNotFoundError:
            raise ArtifactError(f"{what}: {missing}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{what}: unreadable {self._url(path)} ({e!r}); re-materialize it") from None
        return obj

    def published(self, asset: str = "*") -> list[tuple[str, str]]:
        """(asset, partition) of every artefact with a pointer (of ``asset`` only, if given), sorted."""
        self.fs.invalidate_cache(self.root)
        found = self.fs.glob(f"{self.root}/{asset}/*/{POINTER}")
        return sorted(tuple(p[len(self.root) + 1:].split("/")[:2]) for p in found)

    def manifest(self, asset: str, partition: str | None = None) -> tuple[str, dict]:
        """The URL of the version the pointer names and its manifest, checked against the pointer's digest; the files
        are neither listed nor read (what a listing of artefacts needs)."""
        prefix, manifest = self._current(asset, partition or UNPARTITIONED)
        return self._url(prefix), manifest

    def _current(self, asset: str, part: str) -> tuple[str, dict]:
        what, base = f"{asset}[{part}]", self._base(asset, part)
        pointer = self._json(f"{base}/{POINTER}", what, f"no complete artefact at {self._url(base)} (no {POINTER}; "
                                                       f"materialize it first)", "version", "digest")
        prefix, digest = f"{base}/{pointer['version']}", pointer["digest"]
        manifest = self._json(f"{prefix}/{MANIFEST}", what, f"the pointer names {self._url(prefix)}, which has no "
                                                           f"{MANIFEST} (a partial or removed version); re-materialize it",
                              "files")
        files = manifest["files"]
        if manifest.get("digest") != digest or files_digest(files) != digest:
            raise ArtifactError(f"{what}: the pointer's digest {digest} is not the manifest's ({manifest.get('digest')}"
                                f", {files_digest(files)} over its files) at {self._url(prefix)}; re-materialize it")
        return prefix, manifest

    def read(self, asset: str, partition: str | None = None, *, verify: bool = True) -> Artifact:
        """The version the pointer names, checked against its manifest, as a local copy in the cache. ``verify``
        False skips re-hashing a copy already in the cache (the store's side is always checked)."""
        part = partition or UNPARTITIONED
        what = f"{asset}[{part}]"
        prefix, manifest = self._current(asset, part)
        files, digest, url = manifest["files"], manifest["digest"], self._url(prefix)
        self.fs.invalidate_cache(prefix)  # list what is there now, not what this process listed before
        listed = {p[len(prefix) + 1:]: {"size": i["size"]} for p, i in self.fs.find(prefix, detail=True).items()}
        listed.pop(MANIFEST, None)
        sizes = {n: {"size": f["size"]} for n, f in files.items()}
        if listed != sizes:
            raise ArtifactError(f"{what}: files at {self._url(prefix)} do not match the manifest "
                                f"({_mismatch(listed, sizes)}); re-materialize it")
        local = self.cache / digest
        if local.is_dir():
            if not verify or walk(local) == files:
                return Artifact(asset, part, local, manifest, url)
            self._discard(local)  # a damaged copy; the store holds the verified one
        return Artifact(asset, part, self._download(what, prefix, manifest), manifest, url)

    def _download(self, what: str, prefix: str, manifest: dict) -> Path:
        final = self.cache / manifest["digest"]
        tmp = self.cache / ".tmp" / f"{manifest['digest']}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for name in manifest["files"]:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.fs.get_file(f"{prefix}/{name}", str(tmp / name))
                except FileNotFoundError:
                    raise ArtifactError(f"{what}: {self._url(prefix)}/{name} went away while it was read (removed by "
                                        f"gc after a newer version?); read it again") from None
            got = walk(tmp)
            if got != manifest["files"]:
                raise ArtifactError(f"{what}: files at {self._url(prefix)} do not match the manifest "
                                    f"({_mismatch(got, manifest['files'])}); re-materialize it")
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise  # not another reader that renamed the same verified bytes there first
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _discard(self, local: Path) -> None:
        trash = self.cache / ".tmp" / f"{local.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}-damaged"
        trash.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another reader may have discarded it already
            os.rename(local, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def gc(self, older_than_s: float = 86400) -> list[str]:
        """Remove the versions no pointer names whose upload started more than ``older_than_s`` ago; their URLs.

        Only after the pointer moved is an old version garbage: the age spares a writer still uploading (keep
        ``older_than_s`` above the longest upload). A reader still downloading a version just replaced may then
        fail, never accept a partial copy, and gets the new version when it reads again. A partition whose pointer
        cannot be read is left alone."""
        now, found = time.time(), {}
        for p in self.fs.find(self.root):
            parts = p[len(self.root) + 1:].split("/")  # asset, partition, _v, version, file...
            if len(parts) >= 5 and parts[2] == VERSIONS:
                found.setdefault(f"{self.root}/{parts[0]}/{parts[1]}", set()).add(parts[3])
        removed = []
        for base, versions in sorted(found.items()):
            try:
                current = json.loads(self.fs.cat_file(f"{base}/{POINTER}"))["version"]
            except FileNotFoundError:
                current = None  # never committed: every version there is a killed writer's
            except (ValueError, KeyError, TypeError):
                continue
            for v in sorted(versions):
                try:
                    started = calendar.timegm(time.strptime(v[:16], STARTED))
                except ValueError:
                    continue  # not a version this module wrote
                if f"{VERSIONS}/{v}" != current and now - started > older_than_s:
                    self.fs.rm(f"{base}/{VERSIONS}/{v}", recursive=True)
                    removed.append(self._url(f"{base}/{VERSIONS}/{v}"))
        return removed
