"""Chat storage: the schema (created and upgraded at start-up) and Chainlit's SQLAlchemy data
layer, hardened.

Chainlit's SQLAlchemy layer ships no DDL; the schema here holds every column Chainlit 2.12 writes
(the published DDL lacks ``steps.autoCollapse``, which makes every step insert fail). On start-up
missing tables are created and missing columns added, on SQLite and PostgreSQL alike.

The layer itself is Chainlit's, with five changes: ids that are not UUIDs are refused before any
SQL (Chainlit concatenates stored thread ids into SQL text), a missing thread is "not found"
rather than an exception, SQL errors are logged as errors instead of warnings, thread names are
cut to a title's length, and writes are applied in the order they were requested.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

logger = logging.getLogger("gemini_chat")

TITLE_CHARS = 120

# Column types: native on PostgreSQL (as in Chainlit's published DDL), text on SQLite.
ID = sa.Text().with_variant(postgresql.UUID(as_uuid=False), "postgresql")
JSON_TEXT = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
TAGS = sa.Text().with_variant(postgresql.ARRAY(sa.Text()), "postgresql")

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("identifier", sa.Text, nullable=False, unique=True),
    sa.Column("metadata", JSON_TEXT, nullable=False),
    sa.Column("createdAt", sa.Text),
)

threads = sa.Table(
    "threads",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("createdAt", sa.Text),
    sa.Column("name", sa.Text),
    sa.Column("userId", ID, sa.ForeignKey("users.id", ondelete="CASCADE")),
    sa.Column("userIdentifier", sa.Text),
    sa.Column("tags", TAGS),
    sa.Column("metadata", JSON_TEXT),
    sa.Index("threads_user_id", "userId"),
)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("threadId", ID, sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False),
    sa.Column("parentId", ID),
    sa.Column("streaming", sa.Boolean, nullable=False),
    sa.Column("waitForAnswer", sa.Boolean),
    sa.Column("isError", sa.Boolean),
    sa.Column("metadata", JSON_TEXT),
    sa.Column("tags", TAGS),
    sa.Column("input", sa.Text),
    sa.Column("output", sa.Text),
    sa.Column("createdAt", sa.Text),
    sa.Column("command", sa.Text),
    sa.Column("modes", JSON_TEXT),
    sa.Column("start", sa.Text),
    sa.Column("end", sa.Text),
    sa.Column("generation", JSON_TEXT),
    sa.Column("showInput", sa.Text),
    sa.Column("language", sa.Text),
    sa.Column("indent", sa.Integer),
    sa.Column("defaultOpen", sa.Boolean),
    sa.Column("autoCollapse", sa.Boolean),
    sa.Index("steps_thread_id", "threadId"),
)

elements = sa.Table(
    "elements",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("threadId", ID, sa.ForeignKey("threads.id", ondelete="CASCADE")),
    sa.Column("type", sa.Text),
    sa.Column("url", sa.Text),
    sa.Column("chainlitKey", sa.Text),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("display", sa.Text),
    sa.Column("objectKey", sa.Text),
    sa.Column("size", sa.Text),
    sa.Column("page", sa.Integer),
    sa.Column("language", sa.Text),
    sa.Column("forId", ID),
    sa.Column("mime", sa.Text),
    sa.Column("props", JSON_TEXT),
    sa.Column("autoPlay", sa.Boolean),
    sa.Column("playerConfig", JSON_TEXT),
)

feedbacks = sa.Table(
    "feedbacks",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("forId", ID, nullable=False),
    sa.Column("threadId", ID, sa.ForeignKey("threads.id", ondelete="CASCADE")),
    sa.Column("value", sa.Integer, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Index("feedbacks_for_id", "forId"),
)

# Not Chainlit's: login accounts, kept apart from `users` (whose metadata reaches the browser).
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("identifier", sa.Text, primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
)

# Values the app keeps for itself, such as the signing secret of local mode.
app_settings = sa.Table(
    "app_settings",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


class StorageError(Exception):
    """The database cannot be opened or prepared; the message is safe to print."""


def is_uuid(value: Any) -> bool:
    if isinstance(value, uuid.UUID):
        return True
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def describe_url(url: str) -> str:
    """The database URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable DATABASE_URL>"


def prepare_engine_args(url: str) -> dict[str, Any]:
    if make_url(url).get_backend_name() == "sqlite":
        # Several tasks write at once (steps are persisted in the background): wait for the lock.
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


def _upgrade(connection: sa.Connection) -> list[str]:
    """Create what is missing: tables, then columns of existing tables. Returns what changed."""
    if connection.dialect.name == "sqlite":
        # Readers do not block the writer: the thread list stays fast while a reply is saved.
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    inspector = sa.inspect(connection)
    existing = set(inspector.get_table_names())
    changes = [f"created table {t.name}" for t in metadata.sorted_tables if t.name not in existing]
    metadata.create_all(connection)
    preparer = connection.dialect.identifier_preparer
    for table in metadata.sorted_tables:
        if table.name not in existing:
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            column_type = column.type.compile(dialect=connection.dialect)
            connection.execute(
                sa.text(
                    f"ALTER TABLE {preparer.quote(table.name)} "
                    f"ADD COLUMN {preparer.quote(column.name)} {column_type}"
                )
            )
            changes.append(f"added column {table.name}.{column.name}")
    return changes


async def upgrade_schema(url: str) -> list[str]:
    engine = create_async_engine(url, **prepare_engine_args(url))
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(_upgrade)
    finally:
        await engine.dispose()


T = TypeVar("T")


def run_blocking(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running loop
    (``chainlit run -w`` reloads the app from within the server's loop)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(make())
        except BaseException as error:
            result["error"] = error

    thread = threading.Thread(target=target, name="storage-setup")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def prepare_database(url: str) -> None:
    """Create or upgrade the schema; raise StorageError with a printable message."""
    try:
        changes = run_blocking(lambda: upgrade_schema(url))
    except (SQLAlchemyError, OSError) as error:
        detail = str(getattr(error, "orig", None) or error).splitlines()[0]
        raise StorageError(f"cannot open the database {describe_url(url)}: {detail}") from None
    for change in changes:
        logger.info("Database %s: %s", describe_url(url), change)


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
        self.url = url
        self._write_lock = asyncio.Lock()

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
        return await super().get_thread(thread_id)

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
        parent = super().update_thread
        return await self._in_order(lambda: parent(thread_id, name, user_id, metadata, tags))

    async def delete_thread(self, thread_id: str):
        if not is_uuid(thread_id):
            self._refuse("thread", thread_id)
            return None
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


def load_json(value: Any) -> dict[str, Any]:
    """Step metadata: a dict on PostgreSQL, JSON text on SQLite."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        try:
            loaded = json.loads(value)
        except ValueError:
            return {}
        return loaded if isinstance(loaded, dict) else {}
    return {}


async def read_setting(connection: AsyncConnection, name: str) -> str | None:
    row = (
        await connection.execute(sa.select(app_settings.c.value).where(app_settings.c.name == name))
    ).first()
    return row[0] if row else None
