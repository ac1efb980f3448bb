"""Attaching files in Chromium, through Chainlit's real frontend: by the paperclip's file input,
by drag and drop and by paste; what the chat shows, what Gemini is sent, what survives a reload,
and what the page refuses (and the server behind it)."""

from __future__ import annotations

import base64
import re

import pytest
from playwright.async_api import expect

from tests.chromium import ARTIFACTS
from tests.db import query
from tests.fake_gemini import Reply
from tests.test_attachments import IMAGE, PDF, image_part, pdf, png
from tests.test_browser import type_and_send

pytestmark = pytest.mark.browser

FILE_INPUT = "#upload-button-input"


def payload(name: str, mime: str, data: bytes) -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def user_step(page):
    return page.locator('.step[data-step-type="user_message"]').last


async def stored(app) -> list[tuple]:
    return await query(
        f"sqlite+aiosqlite:///{app.directory}/chats.db",
        'SELECT "name", "mime", "size" FROM attachments ORDER BY "name"',
    )


async def attached_in_composer(page, count: int) -> None:
    """Wait until the composer shows ``count`` files, all uploaded (the send button is back)."""
    await expect(page.locator("#attachments > *")).to_have_count(count, timeout=15_000)
    await expect(page.locator("#chat-submit")).to_be_enabled(timeout=15_000)


async def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / name)


async def test_an_image_and_a_pdf_are_sent_shown_and_still_there_after_reload(page, gemini, app):
    before = await stored(app)
    await page.locator(FILE_INPUT).set_input_files(
        [payload("chart.png", "image/png", IMAGE), payload("report.pdf", "application/pdf", PDF)]
    )
    await attached_in_composer(page, 2)
    gemini.script(Reply("A chart and a report."), Reply("Both again."))
    await type_and_send(page, "What do you see?")
    await page.get_by_text("A chart and a report.").wait_for(timeout=15_000)

    request = (await gemini.arrived(1))[-1]
    assert request.messages[-1] == {
        "role": "user",
        "content": [
            image_part("image/png", IMAGE),
            image_part("application/pdf", PDF),
            {"type": "text", "text": "What do you see?"},
        ],
    }
    # Shown with the message: the image as a thumbnail, the PDF as its first page and name,
    # both from the app's own route.
    question = user_step(page)
    thumbnail = question.locator("img.inline-image")
    await expect(thumbnail).to_have_attribute("src", re.compile(r"^/attachments/[0-9a-f-]{36}$"))
    await page.wait_for_function(
        """() => [...document.querySelectorAll('img.inline-image')]
                 .some(i => i.complete && i.naturalWidth === 800)""",
        timeout=10_000,
    )
    pdf_preview = question.locator(".inline-pdf")
    await expect(pdf_preview).to_contain_text("report.pdf")
    await pdf_preview.locator("canvas").first.wait_for(timeout=15_000)
    await screenshot(page, "attachments-sent.png")
    assert sorted(await stored(app)) == sorted(
        [
            *before,
            ("chart.png", "image/png", len(IMAGE)),
            ("report.pdf", "application/pdf", len(PDF)),
        ]
    )

    # A reload shows them again, from the database; the next message sends them again.
    await page.wait_for_url("**/thread/*", timeout=15_000)
    await page.reload()
    await page.get_by_text("A chart and a report.").wait_for(timeout=15_000)
    question = user_step(page)
    await expect(question.locator("img.inline-image")).to_have_attribute(
        "src", re.compile(r"^/attachments/")
    )
    await page.wait_for_function(
        """() => [...document.querySelectorAll('img.inline-image')]
                 .some(i => i.complete && i.naturalWidth === 800)""",
        timeout=10_000,
    )
    await question.locator(".inline-pdf canvas").first.wait_for(timeout=15_000)
    await screenshot(page, "attachments-after-reload.png")
    await type_and_send(page, "Once more")
    await page.get_by_text("Both again.").wait_for(timeout=15_000)
    again = (await gemini.arrived(2))[-1]
    assert again.messages[1] == request.messages[-1]
    assert again.messages[-1] == {"role": "user", "content": "Once more"}


async def toast(page, text: str) -> None:
    await expect(page.locator("[data-sonner-toast]", has_text=text).first).to_be_visible(
        timeout=10_000
    )


async def test_bad_files_are_refused_in_the_page_and_nothing_is_stored_or_sent(page, gemini, app):
    before = await stored(app)
    file_input = page.locator(FILE_INPUT)
    # Over the size limit: the page refuses it before any upload.
    await file_input.set_input_files(
        payload("huge.png", "image/png", png() + b"\x00" * (11 * 1024 * 1024))
    )
    await toast(page, "File is larger than 10 MB")
    # A type the chat does not take.
    await file_input.set_input_files(payload("tool.exe", "application/x-msdownload", b"MZ" * 64))
    await toast(
        page,
        "Failed to upload tool.exe: this chat takes only images (PNG, JPEG, WebP, HEIC), PDFs, "
        "audio (WAV, MP3) and text or code files.",
    )
    # A file whose content lies about its type: only the server can tell, and says so.
    await file_input.set_input_files(
        payload("holiday.png", "image/png", b"<html><script>alert(1)</script></html>")
    )
    await toast(
        page,
        "Failed to upload holiday.png: it says it is a PNG image, but its content is not a PNG "
        "image.",
    )
    # Fifty at once: more than one message may carry.
    await file_input.set_input_files(
        [payload(f"note{i:02d}.txt", "text/plain", f"note {i}".encode()) for i in range(50)]
    )
    await toast(page, "Too many files")
    await screenshot(page, "attachments-refused.png")
    await expect(page.locator("#attachments > *")).to_have_count(0)
    assert await stored(app) == before
    assert gemini.requests == []
    # And the chat works as before.
    gemini.script(Reply("Nothing attached."))
    await type_and_send(page, "Anything there?")
    await page.get_by_text("Nothing attached.").wait_for(timeout=15_000)
    assert (await gemini.arrived(1))[-1].messages[-1] == {
        "role": "user",
        "content": "Anything there?",
    }


# Dropped on the chat's message area (Chainlit's drop zone is the chat around it).
DROP = """async ([selector, name, mime, data]) => {
    const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, {type: mime}));
    const target = document.querySelector(selector);
    for (const type of ['dragenter', 'dragover', 'drop']) {
        target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true,
                                                  dataTransfer: transfer}));
    }
}"""

PASTE = """async ([selector, name, mime, data]) => {
    const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, {type: mime}));
    const target = document.querySelector(selector);
    target.focus();
    target.dispatchEvent(new ClipboardEvent('paste', {bubbles: true, cancelable: true,
                                                      clipboardData: transfer}));
}"""


async def test_a_dropped_pdf_and_a_pasted_image_are_attached_and_sent(page, gemini):
    document = pdf(2)
    picture = png(40, 30)
    await page.evaluate(
        DROP,
        [
            ".step .message-content",
            "dropped.pdf",
            "application/pdf",
            base64.b64encode(document).decode(),
        ],
    )
    await attached_in_composer(page, 1)
    await page.evaluate(
        PASTE, ["#chat-input", "pasted.png", "image/png", base64.b64encode(picture).decode()]
    )
    await attached_in_composer(page, 2)
    gemini.script(Reply("Dropped and pasted."))
    await type_and_send(page, "Two ways")
    await page.get_by_text("Dropped and pasted.").wait_for(timeout=15_000)
    request = (await gemini.arrived(1))[-1]
    assert request.files() == [("application/pdf", document), ("image/png", picture)]
    await expect(user_step(page).locator("img.inline-image")).to_have_count(1)


async def test_a_message_with_too_many_files_is_refused_and_its_files_leave_the_page(
    page, gemini, app
):
    # Six and six: each pick is within the page's limit, together they are not.
    before = await stored(app)
    file_input = page.locator(FILE_INPUT)
    for batch in (range(6), range(6, 12)):
        await file_input.set_input_files(
            [payload(f"note{i:02d}.txt", "text/plain", f"note {i}".encode()) for i in batch]
        )
    await attached_in_composer(page, 12)
    await type_and_send(page, "Read them all")
    notice = page.get_by_text("This message has 12 files attached, and at most 10 can go")
    await notice.wait_for(timeout=15_000)
    assert "Nothing was sent: attach fewer and send it again." in await notice.inner_text()
    # The message stays, without its files; nothing was stored or sent.
    question = user_step(page)
    await expect(question).to_contain_text("Read them all")
    await expect(question.locator(".inline-file")).to_have_count(0)
    await screenshot(page, "attachments-too-many.png")
    assert await stored(app) == before
    assert gemini.requests == []
    # The next message goes, with no file.
    gemini.script(Reply("Fine."))
    await type_and_send(page, "Just this")
    await page.get_by_text("Fine.").wait_for(timeout=15_000)
    assert (await gemini.arrived(1))[-1].messages[-1] == {"role": "user", "content": "Just this"}
