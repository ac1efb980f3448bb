"""Gemini's thought summaries, which its compatible endpoint sends inline in the answer text."""

from __future__ import annotations

from typing import Any

OPEN = "<thought>"
CLOSE = "</thought>"


def is_thought(delta: Any) -> bool:
    """True for a delta flagged ``extra_content.google.thought: true``."""
    extra = getattr(delta, "model_extra", None) or {}
    content = extra.get("extra_content")
    google = content.get("google") if isinstance(content, dict) else None
    return isinstance(google, dict) and google.get("thought") is True


class ThoughtFilter:
    """Takes the thought summary out of one streamed answer, delta by delta.

    With thoughts on, Gemini opens the answer with ``<thought>`` in a delta flagged
    ``extra_content.google.thought``, streams the summary, and closes it with ``</thought>`` at
    the start of the first answer delta, which is not flagged (gemini-recordings'
    thoughts_stream). Only a flagged delta starting with the tag opens a thought, so an answer
    that merely mentions "<thought>" is left alone (a flag alone is not enough either: non-stream
    answers carry it on plain answer text). The closing tag may arrive split across deltas.
    The thought text is kept in ``thoughts``, for a later way of showing it.
    """

    def __init__(self) -> None:
        self.thinking = False
        self.thoughts: list[str] = []
        self._held = ""  # a possible start of the closing tag, at the end of a delta

    def strip(self, delta: Any) -> None:
        """Leave in ``delta.content`` only its answer text (None when it had none)."""
        text = delta.content
        if text and (self.thinking or text.startswith(OPEN)):
            delta.content = self.answer(text, is_thought(delta)) or None

    def answer(self, text: str, flagged: bool) -> str:
        """The answer part of one delta's text; the thought part goes to ``thoughts``."""
        if not self.thinking:
            if not (flagged and text.startswith(OPEN)):
                return text
            self.thinking = True
            text = text[len(OPEN) :]
        text, self._held = self._held + text, ""
        end = text.find(CLOSE)
        if end < 0:
            held = next((k for k in range(len(CLOSE) - 1, 0, -1) if text.endswith(CLOSE[:k])), 0)
            self._held = text[len(text) - held :] if held else ""
            self._note(text[: len(text) - held])
            return ""
        self._note(text[:end])
        self.thinking = False
        return text[end + len(CLOSE) :]

    def _note(self, thought: str) -> None:
        if thought:
            self.thoughts.append(thought)
