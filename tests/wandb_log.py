"""Reading offline W&B runs the way `wandb sync` does: the records of each ``run-*.wandb`` log.

wandb-core writes a run's log after ``finish`` returns, so a reader waits for the run's exit record; without the wait
a test that reads right after ``finish`` sees a partly written log (or none of it) on a loaded machine.
"""
import contextlib
import glob
import time
from pathlib import Path


def run_records(path: str | Path, timeout_s: float = 30.0) -> list:
    """Every record of one offline run's log, once its exit record is written."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    deadline = time.monotonic() + timeout_s
    while True:
        ds, recs = datastore.DataStore(), []
        ds.open_for_scan(str(path))
        with contextlib.suppress(Exception):  # a partly written log
            while (data := ds.scan_data()) is not None:
                recs.append(pb.Record())
                recs[-1].ParseFromString(data)
        if recs and recs[-1].WhichOneof("record_type") == "exit":
            return recs
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: no exit record after {timeout_s:.0f} s")
        time.sleep(0.1)


def run_log(wandb_dir: Path, run_id: str) -> str:
    """The log file of the offline run ``run_id`` under ``wandb_dir``."""
    (path,) = glob.glob(str(wandb_dir / "wandb" / f"offline-run-*-{run_id}" / "run-*.wandb"))
    return path


def offline_records(wandb_dir: Path) -> list[tuple[str, object]]:
    """(kind, record) of every run, artifact and use record in the offline runs under ``wandb_dir``."""
    out = []
    for f in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for r in run_records(f):
            kind = r.WhichOneof("record_type")
            if kind in ("run", "artifact", "use_artifact"):
                out.append((kind, getattr(r, kind)))
    return out
