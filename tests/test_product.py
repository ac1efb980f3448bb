"""The product around the code: Chainlit settings, public assets, documentation that matches
the settings, tracing off, the key kept from the browser, cross-site sockets refused."""

from __future__ import annotations

import asyncio
import re
import tomllib
import urllib.request
from pathlib import Path

import pytest
import socketio
from agents.testing import ScriptedModel

from gemini_chat.config import ENVIRONMENT, load_settings
from gemini_chat.llm import build_backend
from gemini_chat.streaming import ReplyStream
from tests.chat_client import ChatClient
from tests.fake_gemini import DEFAULT_KEY, Reply, invalid_key
from tests.fake_models import streamed_reply

ROOT = Path(__file__).resolve().parent.parent


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


# --- settings and assets ------------------------------------------------------------------------


def test_chainlit_config_is_set_for_this_product():
    config = tomllib.loads((ROOT / ".chainlit" / "config.toml").read_text())
    assert config["UI"]["name"] == "Gemini"
    assert config["features"]["unsafe_allow_html"] is False
    # Uploads on, with the page's limits the ones the server enforces (attachments.py).
    upload = config["features"]["spontaneous_file_upload"]
    assert (upload["enabled"], upload["max_size_mb"], upload["max_files"]) == (True, 10, 10)
    assert upload["accept"] == {}  # the server judges each file (attachments.py)
    assert 60 <= config["project"]["session_timeout"] <= 3600
    assert config["project"]["allow_origins"] != ["*"]
    assert (ROOT / "chainlit.md").read_text().startswith("# Gemini chat")


async def test_logo_favicon_avatar_and_theme_are_served(app):
    for path, marker in [
        ("/favicon", b"<svg"),
        ("/logo?theme=light", b"Gemini chat"),
        ("/logo?theme=dark", b"Gemini chat"),
        ("/avatars/Gemini", b"<circle"),
        ("/public/theme.json", b"--primary"),
    ]:
        status, headers, body = await asyncio.to_thread(http_get, app.url + path)
        assert status == 200 and marker in body, path
    status, headers, _ = await asyncio.to_thread(http_get, app.url + "/")
    # Markdown images from answers may only load from this server.
    assert "img-src 'self'" in headers["content-security-policy"]


# --- documentation ------------------------------------------------------------------------------


def test_env_example_and_readme_document_every_setting_in_the_same_order():
    variables = [variable for variable, _, _ in ENVIRONMENT]
    example = re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M)
    readme = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M)
    assert example == variables
    assert table == variables


def test_documented_defaults_are_the_real_defaults():
    defaults = load_settings({})
    example = dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    for variable, parse, field in ENVIRONMENT:
        if example[variable]:
            assert parse(example[variable]) == getattr(defaults, field), variable


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert commands == ["uv run chainlit run chatbot.py -w", "uv run pytest"]
    assert "\nuv run pytest\n" in (ROOT / ".ci" / "run").read_text()


# --- tracing and secrets ------------------------------------------------------------------------


async def test_tracing_is_off_and_nothing_is_exported(monkeypatch):
    from agents.tracing import processors

    exported: list = []
    monkeypatch.setattr(
        processors.BackendSpanExporter, "export", lambda self, items: exported.extend(items)
    )
    settings = load_settings({"GEMINI_API_KEY": "k", "GEMINI_MAX_RETRIES": "0"})
    backend = build_backend(settings, ScriptedModel([streamed_reply("Hi")], emit_traces=True))
    assert backend.run_config.tracing_disabled

    async def sink(text: str) -> None:
        pass

    assert await ReplyStream(backend, sink).run([{"role": "user", "content": "hi"}]) == "Hi"
    from agents.tracing import get_trace_provider

    get_trace_provider().force_flush()
    assert exported == []


async def test_the_key_never_reaches_the_browser(app, chat, gemini):
    gemini.script(invalid_key())
    await chat.ask("Hello")
    await chat.ask("Again")
    for path in ["/", "/project/settings?language=en-US", "/auth/config", "/user"]:
        try:
            _, _, body = await asyncio.to_thread(http_get, app.url + path, chat.headers)
        except urllib.error.HTTPError as error:
            body = error.read()
        assert DEFAULT_KEY.encode() not in body, path
    assert DEFAULT_KEY not in repr(chat.events)
    assert DEFAULT_KEY not in app.log()


# --- cross-site sockets -------------------------------------------------------------------------


async def test_a_socket_from_another_site_is_refused(app, gemini):
    refused = ChatClient(app.url)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(origin="https://evil.example")
    await refused.disconnect()
    client = await ChatClient(app.url).connect(origin=app.url)
    await client.wait_for(client.assistant_messages, what="the welcome")
    await client.disconnect()
    assert "Refused a chat connection from origin 'https://evil.example'" in app.log()


async def test_the_server_log_under_watch_says_what_matters_and_nothing_else(
    start_app_with, gemini
):
    # The README's command runs with -w, and the chat database sits in the watched folder.
    app = start_app_with(watch=True)
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    gemini.script(Reply("One."), Reply("Two."))
    await client.ask("First")
    await client.ask("Second")
    # What the page asks for when it loads: the settings, with the browser's language.
    settings = urllib.request.Request(
        app.url + "/project/settings?language=en-US", headers=client.headers
    )
    with await asyncio.to_thread(urllib.request.urlopen, settings) as response:
        assert response.status == 200
    await client.disconnect()
    # A new Python file makes the watcher report, after everything it saw before it.
    (app.directory / "probe.py").write_text("")
    await wait_for_log(app, "probe.py. Reloading app")
    log = app.log()
    assert "Serving Gemini with model" in log
    for noise in ("changes detected", "change detected", "Translated markdown", "httpx2"):
        assert noise not in log, noise
    assert "ERROR" not in log  # the reload set the app up again without complaint


async def wait_for_log(app, text: str, timeout: float = 15.0) -> None:
    # The child process offers no event to wait on; poll its log.
    deadline = asyncio.get_running_loop().time() + timeout
    while text not in app.log():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{text!r} never appeared in the log:\n{app.log()[-3000:]}")
        await asyncio.sleep(0.1)


def test_without_a_key_the_log_does_not_claim_to_serve_gemini(start_app_with):
    app = start_app_with(GEMINI_API_KEY="")
    log = app.log()
    assert "GEMINI_API_KEY is not set" in log
    assert "Serving" not in log and "https://" not in log
