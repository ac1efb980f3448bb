"""Streaming one reply: run the agent, coalesce its text deltas, surface failures as ChatError.

The model's thought summary, when one streams and something is there to show it, goes to a
``ThoughtSink`` (gemini_chat/thinking.py): every thought delta until the answer's first text,
then the sink is told the answer has begun, or how the reply ended without one.

A reply that uses tools takes several model rounds (request, tool calls, their results, the
next request): the text of every round goes into the one answer, a blank line between rounds;
thoughts of a later round go to a new sink (``more_thoughts``). The run's tools reach the chat
through a ``TurnContext`` (gemini_chat/toolrun.py), and ``items`` are what the history keeps of
a turn that used tools.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from agents import FunctionTool, Runner
from agents.exceptions import MaxTurnsExceeded

from . import metrics
from .errors import (
    AnswerTruncated,
    ChatError,
    ContentBlocked,
    EmptyAnswer,
    ToolRoundsExceeded,
    classify,
    log_detail,
)
from .history import turn_items
from .llm import Backend, StreamReport, current_report
from .toolrun import ToolObserver, TurnContext

logger = logging.getLogger("gemini_chat")

TextSink = Callable[[str], Awaitable[Any]]

# The SDK's event for a piece of reasoning (``delta.reasoning_content``, and Gemini's inline
# thoughts moved there by gemini_chat/thoughts.py).
THOUGHT_DELTA = "response.reasoning_summary_text.delta"
ANSWER_DELTA = "response.output_text.delta"
# The run item event of a tool call the model made: the round's text and thoughts are over.
TOOL_CALLED = "tool_called"
# Between the text of two model rounds of one answer.
ROUND_BREAK = "\n\n"


class ThoughtSink(Protocol):
    async def add(self, text: str) -> None: ...

    async def close(self, outcome: Literal["answered", "stopped", "failed"]) -> None:
        """The thinking is over: the answer began, or the reply ended (stopped, failed) before
        it; safe to call more than once, and when nothing was added."""


# Socket events per second the server spends on streaming text, all replies together. One event
# costs about 70 µs of the server's CPU (socket.io packet, websocket frame, write) whatever its
# size, so this keeps streaming updates under about a tenth of one core.
STREAM_EVENTS_PER_SECOND = 1500


class EventBudget:
    """Shares the process's socket-event budget among the replies streaming at the moment.

    With few replies each one updates every ``STREAM_FLUSH_INTERVAL``; with many, the interval
    stretches so the total stays within the budget (150 replies: 0.1 s, 500: 0.33 s). The text
    is the same, in fewer and larger pieces, and the first piece of every reply still goes out
    at once; what the server saves goes to starting and streaming the other replies on time.
    """

    def __init__(self, events_per_second: float = STREAM_EVENTS_PER_SECOND) -> None:
        self.events_per_second = events_per_second
        self.streaming = 0

    def interval(self, base: float) -> float:
        return max(base, self.streaming / self.events_per_second)


class Coalescer:
    """Batches text deltas into at most one write per ``interval`` seconds.

    The first delta is written at once (no added first-token latency); later ones are joined and
    written when the interval since the last write has passed, by a timer if no delta arrives to
    trigger it. Writes happen in order, one at a time, so the text arrives exactly. With a
    ``budget``, the interval stretches while many replies stream at once.
    """

    def __init__(self, write: TextSink, interval: float, budget: EventBudget | None = None) -> None:
        self._write = write
        self._interval = interval
        self._budget = budget
        self._pending: list[str] = []
        self._last_write = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.writes = 0

    async def add(self, delta: str) -> None:
        self._pending.append(delta)
        if self._timer is not None or self._timer_task is not None:
            return  # a write is already on its way and will take this delta too
        loop = asyncio.get_running_loop()
        interval = self._budget.interval(self._interval) if self._budget else self._interval
        wait = self._last_write + interval - loop.time()
        if wait <= 0:
            await self.flush()
        else:
            self._timer = loop.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_task = asyncio.ensure_future(self._timed_flush())

    async def _timed_flush(self) -> None:
        try:
            await self.flush()
        finally:
            self._timer_task = None

    async def flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            self._last_write = asyncio.get_running_loop().time()
            self.writes += 1
            await self._write(text)

    async def close(self) -> None:
        """Write whatever is pending, now. Safe to call more than once, and after cancellation."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._timer_task
        if task is not None and task is not asyncio.current_task():
            # Shielded so that a second cancellation of our caller doesn't leave it half-done.
            await asyncio.shield(task)
        await self.flush()


class ReplyStream:
    """One streamed reply. ``text`` always holds exactly the model text received so far."""

    def __init__(
        self,
        backend: Backend,
        sink: TextSink,
        budget: EventBudget | None = None,
        thoughts: ThoughtSink | None = None,
        observer: ToolObserver | None = None,
        tools: list[FunctionTool] | None = None,
        more_thoughts: Callable[[], ThoughtSink] | None = None,
    ) -> None:
        self.backend = backend
        self.parts: list[str] = []
        self.thoughts = thoughts
        self.more_thoughts = more_thoughts
        self.thought_parts: list[str] = []
        self.budget = budget or EventBudget()
        self.coalescer = Coalescer(sink, backend.settings.flush_interval, self.budget)
        self.report = StreamReport(max_tool_rounds=backend.settings.max_tool_rounds)
        self.observer = observer
        # Tools for this run only (an MCP server's), already behind the guard.
        self.tools = tools
        # Where the current model round's text begins in ``text``, and whether the round has
        # had text yet (its thoughts go to the thinking sink until then).
        self._round_start = 0
        self._round_text = False
        self._new_round = False
        self._result: Any = None
        self.started = 0.0  # when the request went (metrics.stream_started)

    @property
    def items(self) -> tuple[dict[str, Any], ...]:
        """What the history keeps of this reply when it used tools (gemini_chat/history.py
        ``turn_items``), so far: empty when no tool was called."""
        if self._result is None:
            return ()
        new_items = self._result.new_items
        # Most turns call no tool: they are kept as text, with nothing to convert.
        if not any(item.type == "tool_call_item" for item in new_items):
            return ()
        return turn_items(
            [item.to_input_item() for item in new_items], self.text[self._round_start :]
        )

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def run(self, items: list[dict[str, Any]]) -> str:
        """Stream the answer to ``items``; return its text.

        Raises ChatError when the answer failed or is unusable (``self.text`` keeps what came),
        and CancelledError when stopped, after cancelling the upstream request.
        """
        token = current_report.set(self.report)
        # A copy per run, as the SDK advises for concurrent runs: it checks every run of one
        # Agent object against all others still going, which made each start cost grow with
        # the number of chats streaming (500 at once: about 2 ms more each). A shallow copy
        # rather than Agent.clone(), which re-validates the whole agent.
        agent = copy.copy(self.backend.agent)
        if self.tools:
            agent.tools = [*agent.tools, *self.tools]
        try:
            result = self._result = Runner.run_streamed(
                agent,
                items,
                context=TurnContext(self.observer),
                run_config=self.backend.run_config,
                # One more request than tool rounds: the last one answers (tool_choice "none",
                # llm.count_round); a model that calls tools even then is stopped here.
                max_turns=self.backend.settings.max_tool_rounds + 1,
            )
        finally:
            current_report.reset(token)
        self.budget.streaming += 1
        self.started = metrics.stream_started()
        thoughts = self.thoughts
        outcome: Literal["answered", "stopped", "failed"] = "answered"
        try:
            async for event in result.stream_events():
                if event.type != "raw_response_event":
                    if event.type == "run_item_stream_event" and event.name == TOOL_CALLED:
                        await self._end_round()
                    continue
                kind = event.data.type
                if kind == ANSWER_DELTA:
                    delta = event.data.delta
                    if delta:
                        if self._round_text:  # the common case, kept inline: once a token
                            self.parts.append(delta)
                            await self.coalescer.add(delta)
                        else:
                            await self._add_text(delta)
                elif kind == THOUGHT_DELTA and thoughts is not None:
                    delta = event.data.delta
                    if delta and self._new_round and self.more_thoughts is not None:
                        # Thinking again after tool calls: a step of its own.
                        self._new_round = False
                        self.thought_parts = []
                        thoughts = self.thoughts = self.more_thoughts()
                    if delta and not self._round_text:
                        self.thought_parts.append(delta)
                        await thoughts.add(delta)
        except asyncio.CancelledError:
            # Cancelled in our own loop body (e.g. while writing to the socket) the SDK would
            # keep generating in the background: cancel it explicitly so the upstream closes.
            outcome = "stopped"
            result.cancel()
            raise
        except Exception as error:
            outcome = "failed"
            result.cancel()
            await self._recover_dropped_thoughts()
            await self._recover_dropped_text()
            if isinstance(error, MaxTurnsExceeded):
                failure: ChatError = ToolRoundsExceeded(self.backend.settings.max_tool_rounds)
                self._log(failure, error)
                raise failure from error
            failure = classify(
                error,
                model=self.backend.settings.model,
                # Thoughts count: Gemini was reached and had begun, the line dropped after.
                text_so_far=self.text or "".join(self.report.thoughts),
                stall_seconds=self.backend.settings.stall_timeout,
            )
            self._log(failure, error)
            raise failure from error
        finally:
            self.budget.streaming -= 1
            metrics.stream_ended()
            if thoughts is not None:
                # Shielded: a second stop must not leave the step saying it is still thinking.
                await asyncio.shield(thoughts.close(outcome))
            await self.coalescer.close()
        self._check_finish()
        return self.text

    async def _recover_dropped_text(self) -> None:
        """Show the text that arrived before a failure but never reached us as an event.

        When a stream fails, the SDK raises at once and drops deltas it had already parsed
        (several chunks often arrive in one read). The raw stream noted them, so the user sees,
        and the history keeps, everything Gemini sent before the fault.
        """
        received = "".join(self.report.received)
        shown = self.text[self._round_start :]
        if len(received) > len(shown) and received.startswith(shown):
            rest = received[len(shown) :]
            await self._add_text(rest)

    async def _recover_dropped_thoughts(self) -> None:
        """As ``_recover_dropped_text``, for a thought summary the answer had not yet followed."""
        if self.thoughts is None or self._round_text:
            return
        received = "".join(self.report.thoughts)
        shown = "".join(self.thought_parts)
        if len(received) > len(shown) and received.startswith(shown):
            rest = received[len(shown) :]
            self.thought_parts.append(rest)
            await self.thoughts.add(rest)

    async def _add_text(self, delta: str) -> None:
        if not self.parts:
            metrics.first_token(self.started)
        if not self._round_text:
            # The round's first text: its thinking is over; after an earlier round's text, a
            # blank line, so two rounds do not run together in one paragraph.
            self._round_text = True
            self._new_round = False
            if self.thoughts is not None:
                await self.thoughts.close("answered")
            if self.parts:
                text = self.text
                gap = "" if text.endswith("\n\n") else "\n" if text.endswith("\n") else ROUND_BREAK
                if gap:
                    self.parts.append(gap)
                    await self.coalescer.add(gap)
                self._round_start = len(self.text)
        self.parts.append(delta)
        await self.coalescer.add(delta)

    async def _end_round(self) -> None:
        """The model called a tool: this round's text and thinking are over; what comes next
        belongs to the next round (after the tools ran)."""
        if self.thoughts is not None:
            await self.thoughts.close("answered")
        self._round_text = False
        self._new_round = True
        self._round_start = len(self.text)

    def _check_finish(self) -> None:
        reason = self.report.finish_reason
        failure: ChatError | None = None
        if reason == "content_filter":
            failure = ContentBlocked(finish_reason=reason)
        elif reason == "length":
            failure = AnswerTruncated(finish_reason=reason)
        elif not self.parts:
            failure = EmptyAnswer(finish_reason=reason)
        if failure is not None:
            self._log(failure, None)
            raise failure

    def _log(self, failure: ChatError, error: BaseException | None) -> None:
        logger.warning(
            "Reply failed after %d characters: %s%s",
            len(self.text),
            log_detail(failure),
            f" ({type(error).__name__})" if error is not None else "",
        )
