"""Reading the chat database directly, to count what was stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

T = TypeVar("T")


def app_database(app: Any) -> str:
    """The SQLite database of an app the tests started (tests/app_process.py)."""
    return f"sqlite+aiosqlite:///{app.directory}/chats.db"


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, what: str = "condition"
) -> T:
    """The app writes to its database from background tasks: wait until ``check`` sees it."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return result


async def query(url: str, sql: str, **params: Any) -> list[tuple]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(sa.text(sql), params)]
    finally:
        await engine.dispose()


async def execute(url: str, *statements: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(sa.text(statement))
    finally:
        await engine.dispose()


async def counts(url: str) -> dict[str, int]:
    tables = ("users", "threads", "steps", "feedbacks", "elements", "accounts")
    return {t: (await query(url, f"SELECT COUNT(*) FROM {t}"))[0][0] for t in tables}
