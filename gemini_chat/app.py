"""Server preparation: settings, safe logging, Chainlit's UI name and HTTP hardening."""

from __future__ import annotations

import logging
import sys
from urllib.parse import urlsplit

from chainlit.config import config as chainlit_config

from .config import ConfigError, Settings, load_settings
from .logs import install_secret_filter

logger = logging.getLogger("gemini_chat")

# Model output is rendered as Markdown, and Markdown images load by themselves: an answer could
# carry data out through an image URL. Images may only come from this server.
SECURITY_HEADERS = (
    (b"content-security-policy", b"img-src 'self' data: blob:; object-src 'none'; base-uri 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Same-origin requests and the configured origins may open the chat socket.

    Chainlit turns socket.io's own origin check off, so without this any web page the user
    visits could open a socket to a local chat and spend its Gemini quota."""
    if origin is None or "*" in allowed:
        return True  # not a browser (browsers always send Origin on these requests)
    if origin.rstrip("/") in (o.rstrip("/") for o in allowed):
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every HTTP response, and cross-site socket
    connections refused."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and "/ws/socket.io" in scope.get("path", ""):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            allowed = list(chainlit_config.project.allow_origins or [])
            if not origin_allowed(headers.get("origin"), headers.get("host"), allowed):
                logger.warning("Refused a chat connection from origin %r", headers.get("origin"))
                await _refuse(scope, receive, send)
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse(scope, receive, send) -> None:
    if scope["type"] == "websocket":
        await receive()  # the websocket.connect event
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": 403, "headers": []})
    await send({"type": "http.response.body", "body": b"cross-origin connection refused"})


def load_settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        # One line naming the variable, not a traceback.
        print(f"Configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def prepare_server() -> Settings:
    """Read the settings and set up the Chainlit server for them; safe to call on every reload."""
    settings = load_settings_or_exit()
    logging.getLogger("gemini_chat").setLevel(logging.INFO)
    if settings.api_key:
        install_secret_filter(settings.api_key)
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
    if not settings.api_key:
        logger.warning("GEMINI_API_KEY is not set: the chat will explain how to set it")
    logger.info(
        "Serving %s with model %s at %s", settings.assistant_name, settings.model, settings.base_url
    )
    return settings
