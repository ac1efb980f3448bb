"""Errors a user can see, and the one function that maps provider failures onto them.

Every ``ChatError``'s message is safe to show in the chat: plain words saying what happened and
what to do, never the provider's raw text and never the key. The detail (HTTP status, Gemini's
reason, quota id, request id) goes to the log through ``log_detail``.

    ChatError
    ├── InputError
    │   ├── EmptyMessage
    │   └── MessageTooLong
    ├── MissingApiKey
    └── UpstreamError
        ├── RateLimited          per-minute quota; carries Gemini's retryDelay
        ├── DailyQuotaExhausted  per-day quota: retrying cannot help
        ├── InvalidApiKey
        ├── ModelNotFound
        ├── RequestRejected      any other 4xx
        ├── UpstreamServerError  500
        ├── Overloaded           503
        ├── ConnectionFailed     refused or reset before the answer began
        ├── StreamInterrupted    the connection dropped mid-answer
        ├── StreamStalled        no bytes for the stall timeout
        ├── MalformedResponse    a chunk that is not valid JSON
        ├── ContentBlocked       finish_reason content_filter
        ├── AnswerTruncated      finish_reason length
        ├── EmptyAnswer          a finished answer with no text
        └── UnexpectedFailure    anything else
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import openai
from agents.exceptions import ModelBehaviorError, ModelRefusalError

KEY_HELP = (
    "Create a key at https://aistudio.google.com/apikey, put it in the .env file as "
    "GEMINI_API_KEY=..., then restart the app."
)


class ChatError(Exception):
    """Base error; ``str(error)`` is what the chat shows."""

    retryable = False
    retry_after: float | None = None

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.detail = detail

    @property
    def message(self) -> str:
        return str(self)


class InputError(ChatError):
    """The user's message cannot be sent as it is."""


class EmptyMessage(InputError):
    def __init__(self) -> None:
        super().__init__("Your message is empty. Type a question or some text, then press Enter.")


class MessageTooLong(InputError):
    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            f"Your message is {length:,} characters long; the limit is {limit:,}. "
            "Shorten it or split it into several messages. Nothing was sent to Gemini.",
            length=length,
            limit=limit,
        )


class MissingApiKey(ChatError):
    def __init__(self) -> None:
        super().__init__(f"The Gemini API key is missing, so I can't answer yet. {KEY_HELP}")


class UpstreamError(ChatError):
    """Gemini (or the way to it) failed."""


class RateLimited(UpstreamError):
    retryable = True

    def __init__(self, retry_after: float | None, **detail: Any) -> None:
        wait = f"about {round(retry_after)} seconds" if retry_after else "a minute"
        super().__init__(
            f"Gemini's per-minute request limit for this API key is used up. "
            f"Wait {wait}, then send your message again.",
            **detail,
        )
        self.retry_after = retry_after


class DailyQuotaExhausted(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "This API key has used up its daily Gemini quota, and waiting a few minutes won't "
            "help. The quota resets at midnight Pacific time; until then, use another key or "
            "enable billing for it in Google AI Studio.",
            **detail,
        )


class InvalidApiKey(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(f"Gemini rejected the API key as invalid. {KEY_HELP}", **detail)


class ModelNotFound(UpstreamError):
    def __init__(self, model: str, **detail: Any) -> None:
        super().__init__(
            f'Gemini does not offer the model "{model}" (it may have been retired). '
            "Set GEMINI_MODEL to a current model, such as gemini-3.8-flash, and restart the app.",
            **detail,
        )


class RequestRejected(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "Gemini refused this request. Try rephrasing your message; if it keeps happening, "
            "the details are in the server log.",
            **detail,
        )


class UpstreamServerError(UpstreamError):
    retryable = True

    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "Gemini had an internal error while answering. Send your message again in a moment.",
            **detail,
        )


class Overloaded(UpstreamError):
    retryable = True

    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "Gemini is overloaded right now. Wait a minute, then send your message again.",
            **detail,
        )


class ConnectionFailed(UpstreamError):
    retryable = True

    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "I couldn't reach Gemini: the connection failed. Check the network connection, then "
            "send your message again.",
            **detail,
        )


class StreamInterrupted(UpstreamError):
    # The SDK still refuses to replay once text has streamed; before that a retry is safe.
    retryable = True

    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "The connection to Gemini dropped before the answer was complete. Send your message "
            "again for a full answer.",
            **detail,
        )


class StreamStalled(UpstreamError):
    def __init__(self, seconds: float | None = None, **detail: Any) -> None:
        waited = f"for {seconds:g} seconds " if seconds else ""
        super().__init__(
            f"Gemini stopped sending {waited}so I gave up on this answer. Send your message again.",
            **detail,
        )


class MalformedResponse(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "Gemini sent a reply I couldn't read. Send your message again; if it keeps "
            "happening, check GEMINI_BASE_URL.",
            **detail,
        )


class ContentBlocked(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "Gemini's safety filter stopped this answer. Try rephrasing your message.", **detail
        )


class AnswerTruncated(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "The answer reached Gemini's length limit and was cut off. Ask it to continue.",
            **detail,
        )


class EmptyAnswer(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "Gemini returned an empty answer. Send your message again, or rephrase it.", **detail
        )


class UnexpectedFailure(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "Something went wrong while getting the answer. Send your message again; the "
            "details are in the server log.",
            **detail,
        )


# --- mapping ----------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def gemini_error(body: Any) -> dict[str, Any]:
    """The error object inside Gemini's body, which is a list (openai only unwraps dicts)."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    return body if isinstance(body, dict) else {}


def _details(error: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [
        d
        for d in error.get("details") or []
        if isinstance(d, dict) and str(d.get("@type", "")).endswith(kind)
    ]


def _retry_delay(error: dict[str, Any]) -> float | None:
    for info in _details(error, "RetryInfo"):
        match = _DURATION.match(str(info.get("retryDelay", "")))
        if match:
            return float(match.group(1))
    return None


def _quota_ids(error: dict[str, Any]) -> list[str]:
    return [
        str(v.get("quotaId", ""))
        for failure in _details(error, "QuotaFailure")
        for v in failure.get("violations") or []
        if isinstance(v, dict)
    ]


def _reason(error: dict[str, Any]) -> str | None:
    for info in _details(error, "ErrorInfo"):
        if info.get("reason"):
            return str(info["reason"])
    return error.get("status")


def _from_status(status: int | None, error: dict[str, Any], detail: dict[str, Any], model: str):
    reason = _reason(error)
    if status == 429 or error.get("status") == "RESOURCE_EXHAUSTED":
        if any("PerDay" in quota for quota in _quota_ids(error)):
            return DailyQuotaExhausted(**detail)
        return RateLimited(_retry_delay(error), **detail)
    if reason == "API_KEY_INVALID" or status in (401, 403):
        return InvalidApiKey(**detail)
    if status == 404:
        return ModelNotFound(model, **detail)
    if status == 503:
        return Overloaded(**detail)
    if status is not None and status >= 500:
        return UpstreamServerError(**detail)
    if status is not None and 400 <= status < 500:
        return RequestRejected(**detail)
    return None


def _dropped_connection(error: BaseException) -> bool:
    """True when a "timeout" is really a refused or dropped connection.

    openai's aiohttp transport maps every aiohttp connection error (a reset, a server that hung
    up) to httpx's ConnectTimeout; the original exception is still in the chain.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, aiohttp.ClientConnectionError) and not isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def classify(
    error: BaseException,
    *,
    model: str = "",
    text_so_far: str = "",
    stall_seconds: float | None = None,
) -> ChatError:
    """Map any failure of a model call onto the ChatError a user should see."""
    if isinstance(error, ChatError):
        return error
    cause = error.__cause__ or error.__context__
    if isinstance(error, openai.APIStatusError):
        body = gemini_error(error.body)
        detail = {
            "status": error.status_code,
            "reason": _reason(body),
            "quota": ",".join(_quota_ids(body)) or None,
            "request_id": error.request_id,
            "provider_message": body.get("message"),
        }
        return _from_status(error.status_code, body, detail, model) or UnexpectedFailure(**detail)
    if isinstance(error, openai.APITimeoutError) and not _dropped_connection(error):
        return StreamStalled(stall_seconds, kind="read timeout", cause=type(cause).__name__)
    if isinstance(error, openai.APIConnectionError):
        detail = {"kind": "connection", "cause": type(cause).__name__}
        return StreamInterrupted(**detail) if text_so_far else ConnectionFailed(**detail)
    if isinstance(error, openai.APIError):
        # An error object sent inside an open stream: no HTTP status, the code is in the body.
        body = gemini_error(error.body)
        code = body.get("code") if isinstance(body.get("code"), int) else None
        detail = {
            "status": code,
            "reason": _reason(body),
            "in_stream": True,
            "provider_message": body.get("message"),
        }
        return _from_status(code, body, detail, model) or UnexpectedFailure(**detail)
    if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
        return MalformedResponse(kind=type(error).__name__)
    if isinstance(error, ModelRefusalError):
        return ContentBlocked(kind="refusal")
    if isinstance(error, ModelBehaviorError) and "finish_reason='length'" in str(error):
        return AnswerTruncated()
    if isinstance(error, ModelBehaviorError):
        return MalformedResponse(kind=type(error).__name__)
    return UnexpectedFailure(kind=type(error).__name__)


def log_detail(error: ChatError) -> str:
    """One line for the log: the error class and its provider detail, keys stripped of None."""
    shown = " ".join(f"{k}={v!r}" for k, v in error.detail.items() if v is not None)
    return f"{type(error).__name__} {shown}".strip()
