"""The Weights & Biases run around one training, in the process that trains (``report_to="wandb"`` semantics).

What to log where is a ``WandbSettings`` value: the Dagster resource ``mt_resources.wandb.WandbResource`` is the one
place it is configured (mode, project, entity, host, folder; the key stays in the environment), and the training steps
receive it. Mode ``disabled`` never imports wandb; offline runs upload later with ``wandb sync``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbSettings:
    mode: str = "disabled"  # online | offline | disabled
    project: str = ""
    entity: str | None = None
    host: str | None = None  # W&B server URL; None: W&B's cloud
    dir: str = ".wandb"  # where runs are written

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"W&B mode {self.mode!r}: expected one of {', '.join(MODES)}")


class NullRun:
    """The disabled-mode handle: every call is a no-op."""
    id: str | None = None
    url: str | None = None
    mode = "disabled"

    def log(self, data: dict, step: int | None = None) -> None:
        pass

    def summary(self, data: dict) -> None:
        pass


class WandbRun(NullRun):
    def __init__(self, run, mode: str):
        self.run, self.mode, self.id = run, mode, run.id
        self.url = run.url if mode == "online" else None

    def log(self, data: dict, step: int | None = None) -> None:
        self.run.log(data, step=step)

    def summary(self, data: dict) -> None:
        self.run.summary.update(data)


@contextlib.contextmanager
def wandb_run(settings: WandbSettings, *, name: str, group: str, job_type: str,
              config: dict) -> Iterator[NullRun]:
    """A W&B run around one training (or one step's publishing, ``log_artifacts``); finished on exit
    (``exit_code=1`` if the body raised). W&B prints nothing (``silent``: no "wandb: ..." banners; the run's id, URL
    and mode are the step's metadata) and leaves the process's console alone (``console="off"``: it neither captures
    nor echoes stdout/stderr)."""
    if settings.mode == "disabled":
        yield NullRun()
        return
    import wandb

    d = Path(settings.dir)
    d.mkdir(parents=True, exist_ok=True)
    extra = {"base_url": settings.host} if settings.host else {}
    run = wandb.init(project=settings.project, entity=settings.entity, name=name, group=group, job_type=job_type,
                     config=config, mode=settings.mode, dir=str(d), reinit="finish_previous",
                     settings=wandb.Settings(quiet=True, silent=True, console="off", **extra))
    try:
        yield WandbRun(run, settings.mode)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


# --- published artefacts as W&B artifacts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Shared:
    """One published artefact as W&B sees it: named after its asset and partition, versioned by the store's md5
    (the alias ``md5-<digest>``), its files by reference to where the store keeps them (the store stays the source of
    truth: nothing is copied)."""
    asset: str
    partition: str | None  # None: unpartitioned
    md5: str  # the artefact's digest in the store (its manifest's)
    location: str  # the artefact's folder: a local path or the store's URL
    run_id: str | None  # the Dagster run that published it
    files: tuple[str, ...] = ()  # its files (the manifest's), relative to ``location``

    @property
    def name(self) -> str:
        return self.asset if self.partition is None else f"{self.asset}-{self.partition}"

    @property
    def alias(self) -> str:
        return f"md5-{self.md5}"

    @property
    def ref(self) -> str:
        """``name:alias``, what ``use_artifact`` takes and what an artifact's ``upstream`` lists."""
        return f"{self.name}:{self.alias}"

    def uri(self, file: str) -> str:
        if "://" in self.location:
            return f"{self.location.rstrip('/')}/{file}"
        return (Path(self.location) / file).resolve().as_uri()


def log_artifacts(settings: WandbSettings, *, step: str, group: str, logged: list[Shared], used: list[Shared],
                  metadata: dict) -> dict:
    """One short W&B run (job type ``publish``) for a step's published artefacts: each becomes an artifact of its
    asset's type, with the store's md5, the Dagster run and the upstream artefacts (by ``name:md5-…``) in its
    metadata. Online, the run also uses the upstream artifacts, so W&B's lineage graph follows the asset graph; W&B
    cannot record a use offline (``use_artifact`` needs its server), so there the ``upstream`` metadata carries the
    edges. Returns the step's metadata entries (none when disabled)."""
    if settings.mode == "disabled" or not logged:
        return {}
    import wandb

    upstream = [{"artifact": u.ref, "asset": u.asset, "partition": u.partition, "md5": u.md5} for u in used]
    missing = []
    with wandb_run(settings, name=step, group=group, job_type="publish",
                   config={**metadata, "used": [u.ref for u in used]}) as wb:
        run = wb.run
        if settings.mode == "online":
            for u in used:
                try:
                    run.use_artifact(u.ref)
                except Exception:  # noqa: BLE001 - logged before W&B was on, or to another project
                    missing.append(u.ref)
        for a in logged:
            art = wandb.Artifact(a.name, type=a.asset, metadata={
                **metadata, "asset": a.asset, "partition": a.partition, "md5": a.md5, "dagster_run_id": a.run_id,
                "location": a.location, "upstream": upstream})
            for f in a.files:  # W&B checksums each file as it adds it
                art.add_reference(a.uri(f), name=f)
            run.log_artifact(art, aliases=[a.alias])
    return {"wandb_artifacts": [a.ref for a in logged], "wandb_publish_run": wb.id,
            **({"wandb_upstream_not_found": missing} if missing else {})}
