"""The chat settings panel in Chromium, through Chainlit's real frontend: a person picks a model,
moves the temperature, sets a thinking level and writes instructions; Gemini receives exactly
those; the panel shows them again after a reload and when the chat is reopened from the sidebar."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from gemini_chat.config import DEFAULT_INSTRUCTIONS
from gemini_chat.preferences import SEPARATOR
from tests.chromium import ARTIFACTS
from tests.fake_gemini import Reply
from tests.test_browser import type_and_send
from tests.test_preferences import thinking_config

pytestmark = pytest.mark.browser

WELCOME = "Ask me anything"


async def open_panel(page):
    await page.locator("#chat-settings-open-modal").click()
    panel = page.locator("#chat-settings")
    await panel.wait_for(timeout=10_000)
    return panel


async def choose(page, select_id: str, option: str) -> None:
    await page.locator(f"#chat-settings #{select_id}").click()
    await page.get_by_role("option", name=option, exact=True).click()


async def confirm(page) -> None:
    await page.locator("#chat-settings #confirm").click()
    await page.locator("#chat-settings").wait_for(state="hidden", timeout=10_000)


async def expect_panel_shows(page, model: str, temperature: str, thinking: str, text: str):
    panel = await open_panel(page)
    await expect(panel.locator("#model")).to_have_text(model)
    await expect(panel.get_by_role("slider")).to_have_attribute("aria-valuenow", temperature)
    await expect(panel.locator("#thinking_level")).to_have_text(thinking)
    await expect(panel.locator("#instructions")).to_have_value(text)


async def close_panel(page) -> None:
    await page.locator("#chat-settings").get_by_role("button", name="Cancel").click()
    await page.locator("#chat-settings").wait_for(state="hidden", timeout=10_000)


def assert_chosen_values_sent(request) -> None:
    assert request.body["model"] == "gemini-3.5-flash"
    assert request.body["temperature"] == 0.3
    assert thinking_config(request) == {"thinking_level": "high"}
    assert "reasoning_effort" not in request.body
    assert request.messages[0] == {
        "role": "system",
        "content": DEFAULT_INSTRUCTIONS + SEPARATOR + "Answer in French.",
    }


async def test_settings_chosen_in_the_panel_reach_gemini_and_stay_with_the_chat(page, gemini):
    panel = await open_panel(page)
    await expect(panel.locator("#model")).to_have_text("gemini-3.8-flash")
    await choose(page, "model", "gemini-3.5-flash")
    slider = panel.get_by_role("slider")
    await expect(slider).to_have_attribute("aria-valuenow", "1")
    await slider.focus()
    for _ in range(7):
        await slider.press("ArrowLeft")
    await expect(slider).to_have_attribute("aria-valuenow", "0.3")
    await choose(page, "thinking_level", "High")
    await panel.locator("#instructions").fill("Answer in French.")
    ARTIFACTS.mkdir(exist_ok=True)
    await expect(panel).to_have_css("opacity", "1")
    await page.screenshot(path=ARTIFACTS / "settings-panel.png")
    await confirm(page)

    gemini.script(Reply("Bonjour !"))
    await type_and_send(page, "Hello")
    await page.get_by_text("Bonjour !").wait_for(timeout=15_000)
    assert_chosen_values_sent((await gemini.arrived(1))[0])

    # A reload: the panel shows the chat's values, and the next message uses them.
    await page.wait_for_url("**/thread/*", timeout=15_000)
    thread_id = page.url.rsplit("/", 1)[1]
    await page.reload()
    await page.get_by_text("Bonjour !").wait_for(timeout=15_000)
    await expect_panel_shows(page, "gemini-3.5-flash", "0.3", "High", "Answer in French.")
    await close_panel(page)
    gemini.script(Reply("Encore bonjour."))
    await type_and_send(page, "Again")
    await page.get_by_text("Encore bonjour.").wait_for(timeout=15_000)
    assert_chosen_values_sent((await gemini.arrived(2))[-1])

    # A new chat starts from the defaults.
    await page.locator("#header #new-chat-button").click()
    await page.get_by_role("button", name="Confirm").click()
    await page.get_by_text(WELCOME).wait_for(timeout=15_000)
    await expect_panel_shows(page, "gemini-3.8-flash", "1", "Model default", "")
    await close_panel(page)

    # Reopened from the sidebar, the chat has its values again.
    await page.locator("#header #sidebar-trigger-button").click()
    await page.locator(f"#thread-{thread_id}").click()
    await page.get_by_text("Encore bonjour.").wait_for(timeout=15_000)
    await expect_panel_shows(page, "gemini-3.5-flash", "0.3", "High", "Answer in French.")
    # The levels offered are the chosen model's: 3.5 Flash also takes "Minimal".
    await page.locator("#chat-settings #thinking_level").click()
    await page.get_by_role("option", name="Minimal", exact=True).wait_for(timeout=5_000)
    await page.keyboard.press("Escape")
    await expect(page.locator("#chat-settings")).to_have_css("opacity", "1")
    await page.screenshot(path=ARTIFACTS / "settings-panel-reopened.png")
    await close_panel(page)
    gemini.script(Reply("Toujours là."))
    await type_and_send(page, "Still there?")
    await page.get_by_text("Toujours là.").wait_for(timeout=15_000)
    request = (await gemini.arrived(3))[-1]
    assert_chosen_values_sent(request)
    assert request.conversation[1:] == [
        ("user", "Hello"),
        ("assistant", "Bonjour !"),
        ("user", "Again"),
        ("assistant", "Encore bonjour."),
        ("user", "Still there?"),
    ]


async def test_instructions_over_the_limit_are_refused_with_a_notice(page, gemini):
    panel = await open_panel(page)
    await panel.locator("#instructions").fill("Be brief.")
    await confirm(page)
    panel = await open_panel(page)
    await panel.locator("#instructions").fill("x" * 8_001)
    await choose(page, "model", "gemini-3.7-flash")
    await confirm(page)

    notice = page.get_by_text("Your chat settings were not changed")
    await notice.wait_for(timeout=10_000)
    assert await notice.inner_text() == (
        "Your chat settings were not changed: the instructions are 8,001 characters long; "
        "the limit is 8,000. The previous settings still apply."
    )
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "settings-refused.png")
    # The panel shows the values still in force, and Gemini gets those.
    await expect_panel_shows(page, "gemini-3.8-flash", "1", "Model default", "Be brief.")
    await close_panel(page)
    await type_and_send(page, "Hi")
    await page.get_by_text("Echo: Hi").wait_for(timeout=15_000)
    request = (await gemini.arrived(1))[0]
    assert request.body["model"] == "gemini-3.8-flash"
    assert request.messages[0]["content"] == DEFAULT_INSTRUCTIONS + SEPARATOR + "Be brief."
