"""The routes that let a chat leave its owner's hands: downloading it, and its share link.

- ``GET /project/thread/{id}/export.md`` and ``.json``: the chat as a file (export.py), for its
  owner only; anyone else, and any id that is not one of their chats, gets 404.
- ``PUT /project/thread/share`` (what Chainlit's share dialog sends): the owner marks the chat
  shared or not, through the data layer's ``share_thread``.
- ``GET /project/share/{id}`` (what Chainlit's ``/share/{id}`` page reads): the chat, read-only,
  for anyone logged in while its owner shares it, through the data layer's
  ``get_shared_thread``; otherwise 404, as for a chat that does not exist.

Chainlit has routes of its own at the two sharing paths; they read and write the share mark
through the general ``get_thread`` and ``update_thread``, which serve the owner only and never
touch the mark (storage.py). These routes take their place, so the owner check stays the one
rule, and sharing has one explicit path of its own. Sharing needs accounts: local mode has a
single user, nobody to share with, and turns it off (app.py).
"""

from __future__ import annotations

import logging
from typing import Any

from chainlit.auth import get_current_user
from chainlit.types import ShareThreadRequest
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse, Response

from .export import FORMATS, file_name, to_json, to_markdown
from .history import load_json

logger = logging.getLogger("gemini_chat")

ROUTE_PREFIX = "gemini_chat_sharing_"
NOT_FOUND = "Chat not found"


def viewable(thread: dict[str, Any], viewer: Any) -> bool:
    """Whether ``viewer`` may read ``thread`` through its share link: its owner always, anyone
    logged in while it is shared (what get_shared_thread enforces in the data layer)."""
    if viewer is None:
        return False
    owner = thread.get("userIdentifier")
    shared = load_json(thread.get("metadata")).get("is_shared") is True
    return (owner is not None and owner == viewer.identifier) or shared


def build_router(layer, assistant_name: str) -> APIRouter:
    """The routes of the module docstring; ``layer()`` returns the data layer."""
    router = APIRouter()
    user = Depends(get_current_user)

    async def export_chat(thread_id: str, extension: str, current_user: Any = user) -> Response:
        if extension not in FORMATS or current_user is None:
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        thread = await layer().get_thread(thread_id)
        if not thread:
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        body = to_markdown(thread, assistant_name) if extension == "md" else to_json(thread)
        return Response(
            body,
            media_type=FORMATS[extension],
            headers={
                "Content-Disposition": f'attachment; filename="{file_name(thread, extension)}"',
                "Cache-Control": "no-store",
            },
        )

    async def share_chat(payload: ShareThreadRequest, current_user: Any = user) -> JSONResponse:
        if current_user is None or not await layer().share_thread(
            payload.threadId, payload.isShared
        ):
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        logger.info("A chat was %s by its owner", "shared" if payload.isShared else "unshared")
        return JSONResponse({"success": True})

    async def shared_chat(thread_id: str, current_user: Any = user) -> JSONResponse:
        thread = await layer().get_shared_thread(thread_id) if current_user else None
        if not thread:
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        return JSONResponse(thread, headers={"Cache-Control": "no-store"})

    for path, endpoint, method in (
        ("/project/thread/{thread_id}/export.{extension}", export_chat, "GET"),
        ("/project/thread/share", share_chat, "PUT"),
        ("/project/share/{thread_id}", shared_chat, "GET"),
    ):
        router.add_api_route(
            path, endpoint, methods=[method], name=ROUTE_PREFIX + endpoint.__name__
        )
    return router


def is_ours(route) -> bool:
    """Whether ``route`` is one of these routes, or the router FastAPI includes them in."""
    inner = getattr(route, "original_router", None)
    return any(
        (getattr(each, "name", None) or "").startswith(ROUTE_PREFIX)
        for each in (inner.routes if inner is not None else [route])
    )


def install_sharing(app, layer, assistant_name: str) -> None:
    """Put the routes in front of Chainlit's (the first route that matches answers); safe to
    call again on a reload."""
    from chainlit.config import config

    routes = app.router.routes
    routes[:] = [route for route in routes if not is_ours(route)]
    count = len(routes)
    # Included through the app, so they get its dependency overrides (auth.py's login checks).
    app.include_router(build_router(layer, assistant_name), prefix=config.run.root_path)
    added = routes[count:]
    del routes[count:]
    routes[:0] = added
