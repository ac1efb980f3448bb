"""Operations: liveness and readiness, the Prometheus metrics behind their token, JSON log lines.

Against the real `chainlit run` (and a real PostgreSQL for readiness), the fake Gemini and the
socket client; the bearer check, the formatter and readiness while draining also in-process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gemini_chat.health import Operations, bearer_allowed
from gemini_chat.lifecycle import lifecycle
from gemini_chat.logs import JsonFormatter, SecretFilter, request_id, sane_request_id
from tests.chat_client import ChatClient
from tests.fake_gemini import DEFAULT_KEY, Reply, internal_error, rate_limit_per_minute

TOKEN = "metrics-token-5f2a9c"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, str]:
    """Status, headers (any case) and body of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode(errors="replace")


def scrape(url: str, token: str = TOKEN) -> dict[tuple[str, tuple], float]:
    """The metrics page as {(sample name, sorted labels): value}."""
    status, _, body = get(url + "/metrics", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def scraped_until(url: str, holds, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not holds(scrape(url)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def key(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get(key(name, **labels), 0.0)


def changes(before: dict, after: dict, *keys: tuple) -> dict:
    """How much each of ``keys`` (``key(...)``) grew between two scrapes."""
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}


# --- liveness and readiness ----------------------------------------------------------------------


def test_liveness_and_readiness_answer_without_login(app):
    assert get(app.url + "/healthz")[::2] == (200, '{"status":"alive"}')
    status, headers, body = get(app.url + "/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    assert headers["Cache-Control"] == "no-store"
    assert headers.get_all("Set-Cookie") is None


def test_operations_endpoints_pass_the_local_mode_check_and_nothing_else_does(app):
    """A probe or Prometheus may use any host name; every other path stays refused."""
    other_host = {"Host": "chat.example.com"}
    assert get(app.url + "/healthz", other_host)[0] == 200
    assert get(app.url + "/readyz", other_host)[0] == 200
    assert get(app.url + "/metrics", other_host)[0] == 404  # no token configured
    for path in ("/", "/healthz/", "/healthz/x", "/readyzz", "/metrics/", "/health", "/user"):
        status, _, body = get(app.url + path, other_host)
        assert status == 403, (path, body)
    request = urllib.request.Request(
        app.url + "/healthz", data=b"{}", method="POST", headers=other_host
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=15)
    assert refused.value.code == 403


async def test_in_accounts_mode_the_probes_need_no_login_and_the_rest_still_does(
    start_app_with, tmp_path
):
    from tests.test_accounts import SECRET, accounts_command

    database_url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    added = await asyncio.to_thread(
        accounts_command, database_url, "add", "alice", password="alice-password"
    )
    assert added.returncode == 0, added.stderr
    server = start_app_with(
        DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET, METRICS_TOKEN=TOKEN
    )
    assert get(server.url + "/healthz")[0] == 200
    assert get(server.url + "/readyz")[0] == 200
    assert get(server.url + "/metrics")[0] == 401
    assert (
        "gemini_chat_sessions"
        in get(server.url + "/metrics", {"Authorization": f"Bearer {TOKEN}"})[2]
    )
    assert get(server.url + "/user")[0] == 401


class _Cluster:
    """A PostgreSQL cluster of its own, so that it can be stopped, frozen and started again."""

    def __init__(self) -> None:
        from tests.postgres import PostgresCluster, find_bin

        bin_dir = find_bin()
        if bin_dir is None:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        self.cluster = PostgresCluster(bin_dir).start()

    def pg_ctl(self, *args: str) -> None:
        self.cluster._run("pg_ctl", "-D", str(self.cluster.data), "-w", *args)

    def down(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def up(self) -> None:
        options = (
            f"-p {self.cluster.port} -k {self.cluster.directory} "
            "-c listen_addresses=127.0.0.1 -c fsync=off"
        )
        self.pg_ctl("-o", options, "-l", str(self.cluster.directory / "server.log"), "start")

    def processes(self) -> list[int]:
        """The postmaster and its children (the connections' backends)."""
        postmaster = int((self.cluster.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True
        ).stdout.split()
        return [postmaster, *map(int, children)]


@pytest.fixture
def own_postgres():
    cluster = _Cluster()
    yield cluster
    cluster.cluster.stop()


def wait_for_status(url: str, wanted: int, timeout: float = 20.0) -> tuple[int, str, float]:
    """Poll readiness (a probe has no event to wait on) until it answers ``wanted``."""
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        status, _, body = get(url + "/readyz")
        took = time.monotonic() - started
        if status == wanted or time.monotonic() > deadline:
            return status, body, took
        time.sleep(0.2)


def test_readiness_says_database_unavailable_while_postgresql_is_down(start_app_with, own_postgres):
    server = start_app_with(DATABASE_URL=own_postgres.cluster.database())
    assert get(server.url + "/readyz")[0] == 200
    own_postgres.down()
    status, body, _ = wait_for_status(server.url, 503)
    assert (status, json.loads(body)) == (503, {"status": "database unavailable"})
    assert get(server.url + "/healthz")[0] == 200  # alive all the same: no restart wanted
    own_postgres.up()
    status, body, _ = wait_for_status(server.url, 200)
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    assert "Readiness: the database did not answer" in server.log()


def test_readiness_gives_up_on_a_frozen_database_within_two_seconds(start_app_with, own_postgres):
    server = start_app_with(DATABASE_URL=own_postgres.cluster.database())
    assert get(server.url + "/readyz")[0] == 200
    frozen = own_postgres.processes()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, _, body = get(server.url + "/readyz")
        took = time.monotonic() - started
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert (status, json.loads(body)) == (503, {"status": "database unavailable"})
    assert 1.9 <= took < 3.5, took
    status, body, _ = wait_for_status(server.url, 200)
    assert status == 200, body


async def test_readiness_says_draining_while_the_instance_drains(tmp_path):
    from sqlalchemy.ext.asyncio import create_async_engine
    from starlette.requests import Request

    layer = SimpleNamespace(engine=create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/c.db"))
    operations = Operations(lambda: SimpleNamespace(data_layer=layer))
    request = Request({"type": "http", "method": "GET", "path": "/readyz", "headers": []})
    try:
        response = await operations.readyz(request)
        assert (response.status_code, json.loads(response.body)) == (200, {"status": "ready"})
        lifecycle.draining = True
        response = await operations.readyz(request)
        assert (response.status_code, json.loads(response.body)) == (503, {"status": "draining"})
    finally:
        lifecycle.draining = False
        await layer.engine.dispose()
    response = await operations.readyz(request)
    assert response.status_code == 200


# --- the metrics' token --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"  Bearer   {TOKEN}  ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN.upper()}", False),
    ],
)
def test_bearer_check(header, allowed):
    assert bearer_allowed(header, TOKEN) is allowed


def test_no_token_configured_allows_nobody():
    assert not bearer_allowed("Bearer ", None)
    assert not bearer_allowed("Bearer ", "")
    assert not bearer_allowed("Bearer None", None)


def test_metrics_do_not_exist_without_a_token(app):
    status, _, body = get(app.url + "/metrics", {"Authorization": "Bearer anything"})
    assert (status, body) == (404, "Not Found")
    assert get(app.url + "/metrics")[0] == 404


def test_metrics_need_the_token(start_app_with):
    server = start_app_with(METRICS_TOKEN=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, response_headers, body = get(server.url + "/metrics", headers)
        assert (status, body) == (401, "Unauthorized"), headers
        assert response_headers["WWW-Authenticate"] == "Bearer"
        assert "gemini_chat" not in body
    status, headers, body = get(server.url + "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(body)}
    assert names >= {
        "gemini_chat_messages",
        "gemini_chat_first_token_seconds",
        "gemini_chat_answer_seconds",
        "gemini_chat_tokens",
        "gemini_chat_upstream_errors",
        "gemini_chat_retries",
        "gemini_chat_streams_in_flight",
        "gemini_chat_sessions",
        "gemini_chat_database_seconds",
    }
    assert TOKEN not in server.log()


# --- what the metrics count ---------------------------------------------------------------------


@pytest.fixture
def metered(start_app_with):
    return start_app_with(METRICS_TOKEN=TOKEN)


async def test_a_chat_turn_is_counted(metered, gemini):
    client = await ChatClient(metered.url).connect()
    try:
        await client.wait_for(client.assistant_messages, what="the welcome message")
        before = scrape(metered.url)
        assert value(before, "gemini_chat_sessions") == 1
        gemini.script(
            Reply(
                chunks=["One ", "two ", "three."],
                delay=0.4,
                prompt_tokens=321,
                completion_tokens=7,
                thinking_tokens=12,
            )
        )
        client.mark()
        await client.send("Count to three")
        # While it streams: one stream in flight.
        await client.wait_for(
            lambda: any(m.content.startswith("One") for m in client.assistant_messages()),
            what="the first words",
        )
        assert value(scrape(metered.url), "gemini_chat_streams_in_flight") == 1
        await client.wait_idle()
        assert client.assistant_messages()[-1].content == "One two three."
        after = scrape(metered.url)
    finally:
        await client.disconnect()
    assert changes(
        before,
        after,
        key("gemini_chat_messages_total", outcome="answered"),
        key("gemini_chat_messages_total", outcome="failed"),
        key("gemini_chat_first_token_seconds_count"),
        key("gemini_chat_answer_seconds_count"),
        key("gemini_chat_tokens_total", kind="input"),
        key("gemini_chat_tokens_total", kind="output"),
        key("gemini_chat_tokens_total", kind="thinking"),
        key("gemini_chat_retries_total"),
    ) == {
        key("gemini_chat_messages_total", outcome="answered"): 1,
        key("gemini_chat_messages_total", outcome="failed"): 0,
        key("gemini_chat_first_token_seconds_count"): 1,
        key("gemini_chat_answer_seconds_count"): 1,
        key("gemini_chat_tokens_total", kind="input"): 321,
        key("gemini_chat_tokens_total", kind="output"): 7,
        key("gemini_chat_tokens_total", kind="thinking"): 12,
        key("gemini_chat_retries_total"): 0,
    }
    assert value(after, "gemini_chat_streams_in_flight") == 0
    # The answer took 0.8 s of pacing after its first piece; its first piece came before that.
    first = value(after, "gemini_chat_first_token_seconds_sum") - value(
        before, "gemini_chat_first_token_seconds_sum"
    )
    whole = value(after, "gemini_chat_answer_seconds_sum") - value(
        before, "gemini_chat_answer_seconds_sum"
    )
    assert 0 < first < whole and whole >= 0.8, (first, whole)
    # The turn wrote its messages: statements were timed.
    assert value(after, "gemini_chat_database_seconds_count", statement="insert") > value(
        before, "gemini_chat_database_seconds_count", statement="insert"
    )
    # The server learns of the closed socket a moment later; a scrape has no event to wait on.
    assert scraped_until(metered.url, lambda samples: value(samples, "gemini_chat_sessions") == 0)


async def test_upstream_errors_count_by_kind_with_their_retries(metered, gemini):
    client = await ChatClient(metered.url).connect()
    try:
        await client.wait_for(client.assistant_messages, what="the welcome message")
        before = scrape(metered.url)
        gemini.script(internal_error(), rate_limit_per_minute("0.3s"), Reply("Made it."))
        replies = await client.ask("Try hard", timeout=30)
        assert [m.content for m in replies] == ["Made it."]
        middle = scrape(metered.url)
        # More failures than retries allow (GEMINI_MAX_RETRIES is 2): the answer fails.
        gemini.script(*[internal_error()] * 3)
        replies = await client.ask("Try again", timeout=30)
        assert replies and replies[-1].is_error
        after = scrape(metered.url)
    finally:
        await client.disconnect()
    server_error = key("gemini_chat_upstream_errors_total", kind="UpstreamServerError")
    rate_limited = key("gemini_chat_upstream_errors_total", kind="RateLimited")
    retries = key("gemini_chat_retries_total")
    answered = key("gemini_chat_messages_total", outcome="answered")
    failed = key("gemini_chat_messages_total", outcome="failed")
    keys = (server_error, rate_limited, retries, answered, failed)
    assert changes(before, middle, *keys) == {
        server_error: 1,
        rate_limited: 1,
        retries: 2,
        answered: 1,
        failed: 0,
    }
    # Two failures retried, the third ends the answer: three upstream errors, two retries.
    assert changes(middle, after, *keys) == {
        server_error: 3,
        rate_limited: 0,
        retries: 2,
        answered: 0,
        failed: 1,
    }
    assert value(after, "gemini_chat_streams_in_flight") == 0


async def test_stopped_and_refused_messages_are_counted(metered, gemini):
    client = await ChatClient(metered.url).connect()
    try:
        await client.wait_for(client.assistant_messages, what="the welcome message")
        before = scrape(metered.url)
        client.mark()
        await client.send("   ")  # refused: empty
        await client.wait_for(client.errors, what="the refusal")
        gemini.script(Reply(chunks=["Slow ", "answer"], delay=30))
        client.mark()
        await client.send("Take your time")
        await client.wait_for(
            lambda: any(m.content.startswith("Slow") for m in client.assistant_messages()),
            what="the first words",
        )
        await client.stop()
        await client.wait_idle()
        after = scrape(metered.url)
    finally:
        await client.disconnect()
    assert changes(
        before,
        after,
        key("gemini_chat_messages_total", outcome="refused"),
        key("gemini_chat_messages_total", outcome="stopped"),
        key("gemini_chat_messages_total", outcome="answered"),
    ) == {
        key("gemini_chat_messages_total", outcome="refused"): 1,
        key("gemini_chat_messages_total", outcome="stopped"): 1,
        key("gemini_chat_messages_total", outcome="answered"): 0,
    }
    assert value(after, "gemini_chat_streams_in_flight") == 0


# --- JSON log lines ------------------------------------------------------------------------------

HEX_ID = re.compile(r"[0-9a-f]{32}")


async def test_json_log_lines_carry_chat_and_request_ids_and_no_text_or_key(start_app_with, gemini):
    server = start_app_with(LOG_FORMAT="json", METRICS_TOKEN=TOKEN)
    secret_question = "my-private-question-7731 about the merger"
    client = await ChatClient(server.url).connect()
    try:
        await client.wait_for(client.assistant_messages, what="the welcome message")
        # A turn that logs: two retries, then the answer fails.
        gemini.script(*[internal_error()] * 3)
        replies = await client.ask(secret_question, timeout=30)
        assert replies and replies[-1].is_error
        thread_id = await client.chat_thread()
        await client.ask("x" * 100_001)  # refused as too long: logged in the chat too
    finally:
        await client.disconnect()
    # An HTTP request with the proxy's id, refused by the edge (which logs it).
    status, headers, _ = get(server.url + "/", {"Host": "evil.example", "X-Request-ID": "nginx-42"})
    assert status == 403 and headers["X-Request-ID"] == "nginx-42"
    status, headers, _ = get(server.url + "/healthz", {"X-Request-ID": "bad id; drop table"})
    assert status == 200 and HEX_ID.fullmatch(headers["X-Request-ID"])
    server.stop()

    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert lines, log
    for line in lines:
        assert {"time", "level", "logger", "message", "chat_id", "request_id", "instance"} <= set(
            line
        ), line
        assert line["instance"].endswith(f":{server.port}")
    assert any(line["logger"] == "chainlit" for line in lines)  # Chainlit's own lines too
    turn = [line for line in lines if line["chat_id"] == thread_id]
    assert any(line["message"].startswith("Retrying in") for line in turn), turn
    assert any(line["message"].startswith("Reply failed") for line in turn), turn
    assert any(line["message"].startswith("Refused a message") for line in turn), turn
    # Each socket event has its own request id; one event's lines share it.
    retries = [line for line in turn if line["message"].startswith("Retrying in")]
    refusal = next(line for line in turn if line["message"].startswith("Refused a message"))
    assert all(HEX_ID.fullmatch(line["request_id"]) for line in [*retries, refusal])
    assert len({line["request_id"] for line in retries}) == 1
    assert refusal["request_id"] != retries[0]["request_id"]
    refused = next(line for line in lines if "evil.example" in line["message"])
    assert (refused["request_id"], refused["chat_id"]) == ("nginx-42", None)
    # Never the text sent, the API key or the metrics token.
    assert secret_question not in log and "my-private-question" not in log
    assert DEFAULT_KEY not in log
    assert TOKEN not in log


def test_text_logs_stay_as_they_were(app):
    first = app.log().splitlines()[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)


def test_json_lines_pass_through_the_secret_filter():
    record = logging.LogRecord(
        "gemini_chat", logging.WARNING, __file__, 1, "key %s in %s", ("sk-abc123", "url"), None
    )
    try:
        raise ValueError("failed with sk-abc123")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert SecretFilter("sk-abc123").filter(record)
    token = request_id.set("req-1")
    try:
        line = json.loads(JsonFormatter("host:8000").format(record))
    finally:
        request_id.reset(token)
    assert line["message"] == "key [redacted] in url"
    assert "sk-abc123" not in json.dumps(line)
    assert "ValueError: failed with [redacted]" in line["exception"]
    assert (line["level"], line["logger"], line["request_id"], line["instance"]) == (
        "WARNING",
        "gemini_chat",
        "req-1",
        "host:8000",
    )
    assert line["chat_id"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


async def test_json_lines_name_the_chat_of_the_context(chainlit_context):
    # The fixture's session is a mock of a chat socket's session.
    from chainlit.session import WebsocketSession

    assert isinstance(chainlit_context.session, WebsocketSession)
    record = logging.LogRecord("gemini_chat", logging.INFO, __file__, 1, "x", None, None)
    assert json.loads(JsonFormatter("h:1").format(record))["chat_id"] == "unit-thread"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("0f3c9a1b2d4e5f60718293a4b5c6d7e8", True),
        ("3fa85f64-5717-4562-b3fc-2c963f66afa6", True),
        ("req.1:2_3", True),
        (None, False),
        ("", False),
        ("a b", False),
        ("x" * 129, False),
        ('"}{"level":"CRITICAL', False),
        ("-leading-dash", False),
    ],
)
def test_request_ids_from_the_proxy_are_kept_only_when_plain(given, kept):
    result = sane_request_id(given)
    assert (result == given) is kept
    if not kept:
        assert HEX_ID.fullmatch(result)


def test_readme_names_every_metric():
    from gemini_chat import metrics

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Operations", 1)[1].split("\n## ", 1)[0]
    names = {family.name for family in metrics.registry.collect()}
    assert len(names) == 9
    for name in names:
        assert name in section, name
    for path in ("/healthz", "/readyz", "/metrics", "METRICS_TOKEN", "LOG_FORMAT"):
        assert path in section


def test_request_ids_wrap_each_socket_handler_once_and_again_after_a_reload(caplog, monkeypatch):
    """`chainlit run -w` prepares the server again in the same process: every handler keeps one
    request-id wrapper, the login gate one gate, and the stop handler stays the app's."""
    import inspect

    from chainlit.server import app, sio

    from gemini_chat.auth import install_login_guards
    from gemini_chat.framework import install_stop_without_notice, stop_without_notice
    from gemini_chat.logs import install_request_ids

    def layers(handler) -> int:
        count = 0
        while hasattr(handler, "__wrapped__"):
            handler, count = handler.__wrapped__, count + 1
        return count

    import chainlit.socket

    from gemini_chat import auth

    # What the installs change in this process, put back afterwards.
    monkeypatch.setitem(sio.handlers, "/", dict(sio.handlers["/"]))
    monkeypatch.setattr(chainlit.socket, "get_current_user", chainlit.socket.get_current_user)
    monkeypatch.setattr(auth, "_access", auth._access)
    monkeypatch.setattr(app, "dependency_overrides", dict(app.dependency_overrides))
    monkeypatch.setattr(app, "user_middleware", list(app.user_middleware))
    monkeypatch.setattr(app.state, "request_ids", False, raising=False)
    access = SimpleNamespace(local=True)
    for _ in range(2):
        install_stop_without_notice()
        install_login_guards(access)  # type: ignore[arg-type]
        install_request_ids(app, sio)
    handlers = sio.handlers["/"]
    assert all(getattr(h, "request_id", False) for h in handlers.values())
    assert layers(handlers["client_message"]) == 2  # request id, login gate
    assert layers(handlers["connect"]) == 1
    assert inspect.unwrap(handlers["stop"]) is stop_without_notice
    assert "not where expected" not in caplog.text
