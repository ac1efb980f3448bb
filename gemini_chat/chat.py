"""One chat session in Chainlit: its history, its turns, stop and disconnect handling.

Messages sent while a reply is still streaming are queued: each waits for the previous turn to
finish, so one chat never has two runs interleaving and the history stays in order. Stop cancels
the running turn and everything queued behind it.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import chainlit as cl
from chainlit.chat_context import chat_contexts
from chainlit.user_session import user_sessions
from chainlit.utils import utc_now

from . import metrics
from .actions import CONTINUE_PROMPT, Answers, LastAnswer, set_aside, show_usage
from .attachments import Attachment, AttachmentRefused, configured_limits
from .config import Settings
from .drain import show_draining_notice
from .errors import (
    AnswerTruncated,
    ChatError,
    EmptyMessage,
    InputError,
    MessageTooLong,
    MissingApiKey,
    log_detail,
)
from .framework import after_resume_sent
from .history import (
    ITEMS_KEY,
    PROMPT_KEY,
    REPLY_MARKS,
    STOPPED_BEFORE_TEXT,
    History,
    Part,
    continued_items,
    history_from_steps,
)
from .lifecycle import lifecycle
from .limits import Admission, LimitRefusal, UsageCounter, tokens_used
from .live import LiveReply, live_replies
from .llm import Backend
from .partial import PartialSaver, settle_interrupted
from .preferences import METADATA_KEY as PREFERENCES_KEY
from .preferences import (
    ModelCatalog,
    Preferences,
    SettingsRefused,
    apply_change,
    defaults,
    restored,
    show_on_resume,
    show_panel,
    store,
    stored_in,
)
from .reconnect import stable_id
from .relay import current_relay
from .runtime import idle_collector
from .starters import offer_starters
from .streaming import EventBudget, ReplyStream
from .thinking import ThinkingStep
from .toolsteps import ToolSteps
from .uploads import discard_files, keep_files, message_files, release_uploads, stored_files
from .usage import METADATA_KEY as USAGE_KEY
from .usage import TokenUsage

logger = logging.getLogger("gemini_chat")

SESSION_KEY = "conversation"


def check_input(text: str, settings: Settings, with_files: bool = False) -> None:
    """Raise InputError for a message that must not go upstream. The text itself is never
    altered: emoji, right-to-left text, combining marks and control characters go as typed.
    A message of files alone may have no text."""
    blank = not text or all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)
    if blank and not with_files:
        raise EmptyMessage()
    if len(text) > settings.max_message_chars:
        raise MessageTooLong(len(text), settings.max_message_chars)


@dataclass
class Conversation:
    """Per-chat state kept in ``cl.user_session``."""

    history: History
    # This chat's model, temperature, instructions and thinking level (preferences.py).
    preferences: Preferences | None = None
    # Chosen before the chat's first message, when there was no stored chat to write them to.
    preferences_unsaved: bool = False
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task] = field(default_factory=set)
    disconnect_watch: asyncio.Task | None = None
    answers: Answers = field(default_factory=Answers)

    def cancel_turns(self) -> int:
        """Cancel the running turn and all queued ones; return how many were cancelled."""
        current = asyncio.current_task()
        targets = [t for t in self.tasks if t is not current and not t.done()]
        for task in targets:
            task.cancel()
        return len(targets)


def release_session(session_id: str) -> None:
    """Drop the per-chat state Chainlit would keep for the life of the process; called as
    Chainlit deletes the session (``framework.release_with_session``)."""
    chat_contexts.pop(session_id, None)
    user_sessions.pop(session_id, None)
    resumes.settled(session_id)
    idle_collector.released()


# How long a message that arrived while its chat was being reopened waits for the history.
RESUME_WAIT_SECONDS = 10.0


class Resumes:
    """Sessions whose stored chat is being reopened, for the messages that arrive meanwhile.

    A page's socket that comes back to a server that no longer has its session (a restart,
    another instance) asks for its chat to be resumed, and Chainlit handles a message sent at
    that moment alongside the resume: without waiting, the message would be answered with no
    history, and the resume would then replace the chat's state and, on the page, the chat
    shown, question included."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[None]] = {}

    def pending(self, session) -> bool:
        # Chainlit stores the session's values with the chat (ours as null, not being JSON)
        # and puts them back first when it reopens it: a null is a chat not reopened yet.
        return bool(getattr(session, "thread_id_to_resume", None)) and (
            user_sessions.get(session.id, {}).get(SESSION_KEY) is None
            or session.id in self._waiting
        )

    async def wait(self, session) -> bool:
        """Wait until the chat of ``session`` is reopened and shown; False if it took too
        long (the message then goes on with what there is)."""
        waiting = self._waiting.get(session.id)
        if waiting is None:
            waiting = self._waiting[session.id] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(waiting), RESUME_WAIT_SECONDS)
            return True
        except TimeoutError:
            logger.warning("A message waited for its chat to reopen, in vain")
            return False

    def started(self, session_id: str) -> None:
        if session_id not in self._waiting:
            self._waiting[session_id] = asyncio.get_running_loop().create_future()

    def settled(self, session_id: str) -> None:
        waiting = self._waiting.pop(session_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)


resumes = Resumes()


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
        # The models a chat may use, listed by Gemini once for all chats.
        self.catalog = ModelCatalog(backend.client if backend else None, settings)

    # -- lifecycle

    async def start(self) -> None:
        conversation = Conversation(History(self.settings.history_token_budget))
        cl.user_session.set(SESSION_KEY, conversation)
        resumes.settled(cl.context.session.id)  # nothing to reopen (e.g. the chat was not found)
        if self.backend is None:
            await self._notice(str(MissingApiKey()))
            return
        welcome = cl.Message(
            content=self.settings.welcome,
            author=self.settings.assistant_name,
            metadata={"kind": "welcome"},
            # A page that reconnects to a restarted server has it already: shown once.
            id=stable_id(cl.context.session.id, "welcome"),
        )
        await offer_starters(welcome.id, self.settings.starters)
        await welcome.send()
        conversation.preferences = defaults(self.settings)
        # Sent once Gemini's model list is known, without holding up the start: until the hook
        # returns, the page shows the chat as busy.
        offer = asyncio.create_task(self._offer_panel(conversation.preferences))
        _pending_releases.add(offer)
        offer.add_done_callback(_pending_releases.discard)

    async def _offer_panel(self, preferences: Preferences) -> None:
        await show_panel(preferences, await self.catalog.choices())

    async def resume(self, thread: dict) -> None:
        """Continue a stored chat: its history is rebuilt from the stored messages (Chainlit's
        copy of the old session is not trusted for that)."""
        resumes.started(cl.context.session.id)
        live = live_replies.get(thread.get("id"))
        await settle_interrupted(thread, live.step_ids() if live is not None else ())
        steps = thread.get("steps") or []
        history = history_from_steps(
            steps,
            self.settings.history_token_budget,
            await stored_files(thread["id"]) if thread.get("id") else None,
        )
        answers, usages = Answers.from_steps(steps)
        conversation = Conversation(history, answers=answers)
        cl.user_session.set(SESSION_KEY, conversation)
        # Chainlit restored the whole metadata as the session's, and writes it back at every
        # disconnect: without this, a tab closing later would put back the preferences it
        # started with. The stored preferences are written by update_settings only.
        user_sessions.get(cl.context.session.id, {}).pop(PREFERENCES_KEY, None)
        if self.backend is not None:
            choices = await self.catalog.choices()
            conversation.preferences = restored(stored_in(thread), self.settings, choices)
            await show_panel(conversation.preferences, choices)
            show_on_resume(thread, conversation.preferences)
        logger.info("Resumed a chat with %d earlier turn(s)", len(history.turns))
        # An answer still being written in this chat (the page was reloaded, or the chat opened
        # in another tab): show it as it is and follow it live; the composer waits for it.
        following = live_replies.show_to(thread, cl.context.session, history)
        if not following:  # perhaps on another instance of the app
            following = await current_relay().follow(thread, cl.context.session, history)
        emitter = cl.context.emitter

        session_id = cl.context.session.id

        async def show() -> None:
            resumes.settled(session_id)  # a message sent meanwhile goes on (handle)
            if following:
                await emitter.task_start()
            await answers.show_stored(usages, offer=not following)

        after_resume_sent(emitter, show)

    def conversation(self) -> Conversation:
        conversation = cl.user_session.get(SESSION_KEY)
        if conversation is None:  # e.g. a message arriving on a session restored after a restart
            conversation = Conversation(History(self.settings.history_token_budget))
            cl.user_session.set(SESSION_KEY, conversation)
        return conversation

    async def stop(self) -> None:
        cancelled = self.conversation().cancel_turns()
        watched = live_replies.watched_by(cl.context.session)
        if watched is not None and watched.halt():  # stopped from a tab that follows the answer
            cancelled += 1
        logger.info("Stop requested: cancelled %d turn(s)", cancelled)

    # -- the buttons on the last answer

    async def regenerate(self, action: cl.Action) -> None:
        """Ask again for the last answer, with the same history; the earlier answer stays on
        screen, marked, and leaves the history."""
        self._answer_again(action, continuing=False)

    async def continue_answer(self, action: cl.Action) -> None:
        """Ask Gemini to go on with the last answer, cut off by the length limit."""
        self._answer_again(action, continuing=True)

    def _answer_again(self, action: cl.Action, continuing: bool) -> None:
        conversation = self.conversation()
        thread_id = getattr(cl.context.session, "thread_id", None)
        if self.backend is None or conversation.tasks or live_replies.get(thread_id):
            logger.warning("Refused %s: a reply is running in this chat", action.name)
            return
        last = conversation.answers.claim(action, continuing)
        if last is None:
            return
        # A task of its own, as a message's turn is: Stop and a closed tab cancel it the same
        # way, and the action's request returns at once.
        task = asyncio.create_task(self._again(conversation, last, continuing))
        conversation.tasks.add(task)
        task.add_done_callback(conversation.tasks.discard)

    async def _again(self, conversation: Conversation, last: LastAnswer, continuing: bool) -> None:
        if lifecycle.draining:  # no new answer here: the chat goes on on another instance
            await show_draining_notice(cl.context.session, self.settings.assistant_name)
            await conversation.answers.offer(last)
            return
        emitter = cl.context.emitter
        await emitter.task_start()  # the page shows Stop, as for a message
        idle_collector.started()
        lifecycle.track(asyncio.current_task())
        began = False
        try:
            admission: Admission | None = None
            if self.usage is not None:
                try:
                    admission = await self.usage.admit(self._user())
                except LimitRefusal as refusal:
                    logger.info("Refused an answer asked again: %s", log_detail(refusal))
                    metrics.message_refused()
                    await self._notice(str(refusal))
                    await conversation.answers.offer(last)
                    return
            async with conversation.turn_lock:
                began = True
                # The question goes again with the files it came with.
                asked = conversation.history.last_turn_for(last.user_message_id)
                files = asked.files if asked is not None else ()
                if continuing:
                    await self._turn(
                        conversation, last.user_text, last.user_message_id, admission, last, files
                    )
                    return
                await set_aside(last)
                conversation.history.take_back(last.user_message_id)
                # In a run step of its own under the question, as Chainlit does for a
                # message: the page puts copy and thumbs on a run's answer.
                async with cl.Step(name="on_message", type="run", parent_id=last.user_message_id):
                    await self._turn(
                        conversation,
                        last.user_text,
                        last.user_message_id,
                        admission,
                        files=files,
                    )
        except asyncio.CancelledError:
            # Stopped: the turn has marked its answer; stopped before it began (waiting for
            # the database), the last answer is offered again as it was.
            if not began:
                await conversation.answers.offer(last)
        finally:
            idle_collector.finished()
            await emitter.task_end()

    async def end(self) -> None:
        """The browser went away. Give it a grace period to come back before stopping the
        reply: a network blip that reconnects must not lose the answer. (What Chainlit keeps
        of the chat is freed when it deletes the session: ``release_session``.)"""
        session = cl.context.session
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

    # -- its settings

    async def update_settings(self, values: dict) -> None:
        """The settings panel was confirmed (or a client sent values): keep them if every one
        passes, else say why in the chat and show the previous ones again."""
        if self.backend is None:
            cl.context.session.chat_settings = {}  # no panel without a key: nothing to keep
            return
        conversation = self.conversation()
        current = conversation.preferences or defaults(self.settings)
        choices = await self.catalog.choices()
        try:
            changed = apply_change(current, values, choices)
        except SettingsRefused as refusal:
            logger.info("Refused a settings change: %s", log_detail(refusal))
            await self._notice(str(refusal))
            await show_panel(current, choices)
            return
        conversation.preferences = changed
        # Sent again: another model may take other thinking levels.
        await show_panel(changed, choices)
        await self._store_preferences(conversation)
        logger.info("Chat settings changed: model %s", changed.model)

    async def _store_preferences(self, conversation: Conversation) -> None:
        session = cl.context.session
        if not session.has_first_interaction:
            # Chainlit stores a chat from its first message; written then (handle).
            conversation.preferences_unsaved = True
            return
        conversation.preferences_unsaved = False
        if conversation.preferences is not None:
            await store(session.thread_id, conversation.preferences)

    # -- a message

    async def handle(self, message: cl.Message | None) -> None:
        if message is None:  # an edit of a message Chainlit no longer knows
            return
        if resumes.pending(cl.context.session) and await resumes.wait(cl.context.session):
            # Answered with the reopened chat's history; the page, which has just been sent
            # the chat as stored, shows the question again.
            await cl.context.emitter.send_step(message.to_dict())
        text = message.content or ""
        admission: Admission | None = None
        files: list[Attachment] = []
        if self.conversation().preferences_unsaved:  # the chat is being stored now
            await self._store_preferences(self.conversation())
        try:
            files = await message_files(message, configured_limits(self.settings.max_message_chars))
            check_input(text, self.settings, with_files=bool(files))
            if self.backend is None:
                raise MissingApiKey()
            if self.usage is not None:
                # Counted as it arrives, before it waits behind a reply: a burst is cut short
                # at once, whichever chat or app instance it goes to.
                admission = await self.usage.admit(self._user())
        except (InputError, MissingApiKey, LimitRefusal, AttachmentRefused) as refusal:
            logger.info("Refused a message without calling Gemini: %s", log_detail(refusal))
            await discard_files(message)
            await self._notice(str(refusal))
            metrics.message_refused()
            return
        conversation = self.conversation()
        task = asyncio.current_task()
        conversation.tasks.add(task)
        idle_collector.started()
        lifecycle.track(task)
        try:
            async with conversation.turn_lock:
                watched = live_replies.watched_by(cl.context.session)
                if watched is not None and watched.origin is not cl.context.session:
                    # Sent from a tab following an answer: after it, with it in the history.
                    await watched.done.wait()
                if conversation.history.rewind(message.id):
                    logger.info("An edited message: the history was rewound to it")
                await keep_files(message, files)
                await self._turn(conversation, text, message.id, admission, files=files)
        finally:
            release_uploads(message)
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
        continued: LastAnswer | None = None,
        files: Sequence[Part] = (),
    ) -> None:
        """Answer ``text``; or, with ``continued``, ask Gemini to go on with that cut-off
        answer, which grows in place (and in the history) instead of a new one."""
        assert self.backend is not None
        backend = self.backend.for_chat(conversation.preferences or defaults(self.settings))
        history = conversation.history
        # Before the reply exists: a server slow to start holds up nothing that Stop must undo.
        server_tools = await self._server_tools(backend)
        await conversation.answers.withdraw()
        if continued is not None and continued.reply is not None:
            reply, prefix = continued.reply, continued.text
            reply.content = prefix
            # Stored again when it ends: Chainlit's send() writes a message only once, and the
            # data layer's write of an existing message updates it.
            reply.persisted = False
            if continued.notice is not None:
                await continued.notice.remove()  # the answer goes on: no longer cut off
            items = history.request_items(CONTINUE_PROMPT, backend.agent.instructions, files)
        else:
            reply = cl.Message(
                content="",
                author=self.settings.assistant_name,
                # Which message this answers, so a stored chat can be rebuilt exactly.
                metadata={"kind": "reply", "for": message_id, "status": "complete"},
                # Stamped now, not when the stream ends, so a message queued meanwhile sorts
                # after.
                created_at=utc_now(),
            )
            prefix, continued = "", None
            items = history.request_items(text, backend.agent.instructions, files)
        session = cl.context.session
        live = LiveReply(
            thread_id=session.thread_id,
            reply=reply,
            user_text=text,
            user_message_id=message_id,
            origin=session,
            task=asyncio.current_task(),
            files=tuple(files),
        )
        live_replies.start(live)

        def thinking_step() -> ThinkingStep:
            return ThinkingStep(
                live,
                self.settings.flush_interval,
                self.event_budget,
                self.settings.assistant_name,
                save_interval=self.settings.partial_save_interval,
            )

        stream = ReplyStream(
            backend,
            live.sink(),
            self.event_budget,
            thinking_step() if self.settings.show_thoughts else None,
            observer=ToolSteps(reply.parent_id, self.settings),
            tools=server_tools,
            more_thoughts=thinking_step,
        )

        def settle() -> tuple[dict, ...]:
            """The turn's tool items (none without tools), noted in the reply's metadata so a
            reopened chat sends them again."""
            items = stream.items
            if continued is not None:
                earlier = history.last_turn_for(message_id)
                items = continued_items(earlier, prefix, items, stream.text)
            meta = {k: v for k, v in (reply.metadata or {}).items() if k != ITEMS_KEY}
            if items:
                meta[ITEMS_KEY] = list(items)
            reply.metadata = meta
            return items

        def keep(answer: str, items: tuple[dict, ...]) -> None:
            if continued is not None:
                history.take_back(message_id)
            history.record(text, answer, message_id, files, items)

        answer = ""
        stopped = False
        notice: cl.Message | None = None
        failure: ChatError | None = None
        usage: TokenUsage | None = None
        # Stored as it streams, so a process that dies mid-answer loses little of it.
        saver = PartialSaver.start_for(reply, self.settings.partial_save_interval)
        try:
            try:
                answer = prefix + await stream.run(items)
            finally:
                saver.stop()  # before the reply's final write, which replaces the partial one
                usage = self._account(conversation, reply, stream, continued)
            reply.content = answer
            items = settle()
            reply.metadata = {**reply.metadata, "status": "complete"}
            await reply.send()
            keep(answer, items)
            metrics.message_answered(stream.started)
        except asyncio.CancelledError:
            stopped = True
            metrics.message_stopped()
            answer = prefix + stream.text
            items = settle()
            # Stopped by the user, or cut by the end of a drain (lifecycle.py).
            await self._finish_partial(reply, answer, lifecycle.reply_status_when_cancelled())
            keep(answer, items)
            raise
        except ChatError as error:
            failure = error
            metrics.message_failed(error)
            answer = prefix + stream.text
            items = settle()
            await self._finish_partial(reply, answer, "incomplete")
            keep(answer, items)
            truncated = isinstance(failure, AnswerTruncated) and bool(answer)
            extra = {"for": message_id, "truncated": truncated}
            if not answer and usage is not None:
                extra[USAGE_KEY] = usage.as_metadata()  # shown and counted with the notice
            notice = await self._notice(str(failure), **extra)
            await live.broadcast_message(notice)
            return
        finally:
            spending = self._spend(admission, stream, history.request_tokens, stopped)
            live_replies.end(live)
            await live.finish(answer)
            shown = reply if answer or stopped else None
            holder = shown or notice
            if usage is not None and holder is not None:
                await show_usage(holder.id, usage, replace=continued is not None)
            await conversation.answers.offer(
                LastAnswer(
                    text,
                    message_id,
                    shown,
                    notice,
                    truncated=isinstance(failure, AnswerTruncated) and bool(answer),
                    usage=usage,
                )
            )
            if spending is not None:
                # Done before the turn ends, so the next message sees it; shielded, so a
                # second stop cannot lose what the reply cost.
                await asyncio.shield(spending)

    async def _server_tools(self, backend: Backend) -> list:
        """The MCP servers' tools for this message, behind the guard; a notice in the chat for
        each server that is not there (the answer goes on without it)."""
        if backend.mcp is None:
            return []
        try:
            tools, notices = await backend.mcp.tools()
        except Exception:
            logger.exception("MCP servers' tools could not be listed")
            return []
        for notice in notices:
            await self._notice(notice)
        return backend.with_guard(tools) if tools else []

    def _account(
        self,
        conversation: Conversation,
        reply: cl.Message,
        stream: ReplyStream,
        continued: LastAnswer | None,
    ) -> TokenUsage | None:
        """Note what the reply cost (with the part it continues) in its metadata and the
        chat's total; calibrate the history's budget with the prompt size Gemini reported."""
        report = stream.report
        estimated = conversation.history.request_tokens
        reported = report.last_prompt_tokens
        conversation.history.calibrate(reported, estimated)
        usage = report.usage
        metrics.count_tokens(usage)
        if usage is not None:
            conversation.answers.tokens += usage.total
        earlier = continued.usage if continued is not None else None
        if earlier is not None:
            usage = earlier + usage if usage is not None else earlier
        meta = dict(reply.metadata or {})
        if usage is not None:
            meta[USAGE_KEY] = usage.as_metadata()
        if reported:
            meta[PROMPT_KEY] = {"reported": reported, "estimated": estimated}
        reply.metadata = meta
        return usage

    def _spend(
        self,
        admission: Admission | None,
        stream: ReplyStream,
        sent_tokens: int,
        stopped: bool,
    ) -> asyncio.Task | None:
        """Start adding the turn's tokens to the user's day. A request stopped before any
        answer may have been charged all the same; one refused before it is not."""
        if admission is None or self.usage is None:
            return None
        report = stream.report
        tokens = tokens_used(
            report.total_tokens,
            sent_tokens,
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

    async def _notice(self, text: str, **metadata: object) -> cl.ErrorMessage:
        notice = cl.ErrorMessage(content=text, author=self.settings.assistant_name)
        notice.metadata = {"kind": "notice", **metadata}
        # Outside the hook's run step: the frontend puts copy and thumbs buttons on the last
        # message of a run, and a notice is nothing to rate or copy.
        notice.parent_id = None
        await notice.send()
        return notice
