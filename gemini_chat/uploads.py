"""Files on their way from the browser to Gemini and back: the upload route, the route that
serves an attached file to its owner, and what the chat does with a message's uploads.

Chainlit's upload route (``POST /project/file``) keeps whatever it is sent under ``.files/``,
checking only the type the browser declares; it is replaced by one that authenticates first,
then reads at most one file of the allowed size, judges it by its content
(``attachments.inspect_file``) and the chat's limits, and only then hands it to Chainlit's
session as before. A refusal answers 400 with its reason, which the page shows under the file's
name; nothing refused is kept.

When the message is sent, its files are checked again as a whole (per message, per chat), then
stored in the chat database with their owner (``storage.AttachmentStore``), shown from the
app's own route, and their copies under ``.files/`` removed. A message refused for any reason
takes its uploads away with it: removed from the page and from the disk, stored nowhere.
``GET /attachments/{id}`` serves a file to the user Chainlit authenticated for that request,
if it is theirs; anyone else gets 404 (401 without a login).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from chainlit.auth import get_current_user
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from .attachments import (
    ADMITTED,
    Attachment,
    AttachmentRefused,
    Limits,
    admitted,
    check_chat,
    check_message,
    configured_limits,
    inspect_file,
    measure,
)

logger = logging.getLogger("gemini_chat")

UPLOAD_PATH = "/project/file"
ATTACHMENT_PATH = "/attachments/{attachment_id}"
ROUTE_NAMES = frozenset({"gemini_chat_upload", "gemini_chat_attachment"})
# The user Chainlit authenticated for the request (the app overrides the dependency to refuse
# ended logins too: gemini_chat/auth.py).
CurrentUser = Annotated[Any, Depends(get_current_user)]
# What a multipart upload carries besides the file: boundaries, headers, the file's name.
FORM_ROOM = 64 * 1024


def upload_limit(limits: Limits) -> int:
    """The largest request body the upload route takes."""
    return limits.file_bytes + FORM_ROOM


def _data_layer() -> Any:
    from chainlit.data import get_data_layer

    return get_data_layer()


def judge(name: str, declared: str | None, data: bytes, limits: Limits):
    """The kind of an uploaded file, which must also be readable as that kind."""
    kind = inspect_file(name, declared, data, limits)
    measure(kind, data, name)
    return kind


# --- the routes ----------------------------------------------------------------------------------


async def upload_file(
    request: Request,
    session_id: str,
    current_user: CurrentUser,
) -> JSONResponse:
    """Chainlit's upload, checked: the caller's own session, one file, allowed by its content
    and within the limits; then kept by Chainlit's session until its message is sent."""
    from chainlit.session import WebsocketSession

    session = WebsocketSession.get_by_id(session_id)
    if session is None:
        raise HTTPException(status_code=404, detail="Session not found")
    if current_user is None or getattr(session.user, "identifier", None) != getattr(
        current_user, "identifier", None
    ):
        raise HTTPException(status_code=401, detail="Not your chat")
    if request.query_params.get("ask_parent_id"):
        raise HTTPException(status_code=400, detail="This chat does not ask for files.")
    limits = configured_limits()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > upload_limit(limits):
        raise HTTPException(
            status_code=413,
            detail=f"it is larger than {limits.file_bytes // (1024 * 1024)} MB, the most a "
            "file may be.",
        )
    form = await request.form(max_files=1, max_fields=2)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(status_code=400, detail="No file in the upload.")
        data = await upload.read(limits.file_bytes + 1)
        name = os.path.basename(upload.filename or "file")[:200]
        try:
            # Off the event loop: reading a large PDF's pages takes a while.
            kind = await asyncio.to_thread(judge, name, upload.content_type, data, limits)
            stored = await _data_layer().get_attachment_usage(session.thread_id)
            if stored is None:
                raise HTTPException(status_code=404, detail="Chat not found")
            waiting = [entry.get("size", 0) for entry in session.files.values()]
            check_chat(len(waiting) + 1, sum(waiting) + len(data), stored, limits)
        except AttachmentRefused as refusal:
            logger.info("Refused an upload: %s", refusal)
            raise HTTPException(status_code=400, detail=refusal.reason) from None
        reference = await session.persist_file(name=name, content=data, mime=kind.mime)
        return JSONResponse(content=reference)
    finally:
        await form.close()


async def serve_attachment(attachment_id: str, current_user: CurrentUser) -> Response:
    """An attached file, to its owner only: checked on every request, with the user Chainlit
    authenticated (cookie or bearer token)."""
    if current_user is None:
        raise HTTPException(status_code=401, detail="Unauthorized")
    attachment = await _data_layer().get_attachment(attachment_id)
    if attachment is None:
        raise HTTPException(status_code=404, detail="Not found")
    # Text is served as plain text whatever it holds (an HTML file is not rendered).
    mime = "text/plain; charset=utf-8" if attachment.family == "text" else attachment.mime
    return Response(
        content=attachment.data,
        media_type=mime,
        headers={
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(attachment.name)}",
            # Private to the logged-in user: no shared cache keeps it.
            "Cache-Control": "private, no-store",
            # Even opened on its own, the file runs nothing and loads nothing.
            "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; "
            "media-src 'self'; style-src 'unsafe-inline'",
        },
    )


def install_upload_routes(app: Any) -> None:
    """Put the two routes in front of Chainlit's (its own upload route is then never reached);
    safe to call again on a reload."""
    router = APIRouter()
    router.add_api_route(UPLOAD_PATH, upload_file, methods=["POST"], name="gemini_chat_upload")
    router.add_api_route(
        ATTACHMENT_PATH, serve_attachment, methods=["GET"], name="gemini_chat_attachment"
    )
    routes = app.router.routes
    routes[:] = [route for route in routes if getattr(route, "name", None) not in ROUTE_NAMES]
    before = len(routes)
    app.include_router(router)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added


# --- a message's files ----------------------------------------------------------------------------


async def message_files(message: Any, limits: Limits) -> list[Attachment]:
    """The files sent with ``message``, each checked again, and all of them within the limits
    of a message and of the chat. Files of an edited message were taken the first time."""
    files: list[Attachment] = []
    new_sizes: list[int] = []
    for element in getattr(message, "elements", None) or []:
        attachment = admitted(element)
        if attachment is None:
            path = getattr(element, "path", None)
            if not path:
                continue
            try:
                data = await asyncio.to_thread(Path(path).read_bytes)
            except OSError:
                raise AttachmentRefused(
                    f"{element.name} is no longer on the server: attach it again."
                ) from None
            kind = inspect_file(element.name, element.mime, data, limits)
            attachment = Attachment(element.id, element.name, kind.mime, data)
            new_sizes.append(len(data))
        files.append(attachment)
    if files:
        layer = _data_layer()
        stored = (0, 0)
        if layer is not None:
            import chainlit as cl

            stored = await layer.get_attachment_usage(cl.context.session.thread_id) or (0, 0)
        check_message(len(files), new_sizes, stored, limits)
    return files


async def keep_files(message: Any, files: list[Attachment]) -> None:
    """Store a sent message's new files with the chat and show them from the app's route."""
    import chainlit as cl

    from .storage import ATTACHMENT_URL

    layer = _data_layer()
    by_id = {attachment.id: attachment for attachment in files}
    for element in getattr(message, "elements", None) or []:
        attachment = by_id.get(element.id)
        if attachment is None or admitted(element) is not None:
            continue
        setattr(element, ADMITTED, attachment)
        element.for_id = message.id
        if layer is not None:
            await layer.create_element(element)
            element.url = ATTACHMENT_URL.format(id=element.id)
            await cl.context.emitter.send_element(
                {**element.to_dict(), "type": attachment.shown_as}
            )


async def discard_files(message: Any) -> None:
    """A refused message's uploads: off the page, off the disk, stored nowhere."""
    import chainlit as cl

    for element in getattr(message, "elements", None) or []:
        if admitted(element) is not None:
            continue
        await cl.context.emitter.emit("remove_element", {"id": element.id})
    release_uploads(message)


def release_uploads(message: Any) -> None:
    """Remove Chainlit's copies of a message's uploads under ``.files/``."""
    import chainlit as cl

    files = getattr(cl.context.session, "files", {})
    for element in getattr(message, "elements", None) or []:
        entry = files.pop(element.id, None)
        path = getattr(element, "path", None) or (entry or {}).get("path")
        if path:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                logger.warning("Could not remove an upload: %s", type(error).__name__)


async def stored_files(thread_id: str) -> dict[str, list[Attachment]]:
    """A chat's stored files by the message they came with (for resuming it)."""
    layer = _data_layer()
    if layer is None:
        return {}
    grouped: dict[str, list[Attachment]] = {}
    for message_id, attachment in await layer.get_attachments(thread_id):
        grouped.setdefault(message_id, []).append(attachment)
    return grouped
