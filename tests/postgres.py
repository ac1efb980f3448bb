"""A throwaway PostgreSQL cluster for the tests, from Debian's postgresql package.

``PostgresCluster.start()`` runs initdb in a temporary directory and starts the server on a free
loopback port; ``database()`` hands out a fresh, empty database per test. As root (CI), the
server runs as the ``postgres`` system user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def find_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.directory = Path(tempfile.mkdtemp(prefix="gemini-chat-pg-"))
        self.data = self.directory / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> str:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self) -> PostgresCluster:
        if self.as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.directory / "server.log"),
            "start",
        )
        self._psql("CREATE ROLE chat LOGIN PASSWORD 'chat-secret-pw'")
        return self

    def _psql(self, sql: str) -> None:
        self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        )

    def go_down(self) -> None:
        """The server stops at once, as a crash would (``come_back`` starts it again)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def come_back(self) -> None:
        """Start the server again on the same port (pg_ctl reuses the options it was started
        with, from postmaster.opts)."""
        log = str(self.directory / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", log, "restart")

    def database(self) -> str:
        """A new empty database owned by the app's role; its SQLAlchemy URL."""
        name = f"chat_{uuid.uuid4().hex[:12]}"
        self._psql(f"CREATE DATABASE {name} OWNER chat")
        return f"postgresql+asyncpg://chat:chat-secret-pw@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
