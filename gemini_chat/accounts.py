"""Login accounts: argon2-hashed passwords in the database, a command to manage them, and a
throttle that slows down repeated wrong passwords.

    uv run python -m gemini_chat.accounts add alice      # password read from standard input
    uv run python -m gemini_chat.accounts list
    uv run python -m gemini_chat.accounts remove alice
    uv run python -m gemini_chat.accounts usage          # each user's use against the limits
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.ext.asyncio import create_async_engine

from .config import ConfigError, Settings, load_settings
from .schema import (
    StorageError,
    accounts,
    describe_url,
    prepare_database,
    prepare_engine_args,
    run_blocking,
)

hasher = PasswordHasher()
# Checked when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = hasher.hash("not a password anyone has")
MIN_PASSWORD_CHARS = 8


class AccountError(Exception):
    """A request about accounts that cannot be carried out; the message is safe to print."""


@dataclass
class LoginThrottle:
    """Slows down guessing: after ``free`` failures for a name, each attempt for it waits
    ``base * 2**(extra failures)`` seconds, capped; a success clears the name's record."""

    free: int = 3
    base: float = 1.0
    cap: float = 30.0
    forget_after: float = 900.0
    failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    def delay_for(self, name: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        count, last = self.failures.get(name.lower(), (0, now))
        if now - last > self.forget_after or count < self.free:
            return 0.0
        return min(self.cap, self.base * 2 ** (count - self.free))

    def failed(self, name: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        key = name.lower()
        count, last = self.failures.get(key, (0, now))
        if now - last > self.forget_after:
            count = 0
        self.failures[key] = (count + 1, now)

    def succeeded(self, name: str) -> None:
        self.failures.pop(name.lower(), None)


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

    async def add(self, name: str, password: str) -> None:
        name = name.strip()
        if not name or len(name) > 64 or any(c.isspace() for c in name):
            raise AccountError("A user name is 1 to 64 characters, without spaces.")
        if len(password) < MIN_PASSWORD_CHARS:
            raise AccountError(f"A password needs at least {MIN_PASSWORD_CHARS} characters.")
        password_hash = await asyncio.to_thread(hasher.hash, password)
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
                )
            )

    async def remove(self, name: str) -> None:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                accounts.delete().where(accounts.c.identifier == name)
            )
            if result.rowcount == 0:
                raise AccountError(f"There is no user {name!r}.")

    async def verify(self, name: str, password: str) -> bool:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(accounts.c.password_hash).where(accounts.c.identifier == name)
                )
            ).first()
        stored = row[0] if row else _DUMMY_HASH
        try:
            await asyncio.to_thread(hasher.verify, stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return row is not None

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
    commands.add_parser("list", help="list the users")
    remove = commands.add_parser("remove", help="remove a user (their chats stay stored)")
    remove.add_argument("name")
    commands.add_parser("usage", help="each user's messages and tokens against the limits")
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
        prepare_database(settings.database_url)
        password = _read_password() if args.command == "add" else ""

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
                if args.command == "remove":
                    await store.remove(args.name)
                    return f"Removed {args.name!r}; their chats stay in the database."
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


__all__ = ["AccountError", "AccountStore", "LoginThrottle", "describe_url", "main"]
