"""Contracts with the internals the app relies on.

gemini_chat patches or subclasses private parts of its dependencies: nest_asyncio's changes to
asyncio and Chainlit's constructor sleeps (runtime.py), openai's chunk parsing and request
transform (llm.py), openai-agents' ``_fetch_response`` (llm.py) and its reading of
``reasoning_content`` (thoughts.py), Chainlit's SQLAlchemy data layer
(storage.py) and its feedback routes (ownership.py). Each test here names one of them and fails
when an upgrade of Chainlit, openai, openai-agents, nest_asyncio or Python moves it, instead of
the app silently losing a fix or its speed. pyproject.toml bounds those packages to the releases
these tests ran against. What framework.py, live.py, logs.py and auth.py rely on in Chainlit's
server is checked in test_framework_contracts.py.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx2
import openai
import pytest
from agents import Agent, OpenAIChatCompletionsModel, RunConfig, Runner
from openai.resources.chat import AsyncChat, AsyncCompletions
from openai.types.chat import ChatCompletionChunk

from gemini_chat import runtime
from gemini_chat.llm import (
    GeminiChatModel,
    GeminiClient,
    StreamReport,
    _PlainMessagesCompletions,
    current_report,
)
from tests.app_process import ROOT, AppServer, app_directory, free_port, wait_until_serving
from tests.conftest import guarded_env

# --- asyncio as Chainlit's CLI leaves it (runtime.restore_stock_asyncio) ------------------------

# Prints, as JSON, every function and class asyncio's modules hold and how the default policy and
# loop classes resolve each attribute: what nest_asyncio changes, named by module, qualified name
# and source line, so two processes can be compared.
ASYNCIO_STATE = r"""
import asyncio, asyncio.base_events, asyncio.events, asyncio.futures, asyncio.runners
import asyncio.tasks, inspect, json, sys, types

def describe(value):
    if callable(value) or isinstance(value, (staticmethod, classmethod)):
        code = getattr(value, "__code__", None)
        where = f"@{code.co_filename}:{code.co_firstlineno}" if code else ""
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}{where}"
    return type(value).__name__

def state():
    policy_class = type(asyncio.events.get_event_loop_policy())
    loop = asyncio.events.new_event_loop()
    loop_class = type(loop)
    loop.close()
    seen = {}
    modules = (asyncio, asyncio.base_events, asyncio.events, asyncio.futures, asyncio.runners,
               asyncio.tasks)
    for module in modules:
        for name, value in vars(module).items():
            if callable(value) or name.startswith("_nest"):
                seen[f"{module.__name__}.{name}"] = describe(value)
    for cls in (policy_class, loop_class):
        for name in dir(cls):
            seen[f"{cls.__qualname__}.{name}"] = describe(inspect.getattr_static(cls, name))
    return seen

mode = sys.argv[1]
if mode != "fresh":
    import chainlit.cli  # applies nest_asyncio on import, as `chainlit run` does
if mode == "restored":
    from gemini_chat.runtime import restore_stock_asyncio
    assert restore_stock_asyncio()
print(json.dumps(state()))
"""


def _asyncio_state(mode: str, cwd: Path) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", ASYNCIO_STATE, mode],
        cwd=cwd,  # importing chainlit writes .chainlit/ and .files/ into the working directory
        env=guarded_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    return [
        f"{key}: {expected.get(key, '<absent>')} -> {actual.get(key, '<absent>')}"
        for key in sorted(expected.keys() | actual.keys())
        if expected.get(key) != actual.get(key)
    ]


def test_undoing_nest_asyncio_gives_back_exactly_the_asyncio_of_a_fresh_interpreter(tmp_path):
    fresh = _asyncio_state("fresh", tmp_path)
    patched = _asyncio_state("patched", tmp_path)
    restored = _asyncio_state("restored", tmp_path)
    # Chainlit's CLI still applies nest_asyncio (otherwise there is nothing left to undo) ...
    assert any("nest_asyncio" in line for line in _differences(fresh, patched))
    # ... and on this Python every function, class and loop method is the stock one again.
    assert _differences(fresh, restored) == []


LEAVE_PATCHED = r"""
import asyncio, asyncio.events, logging, sys
logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="%(levelname)s %(message)s")
import chainlit.cli  # applies nest_asyncio
from gemini_chat import runtime
python_task = asyncio.Task
del asyncio.events._c_get_event_loop  # as if a new Python kept it elsewhere
runtime.tune_runtime()
print("still patched:", asyncio.Task is python_task and getattr(asyncio, "_nest_patched", False))
"""


def test_an_asyncio_the_runtime_does_not_know_stays_fully_patched_and_is_reported(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LEAVE_PATCHED],
        cwd=tmp_path,
        env=guarded_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR Running on nest_asyncio's slower event loop" in result.stdout
    assert "_c_get_event_loop is missing" in result.stdout
    assert "still patched: True" in result.stdout  # nothing half-undone


# --- the running server -------------------------------------------------------------------------

# Loaded by `chainlit run` instead of chatbot.py: the app itself, plus a report written from inside
# the server's running loop once it has started.
PROBE = r'''
"""The real app, and a report of the runtime the running server has."""

import asyncio, inspect, json, os, sys, types

import _asyncio
import chainlit as cl
from chainlit.server import sio

import chatbot  # noqa: F401  the app: settings, data layer, handlers, runtime tuning
from gemini_chat import runtime


def nest_asyncio_leftovers():
    python_classes = {id(asyncio.tasks._PyTask), id(asyncio.futures._PyFuture)}
    found = []
    for name, module in list(sys.modules.items()):
        if module is None or name == "nest_asyncio" or name.split(".")[0] == "asyncio":
            continue
        for key, value in list(getattr(module, "__dict__", {}).items()):
            nest = type(value) is types.FunctionType and value.__module__ == "nest_asyncio"
            if nest or id(value) in python_classes:
                found.append(f"{name}.{key}")
    return found


@cl.on_app_startup
async def report_runtime():
    loop = asyncio.get_running_loop()
    stop = inspect.unwrap(sio.handlers["/"]["stop"])  # under logs.py's request-id wrapper
    report = {
        "python": sys.version.split()[0],
        "task is C": type(asyncio.current_task()) is _asyncio.Task,
        "future is C": type(loop.create_future()) is _asyncio.Future,
        "stock _run_once": type(loop)._run_once is asyncio.base_events.BaseEventLoop._run_once,
        "nest_asyncio flags": [hasattr(asyncio, "_nest_patched"), hasattr(loop, "_nest_patched")],
        "nest_asyncio leftovers": nest_asyncio_leftovers(),
        # By module path: chainlit re-exports its `step` decorator over the submodule's name.
        "Message sleeps": sys.modules["chainlit.message"].time is not runtime.NO_SLEEP,
        "Step sleeps": sys.modules["chainlit.step"].time is not runtime.NO_SLEEP,
        "stop handler": f"{stop.__module__}.{stop.__qualname__}",
    }
    with open(os.environ["RUNTIME_REPORT"], "w") as file:
        json.dump(report, file)
'''


@pytest.fixture(scope="module")
def runtime_report() -> dict:
    """What the runtime is inside a real `chainlit run` of the app, read once it serves."""
    directory = app_directory()
    (directory / "runtime_probe.py").write_text(PROBE)
    report_path = directory / "runtime.json"
    env = guarded_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{directory}/chats.db", RUNTIME_REPORT=str(report_path)
    )
    port = ("--port", str(free_port()))
    log_path = directory / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "chainlit", "run", "runtime_probe.py", "--headless", *port],
            cwd=directory,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = AppServer(f"http://127.0.0.1:{port[1]}", process, log_path, directory)
    try:
        wait_until_serving(server)  # the lifespan (and the report) completes before serving
        # Chainlit logs an exception in on_app_startup and serves anyway.
        assert report_path.exists(), f"no report:\n{server.log()}"
        report = json.loads(report_path.read_text())
        report["log"] = server.log()
    finally:
        server.stop()
    return report


def test_the_started_app_runs_on_asyncios_c_tasks_and_stock_loop(runtime_report):
    assert runtime_report["python"] == sys.version.split()[0]
    assert runtime_report["task is C"]
    assert runtime_report["future is C"]
    assert runtime_report["stock _run_once"]
    assert runtime_report["nest_asyncio flags"] == [False, False]
    assert runtime_report["nest_asyncio leftovers"] == []
    assert "nest_asyncio's slower event loop" not in runtime_report["log"]


def test_the_started_app_builds_messages_and_steps_without_sleeping(runtime_report):
    assert not runtime_report["Message sleeps"]
    assert not runtime_report["Step sleeps"]


def test_the_started_app_stops_with_its_own_handler(runtime_report):
    assert runtime_report["stop handler"] == "gemini_chat.framework.stop_without_notice"


# --- Chainlit's constructor sleeps (runtime.remove_constructor_sleeps) ---------------------------


def test_chainlit_messages_and_steps_sleep_through_their_modules_time(
    chainlit_context, monkeypatch
):
    """What remove_constructor_sleeps replaces: each constructor's ``time.sleep`` call, looked up
    on the ``time`` name of its own module."""
    import chainlit as cl  # imports chainlit.message and chainlit.step

    slept: list[tuple[str, float]] = []
    for name in runtime.SLEEPING_MODULES:
        recorder = SimpleNamespace(sleep=lambda seconds, name=name: slept.append((name, seconds)))
        monkeypatch.setattr(sys.modules[name], "time", recorder)
    cl.Message(content="hi")
    cl.Step(name="a step")
    assert slept == [("chainlit.message", 0.001), ("chainlit.step", 0.001)]


def test_a_chainlit_without_the_time_import_is_reported_not_patched(monkeypatch, caplog):
    import chainlit.message

    monkeypatch.delattr(chainlit.message, "time")
    # Only the sleeps: the collector and asyncio of the test process stay as they are.
    monkeypatch.setattr(runtime, "tune_garbage_collector", lambda: None)
    monkeypatch.setattr(runtime, "restore_stock_asyncio", lambda: False)
    with caplog.at_level(logging.ERROR, logger="gemini_chat"):
        runtime.tune_runtime()
    assert not hasattr(chainlit.message, "time")  # not invented
    assert "chainlit.message no longer imports the time module" in caplog.text


# --- openai: chunk parsing and request transform (llm.GeminiClient) ------------------------------

# Chunks of real Gemini streams, verbatim (../shared/gemini-recordings: lite_stream 1 and 5,
# thoughts_stream 1 and 4, empty_stop, g38_chunk).
GEMINI_CHUNKS = [
    '{"choices":[{"delta":{"content":"AI","role":"assistant"},"index":0}],"created":1758435793,"id":"0ZnPaL3SD4jmz7IP8Jzo0Ag","model":"gemini-2.5-flash-lite","object":"chat.completion.chunk","usage":{"completion_tokens":1,"prompt_tokens":12,"total_tokens":13}}',
    '{"choices":[{"delta":{"content":"é cè)**: decisions\\n\\nYou could also use a slightly simpler version:\\n\\n**AI 学习数据，然后做决定。** (AI learns data, then makes decisions.)","role":"assistant"},"finish_reason":"stop","index":0}],"created":1758435793,"id":"0ZnPaL3SD4jmz7IP8Jzo0Ag","model":"gemini-2.5-flash-lite","object":"chat.completion.chunk","usage":{"completion_tokens":159,"prompt_tokens":12,"total_tokens":171}}',  # noqa: E501
    '{"choices":[{"delta":{"content":"<thought>**Defining the Greeting**\\n\\nI\'ve determined the input, \\"你好,\\" is a basic greeting.\\n\\n\\n","extra_content":{"google":{"thought":true}},"role":"assistant"},"index":0}],"created":1752319190,"id":"1URyaLjuGKiqmtkPj86KuAI","model":"gemini-2.5-flash","object":"chat.completion.chunk"}',  # noqa: E501
    '{"choices":[{"delta":{"content":"</thought>你好！有什么我可以帮助你的吗？","role":"assistant"},"finish_reason":"stop","index":0}],"created":1752319193,"id":"1URyaLjuGKiqmtkPj86KuAI","model":"gemini-2.5-flash","object":"chat.completion.chunk"}',
    '{"choices":[{"delta":{"role":"assistant"},"finish_reason":"stop","index":0}],"created":1784482218,"id":"qg","model":"gemini-2.5-flash","object":"chat.completion.chunk","usage":{"completion_tokens":0,"prompt_tokens":5051,"total_tokens":5051}}',
    '{"choices":[{"delta":{"content":"OK.","role":"assistant"},"index":0}],"created":1788373398,"id":"x","model":"gemini-3.8-flash","object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":3,"total_tokens":71}}',
]
BASE_URL = "http://127.0.0.1:9/v1beta/openai/"


def _sse(chunks: list[str]) -> bytes:
    return "".join(f"data: {chunk}\n\n" for chunk in [*chunks, "[DONE]"]).encode()


def _client(client_class: type, answer) -> openai.AsyncOpenAI:
    transport = httpx2.MockTransport(answer)
    return client_class(
        api_key="k", base_url=BASE_URL, http_client=httpx2.AsyncClient(transport=transport)
    )


def _streaming(chunks: list[str], sent: list[bytes] | None = None):
    def answer(request: httpx2.Request) -> httpx2.Response:
        if sent is not None:
            sent.append(request.content)
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, headers=headers, content=_sse(chunks))

    return answer


async def _stream(client: openai.AsyncOpenAI) -> list[ChatCompletionChunk]:
    stream = await client.chat.completions.create(
        model="gemini-3.8-flash", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    await client.close()
    return chunks


def _shape(value):
    """A model's data, the fields it was given and its classes, all the way down."""
    if isinstance(value, openai.BaseModel):
        declared = type(value).model_fields
        fields = {name: _shape(getattr(value, name)) for name in declared}
        extra = {name: _shape(item) for name, item in (value.model_extra or {}).items()}
        # Validation also counts extra keys as set, construction does not; dumps agree.
        given = sorted(value.model_fields_set & declared.keys())
        return (type(value).__name__, given, fields, extra)
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return (type(value).__name__, value)


def test_openais_hooks_the_client_overrides_are_still_there():
    # Every streamed chunk goes through the client's _process_response_data ...
    hook = inspect.signature(openai.AsyncOpenAI._process_response_data)
    assert [(p.name, p.kind) for p in hook.parameters.values()] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("data", inspect.Parameter.KEYWORD_ONLY),
        ("cast_to", inspect.Parameter.KEYWORD_ONLY),
        ("response", inspect.Parameter.KEYWORD_ONLY),
    ]
    # ... requests go through client.chat.completions.create(messages=..., extra_body=...) ...
    assert type(inspect.getattr_static(openai.AsyncOpenAI, "chat")) is functools.cached_property
    assert type(inspect.getattr_static(AsyncChat, "completions")) is functools.cached_property
    create = inspect.signature(AsyncCompletions.create).parameters
    for name in ("messages", "extra_body"):
        assert create[name].kind is inspect.Parameter.KEYWORD_ONLY
    # ... and the client's overrides are the ones in effect.
    client = GeminiClient(api_key="k", base_url=BASE_URL)
    assert type(client.chat.completions) is _PlainMessagesCompletions


async def test_gemini_chunks_take_the_fast_parse_and_read_exactly_as_openai_reads_them(
    monkeypatch,
):
    fast_parses: list[dict] = []
    validate = ChatCompletionChunk.model_validate

    def counted(data, *args, **kwargs):
        chunk = validate(data, *args, **kwargs)
        fast_parses.append(data)  # validated: no fall-back to openai's way
        return chunk

    monkeypatch.setattr(ChatCompletionChunk, "model_validate", counted)
    fast = await _stream(_client(GeminiClient, _streaming(GEMINI_CHUNKS)))
    assert len(fast_parses) == len(GEMINI_CHUNKS)
    fast_parses.clear()
    stock = await _stream(_client(openai.AsyncOpenAI, _streaming(GEMINI_CHUNKS)))
    assert fast_parses == []  # openai's own way: construct_type
    assert [_shape(chunk) for chunk in fast] == [_shape(chunk) for chunk in stock]
    assert [chunk.to_json() for chunk in fast] == [chunk.to_json() for chunk in stock]
    for unset in (False, True):
        dumps = [chunk.model_dump(exclude_unset=unset) for chunk in fast]
        assert dumps == [chunk.model_dump(exclude_unset=unset) for chunk in stock]


async def test_plain_messages_skip_openais_request_transform_and_send_the_same_bytes(monkeypatch):
    import openai.resources.chat.completions.completions as completions_module

    transformed: list = []
    transform = completions_module.async_maybe_transform

    async def spy(data, *args, **kwargs):
        transformed.append(list(data["messages"]))
        return await transform(data, *args, **kwargs)

    monkeypatch.setattr(completions_module, "async_maybe_transform", spy)
    fast_sent: list[bytes] = []
    stock_sent: list[bytes] = []
    await _stream(_client(GeminiClient, _streaming(GEMINI_CHUNKS[:1], fast_sent)))
    await _stream(_client(openai.AsyncOpenAI, _streaming(GEMINI_CHUNKS[:1], stock_sent)))
    assert transformed == [[], [{"role": "user", "content": "hi"}]]
    assert fast_sent == stock_sent


# --- openai-agents: the model's stream (llm.GeminiChatModel) -------------------------------------


async def test_the_agents_sdk_streams_through_fetch_response_where_the_model_observes_it():
    assert "stream" in inspect.signature(OpenAIChatCompletionsModel._fetch_response).parameters
    client = _client(GeminiClient, _streaming([GEMINI_CHUNKS[0], GEMINI_CHUNKS[1]]))
    agent = Agent(
        name="a", model=GeminiChatModel(model="gemini-2.5-flash-lite", openai_client=client)
    )
    report = StreamReport()
    token = current_report.set(report)
    try:
        result = Runner.run_streamed(agent, "hi", run_config=RunConfig(tracing_disabled=True))
        async for _ in result.stream_events():
            pass
    finally:
        current_report.reset(token)
        await client.close()
    assert report.chunks == 2
    assert report.finish_reason == "stop"
    assert "".join(report.received) == result.final_output


async def test_the_agents_sdk_streams_reasoning_content_set_on_a_delta_as_reasoning_events():
    """thoughts.move_inline_thought sets ``reasoning_content`` on a parsed delta (an extra field
    of openai's model); openai-agents' Chat Completions stream handler must read it there and
    stream it as ``response.reasoning_summary_text.delta``, which streaming.ReplyStream shows."""
    from gemini_chat.streaming import ANSWER_DELTA, THOUGHT_DELTA

    client = _client(GeminiClient, _streaming([GEMINI_CHUNKS[2], GEMINI_CHUNKS[3]]))
    agent = Agent(name="a", model=GeminiChatModel(model="gemini-2.5-flash", openai_client=client))
    report = StreamReport()
    token = current_report.set(report)
    kinds: dict[str, list[str]] = {THOUGHT_DELTA: [], ANSWER_DELTA: []}
    try:
        result = Runner.run_streamed(agent, "hi", run_config=RunConfig(tracing_disabled=True))
        async for event in result.stream_events():
            if event.type == "raw_response_event" and event.data.type in kinds:
                kinds[event.data.type].append(event.data.delta)
    finally:
        current_report.reset(token)
        await client.close()
    thought = json.loads(GEMINI_CHUNKS[2])["choices"][0]["delta"]["content"]
    assert kinds[THOUGHT_DELTA] == [thought.removeprefix("<thought>")]
    assert kinds[ANSWER_DELTA] == ["你好！有什么我可以帮助你的吗？"]
    assert report.thoughts == kinds[THOUGHT_DELTA]


# --- openai-agents and openai: tool calls (toolcalls.py) -----------------------------------------
# toolcalls.CallNumbering rewrites ``index`` and ``id`` of the parsed tool-call deltas because
# the SDK's stream handler tells calls apart by ``index`` alone and takes a call's id and thought
# signature from its deltas; the converter then sends the signature back in ``extra_content``.


def _tool_call_chunk(*calls: dict, finish: str | None = None) -> str:
    choice: dict = {"delta": {"role": "assistant", "tool_calls": list(calls)}, "index": 0}
    if finish:
        choice["finish_reason"] = finish
    return json.dumps(
        {
            "choices": [choice],
            "created": 1,
            "id": "c",
            "model": "gemini-3.8-flash",
            "object": "chat.completion.chunk",
        }
    )


def _call(index: int | None, call_id: str, name: str, arguments: str, signature: str = "") -> dict:
    call: dict = {"function": {"arguments": arguments, "name": name}, "id": call_id}
    if index is not None:
        call["index"] = index
    if signature:
        call["extra_content"] = {"google": {"thought_signature": signature}}
    return call


async def _streamed_calls(chunks: list[str], numbered: bool) -> list:
    """The function calls openai-agents makes of ``chunks`` (through the app's model, with or
    without the app's per-stream numbering of calls)."""
    from agents.models.chatcmpl_stream_handler import ChatCmplStreamHandler
    from openai.types.responses import Response

    client = _client(GeminiClient, _streaming(chunks))
    stream = await client.chat.completions.create(
        model="gemini-3.8-flash", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    if numbered:
        from gemini_chat.llm import _ObservedStream

        stream = _ObservedStream(stream, StreamReport())
    response = Response(
        id="r",
        created_at=0,
        model="gemini-3.8-flash",
        object="response",
        output=[],
        tool_choice="auto",
        tools=[],
        parallel_tool_calls=True,
    )
    output = []
    async for event in ChatCmplStreamHandler.handle_stream(
        response, stream, model="gemini-3.8-flash"
    ):
        if event.type == "response.completed":
            output = event.response.output
    await client.close()
    return [item for item in output if item.type == "function_call"]


async def test_the_agents_sdk_tells_streamed_tool_calls_apart_by_index_alone():
    same_index = [
        _tool_call_chunk(_call(0, "", "a", '{"x": 1}', "c2ln")),
        _tool_call_chunk(_call(0, "", "b", '{"y": 2}'), finish="tool_calls"),
    ]
    # Left as Gemini sent them, two calls with one index become one broken call without an id:
    merged = await _streamed_calls(same_index, numbered=False)
    assert [(c.name, c.arguments, c.call_id) for c in merged] == [("b", '{"x": 1}{"y": 2}', "")]
    # ... with distinct indexes and ids, two calls, each with its own signature in provider_data.
    distinct = [
        _tool_call_chunk(_call(0, "i1", "a", '{"x": 1}', "c2ln")),
        _tool_call_chunk(_call(1, "i2", "b", '{"y": 2}'), finish="tool_calls"),
    ]
    calls = await _streamed_calls(distinct, numbered=False)
    assert [(c.name, c.arguments, c.call_id) for c in calls] == [
        ("a", '{"x": 1}', "i1"),
        ("b", '{"y": 2}', "i2"),
    ]
    assert calls[0].provider_data["thought_signature"] == "c2ln"
    assert "thought_signature" not in calls[1].provider_data
    # The app's numbering on the stream turns the first case into the second.
    numbered = await _streamed_calls(same_index, numbered=True)
    assert [(c.name, c.arguments) for c in numbered] == [("a", '{"x": 1}'), ("b", '{"y": 2}')]
    assert all(c.call_id.startswith("call_") for c in numbered)
    assert numbered[0].provider_data["thought_signature"] == "c2ln"


def test_openai_reads_a_tool_call_delta_without_index_as_index_none_and_lets_it_be_set():
    from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

    lenient = GeminiClient(api_key="k", base_url=BASE_URL)._process_response_data(
        data=json.loads(_tool_call_chunk(_call(None, "", "a", "{}", "c2ln"))),
        cast_to=ChatCompletionChunk,
        response=httpx2.Response(200, request=httpx2.Request("POST", BASE_URL)),
    )
    call = lenient.choices[0].delta.tool_calls[0]
    assert type(call) is ChoiceDeltaToolCall
    assert call.index is None
    assert call.extra_content == {"google": {"thought_signature": "c2ln"}}
    call.index, call.id = 3, "call_x"
    assert (call.index, call.id) == (3, "call_x")
    strict = ChatCompletionChunk.model_validate(
        json.loads(_tool_call_chunk(_call(0, "", "a", "{}")))
    )
    call = strict.choices[0].delta.tool_calls[0]
    call.index, call.id = 3, "call_x"
    assert (call.index, call.id) == (3, "call_x")


def test_the_agents_sdk_sends_a_calls_signature_back_in_extra_content_for_gemini_models():
    from agents.models.chatcmpl_converter import Converter

    item = {
        "type": "function_call",
        "call_id": "call_1",
        "name": "a",
        "arguments": '{"x": 1}',
        "provider_data": {"thought_signature": "c2ln", "model": "gemini-3.8-flash"},
    }
    messages = Converter.items_to_messages([item], model="gemini-3.8-flash")
    assert messages[0]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "a", "arguments": '{"x": 1}'},
            "extra_content": {"google": {"thought_signature": "c2ln"}},
        }
    ]


async def test_the_agents_sdk_passes_tool_schemas_to_create_as_tools_where_they_are_cleaned():
    from agents import function_tool

    @function_tool
    def tool(x: int = 3) -> str:
        """A tool."""
        return str(x)

    sent: list[bytes] = []
    client = _client(GeminiClient, _streaming([GEMINI_CHUNKS[0], GEMINI_CHUNKS[1]], sent))
    model = GeminiChatModel(model="gemini-3.8-flash", openai_client=client)
    agent = Agent(name="a", model=model, tools=[tool])
    result = Runner.run_streamed(agent, "hi", run_config=RunConfig(tracing_disabled=True))
    async for _ in result.stream_events():
        pass
    await client.close()
    assert tool.params_json_schema["properties"]["x"]["default"] == 3
    (declared,) = json.loads(sent[0])["tools"]
    assert declared["function"]["name"] == "tool"
    assert "default" not in declared["function"]["parameters"]["properties"]["x"]


async def test_tools_skip_openais_request_transform_and_send_the_same_bytes(monkeypatch):
    import openai.resources.chat.completions.completions as completions_module

    transformed: list = []
    transform = completions_module.async_maybe_transform

    async def spy(data, *args, **kwargs):
        transformed.append(data.get("tools"))
        return await transform(data, *args, **kwargs)

    monkeypatch.setattr(completions_module, "async_maybe_transform", spy)
    # A schema Gemini takes as it is, so both clients send the same tools.
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "A tool.",
                "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
                "strict": True,
            },
        }
    ]
    sent: dict[type, list[bytes]] = {GeminiClient: [], openai.AsyncOpenAI: []}
    for client_class, bodies in sent.items():
        client = _client(client_class, _streaming(GEMINI_CHUNKS[:1], bodies))
        stream = await client.chat.completions.create(
            model="gemini-3.8-flash",
            messages=[{"role": "user", "content": "hi"}],
            tools=tools,
            parallel_tool_calls=True,
            stream=True,
        )
        _ = [chunk async for chunk in stream]
        await client.close()
    # openai merges extra_body over the transformed body key by key, in the body's order.
    assert transformed == [[], tools]
    assert sent[GeminiClient] == sent[openai.AsyncOpenAI]


# --- Chainlit's SQLAlchemy data layer (storage.ChatDataLayer) ------------------------------------


def _parameters(function) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_each_data_layer_override_takes_what_chainlit_passes_to_its_method():
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

    from gemini_chat.storage import ChatDataLayer

    overrides = [
        name
        for name, value in vars(ChatDataLayer).items()
        if callable(value) and name != "__init__" and hasattr(SQLAlchemyDataLayer, name)
    ]
    assert {"execute_sql", "create_step", "update_thread", "get_thread"} <= set(overrides)
    pairs = {
        name: (
            _parameters(getattr(SQLAlchemyDataLayer, name)),
            _parameters(vars(ChatDataLayer)[name]),
        )
        for name in overrides
    }
    mismatched = {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}
    assert mismatched == {}
    # Called by name on the parent.
    assert "conninfo" in inspect.signature(SQLAlchemyDataLayer.__init__).parameters
    assert _parameters(SQLAlchemyDataLayer.clean_result)[1:] == [
        ("obj", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty)
    ]


async def test_chainlits_reads_and_the_layers_writes_go_through_execute_sql(
    tmp_path, chainlit_context
):
    """The override of execute_sql (errors logged loudly) only works while SQL goes through it:
    the layer's own step writes, and Chainlit's get_step that reads them back."""
    from gemini_chat.schema import prepare_database
    from gemini_chat.storage import ChatDataLayer

    url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    prepare_database(url)
    layer = ChatDataLayer(url)
    assert layer.engine is not None and layer.async_session is not None
    queries: list[str] = []
    execute_sql = layer.execute_sql

    async def spy_sql(query, parameters):
        queries.append(" ".join(query.split())[:30])
        return await execute_sql(query=query, parameters=parameters)

    import chainlit as cl

    # Writes are made for the logged-in user (gemini_chat/ownership.py): a stored one.
    chainlit_context.session.user = await layer.create_user(cl.User(identifier="alice"))
    layer.execute_sql = spy_sql
    thread_id = str(uuid.uuid4())
    step = {**cl.Message(content="hi").to_dict(), "threadId": thread_id}
    step_id = step["id"]
    await layer.create_step(step)
    assert any(query.startswith("INSERT INTO steps") for query in queries)
    queries.clear()
    assert (await layer.get_step(step_id))["id"] == step_id
    assert any(query.startswith("SELECT") for query in queries)
    await layer.engine.dispose()


async def test_on_postgresql_each_statement_commits_by_itself(
    postgres_cluster, chainlit_context, monkeypatch
):
    """A message's writes are a dozen statements, each its own transaction: on PostgreSQL
    SQLAlchemy's asyncpg adapter would wrap each in BEGIN and COMMIT (three round trips, not
    one) unless the connection commits by itself."""
    import asyncpg
    import chainlit as cl

    from gemini_chat.schema import prepare_database
    from gemini_chat.storage import ChatDataLayer

    url = postgres_cluster.database()
    prepare_database(url)
    layer = ChatDataLayer(url)
    chainlit_context.session.user = await layer.create_user(cl.User(identifier="alice"))
    begun: list[object] = []
    transaction = asyncpg.connection.Connection.transaction

    def counted(self, *args, **kwargs):
        begun.append(self)
        return transaction(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "transaction", counted)
    step = {**cl.Message(content="hi").to_dict(), "threadId": str(uuid.uuid4())}
    await layer.create_step(step)
    await layer.update_step({**step, "output": "hi again"})
    assert begun == []
    assert (await layer.get_step(step["id"]))["output"] == "hi again"
    await layer.engine.dispose()


# --- openai-agents: running tools (toolrun.py, llm.count_round, streaming.ReplyStream) ----------


def test_a_copied_tool_with_its_failure_policy_off_raises_what_the_tool_raised():
    """toolrun.guard turns the SDK's generic "An error occurred" off on a copy of each tool
    (``_use_default_failure_error_function``, ``_failure_error_function``), relying on
    ``copy.copy`` to rebind the tool's invoker to the copy, so it can say what went wrong."""
    import asyncio

    from agents import function_tool
    from agents.mcp.util import MCPUtil
    from agents.tool import default_tool_error_function
    from agents.tool_context import ToolContext

    from gemini_chat.toolrun import _raising

    @function_tool
    def jammed() -> str:
        """Fails."""
        raise RuntimeError("jammed")

    def call(tool):
        context = ToolContext(None, tool_name="jammed", tool_call_id="c", tool_arguments="{}")
        return asyncio.run(tool.on_invoke_tool(context, "{}"))

    assert jammed._use_default_failure_error_function is True
    assert call(jammed) == default_tool_error_function(None, RuntimeError())
    with pytest.raises(RuntimeError, match="jammed"):
        call(_raising(jammed))
    assert call(jammed) == default_tool_error_function(None, RuntimeError())  # untouched
    # MCP tools name the default formatter explicitly: the guard treats them alike.
    default = inspect.signature(MCPUtil.to_function_tool).parameters["failure_error_function"]
    assert default.default is default_tool_error_function


def test_the_sdk_passes_model_settings_third_and_tools_fourth_to_fetch_response():
    """GeminiChatModel._fetch_response swaps the model settings by position (tool_choice
    "none" once the tool rounds are used up)."""
    names = list(inspect.signature(OpenAIChatCompletionsModel._fetch_response).parameters)
    assert names[1:5] == ["system_instructions", "input", "model_settings", "tools"]


async def test_rounds_are_counted_per_model_request_not_per_retry_and_the_last_may_only_answer():
    """llm.count_round is RunConfig.call_model_input_filter, which the SDK calls once before
    each model request and not again for its retries: a retried request must not use up a
    round. After MAX_TOOL_ROUNDS rounds, the request goes with tool_choice "none"."""
    from gemini_chat.config import load_settings
    from gemini_chat.llm import build_backend
    from gemini_chat.streaming import ReplyStream
    from tests import sample_tools

    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup_weather", "arguments": '{"city": "Oslo"}'},
    }
    tool_chunk = json.dumps(
        {
            "choices": [
                {
                    "delta": {"role": "assistant", "tool_calls": [call]},
                    "finish_reason": "tool_calls",
                    "index": 0,
                }
            ],
            "created": 1,
            "id": "c",
            "model": "gemini-3.8-flash",
            "object": "chat.completion.chunk",
        }
    )
    bodies: list[dict] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        if len(bodies) == 1:
            error = [{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}]
            return httpx2.Response(503, json=error)
        chunks = [tool_chunk] if len(bodies) == 2 else [GEMINI_CHUNKS[5], GEMINI_CHUNKS[4]]
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=_sse(chunks)
        )

    settings = load_settings(
        {"GEMINI_API_KEY": "k", "GEMINI_MAX_RETRIES": "1", "MAX_TOOL_ROUNDS": "1"}
    )
    client = _client(GeminiClient, answer)
    model = GeminiChatModel(model="gemini-3.8-flash", openai_client=client)
    backend = build_backend(settings, model, tools=[sample_tools.lookup_weather])
    try:
        text = await ReplyStream(backend, _ignore).run([{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert text == "OK."
    assert [body.get("tool_choice") for body in bodies] == [None, None, "none"]


async def _ignore(_text: str) -> None:
    pass


def test_simpleeval_evaluates_through_its_node_table_and_eval_methods():
    """builtin_tools._Arithmetic holds simpleeval to arithmetic by trimming ``nodes`` (the table
    ``_eval`` dispatches on: an expression kind missing from it is refused) and overriding
    ``_eval_constant`` and ``_eval_name``. Were either to move, strings, comparisons or
    attributes would slip back into the calculator."""
    import ast

    from simpleeval import FeatureNotAvailable, SimpleEval

    evaluator = SimpleEval()
    assert evaluator.nodes[ast.Constant] == evaluator._eval_constant
    assert evaluator.nodes[ast.Name] == evaluator._eval_name
    del evaluator.nodes[ast.Compare]
    with pytest.raises(FeatureNotAvailable):
        evaluator.eval("1 < 2")


def test_mcp_clients_hooks_the_app_uses_are_there():
    """gemini_chat/mcp.py sends a stdio server's stderr to the log through the SDK's
    ``create_streams`` hook and the MCP client's ``errlog``; it tells a server gone mid-call
    from a refused call by McpError's CONNECTION_CLOSED; it names MCP tools with the SDK's
    server prefix."""
    from agents.mcp import MCPServerStdio, MCPUtil
    from mcp.client.stdio import stdio_client
    from mcp.shared.exceptions import McpError
    from mcp.types import CONNECTION_CLOSED, ErrorData

    from gemini_chat.mcp import _LoggedStdio

    assert _LoggedStdio.create_streams is not MCPServerStdio.create_streams
    # The SDK opens a server's transport through the hook when it connects.
    assert "self.create_streams()" in inspect.getsource(MCPServerStdio.connect)
    assert "errlog" in inspect.signature(stdio_client).parameters
    error = McpError(ErrorData(code=CONNECTION_CLOSED, message="Connection closed"))
    assert error.error.code == CONNECTION_CLOSED
    parameters = inspect.signature(MCPUtil.get_function_tools).parameters
    assert {"include_server_in_tool_names", "reserved_tool_names"} <= set(parameters)
    assert MCPUtil._build_prefixed_tool_base_name("notes", "lookup") == "mcp_notes__lookup"
