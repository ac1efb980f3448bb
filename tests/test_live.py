"""Opt-in smoke test against the real Gemini API: runs only when GEMINI_API_KEY is set."""

from __future__ import annotations

import pytest

from gemini_chat.config import load_settings
from gemini_chat.llm import build_backend
from gemini_chat.streaming import ReplyStream
from tests.conftest import LIVE_GEMINI_KEY

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
