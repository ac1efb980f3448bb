"""Errors a user can see, and the one function that maps provider failures onto them.

Every ``ChatError``'s message is safe to show in the chat: plain words saying what happened and
what to do, never the provider's raw text and never the key. The detail (HTTP status, Gemini's
reason, quota id, request id) goes to the log through ``log_detail``.

    ChatError
    ├── InputError
    │   ├── EmptyMessage
    │   └── MessageTooLong
    ├── MissingApiKey
    ├── ToolRoundsExceeded       the model kept calling tools past MAX_TOOL_ROUNDS
    └── UpstreamError
        ├── RateLimited          per-minute request quota, or a 429 naming none; has retryDelay
        ├── TokenRateLimited     per-minute input-token quota: the chat's size
        ├── DailyQuotaExhausted  per-day quota: retrying cannot help
        ├── NoQuotaForModel      "limit: 0": no quota for this model on this key, ever
        ├── InvalidApiKey
        ├── LocationNotSupported the server's region is not served: nothing the user can do
        ├── ModelNotFound        404 for the configured model
        ├── RequestRejected      any other 4xx
        ├── UpstreamServerError  500
        ├── Overloaded           503 ("overloaded", "high demand")
        ├── ConnectionFailed     refused or reset before the answer began
        ├── StreamInterrupted    the connection dropped mid-answer
        ├── StreamStalled        no bytes for the stall timeout
        ├── MalformedResponse    a chunk that is not valid JSON
        ├── ContentBlocked       finish_reason content_filter
        ├── AnswerTruncated      finish_reason length
        ├── EmptyAnswer          a finished answer with no text
        └── UnexpectedFailure    anything else

One 429 can list several quota violations (real traffic: PerDay, PerMinute and
InputTokensPerMinute at once). The one that decides is the one that clears last, whatever their
order in the body: "limit: 0" (never), then a per-day quota (midnight), then the per-minute
input-token quota (may never, for a long chat), then the per-minute request quota.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import openai
from agents.exceptions import ModelBehaviorError, ModelRefusalError

from .config import DEFAULT_MODEL
from .history import estimate_tokens

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


class ToolRoundsExceeded(ChatError):
    def __init__(self, rounds: int) -> None:
        super().__init__(
            f"The answer was stopped after {rounds} rounds of tool calls, the most one message "
            "may use. Ask again, perhaps for less at once.",
            rounds=rounds,
        )


class UpstreamError(ChatError):
    """Gemini (or the way to it) failed."""


def _wait(seconds: float | None) -> str:
    if not seconds:
        return "a minute"
    return f"about {round(seconds)} seconds" if seconds >= 2 else "a moment"


class RateLimited(UpstreamError):
    retryable = True

    def __init__(self, retry_after: float | None, per_minute: bool = True, **detail: Any) -> None:
        if per_minute:
            said = "Gemini's per-minute request limit for this API key is used up."
            more = ""
        else:  # a 429 that names no quota (real ones come with no details at all)
            said = "Gemini says this API key has reached a usage limit for now."
            more = " If it keeps happening, the key's quota may be used up for today."
        super().__init__(
            f"{said} Wait {_wait(retry_after)}, then send your message again.{more}", **detail
        )
        self.retry_after = retry_after


class TokenRateLimited(UpstreamError):
    """Gemini's per-minute quota of input tokens, which the whole chat counts against.

    Every message sends the whole chat again, so resending the same long chat hits the quota
    again. A request that alone is over the limit can never pass: retrying it only spends the
    wait, so it is not retried, and the user is told to start a new chat. A request under the
    limit was refused for what was sent before it in the same minute, so a retry after Gemini's
    retryDelay can pass: it is retried (within the app's retry cap). When the request's size or
    the limit is unknown it is not retried: telling the user at once beats a wait that may be
    for nothing.
    """

    def __init__(
        self,
        retry_after: float | None,
        limit: int | None,
        request_tokens: int | None,
        **detail: Any,
    ) -> None:
        known = limit is not None and request_tokens is not None
        fits = known and request_tokens < limit  # type: ignore[operator]
        if known and not fits:
            text = (
                "This chat has grown too long for Gemini's per-minute limit on this API key: "
                "every message sends the whole chat again, so sending it again will fail the "
                "same way. Start a new chat to go on."
            )
        else:
            text = (
                "Too much text went to Gemini in the last minute for this API key's limit: "
                "every message sends the whole chat again, so a long chat fills it fast. "
                f"Wait {_wait(retry_after)} before sending again, or start a new chat to send less."
            )
        super().__init__(text, limit=limit, request_tokens=request_tokens, **detail)
        self.retry_after = retry_after
        self.retryable = fits


class DailyQuotaExhausted(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "This API key has used up its daily Gemini quota, and waiting a few minutes won't "
            "help. The quota resets at midnight Pacific time; until then, use another key or "
            "enable billing for it in Google AI Studio.",
            **detail,
        )


class NoQuotaForModel(UpstreamError):
    def __init__(self, model: str, **detail: Any) -> None:
        super().__init__(
            f'This API key has no Gemini quota for the model "{model}": its free tier does not '
            "include this model, so waiting won't help. Enable billing for the key in Google AI "
            "Studio, or set GEMINI_MODEL to another model and restart the app.",
            **detail,
        )


class InvalidApiKey(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(f"Gemini rejected the API key as invalid. {KEY_HELP}", **detail)


class LocationNotSupported(UpstreamError):
    def __init__(self, **detail: Any) -> None:
        super().__init__(
            "Gemini's API is not available in the region this app's server runs in, so it "
            "can't answer here, and sending again won't help. Whoever runs this app has to run "
            "it from a supported region: https://ai.google.dev/gemini-api/docs/available-regions",
            **detail,
        )


class ModelNotFound(UpstreamError):
    def __init__(self, model: str, **detail: Any) -> None:
        # Never suggest the model that just failed.
        such_as = f", such as {DEFAULT_MODEL}," if model != DEFAULT_MODEL else ""
        super().__init__(
            f'The model "{model}" set in GEMINI_MODEL is not available to this API key (it may '
            "be retired, misspelt, or not offered on this API version). Whoever runs this app "
            f"has to set GEMINI_MODEL to an available model{such_as} and restart the app.",
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
            "Gemini is overloaded right now (high demand on Google's side, usually brief). "
            "Wait a minute, then send your message again.",
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
# "Quota exceeded for metric: ..., limit: 0, model: ..." in the message of a 429.
_LIMIT_ZERO = re.compile(r"\blimit:\s*0(?![\d.])")
_MODEL_IN_MESSAGE = re.compile(r"\bmodels/([\w.\-]+)")


def gemini_error(body: Any) -> dict[str, Any]:
    """The error object inside Gemini's body: a one-element list from the compatible endpoint
    (openai only unwraps dicts), a bare ``{"error": ...}`` object from the native one (which
    openai has already unwrapped), or the error object itself."""
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


def _violations(error: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        v
        for failure in _details(error, "QuotaFailure")
        for v in failure.get("violations") or []
        if isinstance(v, dict)
    ]


def _quota_ids(error: dict[str, Any]) -> list[str]:
    return [str(v.get("quotaId", "")) for v in _violations(error)]


def _quota_value(violation: dict[str, Any]) -> int | None:
    try:
        return int(str(violation.get("quotaValue")))
    except ValueError:
        return None


def _request_tokens(error: BaseException | None) -> int | None:
    """The estimated size of the request that failed, from the bytes openai sent."""
    try:
        content = error.request.content  # type: ignore[attr-defined]
    except Exception:
        return None
    if not isinstance(content, bytes | bytearray) or not content:
        return None
    return estimate_tokens(bytes(content).decode("utf-8", "replace"))


def _model_name(model: str, error: dict[str, Any]) -> str:
    """The configured model; without one, the model Gemini's message names."""
    if model:
        return model
    match = _MODEL_IN_MESSAGE.search(str(error.get("message", "")))
    return match.group(1) if match else "(unknown)"


def _quota_exhausted(
    error: dict[str, Any], detail: dict[str, Any], model: str, failed: BaseException | None
) -> UpstreamError:
    """The quota that decides a 429: the one that clears last (see the module docstring)."""
    violations = _violations(error)
    ids = [str(v.get("quotaId", "")) for v in violations]
    retry_after = _retry_delay(error)
    if _LIMIT_ZERO.search(str(error.get("message", ""))) or any(
        _quota_value(v) == 0 for v in violations
    ):
        return NoQuotaForModel(_model_name(model, error), **detail)
    if any("PerDay" in quota for quota in ids):
        return DailyQuotaExhausted(**detail)
    token_quotas = [v for v in violations if "InputTokens" in str(v.get("quotaId", ""))]
    if token_quotas:
        limits = [value for v in token_quotas if (value := _quota_value(v)) is not None]
        limit = min(limits) if limits else None
        return TokenRateLimited(retry_after, limit, _request_tokens(failed), **detail)
    return RateLimited(retry_after, per_minute=any("PerMinute" in q for q in ids), **detail)


def _reason(error: dict[str, Any]) -> str | None:
    for info in _details(error, "ErrorInfo"):
        if info.get("reason"):
            return str(info["reason"])
    return error.get("status")


def _from_status(
    status: int | None,
    error: dict[str, Any],
    detail: dict[str, Any],
    model: str,
    failed: BaseException | None = None,
):
    reason = _reason(error)
    if status == 429 or error.get("status") == "RESOURCE_EXHAUSTED":
        return _quota_exhausted(error, detail, model, failed)
    if reason == "API_KEY_INVALID" or status in (401, 403):
        return InvalidApiKey(**detail)
    # "User location is not supported for the API use." (other preconditions, such as a free
    # tier not offered in a country, can be fixed by billing and stay RequestRejected).
    if (
        error.get("status") == "FAILED_PRECONDITION"
        and "location" in str(error.get("message", "")).lower()
    ):
        return LocationNotSupported(**detail)
    if status == 404:
        return ModelNotFound(_model_name(model, error), **detail)
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
        failure = _from_status(error.status_code, body, detail, model, error)
        return failure or UnexpectedFailure(**detail)
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
        failure = _from_status(code, body, detail, model, error)
        return failure or UnexpectedFailure(**detail)
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
