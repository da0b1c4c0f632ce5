"""Where a test run's wall time went, per pytest-xdist worker: `MT_TEST_TIMELINE=/tmp/t.jsonl make test`, then
`python scripts/test_timeline.py /tmp/t.jsonl`. Prints each worker's files in order (start, seconds) and its idle
time (between its tests, and from its last test to the end of the run)."""
import json
import signal
import sys
from collections import defaultdict


def main(path: str) -> None:
    rows = [json.loads(x) for x in open(path)]
    t0, t1 = min(r["start"] for r in rows), max(r["end"] for r in rows)
    by_worker = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["start"]):
        by_worker[r["worker"]].append(r)
    print(f"run: {t1 - t0:.0f}s wall, {len(rows)} tests")
    for w, rs in sorted(by_worker.items()):
        files: dict[str, list[float]] = {}
        for r in rs:
            f = files.setdefault(r["test"].split("::")[0], [r["start"], r["end"]])
            f[1] = r["end"]
        busy = sum(r["end"] - r["start"] for r in rs)
        print(f"\n{w}: busy {busy:.0f}s, idle {t1 - t0 - busy:.0f}s (after its last test: {t1 - rs[-1]['end']:.0f}s)")
        for name, (a, b) in files.items():
            if b - a >= 5:
                print(f"  {a - t0:6.0f}s  {b - a:6.0f}s  {name}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    main(sys.argv[1])
