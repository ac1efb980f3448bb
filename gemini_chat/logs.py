"""Logging that can never print the API key, and, with ``LOG_FORMAT=json``, one JSON object a line.

A JSON line carries the time, level, logger and message, the chat it happened in (Chainlit's
thread id), the request it belongs to and the instance that wrote it, so an operator can follow
one chat or one request across instances:

    {"time": "2026-12-01T18:40:00.123Z", "level": "INFO", "logger": "gemini_chat",
     "message": "Resumed a chat with 2 earlier turn(s)", "chat_id": "1c9e...",
     "request_id": "5f0c...", "instance": "web-1:8000"}

The request id is the proxy's ``X-Request-ID`` when it is a plain token, else one made here; an
HTTP request keeps it for its whole life (and gets it back in its response), each event of a
chat socket gets its own. The app logs no message text; the secret filter applies to every line.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REDACTED = "[redacted]"


class SecretFilter(logging.Filter):
    """Replaces every occurrence of the given secrets in a record's final text."""

    def __init__(self, *secrets: str) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        text = record.getMessage()
        if any(secret in text for secret in self.secrets):
            for secret in self.secrets:
                text = text.replace(secret, REDACTED)
            record.msg, record.args = text, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and any(secret in record.exc_text for secret in self.secrets):
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, REDACTED)
        return True


def install_secret_filter(*secrets: str) -> None:
    """Attach the filter to every handler of the root logger (and future ones via the root)."""
    secret_filter = SecretFilter(*secrets)
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(secret_filter)


class DropMessages(logging.Filter):
    """Drops records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_library_logs() -> None:
    """Keep the server log to what an operator acts on.

    - openai's HTTP client (httpx2) logs every request to Gemini at INFO under its own name;
      failures are logged by the app with their detail.
    - Under `chainlit run -w`, watchfiles logs "1 change detected" at every database write (the
      default database sits in the watched folder; Chainlit reloads only for code and config).
    - Chainlit warns on every page load that there is no chainlit_<language>.md; falling back to
      chainlit.md is what this app intends.
    - The MCP client logs each HTTP server's session id (a credential for that session) and its
      reconnections at INFO, and its HTTP client (httpx) every request with its URL; the app logs
      what happens to each server itself (mcp.py).
    """
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("mcp.client").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    chainlit_logger = logging.getLogger("chainlit")
    if not any(isinstance(f, DropMessages) for f in chainlit_logger.filters):
        chainlit_logger.addFilter(DropMessages("Translated markdown file for "))


# --- JSON lines ---------------------------------------------------------------------------------

REQUEST_ID_HEADER = b"x-request-id"
# What a proxy's request id may look like to be kept: nginx's $request_id (32 hex digits), a
# UUID, or any short token of that kind; anything else is replaced, so a client cannot write
# into the log through it.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# The request (HTTP request or chat-socket event) being handled in this task.
request_id: ContextVar[str | None] = ContextVar("gemini_request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def sane_request_id(value: str | None) -> str:
    """The proxy's id if it is a plain token, else a new one."""
    if value and SANE_REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


def current_chat_id() -> str | None:
    """The id of the chat (Chainlit's thread) being handled, when in a chat's context."""
    from chainlit.context import context_var
    from chainlit.session import WebsocketSession

    try:
        context = context_var.get()
    except LookupError:
        return None
    session = getattr(context, "session", None)
    # An HTTP request's session carries a made-up thread id: only a chat socket's is a chat.
    if not isinstance(session, WebsocketSession):
        return None
    return getattr(session, "thread_id", None)


def instance_name(port: int | None) -> str:
    """This instance among others: host name and port (process id when no port is known)."""
    return f"{socket.gethostname()}:{port if port else os.getpid()}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks included, as ``exception``)."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "chat_id": current_chat_id(),
            "request_id": request_id.get(),
            "instance": self.instance,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def install_json_logs(instance: str) -> None:
    """Write every log line as JSON: the app's, Chainlit's, uvicorn's and Python's warnings.

    They all reach the root logger's handlers (Chainlit's, on stdout), which get the formatter.
    uvicorn configures its own loggers, with handlers of their own that bypass the root, only
    when `chainlit run` builds its server, after the app is loaded: its default configuration is
    changed in place so that its loggers hand their records to the root's handlers too (a
    contract tested in tests/test_framework_contracts.py)."""
    from uvicorn.config import LOGGING_CONFIG

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter(instance))
    for name in ("uvicorn", "uvicorn.access"):
        LOGGING_CONFIG["loggers"][name] = {
            **LOGGING_CONFIG["loggers"].get(name, {}),
            "handlers": [],
            "propagate": True,
        }
    logging.captureWarnings(True)


# --- request ids -------------------------------------------------------------------------------


class RequestIds:
    """ASGI middleware: each HTTP request and chat socket runs with its request id, which an
    HTTP response carries back in ``X-Request-ID``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = next(
            (v.decode("latin-1") for n, v in scope["headers"] if n.lower() == REQUEST_ID_HEADER),
            None,
        )
        value = sane_request_id(given)
        token = request_id.set(value)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, value.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
        finally:
            request_id.reset(token)


def _with_request_id(event: str, handler: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def handle(*args: Any) -> Any:
        # The connection itself keeps the id of the request that opened it (the proxy's).
        value = request_id.get() if event == "connect" else None
        token = request_id.set(value or new_request_id())
        try:
            result = handler(*args)
            return await result if inspect.isawaitable(result) else result
        finally:
            request_id.reset(token)

    handle.request_id = True  # type: ignore[attr-defined]
    # Already behind the login gate (auth.py), which must not wrap it again on a reload.
    handle.login_gate = getattr(handler, "login_gate", False)  # type: ignore[attr-defined]
    handle.__wrapped__ = handler  # type: ignore[attr-defined]
    return handle


def install_request_ids(app: Any, sio: Any) -> None:
    """Give every HTTP request and every chat-socket event its request id; safe to call again
    on a reload. Added after the edge, so it is outside it: the edge's own lines carry the id."""
    for event, handler in list(sio.handlers.get("/", {}).items()):
        if not getattr(handler, "request_id", False):
            sio.on(event, _with_request_id(event, handler))
    if getattr(app.state, "request_ids", False):
        return
    try:
        app.add_middleware(RequestIds)
        app.state.request_ids = True
    except RuntimeError:
        logging.getLogger("gemini_chat").debug("Server already started; request ids were added")
