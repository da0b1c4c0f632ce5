"""A throw-away PostgreSQL server for the Dagster instance: started in a folder of its own, stopped on exit.

    with postgres_server(Path("/tmp/pg")) as pg:
        pg.url          # postgresql://dagster:<password>@127.0.0.1:<port>/dagster (psql, psycopg2)
        pg.dagster_url  # the same as postgresql+psycopg2://…: what MT_PG_URL must be

The cluster is created fresh by ``initdb`` in ``<folder>/data`` and listens on 127.0.0.1 only (a free port), with its
unix socket in ``<folder>/socket`` so nothing under /var/run is needed. Authentication: the superuser ``postgres``
connects without a password over that socket only (to create the role and the database; the socket's folder is the
server's user's alone); over TCP every login needs a password, and ``dagster`` (owner of the database ``dagster``)
gets a random one, which is part of ``url``.

Run as root, the server runs as the OS user ``postgres`` (Postgres refuses to run as root): ``folder`` is handed to
that user, so its parent folders must let it through (a fresh folder under /tmp does; /root and pytest's tmp_path
do not).

By hand: ``python -m mt_services.postgres --dir D`` starts one in the foreground, prints the ``export MT_PG_URL=…``
line that dagster.postgres.yaml reads, and stops it on Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mt_services import free_port
from typing import Iterator

INSTALL = "apt-get install postgresql"
USER = DB = "dagster"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (or no OS user to run them as root)."""


@dataclass(frozen=True)
class PostgresServer:
    url: str  # libpq's form, for psql and psycopg2.connect
    port: int
    folder: Path

    @property
    def dagster_url(self) -> str:
        """What MT_PG_URL must be: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed;
        dagster-postgres ships psycopg2."""
        return self.url.replace("postgresql://", "postgresql+psycopg2://", 1)


def find_bindir() -> Path:
    """The folder of initdb / pg_ctl / psql: ``pg_config --bindir`` when it has them, else the newest
    /usr/lib/postgresql/<version>/bin (Debian's client-only ``pg_config`` may point where no server is installed)."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                      if Path(p).parent.name.isdigit() else 0, reverse=True)
    candidates += [Path(p) for p in versions]
    for d in candidates:
        if all((d / b).is_file() for b in ("initdb", "pg_ctl", "psql")):
            return d
    raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl, psql) not found via `pg_config --bindir` "
                              f"or /usr/lib/postgresql/*/bin: install them ({INSTALL})")


@contextlib.contextmanager
def postgres_server(folder: Path, port: int | None = None) -> Iterator[PostgresServer]:
    """Start a fresh PostgreSQL cluster in ``folder`` (absent or empty), yield its ``url`` and ``port`` once it
    accepts connections, stop it (``pg_ctl stop -m fast``) on exit, also when the body raises."""
    bindir = find_bindir()
    folder = Path(folder).resolve()
    data, sock, log = folder / "data", folder / "socket", folder / "server.log"
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty: postgres_server creates a fresh cluster; remove it or choose "
                              "another folder")
    sock.mkdir(parents=True, exist_ok=True)
    sock.chmod(0o700)  # the socket lets the superuser in without a password: no other OS user may reach it
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(f"running as root needs the OS user postgres to run the server ({INSTALL} "
                                      "creates it)") from None
        for p in (folder, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
        if subprocess.run([*as_user, "test", "-w", str(folder)]).returncode != 0:
            raise PermissionError(f"the OS user postgres cannot reach {folder}: a parent folder does not let it "
                                  "through; use a folder under /tmp")

    def pg(*cmd: str, **kw) -> subprocess.CompletedProcess:
        p = subprocess.run([*as_user, str(bindir / cmd[0]), *cmd[1:]], capture_output=True, text=True, **kw)
        if p.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}\n{tail}")
        return p

    port = port or free_port()
    password = secrets.token_hex(16)
    pg("initdb", "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
       "--encoding=UTF8", "--locale=C")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}"
    # its own session: a Ctrl-C in the terminal reaches this process, which then stops the server itself
    pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(data), "-l", str(log), "-o", opts, start_new_session=True)
    try:
        psql = ("psql", "-h", str(sock), "-p", str(port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1")
        pg(*psql, "-c", f"CREATE ROLE {USER} LOGIN PASSWORD '{password}'")
        pg(*psql, "-c", f"CREATE DATABASE {DB} OWNER {USER}")
        url = f"postgresql://{USER}:{password}@127.0.0.1:{port}/{DB}"
        pg("psql", url, "-c", "SELECT 1")  # the URL itself, over TCP with the password: what Dagster will do
        yield PostgresServer(url=url, port=port, folder=folder)
    finally:
        pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(data))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mt_services.postgres", description="Start a fresh PostgreSQL server "
                                 "for the Dagster instance in the foreground; Ctrl-C stops it.")
    ap.add_argument("--dir", required=True, type=Path, help="an absent or empty folder for the cluster")
    ap.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (default: a free one)")
    args = ap.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a kill or a closed terminal stops the server too, like Ctrl-C
        signal.signal(sig, signal.default_int_handler)
    try:
        with postgres_server(args.dir, args.port) as pg:
            print(f"export MT_PG_URL='{pg.dagster_url}'", flush=True)
            print(f"# then: cp dagster.postgres.yaml $DAGSTER_HOME/dagster.yaml  (Ctrl-C stops the server; log "
                  f"{pg.folder / 'server.log'})", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    except (OSError, RuntimeError) as e:
        raise SystemExit(f"mt_services.postgres: {e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
