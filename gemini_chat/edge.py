"""The HTTP edge: what every request and chat socket passes before Chainlit sees it.

One ASGI middleware, in front of every other one, that

- in local mode refuses clients that are not on this computer, and host names that are not
  this computer's (a web page that rebinds its own name to 127.0.0.1 gets nothing);
- refuses chat sockets opened from another origin (Chainlit turns socket.io's check off);
- refuses at once the routes of features that are off, and bounds every request body before
  anything reads it, login included: a declared Content-Length over the limit gets 413 at once,
  a streamed body is cut off with 413 when it passes the limit;
- adds the security headers to every response: a Content-Security-Policy that lets the page
  load only from this server (Chainlit's own inline scripts allowed by their hash), no framing,
  no MIME sniffing, no referrer;
- lets exactly the operator's endpoints (/healthz, /readyz, /metrics: gemini_chat/health.py)
  through the local-mode checks, so a probe or Prometheus reaches them under any host name;
- while the instance drains after SIGTERM, answers 503 to whatever would open a new session
  here (gemini_chat/drain.py), so a load balancer sends it to another instance;
- marks cookies ``Secure`` when the request came over HTTPS, directly or through a proxy that
  uvicorn trusts (``X-Forwarded-Proto``; FORWARDED_ALLOW_IPS, this computer by default).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .drain import admitted_while_draining, refuse_while_draining
from .health import OPERATIONS_PATHS
from .lifecycle import lifecycle

logger = logging.getLogger("gemini_chat")

SOCKET_PATH = "/ws/socket.io"
# What a chat message carries besides its text: ids, dates, names, socket.io's framing.
MESSAGE_ROOM = 64 * 1024
LOCAL_HOST_MESSAGE = (
    "This chat runs in local mode and answers only at localhost, 127.0.0.1 or [::1]: open it at "
    "one of those addresses."
)
TOO_LARGE_MESSAGE = "The request is too large for this server ({limit:,} bytes at most)."

# Model output is rendered as Markdown, and Markdown images load by themselves (as <video> when
# the URL ends in .mp4, .webm, ...): an answer could carry data out through any URL the page
# fetches. Everything may come from this server only. Chainlit's React components set inline
# styles and its UI libraries insert <style> elements, hence 'unsafe-inline' for styles (CSS
# cannot fetch from elsewhere: img-src and font-src hold); scripts get no such exception.
POLICY = (
    ("default-src", "'self'"),
    ("script-src", "'self'"),
    ("style-src", "'self' 'unsafe-inline'"),
    ("img-src", "'self' data: blob:"),
    ("media-src", "'self'"),
    ("font-src", "'self'"),
    ("connect-src", "'self'"),
    ("object-src", "'none'"),
    ("base-uri", "'self'"),
    ("form-action", "'self'"),
    ("frame-ancestors", "'none'"),
)
INLINE_SCRIPT = re.compile(rb"<script\b(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.S | re.I)
SECURE = re.compile(rb";\s*secure\s*(;|$)", re.I)


def body_limit(max_message_chars: int) -> int:
    """The largest request body, and chat-socket message, the server takes: the longest allowed
    message in its longest JSON form (6 bytes a character: a control character travels as
    \\u0001) and 64 KiB for the rest of the message."""
    return 6 * max_message_chars + MESSAGE_ROOM


def content_security_policy(script_hashes: Iterable[str] = ()) -> str:
    """The policy, with the page's own inline scripts allowed by their hashes."""
    hashes = " ".join(script_hashes)
    return "; ".join(
        f"{name} {sources} {hashes}".rstrip() if name == "script-src" else f"{name} {sources}"
        for name, sources in POLICY
    )


def script_hashes(html: bytes) -> list[str]:
    """CSP hash sources of the inline scripts of a page."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in INLINE_SCRIPT.findall(html)
    ]


def host_is_loopback(host: str | None) -> bool:
    """Whether a Host header names this computer: localhost or a loopback address, any port."""
    if not host:
        return False
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return False
        try:
            return ipaddress.IPv6Address(name).is_loopback
        except ValueError:
            return False
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return False
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def proxies_beyond_loopback(forwarded_allow_ips: str) -> list[str]:
    """The entries of uvicorn's FORWARDED_ALLOW_IPS that believe X-Forwarded-For from a client
    that is not on this computer (such a client could then pass for this computer)."""
    beyond = []
    for entry in (part.strip() for part in forwarded_allow_ips.split(",")):
        if entry == "*":
            beyond.append(entry)
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue  # uvicorn compares a name with the client's name: never a TCP address
        if not (network.network_address.is_loopback and network.broadcast_address.is_loopback):
            beyond.append(entry)
    return beyond


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Same-origin requests and the configured origins may open the chat socket.

    Chainlit turns socket.io's own origin check off, so without this any web page the user
    visits could open a socket to a local chat and spend its Gemini quota."""
    if origin is None or "*" in allowed:
        return True  # not a browser (browsers always send Origin on these requests)
    if origin.rstrip("/") in (o.rstrip("/") for o in allowed):
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def switched_off(method: str, path: str) -> str | None:
    """Why a request goes to a feature that is off in .chainlit/config.toml (None if it is on)."""
    from chainlit.config import config

    path = path.removeprefix(config.run.root_path or "")
    features = config.features
    upload = features.spontaneous_file_upload
    # Without the section Chainlit takes any upload; an app asking for files needs it on too.
    if method == "POST" and path == "/project/file" and upload is not None and not upload.enabled:
        return "File uploads are turned off on this server."
    if path == "/mcp" and not features.mcp.enabled:
        return "MCP servers are turned off on this server."
    if (path == "/project/thread/share" or path.startswith("/project/share/")) and not (
        features.allow_thread_sharing
    ):
        return "Sharing chats is turned off on this server."
    return None


@dataclass
class EdgeRules:
    """What the edge enforces, chosen at start-up."""

    local: bool = False
    body_limit: int = body_limit(100_000)
    # The upload route's: one file of the largest allowed size (gemini_chat/uploads.py), read
    # only after the route has authenticated the caller.
    upload_limit: int = 0
    # Local mode: the Set-Cookie headers that log the local user in with the page itself.
    page_login: Callable[[dict], Awaitable[list[tuple[bytes, bytes]]]] | None = None


class Edge:
    """ASGI middleware carrying out the rules of the module docstring; ``rules`` returns the
    rules of the server as prepared (None before that: everything passes)."""

    def __init__(self, app, rules: Callable[[], EdgeRules | None]) -> None:
        self.app = app
        self.rules = rules

    async def __call__(self, scope, receive, send) -> None:
        rules = self.rules() if scope["type"] in ("http", "websocket") else None
        if rules is None:
            await self.app(scope, receive, send)
            return
        headers = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        refusal = self.refusal(scope, headers, rules)
        if refusal is not None:
            await _refuse(scope, receive, send, *refusal)
            return
        if lifecycle.draining:  # only what belongs to a session open here (drain.py)
            admitted, receive = await admitted_while_draining(scope, receive, rules.body_limit)
            if not admitted:
                await refuse_while_draining(scope, receive, send)
                return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
        else:
            await self.serve(scope, receive, send, rules)

    def refusal(self, scope, headers: dict[str, str], rules: EdgeRules) -> tuple[int, str] | None:
        from chainlit.config import config

        from .auth import LOCAL_ONLY_MESSAGE, is_loopback

        if is_operations_request(scope):
            return None  # probes and the metrics scraper, which need no login (health.py)
        client = (scope.get("client") or (None,))[0]
        if rules.local and not is_loopback(client):
            logger.warning("Refused %s: local mode serves loopback clients only", client)
            return 403, LOCAL_ONLY_MESSAGE
        host = headers.get("host")
        if rules.local and not host_is_loopback(host):
            logger.warning(
                "Refused a request for host %r: local mode answers only at localhost, "
                "127.0.0.1 and [::1]",
                host,
            )
            return 403, LOCAL_HOST_MESSAGE
        path = scope.get("path", "")
        if SOCKET_PATH in path:
            allowed = list(config.project.allow_origins or [])
            if not origin_allowed(headers.get("origin"), host, allowed):
                logger.warning("Refused a chat connection from origin %r", headers.get("origin"))
                return 403, "Cross-origin connection refused."
        if scope["type"] != "http":
            return None
        if (reason := switched_off(scope["method"], path)) is not None:
            logger.warning("Refused %s for %s: %s", scope["method"], path, reason)
            return 403, reason
        declared = headers.get("content-length", "")
        limit = _limit_for(scope, rules)
        if declared.isdigit() and int(declared) > limit:
            logger.warning("Refused a %s-byte body for %s", declared, path)
            return 413, TOO_LARGE_MESSAGE.format(limit=limit)
        return None

    async def serve(self, scope, receive, send, rules: EdgeRules) -> None:
        limit = _limit_for(scope, rules)
        received = 0
        started = False  # the app began its response
        refused = False  # the edge answered instead of the app
        page: list[dict] = []  # an HTML page's messages, held until its scripts are hashed

        async def bounded_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    logger.warning("Cut off a body past %s bytes for %s", received, scope["path"])
                    if not started:
                        await _respond(send, 413, TOO_LARGE_MESSAGE.format(limit=limit))
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def send_with_headers(message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
                if not _is_page(message.get("headers", [])):
                    await send(await self.finish_start(scope, message, rules, None))
                    return
            if page or (message["type"] == "http.response.start"):
                page.append(message)
                if message["type"] == "http.response.start" or message.get("more_body"):
                    return
                start, *bodies = page
                body = b"".join(m.get("body", b"") for m in bodies)
                await send(await self.finish_start(scope, start, rules, body))
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, bounded_receive, send_with_headers)
        except Exception:
            if not refused:
                raise  # after a cut-off body the app fails reading it: that is expected

    async def finish_start(self, scope, start: dict, rules: EdgeRules, page: bytes | None) -> dict:
        """The response's start with the security headers (and, for the page, the hashes of its
        inline scripts and the local login), its cookies Secure over HTTPS."""
        headers = list(start.get("headers", []))
        hashes: list[str] = []
        if page is not None:
            hashes = script_hashes(_decoded(page, headers))
            if rules.local and rules.page_login is not None:
                headers += await rules.page_login(scope)
        names = {name.lower() for name, _ in headers}
        extra = [
            (b"content-security-policy", content_security_policy(hashes).encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        headers += [(name, value) for name, value in extra if name not in names]
        if scope.get("scheme") == "https":
            headers = [
                (name, value + b"; Secure")
                if name.lower() == b"set-cookie" and not SECURE.search(value)
                else (name, value)
                for name, value in headers
            ]
        return {**start, "headers": headers}


def is_operations_request(scope) -> bool:
    """A GET of exactly /healthz, /readyz or /metrics: answered by gemini_chat/health.py to a
    load balancer, a probe or Prometheus, in local mode too (from another host name or
    computer); they tell nothing about the chats, and /metrics asks for its own token."""
    from chainlit.config import config

    if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
        return False
    return scope.get("path", "").removeprefix(config.run.root_path or "") in OPERATIONS_PATHS


def _limit_for(scope, rules: EdgeRules) -> int:
    from chainlit.config import config

    path = scope.get("path", "").removeprefix(config.run.root_path or "")
    if scope.get("method") == "POST" and path == "/project/file" and rules.upload_limit:
        return max(rules.body_limit, rules.upload_limit)
    return rules.body_limit


def _is_page(headers) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/html")
        for name, value in headers
    )


def _decoded(body: bytes, headers) -> bytes:
    encoding = next((v for n, v in headers if n.lower() == b"content-encoding"), b"")
    return gzip.decompress(body) if encoding.lower() == b"gzip" else body


async def _respond(send, status: int, message: str) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"connection", b"close"),  # the rest of a refused body is not read
        *((name.encode(), value.encode()) for name, value in _plain_policy()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": message.encode()})


def _plain_policy() -> list[tuple[str, str]]:
    return [
        ("content-security-policy", content_security_policy()),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
    ]


async def _refuse(scope, receive, send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        await receive()  # the websocket.connect event
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    await _respond(send, status, message)


def bound_websocket_messages(limit: int) -> None:
    """Make uvicorn refuse a websocket message over ``limit`` bytes as it arrives.

    uvicorn reads each whole message (up to its ``ws_max_size``, 16 MiB by default) before any
    app sees it, login or not, and `chainlit run` builds uvicorn's Config without that setting:
    the Config it builds gets ``limit`` instead (a contract tested in tests/test_security_edge.py).
    """
    import uvicorn

    unbounded = getattr(uvicorn.Config, "unbounded", uvicorn.Config)

    class Config(unbounded):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("ws_max_size", limit)
            super().__init__(*args, **kwargs)

    Config.unbounded = unbounded
    uvicorn.Config = Config


def install_edge(app, rules: Callable[[], EdgeRules | None]) -> None:
    """Put the edge in front of every middleware added before it; safe to call on a reload
    (`chainlit run -w` re-imports the app into a running server, where Starlette refuses new
    middleware: the flag lives on the app, which survives the reload)."""
    if getattr(app.state, "edge", False):
        return
    try:
        app.add_middleware(Edge, rules=rules)
        app.state.edge = True
    except RuntimeError:
        logger.debug("Server already started; the edge was added at first start")
