"""Chainlit entry point: a chat that streams Google Gemini's answers through the OpenAI Agents SDK.

Start it with `uv run chainlit run chatbot.py -w`. The wiring is here; the logic lives in the
`gemini_chat` package beside this file.
"""

import chainlit as cl

from gemini_chat.app import prepare_server
from gemini_chat.chat import ChatController
from gemini_chat.llm import build_backend, build_model

# Settings come from the environment and .env; a bad value stops here with one line.
settings = prepare_server()

# An AsyncOpenAI client on Gemini's OpenAI-compatible endpoint, wrapped in an
# OpenAIChatCompletionsModel, an Agent and a RunConfig (tracing off, one retry layer).
# Built once per process; without GEMINI_API_KEY nothing is built and nothing goes upstream.
backend = build_backend(settings, build_model(settings)) if settings.api_key else None
controller = ChatController(settings, backend)


@cl.on_chat_start
async def on_chat_start() -> None:
    await controller.start()


@cl.on_message
async def on_message(message: cl.Message) -> None:
    await controller.handle(message)


@cl.on_stop
async def on_stop() -> None:
    await controller.stop()


@cl.on_chat_end
async def on_chat_end() -> None:
    await controller.end()
