"""Ownership in the data layer: one user's chats, messages, ratings and attachments can be
neither read nor changed by another, whichever way they log in (cookie, bearer token, socket) and
whichever id they name; a message refused for its size is not stored beyond a short notice.

Each attack runs against the real `chainlit run` over HTTP and socket.io, on SQLite and
PostgreSQL; the data layer's own rules are also checked in-process, method by method."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from unittest.mock import AsyncMock, Mock

import pytest

from tests.app_process import AppServer
from tests.chat_client import ChatClient
from tests.db import eventually, execute, query
from tests.fake_gemini import Reply
from tests.test_accounts import SECRET, accounts_command
from tests.test_persistence import _call, _rows_when, stored_steps

# --- two users: alice has a rated chat, bob is after it ---------------------------------------


@dataclass
class TwoUsers:
    app: AppServer
    url: str  # the database
    alice_token: str
    bob_token: str
    thread: str  # alice's chat
    question: str  # her message
    run: str  # the run step her answer sits in: what the frontend rates
    feedback: str  # her rating of it
    step_ids: list[str]  # every step of her chat

    def cookie(self, token: str) -> dict[str, str]:
        return {"Cookie": f"access_token={token}"}


async def call(app: AppServer, method: str, path: str, body, headers: dict[str, str]):
    return await asyncio.to_thread(_call, app.url + path, method, body, headers)


async def two_users(database_url: str, start_app_with, gemini) -> TwoUsers:
    for name in ("alice", "bob"):
        added = accounts_command(database_url, "add", name, password=f"{name}-password")
        assert added.returncode == 0, added.stderr
    app = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)
    alice = ChatClient(app.url)
    alice_token = (await alice.login("alice", "alice-password")).split("=", 1)[1]
    bob_token = (await ChatClient(app.url).login("bob", "bob-password")).split("=", 1)[1]
    await alice.connect()
    await alice.wait_for(alice.assistant_messages, what="alice's welcome")
    gemini.script(Reply("Alice's answer."))
    alice.mark()
    question = await alice.send("Alice's secret plan")
    await alice.wait_idle()
    (reply,) = [m for m in alice.assistant_messages() if m.content == "Alice's answer."]
    thread = await alice.chat_thread()
    await alice.disconnect()
    await eventually(lambda: _rows_when(database_url, thread, 3), what="alice's chat stored")
    status, rated = await call(
        app,
        "PUT",
        "/feedback",
        {
            "sessionId": alice.session_id,
            "feedback": {
                "forId": reply.parent_id,
                "threadId": thread,
                "value": 1,
                "comment": "Spot on",
            },
        },
        alice.headers,
    )
    assert status == 200, rated
    step_ids = [
        str(row[0])
        for row in await query(
            database_url, 'SELECT "id" FROM steps WHERE "threadId" = :t', t=thread
        )
    ]
    assert question in step_ids and reply.parent_id in step_ids
    return TwoUsers(
        app,
        database_url,
        alice_token,
        bob_token,
        thread,
        question,
        reply.parent_id,
        rated["feedbackId"],
        step_ids,
    )


async def alice_rows(world: TwoUsers) -> dict[str, list[tuple]]:
    """Every row of alice's: her thread, her steps wherever they are, every rating of them."""
    ids = ", ".join(f"'{i}'" for i in world.step_ids)
    rows = {
        "threads": await query(
            world.url,
            'SELECT "id", "userIdentifier", "name" FROM threads WHERE "id" = :t',
            t=world.thread,
        ),
        "steps": await query(
            world.url,
            'SELECT "id", "threadId", "type", "output", "metadata" FROM steps '
            f'WHERE "id" IN ({ids})',
        ),
        "feedbacks": await query(
            world.url,
            'SELECT "id", "forId", "threadId", "value", "comment" FROM feedbacks '
            f'WHERE "forId" IN ({ids}) OR "id" = :f',
            f=world.feedback,
        ),
    }
    return {table: sorted(tuple(map(str, row)) for row in found) for table, found in rows.items()}


def clean_log(app: AppServer) -> bool:
    """No storage error and no traceback: refusals are decided before SQL, not by failures."""
    log = app.log()
    return "Storage error" not in log and "Traceback" not in log


def changed(before: dict[str, list[tuple]], after: dict[str, list[tuple]]) -> int:
    """How many of alice's rows were changed, added or removed (rows keyed by their id)."""
    count = 0
    for table in before:
        old = {row[0]: row for row in before[table]}
        new = {row[0]: row for row in after[table]}
        count += sum(old.get(key) != new.get(key) for key in old.keys() | new.keys())
    return count


async def bob_chat(world: TwoUsers, gemini, question: str, answer: str) -> tuple[ChatClient, str]:
    """Bob's own chat with one answered message; returns his client and the run step's id."""
    bob = ChatClient(world.app.url, headers=world.cookie(world.bob_token))
    await bob.connect()
    await bob.wait_for(bob.assistant_messages, what="bob's welcome")
    gemini.script(Reply(answer))
    (reply,) = await bob.ask(question)
    await eventually(lambda: _rows_when(world.url, bob.thread_id, 3), what="bob's chat stored")
    return bob, reply.parent_id


# --- 1. ratings ---------------------------------------------------------------------------------


async def test_rating_another_users_message_is_refused_however_the_caller_logs_in(
    database_url, start_app_with, gemini
):
    world = await two_users(database_url, start_app_with, gemini)
    before = await alice_rows(world)
    logins = {
        "bearer token, no cookie": {"Authorization": f"Bearer {world.bob_token}"},
        # Python's SimpleCookie gives up at the quote; Starlette reads the token after it.
        "cookie header with a stray quote": {"Cookie": f'x=a"b; access_token={world.bob_token}'},
        "plain cookie": world.cookie(world.bob_token),
    }
    for how, headers in logins.items():
        status, user = await call(world.app, "GET", "/user", None, headers)
        assert status == 200 and user["identifier"] == "bob", how
        status, body = await call(
            world.app,
            "PUT",
            "/feedback",
            {
                "sessionId": str(uuid.uuid4()),
                "feedback": {"forId": world.run, "value": 0, "comment": f"bob was here ({how})"},
            },
            headers,
        )
        assert status != 200, (how, body)
        await call(world.app, "DELETE", "/feedback", {"feedbackId": world.feedback}, headers)
        assert changed(before, await alice_rows(world)) == 0, how

    # Bob rates his own answer (with his bearer token: the ordinary way still works), then
    # names alice's rating as his to move it onto his message.
    bob, bob_run = await bob_chat(world, gemini, "Bob's question", "Bob's answer.")
    await bob.disconnect()
    bearer = {"Authorization": f"Bearer {world.bob_token}"}
    status, own = await call(
        world.app,
        "PUT",
        "/feedback",
        {"sessionId": bob.session_id, "feedback": {"forId": bob_run, "value": 0, "comment": "Meh"}},
        bearer,
    )
    assert status == 200, own
    status, _ = await call(
        world.app,
        "PUT",
        "/feedback",
        {
            "sessionId": bob.session_id,
            "feedback": {"id": world.feedback, "forId": bob_run, "value": 0, "comment": "moved"},
        },
        world.cookie(world.bob_token),
    )
    assert status != 200
    assert changed(before, await alice_rows(world)) == 0
    bobs = await query(
        database_url, 'SELECT "id", "value", "comment" FROM feedbacks WHERE "forId" = :s', s=bob_run
    )
    assert [(str(i), v, c) for i, v, c in bobs] == [(own["feedbackId"], 0, "Meh")]
    # And removes his own rating, through the odd cookie header that fooled the old guard.
    status, _ = await call(
        world.app,
        "DELETE",
        "/feedback",
        {"feedbackId": own["feedbackId"]},
        {"Cookie": f'x=a"b; access_token={world.bob_token}'},
    )
    assert status == 200
    assert await query(
        database_url, 'SELECT COUNT(*) FROM feedbacks WHERE "forId" = :s', s=bob_run
    ) == [(0,)]
    assert "Refused" in world.app.log() and clean_log(world.app)


# --- 2. a client-chosen message id ----------------------------------------------------------------


async def test_a_message_id_taken_from_another_users_chat_never_changes_it(
    database_url, start_app_with, gemini
):
    world = await two_users(database_url, start_app_with, gemini)
    before = await alice_rows(world)

    bob, _ = await bob_chat(world, gemini, "Bob's own question", "Bob's first answer.")
    own_id = next(m.id for m in bob.messages.values() if m.from_user)
    # Her message's id, then the id of the run she rated.
    for stolen, answer in [(world.question, "Answer one."), (world.run, "Answer two.")]:
        gemini.script(Reply(answer))
        bob.mark()
        await bob.send("Bob's text under a stolen id", message_id=stolen)
        await bob.wait_idle()
        # What bob sees: his message answered as any other (it is just not stored).
        assert any(m.content == answer for m in bob.assistant_messages())
    # Editing his first message drops everything after it: the stolen ids included.
    gemini.script(Reply("Edited answer."))
    await bob.edit(own_id, "Bob's own question, edited")
    await bob.wait_for(
        lambda: any(m.content == "Edited answer." for m in bob.assistant_messages()),
        what="the answer to the edited message",
    )
    bob_thread = await bob.chat_thread()
    await bob.disconnect()

    async def edit_stored():
        texts = [text for _, text, _ in await stored_steps(database_url, bob_thread)]
        return texts if "Edited answer." in texts else None

    await eventually(edit_stored, what="bob's edit stored")
    after = await alice_rows(world)
    assert changed(before, after) == 0, after
    assert "Refused" in world.app.log() and "another user" in world.app.log()

    # Bob's chat reopened: his messages only, none of her text or her rating.
    reopened = ChatClient(world.app.url, headers=world.cookie(world.bob_token))
    await reopened.connect(thread_id=bob_thread)
    resumed = await reopened.wait_for(
        lambda: next((d for n, d in reopened.events if n == "resume_thread"), None),
        what="bob's chat",
    )
    await reopened.disconnect()
    shown = json.dumps(resumed)
    assert "Spot on" not in shown and "Alice's" not in shown
    assert not {s["id"] for s in resumed["steps"]} & set(world.step_ids)
    assert ("User", "Bob's own question, edited") in reopened.transcript()

    # Alice's chat reopened: as she left it, rating included.
    alice = ChatClient(world.app.url, headers=world.cookie(world.alice_token))
    await alice.connect(thread_id=world.thread)
    mine = await alice.wait_for(
        lambda: next((d for n, d in alice.events if n == "resume_thread"), None),
        what="alice's chat",
    )
    await alice.disconnect()
    run = next(s for s in mine["steps"] if s["id"] == world.run)
    assert run["feedback"]["comment"] == "Spot on"
    assert ("User", "Alice's secret plan") in alice.transcript()
    assert clean_log(world.app)


# --- 3. opening, listing, renaming, deleting, sharing, attachments ------------------------------


async def test_another_users_chat_stays_closed_to_every_login_and_route(
    database_url, start_app_with, gemini
):
    world = await two_users(database_url, start_app_with, gemini)
    element = str(uuid.uuid4())
    # An attachment of hers, as Chainlit stores one (uploads are off in this app).
    await execute(
        database_url,
        'INSERT INTO elements ("id", "threadId", "type", "name", "display", "forId", "url") '
        f"VALUES ('{element}', '{world.thread}', 'file', 'alice-secret.pdf', 'inline', "
        f"'{world.question}', '/files/alice-secret.pdf')",
    )
    # She has not shared it (what sharing shows, and to whom: tests/test_export_share.py).
    before = await alice_rows(world)
    bob, _ = await bob_chat(world, gemini, "Bob's question", "Bob's answer.")
    bob_thread = await bob.chat_thread()
    await bob.disconnect()
    alice_id = (await query(database_url, "SELECT \"id\" FROM users WHERE identifier = 'alice'"))[
        0
    ][0]

    logins = {
        "bearer token": {"Authorization": f"Bearer {world.bob_token}"},
        "cookie with a stray quote": {"Cookie": f'x=a"b; access_token={world.bob_token}'},
        "plain cookie": world.cookie(world.bob_token),
    }
    for how, headers in logins.items():
        for method, path, body in [
            ("GET", f"/project/thread/{world.thread}", None),
            ("GET", f"/project/share/{world.thread}", None),
            ("GET", f"/project/thread/{world.thread}/element/{element}", None),
            # His own chat in the path, her attachment's id.
            ("GET", f"/project/thread/{bob_thread}/element/{element}", None),
            ("PUT", "/project/thread", {"threadId": world.thread, "name": "bob's now"}),
            ("PUT", "/project/thread/share", {"threadId": world.thread, "isShared": False}),
            ("DELETE", "/project/thread", {"threadId": world.thread}),
        ]:
            status, answer = await call(world.app, method, path, body, headers)
            assert status != 200 or answer is None, (how, method, path, status, answer)
            assert "alice" not in json.dumps(answer).lower(), (how, method, path, answer)
        status, page = await call(
            world.app,
            "POST",
            "/project/threads",
            {"pagination": {"first": 20}, "filter": {"userId": str(alice_id)}},
            headers,
        )
        assert status == 200 and [t["id"] for t in page["data"]] == [bob_thread], how

    # Over the socket: opening her chat by its id shows nothing of hers ("not found", as for
    # a chat that does not exist), and what bob then sends does not touch her chat.
    intruder = ChatClient(world.app.url, headers=world.cookie(world.bob_token))
    intruder.sio.on("resume_thread_error", intruder._handler("resume_thread_error"))
    await intruder.connect(thread_id=world.thread)
    error = await intruder.wait_for(
        lambda: next((d for n, d in intruder.events if n == "resume_thread_error"), None),
        what="the resume refused",
    )
    assert "not found" in error.lower()
    await intruder.wait_for(intruder.assistant_messages, what="a fresh chat's welcome")
    gemini.script(Reply("Fresh answer."))
    replies = await intruder.ask("Written into her chat?")
    assert [m.content for m in replies] == ["Fresh answer."]
    await intruder.disconnect()
    assert not any("Alice" in text for _, text in intruder.transcript())

    # Her chat is where it was, as it was, and still hers.
    assert changed(before, await alice_rows(world)) == 0
    status, page = await call(
        world.app,
        "POST",
        "/project/threads",
        {"pagination": {"first": 20}, "filter": {}},
        world.cookie(world.alice_token),
    )
    assert [t["id"] for t in page["data"]] == [world.thread]
    status, mine = await call(
        world.app, "GET", f"/project/thread/{world.thread}", None, world.cookie(world.alice_token)
    )
    assert status == 200 and mine["name"] == "Alice's secret plan"
    assert [e["id"] for e in mine["elements"]] == [element]
    assert clean_log(world.app)


# --- 4. a message over the size limit -----------------------------------------------------------


async def test_a_message_over_the_limit_is_stored_as_a_short_marked_notice(
    database_url, start_app_with, gemini
):
    # A limit of its own, so the test also shows the setting reaches the data layer.
    app = start_app_with(DATABASE_URL=database_url, MAX_MESSAGE_CHARS="5000")
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    # Five times the limit: the socket takes up to about six times it (larger never arrives).
    paste = ("All work and no play makes Jack a dull boy. " * 700)[:25_000]
    client.mark()
    await client.send(paste)
    await client.wait_idle(timeout=60)
    assert any("25,000 characters long" in e for e in client.errors())
    gemini.script(Reply("Answered."), Reply("Answered again."))
    at_limit = "x" * 5000
    client.mark()
    at_limit_id = await client.send(at_limit)
    await client.wait_idle()
    assert "Answered." in [m.content for m in client.assistant_messages()]
    # An edit that makes a message too long is refused the same way.
    client.mark()
    await client.edit(at_limit_id, "y" * 20_000)
    await client.wait_for(
        lambda: any("20,000 characters long" in e for e in client.errors()), what="the refusal"
    )
    thread = await client.chat_thread()
    await client.disconnect()

    async def stored():
        rows = await query(
            database_url,
            'SELECT "output" FROM steps WHERE "threadId" = :t AND "type" = \'user_message\' '
            'ORDER BY "createdAt"',
            t=thread,
        )
        texts = [r[0] for r in rows]
        return texts if len(texts) == 2 and texts[1].startswith("yyy") else None

    first, edited = await eventually(stored, what="both messages stored")
    assert first.startswith(paste[:200])
    assert first.endswith("[message of 25,000 characters not sent: over the limit of 5,000]")
    assert len(first) < 400
    assert edited.endswith("[message of 20,000 characters not sent: over the limit of 5,000]")
    assert len(edited) < 400
    total = await query(
        database_url, 'SELECT SUM(LENGTH("output")) FROM steps WHERE "threadId" = :t', t=thread
    )
    assert total[0][0] < 5_000
    (name,) = (await query(database_url, 'SELECT "name" FROM threads WHERE "id" = :t', t=thread))[0]
    assert len(name) <= 120

    # What the user sees after a reload: the start of the paste, the mark, the notice.
    reopened = ChatClient(app.url, headers=dict(client.headers))
    await reopened.connect(thread_id=thread)
    await reopened.wait_for(
        lambda: any(m.from_user for m in reopened.messages.values()), what="the reopened chat"
    )
    await reopened.disconnect()
    users = [m.content for m in reopened.messages.values() if m.from_user]
    assert users == [first, edited]
    assert any("25,000 characters long" in e for e in reopened.errors())
    assert clean_log(app)


# --- 5. the data layer itself, method by method -------------------------------------------------


def acting_as(user) -> object:
    """Chainlit's context for a socket session of ``user`` (what each socket event sets)."""
    from chainlit.context import ChainlitContext, context_var
    from chainlit.emitter import BaseChainlitEmitter
    from chainlit.session import WebsocketSession

    session = Mock(spec=WebsocketSession)
    session.id = str(uuid.uuid4())
    session.user = user
    session.has_first_interaction = True
    session.thread_queues = {}
    return context_var.set(ChainlitContext(session, AsyncMock(spec=BaseChainlitEmitter)))


def step(step_id: str, thread_id: str, text: str, kind: str = "user_message") -> dict:
    now = datetime.now(UTC).isoformat()
    return {
        "id": step_id,
        "threadId": thread_id,
        "name": "User",
        "type": kind,
        "output": text,
        "createdAt": now,
        "start": now,
        "end": now,
        "streaming": False,
        "metadata": {},
    }


async def everything(url: str) -> dict[str, list[tuple]]:
    tables = {
        "threads": '"id", "userIdentifier", "name"',
        "steps": '"id", "threadId", "output"',
        "feedbacks": '"id", "forId", "value", "comment"',
        "elements": '"id", "threadId", "name"',
    }
    return {
        t: sorted(tuple(map(str, r)) for r in await query(url, f"SELECT {c} FROM {t}"))
        for t, c in tables.items()
    }


async def test_the_data_layer_serves_each_user_only_their_own_ids(database_url):
    from chainlit.context import context_var
    from chainlit.types import Feedback, Pagination, ThreadFilter
    from chainlit.user import User

    from gemini_chat.schema import upgrade_schema
    from gemini_chat.storage import ChatDataLayer

    await upgrade_schema(database_url)
    layer = ChatDataLayer(database_url)
    alice = await layer.create_user(User(identifier="alice"))
    bob = await layer.create_user(User(identifier="bob"))
    hers, his = str(uuid.uuid4()), str(uuid.uuid4())
    question, run, own = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    element = str(uuid.uuid4())

    token = acting_as(alice)
    await layer.update_thread(hers, name="Alice's chat", user_id=alice.id)
    await layer.create_step(step(question, hers, "Alice's secret"))
    await layer.create_step(step(run, hers, "", kind="run"))
    feedback = await layer.upsert_feedback(Feedback(forId=run, value=1, comment="Spot on"))
    context_var.reset(token)
    await execute(
        database_url,
        'INSERT INTO elements ("id", "threadId", "type", "name", "display") '
        f"VALUES ('{element}', '{hers}', 'file', 'alice.pdf', 'inline')",
    )
    before = await everything(database_url)

    token = acting_as(bob)
    await layer.update_thread(his, name="Bob's chat", user_id=bob.id)
    await layer.create_step(step(own, his, "Bob's own"))
    bob_rows = await everything(database_url)
    # Reads: nothing of hers, as if it did not exist.
    assert await layer.get_thread(hers) is None
    assert await layer.get_thread_author(hers) == ""
    assert await layer.get_step(question) is None
    assert await layer.get_element(hers, element) is None
    assert await layer.get_element(his, element) is None
    assert (
        await layer.list_threads(Pagination(first=20), ThreadFilter(userId=alice.id))
    ).data == []
    assert await layer.get_favorite_steps(alice.id) == []
    # Writes: none lands.
    await layer.update_thread(hers, name="Bob's now")
    await layer.update_thread(his, user_id=alice.id)  # giving his chat to her
    await layer.create_step(step(question, his, "moved into bob's chat"))
    await layer.update_step(step(run, his, "moved too", kind="run"))
    await layer.create_step(step(str(uuid.uuid4()), hers, "written into her chat"))
    with pytest.raises(ValueError, match="not found"):
        await layer.upsert_feedback(Feedback(forId=run, value=0, comment="bob was here"))
    with pytest.raises(ValueError, match="not found"):
        await layer.upsert_feedback(Feedback(id=feedback, forId=own, value=0, comment="moved"))
    assert await layer.delete_feedback(feedback) is False
    await layer.delete_element(element)
    await layer.delete_step(question)
    await layer.delete_thread(hers)
    assert await layer.get_thread(his) is not None  # his own, still his
    context_var.reset(token)
    assert await everything(database_url) == bob_rows
    assert {
        k: [r for r in v if bob.identifier not in r and his not in r and own not in r]
        for k, v in bob_rows.items()
    } == before

    # Nobody logged in: nothing at all.
    assert await layer.get_thread(his) is None
    assert await layer.get_thread_author(his) == ""
    await layer.engine.dispose()


async def test_a_message_id_of_a_deleted_chat_is_checked_again_not_remembered(database_url):
    """The data layer remembers the chat of each message it wrote (so writing it again needs
    no query); once that chat is deleted, the id is looked up again: the message is gone, so
    another user may use the id, and its former owner can no longer rate it."""
    from chainlit.context import context_var
    from chainlit.types import Feedback
    from chainlit.user import User

    from gemini_chat.schema import upgrade_schema
    from gemini_chat.storage import ChatDataLayer

    await upgrade_schema(database_url)
    layer = ChatDataLayer(database_url)
    alice = await layer.create_user(User(identifier="alice"))
    bob = await layer.create_user(User(identifier="bob"))
    hers, his, message = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())

    token = acting_as(alice)
    await layer.update_thread(hers, name="Alice's chat", user_id=alice.id)
    await layer.create_step(step(message, hers, "Alice's question"))
    await layer.update_step(step(message, hers, "Alice's question, again"))
    await layer.delete_thread(hers)
    with pytest.raises(ValueError, match="not found"):
        await layer.upsert_feedback(Feedback(forId=message, value=1, comment="gone"))
    context_var.reset(token)

    token = acting_as(bob)
    await layer.update_thread(his, name="Bob's chat", user_id=bob.id)
    await layer.create_step(step(message, his, "Bob's own"))
    context_var.reset(token)
    rows = await query(database_url, 'SELECT "threadId", "output" FROM steps')
    assert [tuple(map(str, r)) for r in rows] == [(his, "Bob's own")]
    assert await query(database_url, "SELECT * FROM feedbacks") == []
    await layer.engine.dispose()


# --- contracts with Chainlit's internals ----------------------------------------------------------


def chainlit_sources() -> dict[str, str]:
    import chainlit

    root = Path(chainlit.__file__).parent
    return {
        str(path.relative_to(root)): path.read_text()
        for path in root.rglob("*.py")
        if "data" not in path.relative_to(root).parts
    }


def test_every_data_layer_method_has_an_ownership_rule():
    from chainlit.data.base import BaseDataLayer
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

    from gemini_chat.ownership import EXEMPT, INTERNAL, QUEUED, RULES, public_methods
    from gemini_chat.storage import ChatDataLayer

    known = set(RULES) | EXEMPT | INTERNAL
    # A method a Chainlit upgrade adds fails here (and is refused at run time until it has a rule).
    assert public_methods(SQLAlchemyDataLayer) <= known, public_methods(SQLAlchemyDataLayer) - known
    assert public_methods(BaseDataLayer) <= known
    # Besides Chainlit's methods, the app's own: attached files (storage.AttachmentStore), and
    # the one way to read a chat through its share link, and to mark it shared.
    added = public_methods(ChatDataLayer) - public_methods(SQLAlchemyDataLayer)
    assert added == {
        "get_attachments",
        "get_attachment",
        "get_attachment_usage",
        "get_shared_thread",
        "share_thread",
    }
    assert added <= set(RULES)
    assert public_methods(SQLAlchemyDataLayer) <= public_methods(ChatDataLayer)
    assert not set(RULES) & (EXEMPT | INTERNAL)
    # The methods Chainlit defers until the first user message keep being deferred.
    deferred = {
        name
        for name in public_methods(BaseDataLayer)
        if hasattr(getattr(BaseDataLayer, name), "__wrapped__")
    }
    assert deferred == QUEUED
    # Internal helpers are never called by Chainlit from outside its data layer.
    for path, source in chainlit_sources().items():
        for name in INTERNAL:
            assert not re.search(rf"\.{name}\(", source), (path, name)


def test_chainlit_authenticates_routes_and_sockets_through_authenticate_user():
    import typing

    import chainlit.auth
    import chainlit.server
    import chainlit.socket

    # The routes' user: Annotated[..., Depends(get_current_user)].
    dependency = typing.get_args(chainlit.server.UserParam)[1].dependency
    assert dependency is chainlit.auth.get_current_user
    # The socket's user: the same function, called at connect.
    assert chainlit.socket.get_current_user is chainlit.auth.get_current_user
    assert "get_current_user" in chainlit.socket._authenticate_connection.__code__.co_names
    # Both find authenticate_user in chainlit.auth at call time, where the app wraps it.
    assert "authenticate_user" in chainlit.auth.get_current_user.__code__.co_names


# --- the mechanism, without a server ------------------------------------------------------------


async def test_a_data_layer_method_without_an_ownership_rule_is_refused(caplog):
    from gemini_chat.ownership import owner_checked

    class Layer:
        async def get_thread(self, thread_id):
            return {"id": thread_id}

        async def read_every_chat(self):  # what a later Chainlit might add
            return ["every chat"]

        def helper(self):
            return "data"

        async def _owner_of(self, kind, value):
            return "alice"

        async def _in_order(self, call):
            return await call()

    with caplog.at_level(logging.INFO, logger="gemini_chat"):
        layer = owner_checked(Layer)()
        assert "read_every_chat" in caplog.text  # named at start-up
        assert await layer.read_every_chat() is None
        assert layer.helper() is None
        assert await layer.get_thread(str(uuid.uuid4())) is None  # nobody logged in
    assert caplog.text.count("no ownership rule for it") == 2


async def test_a_login_and_a_session_of_different_users_act_for_nobody():
    import contextvars

    from chainlit.context import context_var
    from chainlit.user import User

    from gemini_chat import ownership

    def in_a_request() -> tuple:
        token = acting_as(User(identifier="alice"))
        alone = ownership.acting_user()
        ownership._authenticated.set(ownership.Actor("bob"))
        mixed = ownership.acting_user()
        context_var.reset(token)
        return alone, mixed, ownership.acting_user()

    alone, mixed, request_only = contextvars.copy_context().run(in_a_request)
    assert alone == ownership.Actor("alice")
    assert mixed is None
    assert request_only == ownership.Actor("bob")


async def test_a_write_never_moves_a_message_or_a_rating_even_between_ones_own_chats(
    database_url,
):
    from chainlit.context import context_var
    from chainlit.types import Feedback
    from chainlit.user import User

    from gemini_chat.schema import upgrade_schema
    from gemini_chat.storage import ChatDataLayer

    await upgrade_schema(database_url)
    layer = ChatDataLayer(database_url, max_message_chars=1000)
    bob = await layer.create_user(User(identifier="bob"))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    message, other, rating = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    token = acting_as(bob)
    await layer.create_step(step(message, first, "In the first chat"))
    await layer.create_step(step(other, second, "In the second chat"))
    await layer.upsert_feedback(Feedback(id=rating, forId=message, value=1, comment="Good"))
    # The ownership check lets these through (all bob's); the statements themselves refuse.
    await layer.create_step(step(message, second, "Moved"))
    with pytest.raises(ValueError, match="not found"):
        await layer.upsert_feedback(Feedback(id=rating, forId=other, value=0, comment="Moved"))
    # A client may put anything in a message's other fields; nothing large is kept.
    huge = step(str(uuid.uuid4()), second, "Short text")
    huge.update(name="N" * 1_000_000, metadata={"junk": "J" * 1_000_000}, language="L" * 50_000)
    await layer.create_step(huge)
    context_var.reset(token)

    rows = await query(database_url, 'SELECT "id", "threadId", "output" FROM steps')
    assert sorted(tuple(map(str, r)) for r in rows) == sorted(
        [
            (message, first, "In the first chat"),
            (other, second, "In the second chat"),
            (huge["id"], second, "Short text"),
        ]
    )
    assert [
        tuple(map(str, r))
        for r in await query(
            database_url, 'SELECT "id", "forId", "value", "comment" FROM feedbacks'
        )
    ] == [(rating, message, "1", "Good")]
    (stored,) = await query(
        database_url,
        'SELECT LENGTH("name") + LENGTH("language") + LENGTH(CAST("metadata" AS TEXT)) '
        'FROM steps WHERE "id" = :i',
        i=huge["id"],
    )
    assert stored[0] < 5_000
    await layer.engine.dispose()


async def test_after_a_reload_under_watch_chats_are_still_stored_and_rated(start_app_with, gemini):
    # Chainlit keeps the data layer it made first across reloads: one made before the reload
    # and one made after it must both learn who is asking.
    for before_reload in (True, False):
        app = start_app_with(watch=True)
        url = f"sqlite+aiosqlite:///{app.directory}/chats.db"
        chats = 2 if before_reload else 1
        for chat in range(chats):
            if chat == chats - 1:
                (app.directory / "probe.py").write_text("")  # the watcher reloads the app
                await eventually(
                    lambda app=app: asyncio.sleep(0, "probe.py. Reloading app" in app.log()),
                    what="the reload",
                )
            client = await ChatClient(app.url).connect()
            await client.wait_for(client.assistant_messages, what="the welcome")
            gemini.script(Reply("Answer."))
            (reply,) = await client.ask("Stored?")
            thread = await client.chat_thread()
            await eventually(
                lambda url=url, thread=thread: _rows_when(url, thread, 3), what="the chat stored"
            )
            status, body = await call(
                app,
                "PUT",
                "/feedback",
                {
                    "sessionId": client.session_id,
                    "feedback": {"forId": reply.parent_id, "value": 1},
                },
                client.headers,
            )
            await client.disconnect()
            assert status == 200, (before_reload, chat, body)
        assert await query(url, 'SELECT "value" FROM feedbacks') == [(1,)] * chats
        assert "Refused" not in app.log()
        app.stop()
