"""Gemini's thought summaries in a stream: taken out of the answer text, handed on as reasoning.

Two shapes reach the app. Gemini's compatible endpoint sends the summary inline in ``content``
between ``<thought>`` and ``</thought>`` (gemini-recordings' thoughts_stream); other
OpenAI-compatible servers, and some Gemini paths, send it as ``delta.reasoning_content``, which
the Agents SDK already turns into ``response.reasoning_summary_text.delta`` events. The inline
shape is rewritten into the other one, so both reach the chat through the SDK's one event and a
thought is never answer text, never shown twice.
"""

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
    The thought text received is kept in ``thoughts``, in order.
    """

    def __init__(self) -> None:
        self.thinking = False
        self.thoughts: list[str] = []
        self._held = ""  # a possible start of the closing tag, at the end of a delta

    def strip(self, delta: Any) -> str:
        """Leave in ``delta.content`` only its answer text (None when it had none); return the
        thought text it carried ("" for none)."""
        text = delta.content
        if text and (self.thinking or text.startswith(OPEN)):
            before = len(self.thoughts)
            delta.content = self.answer(text, is_thought(delta)) or None
            return "".join(self.thoughts[before:])
        return ""

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


def reasoning_of(delta: Any) -> str:
    """The ``reasoning_content`` a delta carries ("" for none)."""
    extra = getattr(delta, "model_extra", None)
    value = extra.get("reasoning_content") if extra else None
    return value if isinstance(value, str) else ""


def move_inline_thought(delta: Any, thought: str) -> None:
    """Put a thought taken out of ``delta.content`` where the SDK reads reasoning: in
    ``reasoning_content``, after any it already carries (unless that is the same text, so a
    server sending both shapes at once is not shown twice)."""
    if not thought:
        return
    present = reasoning_of(delta)
    if present == thought:
        return
    # openai's models allow extra fields: this lands in model_extra, where getattr finds it.
    delta.reasoning_content = present + thought
