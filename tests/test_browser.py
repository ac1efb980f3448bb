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


async def test_log_in_chat_reload_and_continue_a_chat_from_the_sidebar(
    chromium_path, start_app_with, gemini, tmp_path
):
    from playwright.async_api import async_playwright

    from tests.test_accounts import SECRET, accounts_command

    database_url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    assert accounts_command(database_url, "add", "alice", password="alice-password").returncode == 0
    app = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_FLAGS
        )
        page = await browser.new_page(viewport={"width": 1100, "height": 760})
        await page.goto(app.url)
        await page.get_by_label("User name").fill("alice")
        await page.locator("#password").fill("alice-password")
        await page.get_by_role("button", name="Sign In").click()
        await page.get_by_text("Ask me anything").wait_for(timeout=30_000)

        gemini.script(Reply("Otters hold hands while they sleep."))
        await type_and_send(page, "Tell me about otters")
        await page.get_by_text("Otters hold hands while they sleep.").wait_for(timeout=15_000)
        await page.wait_for_url("**/thread/*", timeout=15_000)
        thread_id = page.url.rsplit("/", 1)[1]

        # A reload brings the chat back.
        await page.reload()
        await page.get_by_text("Otters hold hands while they sleep.").wait_for(timeout=15_000)

        # A new chat, then the old one opened again from the sidebar.
        await page.locator("#header #new-chat-button").click()
        await page.get_by_role("button", name="Confirm").click()
        await page.get_by_text("Ask me anything").wait_for(timeout=15_000)
        await page.locator("#header #sidebar-trigger-button").click()
        entry = page.locator(f"#thread-{thread_id}")
        await entry.wait_for(timeout=15_000)
        assert "Tell me about otters" in await entry.inner_text()
        await entry.click()
        await page.get_by_text("Otters hold hands while they sleep.").wait_for(timeout=15_000)

        # And it continues with its history.
        gemini.script(Reply("Beavers build dams."))
        await type_and_send(page, "And beavers?")
        await page.get_by_text("Beavers build dams.").wait_for(timeout=15_000)
        # The earlier turn is still on the page (the new question is scrolled to the top).
        earlier = page.get_by_text("Otters hold hands while they sleep.")
        await earlier.scroll_into_view_if_needed()
        assert await earlier.is_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "resumed.png")
        await browser.close()

    request = (await gemini.arrived(2))[-1]
    assert request.conversation[1:] == [
        ("user", "Tell me about otters"),
        ("assistant", "Otters hold hands while they sleep."),
        ("user", "And beavers?"),
    ]
