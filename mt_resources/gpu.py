"""GPU leases. The ``gpu`` pool counts concurrent GPU steps; this allocator picks the concrete device.

A lease is a non-blocking ``fcntl.flock`` on ``<lock_dir>/gpu{i}.lock``: the first free index wins, the lock dies with
the process that holds it (so a killed step frees its GPU), and the chosen index is exported as CUDA_VISIBLE_DEVICES
for the work done under the lease. That variable only takes effect in a process that has not initialised CUDA yet (a
Pipes child), so a lease in a process that has (inline steps) is refused unless it is the device already in use. With
no GPU the lease is the CPU and nothing is locked. Under ``ray`` (MT_COMPUTE=ray) Ray places each GPU step on a node
and device of the cluster, so the lease here only says so.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path

import dagster as dg

from mt_settings import PROJECT_ROOT, Settings, lease_device, visible_devices


def count_gpus() -> int:
    """GPUs visible to this process, without importing torch (nvidia-smi's device files)."""
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def ray_gpus(address: str) -> int:
    """GPUs of the live nodes of the Ray cluster at ``address`` (its dashboard)."""
    from ray.util.state import list_nodes

    if not address:
        raise ValueError("compute mode ray needs the Ray dashboard's address: set RAY_ADDRESS (e.g. http://head:8265)")
    return int(sum(n.resources_total.get("GPU", 0) for n in list_nodes(address=address) if n.state == "ALIVE"))


def cuda_initialised() -> bool:
    """Whether this process has already initialised CUDA (only possible if torch is imported: never imports it)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


class GpuAllocator(dg.ConfigurableResource):
    lock_dir: str = str(PROJECT_ROOT / ".dagster" / "gpu_locks")  # one per host: every instance's steps share the GPUs
    n_gpus: int = -1  # -1: detect ($MT_GPU_COUNT overrides)
    wait_s: float = 3600.0
    ray: bool = False  # GPU steps are Ray jobs: Ray picks node and device, nothing is leased here
    ray_address: str = ""

    @classmethod
    def of(cls, settings: Settings) -> "GpuAllocator":
        return cls(ray=settings.compute_mode() == "ray", ray_address=settings.ray_address or "",
                   n_gpus=-1 if settings.gpu_count is None else settings.gpu_count)

    def count(self) -> int:
        if self.n_gpus >= 0:
            return self.n_gpus
        return ray_gpus(self.ray_address) if self.ray else count_gpus()

    @contextlib.contextmanager
    def lease(self, log=print):
        if self.ray:
            log("gpu: placed by Ray (num_gpus=1)")
            yield None
            return
        n = self.count()
        if n == 0:
            log("gpu: none on this machine; running on CPU")
            yield None
            return
        d = Path(self.lock_dir)
        d.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while True:
            for i in range(n):
                f = open(d / f"gpu{i}.lock", "w")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                old = visible_devices()
                if cuda_initialised() and old != str(i):
                    fcntl.flock(f, fcntl.LOCK_UN)
                    f.close()
                    raise RuntimeError(f"gpu: CUDA is already initialised in this process (CUDA_VISIBLE_DEVICES="
                                       f"{old}), so leasing device {i} would not move the work there; run GPU "
                                       f"steps in their own processes (MT_COMPUTE=pipes)")
                f.write(f"{os.getpid()}\n")
                f.flush()
                log(f"gpu: leased device {i} of {n}")
                try:
                    with lease_device(i):  # the work under the lease (a Pipes child inherits it) sees device i
                        yield i
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
                    f.close()
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no free GPU among {n} after {self.wait_s:.0f}s (locks in {d})")
            time.sleep(2)
