"""The deployed shape for the benchmarks: N instances of the real `chainlit run` behind Debian's
nginx (deploy/nginx.conf), on one throwaway PostgreSQL, answered by the fake Gemini server in a
process of its own. The same pieces as the cluster tests (tests/cluster.py, tests/postgres.py).

    with FakeUpstream() as fake, Postgres() as postgres:
        with Stack(2, fake.url, postgres.database()) as stack:
            ...  # browsers reach stack.url (nginx); stack.pids are the instances'

Each stack runs in local mode (no accounts: one login through ``/auth/header``), so a benchmark
needs no password hashing per browser; browsers tell nginx nothing but the route cookie it set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.app_process import ROOT
from tests.cluster import Cluster, cluster_env, find_nginx
from tests.fake_gemini import DEFAULT_KEY
from tests.postgres import PostgresCluster, find_bin


class FakeUpstream:
    """The fake Gemini server (tests/fake_gemini.py) as a process: its CPU is not the bench's."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> FakeUpstream:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_gemini"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        self.url = self.process.stdout.readline().strip()
        if not self.url:
            self.__exit__()
            raise RuntimeError("the fake Gemini server did not start")
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(10)


class Postgres:
    """A throwaway PostgreSQL cluster; ``database()`` gives a fresh empty database."""

    def __enter__(self) -> PostgresCluster:
        bin_dir = find_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.cluster = PostgresCluster(bin_dir).start()
        return self.cluster

    def __exit__(self, *exc) -> None:
        self.cluster.stop()


def app_settings(fake_url: str, database_url: str, **overrides: str) -> dict[str, str]:
    """What every benchmarked instance runs with: the fake upstream, the shared database, the
    limits a benchmark would trip over switched off; ``overrides`` win."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "OPENAI_"))}
    env.pop("CI", None)  # Chainlit's own CI mode is not how the app is run
    env.update(
        GEMINI_API_KEY=DEFAULT_KEY,
        GEMINI_BASE_URL=fake_url,
        CHAINLIT_ENV_FILE="/nonexistent/.env",
        DATABASE_URL=database_url,
        USER_MESSAGES_PER_MINUTE="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(overrides)
    return cluster_env(env)


class Stack:
    """``instances`` app processes behind nginx; the browsers' address is ``url``."""

    def __init__(self, instances: int, fake_url: str, database_url: str, **settings: str) -> None:
        if find_nginx() is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        self.cluster = Cluster(
            app_settings(fake_url, database_url, **settings),
            size=instances,
            database_url=database_url,
        )

    def __enter__(self) -> Stack:
        try:
            self.cluster.launch()
        except BaseException:
            self.cluster.stop()  # the instances (and nginx) that did start
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cluster.stop()

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def pids(self) -> list[int]:
        return [server.pid for server in self.cluster.instances]

    @property
    def nginx_pid(self) -> int:
        return self.cluster.nginx.pid

    @property
    def directories(self) -> list[Path]:
        return self.cluster.directories

    def tabs_served(self, since: float = 0.0) -> list[int]:
        """How many tabs nginx gave each instance since ``since`` (epoch seconds), from its
        access log: a tab's first socket request (the polling handshake, or its websocket when it
        connects by websocket alone) is the one without an engine.io ``sid``."""
        counts = [0] * len(self.pids)
        for served in self.cluster.served():
            if (
                served.uri.startswith("/ws/socket.io")
                and "sid=" not in served.uri
                and served.started >= since
                and served.upstream
            ):
                counts[self.cluster.index_of(served.upstream)] += 1
        return counts
