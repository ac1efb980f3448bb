"""Gemini's tool-call dialect on the wire: the agent (the app's GeminiChatModel, through the
Agents SDK's Runner, against the fake Gemini) runs every call of each shape Gemini streams, and
sends the calls, their results and their thought signatures back exactly; tool schemas reach
Gemini in the form it accepts."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from agents import Agent, FunctionTool, RunConfig, Runner, function_tool
from pydantic import BaseModel, Field

from gemini_chat.config import load_settings
from gemini_chat.llm import StreamReport, build_client, build_model, current_report
from gemini_chat.toolcalls import gemini_schema, gemini_tools
from tests.fake_gemini import (
    DEFAULT_KEY,
    MISSING_SIGNATURE,
    REFUSED_SCHEMA_KEYWORDS,
    TOOL_CALL_SHAPES,
    UNPAIRED_RESULTS,
    FakeGemini,
    Reply,
    ToolCall,
    recording,
    tool_call_deltas,
    tool_call_reply,
)

MODEL = "gemini-3.8-flash"


class Ran:
    """The tools of one test, and each call they ran, with its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

        @function_tool
        def lookup_weather(city: str) -> str:
            """The weather in a city."""
            self.calls.append(("lookup_weather", {"city": city}))
            return f"Sunny in {city}"

        @function_tool
        def add(a: int, b: int) -> str:
            """The sum of two numbers."""
            self.calls.append(("add", {"a": a, "b": b}))
            return str(a + b)

        self.tools = [lookup_weather, add]


THREE = [
    ToolCall("lookup_weather", {"city": "Oslo"}, signature="c2lnLW9zbG8="),
    ToolCall("lookup_weather", {"city": "Lima, Perú"}, signature="c2lnLWxpbWE="),
    ToolCall("add", {"a": 2, "b": 40}, signature="c2lnLWFkZA=="),
]
CALLS = {1: THREE[:1], 3: THREE}


async def run(gemini: FakeGemini, tools: list[FunctionTool], items) -> object:
    """One streamed run of the app's model against the fake, as streaming.py runs it."""
    settings = load_settings(
        {"GEMINI_API_KEY": DEFAULT_KEY, "GEMINI_BASE_URL": gemini.base_url, "GEMINI_MODEL": MODEL}
    )
    client = build_client(settings)
    agent = Agent(name="a", model=build_model(settings, client), tools=tools)
    token = current_report.set(StreamReport())
    try:
        result = Runner.run_streamed(agent, items, run_config=RunConfig(tracing_disabled=True))
    finally:
        current_report.reset(token)
    try:
        async for _ in result.stream_events():
            pass
    finally:
        await client.close()
    return result


def assert_sent_back(request, calls: list[ToolCall], ran: Ran) -> None:
    """``request`` carries ``calls`` (distinct non-empty ids, names, arguments, signatures),
    each followed by its result under the same id."""
    sent = request.tool_calls
    assert [(c.name, c.arguments, c.signature) for c in sent] == [
        (c.name, c.arguments, c.signature) for c in calls
    ]
    ids = [c.id for c in sent]
    assert all(ids) and len(set(ids)) == len(ids)
    results = request.tool_results
    assert [r.tool_call_id for r in results] == ids
    expected = [
        f"Sunny in {a['city']}" if n == "lookup_weather" else str(a["a"] + a["b"])
        for n, a in ((c.name, c.arguments) for c in calls)
    ]
    assert [r.output for r in results] == expected


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("shape", TOOL_CALL_SHAPES)
async def test_each_call_of_every_shape_runs_once_and_goes_back_with_its_id_and_signature(
    gemini, shape, count
):
    calls = CALLS[count]
    ran = Ran()
    gemini.script(tool_call_reply(*calls, shape=shape), Reply(text="Done."))
    result = await run(gemini, ran.tools, "What is the weather?")
    assert result.final_output == "Done."
    # Parallel calls run concurrently, in an order the event loop picks: each ran once.
    assert sorted(ran.calls, key=repr) == sorted(((c.name, c.arguments) for c in calls), key=repr)
    first, follow_up = gemini.requests
    assert first.tool_calls == []
    assert_sent_back(follow_up, calls, ran)


@pytest.mark.parametrize("shape", TOOL_CALL_SHAPES)
async def test_a_later_turn_carries_the_earlier_turns_calls_and_signatures_intact(gemini, shape):
    ran = Ran()
    gemini.script(tool_call_reply(*THREE, shape=shape), Reply(text="Done."), Reply(text="Bye."))
    result = await run(gemini, ran.tools, "What is the weather?")
    history = [*result.to_input_list(), {"role": "user", "content": "Thanks"}]
    again = await run(gemini, ran.tools, history)
    assert again.final_output == "Bye."
    _, follow_up, second_turn = gemini.requests
    assert second_turn.tool_calls == follow_up.tool_calls
    assert second_turn.tool_results == follow_up.tool_results
    assert second_turn.conversation[-1] == ("user", "Thanks")


async def test_only_the_first_of_parallel_calls_may_carry_a_signature(gemini):
    calls = [THREE[0], ToolCall("add", {"a": 1, "b": 1})]
    ran = Ran()
    gemini.script(tool_call_reply(*calls, shape="gemini"), Reply(text="Done."))
    await run(gemini, ran.tools, "Go")
    assert [c.signature for c in gemini.requests[1].tool_calls] == ["c2lnLW9zbG8=", None]


async def test_text_before_the_calls_streams_and_stays_in_the_history(gemini):
    ran = Ran()
    gemini.script(tool_call_reply(*THREE, shape="index_zero", text="Let me look."), Reply())
    await run(gemini, ran.tools, "Go")
    follow_up = gemini.requests[1]
    assistant = next(m for m in follow_up.messages if m["role"] == "assistant")
    assert assistant["content"] == "Let me look."
    assert len(ran.calls) == 3


# --- the fake refuses what Gemini refuses -----------------------------------------------------


def test_the_fakes_gemini_shape_is_the_call_of_a_real_recording():
    body = json.loads(recording("pro_toolcall_nonstream").body)
    real = body["choices"][0]["message"]["tool_calls"]
    fake = tool_call_deltas([ToolCall("get_current_time", {})], "gemini")[0]["tool_calls"]
    assert fake == real
    assert [list(call) for call in fake] == [list(call) for call in real]
    assert list(fake[0]["function"]) == list(real[0]["function"])


async def _post(gemini: FakeGemini, body: dict) -> tuple[int, object]:
    import aiohttp

    headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}
    async with aiohttp.ClientSession() as session:
        url = f"{gemini.base_url}chat/completions"
        async with session.post(url, json={"model": MODEL, **body}, headers=headers) as response:
            text = await response.text()
            return response.status, text if response.status == 200 else json.loads(text)


def _tool(parameters: dict) -> dict:
    return {"type": "function", "function": {"name": "t", "parameters": parameters}}


@pytest.mark.parametrize("keyword", REFUSED_SCHEMA_KEYWORDS)
async def test_the_fake_refuses_a_schema_keyword_gemini_does_not_know(gemini, keyword):
    value = {"$ref": "#/$defs/X", "$defs": {"X": {"type": "string"}}}.get(keyword, "x")
    nested = {"type": "object", "properties": {"default": {"type": "string", keyword: value}}}
    status, body = await _post(
        gemini, {"messages": [{"role": "user", "content": "hi"}], "tools": [_tool(nested)]}
    )
    assert status == 400
    error = body[0]["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["message"] == (
        f'Invalid JSON payload received. Unknown name "{keyword}" at '
        "'tools[0].function_declarations[0].parameters.properties[0].value': Cannot find field."
    )
    # A property named like a keyword is a name, not the keyword.
    named = {"type": "object", "properties": {keyword: {"type": "string"}}}
    gemini.script(Reply(text="ok"))
    status, _ = await _post(
        gemini, {"messages": [{"role": "user", "content": "hi"}], "tools": [_tool(named)]}
    )
    assert status == 200


def _history(signature: str | None, call_id: str = "call_1", result_id: str = "call_1") -> list:
    call: dict = {
        "id": call_id,
        "type": "function",
        "function": {"name": "lookup_weather", "arguments": '{"city": "Oslo"}'},
    }
    if signature is not None:
        call["extra_content"] = {"google": {"thought_signature": signature}}
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": result_id, "content": "Sunny"},
    ]


async def test_the_fake_refuses_a_call_sent_back_without_the_signature_it_came_with(gemini):
    gemini.script(tool_call_reply(THREE[0]))
    status, _ = await _post(gemini, {"messages": [{"role": "user", "content": "Weather?"}]})
    assert status == 200
    status, body = await _post(gemini, {"messages": _history(None)})
    assert status == 400
    assert body[0]["error"]["message"] == MISSING_SIGNATURE.format(
        name="lookup_weather", position=2
    )
    status, body = await _post(gemini, {"messages": _history("b3RoZXI=")})
    assert (status, body[0]["error"]["message"]) == (400, "Corrupted thought signature.")
    gemini.script(Reply(text="Sunny."))
    status, _ = await _post(gemini, {"messages": _history(THREE[0].signature)})
    assert status == 200
    # As Gemini, the fake checks the current turn only: after a new user message the old
    # call's signature is no longer required.
    gemini.script(Reply(text="Bye."))
    later = [*_history(None), {"role": "assistant", "content": "Sunny."}]
    status, _ = await _post(gemini, {"messages": [*later, {"role": "user", "content": "Bye"}]})
    assert status == 200


async def test_the_fake_refuses_results_that_do_not_answer_the_calls_one_for_one(gemini):
    status, body = await _post(gemini, {"messages": _history(None, result_id="call_9")})
    assert (status, body[0]["error"]["message"]) == (400, UNPAIRED_RESULTS)
    without_result = [*_history(None)[:-1], {"role": "user", "content": "And?"}]
    status, body = await _post(gemini, {"messages": without_result})
    assert (status, body[0]["error"]["message"]) == (400, UNPAIRED_RESULTS)


# --- schemas ------------------------------------------------------------------------------------


class Place(BaseModel):
    city: str = Field(description="The city's name", examples=["Oslo"])
    country: str = "NO"


class Trip(BaseModel):
    start: Place
    stops: list[Place] = Field(default_factory=list)
    mode: Literal["train"] = "train"
    speed: Literal["slow", "fast"] = Field("slow", examples=["fast"])
    nights: Annotated[int, Field(gt=0, le=30)] = 1
    note: str | None = None


def _keywords(schema, found=None) -> set[str]:
    """Every keyword used in ``schema`` (property names are not keywords)."""
    found = set() if found is None else found
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.add(key)
            if key == "properties":
                for sub in value.values():
                    _keywords(sub, found)
            else:
                _keywords(value, found)
    elif isinstance(schema, list):
        for item in schema:
            _keywords(item, found)
    return found


@pytest.mark.parametrize("strict", [True, False])
async def test_a_tool_with_nested_models_reaches_gemini_in_a_form_it_takes(gemini, strict):
    planned: list[Trip] = []

    @function_tool(strict_mode=strict)
    def plan_trip(trip: Trip) -> str:
        """Plan a trip."""
        planned.append(trip)
        return "planned"

    refused = set(REFUSED_SCHEMA_KEYWORDS) & _keywords(plan_trip.params_json_schema)
    assert refused  # the schema as the SDK makes it would be refused
    arguments = {
        "trip": {
            "start": {"city": "Oslo", "country": "NO"},
            "stops": [{"city": "Bergen", "country": "NO"}],
            "mode": "train",
            "speed": "fast",
            "nights": 3,
            "note": None,
        }
    }
    gemini.script(tool_call_reply(ToolCall("plan_trip", arguments)), Reply(text="Booked."))
    result = await run(gemini, [plan_trip], "Plan it")
    assert result.final_output == "Booked."
    assert planned == [Trip.model_validate(arguments["trip"])]
    sent = gemini.requests[0].tool_schemas["plan_trip"]
    assert not set(REFUSED_SCHEMA_KEYWORDS) & _keywords(sent)
    trip = sent["properties"]["trip"]
    place = trip["properties"]["start"]
    assert place["properties"]["city"] == {
        "description": "The city's name",
        "title": "City",
        "type": "string",
    }
    assert trip["properties"]["stops"]["items"]["properties"] == place["properties"]
    assert trip["properties"]["mode"]["enum"] == ["train"]
    assert trip["properties"]["speed"]["enum"] == ["slow", "fast"]
    assert trip["properties"]["nights"]["minimum"] == 0
    assert trip["properties"]["nights"]["maximum"] == 30
    assert sorted(place["required"]) == (["city", "country"] if strict else ["city"])


def test_schema_cleaning_inlines_references_and_rewrites_what_gemini_refuses():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"child": {"$ref": "#/$defs/Node"}, "v": {"const": 3}},
            }
        },
        "properties": {
            "root": {"$ref": "#/$defs/Node", "description": "The root"},
            "tag": {"type": ["string", "null"], "default": None},
            "either": {"type": ["string", "integer"]},
            "default": {"type": "string", "examples": ["a"]},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["root"],
    }
    assert gemini_schema(schema) == {
        "type": "object",
        "properties": {
            "root": {
                "type": "object",
                "properties": {
                    # A model that contains itself: inlined once, then any object.
                    "child": {"type": "object"},
                    "v": {"enum": [3], "type": "integer"},
                },
                "description": "The root",
            },
            "tag": {"type": "string", "nullable": True},
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "default": {"type": "string"},
            "map": {"type": "object"},
        },
        "required": ["root"],
    }


def test_cleaned_tools_are_computed_once_per_distinct_list():
    tools = [_tool({"type": "object", "properties": {"x": {"type": "string", "default": "a"}}})]
    first = gemini_tools(tools)
    assert first[0]["function"]["parameters"]["properties"]["x"] == {"type": "string"}
    assert tools[0]["function"]["parameters"]["properties"]["x"]["default"] == "a"  # untouched
    # The SDK sends a new list each request: an equal one gets the same cleaned list ...
    assert gemini_tools(json.loads(json.dumps(tools))) is first
    # ... and a tool of the same name whose schema changed (an MCP server's) is cleaned anew.
    changed = json.loads(json.dumps(tools))
    changed[0]["function"]["parameters"]["properties"]["x"] = {"const": "b"}
    again = gemini_tools(changed)
    assert again[0]["function"]["parameters"]["properties"]["x"] == {
        "enum": ["b"],
        "type": "string",
    }


async def test_calls_gemini_ends_with_stop_and_a_signature_sent_on_its_own_still_go_back_whole(
    gemini,
):
    # Gemini 3 has been seen to end a turn of calls with finish_reason "stop", and to send a
    # call's signature in a delta of its own, after the call, without index, id or name.
    deltas = []
    for call in THREE:
        deltas += tool_call_deltas([ToolCall(call.name, call.arguments)], "gemini")
        google = {"google": {"thought_signature": call.signature}}
        deltas.append({"tool_calls": [{"extra_content": google}]})
    ran = Ran()
    gemini.script(Reply(raw=deltas, finish_reason="stop", calls=THREE), Reply(text="Done."))
    await run(gemini, ran.tools, "Go")
    assert sorted(ran.calls, key=repr) == sorted(((c.name, c.arguments) for c in THREE), key=repr)
    assert_sent_back(gemini.requests[1], THREE, ran)


async def test_a_tool_with_a_hand_written_schema_as_mcp_servers_send_reaches_gemini_cleaned(gemini):
    # An MCP server's inputSchema becomes a FunctionTool's schema as it is (not strict).
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "$defs": {"Unit": {"type": "string", "enum": ["c", "f"], "default": "c"}},
        "properties": {
            "city": {"type": "string", "examples": ["Oslo"]},
            "unit": {"$ref": "#/$defs/Unit"},
            "days": {"type": ["integer", "null"], "default": None},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    original = json.loads(json.dumps(schema))
    received: list[str] = []

    async def invoke(context, arguments: str) -> str:
        received.append(arguments)
        return "cold"

    forecast = FunctionTool(
        name="forecast",
        description="A forecast.",
        params_json_schema=schema,
        on_invoke_tool=invoke,
        strict_json_schema=False,
    )
    call = ToolCall("forecast", {"city": "Oslo", "unit": "f"}, signature="c2ln")
    gemini.script(tool_call_reply(call, shape="split"), Reply(text="Cold."))
    result = await run(gemini, [forecast], "Forecast?")
    assert result.final_output == "Cold."
    assert [json.loads(a) for a in received] == [{"city": "Oslo", "unit": "f"}]
    assert gemini.requests[0].tool_schemas["forecast"] == {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "days": {"type": "integer", "nullable": True},
        },
        "required": ["city"],
    }
    assert forecast.params_json_schema == original  # the tool's own schema is left alone
