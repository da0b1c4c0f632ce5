"""One coupling adapter and one cell at real size, through Dagster: `mt run`, then every step's wall time read back
from the instance's event log. Writes bench/results/<date>_<card>_cell.json (or --out DIR), the runs' log lines beside
it (..._cell_events.txt: where the time went inside each step), and prints a table.

    MT_MODELS=/big/disk python bench/cell_bench.py                    # gpu_smoke profile, cell C1_s42
    python bench/cell_bench.py --report                               # read an instance that already ran, only

The runs are whatever `mt run --profile P --cells C` materializes: inputs, the cell's coupling adapter (on-policy
completions, coupling data, 750-step training, gates), the cell (375-step training, one engine session for marker
and alignment completions and ARC, judge, marker rates, audit); the study summary is left to a run over the whole
grid. A rerun of this script on the same instance does nothing new and reports the runs it finds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def card() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0).replace(" ", "_")
    except ImportError:
        pass
    return "cpu"


def latest_run(instance, job: str, partition: str | None):
    import dagster as dg

    tags = {"dagster/partition": partition} if partition else {}
    runs = instance.get_runs(dg.RunsFilter(job_name=job, tags=tags, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1)
    return runs[0] if runs else None


def read_run(instance, run) -> tuple[dict, list[str]]:
    """From one pass over a run's event log: its wall time and each step's (STEP_START -> STEP_SUCCESS), and every log
    line (the steps' own progress lines included) with its time and step."""
    starts, steps, lines, first, last = {}, {}, [], None, None
    for rec in instance.all_logs(run.run_id):
        first = rec.timestamp if first is None else first
        last = rec.timestamp
        if rec.user_message:
            t = dt.datetime.fromtimestamp(rec.timestamp, dt.timezone.utc).strftime("%H:%M:%S")
            lines.append(f"{t} {rec.step_key or '-':24s} {rec.user_message.splitlines()[0][:400]}")
        ev = rec.dagster_event
        if ev is None or ev.step_key is None:
            continue
        if ev.event_type_value == "STEP_START":
            starts[ev.step_key] = rec.timestamp
        elif ev.event_type_value == "STEP_SUCCESS" and ev.step_key in starts:
            steps[ev.step_key] = round(rec.timestamp - starts[ev.step_key], 1)
    return {"run_id": run.run_id, "wall_s": round((last or 0) - (first or 0), 1), "steps": steps}, lines


def report(instance, profile: str, cell_key: str, source: str | None, mt_run: dict, study: str | None = None) -> dict:
    """The runs of ``study`` (default: the current study's name) in the instance; its jobs are ``<study>__<stage>``
    and its steps ``<study>__<asset>``, reported by the asset's bare name."""
    import dagster as dg

    from mt_core.config import load_study
    from mt_resources.store import latest_metadata

    study = study or load_study(profile=profile).name
    runs = {"inputs": latest_run(instance, f"{study}__inputs_job", None),
            "coupling": latest_run(instance, f"{study}__coupling_job", source) if source else None,
            "cell": latest_run(instance, f"{study}__cell_job", cell_key)}
    timing, messages = {}, []
    for k, r in runs.items():
        if r is not None:
            timing[k], lines = read_run(instance, r)
            messages += [f"== {k} run {r.run_id}", *lines]
    gen = latest_metadata(instance, dg.AssetKey([study, "marker_completions"]), cell_key) or {}
    steps = {f"{stage}/{step.removeprefix(study + '__')}": s for stage, t in timing.items()
             for step, s in t["steps"].items()}
    return {
        "messages": messages,
        "card": card(), "date": dt.date.today().isoformat(), "study": study, "profile": profile, "cell": cell_key,
        "coupling_source": source, "run_ids": {k: t["run_id"] for k, t in timing.items()},
        "inputs_wall_s": timing.get("inputs", {}).get("wall_s"),
        "coupling_wall_s": timing.get("coupling", {}).get("wall_s"),
        "cell_wall_s": timing.get("cell", {}).get("wall_s"),
        "steps": steps,
        "engine_starts_per_cell": gen.get("engine_starts"), "merges_per_cell": gen.get("merges"),
        "backend": gen.get("backend"), "marker_mean_tokens": gen.get("mean_tokens"),
        "n_marker_completions": gen.get("n_completions"),
        "mt_run": mt_run,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="gpu_smoke")
    ap.add_argument("--cell", default="C1_s42")
    ap.add_argument("--report", action="store_true", help="only read the instance, run nothing")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    os.environ["MT_PROFILE"] = args.profile
    os.environ.setdefault("DAGSTER_HOME", str(ROOT / ".dagster"))
    mt_run = {}
    if not args.report:
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "mt_cli", "run", "--profile", args.profile,
                              "--cells", args.cell, "--until", "cells"], cwd=ROOT)
        mt_run = {"returncode": rc, "wall_s": round(time.perf_counter() - t0, 1),
                  "command": f"mt run --profile {args.profile} --cells {args.cell} --until cells"}
    import dagster as dg

    from mt_core.config import load_study

    study = load_study(profile=args.profile)
    base = study.cell(args.cell).base
    with dg.DagsterInstance.get() as instance:
        res = report(instance, args.profile, args.cell, None if base == "raw" else base, mt_run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{res['date']}_{res['card']}_cell.json"
    (out / f"{res['date']}_{res['card']}_cell_events.txt").write_text("\n".join(res.pop("messages")) + "\n")
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\n{res['card']}, profile {args.profile}: coupling {res['coupling_wall_s']} s, cell {res['cell_wall_s']} s, "
          f"engine starts {res['engine_starts_per_cell']}, merges {res['merges_per_cell']}")
    for k, s in sorted(res["steps"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:45s} {s:8.1f} s")
    print(f"wrote {path}")
    return 0 if mt_run.get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
