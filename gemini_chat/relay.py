"""What instances of the app tell each other about answers streaming right now, and about logins
that ended.

One instance (SQLite, or one process on PostgreSQL) has nobody to tell: ``LocalRelay``. Several
instances on one PostgreSQL database talk through its LISTEN/NOTIFY (``PostgresRelay``): each
keeps one connection of its own listening on one channel, and sends on it too.

- A chat opened on instance B while its answer streams on instance A: B asks the channel
  ("watch"); A, which holds the answer, sends what it has written so far and then every change
  its own viewers get (gemini_chat/live.py, ``LiveReply.outlet``: pieces as the stream flushes
  them, not tokens). B keeps a copy (``MirroredReply``) that serves its tabs exactly as a reply
  streaming on B would, a second tab on B included. Stop in such a tab asks A to stop.
- ``streaming_elsewhere(thread_id)``: a question on the channel, answered by the instance holding
  the answer.
- A logout ends its token on every instance at once (tokens.py otherwise trusts a token it
  accepted for a couple of seconds), and the accounts command's changes the same way.

Instances answer every question (yes or no), and say hello every few seconds, so an asker knows
whom to wait for and stops waiting as soon as all of them answered (at most ``ASK_SECONDS``).
A message longer than a notification may carry (8000 bytes) goes in numbered parts. Only a
chat's owner is shown or may stop its answer: the asking instance names the user its session
authenticated (who opened the chat through Chainlit's owner check), and the holder compares it
with its own session's user. The relay failing (database down) only costs the other instances
their view: the answer streams on; the connection is made again with growing pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

logger = logging.getLogger("gemini_chat")

CHANNEL = "gemini_chat_relay"
# PostgreSQL refuses a notification payload of 8000 bytes or more; parts stay well below.
PART_BYTES = 7000
# How long a question on the channel waits for the instance that may hold the answer.
ASK_SECONDS = 0.5
# Instances say hello this often; one not heard from for HELLO_SECONDS * 3 is not waited for.
HELLO_SECONDS = 5.0
# A followed answer not heard of for this long is asked about; gone, its viewers are freed.
QUIET_SECONDS = 5.0
# Notifications waiting to be sent while the connection is busy or down (then dropped).
QUEUE_LIMIT = 10_000
# Parts of a long message not completed within this time are dropped.
PARTS_SECONDS = 30.0


class LocalRelay:
    """A single instance: no answer streams anywhere else, nobody to tell."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def streaming_elsewhere(self, thread_id: str) -> bool:
        """Whether another instance is writing an answer in this chat right now."""
        return False

    async def follow(self, thread: dict[str, Any], session: Any, history: Any) -> bool:
        """Show ``session``, opening ``thread``, the answer streaming in it on another
        instance, if any; True if it follows one."""
        return False

    def login_ended(self, token_id: str) -> None:
        """A login token was ended here (logout): tell the other instances."""


def _dsn(database_url: str) -> str:
    """asyncpg's own form of a SQLAlchemy PostgreSQL URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _owner_of(session: Any) -> str | None:
    return getattr(getattr(session, "user", None), "identifier", None)


class PostgresRelay(LocalRelay):
    """Instances on one PostgreSQL database, talking through LISTEN/NOTIFY."""

    def __init__(
        self,
        database_url: str,
        on_login_ended: Callable[[str], None] | None = None,
        on_accounts_changed: Callable[[], None] | None = None,
    ) -> None:
        self.dsn = _dsn(database_url)
        self.instance = uuid.uuid4().hex[:16]
        self.on_login_ended = on_login_ended
        self.on_accounts_changed = on_accounts_changed
        self.connected = asyncio.Event()
        self._outbox: asyncio.Queue[str] | None = None
        self._task: asyncio.Task | None = None
        self._peers: dict[str, float] = {}
        # Questions asked, by id: the answers so far and the future of the awaited one.
        self._asked: dict[str, _Question] = {}
        self._parts: dict[str, tuple[float, list[str | None]]] = {}
        # Answers written here followed on other instances: thread id -> instance -> its tabs.
        self._followers: dict[str, dict[str, int]] = {}

    # -- the connection

    async def start(self) -> None:
        if self._task is None:
            self._outbox = asyncio.Queue(QUEUE_LIMIT)
            self._task = asyncio.create_task(self._keep_connected())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _keep_connected(self) -> None:
        import asyncpg

        pause = 0.5
        while True:
            connection = None
            try:
                connection = await asyncpg.connect(self.dsn, timeout=5)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _connection, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._heard)
                self.connected.set()
                pause = 0.5
                logger.info("Relay between instances: listening")
                self._say({"k": "hello", "new": True})
                await self._send_until_lost(connection, lost)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database is down, restarting or unreachable
                logger.warning("Relay between instances unavailable: %s", type(error).__name__)
            finally:
                self.connected.clear()
                self._drop_outbox()
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), 2)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)

    async def _send_until_lost(self, connection: Any, lost: asyncio.Event) -> None:
        assert self._outbox is not None
        next_hello = time.monotonic() + HELLO_SECONDS
        while not lost.is_set():
            try:
                payload = await asyncio.wait_for(self._outbox.get(), HELLO_SECONDS)
            except TimeoutError:
                payload = None
            if time.monotonic() >= next_hello:
                # Also finds a connection that died quietly.
                next_hello = time.monotonic() + HELLO_SECONDS
                await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, self._hello())
            if payload is not None:
                await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    def _drop_outbox(self) -> None:
        if self._outbox is not None:
            while not self._outbox.empty():
                self._outbox.get_nowait()

    def _hello(self) -> str:
        return json.dumps({"k": "hello", "from": self.instance})

    def _say(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the channel; never waits, never fails (dropped when the
        relay is down: the answer on this instance goes on regardless)."""
        try:
            self._queue(message)
        except Exception:  # whatever it is, the answer streaming here must not see it
            logger.exception("Relay between instances: a message could not be sent")

    def _queue(self, message: dict[str, Any]) -> None:
        if self._outbox is None or not self.connected.is_set():
            return
        payload = json.dumps({**message, "from": self.instance}, separators=(",", ":"))
        if len(payload.encode()) <= PART_BYTES:
            pieces = [payload]
        else:
            # json.dumps writes ASCII (other characters escaped), and a part's own encoding
            # at most doubles a character (a quote or backslash escaped again).
            size = PART_BYTES // 2
            chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
            key = uuid.uuid4().hex
            pieces = [
                json.dumps({"k": "part", "m": key, "i": i, "n": len(chunks), "d": chunk})
                for i, chunk in enumerate(chunks)
            ]
        if self._outbox.qsize() + len(pieces) > QUEUE_LIMIT:
            logger.warning("Relay between instances: too much to send, a message was dropped")
            return
        for piece in pieces:
            self._outbox.put_nowait(piece)

    def _heard(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            if message.get("k") == "part":
                message = self._assembled(message)
                if message is None:
                    return
            if message.get("from") == self.instance:
                return
            if message.get("to") not in (None, self.instance):
                return
            self._handle(message)
        except Exception:
            # A malformed or unexpected message must not stop the listening.
            logger.exception("Relay between instances: a message could not be handled")

    def _assembled(self, part: dict[str, Any]) -> dict[str, Any] | None:
        now = time.monotonic()
        for key, (started, _) in list(self._parts.items()):
            if now - started > PARTS_SECONDS:
                del self._parts[key]
        started, parts = self._parts.setdefault(part["m"], (now, [None] * int(part["n"])))
        parts[int(part["i"])] = part["d"]
        if any(piece is None for piece in parts):
            return None
        del self._parts[part["m"]]
        return json.loads("".join(parts))  # type: ignore[arg-type]

    # -- what is heard

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("k")
        sender = message.get("from")
        if isinstance(sender, str):
            self._peers[sender] = time.monotonic()
        if kind == "hello":
            if message.get("new"):
                self._say({"k": "hello"})  # so that a new instance knows this one at once
            return
        if kind in ("ask", "watch"):
            self._answer(message)
        elif kind == "answer":
            question = self._asked.get(message.get("q", ""))
            if question is not None:
                question.heard(sender, message)
        elif kind == "ev":
            mirror = _mirror_of(message.get("t"))
            if mirror is not None:
                mirror.change(message)
        elif kind == "viewers":
            live = _live_here(message.get("t"))
            if live is not None and live.owner == message.get("user"):
                self._followers.setdefault(live.thread_id, {})[sender] = int(message["n"])
        elif kind == "stop":
            live = _live_here(message.get("t"))
            if live is not None and live.owner == message.get("user") and live.halt():
                logger.info("Stopped an answer from a tab on another instance")
        elif kind == "login_ended" and self.on_login_ended is not None:
            self.on_login_ended(str(message.get("id")))
        elif kind == "accounts" and self.on_accounts_changed is not None:
            self.on_accounts_changed()

    def _answer(self, question: dict[str, Any]) -> None:
        live = _live_here(question.get("t"))
        # Whether an answer streams is no secret among instances; what it says is the owner's.
        holds = live is not None and (question["k"] == "ask" or live.owner == question.get("user"))
        reply: dict[str, Any] = {"k": "answer", "to": question["from"], "q": question["q"]}
        if not holds or live is None:
            self._say({**reply, "yes": False})
            return
        if question["k"] == "watch":
            thread_id = live.thread_id
            if live.outlet is None:
                live.outlet = lambda change: self._relayed(thread_id, change)
                live.watched_elsewhere = lambda: self._followed(thread_id)
            # In the same turn of the loop as the outlet: every change after this copy
            # follows it on the channel, none before it does.
            reply["steps"] = live.snapshot()
            reply["turn"] = {"user_text": live.user_text, "user_message_id": live.user_message_id}
            logger.info("A chat opened on another instance follows the answer written here")
        self._say({**reply, "yes": True})

    def _relayed(self, thread_id: str, change: dict[str, Any]) -> None:
        self._say({"k": "ev", "t": thread_id, **change})
        if change.get("e") == "end":
            self._followers.pop(thread_id, None)

    def _followed(self, thread_id: str) -> bool:
        """Whether a tab on another instance (one still heard from) follows this answer: it
        goes on for them when the tabs here are gone, as for a second tab here."""
        now = time.monotonic()
        return any(
            count > 0 and now - self._peers.get(instance, 0.0) < HELLO_SECONDS * 3
            for instance, count in self._followers.get(thread_id, {}).items()
        )

    # -- questions

    async def _ask(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Ask the other instances; the first yes, or None once every instance known answered
        no (or ``ASK_SECONDS`` passed)."""
        if not self.connected.is_set():
            return None
        now = time.monotonic()
        peers = {p for p, seen in self._peers.items() if now - seen < HELLO_SECONDS * 3}
        if not peers:
            return None
        key = uuid.uuid4().hex
        question = _Question(peers)
        self._asked[key] = question
        try:
            self._say({**message, "q": key})
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(question.answer, ASK_SECONDS)
            return None
        finally:
            del self._asked[key]

    async def streaming_elsewhere(self, thread_id: str) -> bool:
        if not thread_id:
            return False
        # Any user: the question is whether the chat's answer is being written.
        answer = await self._ask({"k": "ask", "t": thread_id})
        return answer is not None

    async def follow(self, thread: dict[str, Any], session: Any, history: Any) -> bool:
        from .live import live_replies

        thread_id = thread.get("id")
        owner = _owner_of(session)
        if not thread_id or owner is None:
            return False
        answer = await self._ask({"k": "watch", "t": thread_id, "user": owner})
        if answer is None or not answer.get("steps"):
            return False
        mirror = _mirror_of(thread_id)
        if mirror is None:
            mirror = MirroredReply(thread_id, owner, answer["steps"], answer["turn"], self)
            live_replies.start(mirror)  # type: ignore[arg-type]
            mirror.serve()  # in this session's context: its user reads the chat's files
        return live_replies.show_to(thread, session, history)

    def following(self, thread_id: str, owner: str, tabs: int) -> None:
        """How many tabs here follow the answer written elsewhere in ``thread_id``."""
        self._say({"k": "viewers", "t": thread_id, "user": owner, "n": tabs})

    def stop_elsewhere(self, thread_id: str, owner: str) -> None:
        self._say({"k": "stop", "t": thread_id, "user": owner})

    def login_ended(self, token_id: str) -> None:
        self._say({"k": "login_ended", "id": token_id})


class _Question:
    def __init__(self, peers: set[str]) -> None:
        self.waiting = set(peers)
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def heard(self, sender: Any, message: dict[str, Any]) -> None:
        if self.answer.done():
            return
        if message.get("yes"):
            self.answer.set_result(message)
            return
        self.waiting.discard(sender)
        if not self.waiting:
            self.answer.set_result(None)


def _live_here(thread_id: Any):
    """The answer being written on this instance in ``thread_id`` (not a copy of one)."""
    from .live import LiveReply, live_replies

    live = live_replies.get(thread_id if isinstance(thread_id, str) else None)
    return live if isinstance(live, LiveReply) else None


def _mirror_of(thread_id: Any) -> MirroredReply | None:
    from .live import live_replies

    live = live_replies.get(thread_id if isinstance(thread_id, str) else None)
    return live if isinstance(live, MirroredReply) else None


class MirroredReply:
    """This instance's copy of an answer streaming on another: it takes the changes the relay
    brings and serves them to the tabs here that follow the answer, as a ``LiveReply`` does
    (gemini_chat/live.py). Changes are applied to the copy as they arrive and sent to the
    viewers in order by one task."""

    def __init__(
        self,
        thread_id: str,
        owner: str,
        steps: list[dict[str, Any]],
        turn: dict[str, Any],
        relay: PostgresRelay,
    ) -> None:
        from .live import Viewer

        self.thread_id = thread_id
        self.owner = owner
        self.relay = relay
        self.origin = None  # the asking session is on another instance
        self.task = None
        self.viewers: list[Viewer] = []
        self.departed: dict[str, str | None] = {}
        self.done = asyncio.Event()
        self.steps: dict[str, dict[str, Any]] = {step["id"]: dict(step) for step in steps}
        self.reply_id = steps[-1]["id"]
        # The question answered: user_text and user_message_id.
        self.turn = turn
        self._changes: asyncio.Queue[tuple[dict[str, Any], list[Viewer]]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._heard = time.monotonic()

    # -- what live.py and chat.py ask of a reply

    def snapshot(self) -> list[dict[str, Any]]:
        reply = self.steps[self.reply_id]
        return [s for i, s in self.steps.items() if i != self.reply_id] + [dict(reply)]

    def attach(self, session: Any, history: Any):
        from .live import Viewer

        viewer = Viewer(session, history)
        self.viewers.append(viewer)
        self.relay.following(self.thread_id, self.owner, len(self.viewers))
        return viewer

    def detach(self, session: Any) -> None:
        self.viewers = [v for v in self.viewers if v.session is not session]
        self.relay.following(self.thread_id, self.owner, len(self.viewers))

    def left(self, session: Any) -> None:
        self.departed[session.id] = session.socket_id

    def anyone_watching(self) -> bool:
        return any(
            v.session.id not in self.departed or v.session.socket_id != self.departed[v.session.id]
            for v in self.viewers
        )

    def halt(self) -> bool:
        """Stop from a tab here: the instance writing the answer stops it."""
        if self.done.is_set():
            return False
        self.relay.stop_elsewhere(self.thread_id, self.owner)
        return True

    # -- the changes

    def serve(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._send_changes())

    def change(self, change: dict[str, Any]) -> None:
        """A change heard on the channel: applied to the copy now (a tab opening the chat
        later gets it in its snapshot), sent to the viewers there are now."""
        self._heard = time.monotonic()
        kind = change.get("e")
        if kind == "piece":
            step = self.steps.get(change["id"])
            if step is None and change.get("s"):
                # A new streaming step (thinking) goes above the answer.
                reply = self.steps.pop(self.reply_id)
                step = self.steps[change["id"]] = {**change["s"], "output": ""}
                self.steps[self.reply_id] = reply
            if step is None:
                return
            step["output"] = (step.get("output") or "") + change["p"]
            change = {**change, "s": dict(step) if change.get("s") else None}
        elif kind in ("step", "update"):
            known = self.steps.get(change["s"]["id"])
            if known is not None or kind == "step":
                reply = self.steps.pop(self.reply_id)
                self.steps[change["s"]["id"]] = dict(change["s"])
                self.steps[self.reply_id] = reply
        elif kind == "end":
            self._end()
        self._changes.put_nowait((change, list(self.viewers)))

    def _end(self) -> None:
        from .live import live_replies

        live_replies.end(self)  # type: ignore[arg-type]

    async def _send_changes(self) -> None:
        from .live import pieces_to, release, steps_to, updates_to

        while True:
            try:
                change, viewers = await asyncio.wait_for(self._changes.get(), QUIET_SECONDS)
            except TimeoutError:
                if time.monotonic() - self._heard < QUIET_SECONDS:
                    continue
                if await self.relay.streaming_elsewhere(self.thread_id):
                    self._heard = time.monotonic()
                    continue
                change, viewers = self._lost(), list(self.viewers)
            kind = change.get("e")
            if kind == "piece":
                await pieces_to(viewers, change["id"], change["p"], change.get("s"))
            elif kind in ("step", "notice"):
                await steps_to(viewers, change["s"])
            elif kind == "update":
                await updates_to(viewers, change["s"])
            elif kind == "end":
                turn = dict(change["turn"])
                turn["files"] = await self._files(turn["user_message_id"])
                await release(viewers, change["final"], turn)
                self.done.set()
                return

    def _lost(self) -> dict[str, Any]:
        """The instance writing the answer is gone (or the relay is): the tabs here keep what
        was written, marked as interrupted, and may ask the next question with it."""
        from .history import REPLY_MARKS

        logger.warning("Lost the answer followed on another instance")
        self._end()
        text = self.steps[self.reply_id].get("output") or ""
        final = {
            **self.steps[self.reply_id],
            "output": text + REPLY_MARKS.get("interrupted", ""),
            "streaming": False,
        }
        return {"e": "end", "final": final, "turn": {**self.turn, "answer": text}}

    async def _files(self, message_id: str) -> tuple:
        from .uploads import stored_files

        try:
            return tuple((await stored_files(self.thread_id)).get(message_id, ()))
        except Exception as error:
            logger.warning("The files of a followed answer could not be read: %s", error)
            return ()


async def tell_instances_accounts_changed(connection: Any) -> None:
    """Within the transaction that changes accounts (the accounts command): running instances
    on PostgreSQL hear of it when it commits, and check their logins again."""
    if connection.dialect.name == "postgresql":
        await connection.execute(
            sa.text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": json.dumps({"k": "accounts", "from": "accounts"})},
        )


_relay: LocalRelay = LocalRelay()


def current_relay() -> LocalRelay:
    """The relay of this process (read at each use: it is replaced at start when other
    instances may share the database)."""
    return _relay


def install_relay(relay: LocalRelay) -> None:
    global _relay
    _relay = relay


def build_relay(database_url: str, access: Any = None) -> LocalRelay:
    """The relay for this database: PostgreSQL's when other instances may share it. The one
    installed already is kept (``chainlit run -w`` prepares the server again on a change, but
    starts it only once), told about the new ``access``."""
    if make_url(database_url).get_backend_name() != "postgresql":
        return LocalRelay()
    relay = _relay
    if not isinstance(relay, PostgresRelay) or relay.dsn != _dsn(database_url):
        relay = PostgresRelay(database_url)
    if access is not None:
        relay.on_login_ended = access.tokens.ended_elsewhere
        relay.on_accounts_changed = access.accounts_changed
    return relay
