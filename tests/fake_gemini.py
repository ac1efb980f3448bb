"""A fake Gemini server: Chat Completions with SSE in Gemini's dialect, on a real local port.

It speaks what ../shared/gemini-openai-compat.md describes and the recordings of real traffic in
tests/recordings show: error bodies as a one-element JSON *list* (or, as the native
endpoint sends them, a bare object), RetryInfo and QuotaFailure details on 429 (several violations
at once, "limit: 0"), API_KEY_INVALID as a 400 with a LocalizedMessage beside its ErrorInfo, 404 for
unknown models, non-final chunks without ``finish_reason``, cumulative usage on every chunk whose
total counts thinking tokens (or no usage at all), an empty answer as a role-only delta, errors
inside an open stream, ``finish_reason: content_filter``, and 400 "Unknown name" for request
fields Gemini does not know. ``recording(NAME)`` replays one real response byte for byte.

Each request takes the next scripted behaviour (``server.script(...)``) or, when none is queued,
echoes the last user message; a last message ``bench TOKENS DELAY FIRST_DELAY [THOUGHTS]`` streams
TOKENS pieces ``" tN"`` DELAY seconds apart after FIRST_DELAY seconds (the benchmark's load),
after THOUGHTS pieces of thought summary when the request asks for thoughts (as Gemini streams
them: ``Reply.thoughts``); ``bench-tool TOKENS DELAY FIRST_DELAY`` is the benchmark's turn with one
tool call (``bench_tool_reply``); ``bench-fault KIND TOKENS DELAY [once ID]`` is an upstream
fault for the soak, steered from a separate process (``bench_fault_reply``). Every
request is recorded so tests assert on exactly what the app sent. The server runs its own event
loop in a thread, so tests on any loop (or none) can use it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

DEFAULT_KEY = "test-gemini-key"
FREE_TIER_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
FREE_TIER_INPUT_METRIC = (
    "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
)
# Real responses of Gemini's endpoint, collected from public projects (their sources are in
# recordings/SOURCES.md): bodies, and catalog.json with each one's status and content type.
RECORDINGS = Path(__file__).resolve().parent / "recordings"
KNOWN_MODELS = frozenset(
    {
        "gemini-3.8-flash",
        "gemini-3.7-flash",
        "gemini-3.6-flash",
        "gemini-3.5-flash",
        "gemini-3.5-flash-lite",
        "gemini-3.1-flash-lite",
    }
)
# Models Gemini lists beside its chat models (embeddings, images, video, speech, AQA): an
# app offering them for chat would get errors.
OTHER_LISTED_MODELS = (
    "text-embedding-004",
    "gemini-embedding-001",
    "imagen-4.0-generate-001",
    "veo-3.0-generate-preview",
    "gemini-2.5-flash-preview-tts",
    "aqa",
)
# Models that answer 400 to the thinking level "minimal".
NO_MINIMAL_THINKING = frozenset({"gemini-3.7-flash", "gemini-3.8-flash"})
# Fields Gemini's endpoint accepts; anything else is refused the way Gemini refuses it.
ACCEPTED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "n",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "extra_body",
        "logprobs",
        "top_logprobs",
    }
)


class ClientGone(Exception):
    """The app closed the connection while the fake was still answering."""


@dataclass
class RecordedRequest:
    body: dict[str, Any]
    headers: dict[str, str]
    path: str
    peer: tuple | None = None  # the app's (host, port): one per TCP connection
    disconnected: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def conversation(self) -> list[tuple[str, str]]:
        """(role, text) pairs of the request, system message included; of a message with
        content parts, its text parts joined."""
        return [(m["role"], _text_of(m.get("content"))) for m in self.messages]

    def files(self, index: int = -1) -> list[tuple[str, bytes]]:
        """The files of message ``index`` (the last by default): (MIME type or audio format,
        bytes) of each image_url, input_audio and file part, in order."""
        content = self.messages[index].get("content")
        found = []
        for part in content if isinstance(content, list) else []:
            kind = part.get("type")
            if kind == "image_url":
                mime, data = _data_url(part["image_url"]["url"])
                found.append((mime, data))
            elif kind == "input_audio":
                audio = part["input_audio"]
                found.append((audio["format"], base64.b64decode(audio["data"])))
            elif kind == "file":
                mime, data = _data_url(part["file"]["file_data"])
                found.append((mime, data))
        return found

    @property
    def tool_calls(self) -> list[SentToolCall]:
        """Every tool call the request's assistant messages carry, in order."""
        return [
            SentToolCall.of(call, position)
            for position, message in enumerate(self.messages)
            if message.get("role") == "assistant"
            for call in message.get("tool_calls") or ()
        ]

    @property
    def tool_results(self) -> list[SentToolResult]:
        """Every tool message of the request, in order."""
        return [
            SentToolResult(message.get("tool_call_id"), _text_of(message.get("content")), position)
            for position, message in enumerate(self.messages)
            if message.get("role") == "tool"
        ]

    @property
    def tool_schemas(self) -> dict[str, Any]:
        """The parameters schema of each tool the request declares, by the tool's name."""
        return {
            tool["function"]["name"]: tool["function"].get("parameters")
            for tool in self.body.get("tools") or ()
        }


@dataclass(frozen=True)
class SentToolCall:
    """One tool call in a request's history, as the app sent it back."""

    id: str | None
    name: str
    argument_text: str
    # extra_content.google.thought_signature, None when absent.
    signature: str | None
    position: int  # the index of its assistant message in ``messages``

    @property
    def arguments(self) -> Any:
        """The arguments as JSON, or their text when it is not JSON."""
        try:
            return json.loads(self.argument_text)
        except ValueError:
            return self.argument_text

    @classmethod
    def of(cls, call: dict[str, Any], position: int) -> SentToolCall:
        function = call.get("function") or {}
        google = (call.get("extra_content") or {}).get("google") or {}
        return cls(
            call.get("id"),
            function.get("name", ""),
            function.get("arguments", ""),
            google.get("thought_signature"),
            position,
        )


@dataclass(frozen=True)
class SentToolResult:
    """One tool message in a request: the call it answers and its text."""

    tool_call_id: str | None
    output: str
    position: int  # its index in ``messages``


def _data_url(url: str) -> tuple[str, bytes]:
    header, _, encoded = url.partition(",")
    return header.removeprefix("data:").removesuffix(";base64"), base64.b64decode(encoded)


# What Gemini's endpoint takes inline (image_url data URLs and file parts), by MIME type.
INLINE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif", "application/pdf"}
)
AUDIO_FORMATS = frozenset({"wav", "mp3"})


def content_part_problem(part: Any) -> str | None:
    """Why Gemini would refuse a content part (None when it takes it)."""
    if not isinstance(part, dict):
        return "a content part is not an object"
    kind = part.get("type")
    try:
        if kind == "text":
            return None if isinstance(part["text"], str) else "text is not a string"
        if kind == "image_url":
            mime, _ = _data_url(part["image_url"]["url"])
            return None if mime in INLINE_TYPES else f"Unsupported MIME type: {mime}"
        if kind == "input_audio":
            audio = part["input_audio"]
            base64.b64decode(audio["data"], validate=True)
            return None if audio["format"] in AUDIO_FORMATS else "Unsupported audio format"
        if kind == "file":
            mime, _ = _data_url(part["file"]["file_data"])
            return None if mime in INLINE_TYPES else f"Unsupported MIME type: {mime}"
    except (KeyError, TypeError, ValueError) as error:
        return f"Invalid content part: {error}"
    return f'Invalid value at "messages.content[].type": {kind!r}'


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def error_body(
    code: int, status: str, message: str, details: Iterable[dict] = (), native: bool = False
) -> list[dict] | dict:
    """Gemini's compatible endpoint wraps its error object in a list; the native one (and, at
    times, the compatible one) sends the bare object. ``details`` is left out when empty."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details := list(details):
        error["details"] = details
    return {"error": error} if native else [{"error": error}]


def split_tokens(text: str, size: int = 1) -> list[str]:
    """Cut text into word-like pieces (a word with its leading space), ``size`` words a piece."""
    pieces: list[str] = []
    current = ""
    for index, char in enumerate(text):
        if char == " " and current.strip() and index:
            pieces.append(current)
            current = ""
        current += char
    if current:
        pieces.append(current)
    return ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)] or [""]


# --- behaviours -------------------------------------------------------------------------------


@dataclass
class Reply:
    """Stream ``text`` (or an echo of the last user message) chunk by chunk."""

    text: str | None = None
    chunks: list[str] | None = None
    delay: float = 0.0
    first_delay: float = 0.0
    finish_reason: str = "stop"
    # Gemini thinks by default and counts it only in total_tokens (3 + 2 + 66 = 71 recorded).
    thinking_tokens: int = 66
    usage: bool = True  # some real streams carry no usage at all
    # Usage figures to report instead of the defaults (words of the request, pieces sent).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Also report thinking as completion_tokens_details.reasoning_tokens (as OpenAI does).
    reasoning_details: bool = False
    # What happens after ``chunks`` were sent: "finish", "drop", "stall", "malformed", "error".
    ending: str = "finish"
    # A thought summary streamed before the answer, one piece a chunk, only when the request
    # asks for it (extra_body.google.thinking_config.include_thoughts), as Gemini does: "inline"
    # in ``content`` between <thought> tags, flagged extra_content.google.thought (the
    # thoughts_stream recording), or as ``reasoning_content`` (other compatible servers).
    thoughts: list[str] | None = None
    thought_shape: str = "inline"
    # Deltas sent as they are instead of text (e.g. a tool call), the last with the finish.
    raw: list[dict[str, Any]] | None = None
    # The tool calls ``raw`` makes (tool_call_reply): the server remembers their signatures.
    calls: list[ToolCall] = field(default_factory=list)

    def pieces(self, request: RecordedRequest) -> list[str]:
        if self.chunks is not None:
            return self.chunks
        if self.text is not None:
            return split_tokens(self.text)
        last_user = next(
            (text for role, text in reversed(request.conversation) if role == "user"), ""
        )
        return split_tokens(f"Echo: {last_user}")


@dataclass
class ToolCall:
    """One function call the fake answers with; ``arguments`` as the model would write them
    (a dict is sent as JSON, a string as it is: e.g. broken JSON)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str = ""  # Gemini's compatible endpoint sends "" (pro_toolcall_nonstream recording)
    # Gemini 3's thought signature, in extra_content.google.thought_signature; None: none.
    signature: str | None = None

    @property
    def argument_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)

    def whole(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {
            "function": {"arguments": self.argument_text, "name": self.name},
            "id": self.id,
            "type": "function",
        }
        if index is not None:
            call["index"] = index
        if self.signature is not None:
            call["extra_content"] = {"google": {"thought_signature": self.signature}}
        return call


# How a turn's tool calls are streamed (gemini-openai-compat.md, "Streaming"):
#   "gemini":     all calls whole in one delta, no ``index`` (the recording's call shape)
#   "index_zero": one delta per call, each whole, every one with ``index: 0``
#   "split":      arguments over several deltas with neither ``index`` nor id nor name after
#                 the first, as Gemini has been seen to stream long arguments
#   "openai":     OpenAI's own shape: a distinct ``index`` per call, arguments in pieces
TOOL_CALL_SHAPES = ("gemini", "index_zero", "split", "openai")


def tool_call_deltas(calls: Sequence[ToolCall], shape: str = "gemini") -> list[dict[str, Any]]:
    """The deltas of a turn that calls ``calls``, in ``shape``."""
    if shape == "gemini":
        return [{"role": "assistant", "tool_calls": [call.whole() for call in calls]}]
    if shape == "index_zero":
        return [{"role": "assistant", "tool_calls": [call.whole(0)]} for call in calls]
    deltas: list[dict[str, Any]] = []
    for position, call in enumerate(calls):
        index = position if shape == "openai" else None
        first = call.whole(index)
        text = call.argument_text
        third = max(1, len(text) // 3)
        pieces = [text[:third], text[third : 2 * third], text[2 * third :]]
        first["function"]["arguments"] = pieces[0]
        deltas.append({"role": "assistant", "tool_calls": [first]})
        for piece in pieces[1:]:
            more: dict[str, Any] = {"function": {"arguments": piece}}
            if index is not None:
                more["index"] = index
            deltas.append({"tool_calls": [more]})
    return deltas


def tool_call_reply(
    *calls: ToolCall, shape: str = "gemini", text: str | None = None, **options: Any
) -> Reply:
    """A reply that calls ``calls`` (after ``text``, if given), finishing with "tool_calls"."""
    deltas = tool_call_deltas(calls, shape)
    if text:
        deltas.insert(0, {"role": "assistant", "content": text})
    return Reply(raw=deltas, finish_reason="tool_calls", calls=list(calls), **options)


def asks_for_thoughts(body: dict[str, Any]) -> bool:
    """True when the request asks for thought summaries, where Gemini reads it."""
    google = (body.get("extra_body") or {}).get("google") or {}
    return (google.get("thinking_config") or {}).get("include_thoughts") is True


def thought_deltas(reply: Reply, request: RecordedRequest) -> list[dict[str, Any]]:
    """The deltas of ``reply``'s thought summary for ``request`` (none unless asked)."""
    if not reply.thoughts or not asks_for_thoughts(request.body):
        return []
    if reply.thought_shape == "reasoning_content":
        return [{"reasoning_content": piece, "role": "assistant"} for piece in reply.thoughts]
    flag = {"google": {"thought": True}}
    return [
        {
            "content": ("<thought>" if i == 0 else "") + piece,
            "extra_content": flag,
            "role": "assistant",
        }
        for i, piece in enumerate(reply.thoughts)
    ]


BENCH = re.compile(r"^bench (\d+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)(?: (\d+))?$")


def bench_tokens(count: int) -> list[str]:
    return [f" t{i}" for i in range(count)]


def bench_reply(request: RecordedRequest) -> Reply | None:
    """The benchmark's request: "bench TOKENS DELAY FIRST_DELAY [THOUGHTS]" as last message."""
    last_user = next((t for role, t in reversed(request.conversation) if role == "user"), "")
    match = BENCH.match(last_user)
    if not match:
        return None
    count, delay, first_delay = int(match[1]), float(match[2]), float(match[3])
    # An optional fourth number: pieces of thought summary first, when the request asks.
    thoughts = [f" r{i}" for i in range(int(match[4]))] if match[4] else None
    return Reply(
        chunks=bench_tokens(count), delay=delay, first_delay=first_delay, thoughts=thoughts
    )


BENCH_TOOL = re.compile(r"^bench-tool (\d+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)(?: (\w+))?$")
# The benchmark's tool (bench/tools.py), called unless the message names another.
BENCH_TOOL_NAME = "bench_clock"
BENCH_TOOL_ARGUMENTS = {"zone": "UTC"}


def bench_tool_reply(request: RecordedRequest) -> Reply | None:
    """The benchmark's turn with one tool call: "bench-tool TOKENS DELAY FIRST_DELAY [TOOL]" as
    last user message. A request that ends with that message gets one call of TOOL (Gemini's
    shape: whole, no ``index``) after FIRST_DELAY; the follow-up, a request whose last message
    is a tool result, gets TOKENS pieces DELAY apart. The call has a non-empty id so the Agents
    SDK alone, which rejects Gemini's empty ids, can run the same turn."""
    last_user = next((t for role, t in reversed(request.conversation) if role == "user"), "")
    match = BENCH_TOOL.match(last_user)
    if not match:
        return None
    count, delay, first_delay = int(match[1]), float(match[2]), float(match[3])
    if request.messages and request.messages[-1].get("role") == "tool":
        return Reply(chunks=bench_tokens(count), delay=delay)
    call = ToolCall(
        match[4] or BENCH_TOOL_NAME, BENCH_TOOL_ARGUMENTS, id=f"call_{uuid.uuid4().hex}"
    )
    return tool_call_reply(call, first_delay=first_delay)


BENCH_FAULT = re.compile(
    r"^bench-fault (429|500|503|reset|error|drop) (\d+) (\d+(?:\.\d+)?)(?: once (\S+))?$"
)
# The soak's 429 asks for a short wait, so the app's retries (and the chat) do not idle long.
BENCH_FAULT_RETRY_DELAY = "1s"


def bench_fault_reply(request: RecordedRequest, faulted: set[str]) -> Behaviour | None:
    """An upstream fault on demand: "bench-fault KIND TOKENS DELAY [once ID]" as last user
    message. KIND is one of the fake's own faults:

        429    rate_limit_per_minute with RetryInfo 1s    500    internal_error
        503    overloaded                                 reset  Reset: a TCP reset, no response
        error  TOKENS pieces, then Gemini's error object inside the stream (``ending="error"``)
        drop   TOKENS pieces, then the connection reset mid-stream (``ending="drop"``)

    Without ``once`` every request carrying the message faults (the app's retries too); with
    ``once ID`` only the first does, and a later one (a retry) gets TOKENS pieces DELAY apart,
    as ``bench`` sends them. ``faulted`` holds the IDs already faulted."""
    last_user = next((t for role, t in reversed(request.conversation) if role == "user"), "")
    match = BENCH_FAULT.match(last_user)
    if not match:
        return None
    kind, count, delay, once = match[1], int(match[2]), float(match[3]), match[4]
    if once is not None:
        if once in faulted:
            return Reply(chunks=bench_tokens(count), delay=delay)
        faulted.add(once)
    if kind in ("error", "drop"):
        return Reply(chunks=bench_tokens(count), delay=delay, ending=kind)
    faults = {
        "429": lambda: rate_limit_per_minute(BENCH_FAULT_RETRY_DELAY),
        "500": internal_error,
        "503": overloaded,
        "reset": Reset,
    }
    return faults[kind]()


@dataclass
class Fail:
    """Answer with an HTTP error carrying ``body`` (list-shaped or a bare object) as JSON."""

    status: int
    body: Any


@dataclass
class Recorded:
    """Answer with a real recorded response, byte for byte: a stream is written one event at a
    time, as it was recorded; anything else in one piece."""

    name: str
    status: int
    content_type: str
    chunking: str
    body: bytes
    catalog: dict[str, Any]

    def pieces(self) -> list[bytes]:
        if self.chunking == "events":
            return [piece for piece in re.split(b"(?<=\n\n)", self.body) if piece]
        return [self.body]


def recording_catalog() -> list[dict[str, Any]]:
    """The catalog of tests/recordings. Missing recordings are an error, not a skip."""
    catalog = RECORDINGS / "catalog.json"
    if not catalog.is_file():
        raise FileNotFoundError(
            f"the recordings of real Gemini traffic are missing: expected {catalog}"
        )
    return json.loads(catalog.read_text(encoding="utf-8"))


def recording(name: str) -> Recorded:
    """The recorded response NAME, with its status and content type from the catalog."""
    entry = next((e for e in recording_catalog() if e["name"] == name), None)
    if entry is None:
        raise KeyError(f"no recording named {name!r} in {RECORDINGS}")
    body = (RECORDINGS / f"{name}.body").read_bytes()
    if len(body) != entry["bytes"]:
        raise AssertionError(
            f"{name}.body has {len(body)} bytes, the catalog says {entry['bytes']}"
        )
    return Recorded(name, entry["status"], entry["content_type"], entry["chunking"], body, entry)


@dataclass
class Reset:
    """Close the connection with a TCP reset before any response."""


REQUESTS_PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
REQUESTS_PER_DAY = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
INPUT_TOKENS_PER_MINUTE = "GenerateContentInputTokensPerModelPerMinute-FreeTier"
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)


def violation(
    quota_id: str, limit: int | None, model: str = "gemini-3.8-flash", metric: str = ""
) -> dict[str, Any]:
    """One QuotaFailure violation; real ones sometimes leave out ``quotaValue``."""
    entry: dict[str, Any] = {
        "quotaMetric": metric
        or (FREE_TIER_INPUT_METRIC if "InputTokens" in quota_id else FREE_TIER_METRIC),
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": model},
    }
    if limit is not None:
        entry["quotaValue"] = str(limit)
    return entry


def quota_exceeded(
    *violations: dict[str, Any],
    retry_delay: str | None = None,
    message: str = QUOTA_MESSAGE,
    native: bool = False,
) -> Fail:
    """A 429 RESOURCE_EXHAUSTED listing ``violations``, Help first as Gemini sends it."""
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": list(violations)},
    ]
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    return Fail(429, error_body(429, "RESOURCE_EXHAUSTED", message, details, native=native))


def rate_limit_per_minute(retry_delay: str = "17s") -> Fail:
    return quota_exceeded(violation(REQUESTS_PER_MINUTE, 10), retry_delay=retry_delay)


def rate_limit_per_day() -> Fail:
    return quota_exceeded(violation(REQUESTS_PER_DAY, 250), retry_delay="43s")


def input_tokens_per_minute(limit: int = 250_000, retry_delay: str = "26s") -> Fail:
    """The per-minute input-token quota, as the native endpoint sends it (a bare object)."""
    return quota_exceeded(
        violation(INPUT_TOKENS_PER_MINUTE, limit), retry_delay=retry_delay, native=True
    )


def no_free_tier(model: str = "gemini-3.8-flash", retry_delay: str | None = "38s") -> Fail:
    """A model this key has no quota for: every violation says "limit: 0"."""
    lines = "".join(
        f"\n* Quota exceeded for metric: {metric}, limit: 0, model: {model}"
        for metric in (FREE_TIER_METRIC, FREE_TIER_METRIC, FREE_TIER_INPUT_METRIC)
    )
    return quota_exceeded(
        violation(REQUESTS_PER_DAY, None, model),
        violation(REQUESTS_PER_MINUTE, None, model),
        violation(INPUT_TOKENS_PER_MINUTE, None, model),
        retry_delay=retry_delay,
        message=f"{QUOTA_MESSAGE}{lines}\nPlease retry in {retry_delay}.",
    )


def invalid_key() -> Fail:
    return Fail(
        400,
        error_body(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                },
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": "API key not valid. Please pass a valid API key.",
                },
            ],
        ),
    )


def location_not_supported() -> Fail:
    return Fail(
        400,
        error_body(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
    )


def unknown_model(model: str) -> Fail:
    return Fail(
        404,
        error_body(
            404,
            "NOT_FOUND",
            f"models/{model} is not found for API version v1main, or is not supported for "
            "generateContent. Call ListModels to see the list of available models and their "
            "supported methods.",
        ),
    )


def internal_error() -> Fail:
    return Fail(
        500,
        error_body(500, "INTERNAL", "An internal error has occurred. Please retry or report."),
    )


def overloaded() -> Fail:
    return Fail(
        503, error_body(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    )


def high_demand() -> Fail:
    return Fail(
        503,
        error_body(
            503,
            "UNAVAILABLE",
            "This model is currently experiencing high demand. Spikes in demand are usually "
            "temporary. Please try again later.",
            native=True,
        ),
    )


def thinking_refused(message: str) -> Fail:
    return Fail(400, error_body(400, "INVALID_ARGUMENT", message))


def thinking_refusal(body: dict[str, Any]) -> Fail | None:
    """Gemini's 400 for a thinking config it does not take: ``reasoning_effort`` beside
    ``extra_body.google.thinking_config``, or "minimal" for a model without it."""
    extra = body.get("extra_body")
    google = extra.get("google") if isinstance(extra, dict) else None
    config = google.get("thinking_config") if isinstance(google, dict) else None
    if not isinstance(config, dict):
        return None
    if "reasoning_effort" in body:
        return thinking_refused(
            "reasoning_effort and extra_body.google.thinking_config cannot both be set."
        )
    if config.get("thinking_level") == "minimal" and body.get("model") in NO_MINIMAL_THINKING:
        return thinking_refused("Thinking level MINIMAL is not supported for this model.")
    return None


def unknown_field(name: str) -> Fail:
    return Fail(
        400,
        error_body(
            400,
            "INVALID_ARGUMENT",
            f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.',
            [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [
                        {"description": f'Invalid JSON payload received. Unknown name "{name}"'}
                    ],
                }
            ],
        ),
    )


# JSON Schema keywords Gemini refuses in a tool's parameters (gemini-openai-compat.md; reports of
# 400 "Unknown name" for each).
REFUSED_SCHEMA_KEYWORDS = ("$ref", "$defs", "const", "default", "examples")


def _refused_keywords(schema: Any, path: str) -> Iterable[tuple[str, str]]:
    """(keyword, Gemini's path to it) for each refused keyword in ``schema``; property names
    are names, not keywords."""
    if not isinstance(schema, dict):
        return
    for keyword in REFUSED_SCHEMA_KEYWORDS:
        if keyword in schema:
            yield keyword, path
    for position, sub in enumerate((schema.get("properties") or {}).values()):
        yield from _refused_keywords(sub, f"{path}.properties[{position}].value")
    if isinstance(schema.get("items"), dict):
        yield from _refused_keywords(schema["items"], f"{path}.items")
    for keyword, name in (("anyOf", "any_of"), ("oneOf", "one_of"), ("allOf", "all_of")):
        for position, sub in enumerate(schema.get(keyword) or ()):
            yield from _refused_keywords(sub, f"{path}.{name}[{position}]")
    for name, sub in (schema.get("$defs") or {}).items():
        yield from _refused_keywords(sub, f"{path}.$defs.{name}")


def schema_refusal(body: dict[str, Any]) -> Fail | None:
    """Gemini's 400 for tools whose schemas use keywords it does not know (every one listed)."""
    found = [
        (keyword, path)
        for position, tool in enumerate(body.get("tools") or ())
        for keyword, path in _refused_keywords(
            (tool.get("function") or {}).get("parameters"),
            f"tools[0].function_declarations[{position}].parameters",
        )
    ]
    if not found:
        return None
    lines = [
        f"Invalid JSON payload received. Unknown name \"{keyword}\" at '{path}': Cannot find field."
        for keyword, path in found
    ]
    violations = [
        {"field": path, "description": line} for (_, path), line in zip(found, lines, strict=True)
    ]
    return Fail(
        400,
        error_body(
            400,
            "INVALID_ARGUMENT",
            "\n".join(lines),
            [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}],
        ),
    )


MISSING_SIGNATURE = (
    "Function call is missing a thought_signature in functionCall parts. This is required for "
    "tools to work correctly, and missing thought_signature may lead to degraded model "
    "performance. Additional data, function call `default_api:{name}` , position {position}. "
    "Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
)
UNPAIRED_RESULTS = (
    "Please ensure that the number of function response parts should be equal to number of "
    "function call parts of the function call turn."
)


def signature_refusal(request: RecordedRequest, issued: dict[tuple[str, str], str]) -> Fail | None:
    """Gemini 3's 400 for a call it made with a thought signature, sent back without it (or
    with another) in the current turn: the messages after the last user message (Gemini
    validates no earlier turn). ``issued``: (name, argument text) -> the signature it sent."""
    if not str(request.body.get("model", "")).startswith("gemini-3"):
        return None
    messages = request.messages
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    current = users[-1] if users else -1
    for call in request.tool_calls:
        if call.position < current:
            continue
        expected = issued.get((call.name, call.argument_text))
        if expected is None:
            continue
        if call.signature is None:
            position = turns.index(request.messages[call.position]) + 1
            message = MISSING_SIGNATURE.format(name=call.name, position=position)
            return Fail(400, error_body(400, "INVALID_ARGUMENT", message))
        if call.signature != expected:
            return Fail(400, error_body(400, "INVALID_ARGUMENT", "Corrupted thought signature."))
    return None


def pairing_refusal(request: RecordedRequest) -> Fail | None:
    """Gemini's 400 when tool results do not answer the calls before them one for one: a
    result for no call in the request, or a call turn with more or fewer results."""
    messages = [m for m in request.messages if isinstance(m, dict)]
    call_ids = {call.id for call in request.tool_calls}
    for position, message in enumerate(messages):
        role = message.get("role")
        unpaired = role == "tool" and message.get("tool_call_id") not in call_ids
        if role == "assistant" and message.get("tool_calls"):
            after = messages[position + 1 :]
            answers = next((i for i, m in enumerate(after) if m.get("role") != "tool"), len(after))
            unpaired = answers != len(message["tool_calls"])
        if unpaired:
            return Fail(400, error_body(400, "INVALID_ARGUMENT", UNPAIRED_RESULTS))
    return None


Behaviour = Reply | Fail | Reset | Recorded


# --- the server -------------------------------------------------------------------------------


class FakeGemini:
    """Gemini's OpenAI-compatible endpoint, faked on 127.0.0.1 with scripted behaviours."""

    def __init__(self, api_key: str = DEFAULT_KEY, models: Iterable[str] = KNOWN_MODELS) -> None:
        self.api_key = api_key
        self.models = frozenset(models)
        self.requests: list[RecordedRequest] = []
        # GET /models: each listing asked for, and the behaviour that replaces the list (a Fail
        # or a Reset; a Reply delays it by its first_delay) until reset.
        self.model_listings: list[RecordedRequest] = []
        self.model_list_fault: Behaviour | None = None
        self._script: deque[Behaviour] = deque()
        # Scripts for the requests of one chat only, by its first user message (script_for).
        self._chat_scripts: dict[str, deque[Behaviour]] = {}
        # The thought signature of each tool call answered with one: (name, argument text).
        self.signatures: dict[tuple[str, str], str] = {}
        # The IDs of "bench-fault ... once ID" messages already answered with their fault.
        self.faulted: set[str] = set()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1beta/openai/"

    def start(self) -> FakeGemini:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake Gemini server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{prefix:.*}chat/completions", self._handle)
        app.router.add_get("/{prefix:.*}models", self._list_models)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    # -- scripting and inspection (thread-safe)

    def script(self, *behaviours: Behaviour) -> None:
        with self._changed:
            self._script.extend(behaviours)

    def script_for(self, first_message: str, *behaviours: Behaviour) -> None:
        """Script the requests of the chat whose first user message is ``first_message``: a
        request of another chat (one of an earlier test, still winding down) never takes them."""
        with self._changed:
            self._chat_scripts.setdefault(first_message, deque()).extend(behaviours)

    def _next_behaviour(self, request: RecordedRequest) -> Behaviour | None:
        first = next((text for role, text in request.conversation if role == "user"), None)
        chat = self._chat_scripts.get(first) if first is not None else None
        if chat:
            return chat.popleft()
        return self._script.popleft() if self._script else None

    def reset(self) -> None:
        with self._changed:
            self._script.clear()
            self._chat_scripts.clear()
            self.requests.clear()
            self.model_listings.clear()
            self.model_list_fault = None
            self.signatures.clear()
            self.faulted.clear()

    @property
    def pending(self) -> int:
        with self._changed:
            return len(self._script)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(
                    f"expected {count} request(s) to the fake Gemini, got {len(self.requests)}"
                )
            return list(self.requests)

    async def arrived(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """``wait_for_requests`` for async tests: waits without blocking their event loop."""
        return await asyncio.to_thread(self.wait_for_requests, count, timeout)

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    # -- the endpoint

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_unparsable": raw.decode("utf-8", "replace")}
        recorded = RecordedRequest(
            body=body,
            headers=dict(request.headers),
            path=request.path,
            peer=request.transport.get_extra_info("peername") if request.transport else None,
        )
        with self._changed:
            self.requests.append(recorded)
            behaviour = self._next_behaviour(recorded)
            self._changed.notify_all()
        try:
            return await self._respond(request, recorded, behaviour)
        except ClientGone:
            recorded.disconnected.set()
            return web.Response(status=499)
        finally:
            recorded.finished.set()

    def wait_for_model_listings(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.model_listings) >= count, timeout):
                raise AssertionError(
                    f"expected {count} model listing(s), got {len(self.model_listings)}"
                )
            return list(self.model_listings)

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        """Gemini's model list on the compatible endpoint: an OpenAI list object whose ids
        carry the ``models/`` prefix, non-chat models included."""
        recorded = RecordedRequest(body={}, headers=dict(request.headers), path=request.path)
        with self._changed:
            self.model_listings.append(recorded)
            fault = self.model_list_fault
            self._changed.notify_all()
        try:
            if request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
                fault = invalid_key()
            if isinstance(fault, Reply):
                await self._pause(request, fault.first_delay)
            elif isinstance(fault, Reset):
                _reset(request)
                raise ClientGone
            elif isinstance(fault, Fail):
                return web.json_response(fault.body, status=fault.status)
            names = [*sorted(self.models), *OTHER_LISTED_MODELS]
            return web.json_response(
                {
                    "object": "list",
                    "data": [
                        {"id": f"models/{name}", "object": "model", "owned_by": "google"}
                        for name in names
                    ],
                }
            )
        except ClientGone:
            recorded.disconnected.set()
            return web.Response(status=499)
        finally:
            recorded.finished.set()

    async def _respond(
        self, request: web.Request, recorded: RecordedRequest, behaviour: Behaviour | None
    ) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            behaviour = invalid_key()
        elif unknown := sorted(set(recorded.body) - ACCEPTED_FIELDS):
            behaviour = unknown_field(unknown[0])
        elif recorded.body.get("model") not in self.models:
            behaviour = unknown_model(str(recorded.body.get("model")))
        elif refusal := thinking_refusal(recorded.body):
            behaviour = refusal
        elif problem := next(filter(None, map(content_part_problem, _parts(recorded))), None):
            behaviour = Fail(400, error_body(400, "INVALID_ARGUMENT", problem))
        elif refusal := (
            schema_refusal(recorded.body)
            or pairing_refusal(recorded)
            or signature_refusal(recorded, self.signatures)
        ):
            behaviour = refusal
        behaviour = (
            behaviour
            or bench_reply(recorded)
            or bench_fault_reply(recorded, self.faulted)
            or bench_tool_reply(recorded)
            or Reply()
        )

        if isinstance(behaviour, Reset):
            _reset(request)
            raise ClientGone
        if isinstance(behaviour, Fail):
            return web.json_response(
                behaviour.body, status=behaviour.status, headers=_request_id_header()
            )
        if isinstance(behaviour, Recorded):
            return await self._replay(request, behaviour)
        for call in behaviour.calls:
            if call.signature is not None:
                self.signatures[(call.name, call.argument_text)] = call.signature
        return await self._stream(request, recorded, behaviour)

    async def _replay(self, request: web.Request, recorded: Recorded) -> web.StreamResponse:
        response = web.StreamResponse(
            status=recorded.status,
            headers={"Content-Type": recorded.content_type, **_request_id_header()},
        )
        if recorded.chunking != "events":
            response.content_length = len(recorded.body)
        await response.prepare(request)
        for piece in recorded.pieces():
            await self._write_bytes(request, response, piece)
        await response.write_eof()
        return response

    async def _stream(
        self, request: web.Request, recorded: RecordedRequest, reply: Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", **_request_id_header()}
        )
        await response.prepare(request)
        model = recorded.body.get("model", "")
        prompt_tokens = reply.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = sum(len(text.split()) for _, text in recorded.conversation)
        pieces = reply.pieces(recorded)
        # Paced against absolute times, so timer overshoot never accumulates: a stream of N
        # pieces takes first_delay + (N - 1) * delay, however busy this server is.
        start = time.monotonic() + reply.first_delay
        chunk_id = f"gemini-{uuid.uuid4().hex[:12]}"
        usage = {
            "thinking": reply.thinking_tokens,
            "usage": reply.usage,
            "reasoning_details": reply.reasoning_details,
        }
        thoughts = thought_deltas(reply, recorded)
        for index, delta in enumerate(thoughts):
            await self._pause(request, start + index * reply.delay - time.monotonic())
            chunk = _chunk(chunk_id, model, "", None, prompt_tokens, 0, **usage, delta=delta)
            await self._write(request, response, f"data: {json.dumps(chunk)}\n\n")
        start += len(thoughts) * reply.delay
        if reply.raw is not None:
            for index, delta in enumerate(reply.raw):
                last = index == len(reply.raw) - 1
                finish = reply.finish_reason if last else None
                chunk = _chunk(chunk_id, model, "", finish, prompt_tokens, 1, **usage, delta=delta)
                await self._write(request, response, f"data: {json.dumps(chunk)}\n\n")
            pieces = []
        elif thoughts and reply.thought_shape == "inline":
            # The summary ends with "</thought>" at the start of the first answer text.
            pieces = ["</thought>" + pieces[0], *pieces[1:]] if pieces else ["</thought>"]
        for index, piece in enumerate(pieces):
            await self._pause(request, start + index * reply.delay - time.monotonic())
            last = index == len(pieces) - 1
            finish = reply.finish_reason if last and reply.ending == "finish" else None
            sent = index + 1
            if reply.completion_tokens is not None:
                sent = reply.completion_tokens if last else min(sent, reply.completion_tokens)
            chunk = _chunk(chunk_id, model, piece, finish, prompt_tokens, sent, **usage)
            await self._write(request, response, f"data: {json.dumps(chunk)}\n\n")

        if reply.ending == "drop":
            _reset(request)
            raise ClientGone
        if reply.ending == "stall":
            await self._pause(request, 3600)
        if reply.ending == "malformed":
            await self._write(request, response, 'data: {"choices": [{"delta": {"content": "x"\n\n')
        if reply.ending == "error":
            error = error_body(
                503, "UNAVAILABLE", "The model is overloaded. Please try again later."
            )
            await self._write(request, response, f"data: {json.dumps(error[0])}\n\n")
        if reply.ending == "finish" and not pieces and reply.raw is None:
            chunk = _chunk(chunk_id, model, "", reply.finish_reason, prompt_tokens, 0, **usage)
            await self._write(request, response, f"data: {json.dumps(chunk)}\n\n")
        await self._write(request, response, "data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _write(self, request: web.Request, response: web.StreamResponse, data: str) -> None:
        await self._write_bytes(request, response, data.encode())

    async def _write_bytes(
        self, request: web.Request, response: web.StreamResponse, data: bytes
    ) -> None:
        if request.transport is None or request.transport.is_closing():
            raise ClientGone
        try:
            await response.write(data)
        except (ConnectionResetError, ConnectionError) as error:
            raise ClientGone from error

    async def _pause(self, request: web.Request, seconds: float) -> None:
        """Sleep, noticing within a quarter second when the app hangs up."""
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        while True:
            if request.transport is None or request.transport.is_closing():
                raise ClientGone
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.25))


def _chunk(
    chunk_id: str,
    model: str,
    text: str,
    finish: str | None,
    prompt_tokens: int,
    sent: int,
    thinking: int = 0,
    usage: bool = True,
    reasoning_details: bool = False,
    delta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One chunk as Gemini sends it (lite_stream, g38_chunk, empty_stop): a non-final chunk has
    no ``finish_reason`` key, an empty answer is a role-only delta; ``delta`` replaces the
    text's delta (a thought)."""
    if delta is None:
        delta = {"content": text, "role": "assistant"} if text else {"role": "assistant"}
    choice: dict[str, Any] = {"delta": delta, "index": 0}
    if finish is not None:
        choice["finish_reason"] = finish
    chunk: dict[str, Any] = {
        "choices": [choice],
        "created": int(time.time()),
        "id": chunk_id,
        "model": model,
        "object": "chat.completion.chunk",
    }
    if usage:
        # Cumulative on every chunk, asked or not; thinking tokens count in the total only.
        chunk["usage"] = {
            "completion_tokens": sent,
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + sent + thinking,
        }
        if reasoning_details:
            chunk["usage"]["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return chunk


def _parts(request: RecordedRequest) -> list[Any]:
    return [
        part
        for message in request.messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    ]


def _request_id_header() -> dict[str, str]:
    return {"x-request-id": f"req-{uuid.uuid4().hex[:16]}"}


def _reset(request: web.Request) -> None:
    """Abort with RST (SO_LINGER 0) so the client sees a reset, not a clean close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


if __name__ == "__main__":
    # Standalone, for the benchmark: prints the base URL, serves until killed.
    server = FakeGemini().start()
    print(server.base_url, flush=True)
    threading.Event().wait()
