"""Chainlit's SQLAlchemy data layer, hardened.

Changes to Chainlit's layer: every id a client can name is checked against the logged-in user
before any SQL (see ``ownership``: not a UUID, or another user's, and the call does nothing), and
the writes themselves cannot cross users: a thread belongs to whoever first wrote to it, a step
id that exists in another chat is not taken over (``ON CONFLICT ... WHERE`` the same thread), a
rating is never moved to another message. A user's message over the size limit is stored as a
short preview with a mark, not in full. A missing thread is "not found" rather than an
exception, SQL errors are logged as errors instead of warnings, thread names are cut to a
title's length, writes are applied in the order they were requested, and work nobody reads is
skipped: a thread known to be the caller's is not looked up again before each message is stored.

The hooks' own "run" steps (``on_chat_start``, ``on_message``) are stored although the UI hides
them: the frontend hangs an answer's copy and thumbs buttons on the run around it and rates
the run (a feedback's ``forId`` is the run's id), so a chat reopened without them has no
buttons and its ratings have nothing to attach to.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.data.storage_clients.base import BaseStorageClient
from sqlalchemy.engine import make_url

from . import metrics
from .attachments import Attachment, admitted
from .config import Settings
from .history import load_json
from .ownership import Actor, checked_user, owner_checked
from .schema import steps as steps_table
from .schema import tune_sqlite

logger = logging.getLogger("gemini_chat")

TITLE_CHARS = 120
KNOWN_THREADS = 10_000  # thread owners (and deleted threads) remembered
KNOWN_STEPS = 50_000  # the chats of steps this process wrote, remembered
PREVIEW_CHARS = 200  # what is kept of a message over the size limit
FIELD_CHARS = 2_000  # any other field of a user's message (name, metadata, ...)
STEP_COLUMNS = frozenset(steps_table.c.keys())
# A chat's share mark in its metadata (the names Chainlit's frontend reads): written by
# share_thread alone, never by the metadata writes of update_thread.
SHARING_KEYS = ("is_shared", "shared_at")
T = TypeVar("T")

# The identifier of whoever owns a row of each kind ("" when the row has no owner).
OWNER_QUERIES = {
    "thread": 'SELECT "userIdentifier" AS owner FROM threads WHERE "id" = :id',
    "step": 'SELECT t."userIdentifier" AS owner FROM steps s '
    'LEFT JOIN threads t ON t."id" = s."threadId" WHERE s."id" = :id',
    "feedback": 'SELECT t."userIdentifier" AS owner FROM feedbacks f '
    'LEFT JOIN steps s ON s."id" = f."forId" LEFT JOIN threads t ON t."id" = s."threadId" '
    'WHERE f."id" = :id',
    "element": 'SELECT t."userIdentifier" AS owner FROM elements e '
    'LEFT JOIN threads t ON t."id" = e."threadId" WHERE e."id" = :id',
    "user": 'SELECT "identifier" AS owner FROM users WHERE "id" = :id',
}


def bounded_user_message(step: dict[str, Any], limit: int) -> dict[str, Any]:
    """A user's message as stored. Text over ``limit`` is refused by the chat and sent nowhere,
    so only its start is kept, with a mark saying what happened; any other field too large for
    what it is (a client may put anything in them) is cut, or left out if it is not text."""
    step = dict(step)
    text = step.get("output") or ""
    if len(text) > limit:
        logger.info("Storing a %d-character message as a preview: over the limit", len(text))
        step["output"] = (
            f"{text[:PREVIEW_CHARS]}…\n\n"
            f"[message of {len(text):,} characters not sent: over the limit of {limit:,}]"
        )
    for key, value in step.items():
        if key == "output" or value is None:
            continue
        if isinstance(value, str):
            step[key] = value[:FIELD_CHARS]
        elif len(json.dumps(value, default=str)) > FIELD_CHARS:
            step[key] = {} if key == "metadata" else None
    return step


def _as_shared(step: dict[str, Any]) -> dict[str, Any]:
    """A message as a share link shows it: without its rating, the user's messages without the
    login name they were written under."""
    shown = {k: v for k, v in step.items() if k != "feedback"}
    if shown.get("type") == "user_message":
        shown["name"] = "User"
    return shown


# Set while the current task holds the write lock, so nested writes do not wait for themselves.
_holds_write_lock: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "holds_write_lock", default=False
)


ATTACHMENT_URL = "/attachments/{id}"


class AttachmentStore(BaseStorageClient):
    """Attached files' bytes, kept in the chat database (table ``attachments``) with the chat
    and the user they belong to. An object key is the attachment's (the element's) id; its
    read URL is the app's route, which serves it to its owner only (gemini_chat/uploads.py).

    Only the data layer calls it, inside an ownership-checked call: Chainlit's own
    ``create_element`` (which has no owner to give) is replaced by ``ChatDataLayer``'s."""

    def __init__(self, layer: ChatDataLayer) -> None:
        self.layer = layer

    async def upload_file(
        self,
        object_key: str,
        data: bytes | str,
        mime: str = "application/octet-stream",
        overwrite: bool = True,
        content_disposition: str | None = None,
        *,
        owner: str = "",
        thread_id: str = "",
        name: str = "",
    ) -> dict[str, Any]:
        if not owner or not thread_id:
            logger.error("Refused to store an attachment without its owner and chat")
            return {}
        content = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        stored = await self.layer.execute_sql(
            'INSERT INTO attachments ("id", "threadId", "owner", "name", "mime", "size", '
            '"data", "createdAt") VALUES (:id, :thread, :owner, :name, :mime, :size, :data, '
            ':created) ON CONFLICT ("id") DO NOTHING',
            {
                "id": object_key,
                "thread": thread_id,
                "owner": owner,
                "name": name[:FIELD_CHARS],
                "mime": mime,
                "size": len(content),
                "data": content,
                "created": await self.layer.get_current_timestamp(),
            },
        )
        if stored is None:
            return {}
        return {"object_key": object_key, "url": await self.get_read_url(object_key)}

    async def delete_file(self, object_key: str) -> bool:
        return (
            await self.layer.execute_sql(
                'DELETE FROM attachments WHERE "id" = :id', {"id": object_key}
            )
            is not None
        )

    async def get_read_url(self, object_key: str) -> str:
        return ATTACHMENT_URL.format(id=object_key)

    async def close(self) -> None:
        return None


@functools.lru_cache(maxsize=1024)
def _statement(query: str) -> sa.TextClause:
    """The statement for a query text, made once: building one parses the text for its
    parameters (a tenth of the data layer's time), and the queries are a few dozen texts."""
    return sa.text(query)


@owner_checked
class ChatDataLayer(SQLAlchemyDataLayer):
    """Chainlit's SQLAlchemy data layer with owners checked, not-found handled, errors loud and
    writes in order.

    Chainlit fires each write as its own task. Without ordering, an edit's delete of a reply
    could run before the reply's own insert and the deleted reply would come back. Tasks start
    in creation order and take this FIFO lock before their first await (the ownership check
    runs inside it), so writes land in the order Chainlit asked for them.
    """

    def __init__(self, url: str, max_message_chars: int = Settings.max_message_chars) -> None:
        # Uploads are off, so there is no storage provider for elements; say so once, quietly.
        chainlit_logger = logging.getLogger("chainlit")
        level = chainlit_logger.level
        chainlit_logger.setLevel(logging.ERROR)
        try:
            super().__init__(conninfo=url)
        finally:
            chainlit_logger.setLevel(level)
        self._sqlite = make_url(url).get_backend_name() == "sqlite"
        tune_sqlite(self.engine)
        # Each statement of execute_sql is a transaction of its own. On PostgreSQL it commits by
        # itself: one round trip instead of three (BEGIN, the statement, COMMIT), with the same
        # atomicity; that is most of the database's round trips per message. (SQLite is left as
        # it is: its BEGIN and COMMIT are calls within the process, not round trips.)
        self._statements = (
            self.engine
            if self._sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self.storage_provider = AttachmentStore(self)
        self.url = url
        self.max_message_chars = max_message_chars
        self._write_lock = asyncio.Lock()
        # Owners never change once a thread exists, so they can be remembered.
        self._owners: OrderedDict[str, str] = OrderedDict()
        # The login name of each user id looked up: users are never deleted or renamed.
        self._users: dict[str, str] = {}
        # The chat of each step this process wrote. A step never moves to another chat (the
        # write below refuses it), so its owner is its chat's: the ownership check of the same
        # step written again, or named as the parent of the next one, needs no query.
        self._step_threads: OrderedDict[str, str] = OrderedDict()
        # Chats deleted by their owner: a late write (an answer still being written, the
        # session saved at disconnect) must not bring them back as an empty chat.
        self._deleted: OrderedDict[str, None] = OrderedDict()

    async def _in_order(self, write: Callable[[], Awaitable[T]]) -> T:
        if _holds_write_lock.get():
            return await write()
        async with self._write_lock:
            token = _holds_write_lock.set(True)
            try:
                return await write()
            finally:
                _holds_write_lock.reset(token)

    @metrics.timed_statement
    async def execute_sql(self, query: str, parameters: dict) -> list[dict[str, Any]] | int | None:
        # A connection, not an ORM session: the statements are plain SQL, and the session's
        # machinery cost a tenth of each one's Python calls.
        async with self._statements.connect() as connection:
            try:
                result = await connection.execute(_statement(query), parameters)
                rows = (
                    [dict(row._mapping) for row in result.fetchall()]
                    if result.returns_rows
                    else None
                )
                count = result.rowcount
                await connection.commit()
                return self.clean_result(rows) if rows is not None else count
            except Exception as error:
                await connection.rollback()
                statement = " ".join(query.split())[:120]
                logger.error("Storage error (%s) in: %s", type(error).__name__, statement)
                logger.error("Storage error detail: %s", str(error).splitlines()[0][:300])
                return None

    # -- owners (used by the ownership check)

    async def _owner_of(self, kind: str, value: str, cached: bool = True) -> str | None:
        if kind == "thread" and cached and value in self._owners:
            return self._owners[value]
        if kind == "user" and value in self._users:
            return self._users[value]
        if kind == "step" and cached:
            # Only while its chat's owner is remembered: a deleted chat is forgotten there.
            owner = self._owners.get(self._step_threads.get(value, ""))
            if owner is not None:
                return owner
        rows = await self.execute_sql(OWNER_QUERIES[kind], {"id": value})
        if rows is None or isinstance(rows, int):
            return ""  # the database did not answer: nobody's
        if not rows:
            return None
        owner = rows[0].get("owner") or ""
        if kind == "user" and owner:
            self._users[value] = owner
            if len(self._users) > KNOWN_THREADS:
                self._users.pop(next(iter(self._users)))
        if kind == "thread" and owner:
            self._remember_owner(value, owner)
        return owner

    def _remember_owner(self, thread_id: str, owner: str) -> None:
        self._owners[thread_id] = owner
        self._owners.move_to_end(thread_id)
        if len(self._owners) > KNOWN_THREADS:
            self._owners.popitem(last=False)

    async def _claim_thread(self, thread_id: str, actor: Actor) -> bool:
        """Make sure the thread exists and is ``actor``'s: a new thread is created as theirs in
        one statement, so it never exists without its owner."""
        if self._owners.get(thread_id) == actor.identifier:
            return True
        if thread_id in self._deleted:
            logger.info("Not writing to a chat deleted meanwhile")
            return False
        user_id = actor.user_id
        if user_id is None:
            rows = await self.execute_sql(
                'SELECT "id" FROM users WHERE "identifier" = :me', {"me": actor.identifier}
            )
            user_id = rows[0]["id"] if isinstance(rows, list) and rows else None
        created = await self.execute_sql(
            'INSERT INTO threads ("id", "createdAt", "userId", "userIdentifier") '
            'VALUES (:id, :createdAt, :userId, :me) ON CONFLICT ("id") DO NOTHING',
            {
                "id": thread_id,
                "createdAt": await self.get_current_timestamp(),
                "userId": user_id,
                "me": actor.identifier,
            },
        )
        if created == 1:  # a new row, written with this owner: no need to read it back
            self._remember_owner(thread_id, actor.identifier)
            return True
        if await self._owner_of("thread", thread_id, cached=False) != actor.identifier:
            logger.warning("Refused a write by %r to a chat of another user", actor.identifier)
            return False
        return True

    # -- threads

    async def get_thread_author(self, thread_id: str) -> str:
        # Chainlit's ACL expects "" for a missing thread (404); the parent raises (500).
        return await self._owner_of("thread", thread_id) or ""

    async def update_thread(
        self, thread_id: str, name=None, user_id=None, metadata=None, tags=None
    ):
        if name is not None:
            name = " ".join(str(name).split())[:TITLE_CHARS]
        if tags is not None and self._sqlite:
            tags = None  # SQLite cannot bind a list; the app does not tag threads
        if not await self._claim_thread(thread_id, checked_user()):
            return None
        if metadata is not None:
            # Chainlit saves the session (a copy of the metadata read at resume) into the
            # metadata on every disconnect: it must neither undo nor forge a share.
            metadata = {k: v for k, v in metadata.items() if k not in SHARING_KEYS}
        if (name, user_id, metadata, tags) == (None, None, None, None):
            return None  # "make sure the thread exists": done
        return await super().update_thread(thread_id, name, user_id, metadata, tags)

    # -- sharing

    async def _is_shared(self, thread_id: str) -> bool:
        rows = await self.execute_sql(
            'SELECT "metadata" FROM threads WHERE "id" = :id', {"id": thread_id}
        )
        if not isinstance(rows, list) or not rows:
            return False
        return load_json(rows[0].get("metadata")).get("is_shared") is True

    async def share_thread(self, thread_id: str, shared: bool) -> bool:
        """Mark the chat shared (readable by anyone logged in, through get_shared_thread) or
        not; its owner only (ownership.RULES)."""
        mark = {"is_shared": True, "shared_at": await self.get_current_timestamp()}
        unmark = dict.fromkeys(SHARING_KEYS)  # None: the key is removed
        await super().update_thread(thread_id, metadata=mark if shared else unmark)
        return True

    async def get_shared_thread(self, thread_id: str) -> dict[str, Any] | None:
        """A chat as its share link shows it: the messages, and nothing of the owner's own
        (their ratings and comments, their id and login name, their session, their
        attachments)."""
        thread = await super().get_thread(thread_id)
        if not thread:
            return None
        metadata = load_json(thread.get("metadata"))
        return {
            **{k: v for k, v in thread.items() if k not in ("userId", "userIdentifier")},
            "metadata": {k: metadata[k] for k in SHARING_KEYS if k in metadata},
            "steps": [_as_shared(step) for step in thread.get("steps") or []],
            "elements": [],
        }

    async def delete_thread(self, thread_id: str):
        self._owners.pop(thread_id, None)
        self._deleted[thread_id] = None
        if len(self._deleted) > KNOWN_THREADS:
            self._deleted.popitem(last=False)
        return await super().delete_thread(thread_id)

    # -- steps

    async def create_step(self, step_dict):
        return await self._write_step(step_dict)

    async def update_step(self, step_dict):
        return await self._write_step(step_dict)

    async def _write_step(self, step_dict: dict[str, Any]) -> None:
        if not await self._claim_thread(step_dict["threadId"], checked_user()):
            return
        step = {key: value for key, value in step_dict.items() if key in STEP_COLUMNS}
        if step.get("type") == "user_message":
            step = bounded_user_message(step, self.max_message_chars)
        if "showInput" in step:
            step["showInput"] = str(step.get("showInput", "")).lower()
        parameters = {
            key: value
            for key, value in step.items()
            if value is not None and not (isinstance(value, dict) and not value)
        }
        parameters["metadata"] = json.dumps(step.get("metadata") or {})
        parameters["generation"] = json.dumps(step.get("generation") or {})
        if isinstance(parameters.get("modes"), dict):
            parameters["modes"] = json.dumps(parameters["modes"])
        columns = ", ".join(f'"{key}"' for key in parameters)
        values = ", ".join(f":{key}" for key in parameters)
        updates = ", ".join(f'"{key}" = :{key}' for key in parameters if key != "id")
        # A step id that already exists in another chat is left alone: one chat's write never
        # moves or rewrites another chat's message.
        changed = await self.execute_sql(
            f"INSERT INTO steps ({columns}) VALUES ({values}) "
            f'ON CONFLICT ("id") DO UPDATE SET {updates} '
            'WHERE steps."threadId" = excluded."threadId"',
            parameters,
        )
        if changed == 0:
            logger.warning("Refused a message whose id %s belongs to another chat", step["id"])
        elif changed:
            self._step_threads[step["id"]] = step["threadId"]
            self._step_threads.move_to_end(step["id"])
            if len(self._step_threads) > KNOWN_STEPS:
                self._step_threads.popitem(last=False)

    async def delete_step(self, step_id: str):
        self._step_threads.pop(step_id, None)
        for query in (
            'DELETE FROM feedbacks WHERE "forId" = :id',
            # An attached file has its element's id.
            'DELETE FROM attachments WHERE "id" IN (SELECT "id" FROM elements WHERE "forId" = :id)',
            'DELETE FROM elements WHERE "forId" = :id',
            'DELETE FROM steps WHERE "id" = :id',
        ):
            await self.execute_sql(query, {"id": step_id})

    # -- ratings

    async def upsert_feedback(self, feedback):
        feedback.id = feedback.id or str(uuid.uuid4())
        # Stored with the rated step's own thread; an existing rating keeps its message.
        changed = await self.execute_sql(
            'INSERT INTO feedbacks ("id", "forId", "threadId", "value", "comment") '
            'VALUES (:id, :forId, (SELECT "threadId" FROM steps WHERE "id" = :forId), '
            ":value, :comment) "
            'ON CONFLICT ("id") DO UPDATE SET "value" = excluded."value", '
            '"comment" = excluded."comment" WHERE feedbacks."forId" = excluded."forId"',
            {
                "id": feedback.id,
                "forId": feedback.forId,
                "value": feedback.value,
                "comment": feedback.comment,
            },
        )
        if changed != 1:
            logger.warning("Refused rating %s: it belongs to another message", feedback.id)
            raise ValueError("Message not found")
        return feedback.id

    # -- attachments (gemini_chat/attachments.py)

    async def create_element(self, element):
        """Store a file the chat admitted with its message (bytes and all), as its owner's;
        anything else is not stored: an upload is taken only once its message is accepted."""
        attachment = admitted(element)
        if attachment is None or not element.for_id:
            return None
        actor = checked_user()
        if not await self._claim_thread(element.thread_id, actor):
            return None
        stored = await self.storage_provider.upload_file(
            object_key=element.id,
            data=attachment.data,
            mime=attachment.mime,
            owner=actor.identifier,
            thread_id=element.thread_id,
            name=attachment.name,
        )
        if not stored:
            return None
        row = {
            "id": element.id,
            "threadId": element.thread_id,
            "type": attachment.shown_as,
            "name": attachment.name[:FIELD_CHARS],
            "display": "inline",
            "forId": element.for_id,
            "mime": attachment.mime,
            "objectKey": stored["object_key"],
            "url": stored["url"],
        }
        columns = ", ".join(f'"{key}"' for key in row)
        values = ", ".join(f":{key}" for key in row)
        await self.execute_sql(
            f'INSERT INTO elements ({columns}) VALUES ({values}) ON CONFLICT ("id") DO NOTHING',
            row,
        )
        return None

    async def get_attachments(self, thread_id: str) -> list[tuple[str, Attachment]]:
        """The files of a chat, each with the id of the message it came with, oldest first."""
        me = checked_user().identifier
        rows = await self.execute_sql(
            'SELECT e."forId" AS for_id, a."id" AS id, a."name" AS name, a."mime" AS mime, '
            'a."data" AS data FROM attachments a JOIN elements e ON e."id" = a."id" '
            'WHERE a."threadId" = :thread AND a."owner" = :me ORDER BY a."createdAt", a."id"',
            {"thread": thread_id, "me": me},
        )
        if not isinstance(rows, list):
            return []
        return [
            (
                str(row["for_id"]),
                Attachment(row["id"], row["name"], row["mime"], bytes(row["data"])),
            )
            for row in rows
        ]

    async def get_attachment(self, element_id: str) -> Attachment | None:
        """One file, for its owner (None for anyone else)."""
        rows = await self.execute_sql(
            'SELECT "id", "name", "mime", "data" FROM attachments WHERE "id" = :id '
            'AND "owner" = :me',
            {"id": element_id, "me": checked_user().identifier},
        )
        if not isinstance(rows, list) or not rows:
            return None
        row = rows[0]
        return Attachment(row["id"], row["name"], row["mime"], bytes(row["data"]))

    async def get_attachment_usage(self, thread_id: str) -> tuple[int, int]:
        """(files, bytes) a chat holds: (0, 0) for a chat not stored yet."""
        rows = await self.execute_sql(
            'SELECT COUNT(*) AS files, COALESCE(SUM("size"), 0) AS bytes FROM attachments '
            'WHERE "threadId" = :thread AND "owner" = :me',
            {"thread": thread_id, "me": checked_user().identifier},
        )
        if not isinstance(rows, list) or not rows:
            return (0, 0)
        return (int(rows[0]["files"]), int(rows[0]["bytes"]))
