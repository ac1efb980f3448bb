"""The thinking step: an answer's thought summary, live above it while the model thinks, then
collapsed to "Thought for N s" and stored with the chat.

The step is a Chainlit step of the answer's run, drawn by Chainlit's own collapsible step
(``cot = "full"`` in .chainlit/config.toml; the translations' "Using"/"Used" prefixes are empty,
so its title is the step's name alone). It opens expanded while the summary streams
(``default_open``) and folds once thinking is over (``auto_collapse``); a stored one loads
folded. Its text goes through the same Coalescer and EventBudget as the answer, so thinking
costs no more socket events per token than answering, and it is stored as it streams, as the
answer is (gemini_chat/partial.py), so a process that dies while the model thinks loses little.
It is never an assistant message: the history (gemini_chat/history.py) and the copy and thumbs
buttons, which the frontend puts on the run's last assistant message, leave it alone.
"""

from __future__ import annotations

import time
from typing import Literal

import chainlit as cl
from chainlit.utils import utc_now

from .live import LiveReply
from .partial import PartialSaver
from .streaming import Coalescer, EventBudget

THINKING = "Thinking…"
STOPPED = "Stopped while thinking"
FAILED = "Thinking cut off"
KIND = "thoughts"


def thought_for(seconds: float) -> str:
    """The title of a finished step: whole seconds, at least one."""
    return f"Thought for {max(1, round(seconds))} s"


class ThinkingStep:
    """The thought summary of one answer (a ``ThoughtSink`` for ReplyStream).

    Nothing is sent until the first thought arrives, so an answer without one has no step.
    """

    def __init__(
        self,
        live: LiveReply,
        interval: float,
        budget: EventBudget,
        author: str = "",
        save_interval: float = 0.0,
    ) -> None:
        self.live = live
        self.author = author
        self.save_interval = save_interval
        self.step: cl.Step | None = None
        self._saver: PartialSaver | None = None
        self.outcome: str | None = None
        # Thinking starts with the request, not with the first summary that comes of it.
        self._started = time.monotonic()
        self._coalescer = Coalescer(self._write, interval, budget)

    async def add(self, text: str) -> None:
        if self.outcome is not None:
            return  # a thought after the answer began: the step is already final
        if self.step is None:
            self.step = self._open()
            self._saver = PartialSaver.start_for(self.step, self.save_interval)
        await self._coalescer.add(text)

    def _open(self) -> cl.Step:
        reply = self.live.reply
        step = cl.Step(
            name=THINKING,
            type="llm",
            parent_id=reply.parent_id,
            metadata={"kind": KIND, "avatarName": self.author} if self.author else {"kind": KIND},
            default_open=True,
            auto_collapse=True,
        )
        step.created_at = self.live.stamp_before_answer()
        step.start = utc_now()
        self.live.thinking = step
        return step

    async def _write(self, text: str) -> None:
        assert self.step is not None
        await self.live.stream_thinking(self.step, text)

    async def close(self, outcome: Literal["answered", "stopped", "failed"]) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        step = self.step
        if step is None:
            return
        await self._coalescer.close()
        if self._saver is not None:
            self._saver.stop()  # before the step's own write, which replaces the partial one
        seconds = time.monotonic() - self._started
        step.name = {"stopped": STOPPED, "failed": FAILED}.get(outcome) or thought_for(seconds)
        step.end = utc_now()
        step.metadata = {**step.metadata, "seconds": round(seconds, 1), "outcome": outcome}
        # Persists the step once, whole, and shows its final title (and folds it).
        await step.send()
        await self.live.finish_thinking(step)
