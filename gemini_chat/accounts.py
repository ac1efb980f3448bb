"""Login accounts: argon2-hashed passwords in the database, a command to manage them, and a
throttle that slows down password guessing.

    uv run python -m gemini_chat.accounts add alice      # password read from standard input
    uv run python -m gemini_chat.accounts passwd alice   # likewise; ends alice's sessions
    uv run python -m gemini_chat.accounts list
    uv run python -m gemini_chat.accounts remove alice   # ends alice's sessions
    uv run python -m gemini_chat.accounts usage          # each user's use against the limits
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .config import ConfigError, Settings, load_settings
from .relay import tell_instances_accounts_changed
from .schema import (
    StorageError,
    accounts,
    describe_url,
    login_attempts,
    prepare_database,
    prepare_engine_args,
    revoked_tokens,
    run_blocking,
    upsert_into,
)
from .tokens import CHECK_SECONDS, new_epoch

logger = logging.getLogger("gemini_chat")
T = TypeVar("T")

hasher = PasswordHasher()
# Checked when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = hasher.hash("not a password anyone has")
MIN_PASSWORD_CHARS = 8


class AccountError(Exception):
    """A request about accounts that cannot be carried out; the message is safe to print."""


@dataclass(frozen=True)
class Rule:
    """After ``free`` failures, each attempt waits ``base * 2**(failures - free)`` seconds, at
    most ``cap``."""

    free: int
    base: float
    cap: float

    def delay(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return min(self.cap, self.base * 2 ** min(failures - self.free, 32))


Key = tuple[str, str, str]  # a row of login_attempts: kind, name, address


@dataclass
class LoginThrottle:
    """Slows down password guessing, counting failures three ways:

    - per name and client address (``pair``): the guesser's own delay, up to 30 s; a success
      clears it;
    - per client address, whatever the names (``address``): guessing many names from one
      address is slowed the same way;
    - per name, whatever the address (``name``): many addresses guessing one name each pay a
      few seconds, at most ``name.cap``, so that the real user, from another address, never
      waits longer than that; an address that logged in to the name in the last
      ``remember_known`` seconds is exempt.

    The counts are rows of the database (``login_attempts``), so every instance sharing it
    counts the same failures: spreading guesses over instances gains nothing. Attempts from one
    address are checked one at a time on each instance, each after its delay, so parallel
    guesses wait as long as the same guesses one after another; beyond ``max_waiting`` queued
    attempts an address is refused at once. Failures are forgotten ``forget_after`` seconds
    after the last one."""

    engine: AsyncEngine
    pair: Rule = Rule(free=3, base=1.0, cap=30.0)
    address: Rule = Rule(free=5, base=1.0, cap=30.0)
    name: Rule = Rule(free=10, base=1.0, cap=2.0)
    forget_after: float = 900.0
    remember_known: float = 30 * 86400.0
    max_waiting: int = 10
    clock: Callable[[], float] = time.time  # shared with other instances: not monotonic
    _queues: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)
    _checking: dict[str, int] = field(default_factory=dict)
    _pruned_at: float = 0.0

    @staticmethod
    def _keys(name: str, address: str) -> tuple[Key, Key, Key, Key]:
        """The rows of an attempt: its pair, its address, its name, and whether it is known."""
        name = name.lower()
        return (
            ("pair", name, address),
            ("address", "", address),
            ("name", name, ""),
            ("known", name, address),
        )

    async def _counts(self, keys: tuple[Key, ...], now: float) -> dict[Key, int]:
        """The failures of each of ``keys`` still remembered at ``now`` (a known row: 1)."""
        row = login_attempts.c
        wanted = sa.or_(
            *(sa.and_(row.kind == k, row.name == n, row.address == a) for k, n, a in keys)
        )
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                sa.select(row.kind, row.name, row.address, row.failures, row.last_at).where(wanted)
            )
        counts = {}
        for kind, name, address, failures, last_at in rows:
            if kind == "known":
                counts[(kind, name, address)] = int(now - last_at <= self.remember_known)
            elif now - last_at <= self.forget_after:
                counts[(kind, name, address)] = failures
        return counts

    async def delay_for(self, name: str, address: str, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        pair, by_address, by_name, known = keys = self._keys(name, address)
        counts = await self._counts(keys, now)
        delays = [
            self.pair.delay(counts.get(pair, 0)),
            self.address.delay(counts.get(by_address, 0)),
        ]
        if not counts.get(known):
            # Guesses being checked right now count too, so parallel ones pay as they should.
            pending = self._checking.get(name.lower(), 0)
            delays.append(self.name.delay(counts.get(by_name, 0) + pending))
        return max(delays)

    async def failed(self, name: str, address: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        row = login_attempts.c
        counted = upsert_into(login_attempts, self.engine).values(
            [
                {"kind": k, "name": n, "address": a, "failures": 1, "last_at": now}
                for k, n, a in self._keys(name, address)[:3]
            ]
        )
        # One statement for the three counts, each one more, or 1 again once forgotten: two
        # instances counting at once both count.
        counted = counted.on_conflict_do_update(
            index_elements=[row.kind, row.name, row.address],
            set_={
                "failures": sa.case(
                    (row.last_at < now - self.forget_after, 1), else_=row.failures + 1
                ),
                "last_at": now,
            },
        )
        async with self.engine.begin() as connection:
            await connection.execute(counted)
        await self._prune(now)

    async def succeeded(self, name: str, address: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        pair, _, _, known = self._keys(name, address)
        row = login_attempts.c
        remembered = upsert_into(login_attempts, self.engine).values(
            kind=known[0], name=known[1], address=known[2], failures=0, last_at=now
        )
        async with self.engine.begin() as connection:
            await connection.execute(
                login_attempts.delete().where(
                    row.kind == pair[0], row.name == pair[1], row.address == pair[2]
                )
            )
            await connection.execute(
                remembered.on_conflict_do_update(
                    index_elements=[row.kind, row.name, row.address], set_={"last_at": now}
                )
            )
        await self._prune(now)

    async def _prune(self, now: float) -> None:
        """Delete what is past remembering, at most once per ``forget_after`` on an instance. In
        a transaction of its own: rows it deletes are never locked while counts are taken."""
        if now - self._pruned_at < self.forget_after:
            return
        self._pruned_at = now
        row = login_attempts.c
        async with self.engine.begin() as connection:
            await connection.execute(
                login_attempts.delete().where(
                    sa.or_(
                        sa.and_(row.kind != "known", row.last_at < now - self.forget_after),
                        row.last_at < now - self.remember_known,
                    )
                )
            )

    async def attempt(self, name: str, address: str, check: Callable[[], Awaitable[T | None]]):
        """Run ``check`` (the password check, None for a failure) when this attempt's turn and
        delay have come; None at once when the address has too many attempts waiting."""
        lock, waiting = self._queues.get(address) or (asyncio.Lock(), 0)
        if waiting >= self.max_waiting:
            logger.warning("Refused a login attempt from %s: too many waiting", address)
            return None
        self._queues[address] = (lock, waiting + 1)
        try:
            async with lock:
                delay = await self.delay_for(name, address)
                key = name.lower()
                self._checking[key] = self._checking.get(key, 0) + 1
                try:
                    if delay:
                        logger.warning(
                            "Slowing down a login attempt for %r from %s by %.0fs",
                            name,
                            address,
                            delay,
                        )
                        await asyncio.sleep(delay)
                    result = await check()
                finally:
                    self._checking[key] -= 1
                    if not self._checking[key]:
                        del self._checking[key]
                if result is None:
                    await self.failed(name, address)
                else:
                    await self.succeeded(name, address)
                return result
        finally:
            lock, waiting = self._queues[address]
            if waiting == 1:
                del self._queues[address]
            else:
                self._queues[address] = (lock, waiting - 1)


class AccountStore:
    """Accounts in the chat database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_async_engine(url, **prepare_engine_args(url))

    async def count(self) -> int:
        async with self.engine.connect() as connection:
            return (
                await connection.execute(sa.select(sa.func.count()).select_from(accounts))
            ).scalar_one()

    async def names(self) -> list[str]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                sa.select(accounts.c.identifier).order_by(accounts.c.identifier)
            )
            return [row[0] for row in rows]

    @staticmethod
    async def _hash(password: str) -> str:
        if len(password) < MIN_PASSWORD_CHARS:
            raise AccountError(f"A password needs at least {MIN_PASSWORD_CHARS} characters.")
        return await asyncio.to_thread(hasher.hash, password)

    async def add(self, name: str, password: str) -> None:
        name = name.strip()
        if not name or len(name) > 64 or any(c.isspace() for c in name):
            raise AccountError("A user name is 1 to 64 characters, without spaces.")
        password_hash = await self._hash(password)
        async with self.engine.begin() as connection:
            exists = await connection.execute(
                sa.select(accounts.c.identifier).where(accounts.c.identifier == name)
            )
            if exists.first():
                raise AccountError(f"The user {name!r} already exists.")
            await connection.execute(
                accounts.insert().values(
                    identifier=name,
                    password_hash=password_hash,
                    created_at=datetime.now(UTC).isoformat(),
                    session_epoch=new_epoch(),
                )
            )
            await tell_instances_accounts_changed(connection)

    async def set_password(self, name: str, password: str) -> None:
        """A new password, and a new session epoch: every login of the account ends."""
        password_hash = await self._hash(password)
        async with self.engine.begin() as connection:
            result = await connection.execute(
                accounts.update()
                .where(accounts.c.identifier == name)
                .values(password_hash=password_hash, session_epoch=new_epoch())
            )
            if result.rowcount == 0:
                raise AccountError(f"There is no user {name!r}.")
            await tell_instances_accounts_changed(connection)

    async def remove(self, name: str) -> None:
        """Remove the account, which ends every login of it (its chats stay)."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                accounts.delete().where(accounts.c.identifier == name)
            )
            if result.rowcount == 0:
                raise AccountError(f"There is no user {name!r}.")
            await tell_instances_accounts_changed(connection)
            await connection.execute(
                revoked_tokens.delete().where(revoked_tokens.c.identifier == name)
            )

    async def verify(self, name: str, password: str) -> str | None:
        """The account's session epoch if the password is right, else None. A wrong name costs
        as long as a wrong password."""
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(accounts.c.password_hash, accounts.c.session_epoch).where(
                        accounts.c.identifier == name
                    )
                )
            ).first()
        stored = row[0] if row else _DUMMY_HASH
        try:
            await asyncio.to_thread(hasher.verify, stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        return row[1] or await self._first_epoch(name)

    async def _first_epoch(self, name: str) -> str | None:
        # Accounts made before logins could be ended have no epoch yet: draw one, once.
        async with self.engine.begin() as connection:
            await connection.execute(
                accounts.update()
                .where(accounts.c.identifier == name, accounts.c.session_epoch.is_(None))
                .values(session_epoch=new_epoch())
            )
            return (
                await connection.execute(
                    sa.select(accounts.c.session_epoch).where(accounts.c.identifier == name)
                )
            ).scalar_one_or_none()

    async def close(self) -> None:
        await self.engine.dispose()


def _read_password(stdin=sys.stdin) -> str:
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Repeat it: ") != first:
            raise AccountError("The two passwords differ.")
        return first
    return stdin.readline().rstrip("\r\n")


async def _usage_report(settings: Settings, names: list[str]) -> str:
    from .limits import UsageCounter, describe_wait, limits_for, until_midnight, usage_table

    limits = limits_for(settings, local=not names)
    counter = UsageCounter(settings.database_url, limits)
    try:
        usage = await counter.usage(names)
    finally:
        await counter.close()
    mode = "accounts mode" if names else "local mode"
    resets = describe_wait(until_midnight(datetime.now(UTC)))
    summary = (
        f"Limits ({mode}): {limits.describe()}. Today's counts reset at 00:00 UTC, in {resets}."
    )
    if not usage:
        return summary + "\nNothing used yet."
    return summary + "\n\n" + usage_table(usage, limits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gemini_chat.accounts",
        description="Manage the chat's login accounts (stored in DATABASE_URL's database).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user; the password is read from standard input")
    add.add_argument("name")
    passwd = commands.add_parser(
        "passwd",
        help="change a user's password (read from standard input); ends all their sessions",
    )
    passwd.add_argument("name")
    commands.add_parser("list", help="list the users")
    remove = commands.add_parser(
        "remove", help="remove a user, ending all their sessions (their chats stay stored)"
    )
    remove.add_argument("name")
    commands.add_parser("usage", help="each user's messages and tokens against the limits")
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
        prepare_database(settings.database_url)
        password = _read_password() if args.command in ("add", "passwd") else ""

        async def run() -> str:
            store = AccountStore(settings.database_url)
            try:
                before = await store.count()
                if args.command == "add":
                    await store.add(args.name, password)
                    note = f"Added {args.name!r}."
                    if before == 0:
                        note += (
                            " Accounts are now on: restart the app, set CHAINLIT_AUTH_SECRET "
                            "(create one with `uv run chainlit create-secret`), and everyone "
                            "logs in."
                        )
                    return note
                if args.command == "passwd":
                    await store.set_password(args.name, password)
                    return (
                        f"Changed the password of {args.name!r}; all their sessions have ended "
                        f"(within {CHECK_SECONDS:.0f} s on a running app)."
                    )
                if args.command == "remove":
                    await store.remove(args.name)
                    return (
                        f"Removed {args.name!r}; all their sessions have ended (within "
                        f"{CHECK_SECONDS:.0f} s on a running app), their chats stay in the "
                        "database."
                    )
                if args.command == "usage":
                    return await _usage_report(settings, await store.names())
                return "\n".join(await store.names()) or "(no users: the app runs in local mode)"
            finally:
                await store.close()

        print(run_blocking(run))
    except (AccountError, ConfigError, StorageError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["AccountError", "AccountStore", "LoginThrottle", "Rule", "describe_url", "main"]
