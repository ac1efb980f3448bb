"""Chainlit's SQLAlchemy data layer, hardened.

Changes to Chainlit's layer: ids that are not UUIDs are refused before any SQL (Chainlit
concatenates stored thread ids into SQL text), a missing thread is "not found" rather than an
exception, SQL errors are logged as errors instead of warnings, thread names are cut to a
title's length, writes are applied in the order they were requested, and work nobody reads is
skipped: a thread already known to exist is not looked up again before each message is stored.

The hooks' own "run" steps (``on_chat_start``, ``on_message``) are stored although the UI hides
them: the frontend hangs an answer's copy and thumbs buttons on the run around it and rates
the run (a feedback's ``forId`` is the run's id), so a chat reopened without them has no
buttons and its ratings have nothing to attach to.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from sqlalchemy.engine import make_url

from .schema import tune_sqlite

logger = logging.getLogger("gemini_chat")

TITLE_CHARS = 120
KNOWN_THREADS = 10_000  # thread ids remembered as existing
T = TypeVar("T")


def is_uuid(value: Any) -> bool:
    if isinstance(value, uuid.UUID):
        return True
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


# Set while the current task holds the write lock, so nested writes (create_step calls
# update_thread) do not wait for themselves.
_holds_write_lock: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "holds_write_lock", default=False
)


class ChatDataLayer(SQLAlchemyDataLayer):
    """Chainlit's SQLAlchemy data layer with ids checked, not-found handled, errors loud and
    writes in order.

    Chainlit fires each write as its own task. Without ordering, an edit's delete of a reply
    could run before the reply's own insert (which first awaits a thread update) and the
    deleted reply would come back. Tasks start in creation order and take this FIFO lock before
    their first await, so writes land in the order Chainlit asked for them.
    """

    def __init__(self, url: str) -> None:
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
        self.url = url
        self._write_lock = asyncio.Lock()
        self._known_threads: OrderedDict[str, None] = OrderedDict()

    def _remember_thread(self, thread_id: str) -> None:
        self._known_threads[thread_id] = None
        self._known_threads.move_to_end(thread_id)
        if len(self._known_threads) > KNOWN_THREADS:
            self._known_threads.popitem(last=False)

    async def _in_order(self, write: Callable[[], Awaitable[T]]) -> T:
        if _holds_write_lock.get():
            return await write()
        async with self._write_lock:
            token = _holds_write_lock.set(True)
            try:
                return await write()
            finally:
                _holds_write_lock.reset(token)

    async def execute_sql(self, query: str, parameters: dict) -> list[dict[str, Any]] | int | None:
        async with self.async_session() as session:
            try:
                await session.begin()
                result = await session.execute(sa.text(query), parameters)
                await session.commit()
                if result.returns_rows:
                    return self.clean_result([dict(row._mapping) for row in result.fetchall()])
                return result.rowcount
            except Exception as error:
                await session.rollback()
                statement = " ".join(query.split())[:120]
                logger.error("Storage error (%s) in: %s", type(error).__name__, statement)
                logger.error("Storage error detail: %s", str(error).splitlines()[0][:300])
                return None

    # -- ids are checked before they reach SQL

    @staticmethod
    def _refuse(kind: str, value: Any) -> None:
        logger.warning("Refused a %s id that is not a UUID: %r", kind, str(value)[:80])

    async def get_thread(self, thread_id: str):
        if not is_uuid(thread_id):
            self._refuse("thread", thread_id)
            return None
        # In line with the writes: a chat reopened right after an answer must show it, and the
        # answer's own write may still be queued.
        parent = super().get_thread
        return await self._in_order(lambda: parent(thread_id))

    async def get_thread_author(self, thread_id: str) -> str:
        # Chainlit's ACL expects "" for a missing thread (404); the parent raises (500).
        if not is_uuid(thread_id):
            self._refuse("thread", thread_id)
            return ""
        result = await self.execute_sql(
            'SELECT "userIdentifier" FROM threads WHERE "id" = :id', {"id": thread_id}
        )
        if isinstance(result, list) and result:
            return result[0].get("userIdentifier") or ""
        return ""

    async def update_thread(
        self, thread_id: str, name=None, user_id=None, metadata=None, tags=None
    ):
        if not is_uuid(thread_id):
            self._refuse("thread", thread_id)
            return None
        if name is not None:
            name = " ".join(str(name).split())[:TITLE_CHARS]
        if tags is not None and self._sqlite:
            tags = None  # SQLite cannot bind a list; the app does not tag threads
        if (name, user_id, metadata, tags) == (None, None, None, None) and (
            thread_id in self._known_threads
        ):
            return None  # Chainlit's "make sure the thread exists" before each step
        parent = super().update_thread

        async def update() -> None:
            await parent(thread_id, name, user_id, metadata, tags)
            self._remember_thread(thread_id)

        return await self._in_order(update)

    async def delete_thread(self, thread_id: str):
        if not is_uuid(thread_id):
            self._refuse("thread", thread_id)
            return None
        self._known_threads.pop(thread_id, None)
        parent = super().delete_thread
        return await self._in_order(lambda: parent(thread_id))

    async def create_step(self, step_dict):
        if not (is_uuid(step_dict.get("id")) and is_uuid(step_dict.get("threadId"))):
            self._refuse("step or thread", f"{step_dict.get('id')}/{step_dict.get('threadId')}")
            return None
        if step_dict.get("parentId") is not None and not is_uuid(step_dict["parentId"]):
            step_dict = {**step_dict, "parentId": None}
        parent = super().create_step
        return await self._in_order(lambda: parent(step_dict))

    async def update_step(self, step_dict):
        return await self.create_step(step_dict)

    async def delete_step(self, step_id: str):
        if not is_uuid(step_id):
            self._refuse("step", step_id)
            return None
        parent = super().delete_step
        return await self._in_order(lambda: parent(step_id))

    async def get_step(self, step_id: str):
        if not is_uuid(step_id):
            self._refuse("step", step_id)
            return None
        return await super().get_step(step_id)

    async def upsert_feedback(self, feedback):
        if not is_uuid(feedback.forId) or (feedback.id and not is_uuid(feedback.id)):
            self._refuse("feedback", feedback.forId)
            raise ValueError("invalid feedback target")
        if feedback.threadId is not None and not is_uuid(feedback.threadId):
            feedback.threadId = None
        parent = super().upsert_feedback
        return await self._in_order(lambda: parent(feedback))

    async def delete_feedback(self, feedback_id: str) -> bool:
        if not is_uuid(feedback_id):
            self._refuse("feedback", feedback_id)
            return False
        parent = super().delete_feedback
        return await self._in_order(lambda: parent(feedback_id))

    async def get_element(self, thread_id: str, element_id: str):
        if not (is_uuid(thread_id) and is_uuid(element_id)):
            self._refuse("element", element_id)
            return None
        return await super().get_element(thread_id, element_id)

    # -- for the app

    async def feedback_owner(self, feedback_id: str) -> str:
        """The identifier of the user whose thread holds the rated message ("" if none)."""
        if not is_uuid(feedback_id):
            return ""
        result = await self.execute_sql(
            'SELECT t."userIdentifier" AS owner FROM feedbacks f JOIN steps s '
            'ON f."forId" = s."id" JOIN threads t ON s."threadId" = t."id" WHERE f."id" = :id',
            {"id": feedback_id},
        )
        if isinstance(result, list) and result:
            return result[0].get("owner") or ""
        return ""

    async def step_owner(self, step_id: str) -> str:
        """The identifier of the user whose thread holds ``step_id`` ("" if none)."""
        if not is_uuid(step_id):
            return ""
        result = await self.execute_sql(
            'SELECT t."userIdentifier" AS owner FROM steps s JOIN threads t '
            'ON s."threadId" = t."id" WHERE s."id" = :id',
            {"id": step_id},
        )
        if isinstance(result, list) and result:
            return result[0].get("owner") or ""
        return ""
