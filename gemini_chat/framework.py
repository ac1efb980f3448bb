"""What the app changes in Chainlit's own server behaviour, each change a named contract.

Every function here replaces or wraps something Chainlit does by itself; tests/test_contracts.py
checks that what it relies on is still there, so an upgrade that moves it fails loudly.
"""

from __future__ import annotations

import functools
import inspect
import logging

logger = logging.getLogger("gemini_chat")


async def stop_without_notice(sid: str) -> None:
    """Chainlit's socket "stop" handler, less the "Task manually stopped." message it posts.

    The chat marks a stopped answer itself (on the answer, or in its place when none had
    started), so Chainlit's separate bubble was a second notice of the same thing, stored with
    the chat and shown again on every reload."""
    from chainlit.config import config
    from chainlit.context import init_ws_context
    from chainlit.session import WebsocketSession

    session = WebsocketSession.get(sid)
    if session is None:
        return
    init_ws_context(session)
    if session.current_task:
        session.current_task.cancel()
    if config.code.on_stop:
        await config.code.on_stop()


def install_stop_without_notice() -> None:
    import chainlit.socket  # registers Chainlit's handlers on the server's socket
    from chainlit.server import sio

    # Under the request-id wrapper of logs.py, once installed.
    current = inspect.unwrap(sio.handlers.get("/", {}).get("stop"))
    if current is not chainlit.socket.stop:
        if getattr(current, "__qualname__", None) == stop_without_notice.__qualname__:
            sio.on("stop", stop_without_notice)  # a reload under `chainlit run -w`
            return
        logger.error("Chainlit's stop handler is not where expected; stop posts its own notice")
        return
    sio.on("stop", stop_without_notice)


def after_resume_sent(emitter, action) -> None:
    """Run ``action`` right after Chainlit has sent the browser the chat it resumes.

    Chainlit calls ``on_chat_resume`` before it sends the chat, and wraps the hook in a
    task_start/task_end pair, so anything the hook itself sends about the chat's state (an
    answer still running) is undone or overwritten by what follows. Chainlit sends the chat
    with this session's ``emitter.resume_thread``; the action runs once, after it."""
    send_chat = emitter.resume_thread

    async def resume_thread(thread_dict):
        emitter.resume_thread = send_chat
        result = await send_chat(thread_dict)
        await action()
        return result

    emitter.resume_thread = resume_thread


def install_user_note(note) -> None:
    """Call ``note(user)`` each time Chainlit authenticates a user, in the request or socket
    connection being authenticated.

    Chainlit's routes depend on ``get_current_user`` (cookie, else bearer token) and its socket
    connect calls it too; both reach ``chainlit.auth.authenticate_user``, looked up at call
    time, which is wrapped here. The data layer learns who is asking from the note.

    A reload under `chainlit run -w` imports the app's modules afresh, but Chainlit keeps the
    data layer it made first, which may come from an earlier copy: every copy's note is called.
    """
    import chainlit.auth

    notes = getattr(chainlit.auth.authenticate_user, "notes", None)
    if notes is not None:
        notes.append(note)
        return
    authenticate = chainlit.auth.authenticate_user
    notes = [note]

    @functools.wraps(authenticate)
    async def authenticate_user(*args, **kwargs):
        user = await authenticate(*args, **kwargs)
        for each in notes:
            each(user)
        return user

    authenticate_user.notes = notes  # type: ignore[attr-defined]
    chainlit.auth.authenticate_user = authenticate_user


def release_with_session(release) -> None:
    """Call ``release(session_id)`` each time Chainlit deletes a chat's session.

    Chainlit deletes a session at once on "New chat" and, for a closed tab, once its
    ``session_timeout`` has passed without the tab coming back; it then forgets the session but
    keeps its chat context (issue 2951). Releasing the app's share in that same call needs no
    timer of its own: one beside Chainlit's raced it, since Chainlit starts its timer only after
    storing the session's metadata, which queues up when many tabs close at once; the app's
    check came first, found the session still there and never looked again, so a wave of 500
    closed tabs kept 500 chat contexts for the life of the process.

    A reload under `chainlit run -w` installs the new copy's ``release`` in place of the old.
    """
    from chainlit.session import WebsocketSession

    delete = WebsocketSession.delete
    delete = getattr(delete, "deletes", delete)

    @functools.wraps(delete)
    async def delete_and_release(self) -> None:
        try:
            await delete(self)
        finally:
            release(self.id)

    delete_and_release.deletes = delete  # type: ignore[attr-defined]
    WebsocketSession.delete = delete_and_release
