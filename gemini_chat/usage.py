"""What each answer cost in tokens, as Gemini reported it, and how that reads on screen.

Gemini sends cumulative usage on every chunk: ``prompt_tokens``, ``completion_tokens`` and a
``total_tokens`` that also counts thinking (3 + 2 = 71 recorded: 66 thinking). Where
``completion_tokens_details.reasoning_tokens`` is given it is the thinking figure. A stream that
carried no usage has none: nothing is shown rather than a guess. Each answer keeps its figures in
its stored metadata, so a reopened chat shows them again and its total goes on from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

METADATA_KEY = "usage"


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one answer: the prompt sent (history included), the answer, the thinking."""

    prompt: int
    output: int
    thinking: int

    @property
    def total(self) -> int:
        return self.prompt + self.output + self.thinking

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.prompt + other.prompt, self.output + other.output, self.thinking + other.thinking
        )

    def as_metadata(self) -> dict[str, int]:
        return {"in": self.prompt, "out": self.output, "thinking": self.thinking}

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> TokenUsage | None:
        """The usage stored with an answer, or None (none stored, or not three counts)."""
        stored = meta.get(METADATA_KEY)
        if not isinstance(stored, dict):
            return None
        counts = [stored.get(key) for key in ("in", "out", "thinking")]
        if not all(type(count) is int and count >= 0 for count in counts):
            return None
        return cls(*counts)

    def line(self) -> str:
        """What the answer shows under it: "1,234 in · 56 out · 789 thinking"."""
        parts = [f"{self.prompt:,} in", f"{self.output:,} out"]
        if self.thinking:
            parts.append(f"{self.thinking:,} thinking")
        return " · ".join(parts)

    def explanation(self) -> str:
        return (
            f"Tokens Gemini counted for this answer: {self.prompt:,} sent (the question with "
            f"the chat's history), {self.output:,} written, {self.thinking:,} thinking."
        )


def token_usage(reported: Any) -> TokenUsage:
    """Gemini's usage object (openai's ``CompletionUsage``) as prompt, output and thinking."""
    prompt = reported.prompt_tokens or 0
    completion = reported.completion_tokens or 0
    total = reported.total_tokens or 0
    details = getattr(reported, "completion_tokens_details", None)
    reasoning = getattr(details, "reasoning_tokens", None) if details is not None else None
    if reasoning is None:
        # Gemini leaves thinking out of completion_tokens and counts it in the total only.
        return TokenUsage(prompt, completion, max(total - prompt - completion, 0))
    if prompt + completion >= total:
        # OpenAI's reading: completion_tokens already includes the reasoning tokens.
        return TokenUsage(prompt, max(completion - reasoning, 0), reasoning)
    return TokenUsage(prompt, completion, reasoning)


def chat_total(metadatas: Iterable[dict[str, Any]]) -> int:
    """The tokens of a stored chat: every answer's, earlier (regenerated) answers included."""
    total = 0
    for meta in metadatas:
        usage = TokenUsage.from_metadata(meta)
        if usage is not None:
            total += usage.total
    return total


def total_line(total: int) -> str:
    return f"{total:,} tokens in this chat"
