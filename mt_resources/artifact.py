"""What the two artefact stores share: the ``Artifact`` they hand out, ``ArtifactError``, and the manifest both publish
beside an artefact's files (each file's md5 and size, a digest over them, the run id, the upstream artefacts).

``mt_resources.store`` (a local root) and ``mt_resources.objstore`` (an object store root) both import this module;
neither imports the other's internals.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mt_core.io import md5_file
from mt_core.layout import MANIFEST, UNPARTITIONED


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


def staging_host() -> str:
    """This host's name as a staging folder's name carries it (no "-")."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())


def staging_name(partition: str | None) -> str:
    """A staging folder's name: the partition, then the writer's host and pid (so that the next run on that host can
    tell a dead writer's leftovers at once), then a random part."""
    return f"{partition or UNPARTITIONED}-{staging_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def staging_writer(name: str) -> tuple[str | None, int] | None:
    """(host, pid) of the writer of a staging folder named by ``staging_name`` (host None: an older name without
    it), or None for a name that is not one."""
    parts = name.rsplit("-", 3)
    try:
        if len(parts) == 4 and not parts[1].isdigit():
            return parts[1], int(parts[2])
        return None, int(parts[-2])
    except (ValueError, IndexError):
        return None


def files_digest(files: dict[str, dict]) -> str:
    """The digest of an artefact: md5 over its files' names, md5s and sizes (a manifest's ``files``), in name order."""
    h = hashlib.md5()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]['md5']}\0{files[name]['size']}\n".encode())
    return h.hexdigest()


def walk(root: Path) -> dict[str, dict]:
    """{relative path: {md5, size}} of every file under ``root`` but the manifest: what a manifest's ``files`` says."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = {"md5": md5_file(p), "size": p.stat().st_size}
    return out


def is_url(root: str) -> bool:
    """Whether an artefact root is an object store URL (it has a scheme) rather than a local path."""
    return "://" in str(root)


def default_cache_dir(configured: str | None = None) -> Path:
    """This host's folder for what an object store root keeps locally (copies of artefacts, the judge cache):
    ``configured`` (the settings' $MT_CACHE) if given, else ``~/.cache/mt``."""
    return Path(configured) if configured else Path.home() / ".cache" / "mt"


def write_manifest(staging: Path, asset: str, partition: str | None, run_id: str, upstream: list[dict] | None,
                   extra: dict | None) -> dict:
    """Hash the staged files and write their manifest beside them (both stores publish this same manifest)."""
    files = walk(staging)
    manifest = {"asset": asset, "partition": partition or UNPARTITIONED, "run_id": run_id,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files,
                "digest": files_digest(files), "size_bytes": sum(f["size"] for f in files.values()),
                "upstream": upstream or [], **(extra or {})}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
