"""What a person sees of the tool calls of a turn: a Chainlit step per call, Allow / Deny."""

from __future__ import annotations

from .config import Settings


class ToolSteps:
    """The chat's ``ToolObserver`` (gemini_chat/toolrun.py) for one turn: each call becomes a
    step of type "tool" under ``parent_id`` (the turn's run step), shown while it runs with its
    arguments, then its result (shortened), duration and error; approval asked in the chat."""

    def __init__(self, parent_id: str | None, settings: Settings) -> None:
        self.parent_id = parent_id
        self.settings = settings

    async def started(self, call_id: str, name: str, arguments: str) -> None:
        pass

    async def finished(self, call_id: str, output: str, error: str | None, seconds: float) -> None:
        pass

    async def approve(self, call_id: str, name: str, arguments: str, wait_seconds: float) -> bool:
        return False
