"""Answers streaming right now, shown live in every tab that has their chat open.

A reply streams to the browser session that asked for it. A person who reloads the page, or
opens the same chat in a second tab, gets a new session, and the chat Chainlit loads for it
from the database lacks the answer still being written. Each streaming reply is therefore
registered here under its chat's thread id; a session that opens that chat is attached as a
*viewer*: it receives the text written so far as part of the chat it loads, then every later
piece, the turn's thinking and tool steps as they change, the final message, and the turn in its
own history. Stop works from any of them, and the reply goes on while at least one of them is
connected. The steps a turn opens before its answer get creation stamps in the order they were
shown (``stamp_before_answer``), so the chat loads again in that order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import chainlit as cl
from chainlit.emitter import ChainlitEmitter
from chainlit.session import WebsocketSession
from chainlit.utils import utc_now

from .history import ITEMS_KEY, History, stored_items

logger = logging.getLogger("gemini_chat")


def _moment(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.removesuffix("Z"))


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds") + "Z"


def stamp_between(earlier: str | None, later: str) -> str:
    """A Chainlit timestamp between two others (at most a millisecond before ``later``).

    A chat loads its steps in creation order and drops a step whose parent it has not met yet:
    a step shown above the answer must sort after its run (``earlier``) and before the answer
    (``later``), which was stamped first.
    """
    end = _moment(later)
    start = end - timedelta(milliseconds=1)
    if earlier is not None:
        start = max(start, _moment(earlier))
    return _stamp(start + (end - start) / 2)


@dataclass(eq=False)
class Viewer:
    """A session watching a reply it did not ask for."""

    session: WebsocketSession
    history: History
    # Steps this viewer was shown as streaming (its snapshot, or a stream_start since).
    shown: set[str] = field(default_factory=set)

    @property
    def emitter(self) -> ChainlitEmitter:
        return ChainlitEmitter(self.session)


@dataclass(eq=False)
class LiveReply:
    """One reply being written, and who is watching it."""

    thread_id: str
    reply: cl.Message
    user_text: str
    user_message_id: str
    origin: WebsocketSession
    task: asyncio.Task | None
    # Files sent with the user's message (attachments.Attachment), for the viewers' histories.
    files: tuple = ()
    viewers: list[Viewer] = field(default_factory=list)
    # Sessions gone from their socket: id -> the socket they had (a reconnect changes it).
    departed: dict[str, str | None] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # The answer's thinking step (gemini_chat/thinking.py) once its first thought came.
    thinking: cl.Step | None = None
    # Other steps of the turn, by id, as last shown: its tool calls and the questions about
    # them (gemini_chat/toolsteps.py, gemini_chat/approval.py).
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The creation stamp given last to a step of the turn (stamp_before_answer).
    last_stamp: str | None = None

    def sink(self) -> Callable[[str], Awaitable[None]]:
        """Where the reply's text goes: the asking session, then every viewer."""

        async def write(piece: str) -> None:
            # Viewers attached during the awaits below already got this piece in their
            # snapshot (the message's content grows before it is emitted).
            targets = list(self.viewers)
            await self.reply.stream_token(piece)
            for viewer in targets:
                await _quietly(viewer.emitter.send_token(self.reply.id, piece))

        return write

    def stamp_before_answer(self) -> str:
        """The creation stamp of a step the turn opens (its thinking, a tool call): the chat is
        loaded again in this order.

        The answer was stamped when the turn began. Until its text shows, a step sorts after the
        run and every step opened before it, and before the answer; once the text shows, where
        the step appears live, below it. A reopened chat shows them as they were shown live."""
        reply = self.reply
        if reply.content or reply.streaming or not reply.created_at:
            moment = _moment(utc_now())
        elif self.last_stamp is None:
            run = cl.context.current_step
            run_stamp = run.created_at if run is not None and run.id == reply.parent_id else None
            moment = _moment(stamp_between(run_stamp, reply.created_at))
        else:
            moment = _moment(self.last_stamp)
        if self.last_stamp is not None:
            moment = max(moment, _moment(self.last_stamp) + timedelta(microseconds=1))
        self.last_stamp = _stamp(moment)
        return self.last_stamp

    def snapshot(self) -> list[dict[str, Any]]:
        """The thinking step, if any, the turn's other steps and the reply, as stored steps
        would show them, with the text written so far."""
        steps = [self.thinking.to_dict()] if self.thinking is not None else []
        steps.extend(self.steps.values())
        steps.append({**self.reply.to_dict(), "streaming": True})
        return steps

    async def stream_thinking(self, step: cl.Step, piece: str) -> None:
        """A piece of the thinking step, for the asking session and the viewers."""
        # Viewers attached during the await below get this piece in their snapshot.
        targets = list(self.viewers)
        await step.stream_token(piece)
        for viewer in targets:
            if step.id in viewer.shown:
                await _quietly(viewer.emitter.send_token(step.id, piece))
            else:
                viewer.shown.add(step.id)
                await _quietly(viewer.emitter.stream_start(step.to_dict()))

    async def show_step(self, step: dict[str, Any]) -> None:
        """A step of the turn was shown to the asking session or changed there: the viewers
        get it as it is now (the page adds a step it does not have, and updates one it has)."""
        self.steps[step["id"]] = step
        for viewer in list(self.viewers):
            viewer.shown.add(step["id"])
            await _quietly(viewer.emitter.send_step(step))

    async def finish_thinking(self, step: cl.Step) -> None:
        for viewer in list(self.viewers):
            await _quietly(viewer.emitter.update_step(step.to_dict()))

    def attach(self, session: WebsocketSession, history: History) -> Viewer:
        viewer = Viewer(session, history)
        self.viewers.append(viewer)
        return viewer

    def detach(self, session: WebsocketSession) -> None:
        self.viewers = [v for v in self.viewers if v.session is not session]

    def left(self, session: WebsocketSession) -> None:
        self.departed[session.id] = session.socket_id

    def anyone_watching(self) -> bool:
        sessions = [self.origin, *(v.session for v in self.viewers)]
        return any(
            session.id not in self.departed or session.socket_id != self.departed[session.id]
            for session in sessions
        )

    async def broadcast_message(self, message: cl.Message) -> None:
        """A message the asking session was sent (an error notice), for the viewers too."""
        step = message.to_dict()
        for viewer in list(self.viewers):
            await _quietly(viewer.emitter.send_step(step))

    async def finish(self, answer: str) -> None:
        """The reply is over (complete, stopped or failed): viewers get its final form and the
        turn in their history, and are free to ask the next question."""
        final = {**self.reply.to_dict(), "streaming": False}
        for viewer in list(self.viewers):
            # A continued answer replaces the cut-off one the viewer's history holds.
            viewer.history.take_back(self.user_message_id)
            viewer.history.record(
                self.user_text,
                answer,
                self.user_message_id,
                self.files,
                # A turn that used tools: its items, as the asking session keeps them.
                stored_items((self.reply.metadata or {}).get(ITEMS_KEY)),
            )
            await _quietly(viewer.emitter.update_step(final))
            await _quietly(viewer.emitter.task_end())
        self.done.set()


async def _quietly(emission: Awaitable[Any]) -> None:
    # A viewer whose socket went away must not break the reply for everybody else.
    try:
        await emission
    except Exception as error:  # socket.io raises several kinds for a gone client
        logger.debug("Could not reach a viewer: %s", type(error).__name__)


class LiveReplies:
    """The replies streaming in this process, by thread id."""

    def __init__(self) -> None:
        self._by_thread: dict[str, LiveReply] = {}

    def get(self, thread_id: str | None) -> LiveReply | None:
        return self._by_thread.get(thread_id) if thread_id else None

    def start(self, live: LiveReply) -> None:
        self._by_thread[live.thread_id] = live

    def end(self, live: LiveReply) -> None:
        if self._by_thread.get(live.thread_id) is live:
            del self._by_thread[live.thread_id]

    def watched_by(self, session: WebsocketSession) -> LiveReply | None:
        """The reply ``session`` asked for or watches, if one is streaming."""
        live = self.get(getattr(session, "thread_id", None))
        if live is None:
            return None
        if live.origin is session or any(v.session is session for v in live.viewers):
            return live
        return None

    def show_to(self, thread: dict[str, Any], session: WebsocketSession, history: History) -> bool:
        """Attach ``session``, which is opening ``thread``, to the reply streaming in it, if
        any: the reply joins the thread's steps as loaded, so it shows at once. True if
        attached."""
        live = self.get(thread.get("id"))
        if live is None or live.origin is session:
            return False
        steps = thread.setdefault("steps", [])
        snapshot = live.snapshot()
        ids = {step["id"] for step in snapshot}
        steps[:] = [s for s in steps if s.get("id") not in ids]
        steps.extend(snapshot)
        live.attach(session, history).shown.update(ids)
        logger.info("A reopened chat follows the answer it is writing")
        return True


live_replies = LiveReplies()
