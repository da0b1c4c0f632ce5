"""Failpoints: named places where the fault-injection tests kill this process for real.

The failpoint is the process's ``mt_core.runtime.Runtime.failpoint`` (set from ``$MT_FAILPOINT`` by
``mt_settings``). ``MT_FAILPOINT=<name>`` (or ``<name>:<n>``, the n-th time it is reached, default the first) makes
``failpoint(<name>)`` send SIGKILL to its own process: no handler, no cleanup, no ``finally`` runs, exactly what an
OOM kill or a pre-emption does to a step. A Pipes child inherits the variable, so the same name kills the child when
the work runs there. Unset (always, outside tests), a failpoint is one dictionary lookup.

Names: ``train`` (after an optimizer step), ``generate`` (after a generation batch), ``arc`` (after an ARC batch),
``judge`` (after the judge answered, before its scores are written), ``publish`` (the manifest written, the staging
directory not yet renamed into place), ``catalog`` (the DuckDB catalog half built).

With ``MT_FAILPOINT_HOLD=<file>`` also set, the failpoint does not kill: it writes ``<file>`` (JSON: pid and the Ray
node name ``MT_NODE``) and waits to be killed from outside, so a test can kill what it chooses (a whole Ray worker
node) while the step is certainly inside its work.
"""
from __future__ import annotations

import json
import os
import signal
import time

from mt_core import runtime

_seen: dict[str, int] = {}


def failpoint(name: str) -> None:
    rt = runtime.current()
    spec = rt.failpoint
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] != int(nth or 1):
        return
    if hold := rt.failpoint_hold:
        tmp = f"{hold}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "node": rt.node, "failpoint": name}, f)
        os.replace(tmp, hold)  # whole or absent: the test reads it as soon as it appears
        while True:
            time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)
