"""The real app as a child process: `chainlit run chatbot.py` in a directory of its own."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_FILES = ("chatbot.py", "gemini_chat", ".chainlit", "public", "chainlit.md")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AppServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    directory: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """Die at once (SIGKILL), as a crashed machine would: nothing is finished or stored."""
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def app_directory() -> Path:
    """A directory holding the app (by symlink) and nothing else: no developer .env."""
    directory = Path(tempfile.mkdtemp(prefix="gemini-chat-app-"))
    for name in APP_FILES:
        (directory / name).symlink_to(ROOT / name)
    return directory


def start_app(
    env: dict[str, str],
    wait: bool = True,
    directory: Path | None = None,
    watch: bool = False,
    port: int | None = None,
) -> AppServer:
    """Start `chainlit run` in ``directory`` (a fresh one by default), with its own SQLite
    database there unless ``env`` names one; ``watch`` adds `-w`, as the README's command.
    ``port``: the port to listen on (an instance started again where a page knows it)."""
    directory = directory or app_directory()
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{directory}/chats.db", **env}
    port = port or free_port()
    log_path = directory / "server.log"
    # Appended to: an instance started again in the same directory keeps the earlier log.
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "chainlit", "run", "chatbot.py", "--headless"),
            *(("-w",) if watch else ()),
            *("--port", str(port)),
        ],
        cwd=directory,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = AppServer(f"http://127.0.0.1:{port}", process, log_path, directory)
    if wait:
        wait_until_serving(server)
    return server


def wait_until_serving(server: AppServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"app exited with {server.process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (OSError, http.client.HTTPException):
            # Not up yet; or, while it is not, another test's server answered on a port
            # recently handed out to this one.
            pass
        # The child process offers no event to wait on; poll its health endpoint.
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"app did not start within {timeout}s:\n{server.log()}")
