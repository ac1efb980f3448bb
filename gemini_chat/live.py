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

Tabs on other instances of the app follow it through the relay (gemini_chat/relay.py): once one
asks, the reply's ``outlet`` gets every change the viewers here get, as a plain dict, and the
relay's copy of the reply on that instance hands them to its viewers with the same functions
(``pieces_to``, ``steps_to``, ``updates_to``, ``release``).
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


async def pieces_to(
    viewers: list[Viewer], step_id: str, piece: str, step: dict[str, Any] | None = None
) -> None:
    """A piece of a streaming step: a viewer already shown the step gets the piece; another
    gets the step as it is now (``step``, the piece included)."""
    for viewer in viewers:
        if step is None or step_id in viewer.shown:
            await _quietly(viewer.emitter.send_token(step_id, piece))
        else:
            viewer.shown.add(step_id)
            await _quietly(viewer.emitter.stream_start(step))


async def steps_to(viewers: list[Viewer], step: dict[str, Any]) -> None:
    """A step shown or changed: the page adds a step it does not have, and updates one it has."""
    for viewer in viewers:
        viewer.shown.add(step["id"])
        await _quietly(viewer.emitter.send_step(step))


async def updates_to(viewers: list[Viewer], step: dict[str, Any]) -> None:
    for viewer in viewers:
        await _quietly(viewer.emitter.update_step(step))


async def release(viewers: list[Viewer], final: dict[str, Any], turn: dict[str, Any]) -> None:
    """The reply is over: viewers get its final form and the turn in their history, and are
    free to ask the next question. ``turn``: user_text, user_message_id, answer, files, items."""
    for viewer in viewers:
        # A continued answer replaces the cut-off one the viewer's history holds.
        viewer.history.take_back(turn["user_message_id"])
        viewer.history.record(
            turn["user_text"],
            turn["answer"],
            turn["user_message_id"],
            turn.get("files", ()),
            # A turn that used tools: its items, as the asking session keeps them.
            stored_items(turn.get("items")),
        )
        await _quietly(viewer.emitter.update_step(final))
        await _quietly(viewer.emitter.task_end())


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
    # Where every change goes too, once another instance follows the reply (the relay), and
    # whether a tab there still does.
    outlet: Callable[[dict[str, Any]], None] | None = None
    watched_elsewhere: Callable[[], bool] | None = None

    @property
    def owner(self) -> str | None:
        """The identifier of the user whose chat this is."""
        return getattr(self.origin.user, "identifier", None)

    def halt(self) -> bool:
        """Stop the reply (Stop from a tab following it); True if it was running."""
        if self.task is None or self.task.done():
            return False
        self.task.cancel()
        return True

    def _relay(self, change: dict[str, Any]) -> None:
        # Called before the change is emitted here: the copy the relay sends when another
        # instance starts following (snapshot) either holds the change or comes before it.
        if self.outlet is not None:
            self.outlet(change)

    def sink(self) -> Callable[[str], Awaitable[None]]:
        """Where the reply's text goes: the asking session, then every viewer."""

        async def write(piece: str) -> None:
            # Viewers attached during the awaits below already got this piece in their
            # snapshot (the message's content grows before it is emitted).
            targets = list(self.viewers)
            self._relay({"e": "piece", "id": self.reply.id, "p": piece})
            await self.reply.stream_token(piece)
            await pieces_to(targets, self.reply.id, piece)

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

    def step_ids(self) -> set[str]:
        """The ids of the steps this turn is writing: its reply and its thinking step."""
        return {self.reply.id} | ({self.thinking.id} if self.thinking is not None else set())

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
        if self.outlet is not None:
            self._relay({"e": "piece", "id": step.id, "p": piece, "s": _without_output(step)})
        await step.stream_token(piece)
        await pieces_to(targets, step.id, piece, step.to_dict())

    async def show_step(self, step: dict[str, Any]) -> None:
        """A step of the turn was shown to the asking session or changed there: the viewers
        get it as it is now (the page adds a step it does not have, and updates one it has)."""
        self.steps[step["id"]] = step
        self._relay({"e": "step", "s": step})
        await steps_to(list(self.viewers), step)

    async def finish_thinking(self, step: cl.Step) -> None:
        self._relay({"e": "update", "s": step.to_dict()})
        await updates_to(list(self.viewers), step.to_dict())

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
        ) or (self.watched_elsewhere is not None and self.watched_elsewhere())

    async def broadcast_message(self, message: cl.Message) -> None:
        """A message the asking session was sent (an error notice), for the viewers too."""
        step = message.to_dict()
        self._relay({"e": "notice", "s": step})
        for viewer in list(self.viewers):
            await _quietly(viewer.emitter.send_step(step))

    async def finish(self, answer: str) -> None:
        """The reply is over (complete, stopped or failed): viewers get its final form and the
        turn in their history, and are free to ask the next question."""
        final = {**self.reply.to_dict(), "streaming": False}
        turn = {
            "user_text": self.user_text,
            "user_message_id": self.user_message_id,
            "answer": answer,
            "items": (self.reply.metadata or {}).get(ITEMS_KEY),
        }
        # Files stay here: another instance reads them from the database.
        self._relay({"e": "end", "final": final, "turn": turn})
        await release(list(self.viewers), final, {**turn, "files": self.files})
        self.done.set()


def _without_output(step: cl.Step) -> dict[str, Any]:
    shown = step.to_dict()
    shown.pop("output", None)
    return shown


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
