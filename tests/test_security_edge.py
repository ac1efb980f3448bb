"""The HTTP edge, attacked as a hostile page or client would: data carried out of the page by a
URL in an answer, the app framed by another site, DNS rebinding in local mode, large bodies
before anyone logs in, sockets from another origin, and login cookies over HTTPS.

Every attack goes to the real `chainlit run` process, over real HTTP, socket.io or Chromium; what
is counted is what an attacker would get: requests reaching a listener on another port, status
codes, seconds waited, bytes taken, and the memory the server process grew by.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import socketio

from gemini_chat.attachments import configured_limits
from gemini_chat.config import load_settings
from gemini_chat.edge import body_limit, host_is_loopback, proxies_beyond_loopback
from gemini_chat.uploads import upload_limit
from tests.app_process import start_app
from tests.chat_client import ChatClient
from tests.conftest import app_env
from tests.fake_gemini import Reply
from tests.test_accounts import SECRET, accounts_command
from tests.test_browser import reload_chat, type_and_send

ROOT = Path(__file__).resolve().parent.parent
WELCOME = "Ask me anything"
MiB = 1024 * 1024


# --- helpers ------------------------------------------------------------------------------------


class Listener:
    """An HTTP server on another loopback port that records every request it gets; it serves
    ``page`` at /page.html (another site's page) and a tiny answer anywhere else."""

    def __init__(self, page: str = "") -> None:
        self.requests: list[str] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                listener.requests.append(self.path)
                body = page.encode() if self.path == "/page.html" else b"GIF89a"
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if page else "image/gif")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = do_OPTIONS = answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def leaks(self) -> list[str]:
        return [path for path in self.requests if path not in ("/page.html", "/favicon.ico")]


def memory(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (VmRSS) or its peak since the last reset (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1)) * 1024


class PeakGrowth:
    """How far the memory of a process rose above its resident size during a block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.grown = 0

    def __enter__(self) -> PeakGrowth:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets the peak (VmHWM)
        self.before = memory(self.pid)
        return self

    def __exit__(self, *exc) -> None:
        self.grown = memory(self.pid, "VmHWM") - self.before


def request(
    url: str, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes, list[str]]:
    """One HTTP request with exactly the given headers (Host included, when given)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    headers = dict(headers or {})
    connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    if body or method in ("POST", "PUT", "DELETE"):
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body or None)
    response = connection.getresponse()
    data = response.read()
    cookies = response.headers.get_all("Set-Cookie") or []
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data, cookies


UPLOAD_HEAD = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


def content_type(path: str) -> str:
    return (
        "multipart/form-data; boundary=b"
        if path.startswith("/project/file")
        else ("application/json")
    )


def engineio_sid(url: str) -> str:
    """A new engine.io session (the step before socket.io's login)."""
    _, _, body, _ = request(url, "GET", "/ws/socket.io/?EIO=4&transport=polling")
    return re.search(rb'"sid":"([^"]+)"', body).group(1).decode()


async def send_declared(url: str, path: str, length: int, method: str = "POST", wait: float = 5.0):
    """Declare a ``length``-byte body, send none of it, and time the server's answer.

    Returns (status or None when nothing came back within ``wait``, seconds waited)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: {content_type(path)}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    started = time.monotonic()
    writer.write(head.encode())
    await writer.drain()
    try:
        line = await asyncio.wait_for(reader.readline(), wait)
    except TimeoutError:
        line = b""
    waited = time.monotonic() - started
    writer.close()
    return (int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None), waited


async def send_streamed(url: str, path: str, total: int, method: str = "POST", chunked=True):
    """Stream up to ``total`` bytes of body (chunked, or with its real Content-Length) until the
    server answers or closes. Returns (status or None, bytes the server let us send)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: {content_type(path)}\r\n{framing}\r\n\r\n".encode()
    )
    answer = asyncio.ensure_future(reader.readline())
    filler = b"1," * (32 * 1024)  # 64 KiB pieces of a JSON list, or of a file, that never ends
    first = (UPLOAD_HEAD if path.startswith("/project/file") else b"[") + filler
    sent = 0
    try:
        while sent < total and not answer.done():
            piece = first if sent == 0 else filler
            data = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            writer.write(data)
            await writer.drain()
            sent += len(piece)
        if chunked and not answer.done():
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass  # the server closed the connection: what we wanted
    try:
        line = await asyncio.wait_for(answer, 30)
    except (TimeoutError, ConnectionError, OSError):
        line = b""
    writer.close()
    return (int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None), sent


# --- the apps under attack ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def accounts_app(fake_gemini_server, tmp_path_factory):
    """The real app in accounts mode (one account, alice), default limits."""
    directory = tmp_path_factory.mktemp("edge-accounts")
    url = f"sqlite+aiosqlite:///{directory}/chats.db"
    assert accounts_command(url, "add", "alice", password="alice-password").returncode == 0
    server = start_app(app_env(fake_gemini_server, DATABASE_URL=url, CHAINLIT_AUTH_SECRET=SECRET))
    yield server
    server.stop()


# What the page reports when its Content-Security-Policy blocks something (every frame).
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', e => window.__violations.push(
    {uri: e.blockedURI, directive: e.effectiveDirective, sample: e.sample}));
"""


async def open_watched_chat(browser, app, sockets: list[str] | None = None) -> tuple:
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    await context.add_init_script(WATCH_VIOLATIONS)
    page = await context.new_page()
    if sockets is not None:
        page.on("websocket", lambda socket: sockets.append(socket.url))
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    await page.goto(app.url)
    await page.get_by_text(WELCOME).wait_for(timeout=30_000)
    return page, console


# --- 1. nothing leaves the page through a URL; nobody frames it ----------------------------------


def leaking_answer(listener: Listener) -> str:
    url = listener.url
    return "\n\n".join(
        [
            "Here you go:",
            f"![v]({url}/leak.mp4?d=SECRET)",
            f"![v]({url}/LEAK.WEBM#t=1)",
            f"![v]({url}/leak.mov)",
            f"![i]({url}/leak.png?d=SECRET)",
            f"![i](//127.0.0.1:{listener.port}/relative.gif)",
            f"![a]({url}/leak.mp3)",
            f"[a link]({url}/link?d=SECRET) and <{url}/autolink>",
            f"$\\includegraphics{{{url}/katex.png}}$ and $\\href{{{url}/katex-href}}{{x}}$",
            "Done.",
        ]
    )


# The elements of the answer above that make a browser fetch by themselves (<img>, <video>).
FETCHING = ["/leak.mp4", "/LEAK.WEBM", "/leak.mov", "/leak.png", "/relative.gif", "/leak.mp3"]


async def wait_until_blocked(page, listener: Listener, paths: list[str]) -> None:
    """Wait until the page reports each URL blocked; fail at once with what reached the
    listener when one is fetched instead."""
    predicate = """paths => paths.every(p => window.__violations.some(
                       v => v.uri && new URL(v.uri).pathname === p))"""
    try:
        await page.wait_for_function(predicate, arg=paths, timeout=15_000)
    except Exception:
        assert listener.leaks() == [], "the answer made the browser fetch from another host"
        raise


@pytest.mark.browser
async def test_an_answer_cannot_make_the_page_fetch_from_another_host(browser, app, gemini):
    with Listener() as listener:
        page, _ = await open_watched_chat(browser, app)
        gemini.script(Reply(leaking_answer(listener)))
        await type_and_send(page, "Show me a video")
        await page.get_by_text("Done.").wait_for(timeout=15_000)
        await page.locator("video").first.wait_for(state="attached", timeout=10_000)
        await wait_until_blocked(page, listener, FETCHING)
        assert await page.locator("video").count() == 3  # rendered as videos, and blocked

        # Every render of the chat again (here a reload of it) is blocked the same way.
        await reload_chat(page)
        await page.get_by_text("Done.").wait_for(timeout=15_000)
        await wait_until_blocked(page, listener, FETCHING)
        assert listener.leaks() == []
        blocked = await page.evaluate("window.__violations")
        assert {v["directive"] for v in blocked} <= {"img-src", "media-src"}, blocked
        assert all(v["uri"].startswith(listener.url) for v in blocked), blocked


@pytest.mark.browser
async def test_a_page_load_and_a_chat_turn_break_no_rule_of_the_policy(browser, app, gemini):
    sockets: list[str] = []
    page, console = await open_watched_chat(browser, app, sockets)
    gemini.script(Reply("Sure: **bold**, $E = mc^2$ and\n\n```python\nprint('hi')\n```\n\nEnd."))
    await type_and_send(page, "Show me everything")
    await page.locator(".positive-feedback-off").last.wait_for(timeout=15_000)
    await page.locator(".katex").first.wait_for(timeout=5_000)
    await page.evaluate("document.fonts.ready.then(() => true)")
    # The chat socket upgraded to a websocket (ws: to the same host and port).
    assert any(
        url.startswith(app.url.replace("http:", "ws:") + "/ws/socket.io/") for url in sockets
    )
    assert await page.evaluate("window.__violations") == []
    assert [line for line in console if "Content Security Policy" in line] == []
    # The inline scripts of Chainlit's page ran: its theme colours are set.
    assert await page.evaluate("typeof window.theme === 'object' && 'light' in window.theme")


@pytest.mark.browser
async def test_another_site_cannot_frame_the_app(browser, app, gemini):
    page_html = (
        f'<html><body><iframe id="app" src="{app.url}/" width="800" height="600" '
        'onload="window.frameLoaded = true"></iframe></body></html>'
    )
    with Listener(page=page_html) as listener:
        context = await browser.new_context()
        page = await context.new_page()
        loaded_by_frame: list[str] = []
        page.on(
            "request",
            lambda r: loaded_by_frame.append(r.url) if r.frame != page.main_frame else None,
        )
        await page.goto(f"{listener.url}/page.html")
        await page.wait_for_function("window.frameLoaded === true", timeout=15_000)
        frame = next(f for f in page.frames if f != page.main_frame)
        # The app's page was refused inside the frame: none of its scripts or styles loaded.
        assert frame.url.startswith("chrome-error://"), frame.url
        assert [url for url in loaded_by_frame if "/assets/" in url] == []

    _, headers, _, _ = request(app.url, "GET", "/")
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_the_policy_leaves_no_kind_of_resource_open():
    from gemini_chat.edge import content_security_policy

    policy = {
        part.split()[0]: part.split()[1:]
        for part in content_security_policy(["'sha256-abc='"]).split(";")
        if part.strip()
    }
    assert policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["script-src"] and "'sha256-abc='" in policy["script-src"]
    for directive in ("img-src", "media-src", "connect-src", "font-src", "base-uri"):
        assert not any("http" in source or source == "*" for source in policy[directive])


# --- 2. local mode answers only to loopback names, and never behind a trusting proxy --------------


async def test_local_mode_refuses_another_host_name_dns_rebinding(app, gemini):
    port = urlsplit(app.url).port
    evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}

    # The login a rebinding page would take.
    status, _, body, cookies = await asyncio.to_thread(
        request, app.url, "POST", "/auth/header", {**evil, "Content-Type": "application/json"}
    )
    assert (status, cookies) == (403, []), body

    # A chat of the local user, then a rebinding page holding the user's cookie.
    client = await ChatClient(app.url).connect()
    gemini.script(Reply("The secret plan is ready."))
    await client.ask("Write the secret plan")
    thread_id = await client.chat_thread()
    await client.disconnect()
    cookie = {"Cookie": client.headers["Cookie"], "Content-Type": "application/json"}
    for method, path, body in [
        ("POST", "/project/threads", b'{"pagination": {"first": 20}, "filter": {}}'),
        ("GET", f"/project/thread/{thread_id}", b""),
        ("GET", "/user", b""),
    ]:
        status, _, data, _ = await asyncio.to_thread(
            request, app.url, method, path, {**evil, **cookie}, body
        )
        assert status == 403 and b"secret plan" not in data, (path, data)

    # The chat socket, the way the rebinding page would open it: nothing reaches the model.
    gemini.reset()
    rebinding = ChatClient(
        app.url, headers={"Cookie": client.headers["Cookie"], "Host": evil["Host"]}
    )
    with pytest.raises(socketio.exceptions.ConnectionError):
        await rebinding.connect(origin=evil["Origin"])
        await rebinding.send("Spend the quota")
    await rebinding.disconnect()
    assert gemini.requests == []
    assert "local mode answers" in app.log()


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST", "127.0.0.1."])
async def test_local_mode_answers_at_the_loopback_names_on_any_port(app, name):
    port = urlsplit(app.url).port
    for host in (name, f"{name}:{port}", f"{name}:8000"):
        status, _, _, cookies = await asyncio.to_thread(
            request, app.url, "POST", "/auth/header", {"Host": host}
        )
        expected = 403 if name.endswith(".") else 200
        assert status == expected, host
        assert bool(cookies) == (expected == 200)


def test_host_names_that_count_as_this_computer():
    for host in ("localhost", "localhost:8000", "127.0.0.1:1", "127.9.9.9", "[::1]:8000", "[::1]"):
        assert host_is_loopback(host), host
    for host in (
        None,
        "",
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "[::ffff:10.0.0.1]",
        "10.0.0.1:8000",
        "0.0.0.0",
        "::1",
        "[::1",
        "localhost:x",
    ):
        assert not host_is_loopback(host), host


def test_trusted_proxies_beyond_this_computer_are_named():
    assert proxies_beyond_loopback("127.0.0.1,::1") == []
    assert proxies_beyond_loopback(" 127.0.0.1 , 127.0.0.0/8, ::1/128 ") == []
    assert proxies_beyond_loopback("*") == ["*"]
    assert proxies_beyond_loopback("127.0.0.1, 10.0.0.5, 0.0.0.0/0") == ["10.0.0.5", "0.0.0.0/0"]
    assert proxies_beyond_loopback("unix:/tmp/proxy.sock") == []  # never a TCP client's address


async def test_local_mode_refuses_to_start_when_proxy_headers_are_trusted(start_app_with):
    server = start_app_with(wait=False, FORWARDED_ALLOW_IPS="*")
    assert await asyncio.to_thread(server.process.wait, 60) == 2
    lines = [line for line in server.log().splitlines() if "FORWARDED_ALLOW_IPS" in line]
    assert len(lines) == 1 and "local mode" in lines[0].lower(), server.log()
    assert "Traceback" not in server.log()


# --- 3. bodies are bounded before anyone logs in -------------------------------------------------


def test_the_body_limit_is_what_the_longest_message_needs():
    assert body_limit(100_000) == 6 * 100_000 + 64 * 1024
    settings = load_settings({"MAX_MESSAGE_CHARS": "1000"})
    assert body_limit(settings.max_message_chars) == 6_000 + 64 * 1024


async def test_the_socket_takes_no_more_than_the_longest_message_needs(accounts_app, gemini):
    status, _, body, _ = await asyncio.to_thread(
        request, accounts_app.url, "GET", "/ws/socket.io/?EIO=4&transport=polling"
    )
    assert status == 200
    assert f'"maxPayload":{body_limit(100_000)}' in body.decode()

    # The longest allowed message in its longest JSON form (a control character is \\u0001)
    # still reaches the model; a paste over the limit gets the polite refusal.
    client = ChatClient(accounts_app.url)
    await client.login("alice", "alice-password")
    await client.connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    refused = await client.ask("y" * 500_000, timeout=30)
    assert "500,000 characters" in refused[0].content
    gemini.script(Reply("Got it."))
    replies = await client.ask("\x01" * 100_000, timeout=30)
    assert [m.content for m in replies] == ["Got it."]
    assert (await gemini.arrived(1))[0].conversation[-1] == ("user", "\x01" * 100_000)
    await client.disconnect()


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/project/file?session_id=x", 413),  # larger than the largest file
        ("POST", "/mcp", 403),  # MCP is off
        ("PUT", "/project/thread/share", 413),  # sharing is on with accounts: bounded too
        ("POST", "/project/threads", 413),
        ("DELETE", "/feedback", 413),
        ("POST", "/login", 413),
        ("POST", "/ws/socket.io/?EIO=4&transport=polling&sid={sid}", 413),
    ],
)
async def test_a_declared_large_body_is_refused_at_once(accounts_app, method, path, expected):
    path = path.format(sid=await asyncio.to_thread(engineio_sid, accounts_app.url))
    status, waited = await send_declared(accounts_app.url, path, 200_000_000, method)
    print(f"{method} {path}: {status} after {waited:.2f}s")
    assert status == expected and waited < 2


def refusals(app, path: str) -> int:
    """The edge's warnings about requests to ``path`` in the server log so far."""
    return sum(
        1
        for line in app.log().splitlines()
        if "WARNING - gemini_chat" in line and f"for {urlsplit(path).path}" in line
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/project/threads"),
        ("DELETE", "/feedback"),
        ("POST", "/project/file?session_id=x"),
        ("POST", "/ws/socket.io/?EIO=4&transport=polling&sid={sid}"),
    ],
)
async def test_a_streamed_large_body_is_cut_off_past_the_limit(accounts_app, method, path):
    path = path.format(sid=await asyncio.to_thread(engineio_sid, accounts_app.url))
    logged = refusals(accounts_app, path)
    with PeakGrowth(accounts_app.pid) as peak:
        status, sent = await send_streamed(accounts_app.url, path, 60 * MiB, method)
    grown = peak.grown
    print(f"{method} {path}: {status}, {sent / MiB:.1f} MiB taken, memory +{grown / MiB:.1f} MiB")
    # The client can miss the answer when the server closes while the body still comes (a
    # reset); the server's log still says it refused. The upload route refuses a caller who
    # has not logged in before it reads the body (401); the edge cuts it off past one file.
    refused = (401, 413) if path.startswith("/project/file") else (403, 413)
    assert status in refused or (status is None and refusals(accounts_app, path) > logged)
    # The socket buffers of the kernel hold a few MiB more than the server read.
    limit = upload_limit(configured_limits()) if path.startswith("/project/file") else 0
    assert sent < max(body_limit(100_000), limit) + 16 * MiB
    assert grown < 16 * MiB


async def test_many_socket_posts_before_login_grow_memory_by_little(accounts_app):
    statuses = []
    refused = refusals(accounts_app, "/ws/socket.io/")
    with PeakGrowth(accounts_app.pid) as peak:
        for _ in range(6):
            sid = await asyncio.to_thread(engineio_sid, accounts_app.url)
            status, _ = await send_streamed(
                accounts_app.url,
                f"/ws/socket.io/?EIO=4&transport=polling&sid={sid}",
                15 * MiB,
                chunked=False,
            )
            statuses.append(status)
    grown = peak.grown
    print(f"six 15 MiB socket posts: {statuses}, memory +{grown / MiB:.1f} MiB")
    # The client can miss the 413 when the server closes while the body still comes (a reset).
    assert set(statuses) <= {413, None}
    assert refusals(accounts_app, "/ws/socket.io/") == refused + 6
    assert grown < 16 * MiB


async def test_a_large_socket_message_before_login_is_refused_as_it_arrives(accounts_app):
    import aiohttp

    url = accounts_app.url.replace("http:", "ws:") + "/ws/socket.io/?EIO=4&transport=websocket"
    closes = []
    with PeakGrowth(accounts_app.pid) as peak:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.ws_connect(url, max_msg_size=0) as socket:
                    await socket.receive(timeout=10)  # engine.io's open packet
                    try:
                        await socket.send_str("4" + "x" * 15 * MiB)
                        await socket.receive(timeout=10)
                        closes.append(socket.close_code)
                    except ConnectionError:
                        closes.append("closed while it was sent")
    print(
        f"three 15 MiB socket messages before login: {closes}, memory +{peak.grown / MiB:.1f} MiB"
    )
    # 1009 is "message too big", from uvicorn as soon as the frame announces its size.
    assert set(closes) <= {1009, "closed while it was sent"}
    assert peak.grown < 16 * MiB


async def test_a_body_within_the_limit_still_works(accounts_app):
    client = ChatClient(accounts_app.url)
    await client.login("alice", "alice-password")
    filter_body = b'{"pagination": {"first": 20}, "filter": {"search": "' + b"a" * 60_000 + b'"}}'
    status, _, data, _ = await asyncio.to_thread(
        request,
        accounts_app.url,
        "POST",
        "/project/threads",
        {"Cookie": client.headers["Cookie"], "Content-Type": "application/json"},
        filter_body,
    )
    assert status == 200, data


# --- 4. sockets and API calls from another origin -------------------------------------------------


def test_no_other_origin_is_listed():
    config = tomllib.loads((ROOT / ".chainlit" / "config.toml").read_text())
    assert config["project"]["allow_origins"] == []


async def test_another_local_port_is_another_site(app, gemini):
    """An app on port 8000 (the old listed origin) is not this app, wherever this one runs."""
    assert urlsplit(app.url).port != 8000
    other = "http://localhost:8000"
    client = ChatClient(app.url)
    await client.login_local()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(origin=other)
    await client.disconnect()
    _, headers, _, _ = await asyncio.to_thread(
        request, app.url, "GET", "/user", {"Origin": other, "Cookie": client.headers["Cookie"]}
    )
    assert "access-control-allow-origin" not in headers
    # The app's own origin, under the name the browser used, still connects.
    for origin in (app.url, app.url.replace("127.0.0.1", "localhost")):
        host = urlsplit(origin).netloc
        own = ChatClient(app.url, headers={"Host": host})
        await own.connect(origin=origin)
        await own.wait_for(own.assistant_messages, what="the welcome")
        await own.disconnect()


# --- 5. cookies over HTTPS -----------------------------------------------------------------------


async def test_login_cookies_are_secure_when_the_app_is_reached_over_https(accounts_app, app):
    form = b"username=alice&password=alice-password"
    form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
    _, _, _, plain = await asyncio.to_thread(
        request, accounts_app.url, "POST", "/login", form_headers, form
    )
    _, _, _, proxied = await asyncio.to_thread(
        request,
        accounts_app.url,
        "POST",
        "/login",
        {**form_headers, "X-Forwarded-Proto": "https"},
        form,
    )
    assert plain and proxied
    assert not any("secure" in c.lower() for c in plain)  # plain HTTP on a LAN keeps working
    assert all(re.search(r";\s*secure(;|$)", c, re.I) for c in proxied), proxied
    # The page's own login in local mode too.
    _, _, _, page_cookies = await asyncio.to_thread(
        request, app.url, "GET", "/", {"X-Forwarded-Proto": "https"}
    )
    assert page_cookies and all(re.search(r";\s*secure", c, re.I) for c in page_cookies)


# --- contracts with uvicorn and Chainlit ----------------------------------------------------------


def test_uvicorn_reads_the_trusted_proxies_where_the_app_checks_them(monkeypatch):
    """`chainlit run` builds uvicorn's Config without forwarded_allow_ips, so uvicorn takes
    FORWARDED_ALLOW_IPS from the environment, with the default the settings document."""
    import inspect

    import uvicorn
    from chainlit.cli import run_chainlit

    source = inspect.getsource(run_chainlit)
    assert "uvicorn.Config(" in source and "forwarded_allow_ips" not in source
    assert "proxy_headers" not in source  # uvicorn's default: on
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert uvicorn.Config(app=None).forwarded_allow_ips == load_settings({}).forwarded_allow_ips
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    assert uvicorn.Config(app=None).forwarded_allow_ips == "*"
    assert uvicorn.Config(app=None).proxy_headers


def test_chainlit_builds_uvicorn_s_config_at_start_where_the_edge_bounds_it(monkeypatch):
    """`chainlit run` calls ``uvicorn.Config`` by that name after loading the app, without
    ws_max_size: the limit set while the app loads is the one uvicorn's websockets get."""
    import inspect

    import uvicorn
    from chainlit.cli import run_chainlit

    from gemini_chat.edge import bound_websocket_messages

    source = inspect.getsource(run_chainlit)
    assert source.index("load_module(") < source.index("uvicorn.Config(")
    assert "ws_max_size" not in source
    monkeypatch.setattr(uvicorn, "Config", uvicorn.Config)
    bound_websocket_messages(1234)
    bound_websocket_messages(body_limit(10))  # again, as on a reload: not stacked
    assert uvicorn.Config(app=None).ws_max_size == body_limit(10)
    assert uvicorn.Config(app=None, ws_max_size=99).ws_max_size == 99
    assert uvicorn.Config.unbounded.__module__ == "uvicorn.config"


def test_chainlit_still_has_the_routes_the_edge_switches_off(monkeypatch):
    from chainlit.config import config
    from chainlit.server import router

    from gemini_chat.edge import switched_off

    routes = {
        (method, route.path)
        for route in router.routes
        for method in getattr(route, "methods", None) or ()
    }
    # The page uploads to Chainlit's path, where the app's own route now answers.
    assert ("POST", "/project/file") in routes
    assert switched_off("POST", "/project/file") is None
    # Sharing is on with accounts (.chainlit/config.toml), off in local mode (app.py).
    monkeypatch.setattr(config.features, "allow_thread_sharing", False)
    for method, path in [
        ("POST", "/mcp"),
        ("DELETE", "/mcp"),
        ("PUT", "/project/thread/share"),
        ("GET", "/project/share/{thread_id}"),
    ]:
        assert (method, path) in routes, (method, path)
        assert switched_off(method, path.replace("{thread_id}", "t1")), (method, path)
    assert switched_off("POST", "/project/threads") is None
    monkeypatch.setattr(config.features, "allow_thread_sharing", True)
    assert switched_off("PUT", "/project/thread/share") is None
