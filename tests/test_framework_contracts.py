"""What the app relies on in Chainlit's server, checked against the installed Chainlit.

gemini_chat/framework.py, live.py, logs.py and auth.py change or use parts of Chainlit that are
not its public API. Each test here names one such reliance and fails when an upgrade moves it,
before a user meets the difference (the browser tests show the behaviour itself).
"""

from __future__ import annotations

import inspect
import logging
import re
import signal

import chainlit.server
import chainlit.session
import chainlit.socket
from chainlit.emitter import ChainlitEmitter
from chainlit.message import MessageBase
from chainlit.server import sio

from gemini_chat.framework import install_stop_without_notice, stop_without_notice


def test_chainlits_stop_handler_is_the_one_replaced_and_posts_the_notice_we_drop():
    source = inspect.getsource(chainlit.socket.stop)
    assert 'Message(content="Task manually stopped.").send()' in source
    # What the replacement keeps doing, in the same order.
    assert source.index("current_task.cancel()") < source.index("config.code.on_stop()")
    assert list(inspect.signature(chainlit.socket.stop).parameters) == ["sid"]


def test_the_stop_handler_is_replaced_on_the_server_socket_once_and_again_after_a_reload():
    original = sio.handlers["/"]["stop"]
    try:
        sio.on("stop", chainlit.socket.stop)
        install_stop_without_notice()
        assert sio.handlers["/"]["stop"] is stop_without_notice
        install_stop_without_notice()  # `chainlit run -w` prepares the server again
        assert sio.handlers["/"]["stop"] is stop_without_notice
    finally:
        sio.on("stop", original)


def test_a_resumed_chat_is_sent_after_on_chat_resume_with_the_same_emitter():
    """framework.after_resume_sent wraps the session emitter's resume_thread from inside
    on_chat_resume: Chainlit must call the hook first, then send the chat with that emitter."""
    source = inspect.getsource(chainlit.socket.connection_successful)
    hook = source.index("await config.code.on_chat_resume(thread)")
    send = source.index("await context.emitter.resume_thread(thread)")
    assert hook < send
    assert "context = init_ws_context(sid)" in source


def test_a_streamed_message_grows_its_content_before_the_token_is_emitted():
    """live.LiveReply hands a viewer the message's content as the text so far and then every
    later piece: the content must already include a piece while it is being emitted."""
    source = inspect.getsource(MessageBase.stream_token)
    assert source.index("self.content += token") < source.index("emitter.send_token(")
    assert source.index("self.content += token") < source.index("emitter.stream_start(")


def test_the_emitter_methods_live_replies_use_take_what_they_are_given():
    parameters = {
        name: list(inspect.signature(getattr(ChainlitEmitter, name)).parameters)
        for name in ("send_token", "send_step", "update_step", "task_start", "task_end")
    }
    assert parameters == {
        "send_token": ["self", "id", "token", "is_sequence", "is_input"],
        "send_step": ["self", "step_dict"],
        "update_step": ["self", "step_dict"],
        "task_start": ["self"],
        "task_end": ["self"],
    }


def test_the_markdown_fallback_warning_the_log_drops_still_reads_the_same(tmp_path, caplog):
    from chainlit.markdown import get_markdown_str

    from gemini_chat.logs import DropMessages, quiet_library_logs

    (tmp_path / "chainlit.md").write_text("Welcome")
    with caplog.at_level(logging.WARNING, logger="chainlit"):
        assert get_markdown_str(str(tmp_path), "en-US") == "Welcome"
    (record,) = [r for r in caplog.records if r.name == "chainlit"]
    quiet_library_logs()
    drop = next(f for f in logging.getLogger("chainlit").filters if isinstance(f, DropMessages))
    assert drop.filter(record) is False


def test_the_local_page_login_uses_chainlits_own_token_and_cookie_helpers():
    from chainlit.auth import create_jwt, get_token_from_cookies, set_auth_cookie
    from chainlit.auth.jwt import decode_jwt

    assert list(inspect.signature(set_auth_cookie).parameters) == ["request", "response", "token"]
    assert list(inspect.signature(create_jwt).parameters) == ["data"]
    assert callable(get_token_from_cookies) and callable(decode_jwt)


def test_a_resumed_chats_metadata_becomes_its_session_and_goes_back_at_disconnect():
    """preferences: chat.resume drops the stored preferences from the session Chainlit built
    from the thread's metadata, because Chainlit writes that session back into the thread when
    the tab goes (a tab opened earlier would put old values back)."""
    resume = inspect.getsource(chainlit.socket.resume_thread)
    assert "user_sessions[session.id] = metadata.copy()" in resume
    assert "session.chat_settings = chat_settings" in resume
    disconnect = inspect.getsource(chainlit.socket.disconnect)
    assert "persist_user_session(session.thread_id, session.to_persistable())" in disconnect
    from chainlit.session import WebsocketSession

    persistable = inspect.getsource(WebsocketSession.to_persistable)
    assert 'user_session["chat_settings"] = self.chat_settings' in persistable


def test_chainlit_keeps_a_clients_settings_before_asking_the_app_and_the_panel_resets_them():
    """preferences: a change from the panel lands in session.chat_settings unchecked, then
    on_settings_update runs; show_panel's ChatSettings.send() puts the checked values back."""
    source = inspect.getsource(chainlit.socket.change_settings)
    assert source.index("context.session.chat_settings[key] = value") < source.index(
        "config.code.on_settings_update(settings)"
    )
    from chainlit.chat_settings import ChatSettings

    send = inspect.getsource(ChatSettings.send)
    assert "context.emitter.set_chat_settings(settings)" in send
    assert "self.settings()" in send


# --- gemini_chat/actions.py and the continued answer in chat.py -----------------------------------


def test_a_message_is_written_once_unless_marked_unpersisted_and_actions_run_over_http():
    # A continued answer is stored again by clearing ``persisted`` before its last send().
    assert "not self.persisted" in inspect.getsource(MessageBase._create)
    # Action clicks arrive as POST /project/action, outside the message task, after Chainlit
    # has checked the session belongs to the logged-in user; the callback runs without a task
    # (the app sends task_start/task_end and registers its own task so Stop reaches it).
    from chainlit.server import call_action

    source = inspect.getsource(call_action)
    assert "context.session.user.identifier != current_user.identifier" in source
    assert "response = await callback(action)" in source
    # The usage lines are actions whose id is chosen by the app (the page styles them by it).
    from chainlit.action import Action

    assert Action(name="usage", payload={}, id="gemini-usage-x").to_dict()["id"] == "gemini-usage-x"


# --- attached files (gemini_chat/uploads.py, storage.AttachmentStore) ----------------------------


def test_a_sent_message_carries_its_uploads_as_elements_read_from_the_session_files():
    source = inspect.getsource(ChainlitEmitter.process_message)
    # The app reads each element's bytes from its path and stores it under the element's id.
    assert 'self.session.files[file["id"]]' in source
    assert '"id": file["id"]' in source and '"path": str(file["path"])' in source
    assert '"mime": file["type"]' in source
    assert "message.elements = elements" in source


def test_the_upload_session_keeps_files_as_the_upload_route_expects():
    from chainlit.session import BaseSession

    assert list(inspect.signature(BaseSession.persist_file).parameters) == [
        "self",
        "name",
        "mime",
        "path",
        "content",
    ]
    source = inspect.getsource(BaseSession.persist_file)
    # Each waiting upload has its size and path (the chat's limits count them; the chat
    # removes the file once taken).
    assert '"path": file_path' in source and '"size": file_size' in source


def test_an_edited_message_is_answered_with_the_same_message_object():
    # Its files were taken the first time (marked on the elements), not read again.
    source = inspect.getsource(chainlit.socket.edit_message)
    assert "await config.code.on_message(orig_message)" in source


def test_a_stored_chat_shows_its_files_from_the_storage_clients_read_url():
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

    source = inspect.getsource(SQLAlchemyDataLayer.get_all_user_threads)
    assert "self.storage_provider.get_read_url(" in source
    assert "object_key=object_key_val" in source
    deleting = inspect.getsource(SQLAlchemyDataLayer.delete_thread)
    assert 'self.storage_provider.delete_file(object_key=elem["objectKey"])' in deleting


def test_the_page_uploads_each_file_to_the_route_the_app_replaces():
    from pathlib import Path

    from chainlit.server import build_dir

    bundles = (Path(build_dir) / "assets").glob("index-*.js")
    source = "".join(path.read_text(encoding="utf-8", errors="replace") for path in bundles)
    # One file per request, in the form field "file", with the session in the query; a refusal
    # is shown from the JSON answer's "detail".
    upload = re.search(
        r'uploadFile\(\w+,\w+,\w+,\w+\)\{.{0,120}\.append\("file",\w+\).{0,200}'
        r'"POST",this\.buildEndpoint\(`/project/file\?session_id=\$\{\w+\}',
        source,
    )
    assert upload is not None
    assert ".detail)" in source[upload.end() : upload.end() + 600]


def flattened(routes):
    """Every route, also those inside the routers FastAPI includes without copying them."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flattened(inner.routes)
        else:
            yield route


def test_the_share_routes_the_app_answers_first_are_chainlits_and_what_its_page_calls():
    """sharing.py puts its own routes in front of Chainlit's two sharing routes: they must be
    where the share dialog and the /share page call them, with the same request body."""
    from chainlit.server import app
    from chainlit.types import ShareThreadRequest
    from fastapi.routing import APIRoute

    chainlit_routes = {
        (route.path, method)
        for route in flattened(app.router.routes)
        if isinstance(route, APIRoute) and route.endpoint.__module__ == "chainlit.server"
        for method in route.methods
    }
    assert ("/project/share/{thread_id}", "GET") in chainlit_routes
    assert ("/project/thread/share", "PUT") in chainlit_routes
    assert set(ShareThreadRequest.model_fields) == {"threadId", "isShared"}
    # The share button shows only with an on_shared_thread_view hook (chatbot.py has one).
    settings_source = inspect.getsource(chainlit.server.project_settings)
    assert 'getattr(config.code, "on_shared_thread_view", None)' in settings_source
    # Chainlit saves the session into the chat's metadata on every disconnect: storage.py keeps
    # that write away from the share mark.
    assert "persist_user_session(session.thread_id" in inspect.getsource(chainlit.socket.disconnect)
    assert "update_thread(thread_id=thread_id, metadata=metadata)" in inspect.getsource(
        chainlit.socket.persist_user_session
    )


def test_the_share_routes_go_first_once_and_again_after_a_reload():
    from chainlit.server import app

    from gemini_chat.sharing import ROUTE_PREFIX, install_sharing, is_ours

    routes = app.router.routes
    saved = list(routes)
    try:
        install_sharing(app, lambda: None, "Gemini")
        install_sharing(app, lambda: None, "Gemini")  # `chainlit run -w` prepares it again
        ours = [route for route in routes if is_ours(route)]
        assert len(ours) == 1 and routes[0] is ours[0]
        # Matched first: each of the three comes before any route of Chainlit's.
        names = [getattr(r, "name", None) or "" for r in flattened(routes)]
        assert all(name.startswith(ROUTE_PREFIX) for name in names[:3])
        assert not any(name.startswith(ROUTE_PREFIX) for name in names[3:])
    finally:
        routes[:] = saved


def test_a_starter_action_names_the_chat_and_runs_like_a_typed_message():
    """starters.py names each starter action by its message, relying on Chainlit's action
    route to start the chat named after the action; its turn runs as socket.process_message
    runs a typed one, as the session's current task (what Stop cancels)."""
    source = inspect.getsource(chainlit.server.call_action)
    assert "config.code.action_callbacks.get(action.name)" in source
    assert "init_thread(action.name)" in source
    assert source.index("init_thread(action.name)") < source.index("await callback(action)")
    message = inspect.getsource(chainlit.socket.message)
    assert "session.current_task = task" in message
    processed = inspect.getsource(chainlit.socket.process_message)
    assert processed.index("task_start()") < processed.index("config.code.on_message(message)")
    assert "task_end()" in processed


# --- gemini_chat/approval.py and toolsteps.py: Allow / Deny, tool steps ---------------------------


def test_a_question_goes_to_the_asking_socket_alone_and_its_answer_is_that_sockets_ack():
    """approval.ask_approval relies on the "ask" call: only the socket asked can answer it,
    and Chainlit ends the page's busy state for the question and restores it after."""
    source = inspect.getsource(ChainlitEmitter.send_ask_user)
    call = re.sub(r"\s+", " ", source)
    assert (
        'self.emit_call( "ask", {"msg": step_dict, "spec": spec.to_dict()}, spec.timeout )' in call
    )
    for event in (
        "await self.task_end()",
        'await self.clear("clear_ask")',
        "await self.task_start()",
    ):
        assert event in source, event
    assert source.index("finally:") < source.index("await self.task_start()")
    socket_source = inspect.getsource(chainlit.socket.connect)
    assert "return sio.call(event, data, timeout=timeout, to=sid)" in socket_source
    assert list(inspect.signature(ChainlitEmitter.clear).parameters) == ["self", "event"]


def test_the_question_spec_takes_whole_seconds_and_the_buttons_it_offers():
    from chainlit.types import AskActionSpec

    spec = AskActionSpec(type="action", step_id="s", timeout=7, keys=["a", "b"])
    assert spec.to_dict() == {"keys": ["a", "b"], "timeout": 7, "type": "action", "step_id": "s"}


def test_a_message_is_put_under_the_current_step_whatever_its_constructor_was_given():
    """Why approval.py sets a question's parent after constructing it."""
    source = inspect.getsource(MessageBase.__post_init__)
    assert "self.parent_id = parent_step.id" in source


def test_whether_a_socket_is_still_connected_is_asked_of_the_servers_manager():
    """approval.py ends a question at once when the tab asked has gone."""
    assert list(inspect.signature(sio.manager.is_connected).parameters) == ["sid", "namespace"]
    assert sio.manager.is_connected("no-such-socket", "/") is False


def test_uvicorns_loggers_are_configured_from_the_dict_json_logs_change_in_place():
    """logs.install_json_logs routes uvicorn's lines to the root's JSON handler by changing the
    default configuration `chainlit run`'s uvicorn.Config is built with."""
    import chainlit.cli
    import uvicorn
    import uvicorn.config

    unbounded = getattr(uvicorn.Config, "unbounded", uvicorn.Config)  # edge.py's subclass
    default = inspect.signature(unbounded.__init__).parameters["log_config"].default
    assert default is uvicorn.config.LOGGING_CONFIG
    assert {"uvicorn", "uvicorn.access"} <= set(default["loggers"])
    assert "uvicorn.Config(" in inspect.getsource(chainlit.cli.run_chainlit)
    assert "log_config" not in inspect.getsource(chainlit.cli.run_chainlit)


def test_chat_sockets_connected_are_engineios_open_sockets():
    """The sessions gauge (health.py) counts engine.io's sockets, one per open tab, removed when
    it closes."""
    assert isinstance(sio.eio.sockets, dict)
    source = inspect.getsource(type(sio.eio))
    assert "self.sockets[sid] = s" in source
    assert "del self.sockets[sid]" in source or "self.sockets.pop(" in source


def test_socket_event_handlers_are_kept_by_event_name_and_replaced_by_on():
    """logs.install_request_ids wraps each handler, as auth.py's login gate does."""
    handlers = sio.handlers["/"]
    assert {"connect", "client_message", "stop", "disconnect"} <= set(handlers)
    assert "self.handlers[namespace][event] = handler" in inspect.getsource(type(sio).on)


def test_the_chat_of_a_log_line_is_the_thread_of_the_contexts_socket_session():
    """logs.current_chat_id reads Chainlit's context variable and its session's thread id."""
    from contextvars import ContextVar

    from chainlit.context import context_var
    from chainlit.session import WebsocketSession

    assert isinstance(context_var, ContextVar)
    assert "self.thread_id = " in inspect.getsource(WebsocketSession.__mro__[1].__init__)


# -- the drain on SIGTERM (gemini_chat/drain.py)


def test_chainlit_runs_uvicorns_server_whose_startup_runs_inside_its_signal_handlers():
    """drain_on_signals runs in on_app_startup and keeps what is then SIGTERM's handler as
    uvicorn's way to shut down: `chainlit run` must serve with uvicorn.Server.serve, which
    installs handle_exit for SIGTERM and SIGINT before it runs the lifespan's startup."""
    import chainlit.cli
    import uvicorn.server

    run = inspect.getsource(chainlit.cli.run_chainlit)
    assert "server = uvicorn.Server(config)" in run and "await server.serve()" in run
    serve = inspect.getsource(uvicorn.Server.serve)
    assert "with self.capture_signals():" in serve and "await self._serve(sockets)" in serve
    capture = inspect.getsource(uvicorn.Server.capture_signals)
    assert "signal.signal(sig, self.handle_exit)" in capture
    assert {signal.SIGTERM, signal.SIGINT} <= set(uvicorn.server.HANDLED_SIGNALS)
    assert "await self.lifespan.startup()" in inspect.getsource(uvicorn.Server.startup)
    assert "await config.code.on_app_startup()" in inspect.getsource(chainlit.server.lifespan)


def test_uvicorns_exit_handler_shuts_the_server_down_and_chainlit_exits_zero():
    """The drain calls handle_exit(SIGTERM) when it is over: it must ask for the graceful
    shutdown (should_exit, not force_exit), whose lifespan shutdown is Chainlit's, which ends
    the process with status 0."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app=None))
    server.handle_exit(signal.SIGTERM, None)
    assert (server.should_exit, server.force_exit) == (True, False)
    shutdown = inspect.getsource(uvicorn.Server.shutdown)
    assert "connection.shutdown()" in shutdown and "await self.lifespan.shutdown()" in shutdown
    lifespan = inspect.getsource(chainlit.server.lifespan)
    assert lifespan.index("await config.code.on_app_shutdown()") < lifespan.index("os._exit(0)")


def test_the_drain_tells_open_sockets_and_sessions_from_new_ones_as_chainlit_keeps_them():
    """While draining, the edge admits a socket.io request whose engine.io sid this process
    has open (sio.eio.sockets) and a request naming an open session (WebsocketSession)."""
    from chainlit.session import WebsocketSession

    assert isinstance(sio.eio.sockets, dict)
    # drain.close_chat_connections closes each without waiting for a polling page to fetch it.
    from engineio.async_socket import AsyncSocket

    close = inspect.signature(AsyncSocket.close)
    assert list(close.parameters)[:2] == ["self", "wait"]
    assert "'disconnect'" in inspect.getsource(AsyncSocket.close)
    assert "sid" in inspect.getsource(type(sio.eio).handle_request)
    assert WebsocketSession.get_by_id("not-a-session") is None
    call_action = inspect.getsource(chainlit.server.call_action)
    assert 'payload["sessionId"]' in call_action or "sessionId" in call_action


def test_a_sent_or_edited_message_reaches_chainlits_socket_handlers_that_store_it():
    """drain.install_message_refusal answers these events instead of Chainlit while draining,
    because Chainlit stores the message (and creates the chat) before on_message runs."""
    for event in ("client_message", "edit_message"):
        handler = sio.handlers["/"][event]
        original = getattr(handler, "wrapped", handler)
        assert list(inspect.signature(original).parameters) == ["sid", "payload"]
    assert "asyncio.create_task(message._create())" in inspect.getsource(
        ChainlitEmitter.process_message
    )


def test_uvicorns_websocket_protocols_can_answer_a_handshake_with_a_503():
    """A refused socket.io websocket handshake gets an HTTP 503 (for nginx to try another
    instance) through the ASGI websocket.http.response extension."""
    from uvicorn.protocols.websockets import websockets_sansio_impl, wsproto_impl

    for module in (websockets_sansio_impl, wsproto_impl):
        source = inspect.getsource(module)
        assert '"websocket.http.response": {}' in source
        assert '"websocket.http.response.start"' in source


def test_a_socket_of_an_unknown_session_naming_a_chat_resumes_it():
    """gemini_chat/reconnect.py and partial.py: a page whose server died reconnects with its
    session id and chat id; a server that does not know the session starts one that resumes the
    chat (its answers settled as interrupted), else starts afresh (the welcome again)."""
    connect = inspect.getsource(chainlit.socket.connect)
    assert 'session_id = auth["sessionId"]' in connect
    assert connect.index("restore_existing_session(") < connect.index("WebsocketSession(")
    assert "thread_id=thread_id" in connect
    assert "self.thread_id_to_resume = thread_id" in inspect.getsource(chainlit.session)
    successful = inspect.getsource(chainlit.socket.connection_successful)
    assert successful.index("resume_thread(context.session)") < successful.index(
        "config.code.on_chat_resume(thread)"
    )
    assert "on_chat_start()" in successful


def test_the_stored_streaming_column_is_what_a_page_draws_a_typing_cursor_for():
    """gemini_chat/partial.py stores a streaming answer with Chainlit's "streaming" column
    false: the page draws a cursor on a step loaded with it true."""
    import chainlit.data.sql_alchemy

    loaded = inspect.getsource(chainlit.data.sql_alchemy)
    assert 's."streaming" AS step_streaming' in loaded
    assert 'streaming=step_feedback.get("step_streaming", False)' in loaded
    assert '"streaming": self.streaming' in inspect.getsource(MessageBase.to_dict)


def test_chainlit_lets_a_session_go_only_through_its_delete_and_keeps_its_chat_context():
    """framework.release_with_session frees the app's share of a chat inside
    ``WebsocketSession.delete``: Chainlit's disconnect handler deletes a session there, at once
    on "New chat" or after session_timeout for a closed tab, and frees no chat context."""
    disconnect = inspect.getsource(chainlit.socket.disconnect)
    assert "await session.delete()" in disconnect
    assert "session_timeout" in disconnect and "to_clear" in disconnect
    assert "chat_context" not in inspect.getsource(chainlit.session.WebsocketSession.delete)
    assert inspect.iscoroutinefunction(chainlit.session.WebsocketSession.delete)
