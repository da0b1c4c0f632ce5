"""The study on this machine vs on a Ray cluster of two worker nodes (mt_services.ray), through `mt run`.

    python bench/ray_bench.py --out /tmp/raybench                  # the whole tiny study, local then Ray
    python bench/ray_bench.py --out /tmp/raybench --cells C1_s42   # one cell (and what it stands on)

For each engine it records the wall time of `mt run`, and for every GPU step how long it took from the step asking
for its work (the Pipes child spawned, or the Ray job submitted) to the worker's first log line: the cost of getting
the work started. It checks that both engines produced the same weights and rows (md5 of every .safetensors and
.parquet file) and prints a Markdown table (docs/SCALING.md records it). Ray runs a Ray job per GPU step; locally the
tiny profile runs steps in the step process (inline), so `--local-compute pipes` is the like-for-like comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mt_services.ray import ray_cluster  # noqa: E402

ASKED = ("ray: submitting ", "pipes: ")  # the parent's line when it hands a step to its worker
STARTED = "worker: "  # the worker's first line


def run(name: str, out: Path, cells: str | None, env_extra: dict) -> dict:
    home, art = out / name / "home", out / name / "art"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", WANDB_MODE="disabled",
               **env_extra)
    cmd = [sys.executable, "-m", "mt_cli", "run", *(["--cells", cells] if cells else [])]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{name}: mt run failed\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    waits, md5s, places = [], {}, set()
    with dg.DagsterInstance.from_config(str(home)) as inst:
        for r in inst.get_runs():
            asked = {}
            for e in inst.all_logs(r.run_id):
                msg = e.user_message or ""
                if msg.startswith(ASKED):
                    asked[e.step_key] = e.timestamp
                elif msg.startswith(STARTED) and e.step_key in asked:
                    waits.append(e.timestamp - asked.pop(e.step_key))
        for key in inst.get_asset_keys():
            for rec in inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records:
                m = rec.asset_materialization
                meta = {k: v.value for k, v in m.metadata.items()}
                if (key.path[-1], m.partition) in md5s:
                    continue
                files = json.loads((Path(meta["path"]) / "_manifest.json").read_text())["files"]
                md5s[(key.path[-1], m.partition)] = {f: v["md5"] for f, v in files.items()
                                                     if f.endswith((".safetensors", ".parquet"))}
                if "placement" in meta:
                    places.add((meta["placement"]["node"], meta["placement"]["cuda_visible_devices"]))
    return {"wall_s": wall, "waits": waits, "md5s": md5s, "places": places}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="a folder for the instances, artefacts and Ray logs")
    ap.add_argument("--cells", help="comma-separated cells (default: the whole study)")
    ap.add_argument("--local-compute", default="inline", choices=["inline", "pipes"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpus", type=int, default=2, help="logical GPUs per worker node")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    res = {"local": run("local", a.out, a.cells, {"MT_COMPUTE": a.local_compute})}
    with ray_cluster(a.out / "ray_nodes", workers=a.workers, gpus_per_worker=a.gpus) as c:
        res["ray"] = run("ray", a.out, a.cells, c.env())
    same = res["local"]["md5s"] == res["ray"]["md5s"]
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, no GPU (Ray GPUs are logical); "
          f"cells: {a.cells or 'all'}; local compute: {a.local_compute}")
    print("| engine | `mt run` wall | GPU steps | ask → worker's first line, median (max) | nodes × GPUs used |")
    print("|---|---|---|---|---|")
    for name, r in res.items():
        w = r["waits"]
        wait = f"{statistics.median(w):.1f} s ({max(w):.1f} s)" if w else "- (in the step process)"
        print(f"| {name} | {r['wall_s'] / 60:.1f} min | {len(w) or '-'} | {wait} | {len(r['places'])} |")
    print(f"weights and rows identical across engines: {same} ({len(res['ray']['md5s'])} artefacts)")


if __name__ == "__main__":
    main()
