"""Downloading and sharing a chat as a person does it, in Chromium through Chainlit's real
frontend, with two accounts: alice's chat, bob in a browser context of his own."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.chromium import ARTIFACTS, clipboard_holds
from tests.fake_gemini import Reply
from tests.test_accounts import SECRET, accounts_command
from tests.test_browser import type_and_send

pytestmark = pytest.mark.browser

WELCOME = "Ask me anything"
QUESTION = "Plan a *small* garden: 3 beds?"
ANSWER = "Here is a plan:\n\n- **Beds**: tomatoes, beans\n- Water at 7:30\n\n`soil:loam`"


@pytest.fixture
async def accounts_app(tmp_path, start_app_with, gemini):
    database_url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    for name in ("alice", "bob"):
        added = accounts_command(database_url, "add", name, password=f"{name}-password")
        assert added.returncode == 0, added.stderr
    return start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)


async def logged_in(browser, app, name: str):
    """A browser context of its own for ``name``, logged in, on a new chat."""
    context = await browser.new_context(
        viewport={"width": 1100, "height": 760},
        permissions=["clipboard-read", "clipboard-write"],
        accept_downloads=True,
    )
    page = await context.new_page()
    await page.goto(app.url)
    await page.get_by_label("User name").fill(name)
    await page.locator("#password").fill(f"{name}-password")
    await page.get_by_role("button", name="Sign In").click()
    await page.get_by_text(WELCOME).wait_for(timeout=30_000)
    return page


async def chat_once(page, gemini) -> str:
    """One question answered; returns the chat's id, once the page shows the stored chat."""
    gemini.script(Reply(ANSWER))
    await type_and_send(page, QUESTION)
    await page.get_by_text("soil:loam").wait_for(timeout=15_000)
    await page.wait_for_url("**/thread/*", timeout=15_000)
    # The answer is finished once its thumbs are there.
    await page.locator(".positive-feedback-off").last.wait_for(timeout=15_000)
    return page.url.rsplit("/", 1)[1]


async def nothing_shown(page, app) -> None:
    """The share page found no chat: the page says so and goes back to a new chat of the
    viewer's own, none of the chat shown."""
    await page.wait_for_url(f"{app.url}/", timeout=15_000)
    await page.get_by_text(WELCOME).wait_for(timeout=15_000)
    assert await page.get_by_text("soil:loam").count() == 0
    assert await page.get_by_text("garden: 3 beds").count() == 0


async def download(page, item: str) -> tuple[str, str]:
    """Open the header's download menu, pick ``item``; the file's name and text."""
    await page.locator("#export-chat-button").click()
    async with page.expect_download() as event:
        await page.locator(item).click()
    file = await event.value
    path = Path(await file.path())
    return file.suggested_filename, await asyncio.to_thread(path.read_text, encoding="utf-8")


async def test_the_owner_downloads_a_chat_as_markdown_and_json(browser, accounts_app, gemini):
    page = await logged_in(browser, accounts_app, "alice")
    # A new chat has nothing stored to download yet.
    assert await page.locator("#export-chat-button").count() == 0
    thread = await chat_once(page, gemini)
    button = page.locator("#export-chat-button")
    await expect(button).to_have_attribute("aria-label", "Download this chat")
    await button.click()
    menu = page.locator("#export-chat-menu")
    await expect(menu.get_by_role("menuitem")).to_have_text(["Markdown (.md)", "JSON (.json)"])
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "export-menu.png")
    await page.keyboard.press("Escape")
    await expect(menu).to_have_count(0)

    name, markdown = await download(page, "#export-chat-markdown")
    assert name == "Plan-a-small-garden-3-beds.md"
    assert markdown == f"# {QUESTION}\n\n## You\n\n{QUESTION}\n\n## Gemini\n\n{ANSWER}\n"

    name, text = await download(page, "#export-chat-json")
    assert name == "Plan-a-small-garden-3-beds.json"
    document = json.loads(text)
    assert document["id"] == thread and document["name"] == QUESTION
    question, answer = document["messages"]
    assert (question["role"], question["content"]) == ("user", QUESTION)
    assert (answer["role"], answer["content"], answer["status"]) == (
        "assistant",
        ANSWER,
        "complete",
    )
    assert answer["metadata"]["for"] == question["id"]
    assert re.match(r"\d{4}-\d\d-\d\dT", question["createdAt"])
    assert question["createdAt"] <= answer["createdAt"]


async def test_a_shared_link_shows_the_chat_read_only_until_its_owner_revokes_it(
    browser, accounts_app, gemini
):
    alice = await logged_in(browser, accounts_app, "alice")
    thread = await chat_once(alice, gemini)
    bob = await logged_in(browser, accounts_app, "bob")
    link = f"{accounts_app.url}/share/{thread}"

    # Not shared yet: the link shows bob nothing of hers.
    await bob.goto(link)
    await nothing_shown(bob, accounts_app)

    # Alice shares it from the header: the dialog shows the link and copies it.
    await alice.locator("#header button:has(svg.lucide-share2)").click()
    dialog = alice.get_by_role("dialog")
    await expect(dialog.get_by_text("Share link to chat")).to_be_visible()
    await expect(dialog.locator("span[title]")).to_have_text(
        re.compile(rf"/share/{thread}$"), timeout=10_000
    )
    shown_link = await dialog.locator("span[title]").inner_text()
    await dialog.get_by_role("button", name="Share", exact=True).click()
    await alice.get_by_text("Share link created!").wait_for(timeout=10_000)
    await clipboard_holds(alice, shown_link)
    await alice.keyboard.press("Escape")

    # Bob opens it: her messages, read-only: no message box, no download, no way to send.
    await bob.goto(shown_link)
    await bob.get_by_text("soil:loam").wait_for(timeout=15_000)
    await expect(bob.locator(".step[data-step-type='user_message']")).to_contain_text(["Plan a"])
    assert await bob.locator("#chat-input").count() == 0
    assert await bob.locator("#chat-submit").count() == 0
    assert await bob.locator("#export-chat-button").count() == 0
    await bob.screenshot(path=ARTIFACTS / "shared-read-only.png")

    # Alice revokes it; the link stops working.
    await alice.locator("#header button:has(svg.lucide-share2)").click()
    await alice.get_by_role("dialog").get_by_role("button", name="Unshare").click()
    await alice.get_by_text("Sharing turned off for this chat").wait_for(timeout=10_000)
    await bob.reload()
    await nothing_shown(bob, accounts_app)
    # Nothing bob did reached Gemini, nor her chat.
    assert len(await gemini.arrived(1)) == 1


async def test_local_mode_downloads_a_chat_and_offers_no_sharing(browser, app, gemini):
    context = await browser.new_context(
        viewport={"width": 1100, "height": 760}, accept_downloads=True
    )
    page = await context.new_page()
    await page.goto(app.url)
    await page.get_by_text(WELCOME).wait_for(timeout=30_000)
    await chat_once(page, gemini)
    await page.locator("#export-chat-button").wait_for(timeout=10_000)
    # One user, nobody to share with: no Share button beside the download.
    assert await page.locator("#header button:has(svg.lucide-share2)").count() == 0
    name, markdown = await download(page, "#export-chat-markdown")
    assert name == "Plan-a-small-garden-3-beds.md"
    assert markdown == f"# {QUESTION}\n\n## You\n\n{QUESTION}\n\n## Gemini\n\n{ANSWER}\n"
