"""What the staged GPU benches share (bench/vllm_bench.py, bench/held_engine_check.py): a stage per process, so that
the GPU is empty between engines, each writing its result as JSON into a work folder; ``all`` runs them in order."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser(doc: str, stages: list[str], work_name: str, work_help: str) -> argparse.ArgumentParser:
    """``STAGE [--work DIR] [--out DIR]``: STAGE one of ``all``, ``stages`` and ``report``; DIR defaults to
    ``work_name`` in the system temp folder, and the results folder to $OUT or bench/results."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["all", *stages, "report"])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / work_name, help=work_help)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "results"),
                    help="where the report's JSON goes")
    return ap


def dispatch(args, file: str, order: list[str], report, run_stage, extra=lambda stage: [], tag: str = "") -> int:
    """``all``: each stage of ``order`` in its own process (``file STAGE --work --out`` plus ``extra(stage)``), then
    ``report(work, out)``; stops when the first stage fails (nothing to measure), else goes on and returns the first
    failure's code. ``report``: only that. A stage: ``run_stage(stage)``, its result written to ``work/STAGE.json``
    (and to $OUT/``tag``STAGE.json on the GPU machine, so that it comes back even if a later stage runs out of time)."""
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "all":
        rc = 0
        for i, stage in enumerate(order):
            code = subprocess.run([sys.executable, file, stage, "--work", str(args.work), "--out", str(args.out),
                                   *extra(stage)]).returncode
            if code and i == 0:
                return code
            rc = rc or code
        report(args.work, args.out)
        return rc
    if args.stage == "report":
        report(args.work, args.out)
        return 0
    result = json.dumps(run_stage(args.stage)) + "\n"
    (args.work / f"{args.stage}.json").write_text(result)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / f"{tag}{args.stage}.json").write_text(result)
    return 0
