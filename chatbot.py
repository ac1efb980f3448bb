"""Chainlit entry point: a chat that streams Google Gemini's answers through the OpenAI Agents SDK.

Start it with `uv run chainlit run chatbot.py -w`. The wiring is here; the logic lives in the
`gemini_chat` package beside this file.
"""

from typing import Any

import chainlit as cl

from gemini_chat.actions import CONTINUE, REGENERATE, USAGE
from gemini_chat.app import prepare_server
from gemini_chat.chat import ChatController
from gemini_chat.drain import drain_on_signals, install_message_refusal
from gemini_chat.limits import build_usage_counter
from gemini_chat.llm import build_backend, build_client, build_model
from gemini_chat.relay import current_relay
from gemini_chat.sharing import viewable
from gemini_chat.starters import install_starters, withdraw_starters

# Settings from the environment and .env, the chat database (created or upgraded) and the login
# mode. A bad value stops here with one line saying what to change.
server = prepare_server()
settings = server.settings

# An AsyncOpenAI client on Gemini's OpenAI-compatible endpoint, wrapped in an
# OpenAIChatCompletionsModel, an Agent and a RunConfig (tracing off, one retry layer).
# Built once per process; without GEMINI_API_KEY nothing is built and nothing goes upstream.
client = build_client(settings) if settings.api_key else None
backend = (
    build_backend(settings, build_model(settings, client), client, server.tools) if client else None
)
# Per-user limits on messages and tokens, counted in the database (off in local mode by default).
controller = ChatController(settings, backend, build_usage_counter(settings, server.access.local))
# Buttons with ready-made first messages under the welcome (CHAT_STARTERS).
install_starters(settings.starters)


@cl.on_app_startup
async def on_app_startup() -> None:
    # SIGTERM drains this instance: running answers end and are stored, then it exits.
    install_message_refusal(settings.assistant_name)
    drain_on_signals(settings.drain_timeout, server.data_layer)
    await current_relay().start()  # instances on one PostgreSQL database talk through it


@cl.on_app_shutdown
async def on_app_shutdown() -> None:
    await current_relay().close()
    if backend is not None and backend.mcp is not None:
        await backend.mcp.close()  # the MCP servers' processes and connections
    if client is not None:
        await client.close()  # its pooled connections to Gemini


@cl.data_layer
def data_layer() -> Any:
    return server.data_layer


if server.access.local:

    @cl.header_auth_callback
    async def header_auth_callback(headers: Any) -> cl.User | None:
        return await server.access.local_user()

else:

    @cl.password_auth_callback
    async def password_auth_callback(username: str, password: str) -> cl.User | None:
        return await server.access.check_password(username, password)

    @cl.on_logout
    async def on_logout(request: Any, response: Any) -> dict:
        return await server.access.logout(request)


@cl.on_shared_thread_view
async def on_shared_thread_view(thread: Any, viewer: cl.User | None) -> bool:
    return viewable(thread, viewer)


@cl.on_chat_start
async def on_chat_start() -> None:
    await controller.start()


@cl.on_chat_resume
async def on_chat_resume(thread: Any) -> None:
    await controller.resume(thread)


@cl.on_message
async def on_message(message: cl.Message) -> None:
    await withdraw_starters()  # the chat has begun
    await controller.handle(message)


@cl.on_settings_update
async def on_settings_update(values: dict) -> None:
    await controller.update_settings(values)


@cl.on_stop
async def on_stop() -> None:
    await controller.stop()


@cl.on_chat_end
async def on_chat_end() -> None:
    await controller.end()


@cl.action_callback(REGENERATE)
async def on_regenerate(action: cl.Action) -> None:
    await controller.regenerate(action)


@cl.action_callback(CONTINUE)
async def on_continue(action: cl.Action) -> None:
    await controller.continue_answer(action)


@cl.action_callback(USAGE)
async def on_usage(action: cl.Action) -> None:
    """The usage lines are drawn as actions; clicking one does nothing."""
