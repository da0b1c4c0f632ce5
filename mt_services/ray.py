"""A real Ray cluster on this machine: a head node with no GPUs and N worker nodes, each with its own logical GPUs.

Each node is ``ray start --block`` in a process group of its own, so stopping one node (or killing it, as the fault
test does) ends exactly its processes and never another cluster's; ``ray stop`` would end every Ray process on the
host. A worker node is named by the environment variable ``MT_NODE``, which its raylet and every job it runs
inherit: ``mt_worker`` records it, with ``CUDA_VISIBLE_DEVICES``, in each step's metadata. On a machine without GPUs
the GPUs are logical (``--num-gpus``): Ray schedules them exactly as real ones, and a job sees its GPU ids in
``CUDA_VISIBLE_DEVICES``.

    python -m mt_services.ray --dir /tmp/ray --workers 2 --gpus 2   # prints the export lines; Ctrl-C stops it
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mt_services import free_port
from mt_settings import without_ray_env

HOST = "127.0.0.1"


def _ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    if exe.exists():
        return str(exe)
    found = shutil.which("ray")
    if not found:
        raise RuntimeError("the `ray` command is not installed: pip install -e '.[cluster]'")
    return found


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node's whole process group (raylet, workers, the jobs it runs)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 5) -> None:
        self.kill(signal.SIGTERM)  # a head may take longer to wind down than is worth waiting for: SIGKILL then
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait()


@dataclass
class RayCluster:
    gcs: str  # host:port, what `ray start --address` and `ray status --address` take
    dashboard: str  # http://host:port, what the job submission API takes (RAY_ADDRESS for MT_COMPUTE=ray)
    folder: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """What a Dagster process needs to send its GPU steps here."""
        return {"MT_COMPUTE": "ray", "RAY_ADDRESS": self.dashboard}

    def node_of(self, node_id: str) -> str | None:
        """The name (w1, ...) of the worker node with Ray node id ``node_id``."""
        from ray.util.state import list_nodes

        for n in list_nodes(address=self.gcs):
            if n.node_id == node_id:
                return next((name for name in self.nodes if name in n.resources_total), None)
        return None

    def gpus(self) -> int:
        from mt_resources.gpu import ray_gpus

        return ray_gpus(self.dashboard)


def _start(name: str, args: list[str], folder: Path, env: dict) -> Node:
    log = folder / f"{name}.log"
    with open(log, "ab") as out:  # the child keeps its own handle
        # no log monitor: it streams remote tasks' prints to a driver's console, which a job has none of (a job's
        # output is its log file, read through the dashboard), and it polled every log file of the node
        proc = subprocess.Popen([_ray_bin(), "start", "--block", "--disable-usage-stats", "--include-log-monitor",
                                 "false", "--node-ip-address", HOST, *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    return Node(name, proc, log)


def _wait(cluster: RayCluster, gpus: int, timeout: float) -> None:
    """Until the dashboard answers and every worker's GPUs are registered."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        for node in cluster.nodes.values():
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray node {node.name} exited ({node.proc.returncode}); see {node.log}:\n"
                                   + node.log.read_text()[-2000:])
        try:
            with urllib.request.urlopen(f"{cluster.dashboard}/api/version", timeout=2):
                pass
            if (n := cluster.gpus()) >= gpus:
                return
            last = f"{n} of {gpus} GPUs registered"
        except Exception as e:  # noqa: BLE001 - not up yet
            last = f"{type(e).__name__}: {e}"
        time.sleep(1)
    raise TimeoutError(f"ray cluster in {cluster.folder} not ready after {timeout:.0f}s ({last})")


@contextlib.contextmanager
def ray_cluster(folder: Path, workers: int = 2, gpus_per_worker: int = 2, cpus_per_worker: int = 2,
                object_store_mb: int = 100, timeout: float = 120):
    """Start a head (no GPUs, so GPU work lands on the workers) and ``workers`` worker nodes named w1, w2, ...;
    yield the RayCluster; stop every node on exit."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gcs_port, dash_port = free_port(), free_port()
    cluster = RayCluster(gcs=f"{HOST}:{gcs_port}", dashboard=f"http://{HOST}:{dash_port}", folder=folder)
    env = without_ray_env()
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    store = ["--object-store-memory", str(object_store_mb * 2**20)]
    try:
        # several nodes on one host: each dashboard agent needs its own port (the default one would clash)
        cluster.nodes["head"] = _start("head", ["--head", "--port", str(gcs_port), "--dashboard-host", HOST,
                                                "--dashboard-port", str(dash_port), "--num-gpus", "0",
                                                "--num-cpus", "1", "--dashboard-agent-listen-port", str(free_port()),
                                                *store], folder, env)
        _wait(cluster, 0, timeout)
        for i in range(1, workers + 1):
            name = f"w{i}"
            # a resource named after the node lets `node_of` map Ray's node ids back to names
            cluster.nodes[name] = _start(name, ["--address", cluster.gcs, "--num-gpus", str(gpus_per_worker),
                                                "--num-cpus", str(cpus_per_worker), "--resources",
                                                json.dumps({name: 1}), "--dashboard-agent-listen-port",
                                                str(free_port()), *store], folder, {**env, "MT_NODE": name})
            # one node at a time: nodes on one host pick their socket names by "first free", so two raylets
            # starting at once can both take the same one, and one dies
            _wait(cluster, i * gpus_per_worker, timeout)
        yield cluster
    finally:
        for node in reversed(list(cluster.nodes.values())):
            node.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mt_services.ray",
                                 description="Start a Ray cluster on this machine (a head and worker nodes with "
                                             "logical GPUs) until Ctrl-C.")
    ap.add_argument("--dir", type=Path, required=True, help="folder for the nodes' logs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpus", type=int, default=2, help="logical GPUs per worker node")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs per worker node")
    a = ap.parse_args(argv)
    with ray_cluster(a.dir, a.workers, a.gpus, a.cpus) as c:
        print(json.dumps({"gcs": c.gcs, "dashboard": c.dashboard, "gpus": c.gpus()}))
        for k, v in c.env().items():
            print(f"export {k}={v}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
