"""The servers a cluster deployment talks to, started for real on this machine by the tests and by hand:
a Postgres server for the Dagster instance (``postgres``) and a Ray cluster for GPU steps (``ray``).
Each is a context manager that starts the server in a folder of its own and stops it on exit."""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the server that binds it next may race another: fine on a test machine)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
