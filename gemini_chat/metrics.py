"""What an operator scrapes from ``/metrics``: the Prometheus metrics of this instance, and the
one-line functions the chat, the stream and the data layer call to count.

The metrics live in a registry of their own (not prometheus-client's global one), so the page
shows exactly these and nothing a library registers. Every instance counts for itself:
Prometheus scrapes each one and adds them up.

    gemini_chat_messages_total{outcome}        answered | stopped | failed | refused
    gemini_chat_first_token_seconds            request to Gemini -> first text of the answer
    gemini_chat_answer_seconds                 request to Gemini -> answer complete
    gemini_chat_tokens_total{kind}             input | output | thinking, as Gemini reported
    gemini_chat_upstream_errors_total{kind}    each failed request to Gemini, by its error class
    gemini_chat_retries_total                  requests to Gemini sent again after a failure
    gemini_chat_streams_in_flight              answers streaming now
    gemini_chat_sessions                       chat sockets connected now
    gemini_chat_database_seconds{statement}    each SQL statement of the chat database
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .errors import ChatError, UpstreamError
from .usage import TokenUsage

T = TypeVar("T")

registry = CollectorRegistry(auto_describe=True)

OUTCOMES = ("answered", "stopped", "failed", "refused")
TOKEN_KINDS = ("input", "output", "thinking")
# The statements the data layer runs, by their first word; anything else counts as "other".
STATEMENTS = ("select", "insert", "update", "delete", "with")

messages = Counter(
    "gemini_chat_messages",
    "Messages (and answers asked again) by how they ended.",
    ["outcome"],
    registry=registry,
)
first_token_seconds = Histogram(
    "gemini_chat_first_token_seconds",
    "Seconds from the request to Gemini to the first text of its answer.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60),
    registry=registry,
)
answer_seconds = Histogram(
    "gemini_chat_answer_seconds",
    "Seconds from the request to Gemini to the complete answer.",
    buckets=(0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300),
    registry=registry,
)
tokens = Counter(
    "gemini_chat_tokens",
    "Tokens Gemini reported: input (the question with the chat's history), output, thinking.",
    ["kind"],
    registry=registry,
)
upstream_errors = Counter(
    "gemini_chat_upstream_errors",
    "Failed requests to Gemini, retried or not, by the kind of failure.",
    ["kind"],
    registry=registry,
)
retries = Counter(
    "gemini_chat_retries",
    "Requests to Gemini sent again after a failure.",
    registry=registry,
)
streams_in_flight = Gauge(
    "gemini_chat_streams_in_flight",
    "Answers streaming from Gemini now.",
    registry=registry,
)
sessions = Gauge(
    "gemini_chat_sessions",
    "Chat sockets (browser tabs) connected now.",
    registry=registry,
)
database_seconds = Histogram(
    "gemini_chat_database_seconds",
    "Seconds each SQL statement of the chat database took.",
    ["statement"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=registry,
)

# Every label value known from the start, so a scrape shows 0 rather than nothing.
for _outcome in OUTCOMES:
    messages.labels(_outcome)
for _kind in TOKEN_KINDS:
    tokens.labels(_kind)


def exposition() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def count_sessions(connected: Callable[[], int]) -> None:
    """Read the number of connected chat sockets from ``connected`` at each scrape."""
    sessions.set_function(connected)


# --- the chat (gemini_chat/chat.py) ------------------------------------------------------------


def message_refused() -> None:
    messages.labels("refused").inc()


def message_stopped() -> None:
    messages.labels("stopped").inc()


def message_answered(started: float) -> None:
    """An answer arrived whole; ``started`` is ``stream_started()``'s value."""
    messages.labels("answered").inc()
    answer_seconds.observe(time.perf_counter() - started)


def message_failed(error: ChatError) -> None:
    """An answer failed; a failure from Gemini counts as an upstream error of its kind."""
    messages.labels("failed").inc()
    if isinstance(error, UpstreamError):
        upstream_errors.labels(type(error).__name__).inc()


def count_tokens(usage: TokenUsage | None) -> None:
    if usage is not None:
        tokens.labels("input").inc(usage.prompt)
        tokens.labels("output").inc(usage.output)
        tokens.labels("thinking").inc(usage.thinking)


# --- the stream (gemini_chat/streaming.py, gemini_chat/llm.py) ---------------------------------


def stream_started() -> float:
    """An answer began streaming; returns the time to pass to ``first_token`` and
    ``message_answered``."""
    streams_in_flight.inc()
    return time.perf_counter()


def stream_ended() -> None:
    streams_in_flight.dec()


def first_token(started: float) -> None:
    first_token_seconds.observe(time.perf_counter() - started)


def retrying(error: ChatError) -> None:
    """A failed request to Gemini is sent again: one upstream error, one retry."""
    upstream_errors.labels(type(error).__name__).inc()
    retries.inc()


# --- the data layer (gemini_chat/storage.py) ---------------------------------------------------


def statement_kind(query: str) -> str:
    word = query.lstrip().split(None, 1)[0].lower() if query.strip() else ""
    return word if word in STATEMENTS else "other"


def timed_statement(
    execute: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Decorate the data layer's ``execute_sql(query, parameters)`` to time each statement."""

    @functools.wraps(execute)
    async def timed(self: Any, query: str, *args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        try:
            return await execute(self, query, *args, **kwargs)
        finally:
            database_seconds.labels(statement_kind(query)).observe(time.perf_counter() - started)

    return timed
