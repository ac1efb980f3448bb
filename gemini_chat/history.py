"""A chat's history: what the model is sent on each turn, trimmed to a token budget.

A turn that used tools keeps the exact input items the Agents SDK produced for it (``items``:
function calls with their thought signatures in ``provider_data``, their outputs, the assistant
messages), sent as they are on later turns; Gemini 3 refuses a follow-up without the signatures.
A turn without tools is sent as a user and an assistant message, as always.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
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
# Where a reply's metadata keeps the items of a turn that used tools (``Turn.items``).
ITEMS_KEY = "items"
# Bounds of the calibration: a figure far outside them is a fault, not a tokenizer.
MIN_SCALE = 0.25
MAX_SCALE = 8.0


# How a reply that did not complete is marked on screen (and so in storage); never sent back.
REPLY_MARKS = {
    "stopped": "\n\n*— stopped*",
    "incomplete": "\n\n*— incomplete reply*",
    "interrupted": "\n\n*— interrupted: the server writing this answer stopped*",
}
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
    """One exchange: the user's text (and files) as sent and the assistant's text as received;
    with ``items`` when it used tools, which are sent after the user's message in place of the
    text (see ``turn_items``)."""

    user: str
    assistant: str
    user_message_id: str | None = None
    files: tuple[Part, ...] = ()
    items: tuple[dict[str, Any], ...] = ()

    @cached_property
    def tokens(self) -> int:
        if self.items:
            return user_tokens(self.user, self.files) + items_tokens(self.items)
        return user_tokens(self.user, self.files) + estimate_tokens(self.assistant)

    def messages(self) -> list[dict[str, Any]]:
        """What the model is sent for this turn."""
        user = {"role": "user", "content": user_content(self.user, self.files)}
        if self.items:
            return [user, *self.items]
        return [user, {"role": "assistant", "content": self.assistant}]


def items_tokens(items: Sequence[dict[str, Any]]) -> int:
    """The estimate for a turn's items: their JSON, as near as it gets to what is sent."""
    return sum(
        estimate_tokens(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
        for item in items
    )


# Item types a turn keeps. Reasoning items (thought summaries) are left out: thoughts are never
# sent back, the signatures Gemini needs ride on the function calls.
KEPT_ITEM_TYPES = ("function_call", "function_call_output", "message", None)


def turn_items(
    items: Sequence[dict[str, Any]], unfinished_text: str = ""
) -> tuple[dict[str, Any], ...]:
    """What the history keeps of a turn from the SDK's input items for it (``to_input_item()``
    of the run's ``new_items``): empty when no tool was called (the turn is kept as text).

    A call without its output (stopped while the tool ran) is dropped, and an output without its
    call: Gemini refuses either. ``unfinished_text`` is the text of a last round that did not
    finish (stopped or failed), which the SDK has no item for: it is kept as an assistant
    message after the last complete call and result.
    """
    kept = [
        item for item in items if isinstance(item, dict) and item.get("type") in KEPT_ITEM_TYPES
    ]
    calls = {item.get("call_id") for item in kept if item.get("type") == "function_call"}
    outputs = {item.get("call_id") for item in kept if item.get("type") == "function_call_output"}
    paired = calls & outputs
    kept = [
        item
        for item in kept
        if item.get("type") not in ("function_call", "function_call_output")
        or item.get("call_id") in paired
    ]
    if not paired:
        return ()
    if unfinished_text and _is_call_or_output(kept[-1]):
        kept.append({"role": "assistant", "content": unfinished_text})
    return tuple(kept)


def _is_call_or_output(item: dict[str, Any]) -> bool:
    return item.get("type") in ("function_call", "function_call_output")


def continued_items(
    earlier: Turn | None, prefix: str, items: Sequence[dict[str, Any]], rest: str
) -> tuple[dict[str, Any], ...]:
    """The items of a turn whose cut-off answer (``prefix``, the ``earlier`` turn) was
    continued with ``items`` (the continuation's, maybe none) and ``rest`` (its text): empty
    when neither part used tools. Two assistant texts that meet become one message."""
    before = earlier.items if earlier is not None else ()
    if not before and not items:
        return ()
    merged = list(before or ({"role": "assistant", "content": prefix},))
    for item in items or ({"role": "assistant", "content": rest},):
        last = _assistant_text(merged[-1]) if merged else None
        this = _assistant_text(item)
        if last is not None and this is not None:
            merged[-1] = {"role": "assistant", "content": last + this}
        else:
            merged.append(item)
    return tuple(merged)


def _assistant_text(item: dict[str, Any]) -> str | None:
    """The text of an assistant message item (either shape), None for anything else."""
    if item.get("role") != "assistant" or item.get("type", "message") != "message":
        return None
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "output_text" for part in content
    ):
        return "".join(part.get("text", "") for part in content)
    return None


def stored_items(value: Any) -> tuple[dict[str, Any], ...]:
    """A turn's items as stored in its reply's metadata, checked again on the way back: only
    the shapes ``turn_items`` keeps, orphan calls dropped; empty (the turn is sent as text) if
    any item is something else, as a step a client wrote itself could hold."""
    if not isinstance(value, list) or not all(_well_formed(item) for item in value):
        return ()
    return turn_items(value)


def _strings(item: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(item.get(key), str) for key in keys)


def _well_formed(item: Any) -> bool:
    if not isinstance(item, dict) or not isinstance(item.get("provider_data", {}), dict):
        return False
    kind = item.get("type")
    if kind == "function_call":
        return _strings(item, "call_id", "name", "arguments")
    if kind == "function_call_output":
        return _strings(item, "call_id", "output")
    return _assistant_text(item) is not None


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
        items: Sequence[dict[str, Any]] = (),
    ) -> None:
        if assistant or items:
            self.turns.append(Turn(user, assistant, user_message_id, tuple(files), tuple(items)))

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
            items.extend(turn.messages())
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
    tool_items: dict[str, tuple[dict[str, Any], ...]] = {}
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
            tool_items[meta["for"]] = stored_items(meta.get(ITEMS_KEY))
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
                tool_items.get(message_id, ()),
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
