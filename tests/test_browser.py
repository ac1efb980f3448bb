"""In Debian's Chromium, driven by Playwright: what a person sees in the page."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fake_gemini import Reply, rate_limit_per_minute

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package")
    return CHROMIUM


@pytest.fixture
async def page(app, chromium_path):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_FLAGS
        )
        page = await browser.new_page(viewport={"width": 1100, "height": 760})
        await page.goto(app.url)
        await page.get_by_text("Ask me anything").wait_for(timeout=30_000)
        yield page
        await browser.close()


async def type_and_send(page, text: str) -> None:
    composer = page.locator("#chat-input")
    await composer.fill(text)
    await composer.press("Enter")


async def test_a_typed_message_streams_a_reply_that_renders_as_markdown(page, gemini):
    answer = ["Here", " is", " **bold", " text**", " and", " a", " list:\n\n", "- one\n", "- two\n"]
    gemini.script(Reply(chunks=answer, delay=0.08))
    await type_and_send(page, "Show me some Markdown")

    bold = page.get_by_text("bold text", exact=True)
    await bold.wait_for(timeout=15_000)
    await page.locator("li", has_text="two").wait_for(timeout=15_000)
    # Rendered as Markdown: the words are bold and the asterisks are gone.
    weight = await bold.evaluate("node => getComputedStyle(node).fontWeight")
    assert int(weight) >= 600
    assert await page.get_by_text("**bold").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "reply.png")
    request = (await gemini.arrived(1))[0]
    assert request.conversation[-1] == ("user", "Show me some Markdown")


async def test_a_rate_limit_shows_its_message_in_the_page(page, gemini):
    gemini.script(rate_limit_per_minute("17s"))
    await type_and_send(page, "Hello")

    notice = page.get_by_text("per-minute request limit")
    await notice.wait_for(timeout=15_000)
    assert await notice.is_visible()
    assert "about 17 seconds" in await notice.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "rate-limit.png")
    assert await page.get_by_text("Error code").count() == 0
