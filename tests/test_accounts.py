"""Accounts and isolation: the accounts command, login, one user never reaching another's chats,
hostile thread ids refused before SQL, local mode only for this computer."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import uuid

import pytest
import socketio
from sqlalchemy.ext.asyncio import create_async_engine

from gemini_chat.accounts import LoginThrottle, Rule
from gemini_chat.auth import LOCAL_ONLY_MESSAGE
from gemini_chat.schema import prepare_engine_args, upgrade_schema
from tests.chat_client import ChatClient
from tests.conftest import ROOT, guarded_env
from tests.db import eventually, query
from tests.fake_gemini import Reply
from tests.test_persistence import _rows_when, api, stored_steps

SECRET = "test-auth-secret-" + "x" * 40
INJECTION = "t1') OR ('1'='1"


def accounts_command(
    database_url: str, *args: str, password: str = ""
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gemini_chat.accounts", *args],
        cwd=ROOT,
        env=guarded_env(DATABASE_URL=database_url),
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_accounts_command_manages_users_with_hashed_passwords(database_url):
    added = accounts_command(database_url, "add", "alice", password="correct horse")
    assert added.returncode == 0, added.stderr
    assert "restart the app" in added.stdout and "create-secret" in added.stdout
    assert accounts_command(database_url, "add", "bob", password="battery staple").returncode == 0

    listed = accounts_command(database_url, "list")
    assert listed.stdout.split() == ["alice", "bob"]
    rows = dict(await query(database_url, "SELECT identifier, password_hash FROM accounts"))
    assert rows["alice"].startswith("$argon2id$") and "correct horse" not in rows["alice"]

    short = accounts_command(database_url, "add", "carol", password="short")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    again = accounts_command(database_url, "add", "alice", password="another one")
    assert again.returncode == 1 and "already exists" in again.stderr

    assert accounts_command(database_url, "remove", "bob").returncode == 0
    assert accounts_command(database_url, "list").stdout.split() == ["alice"]
    gone = accounts_command(database_url, "remove", "bob")
    assert gone.returncode == 1 and "no user 'bob'" in gone.stderr


async def test_accounts_without_a_secret_stop_the_start_with_how_to_make_one(
    database_url, start_app_with
):
    assert accounts_command(database_url, "add", "alice", password="correct horse").returncode == 0
    server = start_app_with(wait=False, DATABASE_URL=database_url)
    assert await asyncio.to_thread(server.process.wait, 60) != 0
    output = server.log()
    assert "chainlit create-secret" in output and "CHAINLIT_AUTH_SECRET" in output
    assert "Traceback" not in output


async def test_with_accounts_everyone_logs_in_and_sees_only_their_own_chats(
    database_url, start_app_with, gemini
):
    for name, password in [("alice", "alice-password"), ("bob", "bob-password")]:
        assert accounts_command(database_url, "add", name, password=password).returncode == 0
    app = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)

    # No way in without logging in.
    stranger = ChatClient(app.url)
    status, config = await api(stranger, "GET", "/auth/config")
    assert config["passwordAuth"] is True and config["headerAuth"] is False
    with pytest.raises(urllib.error.HTTPError):
        await stranger.login_local()
    with pytest.raises(urllib.error.HTTPError):
        await stranger.login("alice", "wrong password")
    stranger.headers["Cookie"] = "access_token=forged"
    with pytest.raises(socketio.exceptions.ConnectionError):
        await stranger.connect()

    alice = ChatClient(app.url)
    await alice.login("alice", "alice-password")
    await alice.connect()
    await alice.wait_for(alice.assistant_messages)
    gemini.script(Reply("Alice's answer."))
    (reply,) = await alice.ask("Alice's secret plan")
    thread = await alice.chat_thread()
    await alice.disconnect()
    await eventually(lambda: _rows_when(database_url, thread, 3), what="alice's chat stored")
    status, rated = await api(
        alice,
        "PUT",
        "/feedback",
        {
            "sessionId": alice.session_id,
            # As the frontend does: it rates the run step around the answer.
            "feedback": {
                "forId": reply.parent_id,
                "threadId": thread,
                "value": 1,
                "comment": "Spot on",
            },
        },
    )
    assert status == 200, rated
    before = await stored_steps(database_url, thread)

    bob = ChatClient(app.url)
    await bob.login("bob", "bob-password")
    status, page = await api(
        bob, "POST", "/project/threads", {"pagination": {"first": 20}, "filter": {}}
    )
    assert status == 200 and page["data"] == []
    # Her chat does not exist for him: "not found", as for any chat that does not exist.
    assert (await api(bob, "GET", f"/project/thread/{thread}"))[0] == 404
    assert (await api(bob, "PUT", "/project/thread", {"threadId": thread, "name": "mine"}))[
        0
    ] == 404
    assert (await api(bob, "DELETE", "/project/thread", {"threadId": thread}))[0] == 404
    bob.sio.on("resume_thread_error", bob._handler("resume_thread_error"))
    await bob.connect(thread_id=thread)
    await bob.wait_for(lambda: ("resume_thread_error", "Thread not found.") in bob.events)
    await bob.wait_for(bob.assistant_messages, what="a fresh chat's welcome")
    assert not any("Alice" in text for _, text in bob.transcript())
    await bob.disconnect()
    # Nor rate her messages, nor remove her rating.
    status, body = await api(
        bob,
        "PUT",
        "/feedback",
        {
            "sessionId": bob.session_id,
            "feedback": {"forId": reply.parent_id, "value": 0, "comment": "bob was here"},
        },
    )
    # Chainlit's route turns the data layer's "not found" into a 500 with its text.
    assert status != 200 and body == {"detail": "Message not found"}
    # Deleting a rating that is not his deletes nothing, as for one that does not exist.
    await api(bob, "DELETE", "/feedback", {"feedbackId": rated["feedbackId"]})
    feedback = await query(database_url, 'SELECT "value", "comment" FROM feedbacks')
    assert feedback == [(1, "Spot on")]

    assert await stored_steps(database_url, thread) == before
    assert await _thread_named(database_url, thread) == "Alice's secret plan"
    assert await query(database_url, "SELECT COUNT(*) FROM threads") == [(1,)]
    # Alice still has it.
    status, page = await api(
        alice, "POST", "/project/threads", {"pagination": {"first": 20}, "filter": {}}
    )
    assert [t["id"] for t in page["data"]] == [thread]


async def _thread_named(url: str, thread_id: str) -> str | None:
    rows = await query(url, 'SELECT "name" FROM threads WHERE "id" = :t', t=thread_id)
    return rows[0][0] if rows else None


async def test_hostile_thread_ids_are_refused_before_sql(database_url, start_app_with, gemini):
    app = start_app_with(DATABASE_URL=database_url)
    owner = await ChatClient(app.url).connect()
    await owner.wait_for(owner.assistant_messages)
    await owner.ask("A chat to protect")
    thread = await owner.chat_thread()
    await owner.disconnect()
    await eventually(lambda: _rows_when(database_url, thread, 3), what="the chat stored")
    before = await stored_steps(database_url, thread)

    # Over HTTP.
    for method, path, body in [
        ("GET", f"/project/thread/{urllib.parse.quote(INJECTION)}", None),
        ("PUT", "/project/thread", {"threadId": INJECTION, "name": "pwned"}),
        ("DELETE", "/project/thread", {"threadId": INJECTION}),
    ]:
        assert (await api(owner, method, path, body))[0] == 404, (method, path)

    # Over the socket: the chat still answers, but nothing is written under the hostile id.
    attacker = ChatClient(app.url, headers=dict(owner.headers))
    await attacker.connect(thread_id=INJECTION)
    await attacker.wait_for(attacker.assistant_messages, what="a fresh chat's welcome")
    gemini.script(Reply("Still answering."))
    replies = await attacker.ask("Hello")
    assert [m.content for m in replies] == ["Still answering."]
    await attacker.disconnect()

    # Nothing was written under the hostile id, nothing else changed.
    assert await query(database_url, "SELECT COUNT(*) FROM threads") == [(1,)]
    assert await stored_steps(database_url, thread) == before
    messages = "SELECT COUNT(*) FROM steps WHERE \"type\" IN ('user_message', 'assistant_message')"
    assert await query(database_url, messages) == [(len(before),)]
    assert await _thread_named(database_url, thread) == "A chat to protect"
    assert "Refused a thread id that is not a UUID" in app.log()
    assert "Storage error" not in app.log()


async def test_a_missing_chat_is_not_found(database_url, start_app_with):
    app = start_app_with(DATABASE_URL=database_url)
    client = ChatClient(app.url)
    await client.login_local()
    missing = str(uuid.uuid4())
    assert (await api(client, "GET", f"/project/thread/{missing}"))[0] == 404
    assert (await api(client, "DELETE", "/project/thread", {"threadId": missing}))[0] == 404


# --- without a server ----------------------------------------------------------------------------


@pytest.fixture
async def throttled(database_url):
    """A login throttle on the database (SQLite and PostgreSQL), and a way to make more: each
    as another instance on the same database would have it."""
    engines = []

    def make(**rules) -> LoginThrottle:
        engine = create_async_engine(database_url, **prepare_engine_args(database_url))
        engines.append(engine)
        return LoginThrottle(engine, **rules)

    await upgrade_schema(database_url)
    yield make
    for engine in engines:
        await engine.dispose()


async def test_repeated_wrong_passwords_are_slowed_down(throttled):
    throttle = throttled()
    delays = []
    for attempt in range(9):
        delays.append(await throttle.delay_for("Alice", "192.0.2.1", now=100.0 + attempt))
        await throttle.failed("alice", "192.0.2.1", now=100.0 + attempt)
    # By name and address: 3 free, then doubling up to 30 s (the address's own count agrees).
    assert delays == [0, 0, 0, 1, 2, 4, 8, 16, 30]
    # Another name from the same address pays the address's count: 5 free, then doubling.
    assert await throttle.delay_for("mallory", "192.0.2.1", now=110.0) == 16
    # Another address guessing alice pays only the name's count, and at most 2 s.
    assert await throttle.delay_for("alice", "198.51.100.7", now=110.0) == 0
    for n in range(12):
        await throttle.failed("alice", f"203.0.113.{n}", now=111.0)
    assert await throttle.delay_for("alice", "198.51.100.7", now=112.0) == 2
    # Forgotten a while after the last failure.
    assert await throttle.delay_for("alice", "192.0.2.1", now=111.0 + 900 + 1) == 0
    # A success clears the guesser's own count and exempts that address from the name's.
    await throttle.succeeded("ALICE", "198.51.100.7", now=113.0)
    assert await throttle.delay_for("alice", "198.51.100.7", now=114.0) == 0
    assert await throttle.delay_for("alice", "192.0.2.1", now=114.0) == 30


async def test_guesses_spread_over_instances_are_counted_together(throttled, database_url):
    first, second = throttled(), throttled()  # two instances on one database
    # Guesses alternating between the instances pay as if all went to one.
    delays = []
    for attempt in range(8):
        instance = (first, second)[attempt % 2]
        delays.append(await instance.delay_for("alice", "192.0.2.1", now=100.0 + attempt))
        await instance.failed("alice", "192.0.2.1", now=100.0 + attempt)
    assert delays == [0, 0, 0, 1, 2, 4, 8, 16]
    # Failures counted on both at the same moment are all counted.
    await asyncio.gather(
        *(
            instance.failed("bob", f"198.51.100.{n}", now=120.0)
            for n in range(6)
            for instance in (first, second)
        )
    )
    rows = await query(
        database_url,
        "SELECT failures FROM login_attempts WHERE kind = 'name' AND name = 'bob'",
    )
    assert rows == [(12,)]
    assert await first.delay_for("bob", "203.0.113.9", now=121.0) == 2
    # A login on one instance exempts its address from the name's count on the other.
    await second.succeeded("bob", "203.0.113.9", now=122.0)
    assert await first.delay_for("bob", "203.0.113.9", now=123.0) == 0
    # Rows past remembering are deleted as failures are counted.
    await first.failed("carol", "192.0.2.9", now=100.0 + 2 * 900)
    kinds = await query(database_url, "SELECT DISTINCT name FROM login_attempts ORDER BY name")
    assert kinds == [("",), ("bob",), ("carol",)]  # bob's login is remembered for 30 days


async def test_parallel_attempts_from_one_address_are_checked_one_at_a_time(throttled):
    throttle = throttled(pair=Rule(free=3, base=0.01, cap=1.0), max_waiting=4)
    checking = 0
    most = 0

    async def wrong_password():
        nonlocal checking, most
        checking += 1
        most = max(most, checking)
        await asyncio.sleep(0.01)
        checking -= 1
        return None

    started = time.monotonic()
    results = await asyncio.gather(
        *(throttle.attempt("alice", "192.0.2.1", wrong_password) for _ in range(6))
    )
    assert results == [None] * 6
    assert most == 1  # one at a time
    assert time.monotonic() - started >= 4 * 0.01 + 0.01  # four checks, the 4th after 0.01 s
    # The 5th and 6th were refused at once, unchecked: four failures are counted.
    assert await throttle.delay_for("alice", "192.0.2.1") == 0.02
    assert throttle._queues == {}


@pytest.mark.parametrize(
    ("client", "local", "allowed"),
    [
        ("127.0.0.1", True, True),
        ("::1", True, True),
        ("192.0.2.7", True, False),
        ("2001:db8::7", True, False),
        ("192.0.2.7", False, True),
    ],
)
async def test_local_mode_serves_only_this_computer(client, local, allowed):
    from gemini_chat.edge import Edge, EdgeRules

    rules = EdgeRules(local=local)
    sent: list[dict] = []

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the chat"})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"host", b"localhost:8000")],
        "client": (client, 50000),
    }
    await Edge(inner, lambda: rules)(scope, receive, send)
    status = sent[0]["status"]
    body = sent[1]["body"].decode()
    if allowed:
        assert (status, body) == (200, "the chat")
    else:
        assert status == 403 and body == LOCAL_ONLY_MESSAGE


async def test_persistence_errors_are_logged_as_errors(tmp_path, caplog, chainlit_context):
    from chainlit.user import User

    from gemini_chat.storage import ChatDataLayer

    chainlit_context.session.user = User(identifier="someone")
    layer = ChatDataLayer(f"sqlite+aiosqlite:///{tmp_path}/empty.db")  # no schema at all
    with caplog.at_level(logging.WARNING, logger="gemini_chat"):
        await layer.update_thread(str(uuid.uuid4()), name="x")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "Storage error" in errors[0].getMessage()
    await layer.engine.dispose()
