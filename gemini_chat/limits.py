"""Per-user limits on messages per minute and tokens per day, counted in the chat database.

Each message is counted by one SQL statement, an upsert on the user's row that also checks the
limits: it adds the message only while the user is under both, and returns nothing otherwise.
The database decides, so the limits hold across restarts and across app instances sharing one
database, and two messages at the same moment cannot both take the last slot. A refused message
is not counted. The tokens of a reply (Gemini's reported usage, else the app's own estimate)
are added when it ends.

The minute is a window opened by the user's first message after the previous window closed:
all the messages it counts were sent in the last minute, and the user can send again when it
closes. The day is the UTC date. Without accounts (local mode) the only user is the operator,
so the limits are off unless set; with accounts they default to DEFAULT_MESSAGES_PER_MINUTE and
DEFAULT_TOKENS_PER_DAY.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from .config import Settings
from .history import estimate_tokens
from .schema import prepare_engine_args, tune_sqlite, upsert_into, user_usage

logger = logging.getLogger("gemini_chat")

DEFAULT_MESSAGES_PER_MINUTE = 20
DEFAULT_TOKENS_PER_DAY = 1_000_000
WINDOW_SECONDS = 60.0


class LimitRefusal(Exception):
    """A message refused before any call to Gemini; the message is safe to show."""

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.detail = detail


class TooManyMessages(LimitRefusal):
    def __init__(self, sent: int, wait: float) -> None:
        super().__init__(
            f"You've sent {sent} {_plural(sent, 'message')} in the last minute; you can send "
            f"again in {describe_wait(wait)}. Nothing was sent to Gemini.",
            sent=sent,
            wait=round(wait, 1),
        )


class DailyTokensUsedUp(LimitRefusal):
    def __init__(self, used: int, limit: int, now: datetime) -> None:
        super().__init__(
            f"You've used {used:,} tokens today; the daily limit is {limit:,}. It resets at "
            f"00:00 UTC, in {describe_wait(until_midnight(now))}. "
            "Nothing was sent to Gemini.",
            used=used,
            limit=limit,
        )


class UsageUnknown(LimitRefusal):
    def __init__(self, error: str) -> None:
        super().__init__(
            "Your usage can't be checked right now (the chat's database did not answer), so "
            "nothing was sent to Gemini. Try again in a moment.",
            error=error,
        )


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


def describe_wait(seconds: float) -> str:
    """A wait as a person reads it, rounded up: "34 seconds", "12 min", "3 h 12 min"."""
    if seconds <= 60:
        whole = max(1, math.ceil(seconds))
        return f"{whole} {_plural(whole, 'second')}"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


@dataclass(frozen=True)
class Limits:
    """The limits in force; 0 means no limit."""

    messages_per_minute: int
    tokens_per_day: int

    @property
    def enabled(self) -> bool:
        return bool(self.messages_per_minute or self.tokens_per_day)

    def describe(self) -> str:
        messages = self.messages_per_minute
        tokens = self.tokens_per_day
        return ", ".join(
            (
                f"{messages:,} messages a minute" if messages else "no message limit",
                f"{tokens:,} tokens a day" if tokens else "no token limit",
            )
        )


def limits_for(settings: Settings, local: bool) -> Limits:
    """The configured limits, or the login mode's defaults: none for the one local user."""

    def chosen(value: int | None, default: int) -> int:
        if value is not None:
            return value
        return 0 if local else default

    return Limits(
        chosen(settings.messages_per_minute, DEFAULT_MESSAGES_PER_MINUTE),
        chosen(settings.tokens_per_day, DEFAULT_TOKENS_PER_DAY),
    )


def tokens_used(reported: int | None, sent: int, received: str, reached: bool) -> int:
    """What a turn cost: Gemini's own figure when the stream reported one; else the app's
    estimate of what was sent (``sent``, files at their token cost) and received; nothing when
    no answer ever began (a refused or failed request, which Gemini does not charge)."""
    if reported is not None:
        return reported
    if not reached:
        return 0
    return sent + (estimate_tokens(received) if received else 0)


def _utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).date().isoformat()


def until_midnight(now: datetime) -> float:
    """Seconds until the next 00:00 UTC, when the daily counts start again."""
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return (midnight - now).total_seconds()


@dataclass(frozen=True)
class Admission:
    """A counted message: whose, and the day its tokens go to."""

    user: str
    day: str


@dataclass(frozen=True)
class UserUsage:
    user: str
    last_minute: int
    messages_today: int
    tokens_today: int


class UsageCounter:
    """Counts each user's messages and tokens in the database and enforces ``limits``."""

    def __init__(self, url: str, limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self.clock = clock
        self.engine = create_async_engine(url, **prepare_engine_args(url))
        tune_sqlite(self.engine)

    async def admit(self, user: str) -> Admission:
        """Count one message of ``user``, or raise LimitRefusal (and count nothing)."""
        for _ in range(3):
            now = self.clock()
            try:
                async with self.engine.begin() as connection:
                    counted = (await connection.execute(self._count(user, now))).first()
                    if counted is not None:
                        return Admission(user, _utc_day(now))
                    row = (
                        await connection.execute(
                            sa.select(user_usage).where(user_usage.c.identifier == user)
                        )
                    ).first()
            except (SQLAlchemyError, OSError) as error:
                logger.error("Usage limits: cannot count a message of %r: %s", user, error)
                raise UsageUnknown(type(error).__name__) from None
            refusal = self._refusal(row, now) if row is not None else None
            if refusal is not None:
                raise refusal
            # The row changed between the two statements (another instance opened a new
            # window or day): count again.
        raise UsageUnknown("the usage row kept changing")

    def _count(self, user: str, now: float) -> sa.Insert:
        """The upsert: a new row, or the user's row with this message added, only while under
        the limits; returns the row it wrote, nothing when the message is over a limit."""
        row = user_usage.c
        today = _utc_day(now)
        window_over = row.window_start <= now - WINDOW_SECONDS
        new_day = row.day != today
        under: list[sa.ColumnElement[bool]] = []
        if self.limits.messages_per_minute:
            under.append(sa.or_(window_over, row.window_messages < self.limits.messages_per_minute))
        if self.limits.tokens_per_day:
            under.append(sa.or_(new_day, row.day_tokens < self.limits.tokens_per_day))
        insert = upsert_into(user_usage, self.engine).values(
            identifier=user,
            window_start=now,
            window_messages=1,
            day=today,
            day_messages=1,
            day_tokens=0,
        )
        return insert.on_conflict_do_update(
            index_elements=[row.identifier],
            set_={
                "window_start": sa.case((window_over, now), else_=row.window_start),
                "window_messages": sa.case((window_over, 1), else_=row.window_messages + 1),
                "day": today,
                "day_messages": sa.case((new_day, 1), else_=row.day_messages + 1),
                "day_tokens": sa.case((new_day, 0), else_=row.day_tokens),
            },
            where=sa.and_(*under) if under else None,
        ).returning(row.window_messages)

    def _refusal(self, row: Any, now: float) -> LimitRefusal | None:
        """Why the user's row refused a message at ``now``, if it still does."""
        per_minute = self.limits.messages_per_minute
        if per_minute and row.window_start > now - WINDOW_SECONDS:
            if row.window_messages >= per_minute:
                wait = min(WINDOW_SECONDS, row.window_start + WINDOW_SECONDS - now)
                return TooManyMessages(row.window_messages, wait)
        per_day = self.limits.tokens_per_day
        if per_day and row.day == _utc_day(now) and row.day_tokens >= per_day:
            return DailyTokensUsedUp(row.day_tokens, per_day, datetime.fromtimestamp(now, UTC))
        return None

    async def spend(self, admission: Admission, tokens: int) -> None:
        """Add a reply's tokens to the day its message was counted in."""
        if tokens <= 0:
            return
        row = user_usage.c
        try:
            async with self.engine.begin() as connection:
                await connection.execute(
                    user_usage.update()
                    .where(row.identifier == admission.user, row.day == admission.day)
                    .values(day_tokens=row.day_tokens + tokens)
                )
        except (SQLAlchemyError, OSError) as error:
            logger.error(
                "Usage limits: cannot add %d tokens for %r: %s", tokens, admission.user, error
            )

    async def usage(self, users: Sequence[str] = ()) -> list[UserUsage]:
        """Each user's use now: ``users`` (with nothing used yet) and everyone counted."""
        now = self.clock()
        today = _utc_day(now)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(sa.select(user_usage))).all()
        found = {
            row.identifier: UserUsage(
                row.identifier,
                row.window_messages if row.window_start > now - WINDOW_SECONDS else 0,
                row.day_messages if row.day == today else 0,
                row.day_tokens if row.day == today else 0,
            )
            for row in rows
        }
        for user in users:
            found.setdefault(user, UserUsage(user, 0, 0, 0))
        # Users who are not accounts (removed ones, local mode's) only when they used something.
        shown = [u for u in found.values() if u.user in users or u.messages_today or u.last_minute]
        return sorted(shown, key=lambda use: use.user)

    async def close(self) -> None:
        await self.engine.dispose()


def build_usage_counter(settings: Settings, local: bool) -> UsageCounter | None:
    """The counter for the limits in force; None when there are none (nothing is counted)."""
    limits = limits_for(settings, local)
    if not limits.enabled:
        return None
    logger.info("Per-user limits: %s", limits.describe())
    return UsageCounter(settings.database_url, limits)


def usage_table(usage: Sequence[UserUsage], limits: Limits) -> str:
    """The accounts command's view: one line per user, limits beside the counts."""

    def of(count: int, limit: int) -> str:
        return f"{count:,}/{limit:,}" if limit else f"{count:,}"

    header = ("User", "Last minute", "Messages today", "Tokens today")
    lines = [
        (
            use.user,
            of(use.last_minute, limits.messages_per_minute),
            f"{use.messages_today:,}",
            of(use.tokens_today, limits.tokens_per_day)
            + (
                " (over)"
                if limits.tokens_per_day and use.tokens_today >= limits.tokens_per_day
                else ""
            ),
        )
        for use in usage
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *lines]
    )
