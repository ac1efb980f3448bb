"""The endpoints an operator's tools call: liveness, readiness and the Prometheus metrics.

- ``GET /healthz``: 200 ``{"status": "alive"}`` while the process serves (Chainlit's own
  ``/health`` stays as it is).
- ``GET /readyz``: 200 ``{"status": "ready"}`` when the chat database answers ``SELECT 1``
  within 2 seconds and the instance is not draining (gemini_chat/lifecycle.py); otherwise 503
  with ``{"status": "draining"}`` or ``{"status": "database unavailable"}``, so a load balancer
  sends new chats elsewhere.
- ``GET /metrics``: the metrics of gemini_chat/metrics.py, only to a request carrying
  ``Authorization: Bearer <METRICS_TOKEN>``: a wrong or missing token gets 401, and without a
  token configured the endpoint does not exist (404). The token is compared in constant time.

None of them needs a login, and none says anything else about the server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import metrics
from .lifecycle import lifecycle

logger = logging.getLogger("gemini_chat")

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
# The edge lets exactly these through, whatever the login mode (gemini_chat/edge.py).
OPERATIONS_PATHS = frozenset({HEALTH_PATH, READY_PATH, METRICS_PATH})
ROUTE_NAMES = frozenset({"gemini_chat_healthz", "gemini_chat_readyz", "gemini_chat_metrics"})
DATABASE_TIMEOUT = 2.0
# Probes' answers are about this moment: nothing may keep them.
NO_STORE = {"Cache-Control": "no-store"}


def bearer_allowed(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>``; never without a token.
    The comparison takes the same time whatever the header holds."""
    if not token or not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


async def _select_one(engine: Any) -> None:
    async with engine.connect() as connection:
        await connection.execute(sa.text("SELECT 1"))


# Checks that ran out of time, cancelled and left to clean up (a frozen database may keep their
# connection's cleanup waiting too: the answer does not wait for it).
_abandoned: set[asyncio.Task] = set()


async def database_answers(engine: Any, seconds: float = DATABASE_TIMEOUT) -> bool:
    """Whether the database answers ``SELECT 1`` within ``seconds``."""
    check = asyncio.ensure_future(_select_one(engine))
    done, _ = await asyncio.wait({check}, timeout=seconds)
    if not done:
        check.cancel()
        _abandoned.add(check)
        check.add_done_callback(_abandoned.discard)
        check.add_done_callback(lambda task: task.cancelled() or task.exception())
        logger.warning("Readiness: the database did not answer within %gs", seconds)
        return False
    if (error := check.exception()) is not None:
        logger.warning("Readiness: the database did not answer (%s)", type(error).__name__)
        return False
    return True


async def readiness(engine: Any, draining: bool) -> tuple[int, str]:
    """The readiness status code and its word: draining first (no database call needed)."""
    if draining:
        return 503, "draining"
    if engine is None or not await database_answers(engine):
        return 503, "database unavailable"
    return 200, "ready"


class Operations:
    """The three endpoints; ``server`` returns the prepared server (app.Server), which holds
    the settings and the data layer."""

    def __init__(self, server: Callable[[], Any]) -> None:
        self.server = server

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"}, headers=NO_STORE)

    async def readyz(self, request: Request) -> Response:
        server = self.server()
        engine = server.data_layer.engine if server is not None else None
        status, word = await readiness(engine, lifecycle.draining)
        return JSONResponse({"status": word}, status_code=status, headers=NO_STORE)

    async def metrics(self, request: Request) -> Response:
        server = self.server()
        token = server.settings.metrics_token if server is not None else None
        if not token:
            return PlainTextResponse("Not Found", status_code=404)
        if not bearer_allowed(request.headers.get("authorization"), token):
            return PlainTextResponse(
                "Unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type, headers=NO_STORE)


def install_operations(app: Any, sio: Any, server: Callable[[], Any]) -> None:
    """Serve the three endpoints ahead of Chainlit's catch-all page route, and count the chat
    sockets connected; safe to call again on a reload."""
    from chainlit.config import config

    operations = Operations(server)
    root = config.run.root_path or ""
    routes = app.router.routes
    routes[:] = [route for route in routes if getattr(route, "name", None) not in ROUTE_NAMES]
    routes[0:0] = [
        Route(root + HEALTH_PATH, operations.healthz, methods=["GET"], name="gemini_chat_healthz"),
        Route(root + READY_PATH, operations.readyz, methods=["GET"], name="gemini_chat_readyz"),
        Route(root + METRICS_PATH, operations.metrics, methods=["GET"], name="gemini_chat_metrics"),
    ]
    # engine.io's open connections, one per tab (a contract tested in
    # tests/test_framework_contracts.py).
    metrics.count_sessions(lambda: len(sio.eio.sockets))
