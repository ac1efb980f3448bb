"""Tools end to end: the real app (``TOOL_MODULES=tests.sample_tools``) answering through the
fake Gemini, which calls tools; the tests assert the requests Gemini received and what the chat
shows."""

from __future__ import annotations

import pytest

from tests.app_process import ROOT, start_app
from tests.chat_client import ChatClient
from tests.conftest import app_env
from tests.fake_gemini import Reply, ToolCall, tool_call_reply

TOOL_SETTINGS = {
    "TOOL_MODULES": "tests.sample_tools",
    # The built-ins are part C1's; these tests need only the sample tools.
    "TOOLS": "none",
    "TOOL_TIMEOUT_SECONDS": "2",
    "TOOL_RESULT_MAX_CHARS": "5000",
    "MAX_TOOL_ROUNDS": "3",
    # The app runs in a directory of its own: the tests package is found through here.
    "PYTHONPATH": str(ROOT),
}


@pytest.fixture(scope="module")
def tools_app(fake_gemini_server):
    server = start_app(app_env(fake_gemini_server, **TOOL_SETTINGS))
    yield server
    server.stop()


@pytest.fixture
async def chat(tools_app, gemini):
    client = await ChatClient(tools_app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    yield client
    await client.disconnect()


def tool_messages(request) -> list[dict]:
    """The assistant tool-call messages and tool results of a request, as sent."""
    return [m for m in request.messages if m.get("tool_calls") or m["role"] == "tool"]


async def test_a_tool_call_runs_and_its_result_goes_back_to_gemini(chat, gemini):
    gemini.script(
        tool_call_reply(ToolCall("lookup_weather", {"city": "Oslo"}, id="call_1"), shape="openai"),
        Reply("It is sunny in Oslo."),
    )
    replies = await chat.ask("Weather in Oslo?")
    assert [m.content for m in replies if not m.is_error] == ["It is sunny in Oslo."]
    first, second = await gemini.arrived(2)
    assert [t["function"]["name"] for t in first.body["tools"]] == [
        "lookup_weather",
        "slow_tool",
        "broken_tool",
        "huge_tool",
        "confirm_tool",
    ]
    assert tool_messages(second) == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny in Oslo, 21 °C"},
    ]
