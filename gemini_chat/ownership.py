"""Feedback only on your own messages.

Chainlit's ``PUT /feedback`` and ``DELETE /feedback`` check that someone is logged in, not that
the message (or the feedback) belongs to them: any user who learns another user's message id
could rate it. This middleware answers 404 unless the caller owns the chat the message is in.
"""

from __future__ import annotations

import json
import logging
from http.cookies import SimpleCookie
from typing import Any

logger = logging.getLogger("gemini_chat")

NOT_FOUND = b'{"detail":"Message not found"}'


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _caller(scope) -> str | None:
    from chainlit.auth import get_current_user
    from chainlit.auth.cookie import get_token_from_cookies

    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    cookie = SimpleCookie()
    cookie.load(headers.get("cookie", ""))
    token = get_token_from_cookies({name: morsel.value for name, morsel in cookie.items()})
    if not token:
        return None
    try:
        user = await get_current_user(token)
    except Exception:
        return None
    return getattr(user, "identifier", None)


class FeedbackOwnership:
    """ASGI middleware guarding Chainlit's feedback routes (see the module docstring)."""

    def __init__(self, app, data_layer: Any) -> None:
        self.app = app
        self.data_layer = data_layer

    async def __call__(self, scope, receive, send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] in ("PUT", "DELETE")
            and scope["path"].rstrip("/").endswith("/feedback")
        ):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        caller = await _caller(scope)
        if caller is not None and not await self._owns(caller, scope["method"], body):
            logger.warning("Refused feedback by %r on a message that is not theirs", caller)
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": NOT_FOUND})
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        # Without a caller, Chainlit itself answers 401.
        await self.app(scope, replay, send)

    async def _owns(self, caller: str, method: str, body: bytes) -> bool:
        try:
            payload = json.loads(body or b"{}")
            if method == "PUT":
                owner = await self.data_layer.step_owner(str(payload["feedback"]["forId"]))
            else:
                owner = await self.data_layer.feedback_owner(str(payload["feedbackId"]))
        except (ValueError, KeyError, TypeError):
            return False
        return owner == caller
