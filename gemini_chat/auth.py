"""Who may chat: one local user on this computer, or accounts with passwords.

With no account in the database the app runs in *local mode*: one user, ``local``, logged in
without a login page (Chainlit's header login), and only for clients on the loopback interface.
Once an account exists (see ``gemini_chat.accounts``), the app runs in *accounts mode*: everyone
logs in through Chainlit's login page, and CHAINLIT_AUTH_SECRET must be set.

``install_login_guards`` makes every use of a login token ask whether it is still valid (see
``gemini_chat.tokens``) and gives the login throttle the client's address. What it changes in
Chainlit, each a contract checked by tests/test_security_login.py:

- HTTP routes authenticate through ``chainlit.auth.get_current_user``: overridden with FastAPI's
  ``app.dependency_overrides``;
- the socket's connect authenticates through ``chainlit.socket.get_current_user``: replaced;
- every other socket event handler (``sio.handlers["/"]``, less connect, disconnect and stop) is
  wrapped so that a connection whose login has ended is told so and closed;
- ``/login`` reads its form through ``OAuth2PasswordRequestForm``: overridden to note the client
  address, which Chainlit's ``password_auth_callback`` does not receive.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import os
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any

import chainlit as cl
from chainlit.auth import reuseable_oauth
from fastapi import Depends, Form, HTTPException, Request
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy.ext.asyncio import create_async_engine

from .accounts import AccountStore, LoginThrottle
from .relay import current_relay
from .schema import app_settings, prepare_engine_args, read_setting, run_blocking
from .tokens import CHECK_SECONDS, TokenRegistry, login_claim, read_login

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
MIN_SECRET_BYTES = 32
SECRET_TOO_SHORT = (
    "CHAINLIT_AUTH_SECRET is too short ({length} bytes): a signing secret needs at least "
    f"{MIN_SECRET_BYTES}. Create one with `uv run chainlit create-secret` and put the line it "
    "prints in .env."
)
LOGIN_ENDED = (
    "Your login has ended (you logged out, your password was changed or your account was "
    "removed), so this message was not sent. Reload the page to log in again."
)

# The client address of the login request being handled (set by the login form dependency).
login_client: ContextVar[str | None] = ContextVar("login_client", default=None)


class AccessError(Exception):
    """Login cannot be set up as configured; the message is safe to print."""


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def _token_lifetime() -> float:
    from chainlit.config import config

    return float(config.project.user_session_timeout)


def _signing_secret() -> str:
    return os.environ.get("CHAINLIT_AUTH_SECRET", "")


@dataclass
class Access:
    """The login mode chosen at start-up, and the callbacks that carry it out."""

    store: AccountStore
    local: bool
    throttle: LoginThrottle = field(init=False)
    tokens: TokenRegistry = field(init=False)
    _local_until: float = 0.0

    def __post_init__(self) -> None:
        self.throttle = LoginThrottle(self.store.engine)
        self.tokens = TokenRegistry(self.store.engine, _token_lifetime)

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
        address = login_client.get() or "unknown"
        epoch = await self.throttle.attempt(
            name, address, lambda: self.store.verify(name, password)
        )
        if epoch is None:
            logger.warning("Wrong name or password for %r from %s", name, address)
            return None
        # The token carries this login (its id, the account's session epoch, the time), so
        # that it can be ended: see gemini_chat.tokens.
        return cl.User(
            identifier=name, metadata={"provider": "password", "login": login_claim(epoch)}
        )

    async def accepts(self, token: str) -> bool:
        """Whether a login token Chainlit would accept is still valid: in accounts mode its
        login has not ended; in local mode no account has been added since the start."""
        if self.local:
            if self._local_until > time.monotonic():
                return True
            if await self.store.count():
                return False
            self._local_until = time.monotonic() + CHECK_SECONDS
            return True
        login = read_login(token, _signing_secret())
        return login is not None and await self.tokens.accepts(login)

    def accounts_changed(self) -> None:
        """The accounts command changed an account (on any instance's database): tokens and
        local mode are checked again at their next use."""
        self.tokens.forget_trusted()
        self._local_until = 0.0

    async def logout(self, request: Any) -> dict:
        """Chainlit's on_logout: end the token the request carries, on every instance."""
        token = _token_of_request(request)
        login = read_login(token, _signing_secret(), check_expiry=False) if token else None
        if login is not None and not self.local:
            await self.tokens.revoke(login)
            current_relay().login_ended(login.token_id)  # the other instances, at once
            logger.info("Logged out a session of %r", login.identifier)
        return {"success": True}

    async def socket_allowed(self, sid: str) -> bool:
        """Whether the socket ``sid`` may go on; a connection whose login has ended is told so
        (the message is shown, not stored) and closed."""
        from chainlit.auth import require_login
        from chainlit.session import WebsocketSession

        session = WebsocketSession.get(sid)
        if session is None or not require_login():
            return True  # Chainlit's own handler deals with an unknown connection
        token = _token_of_socket(session)
        if token and await self.accepts(token):
            return True
        await _close_ended_socket(session)
        return False


def _token_of_request(request: Any) -> str | None:
    from chainlit.auth import get_token_from_cookies

    token = get_token_from_cookies(request.cookies)
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _token_of_socket(session: Any) -> str | None:
    """The token of the connection's latest handshake (a reconnect may bring a newer one than
    the session was created with)."""
    from chainlit.auth import get_token_from_cookies
    from starlette.requests import cookie_parser

    cookie = (session.environ or {}).get("HTTP_COOKIE")
    token = get_token_from_cookies(cookie_parser(cookie)) if cookie else None
    return token or session.token


async def _close_ended_socket(session: Any) -> None:
    from chainlit.config import config
    from chainlit.context import init_ws_context
    from chainlit.message import ErrorMessage
    from chainlit.server import sio

    user = getattr(session.user, "identifier", None)
    logger.warning("Closed a chat connection of %r: its login has ended", user)
    context = init_ws_context(session)
    notice = ErrorMessage(content=LOGIN_ENDED, author=config.ui.name)
    await context.emitter.send_step(notice.to_dict())
    session.to_clear = True  # nothing to resume: the login is gone
    await sio.disconnect(session.socket_id)


# --- the guards, installed into Chainlit ---------------------------------------------------------

# The login mode the guards consult; replaced when `chainlit run -w` prepares the server again.
_access: Access | None = None
UNGATED_EVENTS = frozenset({"connect", "disconnect", "stop"})


async def _guarded_current_user(token: Any) -> Any:
    """Chainlit's get_current_user, refusing a token whose login has ended (None, as Chainlit
    answers for a bad token)."""
    import chainlit.auth

    if token and _access is not None and chainlit.auth.require_login():
        if not await _access.accepts(token):
            logger.warning("Refused a login token that has ended")
            return None
    return await chainlit.auth.get_current_user(token=token)


async def _http_current_user(
    token: Annotated[str | None, Depends(reuseable_oauth)],
) -> Any:
    user = await _guarded_current_user(token)
    if user is None and token:
        raise HTTPException(status_code=401, detail="Invalid authentication token")
    return user


async def _login_form(
    request: Request,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
) -> OAuth2PasswordRequestForm:
    login_client.set(request.client.host if request.client else None)
    return OAuth2PasswordRequestForm(username=username, password=password)


def _gate(handler):
    async def gated(sid, *args):
        if _access is not None and not await _access.socket_allowed(sid):
            return None
        result = handler(sid, *args)
        return await result if inspect.isawaitable(result) else result

    gated.login_gate = True  # type: ignore[attr-defined]
    gated.__wrapped__ = handler  # type: ignore[attr-defined]
    return gated


def install_login_guards(access: Access) -> None:
    """Make Chainlit check every token's login, over HTTP and the socket, and let the login
    throttle see the client address; safe to call again on a reload."""
    global _access
    import chainlit.auth
    import chainlit.socket  # registers Chainlit's socket handlers
    from chainlit.server import app, sio

    socket_auth = getattr(chainlit.socket, "get_current_user", None)
    if socket_auth is not chainlit.auth.get_current_user and (
        getattr(socket_auth, "__qualname__", None) != _guarded_current_user.__qualname__
    ):
        # Logins could not be ended over the socket: refuse to run rather than pretend.
        raise AccessError(
            "This Chainlit version authenticates chat connections in a way the app does not "
            "know; install the version in uv.lock (uv sync)."
        )
    _access = access
    app.dependency_overrides[chainlit.auth.get_current_user] = _http_current_user
    app.dependency_overrides[OAuth2PasswordRequestForm] = _login_form
    chainlit.socket.get_current_user = _guarded_current_user
    for event, handler in list(sio.handlers.get("/", {}).items()):
        if event not in UNGATED_EVENTS and not getattr(handler, "login_gate", False):
            sio.on(event, _gate(handler))


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
    secret = os.environ.get("CHAINLIT_AUTH_SECRET")
    if secret and len(secret.encode()) < MIN_SECRET_BYTES:
        raise AccessError(SECRET_TOO_SHORT.format(length=len(secret.encode())))
    if local:
        if not os.environ.get("CHAINLIT_AUTH_SECRET"):
            os.environ["CHAINLIT_AUTH_SECRET"] = run_blocking(lambda: _local_secret(database_url))
        logger.info("Local mode: no accounts, serving the local user on loopback only")
    else:
        if not os.environ.get("CHAINLIT_AUTH_SECRET"):
            raise AccessError(SECRET_MISSING)
        logger.info("Accounts mode: everyone logs in")
    return Access(store=store, local=local)
