"""An instance dies mid-answer: the answer was stored as it streamed, the chat reopens with it
marked as interrupted, the next message carries it in its history, and a page left open through
the crash shows all that again by itself."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.async_api import expect

from gemini_chat.history import REPLY_MARKS, history_from_steps, load_json
from gemini_chat.partial import PartialSaver, settle_interrupted
from gemini_chat.relay import LocalRelay, install_relay
from tests.app_process import AppServer, app_directory, start_app
from tests.chat_client import ChatClient
from tests.chromium import ARTIFACTS
from tests.conftest import app_env
from tests.db import app_database, eventually, query
from tests.fake_gemini import Reply
from tests.test_browser import asked_on_page, type_and_send
from tests.test_page import open_chat

MARK = REPLY_MARKS["interrupted"]
VISIBLE_MARK = "— interrupted: the server writing this answer stopped"


def counted_words(count: int) -> list[str]:
    return [f"w{i:03d} " for i in range(count)]


# --- the saver, alone -----------------------------------------------------------------------------


@dataclass
class Streaming:
    """A reply being written, as the saver sees a cl.Message."""

    content: str = ""
    metadata: dict[str, Any] = field(
        default_factory=lambda: {"kind": "reply", "for": "q", "status": "complete"}
    )

    def to_dict(self) -> dict[str, Any]:
        return {"id": "a", "threadId": "t", "output": self.content, "metadata": self.metadata}


class Clock:
    """The saver's sleeps, ended one at a time by the test (``tick``)."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._ends: asyncio.Queue[None] = asyncio.Queue()
        self._asked = asyncio.Condition()

    async def sleep(self, seconds: float) -> None:
        async with self._asked:
            self.asked.append(seconds)
            self._asked.notify_all()
        await self._ends.get()

    async def tick(self) -> None:
        """One interval passes; returns once the saver has acted on it and sleeps again."""
        count = len(self.asked)
        self._ends.put_nowait(None)
        async with self._asked:
            await asyncio.wait_for(self._asked.wait_for(lambda: len(self.asked) > count), 5)


class Database:
    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.open = asyncio.Event()
        self.open.set()

    async def write(self, step: dict[str, Any]) -> None:
        self.writes.append(step)
        await self.open.wait()


async def test_the_saver_writes_at_most_once_an_interval_and_only_what_changed():
    reply, clock, database = Streaming(), Clock(), Database()
    saver = PartialSaver(reply, 3.0, database.write, clock.sleep)
    saver.start()
    await clock.tick()  # no text yet: nothing to store
    assert database.writes == []

    reply.content = "Hello"
    await clock.tick()
    assert [(w["output"], w["metadata"]["status"]) for w in database.writes] == [
        ("Hello", "streaming")
    ]
    assert database.writes[0]["streaming"] is False  # no typing cursor on a page that loads it
    assert reply.metadata["status"] == "complete"  # the reply's own metadata is left alone

    await clock.tick()  # unchanged: no write
    assert len(database.writes) == 1

    for piece in (" wor", "ld", "!"):  # three pieces within one interval: one write
        reply.content += piece
    await clock.tick()
    assert [w["output"] for w in database.writes] == ["Hello", "Hello world!"]

    database.open.clear()  # a slow database: the next write does not end
    reply.content += " More"
    await clock.tick()
    reply.content += " and more"
    await clock.tick()  # the previous write is still running: no second one behind it
    assert [w["output"] for w in database.writes][2:] == ["Hello world! More"]
    database.open.set()
    await clock.tick()
    assert database.writes[-1]["output"] == "Hello world! More and more"
    assert len(database.writes) == 4

    saver.stop()
    reply.content += " after the end"
    await asyncio.sleep(0)
    assert len(database.writes) == 4
    assert set(clock.asked) == {3.0}


async def test_a_continued_answer_is_not_stored_again_until_it_grows():
    reply, clock, database = Streaming("Cut off here"), Clock(), Database()
    saver = PartialSaver(reply, 3.0, database.write, clock.sleep)
    saver.start()
    await clock.tick()
    assert database.writes == []
    reply.content += " and on"
    await clock.tick()
    assert [w["output"] for w in database.writes] == ["Cut off here and on"]
    saver.stop()


def stored_thread(status: str, output: str = "Half an ans") -> dict[str, Any]:
    return {
        "id": "thread-1",
        "steps": [
            {"id": "q1", "type": "user_message", "output": "Tell me"},
            {
                "id": "a1",
                "type": "assistant_message",
                "output": output,
                "streaming": True,
                "metadata": json.dumps({"kind": "reply", "for": "q1", "status": status}),
            },
        ],
    }


class Elsewhere(LocalRelay):
    async def streaming_elsewhere(self, thread_id: str) -> bool:
        return True


async def test_a_reply_left_streaming_is_settled_as_interrupted_and_its_text_kept():
    thread, database = stored_thread("streaming"), Database()
    assert await settle_interrupted(thread, (), database.write) == 1
    reply = thread["steps"][1]
    assert reply["output"] == "Half an ans" + MARK
    assert reply["streaming"] is False
    assert reply["metadata"]["status"] == "interrupted"
    assert [(w["id"], w["threadId"], w["output"]) for w in database.writes] == [
        ("a1", "thread-1", "Half an ans" + MARK)
    ]
    history = history_from_steps(thread["steps"], 10_000)
    assert [(t.user, t.assistant) for t in history.turns] == [("Tell me", "Half an ans")]


def thinking_step(status: str | None) -> dict[str, Any]:
    meta = {"kind": "thoughts"} | ({"status": status} if status else {})
    return {
        "id": "th1",
        "type": "llm",
        "name": "Thinking…",
        "output": "Weighing it",
        "streaming": False,
        "metadata": json.dumps(meta),
    }


async def test_a_thinking_step_left_streaming_keeps_its_thoughts_under_a_title_that_says_so():
    thread, database = stored_thread("streaming"), Database()
    thread["steps"].insert(1, thinking_step("streaming"))
    assert await settle_interrupted(thread, (), database.write) == 2
    thinking = thread["steps"][1]
    assert (thinking["name"], thinking["output"]) == ("Thinking interrupted", "Weighing it")
    assert thinking["metadata"]["status"] == "interrupted"
    assert [(w["id"], w["name"] if w["id"] == "th1" else w["output"]) for w in database.writes] == [
        ("th1", "Thinking interrupted"),
        ("a1", "Half an ans" + MARK),
    ]
    # Being written here, or finished (its final write has no status): left alone.
    for live_ids, status in (({"th1", "a1"}, "streaming"), ((), None)):
        thread, database = stored_thread("complete"), Database()
        thread["steps"].insert(1, thinking_step(status))
        assert await settle_interrupted(thread, live_ids, database.write) == 0
        assert thread["steps"][1]["name"] == "Thinking…" and database.writes == []


@pytest.mark.parametrize(
    "status, live_ids, relay",
    [("complete", (), None), ("streaming", {"a1"}, None), ("streaming", (), Elsewhere())],
    ids=["complete", "streaming-here", "streaming-elsewhere"],
)
async def test_a_reply_still_being_written_or_ended_is_left_alone(status, live_ids, relay):
    thread, database = stored_thread(status), Database()
    if relay is not None:
        install_relay(relay)
    try:
        assert await settle_interrupted(thread, live_ids, database.write) == 0
    finally:
        install_relay(LocalRelay())
    assert thread["steps"][1]["output"] == "Half an ans"
    assert database.writes == []


# --- the real app, killed mid-answer ------------------------------------------------------------


def database_of(app: AppServer) -> str:
    return getattr(app, "database_url", None) or app_database(app)


async def stored_replies(app: AppServer, thread_id: str) -> list[tuple[str, dict]]:
    rows = await query(
        database_of(app),
        'SELECT "output", "metadata" FROM steps WHERE "threadId" = :t '
        'AND "type" = \'assistant_message\' ORDER BY "createdAt"',
        t=thread_id,
    )
    replies = [(output, load_json(metadata)) for output, metadata in rows]
    return [(output, meta) for output, meta in replies if meta.get("kind") == "reply"]


async def partial_text(app: AppServer, thread_id: str, longer_than: int = 0) -> str | None:
    """The reply's stored text, once it is stored as streaming and longer than given."""
    replies = await stored_replies(app, thread_id)
    if len(replies) == 1 and replies[0][1].get("status") == "streaming":
        text = replies[0][0]
        return text if len(text) > longer_than else None
    return None


@pytest.fixture
def restartable(gemini, request):
    """Start the app in one directory (its SQLite database, or the PostgreSQL one a test sets
    as ``start.database_url``) and again on the same port after a kill; every instance is
    stopped at the end."""
    directory = app_directory()
    servers: list[AppServer] = []

    def start(port: int | None = None) -> AppServer:
        overrides = {"PARTIAL_SAVE_SECONDS": "0.5"}
        if start.database_url:
            overrides["DATABASE_URL"] = start.database_url
        server = start_app(app_env(gemini, **overrides), directory=directory, port=port)
        server.database_url = start.database_url
        servers.append(server)
        return server

    start.database_url = None

    yield start
    for server in servers:
        server.stop()


async def test_a_killed_answer_was_stored_as_it_streamed_and_reopens_interrupted(
    restartable, gemini, database_url
):
    if database_url.startswith("postgresql"):
        restartable.database_url = database_url
    app = restartable()
    words = counted_words(400)
    gemini.script(Reply(chunks=words, delay=0.05))  # 20 s: still streaming when killed
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    await client.send("Count for me")
    thread_id = await client.chat_thread()

    # Stored while it streams, as the status "streaming", and growing.
    first = await eventually(lambda: partial_text(app, thread_id), what="a partial save")
    assert first.startswith("w000 ")
    grown = await eventually(
        lambda: partial_text(app, thread_id, len(first)), what="a later, longer save"
    )
    assert grown.startswith(first)
    shown = next(m for m in client.assistant_messages() if m.content.startswith("w000"))
    assert shown.streaming

    app.kill()
    await client.disconnect()
    saved = (await stored_replies(app, thread_id))[0][0]
    assert saved.startswith(grown) and "w399" not in saved

    again = restartable(port=app.port)
    reopened = ChatClient(again.url, headers=dict(client.headers))
    await reopened.connect(thread_id=thread_id)
    answer = await reopened.wait_for(
        lambda: next((m for m in reopened.assistant_messages() if MARK in m.content), None),
        what="the interrupted answer",
    )
    assert answer.content == saved + MARK
    resumed = next(data for name, data in reopened.events if name == "resume_thread")
    step = next(s for s in resumed["steps"] if s["id"] == answer.id)
    assert not step["streaming"]  # the page draws no typing cursor on it
    replies = await stored_replies(again, thread_id)
    assert [(text, meta["status"]) for text, meta in replies] == [(saved + MARK, "interrupted")]
    # Regenerate is offered on it, as on any last answer.
    await reopened.wait_for(
        lambda: any(a["name"] == "regenerate" for a in reopened.actions_on(answer.id)),
        what="Regenerate on the interrupted answer",
    )

    gemini.script(Reply("Carrying on."))
    replies_now = await reopened.ask("Go on please")
    assert [m.content for m in replies_now] == ["Carrying on."]
    request = (await gemini.arrived(2))[-1]
    assert request.conversation[1:] == [
        ("user", "Count for me"),
        ("assistant", saved),
        ("user", "Go on please"),
    ]
    await reopened.disconnect()


async def stored_thoughts(app: AppServer, thread_id: str) -> list[tuple[str, str, dict]]:
    rows = await query(
        database_of(app),
        'SELECT "name", "output", "metadata" FROM steps WHERE "threadId" = :t AND "type" = \'llm\'',
        t=thread_id,
    )
    steps = [(name, output, load_json(metadata)) for name, output, metadata in rows]
    return [step for step in steps if step[2].get("kind") == "thoughts"]


async def test_thoughts_of_an_answer_killed_while_thinking_reopen_marked_interrupted(
    restartable, gemini
):
    app = restartable()
    ideas = [f"idea {i:03d}. " for i in range(300)]
    gemini.script(Reply("Never reached.", thoughts=ideas, delay=0.05))  # 15 s of thinking
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    await client.send("Think it over")
    thread_id = await client.chat_thread()

    async def saved_while_thinking() -> str | None:
        steps = await stored_thoughts(app, thread_id)
        if len(steps) == 1 and steps[0][2].get("status") == "streaming":
            return steps[0][1] if "idea 003." in steps[0][1] else None
        return None

    await eventually(saved_while_thinking, what="the thoughts stored as they stream")
    app.kill()
    await client.disconnect()
    ((name, saved, _),) = await stored_thoughts(app, thread_id)
    assert name == "Thinking…" and saved.startswith("idea 000. ") and "idea 299." not in saved

    again = restartable(port=app.port)
    reopened = ChatClient(again.url, headers=dict(client.headers))
    await reopened.connect(thread_id=thread_id)
    loaded = await reopened.wait_for(
        lambda: next((d for n, d in reopened.events if n == "resume_thread"), None),
        what="the chat as loaded",
    )
    (step,) = [s for s in loaded["steps"] if load_json(s.get("metadata")).get("kind") == "thoughts"]
    assert (step["name"], step["output"], step["streaming"]) == (
        "Thinking interrupted",
        saved,
        False,
    )
    ((name, output, meta),) = await stored_thoughts(again, thread_id)
    assert (name, output, meta["status"]) == ("Thinking interrupted", saved, "interrupted")

    gemini.script(Reply("Carrying on."))
    assert [m.content for m in await reopened.ask("Go on please")] == ["Carrying on."]
    request = (await gemini.arrived(2))[-1]
    assert request.conversation[-1] == ("user", "Go on please")
    assert not any("idea" in text for _, text in request.conversation)  # thoughts stay out
    await reopened.disconnect()


async def test_the_final_write_replaces_the_partial_one_complete_or_stopped(restartable, gemini):
    app = restartable()
    gemini.script(
        Reply(chunks=counted_words(40), delay=0.05), Reply(chunks=counted_words(400), delay=0.05)
    )
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    await client.send("Count to forty")
    thread_id = await client.chat_thread()
    await eventually(lambda: partial_text(app, thread_id), what="a partial save")
    await client.wait_idle()
    whole = "".join(counted_words(40))

    async def stored_as(expected: list[tuple[str, str]]) -> bool:
        rows = await stored_replies(app, thread_id)
        return [(text, meta.get("status")) for text, meta in rows] == expected

    await eventually(lambda: stored_as([(whole, "complete")]), what="the complete answer")

    await client.send("Count to four hundred")
    await client.wait_for(
        lambda: any("w010" in m.content for m in client.assistant_messages()[2:]),
        what="the second answer streaming",
    )

    async def second_saved() -> bool:
        rows = await stored_replies(app, thread_id)
        return len(rows) == 2 and rows[1][1].get("status") == "streaming"

    await eventually(second_saved, what="the second answer saved as it streams")
    client.mark()
    await client.stop()
    await client.wait_for(lambda: "task_end" in [n for n, _ in client.events[client._mark :]])
    shown = client.assistant_messages()[-1].content
    assert shown.endswith(REPLY_MARKS["stopped"])
    await eventually(
        lambda: stored_as([(whole, "complete"), (shown, "stopped")]), what="the stopped answer"
    )
    assert not await query(
        app_database(app),
        'SELECT "id" FROM steps WHERE "streaming" = 1 AND "threadId" = :t',
        t=thread_id,
    )
    await client.disconnect()


def words_after(count: int) -> list[str]:
    return [f" w{i:03d}" for i in range(count)]


@pytest.mark.parametrize("again", ["continue", "regenerate"])
async def test_an_answer_asked_again_or_continued_when_killed_reopens_interrupted(
    restartable, gemini, again
):
    app = restartable()
    if again == "continue":
        first = Reply(chunks=["The start", " of it"], finish_reason="length")
    else:
        first = Reply("Old answer.")
    gemini.script(first, Reply(chunks=words_after(400), delay=0.05))
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    shown = await client.ask("Tell me all")
    thread_id = await client.chat_thread()
    button = "continue" if again == "continue" else "regenerate"
    anchor = shown[-1]
    await client.wait_for(
        lambda: [a for a in client.actions_on(anchor.id) if a["name"] == button],
        what=f"{button} on the answer",
    )
    [action] = [a for a in client.actions_on(anchor.id) if a["name"] == button]
    status, body = await client.call_action(action)
    assert status == 200, body

    async def streaming_row() -> tuple[str, str] | None:
        rows = await query(
            app_database(app),
            'SELECT "id", "output", "metadata" FROM steps WHERE "threadId" = :t',
            t=thread_id,
        )
        for step_id, output, metadata in rows:
            if json.loads(metadata or "{}").get("status") == "streaming" and " w005" in output:
                return step_id, output
        return None

    await eventually(streaming_row, what="the answer saved as it streams")
    app.kill()
    await client.disconnect()
    reply_id, saved = await streaming_row()
    if again == "continue":
        assert reply_id == shown[0].id  # the cut answer grows in place
        assert saved.startswith("The start of it w000 w001")
    else:
        assert reply_id != shown[0].id
        assert saved.startswith(" w000 w001")

    restarted = restartable(port=app.port)
    reopened = ChatClient(restarted.url, headers=dict(client.headers))
    await reopened.connect(thread_id=thread_id)
    answer = await reopened.wait_for(
        lambda: reopened.messages.get(reply_id), what="the interrupted answer"
    )
    assert answer.content == saved + MARK
    rows = await stored_replies(restarted, thread_id)
    assert [(text, meta["status"]) for text, meta in rows if meta.get("kind") == "reply"] == [
        (saved + MARK, "interrupted")
    ]
    gemini.script(Reply("Next."))
    await reopened.wait_for(
        lambda: any(a["name"] == "regenerate" for a in reopened.actions_on(reply_id)),
        what="Regenerate on the interrupted answer",
    )
    await reopened.ask("And then?")
    request = (await gemini.arrived(3))[-1]
    assert request.conversation[1:] == [
        ("user", "Tell me all"),
        ("assistant", saved),
        ("user", "And then?"),
    ]
    await reopened.disconnect()


# --- the page left open through the crash --------------------------------------------------------


@pytest.mark.browser
async def test_the_open_page_shows_the_interrupted_answer_after_a_restart_without_reload(
    restartable, gemini, browser
):
    app = restartable()
    words = counted_words(400)
    gemini.script(Reply(chunks=words, delay=0.05))
    page = await open_chat(browser, app)
    await type_and_send(page, "Count on the page")
    await page.get_by_text("w010", exact=False).wait_for(timeout=15_000)
    await page.wait_for_url("**/thread/*", timeout=15_000)
    thread_id = page.url.rsplit("/", 1)[1]
    await eventually(lambda: partial_text(app, thread_id, len("w000 w010 ")), what="a save")

    # A mark only this page load carries: a reload would lose it.
    await page.evaluate("window.sameLoad = true")
    app.kill()
    saved = (await stored_replies(app, thread_id))[0][0]
    restartable(port=app.port)

    # The same page, not reloaded, shows the chat again with the answer marked.
    mark = page.get_by_text(VISIBLE_MARK)
    await mark.wait_for(timeout=30_000)
    answer = page.locator(".ai-message .message-content", has_text="w000")
    await expect(answer).to_have_count(1)
    shown = (await answer.inner_text()).replace(VISIBLE_MARK, "").split()
    assert shown == saved.split()
    question = page.locator('.step[data-step-type="user_message"]', has_text="Count on the page")
    await expect(question).to_have_count(1)
    # Nothing is being written: no typing cursor, and the buttons of a last answer on it.
    await expect(page.locator(".loading-cursor")).to_have_count(0)
    await page.get_by_role("button", name="Regenerate").wait_for(timeout=15_000)
    assert await page.evaluate("window.sameLoad === true")  # never reloaded
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "interrupted-after-restart.png")

    request = await asked_on_page(page, gemini, "Are you back?", "Still here.")
    assert request.conversation[1:] == [
        ("user", "Count on the page"),
        ("assistant", saved),
        ("user", "Are you back?"),
    ]


@pytest.mark.browser
async def test_the_open_page_shows_thoughts_killed_mid_thinking_as_interrupted(
    restartable, gemini, browser
):
    app = restartable()
    ideas = [f"Idea {i:03d} of a long thought. " for i in range(300)]
    gemini.script(Reply("Never reached.", thoughts=ideas, delay=0.05))
    page = await open_chat(browser, app)
    await type_and_send(page, "Think it over on the page")
    thinking = page.locator('.step[data-step-type="llm"]')
    await thinking.get_by_text("Idea 010", exact=False).wait_for(timeout=15_000)
    await page.wait_for_url("**/thread/*", timeout=15_000)
    thread_id = page.url.rsplit("/", 1)[1]

    async def saved_with_idea_10() -> str | None:
        steps = await stored_thoughts(app, thread_id)
        return steps[0][1] if steps and "Idea 010" in steps[0][1] else None

    saved = await eventually(saved_with_idea_10, what="the thoughts stored as they stream")
    await page.evaluate("window.sameLoad = true")
    app.kill()
    saved = (await stored_thoughts(app, thread_id))[0][1]
    restartable(port=app.port)

    # The same page, not reloaded, shows the step under its new title, with what was saved.
    title = thinking.locator("button").first
    await expect(title).to_have_text("Thinking interrupted", timeout=30_000)
    await expect(thinking).to_have_count(1)
    await expect(page.locator(".loading-cursor")).to_have_count(0)
    if await thinking.get_by_text("Idea 000", exact=False).count() == 0:
        await title.click()  # a stored step loads folded
    shown = thinking.locator(".message-content").first
    await expect(shown).to_contain_text("Idea 000 of a long thought.")
    assert (await shown.inner_text()).split() == saved.split()
    assert await page.evaluate("window.sameLoad === true")  # never reloaded
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "thinking-interrupted-after-restart.png")

    request = await asked_on_page(page, gemini, "Are you back?", "Back again.")
    assert request.conversation[-1] == ("user", "Are you back?")
    assert not any("Idea" in text for _, text in request.conversation)


@pytest.mark.browser
async def test_a_new_chat_open_through_a_restart_shows_its_welcome_and_starters_once(
    restartable, gemini, browser
):
    app = restartable()
    page = await open_chat(browser, app)
    starters = page.get_by_role("button", name="Plan a trip")
    await expect(starters).to_have_count(1)
    await page.evaluate("window.sameLoad = true")
    app.kill()
    await expect(page.locator("#chat-submit")).to_be_disabled()  # the page lost its server
    restartable(port=app.port)

    # The page reconnects by itself, to a server that starts its session afresh and sends the
    # welcome and starters again: the page shows them once, and takes the starters away when
    # the chat begins.
    gemini.script(Reply("Hi again."))
    await type_and_send(page, "Hello after the restart")
    await page.get_by_text("Hi again.").wait_for(timeout=15_000)
    await expect(page.get_by_text("Ask me anything")).to_have_count(1)
    await expect(starters).to_have_count(0)
    assert await page.evaluate("window.sameLoad === true")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "new-chat-after-restart.png")


@pytest.mark.browser
async def test_an_open_page_that_reconnects_shows_each_usage_line_and_button_once(
    restartable, gemini, browser
):
    """The page keeps the buttons it had when its socket comes back to a server that resumes the
    chat afresh (a restart, or another instance): they are sent again, and must not double."""
    app = restartable()
    page = await open_chat(browser, app)
    for question, answer in (("First question", "First answer."), ("Second one", "Second answer.")):
        gemini.script(Reply(answer))
        await type_and_send(page, question)
        await page.get_by_text(answer).wait_for(timeout=15_000)
    await page.get_by_role("button", name="Regenerate").wait_for(timeout=15_000)
    usage = page.locator('[id^="gemini-usage-"]')
    await expect(usage).to_have_count(2)
    await page.evaluate("window.sameLoad = true")
    app.kill()
    await expect(page.locator("#chat-submit")).to_be_disabled()  # the page lost its server
    restartable(port=app.port)

    # Reconnected by itself (the send button comes back), resumed: every line and button once.
    gemini.script(Reply("Third answer."))
    await type_and_send(page, "Third one")
    await page.get_by_text("Third answer.").wait_for(timeout=15_000)
    await expect(usage).to_have_count(3)
    await expect(page.get_by_role("button", name="Regenerate")).to_have_count(1)
    await expect(page.get_by_text("tokens in this chat")).to_have_count(1)
    assert await page.evaluate("window.sameLoad === true")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "reconnected-buttons-once.png")
