"""One chat, any instance: two real `chainlit run` instances on one PostgreSQL database, talking
through its LISTEN/NOTIFY (gemini_chat/relay.py). A chat opened on instance B follows the answer
streaming on instance A, and can stop it; only its owner; per-user limits, ended logins and the
password-guess throttle hold on both."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.async_api import expect

from gemini_chat.relay import PostgresRelay
from tests.app_process import start_app
from tests.chat_client import ChatClient
from tests.chromium import ARTIFACTS
from tests.conftest import app_env
from tests.db import eventually, query
from tests.fake_gemini import Reply
from tests.test_accounts import SECRET, accounts_command
from tests.test_browser import counted_words
from tests.test_security_login import login

USERS = ("ann", "ben", "cid", "dan", "eve", "fay", "gus", "hal", "ivy", "joy", "kim", "lee")
MESSAGES_PER_MINUTE = 3


def password(name: str) -> str:
    return f"{name}-password"


@pytest.fixture(scope="module")
def cluster_url(postgres_cluster) -> str:
    url = postgres_cluster.database()

    def add(name: str) -> None:
        result = accounts_command(url, "add", name, password=password(name))
        assert result.returncode == 0, result.stderr

    add(USERS[0])  # makes the tables: alone
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add, USERS[1:]))
    return url


@pytest.fixture(scope="module")
def instances(cluster_url, fake_gemini_server):
    """Instances A and B of the app on one database, in accounts mode (one login works on
    both), each user allowed MESSAGES_PER_MINUTE."""
    env = app_env(
        fake_gemini_server,
        DATABASE_URL=cluster_url,
        CHAINLIT_AUTH_SECRET=SECRET,
        USER_MESSAGES_PER_MINUTE=str(MESSAGES_PER_MINUTE),
        # Long enough for a tab on B to open the chat before a slow first piece.
        GEMINI_STALL_TIMEOUT="5",
    )
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: start_app(env), range(2))
    yield a, b
    a.stop()
    b.stop()


async def logged_in(app, name: str, cookie: str | None = None) -> ChatClient:
    """A tab of ``name`` on ``app``: with the login ``cookie`` of another tab (the browser
    sends the same cookie to every instance behind the balancer), or a new login."""
    client = ChatClient(app.url)
    if cookie is None:
        await client.login(name, password(name))
    else:
        client.headers["Cookie"] = cookie
    return client


async def asked_on_a(instances, name: str, text: str):
    """``name`` asks ``text`` in a new chat on A; returns the tab, once the answer streams."""
    a, _ = instances
    tab = await logged_in(a, name)
    await tab.connect()
    await tab.wait_for(tab.assistant_messages, what="the welcome")
    tab.mark()
    await tab.send(text)
    await tab.wait_for(
        lambda: any(m.tokens >= 5 for m in tab.assistant_messages()), what="the answer streaming"
    )
    return tab


def answer_of(tab: ChatClient, first_word: str):
    return next((m for m in tab.assistant_messages() if m.content.startswith(first_word)), None)


def following(tab: ChatClient) -> bool:
    """The tab loaded the chat and waits for the answer (the composer shows Stop): Chainlit's
    own task_start/task_end around the resume hook come before the chat is sent."""
    names = [name for name, _ in tab.events]
    if "resume_thread" not in names:
        return False
    after = names[names.index("resume_thread") :]
    return "task_start" in after and tab.running


def resumed_text(tab: ChatClient) -> str:
    """The answer's text as the chat loaded it (before any live piece)."""
    (thread,) = [d for n, d in tab.events if n == "resume_thread"]
    steps = [s for s in thread["steps"] if s.get("type") == "assistant_message"]
    return steps[-1]["output"]


async def test_a_chat_opened_on_another_instance_shows_the_answer_live_then_carries_on(
    instances, gemini, cluster_url
):
    _, b = instances
    # A first piece far over a notification's 8000 bytes: the text so far goes in parts.
    intro = "Intro " + "lorem ipsum " * 1500 + "\n\n"
    words = [intro, *counted_words(100)]
    gemini.script(Reply(chunks=words, delay=0.08), Reply("Counted."))
    on_a = await asked_on_a(instances, "ann", "Count for me")
    thread = await on_a.chat_thread()

    on_b = await logged_in(b, "ann", on_a.headers["Cookie"])
    await on_b.connect(thread_id=thread)
    await on_b.wait_for(lambda: answer_of(on_b, "Intro"), what="the text so far on B")
    so_far = resumed_text(on_b)
    assert so_far.startswith(intro + "w000 w001") and len(so_far) < len("".join(words))
    await on_b.wait_for(lambda: following(on_b), what="the composer waiting on B")
    # The rest arrives live, piece by piece, then the final message, exactly; the tab on A,
    # which asked, may go: the answer goes on for the tab following it on B.
    await on_b.wait_for(
        lambda: (m := answer_of(on_b, "Intro")) and m.tokens >= 3, what="pieces live on B"
    )
    await on_a.disconnect()
    await on_b.wait_for(lambda: not on_b.running, timeout=20, what="the end of the answer on B")
    assert answer_of(on_b, "Intro").content == "".join(words)
    assert len(gemini.requests) == 1  # followed, not asked again

    async def stored():
        return await query(
            cluster_url,
            "SELECT output FROM steps WHERE \"threadId\" = :t AND type = 'assistant_message' "
            "AND output LIKE 'Intro%'",
            t=thread,
        )

    # A stores the answer from a write of its own, which may land just after B has shown the end.
    async def stored_whole():
        return await stored() == [("".join(words),)]

    try:
        await eventually(stored_whole, what="the whole answer stored")
    except AssertionError:
        assert await stored() == [("".join(words),)]

    # The tab on B asks the next question with the whole chat as its history.
    on_b.mark()
    await on_b.send("Thanks")
    await on_b.wait_idle()
    request = (await gemini.arrived(2))[1]
    assert request.conversation[1:] == [
        ("user", "Count for me"),
        ("assistant", "".join(words)),
        ("user", "Thanks"),
    ]
    assert any(m.content == "Counted." for m in on_b.assistant_messages())
    await on_b.disconnect()


async def test_thinking_streaming_on_one_instance_shows_on_the_other(instances, gemini):
    from tests.test_thoughts import thought_steps

    a, b = instances
    ideas = [f"idea {i}. " for i in range(30)]
    # The tab on B opens the chat before the first thought: the thinking step comes live.
    gemini.script(Reply("Otters hold hands.", thoughts=ideas, delay=0.08, first_delay=2.5))
    on_a = await logged_in(a, "kim")
    await on_a.connect()
    await on_a.wait_for(on_a.assistant_messages, what="the welcome")
    on_a.mark()
    await on_a.send("Think about otters")
    thread = await on_a.chat_thread()
    on_b = await logged_in(b, "kim", on_a.headers["Cookie"])
    await on_b.connect(thread_id=thread)
    await on_b.wait_for(lambda: following(on_b), what="B following the answer")
    assert not thought_steps(on_b)

    def finished(tab: ChatClient) -> bool:
        steps = thought_steps(tab)
        return bool(steps) and steps[0]["name"].startswith("Thought for")

    await on_b.wait_for(
        lambda: any("idea 3." in s["output"] for s in thought_steps(on_b)), what="thinking on B"
    )
    await on_b.wait_for(lambda: finished(on_b), timeout=20, what="the finished step on B")
    (step,) = thought_steps(on_b)
    assert step["output"] == "".join(ideas)  # every piece exactly once
    assert any(
        name == "stream_start" and (data.get("metadata") or {}).get("kind") == "thoughts"
        for name, data in on_b.events
    ), "the thinking was not streamed to B"
    await on_b.wait_for(
        lambda: any(m.content == "Otters hold hands." for m in on_b.assistant_messages()),
        what="the answer on B",
    )
    await on_b.wait_for(lambda: not on_b.running, what="B free to ask")
    for tab in (on_a, on_b):
        await tab.disconnect()


async def test_a_tool_call_on_one_instance_shows_its_step_on_the_other(instances, gemini):
    from tests.fake_gemini import ToolCall, tool_call_reply

    a, b = instances
    words = counted_words(20)
    gemini.script(
        tool_call_reply(
            ToolCall("calculate", {"expression": "6 * 7"}, id="call_1"),
            shape="openai",
            first_delay=2.5,
        ),
        Reply(chunks=words, delay=0.05),
    )
    on_a = await logged_in(a, "lee")
    await on_a.connect()
    await on_a.wait_for(on_a.assistant_messages, what="the welcome")
    on_a.mark()
    await on_a.send("Six times seven?")
    on_b = await logged_in(b, "lee", on_a.headers["Cookie"])
    await on_b.connect(thread_id=await on_a.chat_thread())
    await on_b.wait_for(lambda: following(on_b), what="B following the answer")

    def tool_step(tab: ChatClient) -> dict | None:
        """The tool's step as last sent: live, or in the chat as loaded if it came first."""
        shown = []
        for name, data in tab.events:
            if name == "resume_thread":
                shown.extend(step for step in data["steps"] if step.get("type") == "tool")
            elif name in ("new_message", "update_message") and data.get("type") == "tool":
                shown.append(data)
        return shown[-1] if shown and shown[-1].get("output") else None

    step = await on_b.wait_for(lambda: tool_step(on_b), what="the tool's step on B")
    assert step["name"] == "calculate" and "```result\n42\n```" in step["output"]
    assert step["output"] == tool_step(on_a)["output"]
    await on_b.wait_for(lambda: not on_b.running, what="the end of the answer on B")
    assert any(m.content == "".join(words) for m in on_b.assistant_messages())
    for tab in (on_a, on_b):
        await tab.disconnect()


async def test_stop_on_another_instance_stops_the_answer_and_another_user_cannot(
    instances, gemini, cluster_url
):
    _, b = instances
    words = counted_words(150)
    gemini.script(Reply(chunks=words, delay=0.08))
    on_a = await asked_on_a(instances, "ben", "Count slowly")
    thread = await on_a.chat_thread()
    (request,) = await gemini.arrived(1)

    on_b = await logged_in(b, "ben", on_a.headers["Cookie"])
    await on_b.connect(thread_id=thread)
    await on_b.wait_for(lambda: answer_of(on_b, "w000"), what="the answer on B")

    # Another user on B, naming the chat: nothing of it is shown, and Stop does nothing.
    intruder = await logged_in(b, "eve")
    intruder.sio.on("resume_thread_error", intruder._handler("resume_thread_error"))
    await intruder.connect(thread_id=thread)
    await intruder.wait_for(
        lambda: ("resume_thread_error", "Thread not found.") in intruder.events,
        what="the chat refused to eve",
    )
    await intruder.stop()
    seen = answer_of(on_b, "w000").tokens
    await on_b.wait_for(
        lambda: answer_of(on_b, "w000").tokens >= seen + 3, what="the answer going on"
    )
    assert not request.disconnected.is_set()
    assert not any("w00" in text for _, text in intruder.transcript())
    assert not any(name in ("stream_start", "stream_token") for name, _ in intruder.events)

    # Ben's Stop on B stops it on A: the request to Gemini is closed, both tabs show the mark.
    await on_b.stop()
    assert await asyncio.to_thread(request.disconnected.wait, 10), "the stream went on"
    for tab in (on_a, on_b):
        await tab.wait_for(
            lambda tab=tab: "— stopped" in (answer_of(tab, "w000") or on_b).content,
            what="the stopped mark",
        )
        assert "w149" not in answer_of(tab, "w000").content
    await on_b.wait_for(lambda: not on_b.running, what="the composer free on B")

    async def stored_status():
        rows = await query(
            cluster_url,
            "SELECT metadata FROM steps WHERE \"threadId\" = :t AND type = 'assistant_message'",
            t=thread,
        )
        statuses = [
            json.loads(m).get("status") if isinstance(m, str) else m.get("status") for (m,) in rows
        ]
        return statuses if "stopped" in statuses else None

    assert "stopped" in await eventually(stored_status, what="the answer stored as stopped")
    for tab in (on_a, on_b, intruder):
        await tab.disconnect()


async def test_another_instance_knows_whether_an_answer_streams_in_a_chat(
    instances, gemini, cluster_url
):
    # A third instance's relay, in this process, on the same database.
    relay = PostgresRelay(cluster_url)
    await relay.start()
    try:
        await asyncio.wait_for(relay.connected.wait(), 10)
        words = counted_words(40)
        gemini.script(Reply(chunks=words, delay=0.08))
        on_a = await asked_on_a(instances, "cid", "Count a little")
        thread = await on_a.chat_thread()
        asked = time.monotonic()
        assert await relay.streaming_elsewhere(thread) is True
        took = time.monotonic() - asked
        assert await relay.streaming_elsewhere("00000000-0000-4000-8000-000000000000") is False
        await on_a.wait_idle(timeout=20)
        asked = time.monotonic()
        assert await relay.streaming_elsewhere(thread) is False
        # Both instances answered no, so nobody waited for the timeout.
        no_took = time.monotonic() - asked
        print(f"streaming_elsewhere: yes in {took * 1000:.1f} ms, no in {no_took * 1000:.1f} ms")
        assert no_took < 0.4
        await on_a.disconnect()
    finally:
        await relay.close()


async def test_the_messages_per_minute_limit_counts_on_every_instance(instances, gemini):
    a, b = instances
    gemini.script(*(Reply(f"Answer {i}.") for i in range(MESSAGES_PER_MINUTE)))
    on_a = await logged_in(a, "dan")
    await on_a.connect()
    await on_a.wait_for(on_a.assistant_messages, what="the welcome on A")
    on_b = await logged_in(b, "dan", on_a.headers["Cookie"])
    await on_b.connect()
    await on_b.wait_for(on_b.assistant_messages, what="the welcome on B")
    await on_a.ask("one")
    await on_b.ask("two")
    await on_a.ask("three")
    on_b.mark()
    await on_b.send("four")
    await on_b.wait_for(on_b.errors, what="the refusal on B")
    (refusal,) = on_b.errors()
    assert refusal.startswith(f"You've sent {MESSAGES_PER_MINUTE} messages in the last minute")
    assert len(gemini.requests) == MESSAGES_PER_MINUTE
    await on_a.disconnect()
    await on_b.disconnect()


def _status(url: str, cookie: str) -> int:
    request = urllib.request.Request(url + "/user", headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _logout(url: str, cookie: str) -> int:
    request = urllib.request.Request(url + "/logout", method="POST", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


async def test_a_logout_on_one_instance_ends_the_login_on_the_other_at_once(instances):
    a, b = instances
    tab = await logged_in(a, "fay")
    cookie = tab.headers["Cookie"]
    # B has just accepted the login (and would trust it for a couple of seconds).
    assert await asyncio.to_thread(_status, b.url, cookie) == 200
    assert await asyncio.to_thread(_logout, a.url, cookie) == 200
    took = await refused_soon(b, cookie)
    print(f"logout on A refused on B after {took * 1000:.0f} ms")


async def refused_soon(app, cookie: str) -> float:
    """How long ``app`` still accepted the login ``cookie``: well under the 2 s an instance
    trusts a login it accepted without asking the database (tokens.CHECK_SECONDS)."""
    ended = time.monotonic()
    while (status := await asyncio.to_thread(_status, app.url, cookie)) == 200:
        assert time.monotonic() - ended < 1.0, "the ended login is still accepted"
    assert status == 401
    return time.monotonic() - ended


async def test_a_new_password_ends_the_login_on_every_instance_at_once(instances, cluster_url):
    from gemini_chat.accounts import AccountStore

    a, b = instances
    tab = await logged_in(a, "ivy")
    cookie = tab.headers["Cookie"]
    # Both instances accept the login now, and would trust it for a couple of seconds.
    for app in (a, b):
        assert await asyncio.to_thread(_status, app.url, cookie) == 200
    # What `python -m gemini_chat.accounts passwd ivy` does.
    store = AccountStore(cluster_url)
    try:
        await store.set_password("ivy", "a-new-password")
    finally:
        await store.close()
    for app in (b, a):
        await refused_soon(app, cookie)


async def test_password_guesses_spread_over_both_instances_are_slowed_as_on_one(instances):
    a, b = instances
    waits = []
    for attempt in range(5):  # alternating, as a balancer without stickiness would send them
        status, token, waited = await login(
            (a, b)[attempt % 2].url, "hal", f"guess {attempt}", source="127.0.3.1"
        )
        assert status == 401 and token is None
        waits.append(waited)
    # The failures are counted in the database: 3 free, then 1 s and 2 s, as on one instance
    # (counted per instance, none of the five would have waited).
    assert waits[3] >= 1.0 and waits[4] >= 2.0, waits
    # The real user, from elsewhere, is not held up.
    status, token, waited = await login(b.url, "hal", password("hal"), source="127.0.3.2")
    assert status == 200 and token and waited < 2.0, waited
    print("guesses over both instances waited", [round(w, 1) for w in waits])


async def page_on(browser, app, name: str):
    """A page of ``name``, logged in on ``app`` through the login page, on a new chat."""
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    page = await context.new_page()
    await page.goto(app.url)
    await page.get_by_label("User name").fill(name)
    await page.locator("#password").fill(password(name))
    await page.get_by_role("button", name="Sign In").click()
    await page.get_by_text("Ask me anything").wait_for(timeout=30_000)
    return page


@pytest.mark.browser
async def test_a_page_on_another_instance_shows_the_answer_streaming(instances, gemini, browser):
    _, b = instances
    words = counted_words(100)
    gemini.script(Reply(chunks=words, delay=0.08))
    page = await page_on(browser, b, "gus")
    on_a = await asked_on_a(instances, "gus", "Count for the page")
    await page.goto(f"{b.url}/thread/{await on_a.chat_thread()}")

    answer = page.locator(".ai-message .message-content", has_text="w000").last
    await expect(answer).to_contain_text("w010")
    await expect(page.locator("#stop-button")).to_be_visible()
    assert "w099" not in await answer.inner_text(), "already over: nothing shown live"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "relay-page-following.png")
    await expect(answer).to_contain_text("w099", timeout=20_000)
    await expect(page.locator("#stop-button")).to_have_count(0)
    assert (await answer.inner_text()).split() == [w.strip() for w in words]
    await page.screenshot(path=ARTIFACTS / "relay-page-finished.png")
    await on_a.disconnect()
    await page.context.close()


@pytest.mark.browser
async def test_stop_on_a_page_on_another_instance_stops_the_answer(instances, gemini, browser):
    _, b = instances
    words = counted_words(150)
    gemini.script(Reply(chunks=words, delay=0.08))
    page = await page_on(browser, b, "joy")
    on_a = await asked_on_a(instances, "joy", "Count until I stop you")
    (request,) = await gemini.arrived(1)
    await page.goto(f"{b.url}/thread/{await on_a.chat_thread()}")

    answer = page.locator(".ai-message .message-content", has_text="w000").last
    await expect(answer).to_contain_text("w010")
    await page.locator("#stop-button").click()
    await expect(answer).to_contain_text("— stopped")
    assert await asyncio.to_thread(request.disconnected.wait, 10), "the stream went on"
    await on_a.wait_for(
        lambda: "— stopped" in answer_of(on_a, "w000").content, what="the mark on A"
    )
    assert "w149" not in await answer.inner_text()
    await expect(page.locator("#stop-button")).to_have_count(0)
    await page.screenshot(path=ARTIFACTS / "relay-page-stopped.png")
    await on_a.disconnect()
    await page.context.close()


# --- the relay itself, two of them in this process on a database of their own ------------------


@pytest.fixture
def own_cluster():
    from tests.postgres import PostgresCluster, find_bin

    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed")
    cluster = PostgresCluster(bin_dir).start()
    yield cluster
    cluster.stop()


def streaming_here(thread_id: str, text: str, owner: str = "ann"):
    """An answer being written in this process (as chat.py registers one)."""
    from types import SimpleNamespace

    from gemini_chat.live import LiveReply, live_replies

    reply = SimpleNamespace(
        to_dict=lambda: {"id": "reply-1", "type": "assistant_message", "output": text}
    )
    origin = SimpleNamespace(user=SimpleNamespace(identifier=owner), id="s", socket_id="x")
    live = LiveReply(thread_id, reply, "question", "message-1", origin, task=None)  # type: ignore[arg-type]
    live_replies.start(live)
    return live


async def test_the_relay_carries_long_messages_and_comes_back_after_a_database_restart(
    own_cluster,
):
    from gemini_chat.live import live_replies

    url = own_cluster.database()
    here, there = PostgresRelay(url), PostgresRelay(url)
    for relay in (here, there):
        await relay.start()
    live = None
    try:
        for relay in (here, there):
            await asyncio.wait_for(relay.connected.wait(), 10)
        thread = "11111111-1111-4111-8111-111111111111"
        # 30 KB of text so far (4 notifications' worth), with characters of several bytes.
        text = "Grüße, 世界! " * 2000
        live = streaming_here(thread, text)
        # Both relays are in this process: "there" asks, "here" (which heard it too) answers.
        await eventually(lambda: _knows(there, here), what="the relays to know each other")
        answer = await there._ask({"k": "watch", "t": thread, "user": "ann"})
        assert answer is not None and answer["steps"][-1]["output"] == text
        # Not to another user.
        assert await there._ask({"k": "watch", "t": thread, "user": "eve"}) is None

        await asyncio.to_thread(own_cluster.go_down)
        await eventually(lambda: _down(here, there), what="both relays to notice")
        # Down: nothing waits, nothing fails; the answer writing here goes on.
        asked = time.monotonic()
        assert await there.streaming_elsewhere(thread) is False
        assert time.monotonic() - asked < 0.1
        live.outlet = lambda change: here._relayed(thread, change)
        live.outlet({"e": "piece", "id": "reply-1", "p": "more"})
        here.login_ended("some-token")

        await asyncio.to_thread(own_cluster.come_back)
        for relay in (here, there):
            await asyncio.wait_for(relay.connected.wait(), 30)
        await eventually(lambda: _knows(there, here), what="the relays to know each other again")
        assert await there.streaming_elsewhere(thread) is True
    finally:
        if live is not None:
            live_replies.end(live)
        for relay in (here, there):
            await relay.close()


async def _knows(asker: PostgresRelay, other: PostgresRelay) -> bool:
    return other.instance in asker._peers


async def _down(*relays: PostgresRelay) -> bool:
    return not any(relay.connected.is_set() for relay in relays)
