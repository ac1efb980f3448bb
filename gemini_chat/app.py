"""Server preparation: settings, safe logging, Chainlit's UI name and HTTP hardening."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from chainlit.config import config as chainlit_config
from sqlalchemy.engine import make_url

from .auth import (
    LOCAL_ONLY_MESSAGE,
    Access,
    AccessError,
    install_login_guards,
    is_loopback,
    prepare_access,
)
from .config import ConfigError, Settings, load_settings
from .framework import install_stop_without_notice
from .frontend import install_frontend
from .logs import install_secret_filter, quiet_library_logs
from .ownership import FeedbackOwnership
from .runtime import tune_runtime
from .schema import StorageError, describe_url, prepare_database
from .storage import ChatDataLayer

logger = logging.getLogger("gemini_chat")

# Model output is rendered as Markdown, and Markdown images load by themselves: an answer could
# carry data out through an image URL. Images may only come from this server.
SECURITY_HEADERS = (
    (b"content-security-policy", b"img-src 'self' data: blob:; object-src 'none'; base-uri 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


LOCAL_MODE_CSS = "/public/local-mode.css"


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Same-origin requests and the configured origins may open the chat socket.

    Chainlit turns socket.io's own origin check off, so without this any web page the user
    visits could open a socket to a local chat and spend its Gemini quota."""
    if origin is None or "*" in allowed:
        return True  # not a browser (browsers always send Origin on these requests)
    if origin.rstrip("/") in (o.rstrip("/") for o in allowed):
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


@dataclass
class Server:
    """What the handlers need, prepared once at start-up."""

    settings: Settings
    data_layer: ChatDataLayer
    access: Access


# The server being prepared; the middleware reads the login mode from it on every request.
current: Server | None = None


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every HTTP response, cross-site socket connections
    refused, and in local mode every client that is not on this computer refused."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or (None,))[0]
        if current is not None and current.access.local and not is_loopback(client):
            logger.warning("Refused %s: local mode serves loopback clients only", client)
            await _refuse(scope, receive, send, LOCAL_ONLY_MESSAGE)
            return
        if "/ws/socket.io" in scope.get("path", ""):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            allowed = list(chainlit_config.project.allow_origins or [])
            if not origin_allowed(headers.get("origin"), headers.get("host"), allowed):
                logger.warning("Refused a chat connection from origin %r", headers.get("origin"))
                await _refuse(scope, receive, send, "Cross-origin connection refused.")
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                names = {name.lower() for name, _ in headers}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in names]
                if current is not None and current.access.local and _is_page(headers):
                    extra += await current.access.page_login_headers(scope)
                message = {**message, "headers": [*headers, *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_page(headers) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/html")
        for name, value in headers
    )


async def _refuse(scope, receive, send, message: str) -> None:
    if scope["type"] == "websocket":
        await receive()  # the websocket.connect event
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": message.encode()})


def _exit(message: str) -> None:
    # One line saying what to change, not a traceback.
    print(message, file=sys.stderr)
    raise SystemExit(2)


def prepare_server() -> Server:
    """Read the settings, prepare the database and the login mode, and set up the Chainlit
    server for them; safe to call on every reload."""
    global current
    tune_runtime()
    try:
        settings = load_settings()
    except ConfigError as error:
        _exit(f"Configuration error: {error}")
    logging.getLogger("gemini_chat").setLevel(logging.INFO)
    quiet_library_logs()
    chainlit_config.ui.name = settings.assistant_name

    from chainlit.server import app, sio

    # A paste over the size limit must reach on_message to be refused politely; at socket.io's
    # default 1 MB the connection would just drop. The limit counts characters, JSON may need
    # up to 6 bytes for one (control characters), so leave room.
    sio.eio.max_http_buffer_size = max(16_000_000, settings.max_message_chars * 6 + 65_536)
    # `chainlit run -w` re-imports this module into a running server, where Starlette refuses
    # new middleware; the flag lives on the app, which survives the reload.
    if not getattr(app.state, "security_headers", False):
        try:
            app.add_middleware(SecurityHeaders)
            app.state.security_headers = True
        except RuntimeError:
            logger.debug("Server already started; security headers were added at first start")
    install_frontend(app)
    install_stop_without_notice()
    if not settings.api_key:
        logger.warning("GEMINI_API_KEY is not set: the chat will explain how to set it")
    try:
        prepare_database(settings.database_url)
        access = prepare_access(settings.database_url)
        install_login_guards(access)
    except StorageError as error:
        _exit(f"Database error: {error}")
    except AccessError as error:
        _exit(f"Login error: {error}")
    # Local mode has nobody to log out (the page logs the local user in again at once), so its
    # user menu, which holds only "Logout", is hidden.
    if access.local and chainlit_config.ui.custom_css in (None, "", LOCAL_MODE_CSS):
        chainlit_config.ui.custom_css = LOCAL_MODE_CSS
    elif chainlit_config.ui.custom_css == LOCAL_MODE_CSS:
        chainlit_config.ui.custom_css = None
    if settings.api_key:
        logger.info(
            "Serving %s with model %s at %s; chats stored in %s",
            settings.assistant_name,
            settings.model,
            settings.base_url,
            describe_url(settings.database_url),
        )
    else:
        logger.info("Chats stored in %s", describe_url(settings.database_url))
    install_secret_filter(
        *(
            secret
            for secret in (
                settings.api_key,
                os.environ.get("CHAINLIT_AUTH_SECRET"),
                make_url(settings.database_url).password,
            )
            if secret
        )
    )
    current = Server(settings, ChatDataLayer(settings.database_url), access)
    if not getattr(app.state, "feedback_ownership", False):
        try:
            app.add_middleware(FeedbackOwnership, data_layer=current.data_layer)
            app.state.feedback_ownership = True
        except RuntimeError:
            logger.debug("Server already started; the feedback guard was added at first start")
    return current
