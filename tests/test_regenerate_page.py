"""In Chromium: Regenerate on the last answer streams a new one and keeps the earlier one in
view; a cut-off answer offers Continue, and goes on in place."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import expect

from tests.fake_gemini import Reply
from tests.test_browser import reload_chat, type_and_send
from tests.test_page import open_chat, screenshot

pytestmark = pytest.mark.browser

ANSWERS = '.step[data-step-type="assistant_message"]'


async def test_regenerate_streams_a_new_answer_and_the_earlier_one_stays_viewable(
    browser, app, gemini
):
    page = await open_chat(browser, app)
    new_words = [f"fresh{i} " for i in range(30)]
    gemini.script(Reply("The old answer."), Reply(chunks=new_words, delay=0.08))
    await type_and_send(page, "Say something")
    old = page.locator(ANSWERS, has_text="The old answer.").last
    regenerate = old.get_by_role("button", name="Regenerate")
    await expect(regenerate).to_be_visible(timeout=15_000)
    await regenerate.click()

    # The new answer streams (Stop is offered meanwhile) ...
    await page.get_by_text("fresh3", exact=False).wait_for(timeout=15_000)
    await expect(page.locator("#stop-button")).to_be_visible()
    await page.get_by_text("fresh29", exact=False).wait_for(timeout=15_000)
    # ... below the earlier one, which stays on screen, marked, without the button.
    earlier = page.locator(ANSWERS, has_text="Earlier answer").last
    await expect(earlier).to_contain_text("The old answer.")
    await expect(earlier.get_by_role("button", name="Regenerate")).to_have_count(0)
    new = page.locator(ANSWERS, has_text="fresh0").last
    await expect(new.get_by_role("button", name="Regenerate")).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("button", name="Regenerate")).to_have_count(1)
    await screenshot(page, "regenerated.png")
    requests = await gemini.arrived(2)
    assert requests[1].messages == requests[0].messages

    await reload_chat(page)
    await page.get_by_text("fresh29", exact=False).wait_for(timeout=15_000)
    await expect(page.locator(ANSWERS, has_text="Earlier answer")).to_contain_text(
        "The old answer."
    )
    new = page.locator(ANSWERS, has_text="fresh0").last
    await expect(new.get_by_role("button", name="Regenerate")).to_be_visible(timeout=15_000)
    await expect(page.get_by_role("button", name="Regenerate")).to_have_count(1)
    await screenshot(page, "regenerated-after-reload.png")


async def test_a_cut_off_answer_offers_continue_and_goes_on(browser, app, gemini):
    page = await open_chat(browser, app)
    gemini.script(
        Reply(chunks=["The list: one,", " two,"], finish_reason="length"),
        Reply(chunks=[" three,", " four."], delay=0.1),
    )
    await type_and_send(page, "Count to four")
    notice = page.locator(ANSWERS, has_text="length limit").last
    cont = notice.get_by_role("button", name="Continue")
    await expect(cont).to_be_visible(timeout=15_000)
    await expect(page.get_by_text("incomplete reply")).to_be_visible()
    await screenshot(page, "cut-off.png")
    await cont.click()

    answer = page.locator(ANSWERS, has_text="The list:").last
    await expect(answer.locator(".message-content")).to_have_text(
        "The list: one, two, three, four.", timeout=15_000
    )
    await expect(page.get_by_text("length limit")).to_have_count(0)
    await expect(page.get_by_text("incomplete reply")).to_have_count(0)
    await expect(page.get_by_role("button", name="Continue")).to_have_count(0)
    await expect(answer.get_by_role("button", name="Regenerate")).to_be_visible()
    # One usage line, for both parts of the answer.
    await expect(answer.get_by_text(" in · ")).to_have_count(1)
    await screenshot(page, "continued.png")
    continuing = (await gemini.arrived(2))[-1]
    assert continuing.conversation[-2] == ("assistant", "The list: one, two,")


async def test_stop_ends_a_regenerated_answer(browser, app, gemini):
    page = await open_chat(browser, app)
    gemini.script(
        Reply("First take."), Reply(chunks=[f"again{i} " for i in range(200)], delay=0.05)
    )
    await type_and_send(page, "Once more")
    old = page.locator(ANSWERS, has_text="First take.").last
    await old.get_by_role("button", name="Regenerate").click()
    await page.get_by_text("again3", exact=False).wait_for(timeout=15_000)
    await page.locator("#stop-button").click()
    await page.get_by_text("— stopped").wait_for(timeout=10_000)
    await expect(page.get_by_text("again199", exact=False)).to_have_count(0)
    # The stopped answer is the last one: it can be asked again.
    stopped = page.locator(ANSWERS, has_text="again0").last
    await expect(stopped.get_by_role("button", name="Regenerate")).to_be_visible(timeout=10_000)
    request = (await gemini.arrived(2))[-1]
    assert await asyncio.to_thread(request.disconnected.wait, 10)
