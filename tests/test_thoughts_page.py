"""Thinking, shown, in Chromium through Chainlit's real frontend: the step above the answer,
live while the model thinks, folded to "Thought for N s" once the answer starts, kept on
reload; none at all with SHOW_THOUGHTS=false."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.chromium import ARTIFACTS, clipboard_holds, launch_chromium
from tests.fake_gemini import Reply
from tests.test_browser import answer_buttons, reload_chat, type_and_send
from tests.test_page import last_step, open_chat

pytestmark = pytest.mark.browser

THOUGHTS = [
    "**Weighing the question**\n\n",
    "Otters are mustelids ",
    "that rest on the water; ",
    "they hold paws so they do not drift apart. ",
    "A short answer will do.",
]
THOUGHT_TEXT = "they hold paws so they do not drift apart."
ANSWER = "Otters hold hands while they sleep."
TITLE = re.compile(r"^\s*Thought for \d+ s$")


def thinking_step(page):
    return page.locator('.step[data-step-type="llm"]')


def step_title(page):
    return thinking_step(page).locator("button").first


async def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / name)


async def above(page, upper, lower) -> bool:
    top = await upper.bounding_box()
    bottom = await lower.bounding_box()
    return top is not None and bottom is not None and top["y"] + top["height"] <= bottom["y"]


async def test_thoughts_show_live_fold_above_the_answer_and_stay_after_reload(browser, app, gemini):
    page = await open_chat(browser, app, permissions=["clipboard-read", "clipboard-write"])
    gemini.script(Reply(ANSWER, thoughts=THOUGHTS, delay=0.4))
    await type_and_send(page, "Why do otters hold hands?")

    # While thinking: the step is open, titled "Thinking…", its text arriving.
    await expect(step_title(page)).to_have_text("Thinking…", timeout=15_000)
    await (
        thinking_step(page)
        .get_by_text("Otters are mustelids", exact=False)
        .wait_for(timeout=15_000)
    )
    await screenshot(page, "thinking-live.png")

    # The answer starts: the step folds to its duration, the answer has no thought in it.
    answer = last_step(page, "assistant_message")
    await answer.get_by_text(ANSWER).wait_for(timeout=15_000)
    await expect(step_title(page)).to_have_text(TITLE, timeout=10_000)
    await expect(thinking_step(page).get_by_text(THOUGHT_TEXT, exact=False)).to_have_count(0)
    await expect(answer).to_have_text(ANSWER)
    assert await above(page, thinking_step(page), answer)
    await page.locator(".positive-feedback-off").last.wait_for(timeout=15_000)
    assert await answer_buttons(page, ANSWER).count() == 3
    await screenshot(page, "thought-folded.png")

    # Opened, it shows the whole summary, as Markdown.
    await step_title(page).click()
    await expect(thinking_step(page).get_by_text(THOUGHT_TEXT, exact=False)).to_be_visible()
    bold = thinking_step(page).get_by_text("Weighing the question", exact=True)
    await expect(bold).to_have_css("font-weight", re.compile(r"^[6-9]00$"))
    # Unfolded all the way (its last line is no longer clipped) before the picture.
    last_line = thinking_step(page).get_by_text("A short answer will do.")
    await expect(last_line).to_be_in_viewport(ratio=1)
    await screenshot(page, "thought-open.png")

    # Reloaded: still there, folded, above its answer, which keeps copy and thumbs.
    await reload_chat(page)
    answer = last_step(page, "assistant_message")
    await answer.get_by_text(ANSWER).wait_for(timeout=15_000)
    await expect(step_title(page)).to_have_text(TITLE, timeout=10_000)
    await expect(thinking_step(page).get_by_text(THOUGHT_TEXT, exact=False)).to_have_count(0)
    assert await above(page, thinking_step(page), answer)
    await page.locator(".positive-feedback-off").last.wait_for(timeout=15_000)
    assert await answer_buttons(page, ANSWER).count() == 3
    assert await thinking_step(page).locator(".positive-feedback-off").count() == 0
    await step_title(page).click()
    await expect(thinking_step(page).get_by_text(THOUGHT_TEXT, exact=False)).to_be_visible()
    await expect(answer).to_have_text(ANSWER)
    await expect(last_line).to_be_in_viewport(ratio=1)
    await screenshot(page, "thought-after-reload.png")
    # The answer's copy button copies the answer alone.
    reply = page.locator('.step[data-step-type="assistant_message"]').last
    await reply.locator("button:not(.message-content button)").first.click()
    await clipboard_holds(page, ANSWER)  # the answer alone

    # The model was asked for thoughts, and the next turn sends none back.
    gemini.script(Reply("Beavers build dams."))
    await type_and_send(page, "And beavers?")
    await page.get_by_text("Beavers build dams.").wait_for(timeout=15_000)
    first, second = await gemini.arrived(2)
    assert first.body["extra_body"]["google"]["thinking_config"]["include_thoughts"] is True
    assert "mustelids" not in str(second.body["messages"])
    assert second.conversation[1:] == [
        ("user", "Why do otters hold hands?"),
        ("assistant", ANSWER),
        ("user", "And beavers?"),
    ]


async def test_stop_while_thinking_leaves_the_step_saying_so_also_after_reload(page, gemini):
    thoughts = [f"Step {i} of a long thought. " for i in range(100)]
    gemini.script(Reply(ANSWER, thoughts=thoughts, delay=0.1))
    await type_and_send(page, "Think for a long time")
    await thinking_step(page).get_by_text("Step 3 of", exact=False).wait_for(timeout=15_000)
    await page.locator("#stop-button").click()
    await expect(step_title(page)).to_have_text("Stopped while thinking", timeout=10_000)
    await page.get_by_text("Stopped before any answer").wait_for(timeout=10_000)
    await screenshot(page, "stopped-while-thinking.png")
    await reload_chat(page)
    await page.get_by_text("Stopped before any answer").wait_for(timeout=15_000)
    await expect(step_title(page)).to_have_text("Stopped while thinking", timeout=10_000)
    await step_title(page).click()
    await thinking_step(page).get_by_text("Step 3 of", exact=False).wait_for(timeout=10_000)
    assert await thinking_step(page).get_by_text("Step 99 of", exact=False).count() == 0


async def test_a_dropped_connection_while_thinking_shows_the_step_cut_off_and_a_notice(
    page, gemini
):
    # Thoughts as other compatible servers send them (reasoning_content), then the line drops.
    gemini.script(
        Reply(chunks=[], thoughts=THOUGHTS, thought_shape="reasoning_content", ending="drop")
    )
    await type_and_send(page, "Why do otters hold hands?")
    await expect(step_title(page)).to_have_text("Thinking cut off", timeout=15_000)
    await page.get_by_text("connection to Gemini", exact=False).wait_for(timeout=15_000)
    await step_title(page).click()
    await expect(thinking_step(page).get_by_text(THOUGHT_TEXT, exact=False)).to_be_visible()
    # No thought leaked into a message: only the welcome and the notice are messages.
    messages = page.locator('.step[data-step-type="assistant_message"]')
    assert await messages.count() == 2
    assert await messages.filter(has_text="mustelids").count() == 0
    await screenshot(page, "thinking-cut-off.png")
    # The next message works, and nothing of the failed turn is sent.
    gemini.script(Reply("Recovered."))
    await type_and_send(page, "Try again")
    await page.get_by_text("Recovered.").wait_for(timeout=15_000)
    second = (await gemini.arrived(2))[1]
    assert second.conversation[1:] == [("user", "Try again")]


async def test_with_show_thoughts_off_no_step_is_shown_and_none_asked_for(
    start_app_with, chromium_path, gemini
):
    app = start_app_with(SHOW_THOUGHTS="false")
    async with launch_chromium(chromium_path) as browser:
        page = await browser.new_page(viewport={"width": 1100, "height": 760})
        await page.goto(app.url)
        await page.get_by_text("Ask me anything").wait_for(timeout=30_000)
        gemini.script(Reply(ANSWER, thoughts=THOUGHTS, delay=0.1))
        await type_and_send(page, "Why do otters hold hands?")
        answer = last_step(page, "assistant_message")
        await answer.get_by_text(ANSWER).wait_for(timeout=15_000)
        await page.locator(".positive-feedback-off").last.wait_for(timeout=15_000)
        assert await thinking_step(page).count() == 0
        assert await page.get_by_text("Thought for", exact=False).count() == 0
        assert await page.get_by_text("mustelids", exact=False).count() == 0
        await screenshot(page, "thoughts-off.png")
    (request,) = await gemini.arrived(1)
    assert "extra_body" not in request.body
