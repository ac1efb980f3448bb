"""Chats that last, on SQLite and on PostgreSQL alike: stored, resumed after a restart, listed,
renamed, deleted, edited, rated; the schema made and upgraded by the app itself."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid

from tests.chat_client import ChatClient
from tests.db import eventually, execute, query
from tests.fake_gemini import Reply


def _call(url: str, method: str, body: dict | None, headers: dict) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


async def api(client: ChatClient, method: str, path: str, body: dict | None = None):
    return await asyncio.to_thread(_call, client.url + path, method, body, client.headers)


async def stored_steps(url: str, thread_id: str) -> list[tuple]:
    return await query(
        url,
        'SELECT "type", "output", "isError" FROM steps WHERE "threadId" = :t '
        "AND \"type\" IN ('user_message', 'assistant_message') ORDER BY \"createdAt\"",
        t=thread_id,
    )


async def new_chat(app) -> ChatClient:
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    return client


async def test_a_chat_survives_a_restart_and_resumes_with_its_exact_history(
    database_url, start_app_with, gemini
):
    first_app = start_app_with(DATABASE_URL=database_url)
    client = await new_chat(first_app)
    gemini.script(
        Reply("First answer."),
        Reply(chunks=["Half", " done"], ending="drop"),
        Reply("Third answer."),
    )
    await client.ask("first question")
    await client.ask("second question")
    await client.ask("third question")
    thread_id = await client.chat_thread()
    await client.disconnect()

    rows = await eventually(
        lambda: _rows_when(database_url, thread_id, 8), what="eight stored messages"
    )
    notice = rows[5]
    assert notice[2] and "connection to Gemini dropped" in notice[1]
    assert [(kind, text) for kind, text, _ in rows] == [
        ("assistant_message", "Hello! I'm Gemini. Ask me anything."),
        ("user_message", "first question"),
        ("assistant_message", "First answer."),
        ("user_message", "second question"),
        # A partial reply is stored as it was shown, followed by the notice.
        ("assistant_message", "Half done\n\n*— incomplete reply*"),
        ("assistant_message", notice[1]),
        ("user_message", "third question"),
        ("assistant_message", "Third answer."),
    ]

    first_app.stop()
    second_app = start_app_with(DATABASE_URL=database_url)
    # The login cookie survives the restart too (local mode keeps its secret in the database).
    resumed = ChatClient(second_app.url, headers=dict(client.headers))
    await resumed.connect(thread_id=thread_id)
    await resumed.wait_for(
        lambda: sum(m.from_user for m in resumed.messages.values()) == 3, what="the old chat"
    )
    gemini.script(Reply("Fourth answer."))
    replies = await resumed.ask("fourth question")
    assert [m.content for m in replies] == ["Fourth answer."]
    request = (await gemini.arrived(4))[-1]
    assert request.conversation[1:] == [
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question"),
        ("assistant", "Half done"),
        ("user", "third question"),
        ("assistant", "Third answer."),
        ("user", "fourth question"),
    ]
    await resumed.disconnect()
    await eventually(lambda: _rows_when(database_url, thread_id, 10), what="the new turn stored")


async def test_a_message_sent_while_the_chat_reopens_is_answered_with_its_history(
    database_url, start_app_with, gemini
):
    """A page whose socket comes back to a server without its session (a restart, another
    instance) has its chat reopened; a message it sends at that moment waits for the history."""
    app = start_app_with(DATABASE_URL=database_url)
    client = await new_chat(app)
    gemini.script(Reply("First answer."), Reply("Second answer."))
    await client.ask("first question")
    thread_id = await client.chat_thread()
    await client.disconnect()

    reopened = ChatClient(app.url, headers=dict(client.headers))
    await reopened.connect(thread_id=thread_id, announce=False)
    question = await reopened.send("second question")  # before the chat is reopened
    await reopened.announce()
    await reopened.wait_for(
        lambda: any(m.content == "Second answer." for m in reopened.messages.values()),
        what="the answer",
    )
    request = (await gemini.arrived(2))[-1]
    assert request.conversation[1:] == [
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question"),
    ]
    # The page, which replaces what it shows with the chat it is sent, was sent the chat as
    # stored, then the question again, then its answer.
    shown = [
        "chat as stored" if name == "resume_thread" else (data["type"], data["id"])
        for name, data in reopened.events
        if name == "resume_thread"
        or (
            name in ("new_message", "stream_start")
            and data.get("type") in ("user_message", "assistant_message")
        )
    ]
    answer = next(m.id for m in reopened.messages.values() if m.content == "Second answer.")
    assert list(dict.fromkeys(shown)) == [
        "chat as stored",
        ("user_message", question),
        ("assistant_message", answer),
    ]
    assert reopened.messages[question].content == "second question"
    await reopened.disconnect()
    rows = await eventually(lambda: _rows_when(database_url, thread_id, 5), what="the turn stored")
    assert [(kind, text) for kind, text, _ in rows] == [
        ("assistant_message", "Hello! I'm Gemini. Ask me anything."),
        ("user_message", "first question"),
        ("assistant_message", "First answer."),
        ("user_message", "second question"),
        ("assistant_message", "Second answer."),
    ]


async def _rows_when(url: str, thread_id: str | None, count: int):
    if thread_id is None:
        return None
    rows = await stored_steps(url, thread_id)
    return rows if len(rows) >= count else None


PUBLISHED_DDL = {
    # Chainlit's documented schema for its SQLAlchemy layer: no steps."autoCollapse", no
    # "defaultOpen", no "modes".
    "sqlite": [
        'CREATE TABLE users ("id" TEXT PRIMARY KEY, "identifier" TEXT NOT NULL UNIQUE, '
        '"metadata" TEXT NOT NULL, "createdAt" TEXT)',
        'CREATE TABLE threads ("id" TEXT PRIMARY KEY, "createdAt" TEXT, "name" TEXT, '
        '"userId" TEXT, "userIdentifier" TEXT, "tags" TEXT, "metadata" TEXT)',
        'CREATE TABLE steps ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL, "type" TEXT NOT NULL, '
        '"threadId" TEXT NOT NULL, "parentId" TEXT, "streaming" BOOLEAN NOT NULL, '
        '"waitForAnswer" BOOLEAN, "isError" BOOLEAN, "metadata" TEXT, "tags" TEXT, '
        '"input" TEXT, "output" TEXT, "createdAt" TEXT, "command" TEXT, "start" TEXT, '
        '"end" TEXT, "generation" TEXT, "showInput" TEXT, "language" TEXT, "indent" INT)',
        'CREATE TABLE feedbacks ("id" TEXT PRIMARY KEY, "forId" TEXT NOT NULL, '
        '"threadId" TEXT, "value" INT NOT NULL, "comment" TEXT)',
    ],
    "postgresql": [
        'CREATE TABLE users ("id" UUID PRIMARY KEY, "identifier" TEXT NOT NULL UNIQUE, '
        '"metadata" JSONB NOT NULL, "createdAt" TEXT)',
        'CREATE TABLE threads ("id" UUID PRIMARY KEY, "createdAt" TEXT, "name" TEXT, '
        '"userId" UUID REFERENCES users("id") ON DELETE CASCADE, "userIdentifier" TEXT, '
        '"tags" TEXT[], "metadata" JSONB)',
        'CREATE TABLE steps ("id" UUID PRIMARY KEY, "name" TEXT NOT NULL, "type" TEXT NOT NULL, '
        '"threadId" UUID NOT NULL REFERENCES threads("id") ON DELETE CASCADE, "parentId" UUID, '
        '"streaming" BOOLEAN NOT NULL, "waitForAnswer" BOOLEAN, "isError" BOOLEAN, '
        '"metadata" JSONB, "tags" TEXT[], "input" TEXT, "output" TEXT, "createdAt" TEXT, '
        '"command" TEXT, "start" TEXT, "end" TEXT, "generation" JSONB, "showInput" TEXT, '
        '"language" TEXT, "indent" INT)',
        'CREATE TABLE feedbacks ("id" UUID PRIMARY KEY, "forId" UUID NOT NULL, '
        '"threadId" UUID, "value" INT NOT NULL, "comment" TEXT)',
    ],
}


async def test_an_old_schema_is_upgraded_so_no_step_is_lost(database_url, start_app_with, gemini):
    dialect = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    await execute(database_url, *PUBLISHED_DDL[dialect])
    app = start_app_with(DATABASE_URL=database_url)
    assert "added column steps.autoCollapse" in app.log()
    assert "created table elements" in app.log()

    client = await new_chat(app)
    gemini.script(Reply("Stored."))
    await client.ask("Is this stored?")
    thread_id = await client.chat_thread()
    await client.disconnect()
    rows = await eventually(lambda: _rows_when(database_url, thread_id, 3), what="the stored chat")
    assert [text for _, text, _ in rows][1:] == ["Is this stored?", "Stored."]
    assert "Storage error" not in app.log()


async def test_the_sidebar_lists_renames_and_deletes_chats(database_url, start_app_with, gemini):
    app = start_app_with(DATABASE_URL=database_url)
    threads = []
    for question in ["Alpha question about otters", "Beta question about bees"]:
        client = await new_chat(app)
        await client.ask(question)
        threads.append(await client.chat_thread())
        await client.disconnect()

    async def listed():
        status, page = await api(
            client, "POST", "/project/threads", {"pagination": {"first": 20}, "filter": {}}
        )
        assert status == 200
        return [(t["id"], t["name"]) for t in page["data"]]

    # Titled from the first message. (Listed by last change, newest first: a chat's session is
    # written back when its tab closes, which may land after the next chat began.)
    assert sorted(
        await eventually(
            lambda: _when(listed, lambda rows: len(rows) == 2), what="two chats listed"
        )
    ) == sorted(
        [(threads[1], "Beta question about bees"), (threads[0], "Alpha question about otters")]
    )

    status, _ = await api(
        client, "PUT", "/project/thread", {"threadId": threads[0], "name": "Otters"}
    )
    assert status == 200
    status, _ = await api(client, "DELETE", "/project/thread", {"threadId": threads[1]})
    assert status == 200
    assert await listed() == [(threads[0], "Otters")]
    assert await query(
        database_url, 'SELECT COUNT(*) FROM steps WHERE "threadId" = :t', t=threads[1]
    ) == [(0,)]

    # An opened chat shows its messages; a chat that does not exist is "not found", not a crash.
    status, thread = await api(client, "GET", f"/project/thread/{threads[0]}")
    assert status == 200 and "Alpha question about otters" in json.dumps(thread)
    for path in [f"/project/thread/{uuid.uuid4()}"]:
        assert (await api(client, "GET", path))[0] == 404
    assert (
        await api(client, "PUT", "/project/thread", {"threadId": str(uuid.uuid4()), "name": "x"})
    )[0] == 404
    assert (await api(client, "DELETE", "/project/thread", {"threadId": str(uuid.uuid4())}))[
        0
    ] == 404


async def _when(fetch, accept):
    rows = await fetch()
    return rows if accept(rows) else None


async def test_editing_a_message_rewinds_what_the_model_is_sent(
    database_url, start_app_with, gemini
):
    app = start_app_with(DATABASE_URL=database_url)
    client = await new_chat(app)
    gemini.script(Reply("A1."), Reply("A2."), Reply("A3."), Reply("A2 again."))
    await client.ask("Q1")
    client.mark()
    second_id = await client.send("Q2")
    await client.wait_idle()
    await client.ask("Q3")

    await client.edit(second_id, "Q2, edited")
    await client.wait_for(
        lambda: any(m.content == "A2 again." for m in client.assistant_messages()),
        what="the answer to the edited message",
    )
    request = (await gemini.arrived(4))[-1]
    assert request.conversation[1:] == [
        ("user", "Q1"),
        ("assistant", "A1."),
        ("user", "Q2, edited"),
    ]
    # The next message continues from the edited branch only.
    gemini.script(Reply("A4."))
    await client.ask("Q4")
    assert (await gemini.arrived(5))[-1].conversation[1:] == [
        ("user", "Q1"),
        ("assistant", "A1."),
        ("user", "Q2, edited"),
        ("assistant", "A2 again."),
        ("user", "Q4"),
    ]
    thread_id = await client.chat_thread()
    await client.disconnect()
    expected = ["Q1", "A1.", "Q2, edited", "A2 again.", "Q4", "A4."]

    async def stored_texts():
        texts = [text for _, text, _ in await stored_steps(database_url, thread_id)][1:]
        return texts if texts == expected else None

    # Steps are deleted and written by background tasks; wait for the final state.
    assert await eventually(stored_texts, what=f"the stored chat to read {expected}")


async def test_feedback_is_stored_with_the_message(database_url, start_app_with, gemini):
    app = start_app_with(DATABASE_URL=database_url)
    client = await new_chat(app)
    gemini.script(Reply("Rate me."))
    replies = await client.ask("Hello")
    thread_id = await client.chat_thread()
    await eventually(lambda: _rows_when(database_url, thread_id, 3), what="the reply")

    status, body = await api(
        client,
        "PUT",
        "/feedback",
        {
            "sessionId": client.session_id,
            "feedback": {
                # What the frontend sends: the id of the run step the answer sits in.
                "forId": replies[0].parent_id,
                "threadId": thread_id,
                "value": 0,
                "comment": "Too short",
            },
        },
    )
    assert status == 200, body
    rows = await query(
        database_url,
        'SELECT s."name", a."output", f."value", f."comment" FROM feedbacks f '
        'JOIN steps s ON s."id" = f."forId" JOIN steps a ON a."parentId" = s."id"',
    )
    assert rows == [("on_message", "Rate me.", 0, "Too short")]
    await client.disconnect()
