"""Stopping without loss: what SIGTERM does to an instance.

On the first SIGTERM the instance drains (``lifecycle.draining``):

- anything that would open a session here is answered 503 before any processing, so a load
  balancer (nginx's ``proxy_next_upstream ... http_503``) sends it to another instance: a page
  load, a socket.io handshake, any HTTP request not naming a session open here. What belongs to
  a session already open here still passes: its socket.io requests (an engine.io ``sid`` this
  process knows), its uploads (``session_id``) and its button clicks (``sessionId`` in the body),
  so an answer waiting for approval can still be answered. Health checks always pass;
- a message sent in a session open here gets DRAINING_NOTICE in the chat, and is neither sent to
  Gemini nor stored (Chainlit stores a message before its handler runs, so the socket event is
  answered before Chainlit sees it);
- the answers running go on to their end (their viewers in other tabs too) and are stored; then
  the server shuts down as uvicorn does on a signal, and the process exits with status 0. With
  nothing running, that is at once.

When DRAIN_SECONDS have passed with answers still running, they are cut: each is stored with
what was written so far, marked interrupted. A second SIGTERM, or a SIGINT, cuts them at once;
one more signal after that is uvicorn's own (a second Ctrl-C forces it out).

The handlers are installed when the app starts (Chainlit's ``on_app_startup``, inside uvicorn's
``Server.serve``): uvicorn's own handler for SIGTERM, ``Server.handle_exit``, is kept and called
to shut the server down once the drain is over (a contract in tests/test_framework_contracts.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from .health import OPERATIONS_PATHS
from .lifecycle import DRAINING_NOTICE, lifecycle

logger = logging.getLogger("gemini_chat")

DRAINING_REFUSAL = "This server is restarting: try again in a moment."
# Answered while draining as at any time: liveness, readiness (which says "draining") and
# metrics are what an operator watches a drain with (health.py), beside Chainlit's /health.
ALWAYS_SERVED = OPERATIONS_PATHS | {"/health"}
SOCKET_PATH = "/ws/socket.io"
# How long the cut answers get to store what they wrote before the server goes down anyway.
CUT_GRACE = 5.0
# How long the pages still connected get to be told to go (and their chats' state stored).
CLOSE_GRACE = 3.0
# Requests naming their session in a JSON body (Chainlit's frontend: callAction, element edits).
BODY_SESSION_ROUTES = frozenset({("POST", "/project/action"), ("PUT", "/project/element")})
# The list of chats in the sidebar, which an open page fetches again when an answer ends: it
# opens no session (a new page's own load is refused) and reads only the caller's chats.
OPEN_PAGE_READS = frozenset({("POST", "/project/threads")})


# -- the edge: what still passes while draining


def _open_session(session_id: Any) -> bool:
    from chainlit.session import WebsocketSession

    return isinstance(session_id, str) and WebsocketSession.get_by_id(session_id) is not None


def _open_socket(engineio_sid: str | None) -> bool:
    """Whether socket.io's transport (engine.io) has this connection open in this process."""
    from chainlit.server import sio

    return bool(engineio_sid) and engineio_sid in sio.eio.sockets


async def admitted_while_draining(
    scope: dict, receive: Callable[[], Awaitable[dict]], body_limit: int
) -> tuple[bool, Callable[[], Awaitable[dict]]]:
    """Whether a request belongs to a session open here (or is a health check), and the
    ``receive`` to hand on: a body read here to find its session is given back unread."""
    from chainlit.config import config

    path = scope.get("path", "").removeprefix(config.run.root_path or "")
    if path in ALWAYS_SERVED:
        return True, receive
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if path.startswith(SOCKET_PATH):
        # A handshake (no sid) opens a session; a known sid is an open page's connection.
        return _open_socket(query.get("sid", [None])[0]), receive
    if _open_session(query.get("session_id", [None])[0]):
        return True, receive  # an upload to an open chat, or one of its files
    if scope["type"] != "http":
        return False, receive
    if (scope["method"], path) in OPEN_PAGE_READS:
        return True, receive
    if (scope["method"], path) not in BODY_SESSION_ROUTES:
        return False, receive
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return False, receive  # the client went away
        size += len(message.get("body", b""))
        if size > body_limit:
            return False, receive
        if not message.get("more_body"):
            break
    try:
        body = json.loads(b"".join(m.get("body", b"") for m in messages))
    except ValueError:
        body = None
    admitted = isinstance(body, dict) and _open_session(body.get("sessionId"))

    async def replay() -> dict:
        return messages.pop(0) if messages else await receive()

    return admitted, replay


async def refuse_while_draining(scope: dict, receive, send) -> None:
    """503, with a body saying why; a websocket handshake gets it as its HTTP response where
    the server can send one (uvicorn's websocket.http.response extension), else is closed."""
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    body = DRAINING_REFUSAL.encode()
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1013, "reason": DRAINING_REFUSAL})
        return
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the chat: messages sent in an open session while draining


def _session_event_while_draining(handler, author: str):
    """Chainlit's socket handler for a message (sent or edited), answered with the notice
    instead while draining."""

    async def on_event(sid: str, payload: Any = None) -> None:
        from chainlit.session import WebsocketSession

        session = WebsocketSession.get(sid)
        if not lifecycle.draining:
            await handler(sid, payload)
            # Counted from its arrival: a drain starting while the message is being admitted
            # waits for its answer too.
            lifecycle.track(getattr(session, "current_task", None))
            return
        if session is not None:
            logger.info("Refused a message while draining: the page is told to reload")
            await show_draining_notice(session, author)

    on_event.draining_wrapper = True  # type: ignore[attr-defined]
    on_event.wrapped = handler  # type: ignore[attr-defined]
    return on_event


async def show_draining_notice(session, author: str) -> None:
    """DRAINING_NOTICE in the chat of ``session``, shown only: not stored with the chat, which
    goes on elsewhere."""
    import chainlit as cl
    from chainlit.context import init_ws_context

    init_ws_context(session)
    notice = cl.ErrorMessage(content=DRAINING_NOTICE, author=author)
    notice.metadata = {"kind": "notice"}
    notice.parent_id = None
    await cl.context.emitter.send_step(notice.to_dict())


def install_message_refusal(author: str) -> None:
    """Put the drain's check in front of Chainlit's handlers of sent and edited messages."""
    import chainlit.socket  # noqa: F401  (registers Chainlit's handlers on the socket)
    from chainlit.server import sio

    handlers = sio.handlers.setdefault("/", {})
    for event in ("client_message", "edit_message"):
        current = handlers.get(event)
        if current is None:
            logger.error("Chainlit's %s handler is missing: messages are not refused", event)
            continue
        original = getattr(current, "wrapped", current)  # a reload wraps Chainlit's again
        handlers[event] = _session_event_while_draining(original, author)


# -- the signals


class Drain:
    """The drain of this process, started by the first SIGTERM.

    ``settle`` waits for the writes asked for so far to be stored; ``close_connections`` ends
    the chat connections still open; ``exit_server`` shuts the server down (uvicorn's handler
    of a signal)."""

    def __init__(
        self,
        drain_timeout: float,
        settle: Callable[[], Awaitable[None]],
        exit_server: Callable[[int, Any], None],
        close_connections: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.drain_timeout = drain_timeout
        self.settle = settle
        self.exit_server = exit_server
        self.close_connections = close_connections
        self.task: asyncio.Task | None = None
        self.now = asyncio.Event()  # stop waiting for the answers: cut them

    def on_signal(self, signum: int) -> None:
        if self.task is None:
            lifecycle.draining = True
            if signum != signal.SIGTERM:
                self.now.set()
            self.task = asyncio.get_running_loop().create_task(self.run())
        elif not self.now.is_set():
            logger.info("A second signal: the answers still running are cut now")
            self.now.set()
        else:
            self.exit_server(signum, None)  # uvicorn's own: a second Ctrl-C forces it

    async def run(self) -> None:
        running = len(lifecycle.turns)
        logger.info(
            "Draining: no new chats or messages; %d answer(s) running, given up to %.0f s",
            running,
            self.drain_timeout,
        )
        try:
            ended = asyncio.ensure_future(lifecycle.turns_ended())
            cut = asyncio.ensure_future(self.now.wait())
            try:
                await asyncio.wait(
                    (ended, cut), timeout=self.drain_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                cut.cancel()
            if not ended.done():
                logger.warning(
                    "Drain over with %d answer(s) still running: stored as interrupted",
                    lifecycle.cut_turns(),
                )
                try:
                    await asyncio.wait_for(ended, CUT_GRACE)
                except TimeoutError:
                    logger.error("Answers still running %.0f s after being cut", CUT_GRACE)
            if self.close_connections is not None:
                await self.close_connections()
            await self.settle()  # what the chats' disconnection stored too
        except Exception:
            logger.exception("The drain failed; shutting down")
        logger.info("Drained: shutting down")
        self.exit_server(signal.SIGTERM, None)


async def writes_done(data_layer) -> None:
    """Return once every write asked of the data layer so far is applied. Chainlit stores each
    message from a task of its own; the data layer runs them one after another, in the order
    they were asked for (storage.ChatDataLayer._in_order), so a no-op queued last ends last."""
    await asyncio.sleep(0)  # writes just created take their place in the queue first
    await data_layer._in_order(_nothing)


async def _nothing() -> None:
    return None


async def close_chat_connections() -> None:
    """End every chat connection, telling each page to reconnect (elsewhere: this instance
    answers no new one). uvicorn's shutdown closes websockets itself but waits for a pending
    long-poll (a page without websockets, or still upgrading) to end by itself, which takes
    engine.io's ping interval (25 s)."""
    from chainlit.server import sio

    sockets = list(sio.eio.sockets.values())
    if not sockets:
        return
    # Each runs Chainlit's disconnect (the chat's state is stored) and queues engine.io's close
    # packet; not waiting for a polling page to fetch it (wait=False): it may never come back.
    closing = (socket.close(wait=False) for socket in sockets)
    try:
        await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), CLOSE_GRACE)
    except TimeoutError:
        logger.warning("Chat connections still closing after %.0f s", CLOSE_GRACE)


def is_uvicorn_exit_handler(handler: Any) -> bool:
    import uvicorn

    return getattr(handler, "__func__", None) is uvicorn.Server.handle_exit


def drain_on_signals(drain_timeout: float, data_layer) -> Drain | None:
    """Make SIGTERM drain this instance and SIGINT stop it after storing what streamed; called
    in the running server (uvicorn has installed its signal handlers)."""
    uvicorn_exit = signal.getsignal(signal.SIGTERM)
    if not is_uvicorn_exit_handler(uvicorn_exit) or not is_uvicorn_exit_handler(
        signal.getsignal(signal.SIGINT)
    ):
        logger.error("uvicorn's signal handler is not in place: SIGTERM stops without draining")
        return None
    drain = Drain(
        drain_timeout,
        lambda: writes_done(data_layer),
        uvicorn_exit,  # type: ignore[arg-type]
        close_chat_connections,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, drain.on_signal, signum)
    return drain
