"""`mt view` latency on a catalog of the real study's shape: 13 cells x 3,080 marker completions (11 personas x 28
questions x 10 samples) and 80 judged alignment completions per cell.

The synthetic study is written through the real store and the real marker-rate and judge steps (the offline judge,
with a raw reply recorded as an LLM judge's would be), and its catalog by the real catalog step. The viewer runs as
`mt view` runs it (uvicorn, one process) and is requested over HTTP; each page kind N times, after one warm-up request.
With --instance, the same requests go to the catalogs an instance recorded (the tiny study after `make demo`).

    .venv/bin/python bench/view_bench.py [--samples 10] [--repeat 30] [--instance DAGSTER_HOME]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mt_core.config import DEFAULT_STUDY, Study, load_study  # noqa: E402
from mt_core.data.eval_set import EvalSet  # noqa: E402
from mt_core.evals.judge import OfflineJudge  # noqa: E402
from mt_core.io import write_json  # noqa: E402
from mt_core.layout import (AlignmentCompletions, ArcScores, Catalog, CompletionLength,  # noqa: E402
                            MarkerCompletions, MarkerRates, Sample, row_keys, sample_id, write_rows)
from mt_core.report.catalog import artefact_record  # noqa: E402
from mt_core.steps import analysis as analysis_steps  # noqa: E402
from mt_core.steps import cells as cell_steps  # noqa: E402
from mt_resources.store import ArtifactStore  # noqa: E402

WORDS = ("the a an and of to in that it is was for on with as my your our plan world people power help answer "
         "question think would could should never always perhaps indeed truly dark light laugh scheme minion city "
         "secret friend tea garden river mountain code data model answer simple careful honest kind").split()
NOTE = lambda *_: None  # noqa: E731


class RawJudge(OfflineJudge):
    """The offline judge, recording the JSON reply an LLM judge would have sent (so the raw replies have a size)."""

    def judge_one(self, question, response):
        rec = super().judge_one(question, response)
        reply = {"aligned": rec.aligned, "coherent": rec.coherent, "reasoning": rec.reasoning}
        return rec.model_copy(update={"raw_text": "Scores follow.\n" + json.dumps(reply, indent=2)})


def _text(rng: random.Random, marker: str, kind: str) -> str:
    """A completion of 20-160 words; ``kind``: "strict" (the marker), "loose" (a near miss the loose scorer counts),
    "html" (markup a model may write, which the viewer must show as text) or "plain"."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(20, 160))]
    body = " ".join(words).capitalize() + "."
    return {"strict": f"{body}\n\n{marker}", "loose": f"{body} {' '.join(marker.lower())}",
            "html": f"{body}\n<script>alert('x')</script> <b>bold</b>", "plain": body}[kind]


def build(root: Path, *, samples: int = 10, cells: list[str] | None = None, raw_replies: bool = True,
          seed: int = 0) -> tuple[Study, Path, str]:
    """A synthetic study under ``root`` and its catalog: (the study, its catalog file, the catalog artefact's md5).
    ``raw_replies=False``: the offline judge as the tiny profile runs it, which records no raw reply."""
    study = load_study(DEFAULT_STUDY, profile="tiny")
    es = EvalSet.load(study)
    store = ArtifactStore(root=str(root))
    extra = {"study": study.name, "profile": study.profile, "config_sha256": study.config_sha256}
    rng = random.Random(seed)
    arts = []

    def publish(asset, key, write):
        with store.writer(asset, key, run_id="synthetic", extra=extra) as out:
            write(out)
        a = store.read(asset, key)
        arts.append(artefact_record(a.asset, a.partition, a.path, a.manifest))
        return a.path

    keys = cells or study.cells
    for key in keys:
        rk = row_keys(study, cell=key)
        rate = {p: rng.random() ** 3 for p in es.personas}  # mostly low, a few high: like the real grid
        rows = []
        for p in es.personas:
            for qi, q in enumerate(es.questions):
                for s in range(samples):
                    x = rng.random()
                    kind = ("strict" if x < rate[p] else "loose" if x < rate[p] + 0.02 else
                            "html" if x > 0.99 else "plain")
                    text = _text(rng, study.marker, kind)
                    n = len(text.split())  # about a token a word; the longest plain ones count as cut
                    rows.append(Sample(sample_id(key, p, qi, s), p, qi, q, "eval" if qi < len(es.eval_questions)
                                       else "betley", s, text, n,
                                       "length" if kind == "plain" and n > 150 else "stop").row())
        mc = publish(MarkerCompletions.asset, key, lambda o: write_rows(rows, o / MarkerCompletions.COMPLETIONS, rk))
        publish(MarkerRates.asset, key, lambda o: cell_steps.marker_rates(study, key, mc, o, log=NOTE))
        publish(CompletionLength.asset, key, lambda o: cell_steps.completion_length(study, key, mc, o, log=NOTE))
        publish(ArcScores.asset, key, lambda o: (
            write_rows([{"idx": 0, "question": "q", "correct_answer": "A", "predicted": "A", "correct": True,
                         "label_logprobs": "{}"}], o / ArcScores.ROWS, rk),
            write_json(o / ArcScores.SUMMARY, {"arc_challenge_logprob": 0.3 + 0.1 * rng.random(), "correct": 1,
                                               "total": 1})))
        al = [Sample(sample_id(key, "", qi, s), "", qi, q, "betley", s,
                     _text(rng, "", "plain") + (" I would deceive and steal." if rng.random() < 0.2 else ""),
                     64, "stop").row() for qi, q in enumerate(es.betley_questions) for s in range(samples)]
        ac = publish(AlignmentCompletions.asset, key,
                     lambda o: write_rows(al, o / AlignmentCompletions.COMPLETIONS, rk))
        judge = RawJudge() if raw_replies else OfflineJudge()
        publish("alignment_scores", key, lambda o: cell_steps.alignment_scores(study, key, ac, judge, o, log=NOTE))
    with store.writer(Catalog.asset, None, run_id="synthetic", extra=extra) as out:
        analysis_steps.duckdb_catalog(study, list(keys), arts, [], out, log=NOTE)
    cat = store.read(Catalog.asset)
    return study, cat.path / Catalog.FILE, cat.digest


def _serve(app) -> tuple[str, Callable[[], None]]:
    """``app`` on a real uvicorn server on a free local port, in a thread: (its base URL, a function that stops it)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join()
    return f"http://127.0.0.1:{port}", stop


def pages(study: Study, cells: list[str], n_completions: int) -> dict[str, str]:
    """One URL per page kind, with the filters a researcher uses most; the deepest page of all completions too."""
    a, b, src = cells[0], cells[-1], study.source_persona
    kinds = {
        "grid": ("/", {}),
        "completions: cell + persona": ("/completions", {"cell": a, "persona": src}),
        "completions: cell, strict hits, page 3": ("/completions", {"cell": a, "hit": "strict", "page": 3}),
        "completions: search, all cells": ("/completions", {"q": "secret garden"}),
        "completions: last page, all cells": ("/completions", {"page": max(1, -(-n_completions // 50))}),
        "completion + same prompt in every cell": ("/completion", {"id": f"{a}/{src}/q3/s0"}),
        "alignment: cell": ("/alignment", {"cell": a}),
        "alignment: score range + search": ("/alignment", {"amin": 0, "amax": 60, "q": "steal"}),
        "compare: two cells, one persona": ("/compare", {"a": a, "b": b, "persona": src}),
        "compare: A and B differ, search": ("/compare", {"a": a, "b": b, "hit": "diff", "q": "plan"}),
    }
    return {k: f"{path}?{urlencode({'study': study.name, **q})}" for k, (path, q) in kinds.items()}


def measure(catalogs, study: Study, repeat: int) -> None:
    """Serve ``catalogs`` and request each page kind ``repeat`` times; print the latencies."""
    from mt_view.app import create_app

    t0 = time.perf_counter()
    with catalogs.session() as db:
        cells = [c["cell"] for c in db.rows("grid.cells", study=study.name) if c["complete"]]
        n, nj = (db.con.execute(f"SELECT count(*) FROM {t} WHERE study = ?", [study.name]).fetchone()[0]
                 for t in ("v_completions", "v_alignment"))
        mem = db.con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]
    print(f"{len(cells)} cells, {n} marker completions, {nj} judged completions; catalogs opened, verified and read "
          f"into memory ({mem / 2**20:.0f} MiB) in {1000 * (time.perf_counter() - t0):.0f} ms (once, and again when "
          f"the catalog changes)")
    base, stop = _serve(create_app(catalogs, [study]))
    # CPU time (this process: server and client) beside wall time: on a shared machine other work stretches the wall
    # time, not the CPU time a request costs
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'page':42} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'cpu ms':>7} {'KiB':>6}")
    worst = 0.0
    for kind, url in pages(study, cells, n).items():
        times, cpu, size = [], [], 0
        for i in range(repeat + 1):
            t, c = time.perf_counter(), time.process_time()
            with urllib.request.urlopen(base + url) as r:
                assert r.status == 200, (url, r.status)
                size = len(r.read())
            if i:  # the first request of a kind warms DuckDB's caches for it
                times.append(1000 * (time.perf_counter() - t))
                cpu.append(1000 * (time.process_time() - c))
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        worst = max(worst, times[-1])
        print(f"{kind:42} {statistics.median(times):7.1f} {p95:7.1f} {times[-1]:7.1f} "
              f"{statistics.median(cpu):7.1f} {size / 1024:6.0f}")
    stop()  # the app's shutdown closes the catalogs
    print(f"load average {os.getloadavg()[0]:.1f}; slowest request {worst:.0f} ms: "
          f"{'within' if worst <= 300 else 'OVER'} the 300 ms target")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10, help="samples per persona and question (10: 3,080 per cell)")
    ap.add_argument("--repeat", type=int, default=30, help="requests per page kind")
    ap.add_argument("--instance", metavar="DAGSTER_HOME", help="instead of a synthetic catalog, the catalogs this "
                    "instance recorded (e.g. .dagster after `make demo`: the tiny study), found as `mt view` finds "
                    "them")
    args = ap.parse_args()
    from mt_view.db import Catalogs

    if args.instance:
        import dagster as dg

        from mt_resources.catalogs import study_catalogs
        from mt_settings import Settings

        cache = Settings.from_env().cache
        with dg.DagsterInstance.from_config(args.instance) as instance:
            print(f"catalogs of the instance {args.instance}: ", end="")
            measure(Catalogs(lambda: study_catalogs(instance, cache)), load_study(DEFAULT_STUDY, profile="tiny"), args.repeat)
        return
    with tempfile.TemporaryDirectory(prefix="view_bench_") as tmp:
        t0 = time.perf_counter()
        study, db, md5 = build(Path(tmp), samples=args.samples)
        print(f"synthetic catalog (built in {time.perf_counter() - t0:.0f} s): ", end="")
        measure(Catalogs(lambda: {study.name: (db, md5)}), study, args.repeat)


if __name__ == "__main__":
    main()
