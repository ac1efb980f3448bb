"""Opt-in smoke test against the real Gemini API: runs only when GEMINI_API_KEY is set."""

from __future__ import annotations

import pytest

from gemini_chat.attachments import Attachment
from gemini_chat.config import load_settings
from gemini_chat.history import user_content
from gemini_chat.llm import build_backend
from gemini_chat.streaming import ReplyStream
from tests.conftest import LIVE_GEMINI_KEY
from tests.test_attachments import png

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not LIVE_GEMINI_KEY, reason="set GEMINI_API_KEY to run the live smoke test"),
]


async def test_gemini_streams_a_real_answer():
    settings = load_settings({"GEMINI_API_KEY": LIVE_GEMINI_KEY or ""})
    pieces: list[str] = []

    async def sink(text: str) -> None:
        pieces.append(text)

    stream = ReplyStream(build_backend(settings), sink)
    answer = await stream.run([{"role": "user", "content": "Reply with the single word: pong"}])
    assert "pong" in answer.lower()
    assert "".join(pieces) == answer
    assert stream.report.finish_reason == "stop"


def pdf_saying(text: str) -> bytes:
    """A one-page PDF whose only content is ``text`` in Helvetica."""
    stream = f"BT /F1 24 Tf 72 700 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out


async def ask_about(attachment: Attachment, question: str) -> str:
    """The answer to ``question`` about ``attachment``, sent as the chat sends files."""
    settings = load_settings({"GEMINI_API_KEY": LIVE_GEMINI_KEY or ""})

    async def sink(text: str) -> None:
        pass

    stream = ReplyStream(build_backend(settings), sink)
    content = user_content(question, [attachment])
    return await stream.run([{"role": "user", "content": content}])


async def test_gemini_reads_an_attached_image():
    image = Attachment("live-image", "red.png", "image/png", png(64, 64, rgb=b"\xff\x00\x00"))
    answer = await ask_about(image, "What colour fills this image? Answer with one word.")
    assert "red" in answer.lower()


async def test_gemini_reads_an_attached_pdf():
    document = Attachment("live-pdf", "note.pdf", "application/pdf", pdf_saying("pineapple"))
    answer = await ask_about(document, "Which fruit does this document name? One word.")
    assert "pineapple" in answer.lower()
