"""Answers kept in the database while they stream, so a process that dies loses little of them.

While a reply streams, ``PartialSaver`` stores it every ``partial_save_interval`` seconds with
the text so far and the status "streaming": one write per interval per answer, none when the
text did not change, none queued behind a write the database has not finished, and none awaited
by the stream. The reply's final write (complete, stopped, incomplete) replaces it, as every
write of a step with the same id does. The thinking step above an answer is kept the same way.

A reply still "streaming" in the database whose writer is gone (the instance was killed, or
drained before it ended) is settled when its chat is opened again (``settle_interrupted``): it
is shown and stored with the "interrupted" mark, and its text, without the mark, is in the
history of the next message, as a stopped answer's is. A thinking step left so keeps its
thoughts under the title "Thinking interrupted" (thoughts are never part of the history).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from .history import REPLY_MARKS, load_json
from .relay import current_relay

logger = logging.getLogger("gemini_chat")

STREAMING = "streaming"
INTERRUPTED = "interrupted"
THINKING_INTERRUPTED = "Thinking interrupted"

Write = Callable[[dict[str, Any]], Awaitable[Any]]
Sleep = Callable[[float], Awaitable[Any]]

# Writes of partial answers under way, kept referenced until they end.
_writes: set[asyncio.Task] = set()


class Streamed(Protocol):
    """A reply (``cl.Message``) or thinking step (``cl.Step``) being written: its stored form,
    whose ``output`` is the text so far."""

    metadata: dict | None

    def to_dict(self) -> Any: ...


def _data_layer_write() -> Write | None:
    from chainlit.data import get_data_layer

    layer = get_data_layer()
    return layer.update_step if layer is not None else None


class PartialSaver:
    """Stores one streaming reply every ``interval`` seconds while it changes.

    ``write`` stores a step dict (the data layer's ``update_step``: owner-checked, in the order
    writes were asked for, so the reply's final write, asked for after ``stop``, lands last).
    """

    def __init__(
        self,
        reply: Streamed,
        interval: float,
        write: Write | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.reply = reply
        self.interval = interval
        self.write = write
        self.sleep = sleep
        # What the database holds of it: a continued answer starts from its stored text.
        self.saved: str | None = reply.to_dict().get("output")
        self.writes = 0
        self._writing: asyncio.Task | None = None
        self._timer: asyncio.Task | None = None

    @classmethod
    def start_for(cls, reply: Streamed, interval: float) -> PartialSaver:
        """A saver already running for ``reply`` (idle without a data layer or interval)."""
        saver = cls(reply, interval, _data_layer_write())
        saver.start()
        return saver

    def start(self) -> None:
        if self.write is None or self.interval <= 0:
            return
        self._timer = asyncio.create_task(self._every_interval())

    def stop(self) -> None:
        """No more saves: the reply's own write follows. A save already asked for still lands,
        before that write (the data layer writes in order)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _every_interval(self) -> None:
        while True:
            await self.sleep(self.interval)
            self.save()

    def save(self) -> bool:
        """Ask for a write of the reply as it is now, unless nothing changed since the last one
        or that one is still being written (a slow database gets no pile of writes)."""
        if self.write is None or (self._writing is not None and not self._writing.done()):
            return False
        step = self.reply.to_dict()
        text = step.get("output")
        if not text or text == self.saved:
            return False
        step["metadata"] = {**(self.reply.metadata or {}), "status": STREAMING}
        # Chainlit's own "streaming" column makes a page draw a typing cursor on the stored
        # message: the metadata says it is being written, for the app alone to settle.
        step["streaming"] = False
        self.saved = text
        self.writes += 1
        self._writing = task = asyncio.create_task(self._store(step))
        _writes.add(task)
        task.add_done_callback(_writes.discard)
        return True

    async def _store(self, step: dict[str, Any]) -> None:
        assert self.write is not None
        try:
            await self.write(step)
        except Exception:  # the stream goes on; the final write will try again
            logger.exception("A streaming answer could not be stored")


def interrupted_text(text: str) -> str:
    return text + REPLY_MARKS[INTERRUPTED]


def _left_streaming(step: dict[str, Any]) -> bool:
    """Whether ``step`` was stored by a PartialSaver and not written since: a reply or a
    thinking step with the status "streaming"."""
    raw = step.get("metadata")
    if step.get("type") not in ("assistant_message", "llm") or (
        isinstance(raw, str) and STREAMING not in raw
    ):
        return False  # most steps: no need to parse their metadata
    meta = load_json(raw)
    return meta.get("kind") in ("reply", "thoughts") and meta.get("status") == STREAMING


def _settled(step: dict[str, Any]) -> None:
    meta = load_json(step.get("metadata"))
    if meta.get("kind") == "thoughts":
        step["name"] = THINKING_INTERRUPTED
        step["metadata"] = {**meta, "status": INTERRUPTED, "outcome": INTERRUPTED}
    else:
        step["output"] = interrupted_text(step.get("output") or "")
        step["metadata"] = {**meta, "status": INTERRUPTED}
    step["streaming"] = False  # no typing cursor: nobody writes it any more


async def settle_interrupted(
    thread: dict[str, Any], live_ids: Collection[str] = (), write: Write | None = None
) -> int:
    """Mark, in ``thread`` as loaded and in the database, each reply and thinking step stored as
    streaming that nobody is writing any more: not those of ``live_ids`` (streaming in this
    process) and not while another instance writes an answer in this chat. Returns how many
    were marked."""
    steps = [
        step
        for step in thread.get("steps") or []
        if _left_streaming(step) and step.get("id") not in live_ids
    ]
    if not steps or await current_relay().streaming_elsewhere(thread["id"]):
        return 0
    write = write or _data_layer_write()
    for step in steps:
        _settled(step)
        if write is not None:
            await write({**step, "threadId": thread["id"]})
    logger.info("A reopened chat had %d interrupted step(s)", len(steps))
    return len(steps)
