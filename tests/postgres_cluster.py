"""A throwaway PostgreSQL cluster on a loopback port, for tests that need a
real multi-client database. Needs the server binaries (initdb, pg_ctl)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile


def server_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def postgres_cluster():
    """Yield a SQLAlchemy URL of a fresh cluster's ``postgres`` database
    (trust authentication on 127.0.0.1 only); stop and delete it afterwards.
    PostgreSQL refuses to run as root, so as root the server runs as the
    ``postgres`` system user."""
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    folder = tempfile.mkdtemp(prefix="recurse-pg-")
    os.chmod(folder, 0o755)
    prefix = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), _free_port()

    def run(*command):
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    try:
        run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        run(pg_ctl, "-D", data, "-l", os.path.join(folder, "server.log"), "-w", "start",
            "-o", f"-p {port} -h 127.0.0.1 -k {folder} -F")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(Exception):
            run(pg_ctl, "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
