"""Who may chat: one local user on this computer, or accounts with passwords.

With no account in the database the app runs in *local mode*: one user, ``local``, logged in
without a login page (Chainlit's header login), and only for clients on the loopback interface.
Once an account exists (see ``gemini_chat.accounts``), the app runs in *accounts mode*: everyone
logs in through Chainlit's login page, and CHAINLIT_AUTH_SECRET must be set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass, field

import chainlit as cl
from sqlalchemy.ext.asyncio import create_async_engine

from .accounts import AccountStore, LoginThrottle
from .schema import app_settings, prepare_engine_args, read_setting, run_blocking

logger = logging.getLogger("gemini_chat")

LOCAL_USER = "local"
SECRET_SETTING = "local_auth_secret"
LOCAL_ONLY_MESSAGE = (
    "This chat runs in local mode and only serves the computer it runs on. To open it to "
    "others, add accounts (uv run python -m gemini_chat.accounts add NAME), set "
    "CHAINLIT_AUTH_SECRET and restart it."
)
SECRET_MISSING = (
    "CHAINLIT_AUTH_SECRET is not set, and accounts exist so everyone must log in. Create a "
    "secret with `uv run chainlit create-secret` and put the line it prints in .env."
)


class AccessError(Exception):
    """Login cannot be set up as configured; the message is safe to print."""


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class Access:
    """The login mode chosen at start-up, and the callbacks that carry it out."""

    store: AccountStore
    local: bool
    throttle: LoginThrottle = field(default_factory=LoginThrottle)

    async def local_user(self) -> cl.User | None:
        # An account added while the server runs switches login off for the local user at once.
        if await self.store.count():
            logger.warning("Local login refused: accounts exist; restart the app to use them")
            return None
        return cl.User(identifier=LOCAL_USER, metadata={"provider": "local"})

    async def page_login_headers(self, scope) -> list[tuple[bytes, bytes]]:
        """In local mode, the ``Set-Cookie`` headers that log the local user in with the page
        itself (none when the request already carries a valid login).

        Chainlit's frontend first asks ``/user`` and only logs in (header login) after that
        answered 401, so every page load showed a failed request in the browser console."""
        from chainlit.auth import create_jwt, get_token_from_cookies, set_auth_cookie
        from chainlit.auth.jwt import decode_jwt
        from starlette.requests import Request
        from starlette.responses import Response

        request = Request(scope)
        token = get_token_from_cookies(request.cookies)
        if token:
            try:
                decode_jwt(token)
                return []
            except Exception:  # expired, or signed with another secret: log in afresh
                pass
        user = await self.local_user()
        if user is None:
            return []
        response = Response()
        set_auth_cookie(request, response, create_jwt(user))
        return [(name, value) for name, value in response.raw_headers if name == b"set-cookie"]

    async def check_password(self, name: str, password: str) -> cl.User | None:
        delay = self.throttle.delay_for(name)
        if delay:
            logger.warning("Slowing down login attempts for %r by %.0fs", name, delay)
            await asyncio.sleep(delay)
        if await self.store.verify(name, password):
            self.throttle.succeeded(name)
            return cl.User(identifier=name, metadata={"provider": "password"})
        self.throttle.failed(name)
        logger.warning("Wrong name or password for %r", name)
        return None


async def _local_secret(url: str) -> str:
    """The signing secret of local mode: made once, kept in the database so logins survive
    restarts without the user creating one."""
    engine = create_async_engine(url, **prepare_engine_args(url))
    try:
        async with engine.begin() as connection:
            secret = await read_setting(connection, SECRET_SETTING)
            if secret is None:
                secret = secrets.token_urlsafe(48)
                await connection.execute(
                    app_settings.insert().values(name=SECRET_SETTING, value=secret)
                )
            return secret
    finally:
        await engine.dispose()


def prepare_access(database_url: str) -> Access:
    """Choose the mode from the accounts in the database; raise AccessError if it cannot run."""
    store = AccountStore(database_url)

    async def count_accounts() -> int:
        probe = AccountStore(database_url)
        try:
            return await probe.count()
        finally:
            await probe.close()

    local = run_blocking(count_accounts) == 0
    if local:
        if not os.environ.get("CHAINLIT_AUTH_SECRET"):
            os.environ["CHAINLIT_AUTH_SECRET"] = run_blocking(lambda: _local_secret(database_url))
        logger.info("Local mode: no accounts, serving the local user on loopback only")
    else:
        if not os.environ.get("CHAINLIT_AUTH_SECRET"):
            raise AccessError(SECRET_MISSING)
        logger.info("Accounts mode: everyone logs in")
    return Access(store=store, local=local)
