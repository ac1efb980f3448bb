"""In Debian's Chromium, driven by Playwright: what a person sees in the page."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import expect

from tests.chromium import ARTIFACTS, launch_chromium
from tests.db import eventually
from tests.fake_gemini import Reply, rate_limit_per_minute

pytestmark = pytest.mark.browser


async def type_and_send(page, text: str, timeout: float = 15.0) -> None:
    composer = page.locator("#chat-input")
    submit = page.locator("#chat-submit")
    questions = page.locator('.step[data-step-type="user_message"]')
    shown = await questions.count()
    # As a person waits for the send button: until the previous task has ended (shortly after
    # its answer shows), the button is Stop, or a disabled send button while the chat's first
    # exchange is still being stored, and Enter sends nothing. The page draws its message box
    # again when a new chat gets its address, which empties it, and Enter pressed while it does
    # sends nothing: as a person would, the message is typed and sent again until it shows.
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await composer.input_value() != text:
            await composer.fill(text)
        try:
            await expect(submit).to_be_enabled(timeout=2_000)
            await composer.press("Enter")
            await expect(questions).to_have_count(shown + 1, timeout=5_000)
            return
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise


async def asked_on_page(page, gemini, question: str, answer: str):
    """Type ``question`` on the page, with ``answer`` scripted for it; once the answer shows,
    the request the fake Gemini received for it."""
    count = len(gemini.requests) + 1
    gemini.script(Reply(answer))
    await type_and_send(page, question)
    await page.get_by_text(answer).wait_for(timeout=15_000)
    return (await gemini.arrived(count))[-1]


async def reload_chat(page) -> None:
    """Reload the page once it shows the chat at its own address, as a person reloads a chat:
    before the first exchange is stored, the page is still at "/", and a reload there opens a
    new chat."""
    await page.wait_for_url("**/thread/*", timeout=15_000)
    await page.reload()


async def test_a_typed_message_streams_a_reply_that_renders_as_markdown(page, gemini):
    answer = ["Here", " is", " **bold", " text**", " and", " a", " list:\n\n", "- one\n", "- two\n"]
    gemini.script(Reply(chunks=answer, delay=0.08))
    await type_and_send(page, "Show me some Markdown")

    bold = page.get_by_text("bold text", exact=True)
    await bold.wait_for(timeout=15_000)
    await page.locator("li", has_text="two").wait_for(timeout=15_000)
    # Rendered as Markdown: the words are bold and the asterisks are gone.
    await expect(bold).to_have_css("font-weight", re.compile(r"^[6-9]00$"))
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
    from tests.test_accounts import SECRET, accounts_command

    database_url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    assert accounts_command(database_url, "add", "alice", password="alice-password").returncode == 0
    app = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)

    async with launch_chromium(chromium_path) as browser:
        page = await browser.new_page(viewport={"width": 1100, "height": 760})
        await page.goto(app.url)
        await page.get_by_label("User name").fill("alice")
        await page.locator("#password").fill("alice-password")
        await page.get_by_role("button", name="Sign In").click()
        await page.get_by_text("Ask me anything").wait_for(timeout=30_000)
        # With accounts, the user menu (and its Logout) is there.
        await page.locator("#user-nav-button").wait_for(timeout=10_000)

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
        # Opened from the sidebar, the answer still has its copy and thumbs buttons.
        await answer_buttons(page, "Otters hold hands").nth(2).wait_for(timeout=10_000)
        assert await answer_buttons(page, "Otters hold hands").count() == 3

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

    request = (await gemini.arrived(2))[-1]
    assert request.conversation[1:] == [
        ("user", "Tell me about otters"),
        ("assistant", "Otters hold hands while they sleep."),
        ("user", "And beavers?"),
    ]


# --- the message buttons: copy and thumbs, live and on a reopened chat --------------------------


async def stored_feedback(app) -> list[tuple]:
    from tests.db import query

    return await query(
        f"sqlite+aiosqlite:///{app.directory}/chats.db",
        'SELECT f."value", f."comment", s."type", s."name" FROM feedbacks f '
        'JOIN steps s ON s."id" = f."forId"',
    )


def answer_buttons(page, answer: str):
    """The copy and thumbs buttons under the message that shows ``answer`` (not the actions
    beside them, such as Regenerate or the usage line: Chainlit gives those their id)."""
    message = page.locator(".step", has_text=answer).last
    return message.locator("button:not([id])")


async def test_thumbs_and_a_comment_are_stored_and_still_shown_after_reload(page, gemini, app):
    gemini.script(Reply("Paris is the capital of France."))
    await type_and_send(page, "Capital of France?")
    await page.get_by_text("Paris is the capital of France.").wait_for(timeout=15_000)

    thumbs_up = page.locator(".positive-feedback-off").last
    await thumbs_up.wait_for(timeout=15_000)
    await thumbs_up.click()
    await page.get_by_placeholder("Your feedback...").fill("Short and right")
    await page.locator("#submit-feedback").click()
    await page.locator(".positive-feedback-on").wait_for(timeout=10_000)

    rows = await eventually(lambda: stored_feedback(app), what="the stored feedback")
    assert [(v, c) for v, c, _, _ in rows] == [(1, "Short and right")]
    # No error toast ("Message not found") appeared.
    assert await page.get_by_text("not found", exact=False).count() == 0

    await reload_chat(page)
    await page.get_by_text("Paris is the capital of France.").wait_for(timeout=15_000)
    await page.locator(".positive-feedback-on").wait_for(timeout=15_000)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "feedback-after-reload.png")


async def test_a_reopened_chat_keeps_the_copy_and_thumbs_buttons(page, gemini):
    gemini.script(Reply("First answer."), Reply("Second answer."))
    await type_and_send(page, "One")
    await page.get_by_text("First answer.").wait_for(timeout=15_000)
    await page.locator(".positive-feedback-off").first.wait_for(timeout=15_000)
    await type_and_send(page, "Two")
    await page.get_by_text("Second answer.").wait_for(timeout=15_000)
    await page.locator(".positive-feedback-off").nth(1).wait_for(timeout=15_000)
    live = await page.locator(".positive-feedback-off").count()
    assert live == 2  # one pair of thumbs per answer, none on the welcome

    await page.wait_for_url("**/thread/*", timeout=15_000)
    await page.reload()
    await page.get_by_text("Second answer.").wait_for(timeout=15_000)
    await page.locator(".positive-feedback-off").nth(1).wait_for(timeout=15_000)
    assert await page.locator(".positive-feedback-off").count() == live
    assert await page.locator(".negative-feedback-off").count() == live
    # Copy buttons too: every answer has copy, thumbs up and thumbs down.
    for answer in ("First answer.", "Second answer."):
        assert await answer_buttons(page, answer).count() == 3, answer


# --- stop ---------------------------------------------------------------------------------------


async def test_stop_leaves_one_mark_on_the_partial_answer_also_after_reload(page, gemini):
    words = [f"word{i} " for i in range(200)]
    gemini.script(Reply(chunks=words, delay=0.05))
    await type_and_send(page, "Count slowly")
    await page.get_by_text("word3", exact=False).wait_for(timeout=15_000)
    await page.locator("#stop-button").click()
    mark = page.get_by_text("— stopped")
    await mark.wait_for(timeout=10_000)

    async def notices() -> tuple[int, int]:
        return (
            await page.get_by_text("stopped", exact=False).count(),
            await page.get_by_text("Task manually stopped").count(),
        )

    assert await notices() == (1, 0)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "stopped.png")
    await reload_chat(page)
    await page.get_by_text("word3", exact=False).wait_for(timeout=15_000)
    await mark.wait_for(timeout=10_000)
    assert await notices() == (1, 0)


async def test_stop_before_any_text_shows_one_mark(page, gemini):
    gemini.script(Reply("Too late.", first_delay=30))
    await type_and_send(page, "Take your time")
    await page.locator("#stop-button").wait_for(timeout=10_000)
    await page.locator("#stop-button").click()
    await page.get_by_text("Stopped before any answer").wait_for(timeout=10_000)
    assert await page.get_by_text("stopped", exact=False).count() == 1
    assert await page.get_by_text("Task manually stopped").count() == 0


# --- an answer that is still streaming, seen from a reloaded page or a second tab -------------


def counted_words(count: int) -> list[str]:
    return [f"w{i:03d} " for i in range(count)]


async def test_a_reload_mid_answer_shows_the_text_so_far_and_the_rest_live(page, gemini, app):
    import time

    words = counted_words(80)
    gemini.script(Reply(chunks=words, delay=0.08))  # about 6.5 s of streaming
    await type_and_send(page, "Count for me")
    await page.get_by_text("w010", exact=False).wait_for(timeout=15_000)
    await page.wait_for_url("**/thread/*", timeout=15_000)

    reloaded = time.monotonic()
    await page.reload()
    # The text so far is there at once, not only when the answer is over...
    await page.get_by_text("w012", exact=False).wait_for(timeout=10_000)
    shown_after = time.monotonic() - reloaded
    await page.locator("#stop-button").wait_for(timeout=5_000)  # it is still being written
    assert await page.get_by_text("w079", exact=False).count() == 0, "already over: too slow"
    # ...and the rest arrives live, exactly once.
    await page.get_by_text("w079", exact=False).wait_for(timeout=20_000)
    answer = page.locator(".ai-message", has_text="w000")
    await page.locator(".positive-feedback-off").last.wait_for(timeout=10_000)
    assert (await answer.last.inner_text()).split() == [w.strip() for w in words]
    print(f"reload mid-answer: text so far on screen {shown_after:.2f}s after reload")
    assert len(gemini.requests) == 1  # the answer was not asked for again
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "reload-mid-answer.png")

    # The reloaded tab carries on with the whole history.
    request = await asked_on_page(page, gemini, "Thanks", "Done counting.")
    assert request.conversation[1:] == [
        ("user", "Count for me"),
        ("assistant", "".join(words)),
        ("user", "Thanks"),
    ]


async def test_a_second_tab_shows_a_streaming_answer_live_and_can_stop_it(page, gemini):
    words = counted_words(150)
    gemini.script(Reply(chunks=words, delay=0.08))
    await type_and_send(page, "Count again")
    await page.get_by_text("w005", exact=False).wait_for(timeout=15_000)
    await page.wait_for_url("**/thread/*", timeout=15_000)

    second = await page.context.new_page()
    await second.goto(page.url)
    await second.get_by_text("w020", exact=False).wait_for(timeout=15_000)
    # Both tabs follow the same answer.
    await page.get_by_text("w025", exact=False).wait_for(timeout=15_000)
    await second.get_by_text("w025", exact=False).wait_for(timeout=15_000)
    await second.locator("#stop-button").click()
    await second.get_by_text("— stopped").wait_for(timeout=10_000)
    await page.get_by_text("— stopped").wait_for(timeout=10_000)
    assert await page.get_by_text("w149", exact=False).count() == 0
    answer = ".ai-message .message-content"
    first_text = (await page.locator(answer, has_text="w000").last.inner_text()).split()
    second_text = (await second.locator(answer, has_text="w000").last.inner_text()).split()
    assert first_text == second_text
    ARTIFACTS.mkdir(exist_ok=True)
    await second.screenshot(path=ARTIFACTS / "second-tab-stopped.png")


# --- what the page says -------------------------------------------------------------------------


async def dialog_text(page) -> str:
    dialog = page.locator("[role=dialog], [role=alertdialog]")
    await dialog.wait_for(timeout=10_000)
    text = await dialog.inner_text()
    await page.keyboard.press("Escape")
    await dialog.wait_for(state="detached", timeout=10_000)
    return text


async def test_dialogs_speak_of_chats_and_say_what_really_happens(page, gemini):
    gemini.script(Reply("Noted."))
    await type_and_send(page, "Remember this")
    await page.get_by_text("Noted.").wait_for(timeout=15_000)
    await page.wait_for_url("**/thread/*", timeout=15_000)
    thread_id = page.url.rsplit("/", 1)[1]

    await page.locator("#header #new-chat-button").click()
    new_chat = await dialog_text(page)
    assert "stays in Past Chats" in new_chat
    assert "clear your current chat history" not in new_chat

    await page.locator("#header #sidebar-trigger-button").click()
    entry = page.locator(f"#thread-{thread_id}")
    await entry.wait_for(timeout=15_000)
    texts = []
    for item in ("#rename-thread", "#delete-thread"):
        await entry.hover()
        await entry.locator("#thread-options").click()
        await page.locator(item).click()
        texts.append(await dialog_text(page))
    rename, delete = texts
    assert "Rename chat" in rename and "this chat" in rename
    assert "deletes the chat" in delete
    for text in (new_chat, rename, delete):
        assert "thread" not in text.lower() and "element" not in text.lower(), text


async def test_an_error_notice_has_no_copy_or_thumbs_buttons(page, gemini):
    # Paced, so the text is read before the connection is reset (a reset can discard what the
    # client had received but not yet read); the last, empty piece is the one at risk.
    gemini.script(Reply(chunks=["Half an ", "answer", ""], delay=0.3, ending="drop"))
    await type_and_send(page, "Tell me everything")
    notice = page.locator(".step", has=page.get_by_text("connection to Gemini", exact=False))
    await notice.last.wait_for(timeout=15_000)
    await page.get_by_text("incomplete reply").wait_for(timeout=15_000)
    # The partial answer can be copied and rated; the notice about it cannot.
    await answer_buttons(page, "Half an answer").nth(2).wait_for(timeout=10_000)
    assert await notice.last.locator("button:not([id])").count() == 0
    await reload_chat(page)
    await page.get_by_text("incomplete reply").wait_for(timeout=15_000)
    await notice.last.wait_for(timeout=15_000)
    assert await notice.last.locator("button:not([id])").count() == 0
    assert await answer_buttons(page, "Half an answer").count() == 3
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "error-notice.png")


async def test_while_an_answer_streams_the_next_message_waits_in_the_composer(page, gemini):
    gemini.script(Reply(chunks=counted_words(40), delay=0.08), Reply("Second reply."))
    await type_and_send(page, "First question")
    await page.get_by_text("w002", exact=False).wait_for(timeout=15_000)
    # As the README says: the send button is a stop button meanwhile, and Enter sends nothing;
    # what was typed stays in the composer.
    await page.locator("#stop-button").wait_for(timeout=5_000)
    composer = page.locator("#chat-input")
    await composer.fill("Second question")
    await composer.press("Enter")
    await page.get_by_text("w039", exact=False).wait_for(timeout=15_000)
    await expect(page.locator("#chat-submit")).to_be_enabled()
    assert len(gemini.requests) == 1
    assert await composer.input_value() == "Second question"
    await composer.press("Enter")
    await page.get_by_text("Second reply.").wait_for(timeout=15_000)
    request = (await gemini.arrived(2))[-1]
    assert request.conversation[-1] == ("user", "Second question")


async def test_local_mode_loads_without_a_failed_request_and_offers_no_logout(app, chromium_path):
    async with launch_chromium(chromium_path) as browser:
        page = await browser.new_page(viewport={"width": 1100, "height": 760})
        failed: list[str] = []
        errors: list[str] = []
        page.on(
            "response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None
        )
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await page.goto(app.url)
        await page.get_by_text("Ask me anything").wait_for(timeout=30_000)
        await page.locator("#chat-input").wait_for(timeout=10_000)
        assert failed == [] and errors == []
        # Logging out of local mode would log straight back in: there is no such button.
        assert await page.locator("#user-nav-button").is_hidden()
        # A reload keeps the login: still nothing fails.
        await page.reload()
        await page.get_by_text("Ask me anything").wait_for(timeout=30_000)
        assert failed == [] and errors == []


async def test_a_message_over_the_limit_is_refused_in_the_page_and_kept_in_the_box(page, gemini):
    composer = page.locator("#chat-input")
    # Seven times the limit: more than the server's socket would take.
    huge = "x" * 700_000
    await composer.fill(huge)
    await composer.press("Enter")
    alert = page.locator("#gemini-chat-too-long")
    await alert.wait_for(timeout=10_000)
    assert "700,000 characters long; the limit is 100,000" in await alert.inner_text()
    assert len(await composer.input_value()) == 700_000  # nothing lost
    await page.locator("#chat-submit").click()
    assert await alert.is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "too-long.png")
    # Shortened, it goes, on the same connection, and the notice is gone.
    gemini.script(Reply("Short enough."))
    await composer.fill("A shorter question")
    assert await alert.count() == 0
    await composer.press("Enter")
    await page.get_by_text("Short enough.").wait_for(timeout=15_000)
    assert len(gemini.requests) == 1
