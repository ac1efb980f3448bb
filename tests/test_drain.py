"""SIGTERM drains an instance: the real `chainlit run`, the fake Gemini streaming slowly, the
socket client and Chromium.

Running answers finish and are stored, then the process exits 0 (at once when idle); nothing
new starts there meanwhile (a new page or socket gets 503, a message in an open chat gets the
notice); an answer past DRAIN_SECONDS is stored as interrupted; a second signal cuts at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
import uuid

import pytest
import websockets.exceptions
import websockets.sync.client
from playwright.async_api import expect

from gemini_chat.actions import REGENERATE
from gemini_chat.history import REPLY_MARKS
from gemini_chat.lifecycle import DRAINING_NOTICE
from tests.chat_client import ChatClient
from tests.db import app_database, query
from tests.fake_gemini import Reply
from tests.test_browser import type_and_send
from tests.test_page import last_step, open_chat, screenshot

PIECES = [f"piece {n}, " for n in range(20)]
# The answers here are slow on purpose (a piece a second, a first word after 1.5 s): the app
# must not give up on them as stalled.
SLOW_GEMINI = {"GEMINI_STALL_TIMEOUT": "10"}
WHOLE = "".join(PIECES)


def status_of(url: str, path: str, **headers: str) -> int:
    request = urllib.request.Request(url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def websocket_handshake_status(url: str) -> int:
    """The HTTP status a socket.io websocket handshake (no sid: a new session) is answered."""
    address = url.replace("http://", "ws://") + "/ws/socket.io/?EIO=4&transport=websocket"
    try:
        with websockets.sync.client.connect(address, open_timeout=10):
            return 101
    except websockets.exceptions.InvalidStatus as refusal:
        return refusal.response.status_code


async def exit_status(app, timeout: float) -> int:
    """The app process's exit status, once it has exited (within ``timeout`` seconds)."""
    return await asyncio.to_thread(app.process.wait, timeout)


async def stored_replies(app) -> list[tuple[str, dict]]:
    """The stored answers (text and metadata), oldest first."""
    rows = await query(
        app_database(app),
        "SELECT output, metadata FROM steps WHERE type = 'assistant_message' ORDER BY "
        '"createdAt"',
    )
    replies = [(output, json.loads(meta or "{}")) for output, meta in rows]
    return [(text, meta) for text, meta in replies if meta.get("kind") == "reply"]


async def streaming_answer(app, gemini, text: str, reply: Reply) -> ChatClient:
    """A connected client whose question is being answered: its first pieces have arrived."""
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    gemini.script(reply)
    client.mark()
    await client.send(text)
    await client.wait_for(
        lambda: any("piece 1," in m.content for m in client.assistant_messages()),
        what="the answer streaming",
    )
    return client


async def test_sigterm_lets_a_streaming_answer_finish_and_store_then_exits_zero(
    start_app_with, gemini
):
    app = start_app_with(DRAIN_SECONDS="30", **SLOW_GEMINI)
    client = await streaming_answer(
        app, gemini, "Tell me a long story", Reply(chunks=PIECES, delay=0.15)
    )
    # The same chat open in a second tab, following the answer live.
    viewer = ChatClient(app.url)
    await viewer.connect(thread_id=await client.chat_thread())
    await viewer.wait_for(
        lambda: any("piece" in m.content for m in viewer.assistant_messages()),
        what="the answer in the second tab",
    )
    app.process.send_signal(signal.SIGTERM)

    # Draining: whatever would open a session here is turned away, for nginx to send elsewhere.
    assert await asyncio.to_thread(status_of, app.url, "/") == 503
    handshake = "/ws/socket.io/?EIO=4&transport=polling"
    assert await asyncio.to_thread(status_of, app.url, handshake) == 503
    assert await asyncio.to_thread(websocket_handshake_status, app.url) == 503
    assert await asyncio.to_thread(status_of, app.url, "/health") == 200  # still alive
    # Alive, not ready: a load balancer's readiness probe takes it out of the rotation.
    assert await asyncio.to_thread(status_of, app.url, "/healthz") == 200
    assert await asyncio.to_thread(status_of, app.url, "/readyz") == 503

    # The answer streams on to its end, in the client that asked.
    await client.wait_idle(timeout=20)
    ended = time.monotonic()
    answers = [m.content for m in client.assistant_messages() if m.content.startswith("piece")]
    assert answers == [WHOLE]
    await viewer.wait_for(
        lambda: (
            [m.content for m in viewer.assistant_messages() if m.content.startswith("piece")]
            == [WHOLE]
        ),
        what="the whole answer in the second tab",
    )
    assert await exit_status(app, 10) == 0
    assert time.monotonic() - ended < 3  # soon after the answer, not after the drain time
    assert [(text, meta["status"]) for text, meta in await stored_replies(app)] == [
        (WHOLE, "complete")
    ]
    assert len(gemini.requests) == 1
    await client.disconnect()
    await viewer.disconnect()


async def test_an_answer_asked_but_not_yet_begun_is_waited_for(start_app_with, gemini):
    app = start_app_with(DRAIN_SECONDS="30", **SLOW_GEMINI)
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    gemini.script(Reply(text="Worth the wait", first_delay=1.5))
    client.mark()
    await client.send("Take your time")
    await gemini.arrived(1)  # asked; Gemini has not said a word yet
    app.process.send_signal(signal.SIGTERM)
    await client.wait_idle(timeout=20)
    assert "Worth the wait" in [m.content for m in client.assistant_messages()]
    assert await exit_status(app, 10) == 0
    assert [(t, m["status"]) for t, m in await stored_replies(app)] == [
        ("Worth the wait", "complete")
    ]
    await client.disconnect()


async def connect_by_long_polling(client: ChatClient) -> ChatClient:
    """Connect as a page does where websockets are blocked: socket.io over long-polling, a
    request always waiting at the server for the next event."""
    await client.login_local()
    await client.sio.connect(
        client.url,
        socketio_path="/ws/socket.io",
        transports=["polling"],
        headers=client.headers,
        auth={
            "clientType": "webapp",
            "sessionId": client.session_id,
            "threadId": "",
            "userEnv": "{}",
            "chatProfile": "",
        },
        wait_timeout=10,
    )
    await client.sio.emit("connection_successful")
    return client


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_an_idle_instance_exits_at_once(start_app_with, gemini, transport):
    app = start_app_with(DRAIN_SECONDS="30", **SLOW_GEMINI)
    client = ChatClient(app.url)
    if transport == "polling":
        await connect_by_long_polling(client)
    else:
        await client.connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    signalled = time.monotonic()
    app.process.send_signal(signal.SIGTERM)
    assert await exit_status(app, 40) == 0
    assert time.monotonic() - signalled < 3
    await client.disconnect()


async def test_an_answer_past_the_drain_time_is_stored_interrupted_with_its_text(
    start_app_with, gemini
):
    app = start_app_with(DRAIN_SECONDS="2", **SLOW_GEMINI)
    client = await streaming_answer(
        app, gemini, "Tell me an endless story", Reply(chunks=PIECES, delay=1)
    )
    signalled = time.monotonic()
    app.process.send_signal(signal.SIGTERM)
    assert await exit_status(app, 10) == 0
    assert 2 <= time.monotonic() - signalled < 5
    [(text, meta)] = await stored_replies(app)
    assert meta["status"] == "interrupted"
    assert text.endswith(REPLY_MARKS["interrupted"])
    written = text.removesuffix(REPLY_MARKS["interrupted"])
    assert written.startswith("piece 0, piece 1, ") and written != WHOLE
    assert WHOLE.startswith(written)
    # What the client was shown before the server went down is what was stored.
    shown = next(m.content for m in client.assistant_messages() if m.content.startswith("piece"))
    assert shown.startswith(written)
    thread = await client.chat_thread()
    await client.disconnect()

    # Started again on its database, the chat goes on: the cut answer is in the next request
    # as it was written, without its mark.
    again = start_app_with(directory=app.directory, DRAIN_SECONDS="2", **SLOW_GEMINI)
    resumed = ChatClient(again.url)
    await resumed.connect(thread_id=thread)
    await resumed.wait_for(
        lambda: any(m.content == text for m in resumed.assistant_messages()),
        what="the interrupted answer, marked, in the reopened chat",
    )
    gemini.script(Reply(text="The end."))
    await resumed.ask("And then?")
    assert gemini.last.conversation[1:] == [
        ("user", "Tell me an endless story"),
        ("assistant", written),
        ("user", "And then?"),
    ]
    await resumed.disconnect()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_cuts_the_answers_at_once(start_app_with, gemini, second):
    app = start_app_with(DRAIN_SECONDS="30", **SLOW_GEMINI)
    client = await streaming_answer(
        app, gemini, "Tell me a slow story", Reply(chunks=PIECES, delay=1)
    )
    app.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(status_of, app.url, "/")  # the first is being handled
    signalled = time.monotonic()
    app.process.send_signal(second)
    assert await exit_status(app, 10) == 0
    assert time.monotonic() - signalled < 3
    [(text, meta)] = await stored_replies(app)
    assert meta["status"] == "interrupted"
    assert text.startswith("piece 0, piece 1, ")
    await client.disconnect()


async def test_sigint_alone_stores_what_streamed_and_stops_at_once(start_app_with, gemini):
    app = start_app_with(DRAIN_SECONDS="30", **SLOW_GEMINI)
    client = await streaming_answer(
        app, gemini, "Tell me a slow tale", Reply(chunks=PIECES, delay=1)
    )
    signalled = time.monotonic()
    app.process.send_signal(signal.SIGINT)
    assert await exit_status(app, 10) == 0
    assert time.monotonic() - signalled < 3
    [(text, meta)] = await stored_replies(app)
    assert (meta["status"], text[:18]) == ("interrupted", "piece 0, piece 1, ")
    await client.disconnect()


async def test_a_message_sent_while_draining_gets_the_notice_and_goes_nowhere(
    start_app_with, gemini
):
    app = start_app_with(DRAIN_SECONDS="30", **SLOW_GEMINI)
    asking = await streaming_answer(app, gemini, "Keep talking", Reply(chunks=PIECES, delay=0.15))
    other = await ChatClient(app.url).connect()
    await other.wait_for(other.assistant_messages, what="the welcome message")
    app.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(status_of, app.url, "/")

    await other.send("Are you there?")
    await other.wait_for(lambda: DRAINING_NOTICE in other.errors(), what="the draining notice")
    await asking.wait_idle(timeout=20)
    assert await exit_status(app, 10) == 0
    assert len(gemini.requests) == 1  # the running answer's only
    stored = await query(app_database(app), "SELECT output FROM steps")
    assert not [row for row in stored if row[0] in ("Are you there?", DRAINING_NOTICE)]
    await asking.disconnect()
    await other.disconnect()


@pytest.mark.browser
async def test_in_chromium_an_answer_finishes_and_a_new_message_gets_the_notice(
    browser, start_app_with, gemini
):
    app = start_app_with(DRAIN_SECONDS="30", **SLOW_GEMINI)
    asking = await open_chat(browser, app)
    other = await open_chat(browser, app)
    gemini.script(Reply(chunks=PIECES, delay=0.15))
    await type_and_send(asking, "Keep going")
    answer = last_step(asking, "assistant_message")
    await expect(answer).to_contain_text("piece 1,", timeout=15_000)
    app.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(status_of, app.url, "/")  # draining

    await type_and_send(other, "Hello from the open page")
    await expect(other.get_by_text(DRAINING_NOTICE)).to_be_visible(timeout=15_000)
    await screenshot(other, "drain-notice.png")
    # When the answer ends, the page fetches its list of chats again: served, no error shown.
    async with asking.expect_response(
        lambda response: response.url.endswith("/project/threads"), timeout=20_000
    ) as listed:
        await expect(answer).to_have_text(WHOLE.strip(), timeout=20_000)
    assert (await listed.value).status == 200
    await expect(asking.get_by_text("Error fetching threads")).to_have_count(0)
    await screenshot(asking, "drain-answer-finished.png")
    assert await exit_status(app, 10) == 0
    assert len(gemini.requests) == 1  # the running answer's only
    assert [text for text, _ in await stored_replies(app)] == [WHOLE]
    for page in (asking, other):
        await page.context.close()


async def test_asking_again_or_editing_while_draining_gets_the_notice_a_stranger_503(
    start_app_with, gemini
):
    app = start_app_with(DRAIN_SECONDS="30", **SLOW_GEMINI)
    other = await ChatClient(app.url).connect()
    await other.wait_for(other.assistant_messages, what="the welcome message")
    gemini.script_for("Quick one", Reply(text="A quick answer"))
    [answer] = await other.ask("Quick one")
    await other.wait_for(
        lambda: any(a["name"] == REGENERATE for a in other.actions_on(answer.id)),
        what="Regenerate on the answer",
    )
    [regenerate] = [a for a in other.actions_on(answer.id) if a["name"] == REGENERATE]
    asking = await streaming_answer(app, gemini, "Keep on", Reply(chunks=PIECES, delay=0.15))
    app.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(status_of, app.url, "/")

    # A click in a chat open here is that chat's: it reaches the app, which answers no more.
    status, _ = await other.call_action(regenerate)
    assert status == 200
    await other.wait_for(lambda: DRAINING_NOTICE in other.errors(), what="the draining notice")
    # An edited message would be asked again: refused the same way, the stored one unchanged.
    [question] = [m.id for m in other.messages.values() if m.content == "Quick one"]
    await other.edit(question, "Quick one, edited")
    await other.wait_for(
        lambda: other.errors().count(DRAINING_NOTICE) == 2, what="the notice for the edit"
    )
    # A click naming no session open here is a newcomer's: elsewhere.
    status, _ = await other.call_action(regenerate, session_id=str(uuid.uuid4()))
    assert status == 503
    await asking.wait_idle(timeout=20)
    assert await exit_status(app, 10) == 0
    assert len(gemini.requests) == 2  # the quick answer and the running one
    stored = await query(app_database(app), "SELECT output FROM steps WHERE id = :id", id=question)
    assert stored == [("Quick one",)]
    await asking.disconnect()
    await other.disconnect()


# -- the drain's order of things, in-process


@pytest.fixture
def fresh_lifecycle(monkeypatch):
    """The process's lifecycle as at start, put back after the test."""
    from gemini_chat.lifecycle import lifecycle

    monkeypatch.setattr(lifecycle, "draining", False)
    monkeypatch.setattr(lifecycle, "cutting", False)
    monkeypatch.setattr(lifecycle, "turns", set())
    return lifecycle


class Shutdown:
    """uvicorn's exit handler, as the drain calls it, and the writes it waits for."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.called = asyncio.Event()
        self.settled = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.calls.append(signum)
        self.called.set()

    async def settle(self) -> None:
        self.settled += 1


def turn(lifecycle, finished: asyncio.Event, statuses: list[str]) -> asyncio.Task:
    """A turn as the chat runs one: reported, and stored with its status when cancelled."""

    async def run() -> None:
        lifecycle.track(asyncio.current_task())
        try:
            await finished.wait()
            statuses.append("complete")
        except asyncio.CancelledError:
            statuses.append(lifecycle.reply_status_when_cancelled())
            raise

    return asyncio.create_task(run())


async def test_the_drain_waits_for_the_running_turn_then_settles_writes_and_shuts_down(
    fresh_lifecycle,
):
    from gemini_chat.drain import Drain

    shutdown, finished, statuses = Shutdown(), asyncio.Event(), []
    running = turn(fresh_lifecycle, finished, statuses)
    await asyncio.sleep(0)
    drain = Drain(30, shutdown.settle, shutdown)
    drain.on_signal(signal.SIGTERM)
    assert fresh_lifecycle.draining
    await asyncio.sleep(0.05)
    assert shutdown.calls == []  # the answer is still running
    finished.set()
    await asyncio.wait_for(shutdown.called.wait(), 2)
    assert (shutdown.calls, shutdown.settled, statuses) == ([signal.SIGTERM], 1, ["complete"])
    await running


async def test_the_drain_time_cuts_a_turn_as_interrupted(fresh_lifecycle):
    from gemini_chat.drain import Drain

    shutdown, statuses = Shutdown(), []
    running = turn(fresh_lifecycle, asyncio.Event(), statuses)
    await asyncio.sleep(0)
    Drain(0.2, shutdown.settle, shutdown).on_signal(signal.SIGTERM)
    await asyncio.wait_for(shutdown.called.wait(), 2)
    assert (statuses, running.cancelled(), shutdown.settled) == (["interrupted"], True, 1)


async def test_a_second_signal_cuts_at_once_and_a_third_is_uvicorns(fresh_lifecycle):
    from gemini_chat.drain import Drain

    shutdown, statuses = Shutdown(), []
    turn(fresh_lifecycle, asyncio.Event(), statuses)
    await asyncio.sleep(0)
    drain = Drain(30, shutdown.settle, shutdown)
    drain.on_signal(signal.SIGTERM)
    await asyncio.sleep(0.05)
    drain.on_signal(signal.SIGTERM)
    await asyncio.wait_for(shutdown.called.wait(), 2)
    assert statuses == ["interrupted"]
    drain.on_signal(signal.SIGINT)
    assert shutdown.calls == [signal.SIGTERM, signal.SIGINT]


async def test_with_nothing_running_the_drain_shuts_down_at_once(fresh_lifecycle):
    from gemini_chat.drain import Drain

    shutdown = Shutdown()
    Drain(30, shutdown.settle, shutdown).on_signal(signal.SIGTERM)
    await asyncio.wait_for(shutdown.called.wait(), 0.5)
    assert shutdown.calls == [signal.SIGTERM]


async def test_the_drain_waits_for_the_writes_asked_for_before_it(tmp_path):
    """Chainlit stores each message from a task of its own: the process must not exit before
    the last answer's write has run."""
    from gemini_chat.drain import writes_done
    from gemini_chat.storage import ChatDataLayer

    layer = ChatDataLayer(f"sqlite+aiosqlite:///{tmp_path}/chats.db")
    release, order = asyncio.Event(), []

    async def slow_write() -> None:
        await release.wait()
        order.append("written")

    async def settle() -> None:
        await writes_done(layer)
        order.append("settled")

    writing = asyncio.create_task(layer._in_order(slow_write))
    settling = asyncio.create_task(settle())
    await asyncio.sleep(0.1)
    assert order == []  # still waiting for the write
    release.set()
    await asyncio.wait_for(asyncio.gather(writing, settling), 2)
    assert order == ["written", "settled"]
    await layer.engine.dispose()
