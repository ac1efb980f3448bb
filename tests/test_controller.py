"""The handlers' logic with ScriptedModel and a fake Chainlit context: what the browser is sent
and what the model receives."""

from __future__ import annotations

import asyncio

import chainlit as cl
import httpx2
import openai
from agents.testing import ModelStep, ScriptedModel

from gemini_chat.chat import ChatController, release_session
from gemini_chat.config import load_settings
from gemini_chat.framework import release_with_session
from gemini_chat.llm import build_backend
from tests.fake_models import streamed_reply


def controller_for(model: ScriptedModel | None, **env: str) -> ChatController:
    settings = load_settings(
        {"GEMINI_API_KEY": "k" if model else "", "GEMINI_MAX_RETRIES": "0", **env}
    )
    return ChatController(settings, build_backend(settings, model) if model else None)


def sent_steps(context) -> list[dict]:
    return [call.args[0] for call in context.emitter.send_step.await_args_list]


async def test_a_failed_turn_is_left_out_of_the_next_request(chainlit_context):
    request = httpx2.Request("POST", "http://fake/")
    model = ScriptedModel(
        [
            ModelStep.raise_error(openai.APIConnectionError(request=request)),
            streamed_reply("Back", " again"),
        ]
    )
    controller = controller_for(model)
    await controller.start()
    await controller.handle(cl.Message(content="first"))
    await controller.handle(cl.Message(content="second"))

    steps = sent_steps(chainlit_context)
    assert steps[0]["output"] == controller.settings.welcome
    assert steps[1]["isError"] and "couldn't reach Gemini" in steps[1]["output"]
    assert steps[2]["output"] == "Back again" and not steps[2]["isError"]
    assert model.last_call.input == [{"role": "user", "content": "second"}]
    assert model.last_call.system_instructions == controller.settings.instructions


async def test_turns_accumulate_in_the_session_history(chainlit_context):
    model = ScriptedModel([streamed_reply("A1"), streamed_reply("A2")])
    controller = controller_for(model)
    await controller.start()
    await controller.handle(cl.Message(content="Q1"))
    await controller.handle(cl.Message(content="Q2"))
    assert model.last_call.input == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    model.assert_complete()


async def test_without_a_backend_every_message_explains_the_missing_key(chainlit_context):
    controller = controller_for(None)
    await controller.start()
    await controller.handle(cl.Message(content="hello"))
    steps = sent_steps(chainlit_context)
    assert len(steps) == 2
    assert all(s["isError"] and "GEMINI_API_KEY" in s["output"] for s in steps)


def real_session(session_id: str):
    """A Chainlit session as its socket handlers make one, for what happens when it is deleted."""
    from unittest.mock import Mock

    from chainlit.session import WebsocketSession

    return WebsocketSession(
        id=session_id,
        socket_id=f"{session_id}-socket",
        emit=Mock(),
        emit_call=Mock(),
        user_env={},
        client_type="webapp",
    )


async def test_a_chat_that_ends_frees_what_chainlit_keeps_for_it(chainlit_context, monkeypatch):
    from chainlit.chat_context import chat_contexts
    from chainlit.session import WebsocketSession
    from chainlit.user_session import user_sessions

    monkeypatch.setattr(WebsocketSession, "delete", WebsocketSession.delete)  # undone after
    release_with_session(release_session)
    model = ScriptedModel([streamed_reply("Kept until the end.")])
    controller = controller_for(model)
    await controller.start()
    await controller.handle(cl.Message(content="Hello"))
    session_id = chainlit_context.session.id
    assert chat_contexts[session_id] and user_sessions[session_id]

    chainlit_context.session.to_clear = True  # the browser's "New chat", then disconnect
    await controller.end()
    await real_session(session_id).delete()  # what Chainlit's disconnect handler does next
    assert session_id not in chat_contexts
    assert session_id not in user_sessions


async def test_a_closed_tabs_chat_is_freed_when_its_session_expires_however_late(
    chainlit_context, monkeypatch
):
    """Chainlit deletes a closed tab's session after its session_timeout, counted from after it
    stored the session's metadata (later when many tabs close at once): whenever that
    is, the chat's context and state go with it, and not before."""
    from chainlit.chat_context import chat_contexts
    from chainlit.session import WebsocketSession
    from chainlit.user_session import user_sessions

    monkeypatch.setattr(WebsocketSession, "delete", WebsocketSession.delete)  # undone after
    release_with_session(release_session)
    release_with_session(release_session)  # installed again, as a reload under -w does
    model = ScriptedModel([streamed_reply("Kept while the tab may come back.")])
    controller = controller_for(model)
    await controller.start()
    await controller.handle(cl.Message(content="Hello"))
    session_id = chainlit_context.session.id

    await controller.end()  # the tab closed: no "New chat"
    await asyncio.sleep(0.05)
    assert chat_contexts[session_id] and user_sessions[session_id]  # it may come back

    expired = real_session(session_id)
    other = real_session("another-tab")
    chat_contexts["another-tab"] = ["kept"]
    await expired.delete()
    assert session_id not in chat_contexts
    assert session_id not in user_sessions
    assert WebsocketSession.get_by_id(session_id) is None  # Chainlit's own deletion still ran
    assert chat_contexts.pop("another-tab") == ["kept"]  # nobody else's
    await other.delete()
