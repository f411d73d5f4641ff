"""A Postgres server of this test run's own, so a test can stop it and start it again.

The shared server on 5432 serves every other test; stopping it would break them. This one
lives in a temporary directory, listens on a free port and is owned by the `postgres` OS user
(Postgres refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from support import free_port, wait_for_port

_USER = "postgres"


def _bin(name: str) -> str:
    found = next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                 None) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the PostgreSQL server package")
    return found


class PrivatePostgres:
    """Remove `root` (a directory of its own, not under a private tmp dir) when done."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="faregate-pg-"))
        root = self.root
        self.data = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", _USER, "--"]
            entry = pwd.getpwnam(_USER)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c shared_buffers=32MB -c max_connections=50")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                  str(self.data / "server.log"), "-w", "start")
        wait_for_port(self.port)

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in a failover or a crash."""
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        if self.running():
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def running(self) -> bool:
        return subprocess.run([*self._as_user, _bin("pg_ctl"), "-D", str(self.data), "status"],
                              capture_output=True, check=False).returncode == 0

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as_user, *command], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr or done.stdout}")
