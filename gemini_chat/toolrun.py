"""Running the agent's tools: the one guard every tool call goes through (approval, time limit,
result size, errors), and what the chat is told about each call as it happens.

This module is the run side and does not import chainlit; the chat side implements
``ToolObserver`` (gemini_chat/toolsteps.py: a Chainlit step per call, Allow / Deny buttons).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ToolObserver(Protocol):
    """What the chat shows of the tool calls of one turn. ``call_id`` is the call's stable id
    (the one sent back to Gemini with its result)."""

    async def started(self, call_id: str, name: str, arguments: str) -> None:
        """A call began (after its approval, if it needed one): show it as running."""

    async def finished(self, call_id: str, output: str, error: str | None, seconds: float) -> None:
        """A call ended: ``output`` is what the model is given (shortened if it was long);
        ``error`` a short, user-safe reason when the call failed, timed out or was denied."""

    async def approve(self, call_id: str, name: str, arguments: str, wait_seconds: float) -> bool:
        """Ask the user whether the call may run; False on Deny or no answer in ``wait_seconds``."""


@dataclass
class TurnContext:
    """The run context of one turn (``Runner.run_streamed(context=...)``): tools reach the
    chat through it."""

    observer: ToolObserver | None = None
