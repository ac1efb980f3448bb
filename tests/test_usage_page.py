"""In Chromium: the token usage under each answer and the chat's total, live and after a
reload; the copy button still copies the answer alone."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.chromium import clipboard_holds
from tests.fake_gemini import Reply
from tests.test_browser import reload_chat, type_and_send
from tests.test_page import open_chat, screenshot

pytestmark = pytest.mark.browser


def answer_step(page, text: str):
    return page.locator('.step[data-step-type="assistant_message"]', has_text=text).last


async def test_each_answer_shows_its_usage_and_the_chat_its_total_also_after_reload(
    browser, app, gemini
):
    page = await open_chat(browser, app, permissions=["clipboard-read", "clipboard-write"])
    gemini.script(
        Reply(
            "Paris is the capital.", prompt_tokens=1234, completion_tokens=56, thinking_tokens=789
        ),
        Reply("Lyon is second.", prompt_tokens=2000, completion_tokens=10, thinking_tokens=0),
    )
    await type_and_send(page, "Capital of France?")
    first = answer_step(page, "Paris is the capital.")
    usage = first.get_by_text("1,234 in · 56 out · 789 thinking", exact=True)
    await expect(usage).to_be_visible(timeout=15_000)
    total = first.get_by_text("2,079 tokens in this chat", exact=True)
    await expect(total).to_be_visible()
    # Discreet: small, muted, not bold; outside the answer's text.
    await expect(usage).to_have_css("font-size", "12px")
    await expect(usage).to_have_css("font-weight", "400")
    await expect(usage).to_have_css("cursor", "default")
    assert await first.locator(".message-content").inner_text() == "Paris is the capital."
    await screenshot(page, "usage.png")

    # The copy button copies the answer only.
    await first.locator("button:not(.message-content button)").first.click()
    await clipboard_holds(page, "Paris is the capital.")

    await type_and_send(page, "And the second city?")
    second = answer_step(page, "Lyon is second.")
    await expect(second.get_by_text("2,000 in · 10 out", exact=True)).to_be_visible(timeout=15_000)
    await expect(second.get_by_text("4,089 tokens in this chat", exact=True)).to_be_visible()
    # The total moved to the last answer.
    await expect(first.get_by_text("tokens in this chat")).to_have_count(0)
    await expect(usage).to_be_visible()

    await reload_chat(page)
    first, second = answer_step(page, "Paris is the capital."), answer_step(page, "Lyon is")
    await expect(first.get_by_text("1,234 in · 56 out · 789 thinking")).to_be_visible(
        timeout=15_000
    )
    await expect(second.get_by_text("2,000 in · 10 out", exact=True)).to_be_visible()
    await expect(second.get_by_text("4,089 tokens in this chat", exact=True)).to_be_visible()
    await expect(first.get_by_text("tokens in this chat")).to_have_count(0)
    await screenshot(page, "usage-after-reload.png")


async def test_an_answer_without_reported_usage_shows_no_figures(browser, app, gemini):
    page = await open_chat(browser, app)
    gemini.script(Reply("No figures here.", usage=False))
    await type_and_send(page, "Hello")
    step = answer_step(page, "No figures here.")
    await expect(step.get_by_role("button", name="Regenerate")).to_be_visible(timeout=15_000)
    await expect(step.get_by_text(" in · ")).to_have_count(0)
    await expect(step.get_by_text("tokens in this chat")).to_have_count(0)
