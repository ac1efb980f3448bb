"""Unit tests of the package's logic, with ScriptedModel instead of a network."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import httpx2
import openai
import pytest
from agents.testing import ModelStep, ScriptedModel

from gemini_chat.config import DEFAULT_MODEL, GOOGLE_OPENAI_ENDPOINT, ConfigError, load_settings
from gemini_chat.errors import (
    ConnectionFailed,
    DailyQuotaExhausted,
    InvalidApiKey,
    LocationNotSupported,
    ModelNotFound,
    NoQuotaForModel,
    Overloaded,
    RateLimited,
    TokenRateLimited,
    classify,
)
from gemini_chat.history import History, estimate_tokens
from gemini_chat.llm import GeminiClient, build_backend, build_client
from gemini_chat.streaming import Coalescer, EventBudget, ReplyStream
from tests.fake_gemini import (
    INPUT_TOKENS_PER_MINUTE,
    QUOTA_MESSAGE,
    REQUESTS_PER_DAY,
    REQUESTS_PER_MINUTE,
    _chunk,
    quota_exceeded,
    rate_limit_per_day,
    rate_limit_per_minute,
    recording,
    unknown_model,
    violation,
)
from tests.fake_models import HangingReply, streamed_reply

# --- settings -----------------------------------------------------------------------------------


def test_defaults_use_a_current_gemini_flash_model_on_googles_endpoint():
    settings = load_settings({"GEMINI_API_KEY": "k"})
    assert settings.model == DEFAULT_MODEL == "gemini-3.8-flash"
    assert settings.base_url == GOOGLE_OPENAI_ENDPOINT
    assert settings.max_message_chars == 100_000
    assert 0 < settings.stall_timeout <= 60


def test_openai_api_key_is_never_taken_for_the_gemini_key():
    settings = load_settings({"OPENAI_API_KEY": "sk-openai"})
    assert settings.api_key is None
    assert build_backend(settings) is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GEMINI_BASE_URL", "ftp://x"),
        ("GEMINI_BASE_URL", "localhost:11434"),
        ("HISTORY_TOKEN_BUDGET", "1e9x"),
        ("MAX_MESSAGE_CHARS", "0"),
        ("GEMINI_MAX_RETRIES", "-1"),
        ("GEMINI_STALL_TIMEOUT", "inf"),
        ("SHOW_THOUGHTS", "sometimes"),
    ],
)
def test_bad_values_raise_an_error_naming_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        load_settings({variable: value})


def test_model_lists_and_switches_are_read_as_written():
    settings = load_settings(
        {"GEMINI_MODELS": " gemini-3.8-flash, ,gemini-3.5-flash,gemini-3.8-flash"}
    )
    assert settings.models == ("gemini-3.8-flash", "gemini-3.5-flash")
    assert load_settings({}).models == ()
    assert load_settings({}).show_thoughts is True
    assert load_settings({"SHOW_THOUGHTS": "off"}).show_thoughts is False
    assert load_settings({"SHOW_THOUGHTS": "TRUE"}).show_thoughts is True


def test_dotenv_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch):
    (tmp_path / "app.env").write_text("GEMINI_MODEL=gemini-3.5-flash\nMAX_MESSAGE_CHARS=500\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHAINLIT_ENV_FILE", "app.env")
    monkeypatch.setenv("MAX_MESSAGE_CHARS", "700")
    settings = load_settings()
    assert settings.model == "gemini-3.5-flash"
    assert settings.max_message_chars == 700


def test_the_key_never_shows_in_a_repr():
    settings = load_settings({"GEMINI_API_KEY": "AIzaSecretValue123"})
    assert "AIzaSecretValue123" not in repr(settings)


def test_the_client_has_no_retries_of_its_own_and_a_stall_timeout():
    client = build_client(load_settings({"GEMINI_API_KEY": "k", "GEMINI_STALL_TIMEOUT": "7"}))
    assert client.max_retries == 0
    assert client.timeout.read == 7


GEMINI_CHUNKS = [
    _chunk("c1", "gemini-3.8-flash", " Hello", None, 12, 1),
    _chunk("c1", "gemini-3.8-flash", "", "stop", 12, 2),
    _chunk("c1", "gemini-3.8-flash", "", "content_filter", 12, 0),
    # A thought signature rides along in an extra field of the delta.
    {
        **_chunk("c2", "gemini-3.8-flash", "", None, 3, 1),
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                            "extra_content": {"google": {"thought_signature": "c2ln"}},
                        }
                    ],
                },
                "finish_reason": None,
            }
        ],
    },
    # Off the published schema: a tool-call delta without index, an unlisted finish reason.
    {
        **_chunk("c3", "gemini-3.8-flash", "", None, 3, 1),
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"id": "call_2", "function": {"name": "f"}}]},
                "finish_reason": "MALFORMED_FUNCTION_CALL",
            }
        ],
    },
]


@pytest.mark.parametrize("data", GEMINI_CHUNKS, ids=["text", "stop", "filter", "tool", "odd"])
def test_streamed_chunks_read_exactly_as_openai_reads_them(data):
    fast = GeminiClient(api_key="k", base_url="http://127.0.0.1:9/")
    stock = openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/")
    response = httpx2.Response(200, request=httpx2.Request("POST", "http://127.0.0.1:9/"))

    def read(client):
        return client._process_response_data(
            data=data, cast_to=openai.types.chat.ChatCompletionChunk, response=response
        )

    assert read(fast).model_dump() == read(stock).model_dump()
    assert read(fast).to_json() == read(stock).to_json()


async def _request_body(client_class, messages, **params) -> bytes:
    sent: list[bytes] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.content)
        return httpx2.Response(200, json={"id": "1", "object": "chat.completion", "choices": []})

    client = client_class(
        api_key="k",
        base_url="http://127.0.0.1:9/v1beta/openai/",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer)),
    )
    await client.chat.completions.create(model="gemini-3.8-flash", messages=messages, **params)
    await client.close()
    return sent[0]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo 👋"}],
        [
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
            {"role": "assistant", "content": "a", "tool_calls": None},
            {"role": "user", "content": "n", "name": "x"},
        ],
        ({"role": "user", "content": "a tuple is not plain JSON"},),
    ],
    ids=["plain", "parts", "tuple"],
)
async def test_requests_carry_exactly_the_bytes_openai_would_send(messages):
    params = {"stream": True, "temperature": 0.5, "extra_body": {"google": {"x": 1}}}
    fast = await _request_body(GeminiClient, messages, **params)
    stock = await _request_body(openai.AsyncOpenAI, messages, **params)
    assert fast == stock
    assert json.loads(fast)["messages"] == [dict(m) for m in messages]


# --- history ------------------------------------------------------------------------------------


def test_history_alternates_and_keeps_the_newest_message_over_budget():
    history = History(token_budget=60)
    history.record("q1", "a1")
    history.record("q2", "")  # a failed turn with no text is not kept
    history.record("q3", "a3")
    assert history.request_items("q4") == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3"},
        {"role": "user", "content": "q4"},
    ]
    huge = "x" * 10_000
    assert history.request_items(huge) == [{"role": "user", "content": huge}]


def test_token_estimate_counts_bytes_so_cjk_is_not_underestimated():
    assert estimate_tokens("a" * 400) < estimate_tokens("字" * 200)


# --- errors -------------------------------------------------------------------------------------


def _status_error(fail) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://fake/chat/completions")
    response = httpx2.Response(
        fail.status, request=request, json=fail.body, headers={"x-request-id": "req-1"}
    )
    return openai.RateLimitError("Error code: 429", response=response, body=fail.body)


def test_gemini_list_shaped_429_bodies_are_read():
    minute = classify(_status_error(rate_limit_per_minute("17s")))
    assert isinstance(minute, RateLimited) and minute.retry_after == 17.0
    assert minute.detail["request_id"] == "req-1"
    assert isinstance(classify(_status_error(rate_limit_per_day())), DailyQuotaExhausted)


def _raised(status: int, body: object, sent: bytes = b"{}") -> openai.APIStatusError:
    """The exception openai itself builds from this response (it unwraps dict bodies)."""
    client = openai.AsyncOpenAI(api_key="k", base_url="http://fake/")
    request = httpx2.Request("POST", "http://fake/chat/completions", content=sent)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", "x-request-id": "req-1"}
    return client._make_status_error_from_response(
        httpx2.Response(status, request=request, content=content, headers=headers)
    )


RECORDED_ERRORS = {
    "e400_bad_key": InvalidApiKey,
    "e400_location": LocationNotSupported,
    "e404_v1main": ModelNotFound,
    "e404_native": ModelNotFound,
    "e429_no_details": RateLimited,
    "e429_limit0_pro": NoQuotaForModel,
    "e429_input_tpm": TokenRateLimited,
    "e503_high_demand": Overloaded,
}


@pytest.mark.parametrize("name", RECORDED_ERRORS)
def test_recorded_error_bodies_map_alike_as_a_list_or_a_bare_object(name):
    served = recording(name)
    body = json.loads(served.body)
    as_list, bare = (body, body[0]) if isinstance(body, list) else ([body], body)
    recorded = classify(_raised(served.status, served.body), model="gemini-3.8-flash")
    for shape in (as_list, bare):
        again = classify(_raised(served.status, shape), model="gemini-3.8-flash")
        assert type(again) is RECORDED_ERRORS[name]
        assert str(again) == str(recorded)


def _quota_429(*violations: dict, message: str = QUOTA_MESSAGE, sent: bytes = b"{}"):
    fail = quota_exceeded(*violations, retry_delay="26s", message=message)
    return classify(_raised(429, fail.body, sent), model="gemini-3.8-flash")


@pytest.mark.parametrize(
    ("violations", "decides"),
    [
        (  # limit 0 on one of them: never clears
            [violation(REQUESTS_PER_DAY, 250), violation(REQUESTS_PER_MINUTE, 0)],
            NoQuotaForModel,
        ),
        (  # per day: clears at midnight, the per-minute ones sooner
            [
                violation(REQUESTS_PER_DAY, 250),
                violation(REQUESTS_PER_MINUTE, 10),
                violation(INPUT_TOKENS_PER_MINUTE, 250_000),
            ],
            DailyQuotaExhausted,
        ),
        (  # input tokens per minute: the chat's size, not the number of requests
            [violation(REQUESTS_PER_MINUTE, 10), violation(INPUT_TOKENS_PER_MINUTE, 250_000)],
            TokenRateLimited,
        ),
    ],
    ids=["limit 0", "per day", "input tokens"],
)
def test_the_quota_that_clears_last_decides_whatever_their_order(violations, decides):
    for order in itertools.permutations(violations):
        assert type(_quota_429(*order)) is decides


def test_limit_zero_is_read_from_the_message_when_violations_carry_no_value():
    line = "\n* Quota exceeded for metric: m, limit: {}, model: gemini-3.8-flash"
    ids = (REQUESTS_PER_DAY, REQUESTS_PER_MINUTE)
    unvalued = [violation(quota, None) for quota in ids]
    assert type(_quota_429(*unvalued, message=QUOTA_MESSAGE + line.format(0))) is NoQuotaForModel
    assert type(_quota_429(*unvalued, message=QUOTA_MESSAGE + line.format(10))) is (
        DailyQuotaExhausted
    )
    no_quota = _quota_429(*unvalued, message=QUOTA_MESSAGE + line.format(0))
    assert not no_quota.retryable
    assert "midnight" not in str(no_quota) and "GEMINI_MODEL" in str(no_quota)


def test_an_input_token_quota_is_retried_only_when_the_request_fits_under_it():
    quota = violation(INPUT_TOKENS_PER_MINUTE, 1000)
    small = _quota_429(quota, sent=b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert small.retryable and small.retry_after == 26.0
    assert "about 26 seconds" in str(small)
    # About 1,250 tokens by the app's estimate: over the limit however long one waits.
    big = _quota_429(quota, sent=json.dumps({"content": "x" * 5000}).encode())
    assert not big.retryable
    assert "Start a new chat" in str(big) and "Wait" not in str(big)
    unknown_limit = _quota_429(violation(INPUT_TOKENS_PER_MINUTE, None))
    assert not unknown_limit.retryable


def test_a_missing_model_is_named_as_configured_and_never_suggested_back():
    error = _raised(404, unknown_model("gemini-2.0-flash").body)
    failed_default = str(classify(error, model=DEFAULT_MODEL))
    assert f'"{DEFAULT_MODEL}" set in GEMINI_MODEL' in failed_default
    assert failed_default.count(DEFAULT_MODEL) == 1
    retired = str(classify(error, model="gemini-2.0-flash"))
    assert '"gemini-2.0-flash"' in retired and f"such as {DEFAULT_MODEL}" in retired
    assert '"gemini-2.0-flash"' in str(classify(error))  # no setting passed: Gemini's name


def test_connection_errors_and_bad_keys_are_mapped():
    request = httpx2.Request("POST", "http://fake/")
    assert isinstance(classify(openai.APIConnectionError(request=request)), ConnectionFailed)
    body = [
        {
            "error": {
                "code": 400,
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                    }
                ],
            }
        }
    ]
    response = httpx2.Response(400, request=request, json=body)
    error = openai.BadRequestError("Error code: 400", response=response, body=body)
    assert isinstance(classify(error), InvalidApiKey)


# --- coalescing ---------------------------------------------------------------------------------


async def test_coalescer_writes_the_first_delta_at_once_and_batches_the_rest():
    writes: list[str] = []

    async def write(text: str) -> None:
        writes.append(text)

    coalescer = Coalescer(write, interval=10.0)
    await coalescer.add("Hel")
    assert writes == ["Hel"]  # not held back
    for piece in ["lo", ",", " wor", "ld"]:
        await coalescer.add(piece)
    assert writes == ["Hel"]  # batched while the interval runs
    await coalescer.close()
    assert writes == ["Hel", "lo, world"]
    assert "".join(writes) == "Hello, world"


async def test_coalescer_flushes_by_timer_when_the_stream_pauses():
    written = asyncio.Queue()

    async def write(text: str) -> None:
        await written.put(text)

    coalescer = Coalescer(write, interval=0.02)
    await coalescer.add("a")
    await coalescer.add("b")  # no later delta comes to carry it out
    assert await asyncio.wait_for(written.get(), 1) == "a"
    assert await asyncio.wait_for(written.get(), 1) == "b"
    await coalescer.close()
    assert written.empty()


async def test_many_replies_at_once_stretch_the_interval_and_the_text_stays_exact():
    writes: list[str] = []

    async def write(text: str) -> None:
        writes.append(text)

    budget = EventBudget(events_per_second=100)
    coalescer = Coalescer(write, interval=0.0, budget=budget)
    await coalescer.add("a")
    await coalescer.add("b")
    assert writes == ["a", "b"]  # alone: every delta goes out (interval 0)
    budget.streaming = 500  # 500 replies share 100 events a second: one each per 5 s
    await coalescer.add("c")
    await coalescer.add("d")
    assert writes == ["a", "b"]  # held for the stretched interval
    await coalescer.close()
    assert writes == ["a", "b", "cd"]


async def test_a_reply_counts_against_the_budget_only_while_it_streams():
    budget = EventBudget()
    during: list[int] = []

    async def sink(text: str) -> None:
        during.append(budget.streaming)

    model = ScriptedModel([streamed_reply("Hi", " there")])
    stream = ReplyStream(backend_for(model), sink, budget)
    assert await stream.run([{"role": "user", "content": "hi"}]) == "Hi there"
    assert during[0] == 1
    assert budget.streaming == 0


# --- one reply, with ScriptedModel --------------------------------------------------------------


def backend_for(model: ScriptedModel, **env: str):
    settings = load_settings({"GEMINI_API_KEY": "k", "GEMINI_MAX_RETRIES": "0", **env})
    return build_backend(settings, model)


async def test_reply_stream_returns_exactly_the_streamed_text():
    model = ScriptedModel([streamed_reply("Hello", ", ", "wörld", " 👋")])
    seen: list[str] = []

    async def sink(text: str) -> None:
        seen.append(text)

    stream = ReplyStream(backend_for(model), sink)
    assert await stream.run([{"role": "user", "content": "hi"}]) == "Hello, wörld 👋"
    assert "".join(seen) == "Hello, wörld 👋"
    assert model.last_call.input == [{"role": "user", "content": "hi"}]


async def test_reply_stream_maps_failures_to_chat_errors():
    request = httpx2.Request("POST", "http://fake/")
    model = ScriptedModel([ModelStep.raise_error(openai.APIConnectionError(request=request))])

    async def sink(text: str) -> None:
        pass

    stream = ReplyStream(backend_for(model), sink)
    with pytest.raises(ConnectionFailed):
        await stream.run([{"role": "user", "content": "hi"}])


async def test_cancelling_a_reply_closes_the_model_stream_and_keeps_the_text():
    hanging = HangingReply("Partial")
    shown = asyncio.Event()

    async def sink(text: str) -> None:
        shown.set()

    stream = ReplyStream(backend_for(ScriptedModel([hanging.step()])), sink)
    task = asyncio.create_task(stream.run([{"role": "user", "content": "hi"}]))
    await asyncio.wait_for(shown.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(hanging.closed.wait(), 5)
    assert stream.text == "Partial"


# --- runtime --------------------------------------------------------------------------------------


async def test_a_full_collection_runs_once_the_last_reply_ends(monkeypatch):
    from gemini_chat import runtime

    collected = asyncio.Event()
    monkeypatch.setattr(runtime.gc, "collect", lambda *args: collected.set())
    collector = runtime.IdleCollector(delay=0)
    collector.started()
    collector.started()
    collector.finished()
    for _ in range(3):
        await asyncio.sleep(0)  # let any due callback run
    assert not collected.is_set()  # one reply still streaming
    collector.finished()
    await asyncio.wait_for(collected.wait(), 5)


async def test_sessions_let_go_while_idle_are_collected_once_together(monkeypatch):
    from gemini_chat import runtime

    collections = []
    collected = asyncio.Event()

    def collect(*args) -> None:
        collections.append(1)
        collected.set()

    monkeypatch.setattr(runtime.gc, "collect", collect)
    collector = runtime.IdleCollector(delay=0.05)
    for _ in range(3):  # three closed tabs expiring together
        collector.released()
    await asyncio.wait_for(collected.wait(), 5)
    await asyncio.sleep(0.1)
    assert collections == [1]

    collector.started()  # a reply streaming: its end collects, not the release
    collector.released()
    await asyncio.sleep(0.1)
    assert collections == [1]
    collector.finished()
    await asyncio.sleep(0.1)
    assert collections == [1, 1]


async def test_a_server_never_idle_collects_released_sessions_at_most_once_a_period(monkeypatch):
    from gemini_chat import runtime

    trims, collections = [], []
    monkeypatch.setattr(runtime, "release_free_memory", lambda: trims.append(1))
    monkeypatch.setattr(runtime.gc, "collect", lambda *args: collections.append(1))
    clock = [1000.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock[0])
    collector = runtime.IdleCollector(delay=60, busy_every=60)
    collector.started()  # a reply that never ends: the server is never idle
    for _ in range(5):  # five replies end within the period, tabs closed meanwhile expire
        collector.started()
        collector.released()
        clock[0] += 10
        collector.finished()
    assert trims == [] and collections == []
    collector.started()
    clock[0] += 20  # 70 s since the start
    collector.finished()
    assert collections == [1] and trims == [1]  # the expired sessions' cycles, then the heap
    collector.started()
    clock[0] += 30
    collector.finished()
    assert collections == [1] and trims == [1]  # not again within the period
    collector.started()
    clock[0] += 40  # a period later, with no session let go since: the heap only
    collector.finished()
    assert collections == [1] and trims == [1, 1]
    collector.started()
    collector.released()
    clock[0] += 60
    collector.finished()
    assert collections == [1, 1] and trims == [1, 1, 1]


async def test_chainlit_messages_and_steps_are_created_without_blocking_sleeps(
    chainlit_context, monkeypatch
):
    import time

    import chainlit as cl

    from gemini_chat import runtime

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    runtime.remove_constructor_sleeps()
    cl.Message(content="hi")
    cl.Step(name="a step")
    assert slept == []
