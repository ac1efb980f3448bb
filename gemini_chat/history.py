"""A chat's history: what the model is sent on each turn, trimmed to a token budget."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Gemini counts roughly four bytes of UTF-8 per token for English and about one token per CJK
# character (three bytes); bytes/4 rounds both towards a safe overestimate-or-close figure.
BYTES_PER_TOKEN = 4
# Role markers and message framing cost a few tokens per message.
TOKENS_PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    """A cheap, deterministic token estimate (no tokenizer download needed)."""
    return TOKENS_PER_MESSAGE + (len(text.encode("utf-8", "surrogatepass")) + 3) // BYTES_PER_TOKEN


# Where a reply's metadata keeps Gemini's reported prompt size and the app's estimate of it.
PROMPT_KEY = "prompt"
# Bounds of the calibration: a figure far outside them is a fault, not a tokenizer.
MIN_SCALE = 0.25
MAX_SCALE = 8.0


# How a reply that did not complete is marked on screen (and so in storage); never sent back.
REPLY_MARKS = {"stopped": "\n\n*— stopped*", "incomplete": "\n\n*— incomplete reply*"}
# What a reply stopped before its first word shows in its place.
STOPPED_BEFORE_TEXT = "*Stopped before any answer.*"


class Part(Protocol):
    """A file sent with a user's message (gemini_chat/attachments.py): its content part in the
    Agents SDK's input format, and what Gemini counts it as."""

    @property
    def part(self) -> dict[str, Any]: ...

    @property
    def tokens(self) -> int: ...


def user_content(text: str, files: Sequence[Part] = ()) -> str | list[dict[str, Any]]:
    """A user message's content: its text, or with files, their parts and then the text."""
    if not files:
        return text
    parts = [file.part for file in files]
    if text:
        parts.append({"type": "input_text", "text": text})
    return parts


def user_tokens(text: str, files: Sequence[Part] = ()) -> int:
    return estimate_tokens(text) + sum(file.tokens for file in files)


@dataclass(frozen=True)
class Turn:
    """One exchange: the user's text (and files) as sent and the assistant's text as received."""

    user: str
    assistant: str
    user_message_id: str | None = None
    files: tuple[Part, ...] = ()

    @property
    def tokens(self) -> int:
        return user_tokens(self.user, self.files) + estimate_tokens(self.assistant)


@dataclass
class History:
    """Completed turns of one chat, oldest first.

    A turn is recorded only once the assistant produced text (complete, stopped or cut off), so
    the messages sent to the model always alternate user, assistant, ..., user.
    """

    token_budget: int
    turns: list[Turn] = field(default_factory=list)
    # Gemini's reported prompt size over the estimate, from the last turn that reported one:
    # the budget is kept in Gemini's own tokens once it has counted some of this chat.
    scale: float = 1.0
    # The estimate of the last request built (instructions, kept turns, the new message with its
    # files at their token cost), the figure Gemini's report is compared with.
    request_tokens: int = 0

    def calibrate(self, reported: int | None, estimated: int) -> None:
        """Learn from the prompt size Gemini reported for a request estimated at
        ``estimated``; a turn without a report leaves the last calibration as it was."""
        if reported and estimated > 0:
            self.scale = min(max(reported / estimated, MIN_SCALE), MAX_SCALE)

    def record(
        self,
        user: str,
        assistant: str,
        user_message_id: str | None = None,
        files: Sequence[Part] = (),
    ) -> None:
        if assistant:
            self.turns.append(Turn(user, assistant, user_message_id, tuple(files)))

    def last_turn_for(self, user_message_id: str) -> Turn | None:
        """The last turn, if it answers ``user_message_id``."""
        if self.turns and self.turns[-1].user_message_id == user_message_id:
            return self.turns[-1]
        return None

    def take_back(self, user_message_id: str) -> Turn | None:
        """Remove and return the last turn if it answers ``user_message_id`` (its answer is
        being asked again, or continued)."""
        turn = self.last_turn_for(user_message_id)
        if turn is not None:
            self.turns.pop()
        return turn

    def rewind(self, user_message_id: str) -> bool:
        """Forget the turn of ``user_message_id`` and everything after it (an edited message is
        answered afresh, as if what followed it had never been said)."""
        for index, turn in enumerate(self.turns):
            if turn.user_message_id == user_message_id:
                del self.turns[index:]
                return True
        return False

    def request_items(
        self, user: str, instructions: str = "", files: Sequence[Part] = ()
    ) -> list[dict[str, Any]]:
        """Input items for the next turn: as many recent turns as fit, then ``user`` (with its
        ``files``).

        The budget covers the instructions, the kept turns and the new message, files at their
        token cost. Whole turns are dropped, oldest first; the new message is always sent,
        even when it alone is over budget.
        """
        budget = self.token_budget / self.scale  # in the estimate's tokens
        needed = estimate_tokens(instructions) + user_tokens(user, files)
        kept = 0
        for turn in reversed(self.turns):
            if needed + turn.tokens > budget:
                break
            needed += turn.tokens
            kept += 1
        self.request_tokens = needed
        items: list[dict[str, Any]] = []
        for turn in self.turns[len(self.turns) - kept :]:
            items.append({"role": "user", "content": user_content(turn.user, turn.files)})
            items.append({"role": "assistant", "content": turn.assistant})
        items.append({"role": "user", "content": user_content(user, files)})
        return items


def history_from_steps(
    steps: list[dict[str, Any]],
    token_budget: int,
    files: Mapping[str, Sequence[Part]] | None = None,
) -> History:
    """Rebuild a chat's history from its stored steps (Chainlit's thread dict) and the files
    stored with its messages (``files``, by message id).

    A turn is a user message and the reply the app marked as answering it (metadata ``for``);
    welcome and error notices carry other kinds and are skipped, as are thinking steps (not
    messages: thoughts are never sent back), earlier answers that were asked again and a user
    message whose reply never came. Marks added on screen to stopped or cut-off replies are
    removed again. The last reply's reported prompt size calibrates the budget again.
    """
    users: dict[str, str] = {}
    order: list[str] = []
    replies: dict[str, str] = {}
    calibration: dict[str, Any] = {}
    for step in steps:
        if step.get("type") == "user_message":
            users[step["id"]] = step.get("output") or ""
            order.append(step["id"])
            continue
        meta = load_json(step.get("metadata"))
        if step.get("type") != "assistant_message" or meta.get("kind") != "reply":
            continue
        text = step.get("output") or ""
        mark = REPLY_MARKS.get(meta.get("status", ""))
        if mark and text.endswith(mark):
            text = text[: -len(mark)]
        elif meta.get("status") == "stopped" and text == STOPPED_BEFORE_TEXT:
            text = ""
        if meta.get("for"):
            replies[meta["for"]] = text
        if isinstance(meta.get(PROMPT_KEY), dict):
            calibration = meta[PROMPT_KEY]
    history = History(token_budget)
    reported, estimated = calibration.get("reported"), calibration.get("estimated")
    if type(reported) is int and type(estimated) is int:
        history.calibrate(reported, estimated)
    for message_id in order:
        if message_id in replies:
            history.record(
                users[message_id],
                replies[message_id],
                message_id,
                (files or {}).get(message_id, ()),
            )
    return history


def load_json(value: Any) -> dict[str, Any]:
    """Step metadata: a dict on PostgreSQL, JSON text on SQLite."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        try:
            loaded = json.loads(value)
        except ValueError:
            return {}
        return loaded if isinstance(loaded, dict) else {}
    return {}
