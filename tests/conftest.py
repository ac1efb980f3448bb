"""Shared fixtures: isolation from the developer's environment, the network guard, the fake
Gemini server and the real `chainlit run` process."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from gemini_chat.config import ENVIRONMENT

# Before anything imports chainlit: it loads ./.env on import, and a developer's own key or
# settings must not leak into the tests. The live smoke test keeps the key aside.
LIVE_GEMINI_KEY = os.environ.pop("GEMINI_API_KEY", None)
_SETTINGS = {variable for variable, _, _ in ENVIRONMENT}
for _name in list(os.environ):
    if _name in _SETTINGS or _name.startswith(("GEMINI_", "ASSISTANT_", "OPENAI_")):
        del os.environ[_name]
os.environ["CHAINLIT_ENV_FILE"] = "/nonexistent/.env"

# Assertions on the page retry until they hold; with every core busy (tests run in parallel,
# each with an app, a fake server and a browser) a page can take longer than Playwright's 5 s.
expect.set_options(timeout=15_000)

from tests.app_process import (  # noqa: E402
    ROOT,
    AppServer,
    app_directory,
    free_port,
    start_app,
)
from tests.chromium import CHROMIUM, launch_chromium  # noqa: E402
from tests.fake_gemini import DEFAULT_KEY, FakeGemini  # noqa: E402

__all__ = ["ROOT", "AppServer", "app_directory", "free_port"]


# --- Chromium ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package")
    return CHROMIUM


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the end of each app's log it used, and its browser
    fixture learns it failed (to print what its pages showed)."""
    report = yield
    if report.when == "call":
        item.call_failed = report.failed
        if report.failed:
            for name, value in getattr(item, "funcargs", {}).items():
                if isinstance(value, AppServer):
                    tail = "\n".join(value.log().splitlines()[-60:])
                    report.sections.append((f"end of the app's log ({name})", tail))
    return report


@pytest.fixture
async def browser(request, chromium_path):
    async with launch_chromium(chromium_path) as browser:
        yield browser
        if getattr(request.node, "call_failed", False):
            # What each open page showed when the test failed, to read in CI's output.
            for context in browser.contexts:
                for page in context.pages:
                    try:
                        text = (await page.locator("body").inner_text(timeout=5_000))[-3000:]
                    except Exception as error:  # the page may be closing
                        text = f"(not readable: {type(error).__name__})"
                    print(f"--- page {page.url} showed:\n{text}")


@pytest.fixture
async def page(app, browser):
    """A new chat in the app, in a context of its own (so a test can open a second tab in the
    same browser profile)."""
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    page = await context.new_page()
    await page.goto(app.url)
    await page.get_by_text("Ask me anything").wait_for(timeout=30_000)
    return page


# --- the guard: nothing in a test run may reach the real Gemini host ---------------------------


class RealGeminiBlocked(ConnectionError):
    pass


@pytest.fixture(autouse=True)
def block_real_gemini(request, monkeypatch):
    """Any lookup of Google's API host in this process fails the test loudly."""
    if request.node.get_closest_marker("live"):
        return
    real_getaddrinfo = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if host and str(host).rstrip(".").endswith("googleapis.com"):
            raise RealGeminiBlocked(f"test tried to reach {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def guarded_env(**overrides: str) -> dict[str, str]:
    """Environment for a child process: no proxy-free way out except loopback."""
    # Nor CI, which a CI machine sets: it turns on Chainlit's own CI mode (a log line before
    # the app's logging is set up, a made-up OPENAI_API_KEY), not how the app is run.
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "CI")}
    # Any request not to loopback goes to a closed local port and fails at once.
    env.update(
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        ALL_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
        CHAINLIT_ENV_FILE="/nonexistent/.env",
    )
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


# --- the fake Gemini server --------------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_gemini_server() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
def gemini(fake_gemini_server: FakeGemini) -> Iterator[FakeGemini]:
    """The fake Gemini, with an empty script and request log for this test."""
    fake_gemini_server.reset()
    yield fake_gemini_server
    fake_gemini_server.reset()


# --- the real app ------------------------------------------------------------------------------


def app_env(gemini: FakeGemini, **overrides: str) -> dict[str, str]:
    """Settings of the shared test app: fast stall detection, short retry cap and grace."""
    base = {
        "GEMINI_API_KEY": DEFAULT_KEY,
        "GEMINI_BASE_URL": gemini.base_url,
        "GEMINI_STALL_TIMEOUT": "1.5",
        "GEMINI_MAX_RETRY_WAIT": "2",
        "DISCONNECT_GRACE_SECONDS": "1.5",
        # A test's app stopped mid-answer exits soon (the drain tests set their own).
        "DRAIN_SECONDS": "1",
    }
    base.update(overrides)
    return guarded_env(**base)


@pytest.fixture(scope="session")
def app(fake_gemini_server: FakeGemini) -> Iterator[AppServer]:
    """The real `chainlit run chatbot.py`, shared by the tests that need no special settings."""
    server = start_app(app_env(fake_gemini_server))
    yield server
    server.stop()


@pytest.fixture
def start_app_with(fake_gemini_server: FakeGemini):
    """Start a dedicated app with extra settings; stopped at the end of the test."""
    servers: list[AppServer] = []

    def start(
        wait: bool = True, directory: Path | None = None, watch: bool = False, **overrides: str
    ) -> AppServer:
        env = app_env(fake_gemini_server, **overrides)
        server = start_app(env, wait=wait, directory=directory, watch=watch)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
async def chat(app: AppServer, gemini: FakeGemini):
    """A connected browser-like client of the shared app, with the welcome on screen."""
    from tests.chat_client import ChatClient

    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    yield client
    await client.disconnect()


# --- handlers without a server ------------------------------------------------------------------


@pytest.fixture
async def chainlit_context():
    """A Chainlit context with a mock session and an AsyncMock emitter: what the handlers
    sent to the browser is in ``context.emitter``'s calls."""
    from unittest.mock import AsyncMock, Mock

    from chainlit.context import ChainlitContext, context_var
    from chainlit.emitter import BaseChainlitEmitter
    from chainlit.session import WebsocketSession

    session = Mock(spec=WebsocketSession)
    session.id = "unit-session"
    session.thread_id = "unit-thread"
    session.socket_id = "unit-socket"
    session.user = None
    session.user_env = {}
    session.chat_settings = {}
    session.chat_profile = None
    session.client_type = "webapp"
    session.languages = ["en"]
    session.has_first_interaction = True
    emitter = AsyncMock(spec=BaseChainlitEmitter)
    # Async in the base class, but the real emitter's is a plain method and Chainlit calls it so.
    emitter.set_chat_settings = Mock()
    context = ChainlitContext(session, emitter)
    token = context_var.set(context)
    yield context
    context_var.reset(token)
    from chainlit.user_session import user_sessions

    user_sessions.pop(session.id, None)


# --- the chat database, on both stores ---------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster():
    from tests.postgres import PostgresCluster, find_bin

    bin_dir = find_bin()
    if bin_dir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = PostgresCluster(bin_dir).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    """An empty chat database: an SQLite file, or a fresh database on a throwaway cluster."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    return request.getfixturevalue("postgres_cluster").database()
