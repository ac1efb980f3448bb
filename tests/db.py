"""Reading the chat database directly, to count what was stored."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine


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
