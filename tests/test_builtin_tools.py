"""The built-in tools: the time in a zone, the calculator, and the web page fetcher's address
policy, limits and text, each called as the model calls it (JSON arguments through the SDK)."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import re
import socket
import zoneinfo
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from agents import FunctionTool
from agents.tool_context import ToolContext
from aiohttp import web

from gemini_chat import builtin_tools
from gemini_chat.builtin_tools import (
    BUILTIN_TOOLS,
    ToolError,
    build_builtin_tools,
    calculation,
    time_in_zone,
)
from gemini_chat.config import ConfigError, Settings
from gemini_chat.tools import build_tools
from gemini_chat.webfetch import FetchError, _PublicResolver, fetch_readable

MOMENT = datetime(2026, 12, 1, 15, 19, 23, tzinfo=UTC)


async def invoke(tool: FunctionTool, arguments: dict) -> str:
    """Call ``tool`` as the SDK does when the model asks for it: JSON arguments, a tool context."""
    text = json.dumps(arguments)
    context = ToolContext(
        context=None, tool_name=tool.name, tool_call_id="call_test", tool_arguments=text
    )
    return await tool.on_invoke_tool(context, text)


# --- time ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("Europe/Oslo", "Tuesday 2026-12-01 16:19:23 CET (UTC+01:00), Europe/Oslo"),
        ("America/New_York", "Tuesday 2026-12-01 10:19:23 EST (UTC-05:00), America/New_York"),
        ("Asia/Kolkata", "Tuesday 2026-12-01 20:49:23 IST (UTC+05:30), Asia/Kolkata"),
        ("Pacific/Kiritimati", "Wednesday 2026-12-02 05:19:23 +14 (UTC+14:00), Pacific/Kiritimati"),
        ("UTC", "Tuesday 2026-12-01 15:19:23 UTC (UTC+00:00), UTC"),
        ("", "Tuesday 2026-12-01 15:19:23 UTC (UTC+00:00), UTC"),
        # The model often gets the case wrong; the zone is still the right one.
        ("europe/oslo", "Tuesday 2026-12-01 16:19:23 CET (UTC+01:00), Europe/Oslo"),
    ],
)
def test_time_in_zone_gives_weekday_date_time_and_offset(zone, expected):
    assert time_in_zone(zone, MOMENT) == expected


def test_time_in_zone_follows_daylight_saving():
    summer = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert time_in_zone("Europe/Oslo", summer) == (
        "Wednesday 2026-07-01 14:00:00 CEST (UTC+02:00), Europe/Oslo"
    )


@pytest.mark.parametrize(
    ("zone", "suggestion"),
    [("Oslo", " Did you mean Europe/Oslo?"), ("new york", " Did you mean America/New_York?")],
)
def test_a_city_instead_of_a_zone_is_an_error_naming_the_zone(zone, suggestion):
    with pytest.raises(ToolError) as raised:
        time_in_zone(zone, MOMENT)
    assert str(raised.value) == (
        f"Unknown time zone {zone!r}: use an IANA zone name (Area/City) such as Europe/Oslo, "
        f"America/New_York, Asia/Tokyo or UTC.{suggestion}"
    )


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "x" * 5000])
def test_an_unknown_zone_is_an_error_saying_how_zones_are_named(zone):
    with pytest.raises(ToolError, match=r"^Unknown time zone '.{1,100}': use an IANA zone name"):
        time_in_zone(zone, MOMENT)


def test_time_zones_come_with_the_app_on_a_machine_without_system_zones():
    """A slim container has no /usr/share/zoneinfo: the tzdata package supplies the zones."""
    zoneinfo.reset_tzpath(to=[])
    zoneinfo.ZoneInfo.clear_cache()
    builtin_tools._zones_by_lowercase.cache_clear()
    try:
        assert "Europe/Oslo" in zoneinfo.available_timezones()
        assert time_in_zone("europe/oslo", MOMENT) == (
            "Tuesday 2026-12-01 16:19:23 CET (UTC+01:00), Europe/Oslo"
        )
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache()
        builtin_tools._zones_by_lowercase.cache_clear()


async def test_the_time_tool_reads_the_clock_and_defaults_to_utc(monkeypatch):
    monkeypatch.setattr(builtin_tools, "now", lambda: MOMENT)
    tool = BUILTIN_TOOLS["time"]
    assert tool.name == "current_time"
    # Optional for the model: no zone means UTC.
    assert tool.params_json_schema.get("required", []) == []
    assert await invoke(tool, {"zone": "Asia/Tokyo"}) == (
        "Wednesday 2026-12-02 00:19:23 JST (UTC+09:00), Asia/Tokyo"
    )
    assert await invoke(tool, {}) == "Tuesday 2026-12-01 15:19:23 UTC (UTC+00:00), UTC"
    with pytest.raises(ToolError, match="Unknown time zone 'Atlantis'"):
        await invoke(tool, {"zone": "Atlantis"})


# --- calculator ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 + 2", "4"),
        ("0.1 + 0.2", "0.3"),
        ("(2 + 3) * sqrt(16) / 7", "2.85714285714286"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("10 / 4", "2.5"),
        ("2 ** 10", "1024"),
        ("-2 ** 2", "-4"),
        ("(-2) ** 2", "4"),
        ("2 ** -2", "0.25"),
        ("1.07 ** 10 * 2500", "4917.87839322392"),
        ("sqrt(2)", "1.4142135623731"),
        ("sin(pi / 2) + cos(0)", "2"),
        ("log(e)", "1"),
        ("log(8, 2)", "3"),
        ("log10(1000)", "3"),
        ("factorial(20)", "2432902008176640000"),
        ("round(2.567, 2)", "2.57"),
        ("abs(-3.5)", "3.5"),
        ("floor(-2.5) + ceil(2.1)", "0"),
        ("degrees(pi)", "180"),
        ("2 ** 64", "18446744073709551616"),
        ("1e300 * 1e-300", "1"),
    ],
)
def test_calculator_gives_exact_values(expression, value):
    assert calculation(expression) == value


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("1 / 0", "division by zero."),
        ("5 // 0", "division by zero."),
        ("5 % 0", "division by zero."),
        ("2 +", "not an arithmetic expression ("),
        ("2 + 2 =", "not an arithmetic expression ("),
        ("x + 1", "unknown name 'x'; use numbers, + - * / // % ** (power), parentheses, sqrt,"),
        ("2 ^ 10", "only numbers, + - * / // % ** (power), parentheses"),
        ("sqrt(-1)", "a function was given a value outside its domain"),
        ("sqrt", "sqrt is a function: call it, as in sqrt(2)."),
        ("exp(1000)", "the result is too large."),
        ("1e308 * 10", "the result is too large for a number."),
        ("(-8) ** (1 / 3)", "the result is not a real number."),
        ("1j", "the result is not a real number."),
    ],
)
def test_calculator_explains_what_it_cannot_calculate(expression, reason):
    with pytest.raises(ToolError) as raised:
        calculation(expression)
    assert str(raised.value).startswith(f"Could not calculate {expression!r}: {reason}")


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        # Each would take minutes, gigabytes, or run code, if evaluated as Python does.
        ("9 ** 9 ** 9", "the result is too large (more than about 1,200 digits)."),
        ("2 ** 4001", "the result is too large (more than about 1,200 digits)."),
        ("(10 ** 1000) ** 1000", "the result is too large (more than about 1,200 digits)."),
        ("10 ** 1000 * 10 ** 1000", "the result is too large (more than about 1,200 digits)."),
        ("factorial(100000)", "factorial takes a whole number from 0 to 170."),
        ("round(5, -10 ** 9)", "round takes a whole number of digits from -30 to 30."),
        ("sin(10 ** 1000)", "the result is too large."),
        ("'a' * 10 ** 9", "only numbers can be calculated."),
        ("[1] * 10 ** 9", "only numbers, + - * / // % ** (power)"),
        ("__import__('os')", "unknown name '__import__'"),
        ("__import__('os').system('true')", "only numbers, + - * / // % ** (power)"),
        ("(1).__class__.__bases__", "only numbers, + - * / // % ** (power)"),
        ("[x for x in range(10 ** 9)]", "only numbers, + - * / // % ** (power)"),
        ("sqrt(x=4)", "only numbers, + - * / // % ** (power)"),
        ("sqrt(4)(2)", "only numbers, + - * / // % ** (power)"),
        ("lambda: 1", "only numbers, + - * / // % ** (power)"),
        ("1 if 2 > 1 else 0", "only numbers, + - * / // % ** (power)"),
        ("True + 1", "only numbers can be calculated."),
        ("-" * 900 + "1", "the expression is nested too deeply."),
    ],
)
def test_calculator_refuses_expressions_that_would_hog_the_machine(expression, reason):
    with pytest.raises(ToolError) as raised:
        calculation(expression)
    assert str(raised.value).startswith("Could not calculate ")
    assert reason in str(raised.value)


def test_calculator_refuses_long_input_without_reading_it():
    with pytest.raises(ToolError) as raised:
        calculation("1+" * 50_000 + "1")
    assert str(raised.value) == "The expression is longer than 1,000 characters."


async def test_the_calculator_tool_takes_the_models_json():
    tool = BUILTIN_TOOLS["calculator"]
    assert tool.name == "calculate"
    assert tool.params_json_schema["required"] == ["expression"]
    assert await invoke(tool, {"expression": "(1 + 2) * 3 ** 2"}) == "27"
    with pytest.raises(ToolError, match=r"^Could not calculate '1/0': division by zero\.$"):
        await invoke(tool, {"expression": "1/0"})


# --- fetch: the address policy -------------------------------------------------------------------


async def fetch(url: str, **options) -> str:
    options.setdefault("max_bytes", 100_000)
    options.setdefault("seconds", 10)
    return await fetch_readable(url, **options)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1/", "Refused: 127.0.0.1 is a loopback address."),
        ("http://127.5.6.7:8000/x", "Refused: 127.5.6.7 is a loopback address."),
        ("http://[::1]/", "Refused: ::1 is a loopback address."),
        (
            "http://169.254.169.254/latest/meta-data/",
            "Refused: 169.254.169.254 is a link-local address.",
        ),
        ("http://10.1.2.3/", "Refused: 10.1.2.3 is a private address."),
        ("http://172.16.0.1/", "Refused: 172.16.0.1 is a private address."),
        ("https://192.168.1.1/admin", "Refused: 192.168.1.1 is a private address."),
        ("http://100.64.0.1/", "Refused: 100.64.0.1 is a shared (carrier-grade NAT) address."),
        ("http://224.0.0.1/", "Refused: 224.0.0.1 is a multicast address."),
        ("http://0.0.0.0/", "Refused: 0.0.0.0 is an unspecified address."),
        ("http://[::]/", "Refused: :: is an unspecified address."),
        ("http://[fe80::1]/", "Refused: fe80::1 is a link-local address."),
        ("http://[fd00::1]/", "Refused: fd00::1 is a private address."),
        ("http://[ff02::1]/", "Refused: ff02::1 is a multicast address."),
        ("http://[fec0::1]/", "Refused: fec0::1 is a site-local address."),
        ("http://[64:ff9b:1::a00:1]/", "Refused: 64:ff9b:1::a00:1 is a private address."),
        (
            "http://[::127.0.0.1]/",
            "Refused: ::7f00:1 is an IPv4-compatible form of 127.0.0.1, a loopback address.",
        ),
        ("http://192.0.2.1/", "Refused: 192.0.2.1 is a reserved address, not a public one."),
        ("http://[2001:db8::1]/", "Refused: 2001:db8::1 is a reserved address, not a public one."),
        (
            "http://[::ffff:127.0.0.1]/",
            "Refused: ::ffff:127.0.0.1 is an IPv4-mapped form of 127.0.0.1, a loopback address.",
        ),
        (
            "http://[::ffff:169.254.169.254]/",
            "Refused: ::ffff:169.254.169.254 is an IPv4-mapped form of 169.254.169.254, "
            "a link-local address.",
        ),
        (
            "http://[2002:a00:1::]/",
            "Refused: 2002:a00:1:: is a 6to4 form of 10.0.0.1, a private address.",
        ),
        (
            "http://[64:ff9b::7f00:1]/",
            "Refused: 64:ff9b::7f00:1 is a NAT64 form of 127.0.0.1, a loopback address.",
        ),
        ("http://2130706433/", "Refused: 2130706433 means 127.0.0.1, a loopback address."),
        ("http://0177.0.0.1/", "Refused: 0177.0.0.1 means 127.0.0.1, a loopback address."),
        ("http://0x7f.1/", "Refused: 0x7f.1 means 127.0.0.1, a loopback address."),
        ("http://0xa9fea9fe/", "Refused: 0xa9fea9fe means 169.254.169.254, a link-local address."),
        ("http://8.8.8.8.in-addr/", None),  # a name, not an address: resolved (and not found)
        (
            "file:///etc/passwd",
            "Refused: only http:// and https:// pages can be fetched, not file:.",
        ),
        (
            "ftp://example.com/",
            "Refused: only http:// and https:// pages can be fetched, not ftp:.",
        ),
        ("example.com", "Refused: only http:// and https:// pages can be fetched, not no scheme."),
    ],
)
async def test_fetch_refuses_addresses_that_are_not_public(url, message):
    with pytest.raises(FetchError) as raised:
        await fetch(url)
    if message is None:
        assert str(raised.value).startswith("Could not find the host 8.8.8.8.in-addr")
    else:
        assert str(raised.value) == message


async def test_fetch_refuses_a_name_that_resolves_to_loopback():
    with pytest.raises(FetchError) as raised:
        await fetch("http://localhost:9/")
    assert re.fullmatch(
        r"Refused: localhost resolves to (127\.0\.0\.1|::1), a loopback address\.",
        str(raised.value),
    )


@dataclass
class ScriptedResolver:
    """Answers every lookup with ``addresses``."""

    addresses: list[str]

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {"hostname": host, "host": address, "port": port, "family": 0, "proto": 0, "flags": 0}
            for address in self.addresses
        ]

    async def close(self):
        pass


@pytest.mark.parametrize(
    "addresses", [["10.0.0.7"], ["93.184.215.14", "10.0.0.7"], ["2606:4700::1", "::1"]]
)
async def test_fetch_refuses_a_name_if_any_of_its_addresses_is_not_public(addresses):
    resolver = _PublicResolver(allowed=(), resolver=ScriptedResolver(addresses))
    with pytest.raises(FetchError, match=r"^Refused: example\.org resolves to (10\.0\.0\.7|::1)"):
        await resolver.resolve("example.org", 80)


async def test_fetch_passes_on_a_names_public_addresses_to_connect_to():
    public = ["93.184.215.14", "2606:4700::1"]
    resolver = _PublicResolver(allowed=(), resolver=ScriptedResolver(public))
    assert [result["host"] for result in await resolver.resolve("example.org", 80)] == public


# --- fetch: against a local server ---------------------------------------------------------------

# The test server listens on 127.0.0.2 and only that address is let through, so everything
# else on loopback (127.0.0.1, localhost) stays refused, as in the app.
TEST_HOST = "127.0.0.2"
ALLOW_TEST_HOST = (ipaddress.ip_network(f"{TEST_HOST}/32"),)

ARTICLE = """<!doctype html><html><head><meta charset="utf-8">
<title>Blåbær – the page</title></head><body>
<header><nav><a href="/home">Home</a> <a href="/about">About us</a></nav></header>
<main><article><h1>Blueberries</h1>{paragraphs}
<p>Read <a href="https://example.org/jam">the jam recipe</a> next.</p></article></main>
<aside>Subscribe to our newsletter!</aside><footer>Copyright 2026 Berry Corp</footer>
<script>trackVisitor();</script></body></html>"""
PARAGRAPHS = "".join(
    f"<p>Paragraph {n}: blueberries grow in Norwegian forests and ripen in late summer.</p>"
    for n in range(1, 7)
)


@dataclass
class PageServer:
    """A local web server whose routes the test defines; remembers each request's headers."""

    base: str = ""
    requests: list[web.Request] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def server() -> AsyncIterator[tuple[PageServer, Callable[[str, Callable], None]]]:
    state = PageServer()
    app = web.Application()

    @web.middleware
    async def remember(request, handler):
        state.requests.append(request)
        return await handler(request)

    app.middlewares.append(remember)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)

    def route(path: str, handler: Callable) -> None:
        app.router.add_get(path, handler)

    yield state, route, runner
    state.released.set()
    await runner.cleanup()


async def start(state: PageServer, runner: web.AppRunner) -> PageServer:
    await runner.setup()
    site = web.TCPSite(runner, TEST_HOST, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    state.base = f"http://{TEST_HOST}:{port}"
    return state


def html(text: str, charset: str | None = "utf-8", **headers) -> web.Response:
    content_type = "text/html" + (f"; charset={charset}" if charset else "")
    return web.Response(
        body=text.encode(charset or "utf-8"), headers={"Content-Type": content_type, **headers}
    )


async def test_fetch_gives_the_title_and_main_text_of_a_page(server):
    state, route, runner = server
    route("/berries", lambda request: html(ARTICLE.format(paragraphs=PARAGRAPHS)))
    await start(state, runner)

    text = await fetch(state.base + "/berries", allowed=ALLOW_TEST_HOST)

    lines = text.splitlines()
    assert lines[:4] == [
        "Title: Blåbær – the page",
        f"URL: {state.base}/berries",
        "",
        "# Blueberries",
    ]
    assert "Paragraph 6: blueberries grow in Norwegian forests and ripen in late summer." in text
    assert lines[-1] == "Read the jam recipe next."
    for boilerplate in ("About us", "newsletter", "Berry Corp", "trackVisitor"):
        assert boilerplate not in text
    request = state.requests[0]
    assert request.headers["User-Agent"].startswith("gemini-chat-fetch/1.0")


async def test_fetch_keeps_links_when_asked(server):
    state, route, runner = server
    route("/berries", lambda request: html(ARTICLE.format(paragraphs=PARAGRAPHS)))
    await start(state, runner)

    text = await fetch(state.base + "/berries", links=True, allowed=ALLOW_TEST_HOST)

    assert text.splitlines()[-1] == "Read [the jam recipe](https://example.org/jam) next."


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        # The server's charset wins; a page without one is read by its <meta charset>, then UTF-8.
        ("Blåbærsyltetøy".encode("latin-1"), "text/plain; charset=iso-8859-1", "Blåbærsyltetøy"),
        ("Grüße".encode(), "text/plain", "Grüße"),
        (
            '{"berry": "blåbær", "ripe": true}'.encode(),
            "application/json",
            '{"berry": "blåbær", "ripe": true}',
        ),
        ("Сибирь".encode("koi8-r"), "text/plain; charset=koi8-r", "Сибирь"),
    ],
)
async def test_fetch_decodes_text_by_its_charset(server, body, content_type, expected):
    state, route, runner = server
    route("/doc", lambda request: web.Response(body=body, headers={"Content-Type": content_type}))
    await start(state, runner)

    text = await fetch(state.base + "/doc", allowed=ALLOW_TEST_HOST)

    assert text == f"URL: {state.base}/doc\n\n{expected}"


async def test_fetch_reads_an_html_pages_meta_charset(server):
    state, route, runner = server
    page = ARTICLE.replace('charset="utf-8"', 'charset="windows-1252"').format(
        paragraphs=PARAGRAPHS + "<p>Crème brûlée for dessert, naïvely.</p>"
    )
    route(
        "/old",
        lambda request: web.Response(
            body=page.replace("–", "-").encode("cp1252"), content_type="text/html"
        ),
    )
    await start(state, runner)

    text = await fetch(state.base + "/old", allowed=ALLOW_TEST_HOST)

    assert "Crème brûlée for dessert, naïvely." in text
    assert text.startswith("Title: Blåbær - the page\n")


@pytest.mark.parametrize(
    "content_type", ["image/png", "application/pdf", "application/octet-stream"]
)
async def test_fetch_refuses_content_that_is_not_text(server, content_type):
    state, route, runner = server
    route("/file", lambda request: web.Response(body=b"\x89PNG\r\n", content_type=content_type))
    await start(state, runner)

    with pytest.raises(FetchError) as raised:
        await fetch(state.base + "/file", allowed=ALLOW_TEST_HOST)
    assert str(raised.value) == (
        f"Refused: {state.base}/file is {content_type}, not a text page "
        "(this tool reads HTML, plain text and JSON)."
    )


async def test_fetch_reports_an_error_status(server):
    state, route, runner = server
    route("/gone", lambda request: web.Response(status=404, text="nothing here"))
    await start(state, runner)

    with pytest.raises(FetchError) as raised:
        await fetch(state.base + "/gone", allowed=ALLOW_TEST_HOST)
    assert str(raised.value) == f"{state.base}/gone answered 404 Not Found."


async def test_fetch_follows_redirects_without_keeping_cookies(server):
    state, route, runner = server

    async def first(request):
        raise web.HTTPFound("/second", headers={"Set-Cookie": "session=secret; Path=/"})

    route("/first", first)
    route("/second", lambda request: web.Response(text="Arrived.", content_type="text/plain"))
    await start(state, runner)
    # A name, not an address: cookies are kept for names only.
    url = state.base.replace(TEST_HOST, "berries.test") + "/first"

    text = await fetch(url, allowed=ALLOW_TEST_HOST, resolver=ScriptedResolver([TEST_HOST]))

    assert text == f"URL: {url.replace('/first', '/second')}\n\nArrived."
    assert [request.path for request in state.requests] == ["/first", "/second"]
    assert "Cookie" not in state.requests[1].headers


@dataclass
class RebindingResolver:
    """Answers a name with the test server the first time and loopback from then on, as a DNS
    server of an attacker's name can."""

    answers: list[str] = field(default_factory=lambda: [TEST_HOST, "127.0.0.1"])

    async def resolve(self, host, port=0, family=socket.AF_INET):
        address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return await ScriptedResolver([address]).resolve(host, port, family)

    async def close(self):
        pass


async def test_fetch_checks_a_names_address_again_on_each_connection(server):
    state, route, runner = server

    async def first(request):
        # Connection: close, so the next hop needs a new connection and a new lookup.
        raise web.HTTPFound("/second", headers={"Connection": "close"})

    route("/first", first)
    route("/second", lambda request: web.Response(text="internal", content_type="text/plain"))
    await start(state, runner)
    url = state.base.replace(TEST_HOST, "rebind.test") + "/first"

    with pytest.raises(FetchError) as raised:
        await fetch(url, allowed=ALLOW_TEST_HOST, resolver=RebindingResolver())
    assert str(raised.value) == "Refused: rebind.test resolves to 127.0.0.1, a loopback address."
    assert [request.path for request in state.requests] == ["/first"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("http://127.0.0.1:{port}/secret", "Refused: 127.0.0.1 is a loopback address."),
        (
            "http://169.254.169.254/latest/meta-data/",
            "Refused: 169.254.169.254 is a link-local address.",
        ),
        (
            "http://[::ffff:127.0.0.1]:{port}/",
            "Refused: ::ffff:127.0.0.1 is an IPv4-mapped form of 127.0.0.1, a loopback address.",
        ),
        ("http://2130706433:{port}/", "Refused: 2130706433 means 127.0.0.1, a loopback address."),
        (
            "file:///etc/passwd",
            "Refused: only http:// and https:// pages can be fetched, not file:.",
        ),
    ],
)
async def test_fetch_refuses_a_redirect_to_an_address_that_is_not_public(server, target, message):
    state, route, runner = server

    async def redirect(request):
        raise web.HTTPFound(target.format(port=request.url.port))

    route("/jump", redirect)
    await start(state, runner)

    with pytest.raises(FetchError) as raised:
        await fetch(state.base + "/jump", allowed=ALLOW_TEST_HOST)
    assert str(raised.value) == message


async def test_fetch_refuses_a_redirect_to_a_name_that_resolves_to_loopback(server):
    state, route, runner = server

    async def redirect(request):
        raise web.HTTPFound(f"http://localhost:{request.url.port}/secret")

    route("/jump", redirect)
    await start(state, runner)

    with pytest.raises(
        FetchError,
        match=r"^Refused: localhost resolves to (127\.0\.0\.1|::1), a loopback address\.$",
    ):
        await fetch(state.base + "/jump", allowed=ALLOW_TEST_HOST)


async def test_fetch_stops_following_endless_redirects(server):
    state, route, runner = server

    async def again(request):
        raise web.HTTPFound(f"/loop?n={int(request.query.get('n', 0)) + 1}")

    route("/loop", again)
    await start(state, runner)

    with pytest.raises(FetchError) as raised:
        await fetch(state.base + "/loop", allowed=ALLOW_TEST_HOST)
    assert str(raised.value) == f"Refused: {state.base}/loop redirects more than 5 times."
    assert len(state.requests) == 6


async def test_fetch_reads_a_10_mb_page_only_up_to_the_size_limit(server):
    state, route, runner = server
    chunk = ("<p>" + "berry " * 10_000 + "</p>\n").encode()

    async def huge(request):
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        sent = 0
        while sent < 10_000_000:
            await response.write(chunk)
            sent += len(chunk)
        return response

    route("/huge", huge)
    await start(state, runner)

    text = await fetch(state.base + "/huge", max_bytes=150_000, allowed=ALLOW_TEST_HOST)

    body = text.split("\n\n", 1)[1].rsplit("\n\n", 1)[0]
    assert len(body.encode()) == 150_000
    assert text.endswith("\n\n[The page is longer: only its first 150,000 bytes were read.]")


async def test_fetch_counts_the_size_limit_after_decompression(server):
    state, route, runner = server
    # 20 MB of text in about 20 kB of gzip: the limit holds for what it unpacks to.
    bomb = gzip.compress(b"a" * 20_000_000)

    async def packed(request):
        return web.Response(
            body=bomb, headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"}
        )

    route("/packed", packed)
    await start(state, runner)

    text = await fetch(state.base + "/packed", max_bytes=50_000, allowed=ALLOW_TEST_HOST)

    assert text == (
        f"URL: {state.base}/packed\n\n"
        + "a" * 50_000
        + "\n\n[The page is longer: only its first 50,000 bytes were read.]"
    )


async def test_fetch_stops_reading_a_page_that_never_ends(server):
    state, route, runner = server

    async def endless(request):
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        while True:  # until the client goes away
            await response.write(b"more " * 1000)

    route("/endless", endless)
    await start(state, runner)

    # Were reading not stopped at the limit, this would end in the time limit's error instead.
    text = await fetch(
        state.base + "/endless", max_bytes=20_000, seconds=30, allowed=ALLOW_TEST_HOST
    )

    assert text.endswith("[The page is longer: only its first 20,000 bytes were read.]")


async def test_fetch_gives_up_on_a_server_that_hangs(server):
    state, route, runner = server

    async def hang(request):
        await state.released.wait()
        return web.Response(text="too late")

    route("/hang", hang)
    await start(state, runner)

    with pytest.raises(FetchError) as raised:
        await fetch(state.base + "/hang", seconds=0.5, allowed=ALLOW_TEST_HOST)
    assert str(raised.value) == f"Timed out: {state.base}/hang did not answer within 0.5 s."


async def test_the_apps_fetch_tool_refuses_loopback_even_where_a_test_server_listens(server):
    """The fetch_page tool the app builds has no allowance: the test server is out of its reach."""
    state, route, runner = server
    route("/page", lambda request: web.Response(text="private", content_type="text/plain"))
    await start(state, runner)
    tool = build_builtin_tools(Settings())["fetch"]
    assert tool.name == "fetch_page"
    assert tool.params_json_schema.get("required") == ["url"]

    with pytest.raises(ToolError) as raised:
        await invoke(tool, {"url": state.base + "/page"})
    assert str(raised.value) == f"Refused: {TEST_HOST} is a loopback address."
    with pytest.raises(ToolError) as raised:
        await invoke(tool, {"url": "http://127.0.0.1/"})
    assert str(raised.value) == "Refused: 127.0.0.1 is a loopback address."
    assert state.requests == []


async def test_the_fetch_tool_uses_the_size_and_time_limits_of_the_settings(server, monkeypatch):
    state, route, runner = server
    route("/page", lambda request: web.Response(text="berry " * 1000, content_type="text/plain"))
    await start(state, runner)
    calls = []

    async def recorded(url, **options):
        calls.append(options)
        return await fetch_readable(url, **options, allowed=ALLOW_TEST_HOST)

    monkeypatch.setattr(builtin_tools, "fetch_readable", recorded)
    settings = Settings(
        tools=("time", "calculator", "fetch"), fetch_max_bytes=1000, tool_timeout=10
    )
    tool = next(tool for tool in build_tools(settings) if tool.name == "fetch_page")

    text = await invoke(tool, {"url": state.base + "/page"})

    assert calls == [{"max_bytes": 1000, "seconds": 8.0, "links": False}]
    assert text.endswith("[The page is longer: only its first 1,000 bytes were read.]")


def test_build_tools_offers_the_built_ins_switched_on_by_name():
    tools = build_tools(Settings(tools=("fetch", "time")))
    assert [tool.name for tool in tools] == ["fetch_page", "current_time"]
    assert [tool.name for tool in build_tools(Settings())] == ["current_time", "calculate"]


def test_an_unknown_built_in_is_a_configuration_error_listing_the_built_ins():
    with pytest.raises(ConfigError) as raised:
        build_tools(Settings(tools=("time", "clock")))
    assert str(raised.value) == (
        "TOOLS='time,clock' is not valid: unknown tool 'clock' "
        "(built-in tools: time, calculator, fetch)."
    )


async def test_fetch_says_when_nothing_answers_at_the_address():
    with socket.socket() as probe:
        probe.bind((TEST_HOST, 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there

    with pytest.raises(FetchError) as raised:
        await fetch(f"http://{TEST_HOST}:{port}/", allowed=ALLOW_TEST_HOST)
    assert str(raised.value).startswith(f"Could not connect to {TEST_HOST}: ")
    assert str(raised.value).endswith(".")


# --- in the app: the built-ins as the model calls them through the real chat ---------------------


@pytest.fixture(scope="module")
def builtins_app(fake_gemini_server):
    from tests.app_process import start_app
    from tests.conftest import app_env

    server = start_app(
        app_env(
            fake_gemini_server,
            TOOLS="time,calculator,fetch",
            # Allow / Deny is shown and tested with the chat's steps; here every call runs.
            TOOL_APPROVAL="none",
        )
    )
    yield server
    server.stop()


async def test_the_app_offers_the_built_ins_and_hands_gemini_their_results(builtins_app, gemini):
    from tests.chat_client import ChatClient
    from tests.fake_gemini import Reply, ToolCall, tool_call_reply

    client = await ChatClient(builtins_app.url).connect()
    try:
        await client.wait_for(client.assistant_messages, what="the welcome message")
        gemini.script(
            tool_call_reply(
                ToolCall("calculate", {"expression": "1.07 ** 10 * 2500"}, id="call_sum"),
                ToolCall("current_time", {"zone": "Europe/Oslo"}, id="call_time"),
                ToolCall("fetch_page", {"url": "http://127.0.0.1:8000/admin"}, id="call_page"),
                shape="openai",
            ),
            Reply("Here you are."),
        )
        replies = await client.ask("How much, what time, and what is on that page?")
        asked_at = datetime.now(UTC)
        first, second = await gemini.arrived(2)
    finally:
        await client.disconnect()

    assert [m.content for m in replies if not m.is_error] == ["Here you are."]
    assert [tool["function"]["name"] for tool in first.body["tools"]] == [
        "current_time",
        "calculate",
        "fetch_page",
    ]
    results = {m["tool_call_id"]: m["content"] for m in second.messages if m["role"] == "tool"}
    assert results["call_sum"] == "4917.87839322392"
    shown = re.fullmatch(
        r"\w+day (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) CES?T \(UTC\+0[12]:00\), Europe/Oslo",
        results["call_time"],
    )
    assert shown, results["call_time"]
    oslo = datetime.fromisoformat(shown.group(1)).replace(tzinfo=zoneinfo.ZoneInfo("Europe/Oslo"))
    assert abs((asked_at - oslo).total_seconds()) < 60
    # The refusal reaches the model in words it can act on (the guard may frame it).
    assert "Refused: 127.0.0.1 is a loopback address." in results["call_page"], results["call_page"]
