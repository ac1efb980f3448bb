"""Several instances of the real app behind Debian's nginx, on one PostgreSQL database, as
deploy/ runs them: the harness of the cluster tests.

``Cluster.launch()`` starts N instances of `chainlit run` (tests/app_process.py) on the database
it is given, and nginx as an ordinary user in a temporary prefix, with deploy/nginx.conf
rendered by deploy/render-nginx.sh for the instances' ports. Tests reach the app at ``url``
(nginx), stop instances with ``kill(i)`` (SIGKILL) or ``term(i)`` (SIGTERM), start one again on
its port with ``start(i)``, and read which instance served each request from nginx's access log
(``served()``). Each instance has a short name (i1, i2, ...), which nginx's route cookie
carries; tests tell their browsers apart in nginx's log by the user agent each one sends
(``browser_agent()``).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.app_process import (
    ROOT,
    AppServer,
    app_directory,
    free_port,
    start_app,
    wait_until_serving,
)

RENDER = ROOT / "deploy" / "render-nginx.sh"


def find_nginx() -> str | None:
    # Debian installs it in /usr/sbin, which an ordinary user's PATH may lack.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


@dataclass
class Served:
    """One request as nginx's access log tells it."""

    method: str
    uri: str
    status: int
    route: str  # the route cookie the browser sent (an instance's name), "" without one
    agent: str  # the browser's user agent
    # The instances tried, in order ("127.0.0.1:PORT"); the last one answered.
    upstreams: list[str]
    msec: float  # when it ended
    seconds: float  # how long it took

    @property
    def started(self) -> float:
        return self.msec - self.seconds

    @property
    def upstream(self) -> str:
        return self.upstreams[-1] if self.upstreams else ""


@dataclass
class Cluster:
    env: dict[str, str]
    size: int = 2
    # The database the instances share (for tests that read what was stored).
    database_url: str = ""
    # How long nginx leaves out an instance that failed (deploy/render-nginx.sh's FAIL_TIMEOUT).
    fail_timeout: str = "10s"
    instances: list[AppServer] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)
    nginx: subprocess.Popen | None = None
    prefix: Path | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle

    def launch(self) -> Cluster:
        """Start the instances, then nginx in front of them."""
        nginx = find_nginx()
        if nginx is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        self.ports = [free_port() for _ in range(self.size)]
        self.directories = [app_directory() for _ in range(self.size)]
        self.instances = [None] * self.size  # type: ignore[list-item]
        # The first instance alone prepares the database's schema; the others then start together.
        self.start(0)
        for index in range(1, self.size):
            self.start(index, wait=False)
        for server in self.instances[1:]:
            wait_until_serving(server)
        self.start_nginx(nginx)
        return self

    def start(self, index: int, wait: bool = True) -> AppServer:
        """Start instance ``index`` (again) on its port, its log appended to."""
        server = start_app(
            self.env, wait=wait, directory=self.directories[index], port=self.ports[index]
        )
        self.instances[index] = server
        return server

    def start_nginx(self, nginx: str) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="gemini-chat-nginx-"))
        # As root, nginx's workers run as nobody and must reach the prefix.
        self.prefix.chmod(0o755)
        (self.prefix / "logs").mkdir()
        self.port = free_port()
        instances = [f"127.0.0.1:{port}" for port in self.ports]
        config = subprocess.run(
            [str(RENDER), f"127.0.0.1:{self.port}", *instances],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "FAIL_TIMEOUT": self.fail_timeout},
        ).stdout
        (self.prefix / "nginx.conf").write_text(config)
        log = (self.prefix / "logs" / "nginx.out").open("ab")
        self.nginx = subprocess.Popen(
            [nginx, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.nginx_output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, http.client.HTTPException):
                pass
            # nginx offers no event to wait on; poll it as app_process polls the app.
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer within 15 s: {self.nginx_output()}")

    def nginx_output(self) -> str:
        path = self.prefix / "logs" / "nginx.out" if self.prefix else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # nginx's graceful stop
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait(5)
        for server in self.instances:
            if server is not None:
                server.stop()
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)
        for directory in self.directories:
            shutil.rmtree(directory, ignore_errors=True)

    # -- instances dying and coming back

    def kill(self, index: int) -> None:
        """Instance ``index`` dies at once (SIGKILL): nothing is finished or stored."""
        self.instances[index].kill()

    def term(self, index: int) -> None:
        """Ask instance ``index`` to stop (SIGTERM), as a rolling restart does; not waited for."""
        self.instances[index].process.terminate()

    # -- who served what

    def index_of(self, upstream: str) -> int:
        """Which instance an upstream address ("127.0.0.1:PORT") is."""
        return self.ports.index(int(upstream.rsplit(":", 1)[1]))

    def address(self, index: int) -> str:
        """Instance ``index``'s address as nginx's log writes it."""
        return f"127.0.0.1:{self.ports[index]}"

    @staticmethod
    def name(index: int) -> str:
        """Instance ``index``'s name, as the route cookie carries it."""
        return f"i{index + 1}"

    def served(self) -> list[Served]:
        """Every request nginx has logged so far, in order."""
        path = self.prefix / "logs" / "access.log"
        text = path.read_text() if path.exists() else ""
        # A line nginx is writing right now is read once it is whole.
        lines = text.split("\n")[:-1]
        requests = []
        for line in lines:
            entry = json.loads(line)
            upstreams = [
                address.strip()
                for address in entry["upstream"].split(",")
                if address.strip() and address.strip() != "-"
            ]
            requests.append(
                Served(
                    method=entry["method"],
                    uri=entry["uri"],
                    status=int(entry["status"]),
                    route=entry["route"],
                    agent=entry["agent"],
                    upstreams=upstreams,
                    msec=float(entry["msec"]),
                    seconds=float(entry["seconds"]),
                )
            )
        return requests

    def served_for(self, agent: str) -> list[Served]:
        """The requests of one browser (its user agent, from ``browser_agent()``)."""
        return [request for request in self.served() if request.agent == agent]

    def instances_of(self, agent: str) -> set[int]:
        """The instances that answered the requests of one browser."""
        return {self.index_of(r.upstream) for r in self.served_for(agent) if r.upstream}


def browser_agent(kind: str = "browser") -> str:
    """A user agent of its own for one test browser, which tells its requests apart in nginx's
    log (the route cookie names an instance, shared by many browsers)."""
    return f"cluster-test-{kind}/{uuid.uuid4().hex[:12]}"


def cluster_env(base: dict[str, str]) -> dict[str, str]:
    """Settings every instance gets: nginx on this computer is the proxy they believe."""
    return {**base, "FORWARDED_ALLOW_IPS": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
