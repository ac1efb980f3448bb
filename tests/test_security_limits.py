"""Per-user limits: a burst from one user reaches Gemini only as often as the limits allow, on
SQLite and PostgreSQL, across restarts and several app instances on one database; the daily
token limit follows the usage Gemini reports; local mode has no limit unless asked."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from gemini_chat.config import ConfigError, load_settings
from gemini_chat.history import History, estimate_tokens
from gemini_chat.limits import (
    DEFAULT_MESSAGES_PER_MINUTE,
    DEFAULT_TOKENS_PER_DAY,
    DailyTokensUsedUp,
    TooManyMessages,
    describe_wait,
    limits_for,
    tokens_used,
)
from tests.chat_client import ChatClient
from tests.conftest import ROOT, guarded_env
from tests.db import eventually, execute, query
from tests.fake_gemini import Reply
from tests.test_accounts import SECRET, accounts_command

WAIT_FOR_MESSAGES = re.compile(
    r"^You've sent (\d+) messages? in the last minute; you can send again in (\d+) seconds?\. "
    r"Nothing was sent to Gemini\.$"
)
WAIT_FOR_TOKENS = re.compile(
    r"^You've used ([\d,]+) tokens today; the daily limit is ([\d,]+)\. It resets at 00:00 UTC, "
    r"in (\d+ h )?\d+ min\. Nothing was sent to Gemini\.$"
)
PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}


def usage_command(database_url: str, **settings: str) -> subprocess.CompletedProcess:
    """`python -m gemini_chat.accounts usage`, with the app's settings."""
    return subprocess.run(
        [sys.executable, "-m", "gemini_chat.accounts", "usage"],
        cwd=ROOT,
        env=guarded_env(DATABASE_URL=database_url, **settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def add_accounts(database_url: str, *names: str) -> None:
    for name in names:
        added = accounts_command(database_url, "add", name, password=PASSWORDS[name])
        assert added.returncode == 0, added.stderr


async def logged_in(app, name: str, thread_id: str = "") -> ChatClient:
    client = ChatClient(app.url)
    await client.login(name, PASSWORDS[name])
    await client.connect(thread_id=thread_id)
    if thread_id:
        resumed = lambda: any(name == "resume_thread" for name, _ in client.events)  # noqa: E731
        await client.wait_for(resumed, what="the old chat")
    else:
        await client.wait_for(client.assistant_messages, what="the welcome")
    return client


def answers(client: ChatClient) -> list[str]:
    """The finished echo answers on screen."""
    return [
        m.content
        for m in client.assistant_messages()
        if not m.is_error and not m.streaming and m.content.startswith("Echo: ")
    ]


async def usage_row(database_url: str, name: str) -> tuple | None:
    rows = await query(
        database_url,
        "SELECT window_messages, day_messages, day_tokens FROM user_usage WHERE identifier = :n",
        n=name,
    )
    return rows[0] if rows else None


async def usage_is(database_url: str, name: str, expected: tuple) -> bool:
    return await usage_row(database_url, name) == expected


async def a_minute_passes(database_url: str) -> None:
    """The minute window of every user moved a minute into the past (no real waiting)."""
    await execute(database_url, "UPDATE user_usage SET window_start = window_start - 60")


async def burst(client: ChatClient, count: int, prefix: str) -> list[str]:
    texts = [f"{prefix} {i}" for i in range(count)]
    for text in texts:
        await client.send(text)
    return texts


async def all_handled(client: ChatClient, count: int, timeout: float = 120.0) -> None:
    """Every message of a burst got its answer or its notice."""
    await client.wait_for(
        lambda: len(answers(client)) + len(client.errors()) >= count,
        timeout,
        what=f"{count} answers or notices",
    )


# --- through the real app ------------------------------------------------------------------------


async def test_a_burst_from_one_user_reaches_gemini_only_as_often_as_the_limit_allows(
    database_url, start_app_with, gemini
):
    add_accounts(database_url, "alice", "bob")
    # No limit configured: accounts mode protects the quota by default.
    app = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)
    alice = await logged_in(app, "alice")

    texts = await burst(alice, 300, "message")
    await all_handled(alice, 300)
    assert len(gemini.requests) == DEFAULT_MESSAGES_PER_MINUTE == 20
    notices = alice.errors()
    assert len(notices) == 280 and len(answers(alice)) == 20
    for notice in notices:
        match = WAIT_FOR_MESSAGES.match(notice)
        assert match, notice
        assert match[1] == "20" and 1 <= int(match[2]) <= 60
    # Refused messages did not count; the tokens are those Gemini reported.
    expected = (20, 20, sum(map(reported_total, gemini.requests)))
    await eventually(lambda: usage_is(database_url, "alice", expected), what="alice's usage")

    # Another user is not affected.
    bob = await logged_in(app, "bob")
    assert [m.content for m in await bob.ask("bob's question")] == ["Echo: bob's question"]
    assert len(gemini.requests) == 21

    # Once the minute is over, Alice's next message goes, with exactly the answered turns
    # in its history: nothing refused slipped in, nothing answered was lost.
    await a_minute_passes(database_url)
    assert [m.content for m in await alice.ask("after the wait")] == ["Echo: after the wait"]
    request = gemini.requests[-1]
    turns = request.conversation[1:]
    assert turns[-1] == ("user", "after the wait")
    asked = [text for role, text in turns[:-1] if role == "user"]
    assert len(asked) == 20 and set(asked) <= set(texts)
    assert turns[:-1] == [
        pair for text in asked for pair in (("user", text), ("assistant", f"Echo: {text}"))
    ]
    assert sorted(answers(alice)) == sorted(
        [f"Echo: {text}" for text in asked] + ["Echo: after the wait"]
    )
    await alice.disconnect()
    await bob.disconnect()


def reported_total(request, thinking: int = 66) -> int:
    """The fake's final usage chunk: prompt words, one token per piece, thinking tokens."""
    prompt = sum(len(text.split()) for _, text in request.conversation)
    last_user = next(text for role, text in reversed(request.conversation) if role == "user")
    pieces = len(f"Echo: {last_user}".split())
    return prompt + pieces + thinking


async def test_the_limit_holds_after_a_restart(database_url, start_app_with, gemini):
    add_accounts(database_url, "alice")
    settings = {
        "DATABASE_URL": database_url,
        "CHAINLIT_AUTH_SECRET": SECRET,
        "USER_MESSAGES_PER_MINUTE": "3",
    }
    first = start_app_with(**settings)
    alice = await logged_in(first, "alice")
    for text in ("one", "two", "three"):
        assert [m.content for m in await alice.ask(text)] == [f"Echo: {text}"]
    (notice,) = await alice.ask("four")
    assert WAIT_FOR_MESSAGES.match(notice.content) and notice.is_error
    thread_id = await alice.chat_thread()
    await alice.disconnect()
    first.stop()

    second = start_app_with(**settings)
    alice = await logged_in(second, "alice", thread_id=thread_id)
    (notice,) = await alice.ask("five")
    match = WAIT_FOR_MESSAGES.match(notice.content)
    assert match and match[1] == "3", notice.content
    assert len(gemini.requests) == 3

    # The resumed chat's history holds the answered turns only.
    await a_minute_passes(database_url)
    assert [m.content for m in await alice.ask("six")] == ["Echo: six"]
    assert gemini.requests[-1].conversation[1:] == [
        ("user", "one"),
        ("assistant", "Echo: one"),
        ("user", "two"),
        ("assistant", "Echo: two"),
        ("user", "three"),
        ("assistant", "Echo: three"),
        ("user", "six"),
    ]
    await alice.disconnect()


async def test_two_app_instances_on_one_database_share_the_limit(
    database_url, start_app_with, gemini
):
    add_accounts(database_url, "alice")
    settings = {
        "DATABASE_URL": database_url,
        "CHAINLIT_AUTH_SECRET": SECRET,
        "USER_MESSAGES_PER_MINUTE": "4",
    }
    first, second = start_app_with(**settings), start_app_with(**settings)
    on_first, on_second = await logged_in(first, "alice"), await logged_in(second, "alice")

    # One at a time, alternating between the instances.
    shown = []
    for index in range(6):
        client = (on_first, on_second)[index % 2]
        (message,) = await client.ask(f"alternate {index}")
        shown.append(message.content)
    assert shown[:4] == [f"Echo: alternate {i}" for i in range(4)]
    assert all(WAIT_FOR_MESSAGES.match(text) for text in shown[4:]), shown
    assert len(gemini.requests) == 4

    # All at once on both: two instances cannot both take the last slot.
    await a_minute_passes(database_url)
    before = (
        len(answers(on_first)) + len(on_first.errors()),
        len(answers(on_second)) + len(on_second.errors()),
    )
    await asyncio.gather(burst(on_first, 30, "first"), burst(on_second, 30, "second"))
    await asyncio.gather(
        all_handled(on_first, before[0] + 30), all_handled(on_second, before[1] + 30)
    )
    assert len(gemini.requests) == 8
    assert (await usage_row(database_url, "alice"))[:2] == (4, 8)
    await on_first.disconnect()
    await on_second.disconnect()


async def test_the_daily_token_limit_follows_the_usage_gemini_reports(
    database_url, start_app_with, gemini
):
    add_accounts(database_url, "alice", "bob")
    app = start_app_with(
        DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET, USER_TOKENS_PER_DAY="300"
    )
    alice = await logged_in(app, "alice")
    # Short answers with long thinking: Gemini's reported total is far above the app's own
    # estimate of the text, so only the reported figure stops her after two answers.
    gemini.script(Reply("Short answer.", thinking_tokens=150), Reply("Again.", thinking_tokens=150))
    await alice.ask("first")
    await alice.ask("second")
    requests = list(gemini.requests)
    assert len(requests) == 2
    reported = sum(
        sum(len(text.split()) for _, text in request.conversation) + pieces + 150
        for request, pieces in zip(requests, (2, 1), strict=True)
    )
    assert reported >= 300
    assert await usage_row(database_url, "alice") == (2, 2, reported)

    (notice,) = await alice.ask("third")
    match = WAIT_FOR_TOKENS.match(notice.content)
    assert match and notice.is_error, notice.content
    assert match[1] == f"{reported:,}" and match[2] == "300"
    assert len(gemini.requests) == 2
    assert await usage_row(database_url, "alice") == (2, 2, reported)

    # Bob is not affected; a stream without usage is counted by the app's own estimate.
    bob = await logged_in(app, "bob")
    gemini.script(Reply("No usage reported here.", usage=False))
    assert [m.content for m in await bob.ask("bob asks")] == ["No usage reported here."]
    instructions = load_settings({}).instructions
    estimate = sum(map(estimate_tokens, (instructions, "bob asks", "No usage reported here.")))
    assert await usage_row(database_url, "bob") == (1, 1, estimate)

    # The operator's view.
    listed = usage_command(database_url, USER_TOKENS_PER_DAY="300")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    header = next(line for line in lines if line.startswith("User"))
    assert "Last minute" in header and "Tokens today" in header
    alice_line = next(line for line in lines if line.startswith("alice "))
    assert alice_line.split()[1:] == ["2/20", "2", f"{reported:,}/300", "(over)"], alice_line
    bob_line = next(line for line in lines if line.startswith("bob "))
    assert bob_line.split()[1:4] == ["1/20", "1", f"{estimate:,}/300"], bob_line
    await alice.disconnect()
    await bob.disconnect()


async def test_local_mode_has_no_limit_by_default(database_url, start_app_with, gemini):
    app = start_app_with(DATABASE_URL=database_url)
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    await burst(client, 30, "local")
    await all_handled(client, 30)
    assert len(answers(client)) == 30 and client.errors() == []
    assert len(gemini.requests) == 30
    # Nothing counted, nothing written.
    assert await query(database_url, "SELECT COUNT(*) FROM user_usage") == [(0,)]
    await client.disconnect()


async def test_local_mode_can_be_limited_too(database_url, start_app_with, gemini):
    app = start_app_with(DATABASE_URL=database_url, USER_MESSAGES_PER_MINUTE="2")
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    await burst(client, 5, "local")
    await all_handled(client, 5)
    assert len(answers(client)) == 2 and len(client.errors()) == 3
    assert len(gemini.requests) == 2


# --- without a server ----------------------------------------------------------------------------


def test_limits_are_on_by_default_with_accounts_and_off_in_local_mode():
    defaults = load_settings({})
    assert limits_for(defaults, local=True).enabled is False
    accounts = limits_for(defaults, local=False)
    assert (accounts.messages_per_minute, accounts.tokens_per_day) == (
        DEFAULT_MESSAGES_PER_MINUTE,
        DEFAULT_TOKENS_PER_DAY,
    )
    chosen = load_settings({"USER_MESSAGES_PER_MINUTE": "5", "USER_TOKENS_PER_DAY": "1_000"})
    assert limits_for(chosen, local=True).messages_per_minute == 5
    assert limits_for(chosen, local=True).tokens_per_day == 1000
    off = limits_for(load_settings({"USER_MESSAGES_PER_MINUTE": "0"}), local=False)
    assert off.messages_per_minute == 0 and off.tokens_per_day == DEFAULT_TOKENS_PER_DAY
    with pytest.raises(ConfigError, match="USER_TOKENS_PER_DAY"):
        load_settings({"USER_TOKENS_PER_DAY": "-1"})


def test_refusals_say_when_the_user_can_go_on():
    assert str(TooManyMessages(20, 33.2)) == (
        "You've sent 20 messages in the last minute; you can send again in 34 seconds. "
        "Nothing was sent to Gemini."
    )
    assert "send again in 1 second." in str(TooManyMessages(1, 0.2))
    now = datetime(2026, 12, 1, 20, 48, 0, tzinfo=UTC)
    refusal = DailyTokensUsedUp(1_234_567, 1_000_000, now)
    assert str(refusal) == (
        "You've used 1,234,567 tokens today; the daily limit is 1,000,000. It resets at "
        "00:00 UTC, in 3 h 12 min. Nothing was sent to Gemini."
    )
    assert describe_wait(59.1) == "60 seconds"
    assert describe_wait(61) == "2 min"
    assert describe_wait(3600) == "1 h 0 min"
    assert describe_wait(3 * 3600 + 11 * 60 + 1) == "3 h 12 min"


def test_tokens_are_gemini_s_figure_when_it_reports_one_else_the_estimate():
    history = History(token_budget=1000)
    history.record("hello", "hi")
    history.request_items("next", "rules")
    sent = history.request_tokens
    assert sent == sum(map(estimate_tokens, ("rules", "hello", "hi", "next")))
    assert tokens_used(171, sent, "answer", reached=True) == 171
    assert tokens_used(None, sent, "answer", reached=True) == sent + estimate_tokens("answer")
    # Refused before any answer (a 429, a refused connection): nothing was spent.
    assert tokens_used(None, sent, "", reached=False) == 0


# --- the counter against the database, in-process --------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_concurrent_messages_through_two_counters_never_pass_the_last_slot(database_url):
    from gemini_chat.limits import Limits, UsageCounter
    from gemini_chat.schema import upgrade_schema

    await upgrade_schema(database_url)
    limits = Limits(messages_per_minute=7, tokens_per_day=0)
    counters = [UsageCounter(database_url, limits), UsageCounter(database_url, limits)]
    try:

        async def one(index: int) -> bool:
            try:
                await counters[index % 2].admit("alice")
            except TooManyMessages:
                return False
            return True

        admitted = await asyncio.gather(*(one(i) for i in range(200)))
        assert sum(admitted) == 7
        assert await usage_row(database_url, "alice") == (7, 7, 0)
    finally:
        for counter in counters:
            await counter.close()


async def test_the_minute_and_the_day_start_again(database_url):
    from gemini_chat.limits import Limits, UsageCounter
    from gemini_chat.schema import upgrade_schema

    await upgrade_schema(database_url)
    late = datetime(2026, 12, 1, 23, 59, 0, tzinfo=UTC).timestamp()
    clock = Clock(late)
    counter = UsageCounter(database_url, Limits(2, 100), clock=clock)
    try:
        first = await counter.admit("alice")
        await counter.admit("alice")
        with pytest.raises(TooManyMessages) as refused:
            await counter.admit("alice")
        assert refused.value.detail["wait"] == 60.0
        clock.now += 59.5
        with pytest.raises(TooManyMessages, match="in 1 second"):
            await counter.admit("alice")
        clock.now += 0.5  # the window is over (and it is midnight)
        await counter.spend(first, 500)  # an answer that ended after midnight: yesterday's
        assert await usage_row(database_url, "alice") == (2, 2, 500)
        today = await counter.admit("alice")
        assert today.day == "2026-12-02"
        assert await usage_row(database_url, "alice") == (1, 1, 0)
        await counter.spend(today, 150)
        clock.now += 60
        with pytest.raises(DailyTokensUsedUp, match="150 tokens today"):
            await counter.admit("alice")
        # Refusals are not counted.
        assert await usage_row(database_url, "alice") == (1, 1, 150)
    finally:
        await counter.close()
