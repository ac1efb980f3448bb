"""The benchmark's turn with one tool call: the fake Gemini answers it (a call, then the tokens
once the result comes back), the two baselines run it, and its targets read PASS or FAIL. The
soak's upstream faults, steered by message text ("bench-fault ..."): what the fake sends."""

from __future__ import annotations

import http.client
import json
from datetime import datetime, timedelta

import aiohttp
import pytest

from bench.client import Reply
from bench.run import (
    AppDriver,
    bare_tool_turn,
    build_baselines,
    sdk_tool_turn,
    tool_turn_verdicts,
)
from bench.soak import INCOMPLETE, NOTICES, Message, judge
from bench.tools import bench_clock
from tests.app_process import ROOT
from tests.fake_gemini import DEFAULT_KEY, FakeGemini


def assert_one_call_and_its_result(gemini: FakeGemini) -> None:
    """Two requests: the first offers the bench tool and gets the call; the follow-up carries
    the call and the tool's result under the call's id."""
    asked, follow_up = gemini.requests
    assert [tool["function"]["name"] for tool in asked.body["tools"]] == ["bench_clock"]
    assert asked.messages[-1] == {"role": "user", "content": "bench-tool 5 0 0"}
    call, result = follow_up.messages[-2:]
    (sent,) = call["tool_calls"]
    assert sent["id"].startswith("call_") and len(sent["id"]) > len("call_")
    assert sent["function"] == {"name": "bench_clock", "arguments": json.dumps({"zone": "UTC"})}
    assert result["role"] == "tool" and result["tool_call_id"] == sent["id"]
    assert datetime.fromisoformat(result["content"]).utcoffset() == timedelta(0)


async def test_the_sdk_alone_runs_the_bench_tool_turn(gemini):
    client, agent, run_config = build_baselines(gemini.base_url)
    tool_agent = agent.clone(tools=[bench_clock])
    first, tool_done, total, text = await sdk_tool_turn(tool_agent, run_config, "bench-tool 5 0 0")
    await client.close()
    assert text == " t0 t1 t2 t3 t4"
    assert 0 < tool_done < first <= total
    assert_one_call_and_its_result(gemini)


async def test_a_bare_client_runs_the_bench_tool_turn(gemini):
    client, _, _ = build_baselines(gemini.base_url)
    first, tool_done, total, text = await bare_tool_turn(client, "bench-tool 5 0 0")
    await client.close()
    assert text == " t0 t1 t2 t3 t4"
    assert 0 < tool_done < first <= total
    assert_one_call_and_its_result(gemini)


async def test_the_app_runs_the_bench_tool_turn_and_the_bench_client_sees_its_step(
    gemini, start_app_with
):
    """The app as the benchmark starts it: the bench client reads the answer and the call's
    step (its result, no error, when it ended) from the socket events, as the browser gets them."""
    app = start_app_with(TOOLS="none", TOOL_MODULES="bench.tools", PYTHONPATH=str(ROOT))
    async with aiohttp.ClientSession() as http:
        driver = AppDriver(app.url, http)
        await driver.start()
        (chat,) = await driver.open_chats(1)
        await driver.one(chat, "bench-tool 5 0 0")
        await chat.close()
    reply = chat.reply
    assert reply.text == " t0 t1 t2 t3 t4"
    (step,) = reply.tool_steps.values()
    assert step["name"] == "bench_clock" and not step["isError"]
    assert "+00:00" in step["output"]
    assert reply.sent_at < reply.tool_done_at < reply.first_token_at <= reply.done_at
    assert_one_call_and_its_result(gemini)


def test_the_tool_turn_target_is_ten_percent_over_the_sdk_alone():
    def turn(app: float) -> dict:
        figures = {"first_token_ms": 10.0, "total_ms": 20.0, "cpu_ms_per_turn": 5.0}
        return {"sdk": figures, "app": {key: value * app for key, value in figures.items()}}

    assert [ok for _, _, ok in tool_turn_verdicts(turn(1.09))] == [True, True, True]
    rows = tool_turn_verdicts(turn(1.11))
    assert [ok for _, _, ok in rows] == [False, False, False]
    assert rows[0][1] == "11.1 ms against 10.0 ms (+11%)"


def post_chat(gemini: FakeGemini, text: str) -> tuple[int, bytes]:
    """One streamed request whose last user message is ``text``: the status and raw body."""
    connection = http.client.HTTPConnection("127.0.0.1", gemini.port, timeout=10)
    body = {"model": "gemini-3.8-flash", "messages": [{"role": "user", "content": text}]}
    connection.request(
        "POST",
        "/v1beta/openai/chat/completions",
        json.dumps({**body, "stream": True}),
        {"Authorization": f"Bearer {DEFAULT_KEY}", "Content-Type": "application/json"},
    )
    try:
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def streamed(body: bytes) -> list:
    return [
        json.loads(line.removeprefix(b"data: "))
        for line in body.split(b"\n\n")
        if line.startswith(b"data: ") and line != b"data: [DONE]"
    ]


def test_bench_fault_sends_the_fakes_errors_on_every_request(gemini):
    status, body = post_chat(gemini, "bench-fault 429 3 0")
    (error,) = json.loads(body)
    assert status == 429 and error["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"} in error[
        "error"
    ]["details"]
    for _ in range(2):  # the app's retries fault too
        status, body = post_chat(gemini, "bench-fault 503 3 0")
        assert status == 503 and json.loads(body)[0]["error"]["status"] == "UNAVAILABLE"
    status, body = post_chat(gemini, "bench-fault 500 3 0")
    assert status == 500 and json.loads(body)[0]["error"]["status"] == "INTERNAL"
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        post_chat(gemini, "bench-fault reset 3 0")


def test_bench_fault_once_faults_the_first_request_only(gemini):
    assert post_chat(gemini, "bench-fault 500 3 0 once c1-1")[0] == 500
    status, body = post_chat(gemini, "bench-fault 500 3 0 once c1-1")
    assert status == 200
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in streamed(body)) == (
        " t0 t1 t2"
    )
    assert post_chat(gemini, "bench-fault 500 3 0 once c1-2")[0] == 500


def test_bench_fault_breaks_the_stream_after_its_tokens(gemini):
    status, body = post_chat(gemini, "bench-fault error 2 0")
    *chunks, error = streamed(body)
    assert status == 200 and [c["choices"][0]["delta"]["content"] for c in chunks] == [
        " t0",
        " t1",
    ]
    assert error["error"]["code"] == 503 and body.endswith(b"data: [DONE]\n\n")
    with pytest.raises((ConnectionError, http.client.IncompleteRead)) as dropped:
        post_chat(gemini, "bench-fault drop 2 0")
    if isinstance(dropped.value, http.client.IncompleteRead):
        assert b" t1" in dropped.value.partial and b"[DONE]" not in dropped.value.partial


def test_the_soak_tells_intact_and_explained_failures_from_problems():
    def reply(answer=None, status=None, notice=None) -> Reply:
        return Reply(answer=answer, status=status, notice=notice)

    plain = Message("bench 3 0.01 0", 3)
    assert judge(plain, reply(" t0 t1 t2", "complete")) == "intact"
    assert judge(plain, reply(" t0 t1", "complete")).startswith("no notice")
    assert judge(plain, reply(" t0" + INCOMPLETE, "incomplete")).startswith("no notice")
    assert judge(plain, reply(notice=NOTICES["503"])).startswith("a notice for a message")
    dropped = Message("bench-fault drop 3 0.01", 3, "drop")
    assert judge(dropped, reply(" t0 t1" + INCOMPLETE, "incomplete", NOTICES["drop"])) == "failed"
    assert judge(dropped, reply(notice=NOTICES["drop"])) == "failed"
    assert judge(dropped, reply(" t0 t1", "complete", NOTICES["drop"])).startswith("a partial")
    assert judge(dropped, reply(" t9" + INCOMPLETE, "incomplete", NOTICES["drop"])).startswith(
        "a partial answer that is not"
    )
    assert judge(dropped, reply(notice=NOTICES["503"])).startswith("the wrong notice")
    assert judge(dropped, reply(" t0 t1 t2", "complete")).startswith("no notice")  # not retried
    retried = Message("bench-fault 429 3 0.01 once c1-0", 3, "429", once=True)
    assert judge(retried, reply(" t0 t1 t2", "complete")) == "intact"
    assert judge(retried, reply(notice=NOTICES["429"])) == "failed"
