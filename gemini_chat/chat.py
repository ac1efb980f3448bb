"""One chat session in Chainlit: its history, its turns, stop and disconnect handling.

Messages sent while a reply is still streaming are queued: each waits for the previous turn to
finish, so one chat never has two runs interleaving and the history stays in order. Stop cancels
the running turn and everything queued behind it.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from dataclasses import dataclass, field

import chainlit as cl
from chainlit.chat_context import chat_contexts
from chainlit.config import config as chainlit_config
from chainlit.session import WebsocketSession
from chainlit.user_session import user_sessions
from chainlit.utils import utc_now

from .config import Settings
from .errors import ChatError, EmptyMessage, InputError, MessageTooLong, MissingApiKey, log_detail
from .framework import after_resume_sent
from .history import REPLY_MARKS, STOPPED_BEFORE_TEXT, History, history_from_steps
from .limits import Admission, LimitRefusal, UsageCounter, tokens_used
from .live import LiveReply, live_replies
from .llm import Backend
from .runtime import idle_collector
from .starters import offer_starters
from .streaming import EventBudget, ReplyStream

logger = logging.getLogger("gemini_chat")

SESSION_KEY = "conversation"


def check_input(text: str, settings: Settings) -> None:
    """Raise InputError for a message that must not go upstream. The text itself is never
    altered: emoji, right-to-left text, combining marks and control characters go as typed."""
    if not text or all(c.isspace() or unicodedata.category(c) == "Cf" for c in text):
        raise EmptyMessage()
    if len(text) > settings.max_message_chars:
        raise MessageTooLong(len(text), settings.max_message_chars)


@dataclass
class Conversation:
    """Per-chat state kept in ``cl.user_session``."""

    history: History
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task] = field(default_factory=set)
    disconnect_watch: asyncio.Task | None = None

    def cancel_turns(self) -> int:
        """Cancel the running turn and all queued ones; return how many were cancelled."""
        current = asyncio.current_task()
        targets = [t for t in self.tasks if t is not current and not t.done()]
        for task in targets:
            task.cancel()
        return len(targets)


def release_session(session_id: str) -> None:
    """Drop the per-chat state Chainlit would keep for the life of the process."""
    chat_contexts.pop(session_id, None)
    user_sessions.pop(session_id, None)


def schedule_release(session, session_timeout: float) -> None:
    """Release a chat's state once Chainlit has deleted its session: at once when the browser
    asked for a new chat, otherwise after the reconnection window, if nobody came back."""
    session_id = session.id
    if getattr(session, "to_clear", False):
        # Chainlit deletes the session right after this hook; release after that.
        asyncio.get_running_loop().call_soon(release_session, session_id)
        return

    async def release_if_gone() -> None:
        await asyncio.sleep(session_timeout + 1)
        if WebsocketSession.get_by_id(session_id) is None:
            release_session(session_id)

    _pending_releases.add(task := asyncio.create_task(release_if_gone()))
    task.add_done_callback(_pending_releases.discard)


# Background work (watches of gone sessions, usage being recorded), kept referenced until done.
_pending_releases: set[asyncio.Task] = set()


class ChatController:
    """The handlers' logic; ``backend`` is None when no API key is configured, ``usage`` when
    no per-user limit is in force."""

    def __init__(
        self, settings: Settings, backend: Backend | None, usage: UsageCounter | None = None
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.usage = usage
        # One per process: every streaming reply draws its socket updates from it.
        self.event_budget = EventBudget()

    # -- lifecycle

    async def start(self) -> None:
        cl.user_session.set(SESSION_KEY, Conversation(History(self.settings.history_token_budget)))
        if self.backend is None:
            await self._notice(str(MissingApiKey()))
            return
        welcome = cl.Message(
            content=self.settings.welcome,
            author=self.settings.assistant_name,
            metadata={"kind": "welcome"},
        )
        await offer_starters(welcome.id, self.settings.starters)
        await welcome.send()

    async def resume(self, thread: dict) -> None:
        """Continue a stored chat: its history is rebuilt from the stored messages (Chainlit's
        copy of the old session is not trusted for that)."""
        history = history_from_steps(thread.get("steps") or [], self.settings.history_token_budget)
        cl.user_session.set(SESSION_KEY, Conversation(history))
        logger.info("Resumed a chat with %d earlier turn(s)", len(history.turns))
        # An answer still being written in this chat (the page was reloaded, or the chat opened
        # in another tab): show it as it is and follow it live; the composer waits for it.
        if live_replies.show_to(thread, cl.context.session, history):
            emitter = cl.context.emitter
            after_resume_sent(emitter, emitter.task_start)

    def conversation(self) -> Conversation:
        conversation = cl.user_session.get(SESSION_KEY)
        if conversation is None:  # e.g. a message arriving on a session restored after a restart
            conversation = Conversation(History(self.settings.history_token_budget))
            cl.user_session.set(SESSION_KEY, conversation)
        return conversation

    async def stop(self) -> None:
        cancelled = self.conversation().cancel_turns()
        watched = live_replies.watched_by(cl.context.session)
        if watched is not None and watched.task is not None and not watched.task.done():
            watched.task.cancel()  # stopped from a tab that follows the answer
            cancelled += 1
        logger.info("Stop requested: cancelled %d turn(s)", cancelled)

    async def end(self) -> None:
        """The browser went away. Give it a grace period to come back before stopping the
        reply: a network blip that reconnects must not lose the answer. Once the session is
        gone for good, free what Chainlit keeps for it (its chat context is never freed)."""
        session = cl.context.session
        schedule_release(session, chainlit_config.project.session_timeout)
        conversation = self.conversation()
        live = live_replies.watched_by(session)
        if live is not None:
            live.left(session)
            if live.origin is not session:
                watch = asyncio.create_task(self._stop_live_if_unwatched(live, session))
                _pending_releases.add(watch)
                watch.add_done_callback(_pending_releases.discard)
        if not conversation.tasks:
            return
        socket_id = getattr(session, "socket_id", None)

        async def stop_if_gone() -> None:
            await asyncio.sleep(self.settings.disconnect_grace)
            if getattr(session, "socket_id", None) == socket_id:
                if live is not None and live.anyone_watching():
                    return  # reloaded, or open in another tab: the answer is still wanted
                cancelled = conversation.cancel_turns()
                logger.info(
                    "Client gone for %.0fs: cancelled %d turn(s)",
                    self.settings.disconnect_grace,
                    cancelled,
                )

        if conversation.disconnect_watch is not None:
            conversation.disconnect_watch.cancel()
        conversation.disconnect_watch = asyncio.create_task(stop_if_gone())

    async def _stop_live_if_unwatched(self, live: LiveReply, viewer) -> None:
        """A tab that followed an answer went away: once the grace period is over, the answer
        stops if nobody, not even the tab that asked for it, is there any more."""
        socket_id = viewer.socket_id
        await asyncio.sleep(self.settings.disconnect_grace)
        if viewer.socket_id == socket_id:
            live.detach(viewer)
        if live.task is not None and not live.task.done() and not live.anyone_watching():
            logger.info("Every tab of a chat gone: stopping its answer")
            live.task.cancel()

    # -- a message

    async def handle(self, message: cl.Message | None) -> None:
        if message is None:  # an edit of a message Chainlit no longer knows
            return
        text = message.content or ""
        admission: Admission | None = None
        try:
            check_input(text, self.settings)
            if self.backend is None:
                raise MissingApiKey()
            if self.usage is not None:
                # Counted as it arrives, before it waits behind a reply: a burst is cut short
                # at once, whichever chat or app instance it goes to.
                admission = await self.usage.admit(self._user())
        except (InputError, MissingApiKey, LimitRefusal) as refusal:
            logger.info("Refused a message without calling Gemini: %s", log_detail(refusal))
            await self._notice(str(refusal))
            return
        conversation = self.conversation()
        task = asyncio.current_task()
        conversation.tasks.add(task)
        idle_collector.started()
        try:
            async with conversation.turn_lock:
                watched = live_replies.watched_by(cl.context.session)
                if watched is not None and watched.origin is not cl.context.session:
                    # Sent from a tab following an answer: after it, with it in the history.
                    await watched.done.wait()
                if conversation.history.rewind(message.id):
                    logger.info("An edited message: the history was rewound to it")
                await self._turn(conversation, text, message.id, admission)
        finally:
            conversation.tasks.discard(task)
            idle_collector.finished()

    def _user(self) -> str:
        user = cl.context.session.user
        return user.identifier if user is not None else ""

    async def _turn(
        self,
        conversation: Conversation,
        text: str,
        message_id: str,
        admission: Admission | None = None,
    ) -> None:
        backend = self.backend
        assert backend is not None
        reply = cl.Message(
            content="",
            author=self.settings.assistant_name,
            # Which message this answers, so a stored chat can be rebuilt exactly.
            metadata={"kind": "reply", "for": message_id, "status": "complete"},
            # Stamped now, not when the stream ends, so a message queued meanwhile sorts after.
            created_at=utc_now(),
        )
        session = cl.context.session
        live = LiveReply(
            thread_id=session.thread_id,
            reply=reply,
            user_text=text,
            user_message_id=message_id,
            origin=session,
            task=asyncio.current_task(),
        )
        live_replies.start(live)
        stream = ReplyStream(backend, live.sink(), self.event_budget)
        items = conversation.history.request_items(text, self.settings.instructions)
        answer = ""
        stopped = False
        try:
            answer = await stream.run(items)
            reply.content = answer
            await reply.send()
            conversation.history.record(text, answer, message_id)
        except asyncio.CancelledError:
            stopped = True
            answer = stream.text
            await self._finish_partial(reply, answer, "stopped")
            conversation.history.record(text, answer, message_id)
            raise
        except ChatError as failure:
            answer = stream.text
            await self._finish_partial(reply, answer, "incomplete")
            conversation.history.record(text, answer, message_id)
            await live.broadcast_message(await self._notice(str(failure)))
            return
        finally:
            spending = self._spend(admission, stream, items, stopped)
            live_replies.end(live)
            await live.finish(answer)
            if spending is not None:
                # Done before the turn ends, so the next message sees it; shielded, so a
                # second stop cannot lose what the reply cost.
                await asyncio.shield(spending)

    def _spend(
        self, admission: Admission | None, stream: ReplyStream, items: list, stopped: bool
    ) -> asyncio.Task | None:
        """Start adding the turn's tokens to the user's day. A request stopped before any
        answer may have been charged all the same; one refused before it is not."""
        if admission is None or self.usage is None:
            return None
        report = stream.report
        tokens = tokens_used(
            report.total_tokens,
            self.settings.instructions,
            items,
            stream.text,
            reached=stopped or report.chunks > 0,
        )
        task = asyncio.create_task(self.usage.spend(admission, tokens))
        _pending_releases.add(task)
        task.add_done_callback(_pending_releases.discard)
        return task

    async def _finish_partial(self, reply: cl.Message, text: str, status: str) -> None:
        """Keep what streamed on screen, visibly marked; the history gets the text alone.
        A reply stopped before any text is shown as the mark alone, so a stop always leaves
        one visible trace; a failure before any text is explained by its notice instead."""
        if not text and status != "stopped":
            return
        reply.content = text + REPLY_MARKS[status] if text else STOPPED_BEFORE_TEXT
        reply.metadata = {**(reply.metadata or {}), "status": status}
        await reply.send()

    async def _notice(self, text: str) -> cl.ErrorMessage:
        notice = cl.ErrorMessage(content=text, author=self.settings.assistant_name)
        notice.metadata = {"kind": "notice"}
        # Outside the hook's run step: the frontend puts copy and thumbs buttons on the last
        # message of a run, and a notice is nothing to rate or copy.
        notice.parent_id = None
        await notice.send()
        return notice
