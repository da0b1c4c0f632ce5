"""`mt ui`: Dagster's web UI (`dagster dev`: webserver, daemon, code servers) on the instance, stopped within seconds.

`dagster dev` alone stops slowly and not completely: on SIGINT or SIGTERM it asks its webserver and daemon to stop and
waits up to 60 s for each (a webserver still starting ignores the request), and its code servers outlive it by
seconds, up to their 45 s heartbeat. Here it runs in a process group of its own: SIGINT or SIGTERM to `mt ui` is
passed on to every process of the group, and what is left once `dagster dev` has exited, or 3 s later, is killed.
"""
from __future__ import annotations

import signal
import sys

from mt_cli.session import settings_of

GRACE_S = 3.0  # after the signal, before SIGKILL: `make ui` must stop within 5 s


class _Stop(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_on(signum, _frame):
    for s in (signal.SIGINT, signal.SIGTERM):  # once: a second signal while the group stops changes nothing
        signal.signal(s, signal.SIG_IGN)
    raise _Stop(signum)


def ui_argv(settings, host: str, port: int) -> list[str]:
    """The UI's command line (`mt ui` and the browser test start it the same way)."""
    return [sys.executable, "-m", "dagster", "dev", "-w", str(settings.workspace), "-h", host, "-p", str(port)]


def cmd_ui(args) -> int:
    from mt_services import start_group, stop_group
    from mt_settings import PROJECT_ROOT

    s = settings_of(args)
    proc, code, sig = None, 0, signal.SIGTERM
    try:
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, _stop_on)
        proc = start_group(ui_argv(s, args.host, args.port), env=s.to_env(), cwd=PROJECT_ROOT,
                           die_with_parent=True)
        print(f"mt ui: http://{args.host}:{args.port}/ on instance {s.dagster_home}  (Ctrl-C stops)", flush=True)
        code = proc.wait()  # it ends on its own only on an error (a port in use): its output says which
    except _Stop as e:
        sig = e.signum
    finally:
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, signal.SIG_IGN)
        if proc is not None:
            stop_group(proc, GRACE_S, sig)  # the signal passed on to every process of the group, or what it left
    # No Dagster import here, to exit at once (an open instance adds ~1 s to the interpreter's exit). The daemon's
    # last heartbeat stays fresh for a minute: a queued `mt run` in that minute waits for it, then starts its own.
    print("mt ui: stopped", flush=True)
    return code
