"""`mt doctor`: everything a study needs before GPU hours are spent on it, checked at once.

Each check returns the problems it found, one line each with the fix; `mt doctor` prints them all and exits 1 if there
is any, and `mt run` runs the same checks first. Secrets are checked, never printed.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mt_settings import Settings, secret

GB = 1 << 30
# free disk a study needs: a 7B merge in scratch is about 15 GB, a whole study's artefacts a few GB (more GPUs
# merge more at once: `mt doctor` is a floor, not a budget)
MIN_FREE_GB = {"tiny": 1, "hf": 25}
MIN_GPU_FREE_GB = 60  # a 7B bf16 LoRA training or vLLM engine


@dataclass(frozen=True)
class Problem:
    check: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message} -> {self.fix}"


def check_model(study) -> list[Problem]:
    """The base model: the tiny one is built locally; an HF one needs its snapshot here, every shard, hashes intact."""
    if study.model.kind != "hf":
        return []  # built by the base_model step (tiny; random, written once: check_disk counts its room)
    from mt_core.io import DataError
    from mt_core.steps.inputs import resolve_hf_snapshot

    m = study.model
    try:
        path = resolve_hf_snapshot(m)
    except DataError as e:
        return [Problem("model", str(e), f"download it where HF_HOME points: `huggingface-cli download {m.id} "
                                         f"--revision {m.revision or 'main'}`, or set model.local_path")]
    index = path / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else \
        [p.name for p in path.glob("*.safetensors")]
    if not shards:
        return [Problem("model", f"{path}: no safetensors weights", "download the full snapshot")]
    out = []
    for name in shards:
        f = path / name
        if not f.is_file():
            out.append(Problem("model", f"{f}: shard missing", "download the snapshot again"))
            continue
        blob = f.resolve().name  # the HF cache stores each weight file as blobs/<its sha256>
        if f.is_symlink() and len(blob) == 64 and _sha256(f) != blob:
            out.append(Problem("model", f"{f}: sha256 differs from the cache's record {blob[:12]}…",
                               "delete the blob and download the snapshot again"))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def check_data(study) -> list[Problem]:
    """Second-stage datasets given as files: present, with the pinned md5."""
    from mt_core.io import md5_file

    out = []
    for which in ("em", "benign"):
        spec = getattr(study.data, which)
        if spec.kind == "synthetic":
            continue
        p = study.path(spec.path)
        if not p.exists():
            out.append(Problem("data", f"{p}: {which} dataset not found (data.{which}.path)",
                               f"put the file there (md5 {spec.md5}, {spec.rows} rows)"))
        elif p.is_file() and spec.kind == "file" and (got := md5_file(p)) != spec.md5:
            out.append(Problem("data", f"{p}: md5 {got}, the study pins {spec.md5} (data.{which}.md5)",
                               "use the pinned file, or pin the new one after checking it"))
    return out


def check_judge(study, *, call: bool = True, base_url: str | None = None) -> list[Problem]:
    """A Claude judge needs ANTHROPIC_API_KEY, and the key must work: one minimal call, before any GPU work."""
    if study.judge.kind != "anthropic":
        return []
    key = secret("ANTHROPIC_API_KEY")
    if not key:
        return [Problem("judge", f"ANTHROPIC_API_KEY is not set; study {study.name} is judged by {study.judge.model}",
                        "export ANTHROPIC_API_KEY=… (or use a profile with judge.kind: offline)")]
    if not call:
        return []
    import anthropic

    try:
        anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=1,
                            timeout=30).messages.create(model=study.judge.model, max_tokens=1,
                                                        messages=[{"role": "user", "content": "ok"}])
    except anthropic.AuthenticationError:
        return [Problem("judge", "ANTHROPIC_API_KEY was refused (401)", "set a valid key")]
    except anthropic.NotFoundError:
        return [Problem("judge", f"judge model {study.judge.model} not found for this key", "fix judge.model")]
    except anthropic.APIError as e:
        return [Problem("judge", f"the judge API did not answer a one-token call ({type(e).__name__})",
                        "check the network and ANTHROPIC_BASE_URL")]
    return []


def check_gpus(study, *, gpus: Callable[[], int] | None = None, free_gb: Callable[[], list[float]] | None = None
               ) -> list[Problem]:
    """A 7B study needs GPUs with room on them; vLLM must import."""
    out = []
    if needs_gpu(study.model):
        from mt_resources.gpu import count_gpus

        n = (gpus or count_gpus)()
        if n == 0:
            out.append(Problem("gpu", "no GPU visible to this process", "run on a GPU host (CUDA_VISIBLE_DEVICES, "
                                                                         "drivers), or use the tiny profile"))
        else:
            busy = [f"GPU {i}: {f:.0f} GB free" for i, f in enumerate((free_gb or _gpu_free_gb)())
                    if f < MIN_GPU_FREE_GB]
            if busy:
                out.append(Problem("gpu", f"{'; '.join(busy)} (a 7B step needs about {MIN_GPU_FREE_GB} GB)",
                                   "stop what holds the memory (nvidia-smi)"))
    if study.backend.kind == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            out.append(Problem("vllm", f"backend vllm but vLLM does not import ({e})",
                               "pip install '.[gpu]' with a CUDA build of torch (README: GPU hosts)"))
    return out


def needs_gpu(m) -> bool:
    """A real-size model: an HF snapshot, or random weights of more than a billion parameters."""
    if m.kind == "random":
        from mt_core.model.random_snapshot import n_params

        return n_params(m) > 1e9
    return m.kind == "hf"


def _gpu_free_gb() -> list[float]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [float(x) / 1024 for x in out.split()]


def check_disk(study, root: Path | str, *, scratch: Path | None = None, cache: Path | None = None,
               usage: Callable = shutil.disk_usage) -> list[Problem]:
    """Room for the artefacts and a merge's scratch checkpoint (the reference's cells died of full disks). An object
    store root is measured where it fills this host: the cache its steps stage in and read through ($MT_CACHE)."""
    from mt_resources.store import ArtifactStore

    disk, var = ArtifactStore(root=str(root), cache=str(cache) if cache else None).disk
    need = MIN_FREE_GB["tiny" if study.model.kind == "tiny" else "hf"]
    if study.model.kind == "random":
        from mt_core.model.random_snapshot import n_params, snapshot_dir
        from mt_core.model.snapshots import COMPLETE

        if not (snapshot_dir(study.model) / COMPLETE).is_file():  # the snapshot is still to be written (bf16)
            need += round(2 * n_params(study.model) / GB)
    out = []
    for what, path in (("artefacts", disk), ("scratch", Path(scratch or "/tmp"))):
        p = path
        while not p.exists():
            p = p.parent
        free = usage(p).free / GB
        if free < need:
            out.append(Problem("disk", f"{what} ({path}): {free:.1f} GB free, the study needs about {need} GB",
                               f"free space, or point {var} / MT_SCRATCH at a larger disk"))
    return out


def check_instance(home: Path) -> list[Problem]:
    """The Dagster instance's folder exists and takes writes."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".mt_doctor_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return [Problem("dagster", f"DAGSTER_HOME {home} is not writable ({e.strerror})",
                        "point DAGSTER_HOME at a writable folder")]
    return []


def diagnose(study, root: Path | str, settings: Settings, *, call_judge: bool = True) -> list[Problem]:
    return [*check_model(study), *check_data(study),
            *check_judge(study, call=call_judge, base_url=settings.anthropic_base_url),
            *check_gpus(study, gpus=None if settings.gpu_count is None else lambda: settings.gpu_count),
            *check_disk(study, root, scratch=settings.runtime.scratch, cache=settings.cache),
            *check_instance(settings.dagster_home)]
