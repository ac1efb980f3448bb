"""Real Gemini traffic replayed: every recording in tests/recordings is served byte for
byte by the fake Gemini to the real app, and the test asserts what the user sees, what the model
is sent, and that the chat carries on.

The three non-streamed answers (``*_nonstream``) answer a request that asked for no stream; the
app always streams, so real Gemini never sends them to it. They are replayed as a misbehaving
server (a proxy behind GEMINI_BASE_URL that ignores ``stream: true``): a whole JSON answer where
server-sent events were asked for. openai's stream reader finds no events in it and would end as
if the answer were empty ("rephrase it"); the user must instead be told the reply could not be
read (check GEMINI_BASE_URL), with nothing retried or kept in the history. Their shapes (thought
flag on plain answer text) also serve the thought filter's tests below.

thoughts_stream carries Gemini's thought summary inline in ``content`` between ``<thought>`` and
``</thought>``. The summary is neither shown as answer text nor sent back in the history: the
answer is the text after the closing tag, and only that (the summary has a step of its own,
tested in test_thoughts.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx2
import openai
import pytest

from gemini_chat.llm import GeminiClient
from gemini_chat.thoughts import ThoughtFilter, is_thought
from tests.fake_gemini import DEFAULT_KEY, RECORDINGS, Reply, recording, recording_catalog

QUESTION = "What is the answer?"
# The model the shared test app is configured with (GEMINI_MODEL unset: the default).
MODEL = "gemini-3.8-flash"
# Shown on no notice: the provider's raw text, JSON, the key.
RAW = ("Error code", "RESOURCE_EXHAUSTED", "{", "[", DEFAULT_KEY, "Traceback", "googleapis")


@dataclass
class Replay:
    answer: str | None = None  # the reply on screen, exactly; None: no reply
    says: list[str] = field(default_factory=list)  # phrases of the one notice; []: no notice
    never_says: tuple[str, ...] = ()
    requests: int = 1  # requests Gemini receives (more means retries)
    logged: tuple[str, ...] = ()


def _catalog_text(name: str) -> str:
    return recording(name).catalog["expected_text"]


UNREADABLE = Replay(
    says=["couldn't read", "GEMINI_BASE_URL"],
    never_says=("empty answer", "rephras"),
    logged=("MalformedResponse", "application/json"),
)

REPLAYS: dict[str, Replay] = {
    # -- streams
    "lite_stream": Replay(answer=_catalog_text("lite_stream")),
    # One chunk with no finish reason at all, usage counting 66 thinking tokens.
    "g38_chunk": Replay(answer="OK."),
    # Thought summaries inline between <thought> tags: only the answer after them is shown.
    "thoughts_stream": Replay(answer="你好！有什么我可以帮助你的吗？"),
    # A role-only delta with finish_reason "stop": an empty answer.
    "empty_stop": Replay(says=["empty answer"], logged=("EmptyAnswer",)),
    # -- whole JSON answers to a stream request (see the module docstring)
    "lite_nonstream": UNREADABLE,
    "pro_thinking_text_nonstream": UNREADABLE,
    "pro_toolcall_nonstream": UNREADABLE,
    # -- errors
    "e400_bad_key": Replay(
        says=["rejected the API key", "GEMINI_API_KEY"],
        logged=("InvalidApiKey", "status=400", "API_KEY_INVALID"),
    ),
    "e400_location": Replay(
        says=["not available in the region", "won't help"],
        never_says=("rephras", "send your message again", "Send your message again"),
        logged=("LocationNotSupported", "FAILED_PRECONDITION"),
    ),
    "e404_v1main": Replay(
        says=[f'"{MODEL}"', "GEMINI_MODEL", "not available"],
        logged=("ModelNotFound", "status=404"),
    ),
    "e404_native": Replay(
        says=[f'"{MODEL}"', "GEMINI_MODEL", "not available"],
        logged=("ModelNotFound", "status=404"),
    ),
    # No details: the quota is unknown, so it is neither called per-minute nor daily; retried
    # with the short backoff.
    "e429_no_details": Replay(
        says=["usage limit", "Wait a minute"],
        never_says=("per-minute", "daily", "midnight"),
        requests=3,
        logged=("RateLimited", "status=429"),
    ),
    # limit: 0 on PerDay, PerMinute and InputTokensPerMinute: no quota at all, never retried.
    "e429_limit0_pro": Replay(
        says=["no Gemini quota", f'"{MODEL}"', "billing", "GEMINI_MODEL"],
        never_says=("midnight", "daily", "per-minute", "seconds"),
        logged=("NoQuotaForModel", "PerDay", "InputTokens"),
    ),
    # Input tokens per minute, retryDelay 26s (over the test app's 2 s cap): not retried.
    "e429_input_tpm": Replay(
        says=["in the last minute", "whole chat", "about 26 seconds", "new chat"],
        never_says=("request limit",),
        logged=("TokenRateLimited", "InputTokens"),
    ),
    "e503_high_demand": Replay(
        says=["high demand", "Wait a minute"], requests=3, logged=("Overloaded", "UNAVAILABLE")
    ),
}


def test_every_recording_is_replayed():
    """A recording added to the catalog without a replay here fails; so do missing files."""
    assert RECORDINGS.is_dir(), f"missing {RECORDINGS}"
    assert sorted(entry["name"] for entry in recording_catalog()) == sorted(REPLAYS)


# Where the recordings were collected: beside a checkout of this repository in its development
# workspace. The copy in tests/recordings must stay the same, so a recording added there is
# replayed here too.
COLLECTED = Path(__file__).resolve().parent.parent.parent / "shared" / "gemini-recordings"


@pytest.mark.skipif(not COLLECTED.is_dir(), reason="no collection beside the checkout")
def test_the_recordings_are_the_collected_ones():
    collected = {p.name: p.read_bytes() for p in (COLLECTED / "recordings").iterdir()}
    kept = {p.name: p.read_bytes() for p in RECORDINGS.iterdir() if p.name != "SOURCES.md"}
    assert kept == collected
    assert (RECORDINGS / "SOURCES.md").read_bytes() == (COLLECTED / "SOURCES.md").read_bytes()


@pytest.mark.parametrize("name", REPLAYS, ids=REPLAYS)
def test_recordings_are_served_byte_for_byte(gemini, name):
    gemini.script(recording(name))
    request = urllib.request.Request(
        gemini.base_url + "chat/completions",
        data=json.dumps({"model": MODEL, "messages": [], "stream": True}).encode(),
        headers={"Authorization": f"Bearer {DEFAULT_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    entry = recording(name).catalog
    assert (status, headers["Content-Type"]) == (entry["status"], entry["content_type"])
    assert body == (RECORDINGS / f"{name}.body").read_bytes()


@pytest.mark.parametrize("name", REPLAYS, ids=REPLAYS)
async def test_recorded_gemini_response_as_the_user_sees_it(chat, gemini, app, name):
    replay = REPLAYS[name]
    log_start = len(app.log())
    gemini.script(*[recording(name)] * replay.requests, Reply("must not be used"))
    replies = await chat.ask(QUESTION, timeout=20)

    sent = await gemini.arrived(replay.requests)
    assert len(sent) == replay.requests
    assert sent[0].conversation[1:] == [("user", QUESTION)]
    assert gemini.pending == 1, "retried more than expected"

    errors = [m.content for m in replies if m.is_error]
    shown = [m.content for m in replies if not m.is_error]
    assert shown == ([replay.answer] if replay.answer is not None else []), chat.transcript()
    if replay.says:
        assert len(errors) == 1, chat.transcript()
        for phrase in replay.says:
            assert phrase in errors[0]
        for raw in (*RAW, *replay.never_says):
            assert raw not in errors[0]
    else:
        assert errors == []
    for message in replies:
        assert "<thought>" not in message.content and "</thought>" not in message.content

    # The next message works; the model is sent the answer as shown, and nothing of a failure.
    gemini.reset()
    gemini.script(Reply("Recovered."))
    replies = await chat.ask("Next question")
    assert [m.content for m in replies] == ["Recovered."]
    earlier = [("user", QUESTION), ("assistant", replay.answer)] if replay.answer else []
    assert (await gemini.arrived(1))[0].conversation[1:] == [*earlier, ("user", "Next question")]

    log = app.log()[log_start:]
    for detail in replay.logged:
        assert detail in log
    assert DEFAULT_KEY not in log


# --- the recorded chunks, read without a server ---------------------------------------------------

STREAMS = ["lite_stream", "thoughts_stream", "empty_stop", "g38_chunk"]


def recorded_chunks(name: str) -> list[dict]:
    events = recording(name).body.decode().split("\n\n")
    data = [e.removeprefix("data: ") for e in events if e.strip()]
    return [json.loads(d) for d in data if d != "[DONE]"]


def read_chunk(client: openai.AsyncOpenAI, data: dict) -> openai.types.chat.ChatCompletionChunk:
    response = httpx2.Response(200, request=httpx2.Request("POST", "http://127.0.0.1:9/"))
    return client._process_response_data(
        data=data, cast_to=openai.types.chat.ChatCompletionChunk, response=response
    )


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_chunks_read_exactly_as_openai_reads_them(name):
    fast = GeminiClient(api_key="k", base_url="http://127.0.0.1:9/")
    stock = openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/")
    catalog = recording(name).catalog
    chunks = recorded_chunks(name)
    assert len(chunks) == catalog["chunks"]
    for data, usage, finish in zip(
        chunks, catalog["usage"], catalog["finish_reasons"], strict=True
    ):
        chunk = read_chunk(fast, data)
        assert chunk.model_dump() == read_chunk(stock, data).model_dump()
        assert chunk.choices[0].finish_reason == finish
        # Thinking tokens count only in the total (g38_chunk: 3 + 2 of 71).
        assert (chunk.usage.model_dump(exclude_none=True) if chunk.usage else None) == usage


def stripped(deltas: list[tuple[str, bool]]) -> tuple[str, str]:
    """(answer, thoughts) of deltas given as (content, flagged as a thought)."""
    thoughts = ThoughtFilter()
    answer = []
    for content, flagged in deltas:
        extra = {"extra_content": {"google": {"thought": True}}} if flagged else {}
        delta = SimpleNamespace(content=content, model_extra=extra)
        thoughts.strip(delta)
        answer.append(delta.content or "")
    return "".join(answer), "".join(thoughts.thoughts)


THOUGHTS_TEXT = recording("thoughts_stream").catalog["expected_text"]
THOUGHT, ANSWER = THOUGHTS_TEXT.removeprefix("<thought>").split("</thought>")


def test_thought_summaries_are_taken_out_of_the_recorded_stream():
    client = GeminiClient(api_key="k", base_url="http://127.0.0.1:9/")
    deltas = [
        read_chunk(client, data).choices[0].delta for data in recorded_chunks("thoughts_stream")
    ]
    assert [is_thought(d) for d in deltas] == [True, True, True, False]
    assert stripped([(d.content, is_thought(d)) for d in deltas]) == (ANSWER, THOUGHT)
    assert ANSWER == "你好！有什么我可以帮助你的吗？"


def test_thought_tags_split_anywhere_across_deltas_are_still_found():
    for cut in range(len("<thought>"), len(THOUGHTS_TEXT)):
        deltas = [(THOUGHTS_TEXT[:cut], True), (THOUGHTS_TEXT[cut:], False)]
        assert stripped(deltas) == (ANSWER, THOUGHT), cut


def test_answers_that_only_mention_thought_tags_are_left_alone():
    mention = "Wrap it in <thought>...</thought> tags."
    assert stripped([("<thought>", False), (mention, False)]) == ("<thought>" + mention, "")
    # A non-streamed answer flags its plain answer text as a thought (it carries the signature).
    message = json.loads(recording("pro_thinking_text_nonstream").body)["choices"][0]["message"]
    assert message["extra_content"]["google"]["thought"] is True
    assert stripped([(message["content"], True)]) == ("The current time is Noon.", "")
