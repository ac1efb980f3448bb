"""What the page loads and how it renders text, in Chromium through Chainlit's real frontend;
and the contracts with Chainlit's internals that gemini_chat/frontend.py relies on."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from playwright.async_api import expect

from tests.chromium import ARTIFACTS, clipboard_holds
from tests.fake_gemini import Reply
from tests.test_browser import type_and_send

WELCOME = "Ask me anything"

COLON_QUESTION = "foo:bar baz:qux note:important a:b"
COLON_ANSWER = (
    "foo:bar baz:qux note:important a:b\n\n"
    "At 10:30 open C:\\Users and use std::vector, see https://example.com/a:b?x=1:2\n\n"
    "Inline `key:value` code.\n\n"
    "```\nfence:text std::map\n```"
)
MATH_ANSWER = (
    "The area is $A = \\pi r^2$ for a circle.\n\n"
    "$$\\bar{x}=\\frac{1}{n}\\sum_{i=1}^{n} x_i$$\n\n"
    "It costs $5 and $10, or costs $5-$10 in total.\n\n"
    "Gemini also writes \\(E = mc^2\\) and\n\n"
    "\\[\na^2 + b^2 = c^2\n\\]"
)
PRICES = "It costs $5 and $10, or costs $5-$10 in total."


async def open_chat(browser, app, **context_options):
    context = await browser.new_context(viewport={"width": 1100, "height": 760}, **context_options)
    page = await context.new_page()
    await page.goto(app.url)
    await page.get_by_text(WELCOME).wait_for(timeout=30_000)
    return page


def last_step(page, step_type: str):
    return page.locator(f'.step[data-step-type="{step_type}"] .message-content').last


async def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / name)


# --- A: text after a colon ----------------------------------------------------------------------


@pytest.mark.browser
async def test_text_after_a_colon_shows_in_the_question_and_the_answer(browser, app, gemini):
    page = await open_chat(browser, app, permissions=["clipboard-read", "clipboard-write"])
    gemini.script(Reply(COLON_ANSWER))
    await type_and_send(page, COLON_QUESTION)
    answer = last_step(page, "assistant_message")
    await answer.get_by_text("fence:text", exact=False).wait_for(timeout=15_000)
    await page.locator(".positive-feedback-off").last.wait_for(timeout=15_000)

    question = last_step(page, "user_message")
    assert (await question.inner_text()).strip() == COLON_QUESTION
    shown = await answer.inner_text()
    for line in (
        "foo:bar baz:qux note:important a:b",
        "At 10:30 open C:\\Users and use std::vector, see https://example.com/a:b?x=1:2",
        "fence:text std::map",
    ):
        assert line in shown, f"{line!r} not in {shown!r}"
    assert await answer.locator("code", has_text="key:value").count() >= 1
    # The model received exactly what was typed.
    request = (await gemini.arrived(1))[0]
    assert request.conversation[-1] == ("user", COLON_QUESTION)
    await screenshot(page, "colon-text.png")

    # The copy button copies the answer as written: no escaping was added on the way.
    step = page.locator('.step[data-step-type="assistant_message"]').last
    await step.locator("button:not(.message-content button)").first.click()
    await clipboard_holds(page, COLON_ANSWER)


# --- B: math, and prices that are not math -------------------------------------------------------


@pytest.mark.browser
async def test_formulas_render_with_katex_and_prices_stay_text(browser, app, gemini):
    page = await open_chat(browser, app)
    gemini.script(Reply(MATH_ANSWER))
    await type_and_send(page, "Formulas and prices, please")
    answer = last_step(page, "assistant_message")
    await answer.get_by_text("in total", exact=False).wait_for(timeout=15_000)
    await page.locator(".positive-feedback-off").last.wait_for(timeout=15_000)

    # A, x-bar, E and the Pythagoras line: two inline formulas and two displayed ones.
    await answer.locator(".katex").nth(3).wait_for(timeout=10_000)
    assert await answer.locator(".katex").count() == 4
    assert await answer.locator(".katex-display").count() == 2
    # The TeX source is not shown as text; KaTeX's hidden MathML copy is styled away.
    # The answer is drawn again when it ends, so the style is read with retries on the node shown.
    await expect(answer.locator(".katex-mathml").first).to_have_css("position", "absolute")
    visible_text = await answer.evaluate(
        """n => { const c = n.cloneNode(true);
                  c.querySelectorAll('.katex').forEach(k => k.remove());
                  return c.innerText; }"""
    )
    assert "\\pi" not in visible_text and "$A" not in visible_text and "\\(" not in visible_text
    # Prices are text, exactly as written.
    prices = answer.locator('[role="article"]', has_text="costs")
    assert (await prices.inner_text()).strip() == PRICES
    assert await prices.locator(".katex").count() == 0
    await screenshot(page, "math-and-prices.png")


# Each: the Markdown, the formulas it shows, and its text without them.
DOLLAR_CASES = [
    ("$5 and $10", 0, "$5 and $10"),
    ("costs $5-$10", 0, "costs $5-$10"),
    ("$x$ alone", 1, " alone"),
    ("$ x$ spaced", 0, "$ x$ spaced"),
    ("$x $ spaced", 0, "$x $ spaced"),
    ("$x$5 digit", 0, "$x$5 digit"),
    ("between $a$ and $b$.", 2, "between  and ."),
    ("`$x$` code", 0, "$x$ code"),
    ("\\$5 escaped", 0, "$5 escaped"),
    ("$5, and $x$ later", 0, "$5, and $x$ later"),
    ("\\(a\\) and \\(b\\)", 2, " and "),
    ("a \\\\( b", 0, "a \\( b"),
    ("\\(unclosed", 0, "(unclosed"),
    ("at 10:30 for $5", 0, "at 10:30 for $5"),
]


@pytest.mark.browser
async def test_single_dollars_follow_pandocs_rule(browser, app, gemini):
    page = await open_chat(browser, app)
    answer_text = "\n\n".join(f"Case{n:02d}: {md}" for n, (md, _, _) in enumerate(DOLLAR_CASES))
    gemini.script(Reply(answer_text))
    await type_and_send(page, "Is $5 and $10 the price of $x^2$?")
    answer = last_step(page, "assistant_message")
    await page.locator(".positive-feedback-off").last.wait_for(timeout=15_000)

    seen = []
    for n in range(len(DOLLAR_CASES)):
        paragraph = answer.locator('[role="article"]', has_text=f"Case{n:02d}:")
        shown = (await paragraph.evaluate(WITHOUT_FORMULAS)).removeprefix(f"Case{n:02d}: ")
        seen.append((n, await paragraph.locator(".katex").count(), shown))
    assert seen == [(n, formulas, text) for n, (_, formulas, text) in enumerate(DOLLAR_CASES)]
    # The question is rendered by the same rules, in the browser, from what was typed.
    question = last_step(page, "user_message")
    assert await question.locator(".katex").count() == 1
    assert (await question.evaluate(WITHOUT_FORMULAS)).strip() == "Is $5 and $10 the price of ?"
    await screenshot(page, "dollar-rules.png")
    await question.scroll_into_view_if_needed()
    await screenshot(page, "dollar-question.png")


WITHOUT_FORMULAS = """n => { const c = n.cloneNode(true);
                             c.querySelectorAll('.katex').forEach(k => k.remove());
                             return c.textContent; }"""


# --- C: nothing from any other host --------------------------------------------------------------


def same_host(url: str, app_url: str) -> bool:
    return urlsplit(url).netloc == urlsplit(app_url).netloc


@pytest.mark.browser
async def test_the_page_requests_nothing_from_another_host(browser, app, gemini):
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    page = await context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("websocket", lambda socket: requested.append(socket.url))
    started = time.monotonic()
    await page.goto(app.url, wait_until="load")
    await page.get_by_text(WELCOME).wait_for(timeout=30_000)
    print(f"welcome on screen {time.monotonic() - started:.2f}s after navigation")
    gemini.script(Reply("The area is $A = \\pi r^2$."))
    await type_and_send(page, "Area of a circle?")
    await page.locator(".positive-feedback-off").last.wait_for(timeout=15_000)
    await page.evaluate("document.fonts.ready.then(() => true)")

    def elsewhere() -> list[str]:
        return [url for url in fetched() if not same_host(url, app.url)]

    def fetched() -> list[str]:
        return [url for url in requested if urlsplit(url).scheme in ("http", "https", "ws", "wss")]

    assert elsewhere() == [], "requests to other hosts"

    # Inter is the page's font, loaded from the app.
    family = await page.evaluate("getComputedStyle(document.body).fontFamily")
    assert family.split(",")[0].strip().strip('"') == "Inter", family
    assert await loaded_faces(page, "Inter"), "no Inter font face was loaded"
    assert any(urlsplit(url).path.endswith(".woff2") and "inter" in url for url in fetched())
    # The formula is styled by KaTeX's stylesheet, in KaTeX's own font, loaded from the app.
    formula = last_step(page, "assistant_message").locator(".katex")
    await formula.wait_for(timeout=5_000)
    # Polled in the page: React may re-render the answer (and replace the node) meanwhile.
    await page.wait_for_function(
        """() => [...document.querySelectorAll('.katex')].some(
               n => n.isConnected && getComputedStyle(n).fontFamily.startsWith('KaTeX_Main'))""",
        timeout=10_000,
    )
    await page.wait_for_function(LOADED, arg="KaTeX_Main", timeout=5_000)
    assert any("KaTeX_Main" in url for url in fetched())
    assert elsewhere() == [], "requests to other hosts"
    await screenshot(page, "local-fonts.png")


LOADED = """family => [...document.fonts].some(
               f => f.family.replace(/["']/g, '') === family && f.status === 'loaded')"""


async def loaded_faces(page, family: str) -> list[str]:
    return await page.evaluate(
        """family => [...document.fonts]
             .filter(f => f.family.replace(/["']/g, '') === family && f.status === 'loaded')
             .map(f => f.weight)""",
        family,
    )


@pytest.mark.browser
async def test_the_page_renders_at_once_when_every_other_host_hangs(browser, app, gemini):
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    held = []

    async def hold_other_hosts(route):
        if same_host(route.request.url, app.url):
            await route.continue_()
        else:
            held.append(route)  # never answered: the host hangs

    await context.route("**/*", hold_other_hosts)
    page = await context.new_page()
    started = time.monotonic()
    await page.goto(app.url, wait_until="load", timeout=10_000)
    await page.get_by_text(WELCOME).wait_for(timeout=10_000)
    shown_after = time.monotonic() - started
    print(f"welcome on screen {shown_after:.2f}s after navigation, other hosts hanging")
    assert held == []
    assert shown_after < 8, f"the page took {shown_after:.1f}s to show"
    await screenshot(page, "offline-load.png")
    for route in held:
        await route.abort()


# --- the contracts with Chainlit's internals (gemini_chat/frontend.py) ---------------------------


def chainlit_dist():
    from pathlib import Path

    from chainlit.server import build_dir

    return Path(build_dir)


def test_the_installed_bundle_builds_its_markdown_plugins_as_the_patch_expects():
    from gemini_chat.frontend import PLUGIN_LIST, main_bundle_path, patch_bundle

    path = main_bundle_path((chainlit_dist() / "index.html").read_text(encoding="utf-8"))
    assert path is not None, "index.html no longer names one main bundle"
    source = (chainlit_dist() / path).read_bytes()
    assert len(PLUGIN_LIST.findall(source)) == 1, "the Markdown plugin list moved: see frontend.py"
    patched = patch_bundle(source)
    assert patched.count(b"window.geminiChat.remarkPlugins(") == 1
    assert len(patched) - len(source) < 200  # one small edit, nothing else touched


def test_the_patch_drops_remark_directive_and_hands_math_to_the_app():
    from gemini_chat.frontend import patch_bundle

    minified = (
        b"c=E.useMemo(()=>{let l=[Cur,Gfm,Dir,Alr];return e&&(l=[...l,Mth]),l},[e]);"
        b'return f.jsx(twn,{className:Ae("prose lg:prose-xl",a),remarkPlugins:c'
    )
    patched = patch_bundle(minified)
    assert b"let l=[Cur,Gfm,Alr];" in patched and b"Dir" not in patched
    assert b"window.geminiChat.remarkPlugins(e,Mth,l)" in patched
    assert patch_bundle(minified.replace(b"prose lg:prose-xl", b"prose")) is None
    assert patch_bundle(minified + b";" + minified) is None


def test_a_bundle_without_the_plugin_list_is_served_unchanged_with_an_error(tmp_path, caplog):
    from importlib.metadata import version

    from gemini_chat.frontend import load_bundle

    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(
        '<script type="module" crossorigin src="/assets/index-Other123.js"></script>'
    )
    (tmp_path / "assets" / "index-Other123.js").write_text("let l=[a,b];export{l};")
    with caplog.at_level("ERROR", logger="gemini_chat"):
        assert load_bundle(str(tmp_path)) is None
    assert f"Chainlit {version('chainlit')}" in caplog.text
    assert "not found" in caplog.text


def test_chainlits_page_is_rendered_by_get_html_template_with_the_expected_blocks():
    import chainlit.server as server

    # serve() looks the function up in its module on every request: the wrapper takes effect.
    assert "get_html_template" in server.serve.__code__.co_names
    index_html = (chainlit_dist() / "index.html").read_text(encoding="utf-8")
    # theme.json's custom_fonts replace this block; custom_js goes in before the bundle.
    assert index_html.count("<!-- FONT START -->") == 1
    assert index_html.count("<!-- FONT END -->") == 1
    assert index_html.index("<!-- JS INJECTION PLACEHOLDER -->") < index_html.index(
        '<script type="module"'
    )


def test_the_rewritten_page_names_no_other_host():
    import chainlit.server as server

    from gemini_chat.frontend import OTHER_HOST_LINK, OTHER_HOST_REFERENCE, local_only

    html = getattr(server.get_html_template, "__wrapped__", server.get_html_template)("")
    removed = OTHER_HOST_LINK.findall(html)
    assert removed, "Chainlit's page links no other host any more: is the rewrite still needed?"
    assert OTHER_HOST_REFERENCE.findall(local_only(html)) == []


def test_installing_twice_keeps_one_route_and_one_wrapper(monkeypatch):
    import chainlit.server as server
    from starlette.applications import Starlette

    from gemini_chat.frontend import ROUTE_NAME, install_frontend

    original = getattr(server.get_html_template, "__wrapped__", server.get_html_template)
    monkeypatch.setattr(server, "get_html_template", original)
    app = Starlette()
    install_frontend(app, 100_000)
    install_frontend(app, 100_000)  # `chainlit run -w` prepares the server again
    assert [r.name for r in app.router.routes].count(ROUTE_NAME) == 1
    assert app.router.routes[0].name == ROUTE_NAME
    assert server.get_html_template.__wrapped__ is original


# --- what the running app serves ----------------------------------------------------------------


def fetch(url: str, **headers: str):
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_the_app_serves_the_patched_bundle_at_chainlits_path_with_its_own_etag(app):
    import gzip
    import hashlib

    from gemini_chat.frontend import main_bundle_path

    path = main_bundle_path((chainlit_dist() / "index.html").read_text(encoding="utf-8"))
    status, headers, body = fetch(f"{app.url}/{path}", **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-type"].startswith("text/javascript")
    assert headers["content-encoding"] == "gzip"
    assert headers["cache-control"] == "no-cache"
    source = gzip.decompress(body)
    assert b"window.geminiChat.remarkPlugins(" in source
    etag = headers["etag"]
    assert hashlib.sha256(source).hexdigest()[:32] in etag

    # A browser holding Chainlit's original (Starlette's mtime-size ETag) gets the patched one...
    original = chainlit_dist() / path
    stat = original.stat()
    chainlit_etag = '"' + hashlib.md5(f"{stat.st_mtime}-{stat.st_size}".encode()).hexdigest() + '"'
    status, headers, body = fetch(f"{app.url}/{path}", **{"If-None-Match": chainlit_etag})
    assert status == 200 and b"window.geminiChat" in body
    assert original.read_bytes() != body
    # ...and one holding the patched one is told it is current.
    status, headers, body = fetch(f"{app.url}/{path}", **{"If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert headers["etag"] == etag
    # The security headers still apply (the route sits inside the app's middleware).
    assert "content-security-policy" in {k.lower() for k in headers}


def test_the_served_page_loads_only_from_the_app_and_points_previews_at_it(app):
    from gemini_chat.frontend import OTHER_HOST_REFERENCE

    status, headers, body = fetch(app.url + "/")
    html = body.decode()
    assert status == 200
    assert OTHER_HOST_REFERENCE.findall(html) == []
    assert "fonts.googleapis" not in html and "jsdelivr" not in html
    for stylesheet in ("/public/fonts/inter/inter.css", "/public/katex/katex.min.css"):
        assert f'<link rel="stylesheet" href="{stylesheet}">' in html
    custom_js = html.index('<script src="/public/gemini-chat.js"')
    assert custom_js < html.index('<script type="module"')
    og = dict(re.findall(r'<meta property="og:(\w+)" content="([^"]*)"', html))
    assert og["url"] == "/" and og["image"] == "/public/screenshot.png"
    # The CSP lets the page load its own fonts, styles and scripts.
    policy = {
        part.split()[0]: part.split()[1:]
        for part in headers["content-security-policy"].split(";")
        if part.strip()
    }
    for kind in ("font-src", "style-src", "script-src"):
        sources = policy.get(kind, policy.get("default-src"))
        assert sources is None or "'self'" in sources, (kind, sources)
    for asset in (
        "/public/gemini-chat.js",
        "/public/fonts/inter/inter.css",
        "/public/fonts/inter/inter-latin-400-normal.woff2",
        "/public/katex/katex.min.css",
        "/public/katex/fonts/KaTeX_Main-Regular.woff2",
        "/public/screenshot.png",
    ):
        assert fetch(app.url + asset)[0] == 200, asset


def test_katexs_stylesheet_is_the_version_chainlit_renders_with():
    from pathlib import Path

    from gemini_chat.frontend import main_bundle_path

    root = Path(__file__).resolve().parent.parent
    path = main_bundle_path((chainlit_dist() / "index.html").read_text(encoding="utf-8"))
    bundled = set(
        re.findall(rb'="(\d+\.\d+\.\d+)",[\w$]+=\{Span:', (chainlit_dist() / path).read_bytes())
    )
    css = (root / "public" / "katex" / "katex.min.css").read_text()
    fonts = {p.name for p in (root / "public" / "katex" / "fonts").iterdir()}
    assert bundled == {b"0.16.22"}
    assert set(re.findall(r"url\(fonts/([\w-]+\.woff2)\)", css)) == fonts
