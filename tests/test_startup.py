"""Starting the app: configuration errors, a missing key, the OpenAI key never used, the
history budget, the network guard. Each test starts its own `chainlit run`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request

import pytest

from tests.chat_client import ChatClient
from tests.conftest import app_directory, free_port, guarded_env
from tests.fake_gemini import Reply


def http_get(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


async def welcome_of(client: ChatClient) -> str:
    await client.wait_for(client.assistant_messages, what="the first message")
    return client.assistant_messages()[0].content


async def test_without_a_key_the_chat_explains_how_to_set_it_and_calls_nothing(
    start_app_with, gemini
):
    server = start_app_with(GEMINI_API_KEY="", OPENAI_API_KEY="sk-openai-must-not-be-used")
    client = await ChatClient(server.url).connect()
    first = await welcome_of(client)
    assert "API key is missing" in first and "GEMINI_API_KEY" in first
    assert client.assistant_messages()[0].is_error

    replies = await client.ask("Hello?")
    assert "API key is missing" in replies[0].content
    await client.disconnect()
    # Nothing went upstream, and so the OpenAI key cannot have been sent to Google.
    assert gemini.requests == []
    assert "sk-openai-must-not-be-used" not in server.log()


async def test_the_gemini_key_is_sent_never_the_openai_key(start_app_with, gemini):
    server = start_app_with(OPENAI_API_KEY="sk-openai-must-not-be-used")
    client = await ChatClient(server.url).connect()
    await welcome_of(client)
    await client.ask("Hello")
    await client.disconnect()
    request = (await gemini.arrived(1))[0]
    assert request.headers["Authorization"] == "Bearer test-gemini-key"


async def test_settings_name_the_assistant_and_welcome(start_app_with, gemini):
    server = start_app_with(
        ASSISTANT_NAME="Aria",
        ASSISTANT_WELCOME="Salut ! Je suis Aria.",
        ASSISTANT_INSTRUCTIONS="Answer in French.",
    )
    client = await ChatClient(server.url).connect()
    assert await welcome_of(client) == "Salut ! Je suis Aria."
    replies = await client.ask("Bonjour")
    assert replies[0].author == "Aria"
    await client.disconnect()
    assert (await gemini.arrived(1))[0].conversation[0] == ("system", "Answer in French.")
    settings = await asyncio.to_thread(
        http_get, server.url + "/project/settings?language=en-US", client.headers
    )
    assert b'"name":"Aria"' in settings.replace(b" ", b"")


async def test_the_tutorials_retired_model_gets_a_clear_message(start_app_with, gemini):
    server = start_app_with(GEMINI_MODEL="gemini-2.0-flash")
    client = await ChatClient(server.url).connect()
    await welcome_of(client)
    replies = await client.ask("Hello")
    await client.disconnect()
    assert 'model "gemini-2.0-flash"' in replies[0].content and replies[0].is_error
    assert len(gemini.requests) == 1  # an unknown model is not retried


async def test_history_budget_drops_oldest_turns_but_never_the_newest(start_app_with, gemini):
    server = start_app_with(HISTORY_TOKEN_BUDGET="300", ASSISTANT_INSTRUCTIONS="Be brief.")
    client = await ChatClient(server.url).connect()
    await welcome_of(client)
    # No usage reported, so the window follows the app's estimate alone (how Gemini's reported
    # prompt size rescales it: tests/test_usage.py).
    for index in range(6):
        gemini.script(Reply(f"Answer {index} " + "filler " * 20, usage=False))
        await client.ask(f"Question {index} " + "padding " * 20)
    gemini.script(Reply("ok", usage=False))
    huge = "Newest " + "word " * 400  # alone over the budget
    await client.ask(huge)
    await client.disconnect()

    requests = await gemini.arrived(7)
    sizes = [len(r.messages) for r in requests]
    # A turn here is about 90 estimated tokens: two fit beside the new message, so the window
    # grows to two earlier turns and then slides; the oversize newest message goes alone.
    assert sizes == [2, 4, 6, 6, 6, 6, 2]
    sixth = requests[5].conversation
    assert sixth[-1][1].startswith("Question 5")
    assert [role for role, _ in sixth[1:]] == ["user", "assistant"] * ((len(sixth) - 2) // 2) + [
        "user"
    ]
    # The kept turns are the most recent ones, in order.
    assert sixth[-3][1].startswith("Question 4") and sixth[-2][1].startswith("Answer 4")
    assert requests[6].conversation == [("system", "Be brief."), ("user", huge)]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GEMINI_BASE_URL", "not a url"),
        ("HISTORY_TOKEN_BUDGET", "lots"),
        ("MAX_MESSAGE_CHARS", "-5"),
        ("GEMINI_STALL_TIMEOUT", "soon"),
    ],
)
def test_a_bad_setting_stops_the_start_with_one_line_naming_it(variable, value):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chainlit",
            "run",
            "chatbot.py",
            "--headless",
            "--port",
            str(free_port()),
        ],
        cwd=app_directory(),
        env=guarded_env(GEMINI_API_KEY="k", **{variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if "Configuration error" in line]
    assert len(error_lines) == 1 and variable in error_lines[0]


async def test_the_guard_stops_any_request_to_the_real_gemini_host(start_app_with, gemini):
    """With the real endpoint configured, nothing leaves the machine: the chat reports a
    connection failure and the fake sees nothing."""
    server = start_app_with(
        GEMINI_BASE_URL="https://generativelanguage.googleapis.com/v1beta/openai/",
        GEMINI_MAX_RETRIES="0",
    )
    client = await ChatClient(server.url).connect()
    await welcome_of(client)
    replies = await client.ask("Hello")
    await client.disconnect()
    assert "couldn't reach Gemini" in replies[0].content
    assert gemini.requests == []


def test_the_in_process_guard_refuses_the_gemini_host():
    import socket

    with pytest.raises(ConnectionError, match=r"googleapis\.com"):
        socket.getaddrinfo("generativelanguage.googleapis.com", 443)
