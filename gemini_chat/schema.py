"""The chat database's schema, created and upgraded by the app at start-up.

Chainlit's SQLAlchemy layer ships no DDL; the schema here holds every column Chainlit 2.12 writes
(the published DDL lacks ``steps.autoCollapse``, which makes every step insert fail). On start-up
missing tables are created and missing columns added, on SQLite and PostgreSQL alike. This module
does not import Chainlit, so the accounts command starts quickly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

logger = logging.getLogger("gemini_chat")

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

# Not Chainlit's: the bytes of files attached to messages (gemini_chat/attachments.py), kept
# with the chat (Chainlit's own upload directory is wiped at every shutdown). The id is the
# element's; the owner is the user who attached it, checked on every read.
attachments = sa.Table(
    "attachments",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("threadId", ID, sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("mime", sa.Text, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("createdAt", sa.Text),
    sa.Index("attachments_thread_id", "threadId"),
)

# Not Chainlit's: login accounts, kept apart from `users` (whose metadata reaches the browser).
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("identifier", sa.Text, primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    # Random, replaced when the password changes: a login token names the epoch it was issued
    # in, so changing it ends every session of the account at once.
    sa.Column("session_epoch", sa.Text),
)

# Tokens ended by logging out, kept until they would have expired anyway.
revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("token_id", sa.Text, primary_key=True),
    sa.Column("identifier", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("revoked_tokens_expires_at", "expires_at"),
)

# Values the app keeps for itself, such as the signing secret of local mode.
app_settings = sa.Table(
    "app_settings",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Each user's use, for the per-user limits (limits.py): one row per user, counted in one
# statement per message. The minute window opens with the first message after the last one
# closed (seconds since the epoch); the day is the UTC date its totals are for.
user_usage = sa.Table(
    "user_usage",
    metadata,
    sa.Column("identifier", sa.Text, primary_key=True),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("window_messages", sa.Integer, nullable=False),
    sa.Column("day", sa.Text, nullable=False),
    sa.Column("day_messages", sa.Integer, nullable=False),
    sa.Column("day_tokens", sa.BigInteger, nullable=False),
)

# The login throttle's counts (accounts.LoginThrottle), shared by every instance on the database:
# failures per name and address ("pair"), per address and per name (name or address left
# empty), and the addresses each name has logged in from ("known"). Names are lower-cased;
# times are seconds since the epoch, and rows past the throttle's memory are deleted.
login_attempts = sa.Table(
    "login_attempts",
    metadata,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("address", sa.Text, primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_at", sa.Float, nullable=False),
    sa.Index("login_attempts_last_at", "last_at"),
)


def upsert_into(table: sa.Table, engine: Any) -> Any:
    """An INSERT into ``table`` that can take ON CONFLICT clauses, in the engine's dialect
    (PostgreSQL's and SQLite's share the same API)."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


class StorageError(Exception):
    """The database cannot be opened or prepared; the message is safe to print."""


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


def tune_sqlite(engine: Any) -> None:
    """WAL with synchronous=NORMAL: one fsync per checkpoint rather than per message. A power
    cut may lose the last messages, never the database."""
    if engine.dialect.name != "sqlite":
        return

    @sa.event.listens_for(engine.sync_engine, "connect")
    def on_connect(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


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


def sqlite_path(url: str) -> str | None:
    """The file of an SQLite database URL; None for PostgreSQL or an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def make_private(url: str) -> None:
    """SQLite files readable by their owner only: they hold every chat, the password hashes
    and, in local mode, the signing secret. A new database file is created 0600 (SQLite gives
    its -wal and -shm files the database file's mode); existing ones are tightened."""
    path = sqlite_path(url)
    if path is None:
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # it exists, or its directory does not: SQLite reports that clearly
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
            if mode & 0o077:
                os.chmod(name, mode & 0o700)
                logger.warning(
                    "Database file %s was readable by other users (%o); now %o",
                    name,
                    mode,
                    mode & 0o700,
                )
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.warning("Could not restrict the database file %s: %s", name, error)


def prepare_database(url: str) -> None:
    """Create or upgrade the schema; raise StorageError with a printable message."""
    try:
        make_private(url)
        changes = run_blocking(lambda: upgrade_schema(url))
        make_private(url)  # -wal and -shm files made before the database file was tightened
    except (SQLAlchemyError, OSError) as error:
        detail = str(getattr(error, "orig", None) or error).splitlines()[0]
        raise StorageError(f"cannot open the database {describe_url(url)}: {detail}") from None
    for change in changes:
        logger.info("Database %s: %s", describe_url(url), change)


async def read_setting(connection: AsyncConnection, name: str) -> str | None:
    row = (
        await connection.execute(sa.select(app_settings.c.value).where(app_settings.c.name == name))
    ).first()
    return row[0] if row else None
