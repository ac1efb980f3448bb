"""Tools end to end: the real app (``TOOL_MODULES=tests.sample_tools``) answering through the
fake Gemini, which calls tools; the tests assert the requests Gemini received and what the chat
shows."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from unittest.mock import AsyncMock

import pytest
from agents import function_tool
from agents.testing import ModelStep, ScriptedModel, function_call
from agents.tool_context import ToolContext
from playwright.async_api import expect

from gemini_chat.actions import CONTINUE_PROMPT
from gemini_chat.config import load_settings
from gemini_chat.history import History, stored_items, turn_items
from gemini_chat.llm import build_backend
from gemini_chat.streaming import ReplyStream
from gemini_chat.toolrun import TurnContext, as_text, guard, shortened
from tests import sample_tools
from tests.app_process import ROOT, app_directory, start_app
from tests.chat_client import ChatClient
from tests.chromium import ARTIFACTS
from tests.conftest import app_env
from tests.fake_gemini import Reply, ToolCall, tool_call_reply
from tests.fake_models import streamed_reply
from tests.test_browser import type_and_send
from tests.test_page import last_step, open_chat
from tests.test_regenerate import offered

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


def tool_results(request) -> dict[str, str]:
    """The tool results a request carries, by call id."""
    return {m["tool_call_id"]: m["content"] for m in request.messages if m["role"] == "tool"}


def weather(city: str, call_id: str) -> ToolCall:
    return ToolCall("lookup_weather", {"city": city}, id=call_id)


async def test_parallel_calls_each_run_and_answer_under_their_own_id(chat, gemini):
    gemini.script(
        tool_call_reply(weather("Oslo", "call_a"), weather("Paris", "call_b"), shape="openai"),
        Reply("Sunny in both."),
    )
    await chat.ask("Weather in Oslo and Paris?")
    second = (await gemini.arrived(2))[1]
    calls = tool_messages(second)[0]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [
        ("call_a", '{"city": "Oslo"}'),
        ("call_b", '{"city": "Paris"}'),
    ]
    assert tool_results(second) == {
        "call_a": "Sunny in Oslo, 21 °C",
        "call_b": "Sunny in Paris, 21 °C",
    }


async def test_the_text_of_every_round_goes_into_the_one_answer(chat, gemini):
    gemini.script(
        tool_call_reply(weather("Oslo", "call_1"), shape="openai", text="Let me look."),
        Reply("It is sunny."),
    )
    replies = await chat.ask("Weather in Oslo?")
    assert [m.content for m in replies] == ["Let me look.\n\nIt is sunny."]


async def test_the_next_turn_carries_the_calls_and_results_as_items(chat, gemini):
    gemini.script(
        tool_call_reply(weather("Oslo", "call_1"), shape="openai", text="Checking."),
        Reply("It is sunny in Oslo."),
        Reply("You are welcome."),
    )
    await chat.ask("Weather in Oslo?")
    await chat.ask("Thanks!")
    second, third = (await gemini.arrived(3))[1:]
    # The follow-up of the first turn and the next turn send the calls and results alike.
    assert third.messages[1 : len(second.messages)] == second.messages[1:]
    assert third.messages[len(second.messages) :] == [
        {"role": "assistant", "content": "It is sunny in Oslo."},
        {"role": "user", "content": "Thanks!"},
    ]
    assert tool_messages(third) == [
        {
            "role": "assistant",
            "content": "Checking.",
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


async def outcome_of(chat, gemini, call: ToolCall) -> tuple[str, list[str]]:
    """Ask for ``call``; the result Gemini was sent for it and the answer shown. The chat
    then carries on: the next message is answered."""
    before = len(gemini.requests)
    gemini.script(tool_call_reply(call, shape="openai"), Reply("Handled."))
    replies = await chat.ask("Go")
    follow_up = (await gemini.arrived(before + 2))[before + 1]
    gemini.script(Reply("Still here."))
    assert [m.content for m in await chat.ask("Next")] == ["Still here."]
    return tool_results(follow_up)[call.id], [m.content for m in replies]


async def test_a_call_to_an_unknown_tool_is_an_error_the_model_reads(chat, gemini):
    result, shown = await outcome_of(chat, gemini, ToolCall("teleport", {"to": "Mars"}, id="c1"))
    assert result == "Error: there is no tool named 'teleport'. Use only the tools you were given."
    assert shown == ["Handled."]


async def test_arguments_that_are_not_json_are_an_error_the_model_reads(chat, gemini):
    result, shown = await outcome_of(chat, gemini, ToolCall("lookup_weather", '{"city": ', id="c1"))
    assert result.startswith(
        "Error: the arguments for lookup_weather were not valid: "
        "Invalid JSON input for tool lookup_weather"
    )
    assert shown == ["Handled."]


async def test_arguments_that_do_not_fit_the_schema_are_an_error_the_model_reads(chat, gemini):
    result, shown = await outcome_of(
        chat, gemini, ToolCall("lookup_weather", {"town": "Oslo"}, id="c1")
    )
    assert result.startswith(
        "Error: the arguments for lookup_weather were not valid: "
        "Invalid JSON input for tool lookup_weather. "
        "They must be a JSON object fitting this schema: {"
    )
    schema = json.loads(result.split("schema: ", 1)[1])
    assert schema["required"] == ["city"]
    assert shown == ["Handled."]


async def test_a_tool_that_raises_is_an_error_the_model_reads(chat, gemini):
    result, shown = await outcome_of(chat, gemini, ToolCall("broken_tool", {}, id="c1"))
    assert result == "Error: broken_tool failed: RuntimeError: the widget is jammed"
    assert shown == ["Handled."]


async def test_a_tool_that_hangs_is_stopped_at_the_time_limit(chat, gemini):
    result, shown = await outcome_of(chat, gemini, ToolCall("slow_tool", {"seconds": 60}, id="c1"))
    assert result == "Error: slow_tool gave no result within 2 seconds and was stopped."
    assert shown == ["Handled."]


async def test_a_huge_result_is_cut_to_the_limit(chat, gemini):
    result, shown = await outcome_of(chat, gemini, ToolCall("huge_tool", {}, id="c1"))
    assert len(result) <= 5000
    assert result.startswith("x" * 4000)
    assert result.endswith(
        "[Shortened: the tool returned 10,000,000 characters; only the first "
        f"{result.count('x'):,} are here.]"
    )
    assert shown == ["Handled."]


async def test_after_the_last_tool_round_the_model_must_answer(chat, gemini):
    gemini.script(
        *(tool_call_reply(weather(city, f"call_{city}"), shape="openai") for city in "ABC"),
        Reply("Enough looking."),
    )
    replies = await chat.ask("Weather everywhere")
    assert [m.content for m in replies] == ["Enough looking."]
    requests = await gemini.arrived(4)
    assert [r.body.get("tool_choice") for r in requests] == [None, None, None, "none"]
    # The tools are still declared: the calls in the history refer to them.
    assert len(requests[3].body["tools"]) == 5


async def test_a_model_that_calls_tools_past_the_cap_is_stopped_with_a_notice(chat, gemini):
    gemini.script(
        *(tool_call_reply(weather(city, f"call_{city}"), shape="openai") for city in "ABCD"),
    )
    replies = await chat.ask("Weather everywhere")
    assert [m.content for m in replies if m.is_error] == [
        "The answer was stopped after 3 rounds of tool calls, the most one message may use. "
        "Ask again, perhaps for less at once."
    ]
    assert len(await gemini.arrived(4)) == 4
    gemini.script(Reply("Fine."))
    assert [m.content for m in await chat.ask("OK")] == ["Fine."]
    last = (await gemini.arrived(5))[4]
    # Every call of the capped turn is sent with its result.
    assert sorted(tool_results(last)) == ["call_A", "call_B", "call_C", "call_D"]


async def test_stop_during_a_tool_cancels_it_and_the_history_keeps_only_whole_calls(chat, gemini):
    gemini.script(
        tool_call_reply(weather("Oslo", "call_1"), shape="openai"),
        tool_call_reply(ToolCall("slow_tool", {"seconds": 1.5}, id="call_2"), shape="openai"),
    )
    chat.mark()
    await chat.send("Weather, slowly")
    second = (await gemini.arrived(2))[1]
    await asyncio.to_thread(second.finished.wait, 10)  # slow_tool is running now
    await chat.stop()
    await chat.wait_idle()
    assert [m.content for m in chat.assistant_messages()][-1] == "*Stopped before any answer.*"
    # Past the tool's 2 s time limit: had the call gone on, its result (or its time-out
    # error) would have gone to Gemini in a third request. Nothing to wait on but time.
    await asyncio.sleep(2.5)
    assert len(gemini.requests) == 2

    gemini.script(Reply("Here now."))
    assert [m.content for m in await chat.ask("Still there?")] == ["Here now."]
    last = (await gemini.arrived(3))[2]
    # The complete call and its result are sent; the stopped one (call_2) is not.
    assert [m["role"] for m in last.messages[1:]] == ["user", "assistant", "tool", "user"]
    assert tool_results(last) == {"call_1": "Sunny in Oslo, 21 °C"}
    assert "call_2" not in json.dumps(last.messages)


async def test_thoughts_of_each_round_get_a_thinking_step_of_their_own(chat, gemini):
    gemini.script(
        tool_call_reply(
            weather("Oslo", "call_1"),
            shape="openai",
            thoughts=["Need the weather."],
            thought_shape="reasoning_content",
        ),
        Reply("Sunny.", thoughts=["The tool says sunny."]),
        Reply("Bye."),
    )
    await chat.ask("Weather in Oslo?")
    thinking: dict[str, dict] = {}
    for name, data in chat.events:
        if name in ("new_message", "update_message") and data.get("type") == "llm":
            thinking[data["id"]] = data
    assert [(step["name"], step["output"]) for step in thinking.values()] == [
        ("Thought for 1 s", "Need the weather."),
        ("Thought for 1 s", "The tool says sunny."),
    ]
    # Thoughts are never sent back, not even those of a tool turn.
    await chat.ask("Bye")
    last = (await gemini.arrived(3))[2]
    assert "Need the weather" not in json.dumps(last.messages)


async def test_a_resumed_chat_sends_the_same_items_after_a_restart(fake_gemini_server, gemini):
    directory = app_directory()
    env = app_env(fake_gemini_server, **TOOL_SETTINGS)
    first_app = start_app(env, directory=directory)
    try:
        client = await ChatClient(first_app.url).connect()
        await client.wait_for(client.assistant_messages, what="the welcome message")
        gemini.script(
            tool_call_reply(
                ToolCall("lookup_weather", {"city": "Oslo"}, id="call_1", signature="c2lnLTE="),
                weather("Paris", "call_2"),
                shape="openai",
                text="Checking both.",
            ),
            Reply("Sunny in both."),
            Reply("Before the restart."),
        )
        await client.ask("Weather in Oslo and Paris?")
        await client.ask("Thanks")
        before = (await gemini.arrived(3))[2]
        thread_id = await client.chat_thread()
        await client.disconnect()
    finally:
        first_app.stop()
    # The thought signature went back to Gemini in Google's field, with its call.
    call = tool_messages(before)[0]["tool_calls"][0]
    assert call["extra_content"] == {"google": {"thought_signature": "c2lnLTE="}}

    second_app = start_app(env, directory=directory)
    try:
        resumed = ChatClient(second_app.url, headers=dict(client.headers))
        await resumed.connect(thread_id=thread_id)
        await resumed.wait_for(
            lambda: sum(m.from_user for m in resumed.messages.values()) == 2, what="the old chat"
        )
        gemini.script(Reply("After the restart."))
        await resumed.ask("Thanks")
        after = (await gemini.arrived(4))[3]
        await resumed.disconnect()
    finally:
        second_app.stop()
    # Exactly what the chat sent before the restart, and the turn that followed.
    assert after.messages == [
        *before.messages,
        {"role": "assistant", "content": "Before the restart."},
        {"role": "user", "content": "Thanks"},
    ]


async def test_regenerate_asks_a_tool_turn_again_and_keeps_only_the_new_calls(chat, gemini):
    gemini.script(
        tool_call_reply(weather("Oslo", "call_old"), shape="openai"),
        Reply("Old answer."),
        tool_call_reply(weather("Oslo", "call_new"), shape="openai"),
        Reply("New answer."),
        Reply("Three."),
    )
    [old] = await chat.ask("Weather in Oslo?")
    regenerate = await offered(chat, old.id, "regenerate")
    chat.mark()
    status, body = await chat.call_action(regenerate)
    assert status == 200, body
    await chat.wait_idle()
    requests = await gemini.arrived(4)
    assert requests[2].messages == requests[0].messages  # asked exactly as the first time
    assert chat.assistant_messages()[-1].content == "New answer."

    await chat.ask("three")
    last = (await gemini.arrived(5))[4]
    assert tool_results(last) == {"call_new": "Sunny in Oslo, 21 °C"}
    assert "call_old" not in json.dumps(last.messages)


async def test_continue_goes_on_after_a_tool_turn_and_the_history_holds_it_whole(chat, gemini):
    gemini.script(
        tool_call_reply(weather("Oslo", "call_1"), shape="openai"),
        Reply(chunks=["Sunny", " and"], finish_reason="length"),
        Reply(chunks=[" warm."]),
        Reply("Next."),
    )
    [cut, notice] = await chat.ask("Weather in Oslo?")
    cont = await offered(chat, notice.id, "continue")
    chat.mark()
    status, body = await chat.call_action(cont)
    assert status == 200, body
    await chat.wait_idle()
    continuing = (await gemini.arrived(3))[2]
    assert chat.messages[cut.id].content == "Sunny and warm."
    assert continuing.messages[-2:] == [
        {"role": "assistant", "content": "Sunny and"},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    await chat.ask("More")
    last = (await gemini.arrived(4))[3]
    assert [m["role"] for m in last.messages[1:]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert last.messages[-2] == {"role": "assistant", "content": "Sunny and warm."}
    assert tool_results(last) == {"call_1": "Sunny in Oslo, 21 °C"}


# --- the guard and the run, without a server (ScriptedModel) ------------------------------------


class RecordingObserver:
    """A ToolObserver that notes what it was told and answers approvals as scripted."""

    def __init__(self, allow: bool = True) -> None:
        self.allow = allow
        self.seen: list[tuple] = []
        self.running = asyncio.Event()

    async def started(self, call_id: str, name: str, arguments: str) -> None:
        self.seen.append(("started", call_id, name, arguments))
        self.running.set()

    async def finished(self, call_id: str, output: str, error: str | None, seconds: float) -> None:
        self.seen.append(("finished", call_id, output, error))

    async def approve(self, call_id: str, name: str, arguments: str, wait_seconds: float) -> bool:
        self.seen.append(("approve", call_id, name, arguments, wait_seconds))
        return self.allow


def unit_settings(**env: str):
    return load_settings({"GEMINI_API_KEY": "k", "GEMINI_MAX_RETRIES": "0", **env})


async def invoke(tool, observer, arguments: str = "{}", call_id: str = "call_9"):
    context = ToolContext(
        context=TurnContext(observer),
        tool_name=tool.name,
        tool_call_id=call_id,
        tool_arguments=arguments,
    )
    return await tool.on_invoke_tool(context, arguments)


async def test_the_observer_sees_each_call_start_and_end_under_the_sdks_call_id():
    model = ScriptedModel(
        [
            ModelStep(output=[function_call("lookup_weather", {"city": "Oslo"}, call_id="c-1")]),
            streamed_reply("Sunny."),
        ]
    )
    observer = RecordingObserver()
    settings = unit_settings()
    backend = build_backend(settings, model, tools=[sample_tools.lookup_weather])
    stream = ReplyStream(backend, AsyncMock(), observer=observer)
    assert await stream.run([{"role": "user", "content": "Weather?"}]) == "Sunny."
    assert observer.seen == [
        ("started", "c-1", "lookup_weather", '{"city":"Oslo"}'),
        ("finished", "c-1", "Sunny in Oslo, 21 °C", None),
    ]
    assert model.last_call.input[-1] == {
        "call_id": "c-1",
        "output": "Sunny in Oslo, 21 °C",
        "type": "function_call_output",
    }
    # What the history keeps: the call and its result, then the answer.
    assert [item.get("type") for item in stream.items] == [
        "function_call",
        "function_call_output",
        "message",
    ]


async def test_a_turn_without_tools_keeps_no_items():
    model = ScriptedModel([streamed_reply("Just text.")])
    backend = build_backend(unit_settings(), model, tools=[sample_tools.lookup_weather])
    stream = ReplyStream(backend, AsyncMock())
    await stream.run([{"role": "user", "content": "Hi"}])
    assert stream.items == ()


async def test_a_tool_that_needs_approval_runs_only_when_allowed():
    settings = unit_settings()
    tool = guard(sample_tools.confirm_tool, settings)
    assert tool.needs_approval is False  # the SDK never interrupts the run to ask

    allowing = RecordingObserver(allow=True)
    assert await invoke(tool, allowing, '{"action": "launch"}') == "done: launch"
    assert [event[0] for event in allowing.seen] == ["approve", "started", "finished"]
    assert allowing.seen[0] == ("approve", "call_9", "confirm_tool", '{"action": "launch"}', 120.0)

    denying = RecordingObserver(allow=False)
    output = await invoke(tool, denying, '{"action": "launch"}')
    assert output == (
        "The user did not allow this call to confirm_tool; it did not run. "
        "Do not call it again unless the user asks to."
    )
    assert [event[0] for event in denying.seen] == ["approve", "finished"]
    assert denying.seen[1] == ("finished", "call_9", output, "Denied")


async def test_a_tool_named_in_tool_approval_asks_too():
    tool = guard(sample_tools.lookup_weather, unit_settings(TOOL_APPROVAL="lookup_weather"))
    observer = RecordingObserver(allow=False)
    assert (await invoke(tool, observer, '{"city": "Oslo"}')).startswith("The user did not allow")
    assert observer.seen[0][0] == "approve"


async def test_without_an_observer_a_tool_that_needs_approval_does_not_run():
    tool = guard(sample_tools.confirm_tool, unit_settings())
    assert (await invoke(tool, None, '{"action": "x"}')).startswith("The user did not allow")


async def test_a_stopped_call_is_reported_stopped_and_the_stop_goes_on():
    tool = guard(sample_tools.slow_tool, unit_settings())
    observer = RecordingObserver()
    task = asyncio.create_task(invoke(tool, observer, '{"seconds": 30}'))
    await observer.running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert observer.seen[-1] == ("finished", "call_9", "", "Stopped")


async def test_a_failure_formatter_of_the_tools_own_is_kept():
    @function_tool(failure_error_function=lambda ctx, error: f"custom: {error}")
    def fragile() -> str:
        """Fails."""
        raise ValueError("bent")

    observer = RecordingObserver()
    assert await invoke(guard(fragile, unit_settings()), observer) == "custom: bent"
    assert observer.seen[-1] == ("finished", "call_9", "custom: bent", None)


def test_results_of_every_kind_become_text():
    assert as_text("plain") == "plain"
    assert as_text({"type": "text", "text": "one"}) == "one"
    assert as_text([{"type": "text", "text": "a"}, {"type": "image", "image_url": "u"}]) == (
        "a\n[image: not shown to the model]"
    )
    assert as_text({"temperature": 21}) == '{"temperature": 21}'
    assert as_text(21) == "21"
    assert shortened("abcdef", 100) == "abcdef"


def test_orphan_calls_and_outputs_are_never_kept():
    call = {"type": "function_call", "call_id": "a", "name": "t", "arguments": "{}"}
    orphan = {"type": "function_call", "call_id": "b", "name": "t", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "a", "output": "r"}
    stray = {"type": "function_call_output", "call_id": "z", "output": "r"}
    reasoning = {"type": "reasoning", "id": "r", "summary": []}
    assert turn_items([reasoning, call, orphan, output, stray], "partial") == (
        call,
        output,
        {"role": "assistant", "content": "partial"},
    )
    assert turn_items([orphan]) == ()
    assert stored_items("not a list") == ()
    assert stored_items([call, "junk"]) == ()
    assert stored_items([call, output, {"type": "item_reference", "id": "x"}]) == ()
    assert stored_items([{**call, "arguments": {"not": "text"}}, output]) == ()
    assert stored_items([call, output, {"role": "assistant", "content": "ok"}]) == (
        call,
        output,
        {"role": "assistant", "content": "ok"},
    )


def test_the_budget_drops_whole_tool_turns_only():
    call = {"type": "function_call", "call_id": "a", "name": "t", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "a", "output": "r" * 8000}
    history = History(token_budget=1200)
    history.record("old", "old answer", "m1", (), (call, output))
    history.record("recent", "recent answer", "m2")
    assert history.request_items("new") == [
        {"role": "user", "content": "recent"},
        {"role": "assistant", "content": "recent answer"},
        {"role": "user", "content": "new"},
    ]
    history.token_budget = 5000
    assert history.request_items("new")[:3] == [{"role": "user", "content": "old"}, call, output]


class FakeServers:
    """McpServers as part C2 gives them: tools of the servers that are up, a notice for each
    one that is not."""

    def __init__(self, tools, notices) -> None:
        self.listed = (tools, notices)
        self.asked = 0

    async def tools(self):
        self.asked += 1
        return self.listed

    async def close(self) -> None:
        pass


async def test_mcp_tools_join_each_message_behind_the_guard_and_notices_show(chainlit_context):
    import chainlit as cl

    from gemini_chat.chat import ChatController

    @function_tool
    def server_lookup(key: str) -> str:
        """A tool of an MCP server."""
        raise RuntimeError("server says no")

    model = ScriptedModel(
        [
            ModelStep(output=[function_call("server_lookup", {"key": "k"}, call_id="m-1")]),
            streamed_reply("Done."),
        ]
    )
    settings = unit_settings()
    servers = FakeServers([server_lookup], ["The MCP server “files” did not start."])
    backend = dataclasses.replace(build_backend(settings, model), mcp=servers)
    controller = ChatController(settings, backend)
    await controller.start()
    await controller.handle(cl.Message(content="Look it up"))
    assert servers.asked == 1
    sent = [call.args[0] for call in chainlit_context.emitter.send_step.await_args_list]
    notice = next(step for step in sent if "did not start" in step["output"])
    assert notice["isError"] and notice["metadata"]["kind"] == "notice"
    assert [tool.name for tool in model.last_call.tools] == ["server_lookup"]
    # The server's tool went through the guard: its error is the guard's, not the SDK's.
    assert model.last_call.input[-1]["output"] == (
        "Error: server_lookup failed: RuntimeError: server says no"
    )
    assert sent[-1]["output"] == "Done."


# --- what a person sees, in Chromium ------------------------------------------------------------


@pytest.mark.browser
async def test_a_tool_turn_reads_as_one_answer_with_a_thinking_step_per_round(
    browser, tools_app, gemini
):
    page = await open_chat(browser, tools_app)
    gemini.script(
        tool_call_reply(
            weather("Oslo", "call_1"),
            shape="openai",
            text="Let me look.",
            thoughts=["Need the weather."],
            thought_shape="reasoning_content",
        ),
        Reply("It is sunny.", thoughts=["The tool says sunny."]),
    )
    await type_and_send(page, "Weather in Oslo?")
    answer = last_step(page, "assistant_message")
    # Both rounds' text in the one answer, each its own paragraph.
    await expect(answer.locator('[role="article"]')).to_have_text(["Let me look.", "It is sunny."])
    thinking = page.locator('.step[data-step-type="llm"]')
    await expect(thinking).to_have_count(2)
    await expect(thinking.locator("button").first).to_have_text(re.compile(r"Thought for \d+ s"))
    await expect(thinking.nth(1).locator("button").first).to_have_text(
        re.compile(r"Thought for \d+ s")
    )
    await thinking.nth(1).locator("button").first.click()
    await expect(thinking.nth(1).get_by_text("The tool says sunny.")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "tool-turn-answer.png")

    # A model that will not stop calling tools: a notice, and the chat goes on.
    gemini.script(
        *(tool_call_reply(weather(city, f"call_{city}"), shape="openai") for city in "ABCD"),
        Reply("Fine."),
    )
    await type_and_send(page, "Weather everywhere")
    await expect(
        page.get_by_text("stopped after 3 rounds of tool calls", exact=False)
    ).to_be_visible()
    await type_and_send(page, "OK")
    await expect(last_step(page, "assistant_message")).to_have_text("Fine.")

    # Stop while a tool runs: one mark, nothing more asked of Gemini.
    gemini.script(tool_call_reply(ToolCall("slow_tool", {"seconds": 1.5}, id="s1"), shape="openai"))
    before = len(gemini.requests)
    await type_and_send(page, "Slowly")
    request = (await gemini.arrived(before + 1))[before]
    await asyncio.to_thread(request.finished.wait, 10)
    await page.locator("#stop-button").click()
    await expect(page.get_by_text("Stopped before any answer.")).to_be_visible()
    await page.screenshot(path=ARTIFACTS / "tool-turn-stopped.png")
    assert len(gemini.requests) == before + 1


async def test_a_tab_that_followed_a_tool_turn_sends_its_items(chat, gemini, tools_app):
    words = [f"w{i} " for i in range(30)]
    gemini.script(
        tool_call_reply(weather("Oslo", "call_1"), shape="openai"),
        Reply(chunks=words, delay=0.1),
        Reply("Next."),
    )
    chat.mark()
    await chat.send("Weather in Oslo?")
    thread = await chat.chat_thread()
    await chat.wait_for(lambda: any(m.tokens for m in chat.assistant_messages()), what="text")
    second = ChatClient(tools_app.url, headers=dict(chat.headers))
    await second.connect(thread_id=thread)
    await second.wait_for(
        lambda: any(m.content == "".join(words) for m in second.assistant_messages()),
        timeout=20,
        what="the whole answer in the second tab",
    )
    second.mark()
    await second.send("And next?")
    await second.wait_idle()
    follow_up, last = (await gemini.arrived(3))[1:]
    assert last.messages == [
        *follow_up.messages,
        {"role": "assistant", "content": "".join(words)},
        {"role": "user", "content": "And next?"},
    ]
    await second.disconnect()


async def test_a_chat_that_cannot_show_the_call_does_not_fail_it():
    class Broken(RecordingObserver):
        async def started(self, call_id, name, arguments):
            raise ConnectionError("the tab is gone")

        async def approve(self, call_id, name, arguments, wait_seconds):
            raise ConnectionError("the tab is gone")

    observer = Broken()
    weather_tool = guard(sample_tools.lookup_weather, unit_settings())
    assert await invoke(weather_tool, observer, '{"city": "Oslo"}') == "Sunny in Oslo, 21 °C"
    assert observer.seen == [("finished", "call_9", "Sunny in Oslo, 21 °C", None)]
    # An approval that could not be asked is a Deny.
    confirm = guard(sample_tools.confirm_tool, unit_settings())
    assert (await invoke(confirm, observer, '{"action": "x"}')).startswith("The user did not")


async def test_stop_while_the_user_is_asked_ends_the_call_as_stopped():
    class Waiting(RecordingObserver):
        async def approve(self, call_id, name, arguments, wait_seconds):
            self.running.set()
            await asyncio.Event().wait()  # nobody answers

    observer = Waiting()
    task = asyncio.create_task(
        invoke(guard(sample_tools.confirm_tool, unit_settings()), observer, '{"action": "x"}')
    )
    await observer.running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert observer.seen == [("finished", "call_9", "", "Stopped")]
