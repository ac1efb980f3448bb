"""Login security against the real `chainlit run`: logout, password changes and account removal
end sessions (over HTTP and the socket, on every instance sharing the database), guessing is
slowed by name and by client address without keeping the real user waiting, weak signing
secrets are refused, and the database files are private."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import stat
import time
import urllib.parse
from pathlib import Path

import pytest
import socketio

from gemini_chat.tokens import CHECK_SECONDS
from tests.chat_client import ChatClient
from tests.conftest import app_directory
from tests.db import query
from tests.fake_gemini import Reply
from tests.test_accounts import SECRET, accounts_command

# --- HTTP from a chosen loopback address ---------------------------------------------------------


def _request(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """One request from ``source`` (any 127.x.y.z works on Linux): the server sees that client
    address, as it would see a remote one."""
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=120, source_address=(source, 0)
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        cookies = response.headers.get_all("Set-Cookie") or []
        return response.status, {"set-cookie": "\n".join(cookies)}, response.read()
    finally:
        connection.close()


async def request(base: str, method: str, path: str, token: str | None = None, **kwargs):
    headers = dict(kwargs.pop("headers", {}) or {})
    if token:
        headers["Cookie"] = f"access_token={token}"
    body = kwargs.pop("json", None)
    if body is not None:
        headers["Content-Type"] = "application/json"
        kwargs["body"] = json.dumps(body).encode()
    return await asyncio.to_thread(_request, base, method, path, headers=headers, **kwargs)


async def login(base: str, name: str, password: str, source: str = "127.0.0.1"):
    """The login form, from ``source``: (status, token or None, seconds it took)."""
    form = urllib.parse.urlencode({"username": name, "password": password}).encode()
    started = time.monotonic()
    status, headers, _ = await asyncio.to_thread(
        _request,
        base,
        "POST",
        "/login",
        form,
        {"Content-Type": "application/x-www-form-urlencoded"},
        source,
    )
    elapsed = time.monotonic() - started
    token = None
    for cookie in headers["set-cookie"].split("\n"):
        if cookie.startswith("access_token="):
            token = cookie.split(";")[0].split("=", 1)[1]
    return status, token, elapsed


async def status_of(base: str, token: str, path: str = "/user") -> int:
    if path == "/project/threads":
        body = {"pagination": {"first": 20}, "filter": {}}
        return (await request(base, "POST", path, token, json=body))[0]
    return (await request(base, "GET", path, token))[0]


async def refused_within(base: str, token: str, seconds: float, path: str = "/user") -> float:
    """Seconds until ``token`` gets 401 at ``path``; fails the test after ``seconds``.

    Another instance learns of a revocation from the database within CHECK_SECONDS; no event
    crosses processes, so this polls with a deadline."""
    started = time.monotonic()
    while True:
        status = await status_of(base, token, path)
        if status == 401:
            return time.monotonic() - started
        assert status == 200, status
        if time.monotonic() - started > seconds:
            raise AssertionError(f"token still accepted at {path} after {seconds:.0f}s")
        await asyncio.sleep(0.1)


def socket_client(base: str, token: str) -> ChatClient:
    return ChatClient(base, headers={"Cookie": f"access_token={token}"})


async def accounts(database_url: str, *users: tuple[str, str]) -> None:
    for name, password in users:
        added = await asyncio.to_thread(
            accounts_command, database_url, "add", name, password=password
        )
        assert added.returncode == 0, added.stderr


# --- 1. logout, password change and removal end sessions --------------------------------------


async def test_logout_ends_that_token_over_http_and_the_socket(database_url, start_app_with):
    await accounts(database_url, ("alice", "alice-password"))
    app = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)
    _, laptop, _ = await login(app.url, "alice", "alice-password")
    _, phone, _ = await login(app.url, "alice", "alice-password")
    assert await status_of(app.url, laptop) == 200

    status, _, _ = await request(app.url, "POST", "/logout", laptop, json={})
    assert status == 200

    # At once on the instance that logged out: HTTP, the thread list, the socket.
    assert await status_of(app.url, laptop) == 401
    assert await status_of(app.url, laptop, "/project/threads") == 401
    with pytest.raises(socketio.exceptions.ConnectionError):
        await socket_client(app.url, laptop).connect()
    # Nor can the old token be swapped for a fresh one.
    status, headers, _ = await request(
        app.url, "POST", "/auth/jwt", headers={"Authorization": f"Bearer {laptop}"}
    )
    renewed = [c for c in headers["set-cookie"].split("\n") if c.startswith("access_token=")]
    if status == 200 and renewed:
        assert await status_of(app.url, renewed[0].split(";")[0].split("=", 1)[1]) == 401
    # The other device, logged in the same second, stays logged in.
    assert laptop != phone
    assert await status_of(app.url, phone) == 200
    rows = await query(database_url, "SELECT identifier FROM revoked_tokens")
    assert rows == [("alice",)]


async def test_removing_an_account_ends_its_sessions_and_its_open_chat(
    database_url, start_app_with, gemini
):
    await accounts(database_url, ("alice", "alice-password"), ("bob", "bob-password"))
    app = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)
    _, alice, _ = await login(app.url, "alice", "alice-password")
    _, bob, _ = await login(app.url, "bob", "bob-password")
    chat = await socket_client(app.url, bob).connect()
    await chat.wait_for(chat.assistant_messages, what="the welcome")
    gemini.script(Reply("Bob's answer."))
    await chat.ask("Before removal")
    thread = await chat.chat_thread()
    assert len(gemini.requests) == 1
    dropped = asyncio.Event()
    chat.sio.on("disconnect", lambda *args: dropped.set())

    removed = await asyncio.to_thread(accounts_command, database_url, "remove", "bob")
    assert removed.returncode == 0, removed.stderr

    waited = await refused_within(app.url, bob, CHECK_SECONDS + 2, "/project/threads")
    assert await status_of(app.url, bob) == 401
    assert "sessions have ended" in removed.stdout

    # The open socket: the message is refused with a visible notice, never reaches Gemini,
    # is not stored, and the server closes the connection.
    before = len(chat.messages)
    await chat.send("After removal")
    await chat.wait_for(lambda: len(chat.errors()) > 0, what="the notice")
    assert "log in again" in chat.errors()[-1]
    await asyncio.wait_for(dropped.wait(), 10)
    assert len(chat.messages) == before + 2  # the message as typed, and the notice
    assert len(gemini.requests) == 1
    outputs = await query(
        database_url, 'SELECT "output" FROM steps WHERE "threadId" = :t', t=thread
    )
    assert ("After removal",) not in outputs
    with pytest.raises(socketio.exceptions.ConnectionError):
        await socket_client(app.url, bob).connect()
    # Alice is untouched.
    assert await status_of(app.url, alice) == 200
    print(f"bob's token refused {waited:.1f}s after the removal")


async def test_a_new_password_ends_every_session_of_the_account(database_url, start_app_with):
    await accounts(database_url, ("alice", "alice-password"))
    app = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)
    tokens = [(await login(app.url, "alice", "alice-password"))[1] for _ in range(2)]
    chat = await socket_client(app.url, tokens[0]).connect()
    await chat.wait_for(chat.assistant_messages, what="the welcome")

    changed = await asyncio.to_thread(
        accounts_command, database_url, "passwd", "alice", password="a new password"
    )
    assert changed.returncode == 0, changed.stderr
    assert "sessions have ended" in changed.stdout

    for token in tokens:
        await refused_within(app.url, token, CHECK_SECONDS + 2)
    await chat.send("Still here?")
    await chat.wait_for(lambda: chat.errors(), what="the notice")
    await chat.disconnect()
    assert (await login(app.url, "alice", "alice-password"))[0] == 401
    status, fresh, _ = await login(app.url, "alice", "a new password")
    assert status == 200 and await status_of(app.url, fresh) == 200

    unknown = await asyncio.to_thread(
        accounts_command, database_url, "passwd", "mallory", password="whatever123"
    )
    assert unknown.returncode == 1 and "no user 'mallory'" in unknown.stderr
    short = await asyncio.to_thread(
        accounts_command, database_url, "passwd", "alice", password="short"
    )
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    assert await status_of(app.url, fresh) == 200  # a refused change ends nothing


async def test_revocation_reaches_every_instance_sharing_the_database(database_url, start_app_with):
    await accounts(database_url, ("alice", "alice-password"))
    first = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)
    second = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)
    _, token, _ = await login(first.url, "alice", "alice-password")
    assert await status_of(second.url, token) == 200  # now cached as valid there

    assert (await request(first.url, "POST", "/logout", token, json={}))[0] == 200
    assert await status_of(first.url, token) == 401
    waited = await refused_within(second.url, token, CHECK_SECONDS + 2)
    assert waited <= CHECK_SECONDS + 1
    print(f"the other instance refused the token {waited:.1f}s after the logout")


# --- 2. login throttling -------------------------------------------------------------------------


async def throttled_app(start_app_with, tmp_path: Path):
    database_url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    await accounts(database_url, ("alice", "alice-password"))
    return start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)


async def test_parallel_guesses_on_one_name_wait_their_turn(start_app_with, tmp_path):
    app = await throttled_app(start_app_with, tmp_path)
    results = await asyncio.gather(
        *(login(app.url, "alice", f"guess {n}", source="127.0.0.2") for n in range(6))
    )
    assert [status for status, _, _ in results] == [401] * 6
    waits = sorted(elapsed for _, _, elapsed in results)
    # One at a time, as if sent one after another: 3 free, then 1, 2 and 4 seconds.
    assert waits[-1] >= 7.0, waits
    assert waits[-2] >= 3.0, waits
    print("parallel guesses answered after", [round(w, 1) for w in waits])


async def test_guesses_on_many_names_from_one_address_are_slowed(start_app_with, tmp_path):
    app = await throttled_app(start_app_with, tmp_path)
    started = time.monotonic()
    for n in range(8):
        status, _, _ = await login(app.url, f"user{n}", "a guess", source="127.0.0.2")
        assert status == 401
    total = time.monotonic() - started
    # Five failures from an address are free, then 1, 2 and 4 seconds whatever the name.
    assert total >= 7.0, total
    # Another address is not slowed by it.
    status, _, elapsed = await login(app.url, "alice", "alice-password", source="127.0.0.3")
    assert status == 200 and elapsed < 2.0, elapsed
    print(f"8 names from one address took {total:.1f}s; alice elsewhere {elapsed:.1f}s")


async def test_an_attackers_guesses_do_not_keep_the_real_user_waiting(start_app_with, tmp_path):
    app = await throttled_app(start_app_with, tmp_path)
    # Twelve addresses guess alice's password at once.
    attackers = [f"127.0.1.{n}" for n in range(1, 13)]
    results = await asyncio.gather(
        *(login(app.url, "alice", "a guess", source=address) for address in attackers)
    )
    assert [status for status, _, _ in results] == [401] * 12

    # Alice, from her own address, waits a few seconds at most.
    status, token, waited = await login(app.url, "alice", "alice-password", source="127.0.2.1")
    assert status == 200 and token, status
    assert waited <= 4.0, waited
    # From an address she logged in from before, not at all.
    status, _, again = await login(app.url, "alice", "alice-password", source="127.0.2.1")
    assert status == 200 and again < 1.5, again
    # The attackers still pay on every further guess.
    status, _, attacker_waited = await login(app.url, "alice", "a guess", source="127.0.1.13")
    assert status == 401 and attacker_waited >= 2.0, attacker_waited
    print(f"alice waited {waited:.1f}s, then {again:.1f}s; a new attacker {attacker_waited:.1f}s")


# --- 3. signing secret and database files --------------------------------------------------------


async def exited(server, timeout: float = 60.0) -> int | None:
    """The exit code of a server that stops by itself, or None once it serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return server.process.returncode
        try:
            if (await request(server.url, "GET", "/health"))[0] == 200:
                return None
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the app neither started nor stopped")


async def test_a_short_signing_secret_stops_the_start(tmp_path, start_app_with):
    database_url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    await accounts(database_url, ("alice", "alice-password"))
    server = start_app_with(wait=False, DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET="x" * 31)
    assert await exited(server) not in (None, 0)
    lines = [line for line in server.log().splitlines() if "CHAINLIT_AUTH_SECRET" in line]
    assert len(lines) == 1 and "32" in lines[0] and "uv run chainlit create-secret" in lines[0]
    assert "x" * 31 not in server.log() and "Traceback" not in server.log()

    # 32 bytes are enough.
    server = start_app_with(wait=False, DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET="y" * 32)
    assert await exited(server) is None


def modes(directory: Path) -> dict[str, int]:
    return {
        path.name: stat.S_IMODE(path.stat().st_mode)
        for path in directory.iterdir()
        if path.name.startswith("chats.db")
    }


async def test_database_files_are_readable_by_their_owner_only(start_app_with, gemini):
    directory = app_directory()
    app = start_app_with(directory=directory)  # local mode: the signing secret is in the file
    chat = await ChatClient(app.url).connect()
    await chat.wait_for(chat.assistant_messages, what="the welcome")
    await chat.ask("Hello")
    await chat.disconnect()
    files = modes(directory)
    assert {"chats.db", "chats.db-wal", "chats.db-shm"} <= set(files), files
    assert set(files.values()) == {0o600}, {k: oct(v) for k, v in files.items()}
    app.stop()

    # Files made by an older version are tightened at start, with a line in the log.
    for name in files:
        os.chmod(directory / name, 0o644)
    again = start_app_with(directory=directory)
    assert set(modes(directory).values()) == {0o600}
    assert "readable by other users" in again.log()

    # The accounts command creates a private file too.
    fresh = directory / "other" / "chats.db"
    fresh.parent.mkdir()
    await accounts(f"sqlite+aiosqlite:///{fresh}", ("alice", "alice-password"))
    assert set(modes(fresh.parent).values()) == {0o600}


# --- what the guards rely on in Chainlit ----------------------------------------------------------


def test_chainlit_contracts_the_login_guards_rely_on(monkeypatch):
    """Each internal the login guards lean on, checked so that an upgrade that moves one fails
    here by name (the tests above fail too, less clearly)."""
    import chainlit.auth
    import chainlit.socket
    import jwt
    from chainlit.emitter import BaseChainlitEmitter
    from chainlit.server import router, sio
    from chainlit.session import WebsocketSession
    from chainlit.user import User
    from fastapi.security import OAuth2PasswordRequestForm

    # The socket's connect authenticates through this very function (replaced by the guard).
    assert chainlit.socket.get_current_user is chainlit.auth.get_current_user
    assert "get_current_user" in chainlit.socket._authenticate_connection.__code__.co_names
    # HTTP routes depend on it (overridden through FastAPI's dependency_overrides) and the
    # login route reads its form through OAuth2PasswordRequestForm (overridden likewise).
    routes = {route.path: route for route in router.routes if hasattr(route, "dependant")}

    def calls(path: str) -> set:
        return {d.call for d in routes[path].dependant.dependencies}

    assert chainlit.auth.get_current_user in calls("/user")
    assert chainlit.auth.get_current_user in calls("/project/threads")
    assert OAuth2PasswordRequestForm in calls("/login")
    # Tokens are HS256 JWTs of the user, metadata included, signed with CHAINLIT_AUTH_SECRET.
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", SECRET)
    token = chainlit.auth.create_jwt(User(identifier="a", metadata={"login": {"id": "t"}}))
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["identifier"] == "a" and claims["metadata"]["login"] == {"id": "t"}
    # The socket events the guard gates; what it reads of a session and how it tells and
    # closes one.
    assert {"client_message", "edit_message", "connection_successful"} <= set(sio.handlers["/"])
    names = {
        name
        for cls in WebsocketSession.__mro__
        if "__init__" in vars(cls) and hasattr(vars(cls)["__init__"], "__code__")
        for name in vars(cls)["__init__"].__code__.co_names
    }
    assert {"environ", "token", "socket_id"} <= names and hasattr(WebsocketSession, "to_clear")
    assert hasattr(BaseChainlitEmitter, "send_step")
    assert "to_clear" in chainlit.socket.disconnect.__code__.co_names


# --- without a server ----------------------------------------------------------------------------


async def test_a_login_is_trusted_briefly_then_asked_again_and_refused_for_good(
    tmp_path, monkeypatch
):
    from chainlit.auth import create_jwt
    from chainlit.user import User

    from gemini_chat.accounts import AccountStore
    from gemini_chat.schema import prepare_database
    from gemini_chat.tokens import Login, TokenRegistry, login_claim, read_login

    url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    prepare_database(url)
    store = AccountStore(url)
    await store.add("alice", "alice-password")
    epoch = await store.verify("alice", "alice-password")
    clock, monotonic = [1000.0], [0.0]
    registry = TokenRegistry(
        store.engine, lambda: 3600.0, clock=lambda: clock[0], monotonic=lambda: monotonic[0]
    )
    login = Login("alice", "t1", epoch, at=1000.0)
    assert await registry.accepts(login)

    await store.set_password("alice", "another password")
    assert await registry.accepts(login)  # trusted for CHECK_SECONDS without asking
    monotonic[0] += CHECK_SECONDS + 0.01
    assert not await registry.accepts(login)

    # A login lasts the token lifetime from the login itself, however often it is re-issued.
    fresh = Login("alice", "t2", await store.verify("alice", "another password"), at=1000.0)
    assert await registry.accepts(fresh)
    clock[0] = 1000.0 + 3600 + 1
    monotonic[0] += CHECK_SECONDS + 0.01
    assert not await registry.accepts(fresh)

    # Logged-out tokens are kept until they expire, then cleared at the next logout.
    await registry.revoke(Login("alice", "t3", fresh.epoch, at=clock[0]))
    await registry.revoke(Login("alice", "t3", fresh.epoch, at=clock[0]))  # twice: no error
    clock[0] += 3600 + 1
    await registry.revoke(Login("alice", "t4", fresh.epoch, at=clock[0]))
    assert await query(url, "SELECT token_id FROM revoked_tokens") == [("t4",)]
    await store.remove("alice")
    assert await query(url, "SELECT token_id FROM revoked_tokens") == []
    await store.close()

    # Only tokens signed with the secret and carrying a login are read.
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", SECRET)
    signed = create_jwt(User(identifier="alice", metadata={"login": login_claim("e")}))
    bare = create_jwt(User(identifier="alice", metadata={"provider": "password"}))
    assert read_login(signed, SECRET).epoch == "e"
    assert read_login(signed, "another secret of at least 32 bytes!!") is None
    assert read_login(bare, SECRET) is None
