"""Every way Gemini can fail: a clear message in the chat, partial text kept and marked, the
history still alternating, the next message working, one retry layer, and a useful log line."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.fake_gemini import (
    DEFAULT_KEY,
    Behaviour,
    Fail,
    Reply,
    Reset,
    high_demand,
    input_tokens_per_minute,
    internal_error,
    invalid_key,
    location_not_supported,
    no_free_tier,
    overloaded,
    rate_limit_per_day,
    rate_limit_per_minute,
    unknown_model,
)


@dataclass
class Fault:
    script: list[Behaviour]
    says: list[str]  # phrases the user must see
    partial: str = ""  # text that streamed before the failure
    requests: int = 1  # requests the fake must receive (more means retries)
    logged: tuple[str, ...] = ()
    never: tuple[str, ...] = ()  # phrases the user must not see


def native(fail: Fail) -> Fail:
    """The same error as the native endpoint sends it: a bare object, not a one-element list."""
    return Fail(fail.status, fail.body[0])


FAULTS = {
    "429 per minute, retryDelay over the cap": Fault(
        [rate_limit_per_minute("17s")],
        ["per-minute request limit", "about 17 seconds"],
        logged=("RateLimited", "status=429", "RESOURCE_EXHAUSTED", "PerMinute", "request_id='req-"),
    ),
    "429 per day": Fault(
        [rate_limit_per_day()],
        ["daily Gemini quota", "midnight Pacific"],
        logged=("DailyQuotaExhausted", "PerDay"),
    ),
    "429 per day, as a bare object": Fault(
        [native(rate_limit_per_day())],
        ["daily Gemini quota", "midnight Pacific"],
        logged=("DailyQuotaExhausted", "PerDay"),
    ),
    "429 limit 0: no quota for the model, whatever else it lists": Fault(
        [no_free_tier("gemini-3.8-flash")],
        ["no Gemini quota", 'model "gemini-3.8-flash"', "billing", "GEMINI_MODEL"],
        logged=("NoQuotaForModel", "PerDay", "InputTokens"),
        never=("midnight", "daily", "per-minute", "seconds"),
    ),
    "429 input tokens per minute, retryDelay over the cap": Fault(
        [input_tokens_per_minute(250_000, "26s")],
        ["in the last minute", "whole chat", "about 26 seconds", "new chat"],
        logged=("TokenRateLimited", "InputTokens", "limit=250000"),
        never=("request limit",),
    ),
    "429 input tokens per minute, the chat alone over the limit": Fault(
        [input_tokens_per_minute(20, "0.4s")],
        ["grown too long", "Start a new chat"],
        logged=("TokenRateLimited", "limit=20"),
        never=("Wait", "request limit"),
    ),
    "400 API_KEY_INVALID": Fault(
        [invalid_key()],
        ["rejected the API key", "GEMINI_API_KEY"],
        logged=("InvalidApiKey", "status=400", "API_KEY_INVALID"),
    ),
    "400 user location not supported": Fault(
        [location_not_supported()],
        ["not available in the region", "won't help"],
        logged=("LocationNotSupported", "FAILED_PRECONDITION"),
        never=("rephras", "again in a moment"),
    ),
    "404 unknown model": Fault(
        [unknown_model("gemini-3.8-flash")],
        ['model "gemini-3.8-flash"', "GEMINI_MODEL", "not available"],
        logged=("ModelNotFound", "status=404"),
        never=("such as",),  # never the model that just failed
    ),
    "500 on every try": Fault(
        [internal_error()] * 3, ["internal error"], requests=3, logged=("status=500",)
    ),
    "503 on every try": Fault(
        [overloaded()] * 3, ["overloaded"], requests=3, logged=("Overloaded", "UNAVAILABLE")
    ),
    "503 high demand on every try, as a bare object": Fault(
        [high_demand()] * 3,
        ["high demand", "Wait a minute"],
        requests=3,
        logged=("Overloaded", "UNAVAILABLE"),
    ),
    "connection reset on every try": Fault(
        [Reset()] * 3, ["couldn't reach Gemini"], requests=3, logged=("ConnectionFailed",)
    ),
    "connection dropped mid-stream": Fault(
        [Reply(chunks=["Partial", " words", " here"], ending="drop")],
        ["connection to Gemini dropped"],
        partial="Partial words here",
        logged=("StreamInterrupted",),
    ),
    "stream stalled": Fault(
        [Reply(chunks=["Waiting", " for", " more"], ending="stall")],
        ["stopped sending for 1.5 seconds"],
        partial="Waiting for more",
        logged=("StreamStalled",),
    ),
    "malformed SSE chunk": Fault(
        [Reply(chunks=["Some", " text"], ending="malformed")],
        ["couldn't read"],
        partial="Some text",
        logged=("MalformedResponse", "JSONDecodeError"),
    ),
    "error chunk inside the stream": Fault(
        [Reply(chunks=["Some", " text"], ending="error")],
        ["overloaded"],
        partial="Some text",
        logged=("in_stream=True", "status=503"),
    ),
    "content_filter after some text": Fault(
        [Reply(chunks=["Here", " is"], finish_reason="content_filter")],
        ["safety filter"],
        partial="Here is",
        logged=("ContentBlocked", "content_filter"),
    ),
    "content_filter with no text": Fault(
        [Reply(chunks=[], finish_reason="content_filter")],
        ["safety filter"],
        logged=("ContentBlocked",),
    ),
    "empty answer": Fault([Reply(chunks=[])], ["empty answer"], logged=("EmptyAnswer",)),
    "length limit after some text": Fault(
        [Reply(chunks=["Long", " answer"], finish_reason="length")],
        ["length limit", "continue"],
        partial="Long answer",
    ),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_upstream_fault_is_explained_and_the_chat_carries_on(chat, gemini, app, fault):
    log_start = len(app.log())
    gemini.script(*fault.script)
    replies = await chat.ask("What is the answer?", timeout=20)

    errors = [m.content for m in replies if m.is_error]
    assert len(errors) == 1, chat.transcript()
    for phrase in fault.says:
        assert phrase in errors[0]
    for raw in ("Error code", "RESOURCE_EXHAUSTED", "{", DEFAULT_KEY, "Traceback", *fault.never):
        assert raw not in errors[0]

    shown = [m.content for m in replies if not m.is_error]
    if fault.partial:
        # What streamed stays on screen, marked as incomplete.
        assert shown == [fault.partial + "\n\n*— incomplete reply*"]
    else:
        assert shown == []
    assert len(await gemini.arrived(fault.requests)) == fault.requests

    # The next message works and the history alternates: a failed turn with no text is left
    # out, a partial answer is kept exactly as received.
    gemini.script(Reply("Recovered."))
    replies = await chat.ask("Next question")
    assert [m.content for m in replies] == ["Recovered."]
    next_request = (await gemini.arrived(fault.requests + 1))[-1]
    expected = (
        [("user", "What is the answer?"), ("assistant", fault.partial)] if fault.partial else []
    )
    assert next_request.conversation[1:] == [*expected, ("user", "Next question")]

    log = app.log()[log_start:]
    for detail in fault.logged:
        assert detail in log
    assert DEFAULT_KEY not in log


async def test_rate_limit_with_a_short_retry_delay_is_retried_after_that_delay(chat, gemini):
    gemini.script(rate_limit_per_minute("0.4s"), Reply("Made it."))
    replies = await chat.ask("Hello")
    assert [m.content for m in replies] == ["Made it."]
    assert chat.errors() == []
    assert len(await gemini.arrived(2)) == 2


async def test_an_input_token_limit_the_chat_fits_under_is_retried_after_its_delay(chat, gemini):
    # The minute's tokens went to earlier requests; this one alone fits, so waiting helps.
    gemini.script(input_tokens_per_minute(250_000, "0.4s"), Reply("Made it."))
    replies = await chat.ask("Hello")
    assert [m.content for m in replies] == ["Made it."]
    assert chat.errors() == []
    assert len(await gemini.arrived(2)) == 2


async def test_a_stream_without_usage_is_shown_whole(chat, gemini):
    gemini.script(Reply(chunks=["No", " usage", " here."], usage=False))
    replies = await chat.ask("Hello")
    assert [m.content for m in replies] == ["No usage here."]


async def test_overloaded_once_is_retried_transparently(chat, gemini):
    gemini.script(overloaded(), Reply("Second try worked."))
    replies = await chat.ask("Hello")
    assert [m.content for m in replies] == ["Second try worked."]
    assert len(gemini.requests) == 2


@pytest.mark.parametrize(
    "failure",
    [
        rate_limit_per_day(),
        no_free_tier("gemini-3.8-flash", retry_delay="0.4s"),
        input_tokens_per_minute(20, "0.4s"),
        invalid_key(),
        location_not_supported(),
        unknown_model("gemini-3.8-flash"),
    ],
    ids=["daily quota", "limit 0", "chat over the token limit", "bad key", "location", "model"],
)
async def test_failures_that_cannot_clear_are_never_retried(chat, gemini, failure):
    gemini.script(failure, Reply("must not be used"))
    await chat.ask("Hello")
    assert len(gemini.requests) == 1
    assert gemini.pending == 1


async def test_a_stream_that_produced_text_is_never_replayed(chat, gemini):
    gemini.script(Reply(chunks=["Half", " an"], ending="drop"), Reply("must not be used"))
    await chat.ask("Hello")
    assert len(gemini.requests) == 1
    assert gemini.pending == 1
