"""One coupling adapter and one cell at real size, through Dagster: `mt run`, then every step's wall time read back
from the instance's event log. Writes bench/results/<date>_<card>_cell.json (or --out DIR), the runs' log lines beside
it (..._cell_events.txt: where the time went inside each step), and prints a table.

    MT_MODELS=/big/disk python bench/cell_bench.py                    # gpu_smoke profile, cell C1_s42
    MT_MODELS=/big/disk python bench/cell_bench.py --cells C1_s42,C5_s42 --compute worker   # issue 23's measurement
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


def report(instance, profile: str, cells: list[str], source: str | None, mt_run: dict, study: str | None = None) -> dict:
    """The runs of ``study`` (default: the current study's name) in the instance; its jobs are ``<study>__<stage>``
    and its steps ``<study>__<asset>``, reported by the asset's bare name (``<stage>/<asset>``; a cell's stage is its
    key)."""
    import dagster as dg

    from mt_core.config import load_study
    from mt_resources.store import latest_metadata

    study = study or load_study(profile=profile).name
    runs = {"inputs": latest_run(instance, f"{study}__inputs_job", None),
            "coupling": latest_run(instance, f"{study}__coupling_job", source) if source else None,
            **{c: latest_run(instance, f"{study}__cell_job", c) for c in cells}}
    timing, messages = {}, []
    for k, r in runs.items():
        if r is not None:
            timing[k], lines = read_run(instance, r)
            messages += [f"== {k} run {r.run_id}", *lines]
    meta = {(a, c): latest_metadata(instance, dg.AssetKey([study, a]), c) or {}
            for a in ("marker_completions", "cell_adapter") for c in cells}
    coupling = (latest_metadata(instance, dg.AssetKey([study, "coupling_adapter"]), source) or {}) if source else {}
    steps = {f"{stage}/{step.removeprefix(study + '__')}": s for stage, t in timing.items()
             for step, s in t["steps"].items()}
    gen = [meta[("marker_completions", c)] for c in cells]
    return {
        "messages": messages,
        "card": card(), "date": dt.date.today().isoformat(), "study": study, "profile": profile, "cells": cells,
        "coupling_source": source, "run_ids": {k: t["run_id"] for k, t in timing.items()},
        "inputs_wall_s": timing.get("inputs", {}).get("wall_s"),
        "coupling_wall_s": timing.get("coupling", {}).get("wall_s"),
        "cell_walls_s": [timing.get(c, {}).get("wall_s") for c in cells],
        "steps": steps,
        # the whole run's, counted in the steps' own log lines (on-policy completions and gates included)
        "engine_starts": sum("vllm: engine started" in m for m in messages),
        "merged_copies_written": sum(m.count("vllm: merged ") for m in messages),
        "peak_gpu_gb": mt_run.get("peak_gpu_gb"),
        "engine_starts_per_cell": [g.get("engine_starts") for g in gen],
        # the generation session's count: with vLLM, merged checkpoints written (0 for a worker's held engine); with
        # transformers, merges done in memory
        "merges_per_cell": [g.get("merges") for g in gen],
        "worker_reused_per_cell": [g.get("worker_reused") for g in gen],
        "train_tok_s": {"coupling": coupling.get("tokens_per_s"),
                        **{c: meta[("cell_adapter", c)].get("tokens_per_s") for c in cells}},
        "backend": gen[0].get("backend") if gen else None,
        "marker_mean_tokens": [g.get("mean_tokens") for g in gen],
        "mt_run": mt_run,
    }


def gpu_memory_sampler():
    """Samples nvidia-smi's memory.used of the first GPU every second in a thread; returns ``stop``, which ends the
    sampling and gives the peak in GB (None without nvidia-smi). Read from outside: this process never touches CUDA."""
    import shutil
    import threading

    peak, done, smi = [None], threading.Event(), shutil.which("nvidia-smi")

    def sample() -> None:
        while smi and not done.wait(1.0):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True).stdout.strip()
            if out:
                peak[0] = max(peak[0] or 0.0, float(out) * 1.048576 / 1000)  # MiB -> GB

    t = threading.Thread(target=sample, daemon=True)
    t.start()

    def stop():
        done.set()
        t.join()
        return peak[0]
    return stop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="gpu_smoke")
    ap.add_argument("--cells", "--cell", default="C1_s42", help="comma-separated, run one after another")
    ap.add_argument("--compute", choices=["pipes", "worker"], default=None,
                    help="MT_COMPUTE for the run (worker: a worker that stays; the result is then ..._worker.json)")
    ap.add_argument("--report", action="store_true", help="only read the instance, run nothing")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    cells = args.cells.split(",")
    os.environ["MT_PROFILE"] = args.profile
    os.environ.setdefault("DAGSTER_HOME", str(ROOT / ".dagster"))
    if args.compute:
        os.environ["MT_COMPUTE"] = args.compute
    mt_run = {}
    if not args.report:
        cmd = ["mt", "run", "--profile", args.profile, "--cells", args.cells, "--until", "cells"]
        stop = gpu_memory_sampler()
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "mt_cli", *cmd[1:]], cwd=ROOT)
        mt_run = {"returncode": rc, "wall_s": round(time.perf_counter() - t0, 1), "peak_gpu_gb": stop(),
                  "command": " ".join(cmd), "MT_COMPUTE": os.environ.get("MT_COMPUTE")}
    import dagster as dg

    from mt_core.config import load_study

    study = load_study(profile=args.profile)
    sources = {study.cell(c).base for c in cells} - {"raw"}
    if len(sources) > 1:
        raise SystemExit(f"--cells {args.cells}: cells on one coupling adapter only (got {sorted(sources)})")
    with dg.DagsterInstance.get() as instance:
        res = report(instance, args.profile, cells, next(iter(sources), None), mt_run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{res['date']}_{res['card']}_{'worker' if args.compute == 'worker' else 'cell'}"
    (out / f"{name}_events.txt").write_text("\n".join(res.pop("messages")) + "\n")
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"\n{res['card']}, profile {args.profile}, compute {os.environ.get('MT_COMPUTE', 'default')}: coupling "
          f"{res['coupling_wall_s']} s, cells {res['cell_walls_s']} s, engine starts {res['engine_starts_per_cell']}, "
          f"merges {res['merges_per_cell']}, peak GPU {mt_run.get('peak_gpu_gb')} GB, training tok/s "
          f"{res['train_tok_s']}")
    for k, s in sorted(res["steps"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:45s} {s:8.1f} s")
    print(f"wrote {out / (name + '.json')}")
    return 0 if mt_run.get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
