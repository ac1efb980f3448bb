"""What a person sees of the tool calls of a turn: a Chainlit step per call, Allow / Deny.

Each call is a step of type "tool" named after the tool, a child of the turn's run step as the
answer is, drawn by Chainlit's own collapsible step (``cot = "full"``): its title is the tool's
name, shimmering while the call runs; opened, it shows the arguments (JSON) and then the
result, the duration and the error, if any. Steps are stored with the chat and come back when
it is reopened; tabs following the answer live (gemini_chat/live.py) get them too.

Socket events stay few: a call that ends within ``SHOW_AFTER`` seconds is sent once, whole; a
longer one is sent when it has run that long and once more when it ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import chainlit as cl
from chainlit.utils import utc_now

from .approval import (
    DISPLAY_MAX_CHARS,
    ask_approval,
    escaped,
    readable_arguments,
    shortened_block,
)
from .config import Settings
from .live import LiveReply, live_replies

KIND = "tool"
# Below what a person notices as a wait: a quicker call costs one socket event, not two.
SHOW_AFTER = 0.1
WAITING = "Waiting for your approval…"


def duration(seconds: float) -> str:
    if seconds < 0.05:
        return "under 0.1 s"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def outcome_line(error: str | None, seconds: float | None) -> str:
    """The step's first line: how the call ended, and how long it ran (None: it never ran)."""
    ran = f" ({duration(seconds)})" if seconds is not None else ""
    if error is None:
        return f"Done in {duration(seconds or 0.0)}"
    if error == "Denied":
        return "Denied"
    if error == "Stopped":
        return f"Stopped after {duration(seconds)}" if seconds is not None else "Stopped: not run"
    return f"**Failed:** {escaped(error)}{ran}"


def shown_result(output: str, max_chars: int = DISPLAY_MAX_CHARS) -> str:
    """The result as the step shows it: a code block, cut to ``max_chars`` with a note."""
    return shortened_block(output, "result", max_chars) if output else "*No result.*"


@dataclass(eq=False)
class _Call:
    step: cl.Step
    # The step is on the page (and stored); until then, it exists here only.
    shown: bool = False
    # The call began running (it was not stopped or denied while its approval was asked).
    ran: bool = False
    opening: asyncio.TimerHandle | None = None
    showing: asyncio.Task | None = None


class ToolSteps:
    """The chat's ``ToolObserver`` (gemini_chat/toolrun.py) for one turn: each call becomes a
    step of type "tool" under ``parent_id`` (the turn's run step), shown while it runs with its
    arguments, then its result (shortened), duration and error; approval asked in the chat."""

    def __init__(self, parent_id: str | None, settings: Settings) -> None:
        self.parent_id = parent_id
        self.settings = settings
        self._calls: dict[str, _Call] = {}
        # One question at a time: the page holds one pending Allow / Deny.
        self._asking = asyncio.Lock()

    # -- the ToolObserver

    async def started(self, call_id: str, name: str, arguments: str) -> None:
        call = self._calls.get(call_id)
        if call is not None:  # allowed a moment ago: its step is already there
            call.ran = True
            call.step.output = ""
            call.step.start = utc_now()
            await self._update(call)
            return
        call = self._open(call_id, name, arguments)
        call.ran = True
        loop = asyncio.get_running_loop()
        call.opening = loop.call_later(SHOW_AFTER, self._show_later, call)

    async def finished(self, call_id: str, output: str, error: str | None, seconds: float) -> None:
        call = self._calls.get(call_id)
        if call is None:  # ended before it began (denied without asking): one step, whole
            call = self._open(call_id, "tool", "")
        if call.opening is not None:
            call.opening.cancel()
            call.opening = None
        if call.showing is not None:
            await asyncio.shield(call.showing)
        step = call.step
        step.end = utc_now()
        step.is_error = error is not None
        lines = [outcome_line(error, seconds if call.ran else None)]
        if error is None:
            lines.append(shown_result(output))
        step.output = "\n\n".join(lines)
        step.metadata = {**step.metadata, "seconds": round(seconds, 3), "error": error}
        if call.shown:
            await self._update(call)
        else:
            await self._show(call)

    async def approve(self, call_id: str, name: str, arguments: str, wait_seconds: float) -> bool:
        call = self._calls.get(call_id) or self._open(call_id, name, arguments)
        call.step.output = WAITING
        # The question is a child of the step: the step must be on the page first.
        if call.shown:
            await self._update(call)
        else:
            await self._show(call)
        # Stopped while asking, the guard says so (finished, "Stopped"), as for a running call.
        async with self._asking:
            return await ask_approval(name, arguments, wait_seconds, call.step.id)

    # -- the steps

    def _open(self, call_id: str, name: str, arguments: str) -> _Call:
        step = cl.Step(
            name=name,
            type="tool",
            parent_id=self.parent_id,
            metadata={"kind": KIND, "call": call_id, "avatarName": self.settings.assistant_name},
            show_input="json",
        )
        step.input = readable_arguments(arguments)
        step.created_at = self._stamp()
        step.start = utc_now()
        call = _Call(step)
        self._calls[call_id] = call
        return call

    def _show_later(self, call: _Call) -> None:
        call.opening = None
        call.showing = asyncio.ensure_future(self._show(call))

    async def _show(self, call: _Call) -> None:
        call.shown = True
        await call.step.send()
        await self._to_viewers(call)

    async def _update(self, call: _Call) -> None:
        await call.step.update()
        await self._to_viewers(call)

    async def _to_viewers(self, call: _Call) -> None:
        live = self._live()
        if live is not None:
            await live.show_step(call.step.to_dict())

    def _live(self) -> LiveReply | None:
        live = live_replies.get(getattr(cl.context.session, "thread_id", None))
        if live is None or live.origin is not cl.context.session:
            return None
        return live

    def _stamp(self) -> str:
        """When the step was created, as stored: the chat is loaded in this order."""
        live = self._live()
        return live.stamp_before_answer() if live is not None else utc_now()
