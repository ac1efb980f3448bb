"""Scripted models for unit tests: ScriptedModel steps that stream text in several deltas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agents.testing import ModelStep, assistant_message
from agents.testing.model import _stream_events_for_step


def _events_with_deltas(pieces: list[str]) -> list:
    """The SDK's own event sequence for a text answer, its single delta split into ``pieces``."""
    events = _stream_events_for_step(
        ModelStep(output=[assistant_message("".join(pieces))]), preserve_raw_usage=False
    )
    out = []
    for event in events:
        if event.type == "response.output_text.delta":
            out.extend(event.model_copy(update={"delta": piece}) for piece in pieces)
        else:
            out.append(event)
    return out


def streamed_reply(*pieces: str) -> ModelStep:
    """An answer streamed as one delta per piece."""
    return ModelStep.stream(
        _events_with_deltas(list(pieces)), output=[assistant_message("".join(pieces))]
    )


class HangingReply:
    """Streams ``first`` and then waits forever, like an upstream that never finishes.
    ``closed`` is set when the consumer goes away (the request would be cancelled)."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.closed = asyncio.Event()
        self.started = asyncio.Event()

    def step(self) -> ModelStep:
        async def events(_call) -> AsyncIterator:
            head = _events_with_deltas([self.first])
            try:
                for event in head:
                    yield event
                    if event.type == "response.output_text.delta":
                        self.started.set()
                        await asyncio.Event().wait()
            finally:
                self.closed.set()

        return ModelStep.stream(events)
