"""A chat's history: what the model is sent on each turn, trimmed to a token budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Gemini counts roughly four bytes of UTF-8 per token for English and about one token per CJK
# character (three bytes); bytes/4 rounds both towards a safe overestimate-or-close figure.
BYTES_PER_TOKEN = 4
# Role markers and message framing cost a few tokens per message.
TOKENS_PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    """A cheap, deterministic token estimate (no tokenizer download needed)."""
    return TOKENS_PER_MESSAGE + (len(text.encode("utf-8", "surrogatepass")) + 3) // BYTES_PER_TOKEN


@dataclass(frozen=True)
class Turn:
    """One exchange: the user's text as sent and the assistant's text as received."""

    user: str
    assistant: str

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.user) + estimate_tokens(self.assistant)


@dataclass
class History:
    """Completed turns of one chat, oldest first.

    A turn is recorded only once the assistant produced text (complete, stopped or cut off), so
    the messages sent to the model always alternate user, assistant, ..., user.
    """

    token_budget: int
    turns: list[Turn] = field(default_factory=list)

    def record(self, user: str, assistant: str) -> None:
        if assistant:
            self.turns.append(Turn(user, assistant))

    def request_items(self, user: str, instructions: str = "") -> list[dict[str, Any]]:
        """Input items for the next turn: as many recent turns as fit, then ``user``.

        The budget covers the instructions, the kept turns and the new message. Whole turns are
        dropped, oldest first; the new message is always sent, even when it alone is over budget.
        """
        remaining = self.token_budget - estimate_tokens(instructions) - estimate_tokens(user)
        kept = 0
        for turn in reversed(self.turns):
            remaining -= turn.tokens
            if remaining < 0:
                break
            kept += 1
        items: list[dict[str, Any]] = []
        for turn in self.turns[len(self.turns) - kept :]:
            items.append({"role": "user", "content": turn.user})
            items.append({"role": "assistant", "content": turn.assistant})
        items.append({"role": "user", "content": user})
        return items
