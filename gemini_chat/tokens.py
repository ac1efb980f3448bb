"""Login tokens that can be ended: logging out ends that token; a new password or the account's
removal ends every token of the account; on every app instance sharing the database.

Chainlit's login token is a signed JWT of the user, metadata included. At login the app puts a
``login`` claim in that metadata: a random token id, the account's *session epoch* (a random
value the database keeps per account and replaces with every new password) and the login time.
A token is accepted while

- its account exists with the same epoch (so a new password or a removal ends all its tokens),
- its id is not in ``revoked_tokens`` (logout; rows are deleted once the token has expired),
- its login is younger than the token lifetime (Chainlit's ``/auth/jwt`` re-issues a token
  with the same claim, so it cannot stretch a login, nor bring back an ended one).

A token accepted is trusted for ``CHECK_SECONDS`` without asking the database again. On
PostgreSQL the instances tell each other of a logout and of the accounts command's changes
(gemini_chat/relay.py), so every instance refuses an ended token at once; without that relay
(the database unreachable for it), within that time.
A refusal is final and remembered. This module does not import Chainlit.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import jwt
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .schema import accounts, revoked_tokens, upsert_into

# How long an accepted token is trusted without asking the database: the longest a token ended
# on another instance (or by the accounts command) can still be used.
CHECK_SECONDS = 2.0
# Token ids remembered, accepted or refused; older ones are asked about again.
REMEMBERED = 10_000


def new_epoch() -> str:
    return secrets.token_urlsafe(16)


def login_claim(epoch: str, now: float | None = None) -> dict:
    """The ``login`` entry of a new token's user metadata."""
    return {
        "id": secrets.token_urlsafe(16),
        "epoch": epoch,
        "at": time.time() if now is None else now,
    }


@dataclass(frozen=True)
class Login:
    """What a token says about the login it carries."""

    identifier: str
    token_id: str
    epoch: str
    at: float


def read_login(token: str, secret: str, check_expiry: bool = True) -> Login | None:
    """The login a token carries, if the token is signed with ``secret`` (and, by default, has
    not expired); None for anything else, including tokens made before logins carried one."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"verify_exp": check_expiry}
        )
        login = claims["metadata"]["login"]
        return Login(
            identifier=str(claims["identifier"]),
            token_id=str(login["id"]),
            epoch=str(login["epoch"]),
            at=float(login["at"]),
        )
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
        return None


class TokenRegistry:
    """Which logins are still valid, asked of the database and briefly remembered."""

    def __init__(
        self,
        engine: AsyncEngine,
        lifetime: Callable[[], float],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.lifetime = lifetime
        self.clock = clock
        self.monotonic = monotonic
        self._trusted_until: OrderedDict[str, float] = OrderedDict()
        self._refused: OrderedDict[str, None] = OrderedDict()

    async def accepts(self, login: Login) -> bool:
        if self.clock() - login.at > self.lifetime():
            return False
        if login.token_id in self._refused:
            return False
        until = self._trusted_until.get(login.token_id)
        if until is not None and until > self.monotonic():
            return True
        valid = await self._valid_in_database(login)
        if valid:
            self._remember(self._trusted_until, login.token_id, self.monotonic() + CHECK_SECONDS)
        else:
            self._refuse(login.token_id)
        return valid

    async def _valid_in_database(self, login: Login) -> bool:
        revoked = sa.exists().where(revoked_tokens.c.token_id == login.token_id)
        query = sa.select(accounts.c.session_epoch, revoked).where(
            accounts.c.identifier == login.identifier
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return row is not None and row[0] == login.epoch and not row[1]

    async def revoke(self, login: Login) -> None:
        """End one token, everywhere; forget tokens that have expired anyway."""
        self._refuse(login.token_id)
        now = self.clock()
        # Two tabs may log out with the same token at once: the second insert does nothing.
        insert = (
            upsert_into(revoked_tokens, self.engine)
            .values(
                token_id=login.token_id,
                identifier=login.identifier,
                expires_at=login.at + self.lifetime(),
            )
            .on_conflict_do_nothing()
        )
        async with self.engine.begin() as connection:
            await connection.execute(
                revoked_tokens.delete().where(revoked_tokens.c.expires_at < now)
            )
            await connection.execute(insert)

    def ended_elsewhere(self, token_id: str) -> None:
        """Another instance ended this token (a logout there): refused here at once."""
        self._refuse(token_id)

    def forget_trusted(self) -> None:
        """Accounts changed (a new password, a removal): ask the database again."""
        self._trusted_until.clear()

    def _refuse(self, token_id: str) -> None:
        self._trusted_until.pop(token_id, None)
        self._remember(self._refused, token_id, None)

    @staticmethod
    def _remember(cache: OrderedDict, key: str, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > REMEMBERED:
            cache.popitem(last=False)
