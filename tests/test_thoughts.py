"""Thinking, shown: the model's thought summary, asked for when SHOW_THOUGHTS is on, streams
into a step of its own above the answer, never into the answer or the history.

Parsing without a server, the SDK path in-process against the fake Gemini, and the real app
through a socket client (what the page is sent, what the fake receives, what is stored). The
page itself is tested in tests/test_thoughts_page.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
from agents import Agent, ModelSettings, RunConfig, function_tool
from openai.types.chat.chat_completion_chunk import ChoiceDelta

from gemini_chat.config import load_settings
from gemini_chat.history import history_from_steps
from gemini_chat.live import stamp_between
from gemini_chat.llm import (
    GeminiClient,
    build_backend,
    build_model,
    build_model_settings,
    with_thinking_config,
)
from gemini_chat.streaming import Coalescer, ReplyStream
from gemini_chat.thinking import thought_for
from gemini_chat.thoughts import ThoughtFilter, move_inline_thought, reasoning_of
from tests.chat_client import ChatClient
from tests.db import eventually, query
from tests.fake_gemini import DEFAULT_KEY, Reply, recording

THOUGHTS = ["**Weighing it**\n\nOtters are ", "mustelids; they sleep ", "holding paws."]
ANSWER = "Otters hold hands while they sleep."
INCLUDE = {"extra_body": {"google": {"thinking_config": {"include_thoughts": True}}}}


# --- parsing ----------------------------------------------------------------------------------


def delta_of(data: dict[str, Any]) -> ChoiceDelta:
    return ChoiceDelta.model_validate(data)


def test_an_inline_thought_moves_to_reasoning_content_and_leaves_the_answer_alone():
    thoughts = ThoughtFilter()
    flagged = {"extra_content": {"google": {"thought": True}}, "role": "assistant"}
    first = delta_of({"content": "<thought>Plan: greet.", **flagged})
    move_inline_thought(first, thoughts.strip(first))
    assert (first.content, reasoning_of(first)) == (None, "Plan: greet.")
    last = delta_of({"content": " Done.</thought>Hello!", "role": "assistant"})
    move_inline_thought(last, thoughts.strip(last))
    assert (last.content, reasoning_of(last)) == ("Hello!", " Done.")
    # Where the SDK looks for it.
    assert last.reasoning_content == " Done."


def test_a_delta_with_both_shapes_keeps_each_thought_once():
    thoughts = ThoughtFilter()
    flagged = {"extra_content": {"google": {"thought": True}}, "role": "assistant"}
    same = delta_of({"content": "<thought>Same.", "reasoning_content": "Same.", **flagged})
    move_inline_thought(same, thoughts.strip(same))
    assert reasoning_of(same) == "Same."
    more = delta_of({"content": "Inline.", "reasoning_content": "Field. ", **flagged})
    move_inline_thought(more, thoughts.strip(more))
    assert reasoning_of(more) == "Field. Inline."
    assert more.content is None


def test_strip_returns_each_deltas_thought_also_when_tags_split():
    text = "<thought>abc</thought>Answer"
    for cut in range(len("<thought>"), len(text)):
        thoughts = ThoughtFilter()
        pieces = []
        answer = []
        for content, flagged in ((text[:cut], True), (text[cut:], False)):
            extra = {"extra_content": {"google": {"thought": True}}} if flagged else {}
            delta = SimpleNamespace(content=content, model_extra=extra)
            pieces.append(thoughts.strip(delta))
            answer.append(delta.content or "")
        assert ("".join(pieces), "".join(answer)) == ("abc", "Answer"), cut


def test_step_titles_and_order():
    assert thought_for(0.2) == "Thought for 1 s"
    assert thought_for(4.4) == "Thought for 4 s"
    # After the run, before the answer, in Chainlit's format.
    assert stamp_between(None, "2026-12-01T12:00:00.001000Z") == "2026-12-01T12:00:00.000500Z"
    assert (
        stamp_between("2026-12-01T12:00:00.000100Z", "2026-12-01T12:00:00.000300Z")
        == "2026-12-01T12:00:00.000200Z"
    )


# --- the fake, against the recording ----------------------------------------------------------


def fake_deltas(gemini, body: dict[str, Any]) -> list[dict[str, Any]]:
    import urllib.request

    request = urllib.request.Request(
        gemini.base_url + "chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {DEFAULT_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        events = response.read().decode().split("\n\n")
    data = [e.removeprefix("data: ") for e in events if e.strip()]
    return [json.loads(d)["choices"][0]["delta"] for d in data if d != "[DONE]"]


def test_the_fake_streams_thoughts_as_the_recording_does_and_only_when_asked(gemini):
    recorded = [
        json.loads(e.removeprefix("data: "))["choices"][0]["delta"]
        for e in recording("thoughts_stream").body.decode().split("\n\n")
        if e.strip() and e.strip() != "data: [DONE]"
    ]
    body = {
        "model": "gemini-3.8-flash",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }
    gemini.script(Reply(ANSWER, thoughts=THOUGHTS), Reply(ANSWER, thoughts=THOUGHTS))
    asked = fake_deltas(gemini, {**body, **INCLUDE})
    # Same shape: thought deltas flagged, the first opening the tag, the first answer delta
    # closing it, unflagged; the same keys on each kind of delta.
    assert [sorted(d) for d in asked[:2]] == [sorted(d) for d in recorded[:2]]
    assert sorted(asked[len(THOUGHTS)]) == sorted(recorded[-1])
    assert asked[0]["content"] == "<thought>" + THOUGHTS[0]
    assert asked[len(THOUGHTS)]["content"].startswith("</thought>")
    joined = "".join(d.get("content", "") for d in asked)
    assert joined == "<thought>" + "".join(THOUGHTS) + "</thought>" + ANSWER
    # Not asked: the answer alone, no flag anywhere.
    plain = fake_deltas(gemini, body)
    assert "".join(d.get("content", "") for d in plain) == ANSWER
    assert not any("extra_content" in d or "reasoning_content" in d for d in plain)


# --- what is asked for ------------------------------------------------------------------------


def test_thoughts_are_asked_for_in_geminis_extra_body_only_when_shown():
    shown = build_model_settings(load_settings({"GEMINI_API_KEY": "k"}))
    assert shown.extra_body == INCLUDE
    assert shown.retry is not None
    hidden = build_model_settings(load_settings({"GEMINI_API_KEY": "k", "SHOW_THOUGHTS": "0"}))
    assert hidden.extra_body is None


def test_other_thinking_options_merge_into_the_same_thinking_config():
    shown = build_model_settings(load_settings({"GEMINI_API_KEY": "k"}))
    merged = with_thinking_config(shown, thinking_level="low")
    assert merged.extra_body == {
        "extra_body": {
            "google": {"thinking_config": {"include_thoughts": True, "thinking_level": "low"}}
        }
    }
    assert shown.extra_body == INCLUDE  # the shared settings are not changed
    assert merged.retry is shown.retry


# --- the SDK path, in-process against the fake --------------------------------------------------


class CollectedThoughts:
    """A ThoughtSink that keeps what it was given."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.closed: list[str] = []

    async def add(self, text: str) -> None:
        self.pieces.append(text)

    async def close(self, outcome: str) -> None:
        self.closed.append(outcome)


def backend_against(gemini, **env: str):
    settings = load_settings(
        {
            "GEMINI_API_KEY": DEFAULT_KEY,
            "GEMINI_BASE_URL": gemini.base_url,
            "GEMINI_MAX_RETRIES": "0",
            **env,
        }
    )
    return build_backend(settings)


async def stream_once(gemini, *behaviours, **env: str):
    gemini.script(*behaviours)
    backend = backend_against(gemini, **env)
    answer: list[str] = []

    async def sink(text: str) -> None:
        answer.append(text)

    thoughts = CollectedThoughts()
    stream = ReplyStream(backend, sink, thoughts=thoughts)
    try:
        text = await stream.run([{"role": "user", "content": "Otters?"}])
    finally:
        await backend.agent.model._client.close()
    return text, "".join(answer), thoughts


@pytest.mark.parametrize("shape", ["inline", "reasoning_content"])
async def test_both_shapes_reach_the_thought_sink_once_and_never_the_answer(gemini, shape):
    text, shown, thoughts = await stream_once(
        gemini, Reply(ANSWER, thoughts=THOUGHTS, thought_shape=shape)
    )
    assert text == shown == ANSWER
    assert "".join(thoughts.pieces) == "".join(THOUGHTS)
    assert thoughts.closed[0] == "answered"
    request = (await gemini.arrived(1))[0]
    assert request.body["extra_body"] == INCLUDE["extra_body"]


async def test_the_recorded_gemini_stream_gives_its_thoughts_and_answer(gemini):
    expected = recording("thoughts_stream").catalog["expected_text"]
    thought, answer = expected.removeprefix("<thought>").split("</thought>")
    text, _, thoughts = await stream_once(gemini, recording("thoughts_stream"))
    assert text == answer
    assert "".join(thoughts.pieces) == thought


async def test_with_thoughts_off_nothing_is_asked_and_the_fake_sends_none(gemini):
    text, _, thoughts = await stream_once(
        gemini, Reply(ANSWER, thoughts=THOUGHTS), SHOW_THOUGHTS="false"
    )
    assert text == ANSWER
    assert thoughts.pieces == []
    request = (await gemini.arrived(1))[0]
    assert "extra_body" not in request.body
    assert "google" not in json.dumps(request.body)


async def test_a_failure_while_thinking_keeps_every_thought_received_and_says_so(gemini):
    from gemini_chat.errors import ChatError

    gemini.script(Reply(chunks=[], thoughts=THOUGHTS, ending="drop"))
    backend = backend_against(gemini)
    thoughts = CollectedThoughts()

    async def sink(text: str) -> None:
        pass

    stream = ReplyStream(backend, sink, thoughts=thoughts)
    with pytest.raises(ChatError):
        await stream.run([{"role": "user", "content": "Otters?"}])
    await backend.agent.model._client.close()
    assert "".join(thoughts.pieces) == "".join(THOUGHTS)
    assert thoughts.closed[0] == "failed"


async def test_thought_text_is_coalesced_like_answer_text():
    writes: list[str] = []

    async def write(text: str) -> None:
        writes.append(text)

    coalescer = Coalescer(write, interval=10)
    for piece in ["a", "b", "c", "d"]:
        await coalescer.add(piece)
    await coalescer.close()
    assert writes == ["a", "bcd"]


# --- thought signatures: sent back the way the SDK expects ------------------------------------


async def test_a_tool_calls_thought_signature_goes_back_with_the_call(gemini):
    """Gemini 3 signs a tool call (extra_content.google.thought_signature on the call's
    delta); the SDK keeps it for models named "gemini" and sends it back with the call in the
    next request of the turn. The app's client must let it through both ways."""
    signature = "c2lnbmF0dXJlLW9mLWEtdGhvdWdodA=="
    call = {
        "role": "assistant",
        "tool_calls": [
            {
                "index": 0,
                "id": "call-1",
                "type": "function",
                "function": {"name": "otter_count", "arguments": "{}"},
                "extra_content": {"google": {"thought_signature": signature}},
            }
        ],
    }
    gemini.script(Reply(raw=[call], finish_reason="tool_calls"), Reply("There are 3 otters."))

    @function_tool
    def otter_count() -> str:
        """How many otters there are."""
        return "3"

    settings = load_settings({"GEMINI_API_KEY": DEFAULT_KEY, "GEMINI_BASE_URL": gemini.base_url})
    model = build_model(settings)
    assert isinstance(model._client, GeminiClient)
    agent = Agent(name="Gemini", model=model, tools=[otter_count])
    from agents import Runner

    result = Runner.run_streamed(
        agent,
        "How many otters?",
        run_config=RunConfig(model=model, model_settings=ModelSettings(), tracing_disabled=True),
    )
    async for _ in result.stream_events():
        pass
    await model._client.close()
    assert result.final_output == "There are 3 otters."
    second = (await gemini.arrived(2))[1]
    sent_call = next(m for m in second.messages if m.get("tool_calls"))
    assert sent_call["tool_calls"][0]["extra_content"] == {
        "google": {"thought_signature": signature}
    }


# --- the real app ------------------------------------------------------------------------------


def is_thinking_step(step: dict[str, Any]) -> bool:
    meta = step.get("metadata")
    meta = json.loads(meta) if isinstance(meta, str) and meta else meta or {}
    return meta.get("kind") == "thoughts"


def thought_steps(client: ChatClient) -> list[dict[str, Any]]:
    """The thinking steps the page was sent, as it holds them (by id, tokens applied)."""
    steps: dict[str, dict[str, Any]] = {}
    for name, data in client.events:
        if name in ("new_message", "update_message", "stream_start"):
            if (data.get("metadata") or {}).get("kind") == "thoughts":
                steps[data["id"]] = dict(data)
        elif name == "stream_token" and data["id"] in steps:
            steps[data["id"]]["output"] += data["token"]
        elif name == "resume_thread":
            for step in data.get("steps", []):
                if is_thinking_step(step):
                    steps[step["id"]] = dict(step)
    return list(steps.values())


async def test_the_thought_summary_streams_into_its_own_step_and_never_into_the_history(
    chat, gemini, app
):
    gemini.script(Reply(ANSWER, thoughts=THOUGHTS, delay=0.05), Reply("Beavers build dams."))
    replies = await chat.ask("Tell me about otters")
    assert [m.content for m in replies] == [ANSWER]
    request = (await gemini.arrived(1))[0]
    assert request.body["extra_body"] == INCLUDE["extra_body"]

    (step,) = thought_steps(chat)
    assert step["output"] == "".join(THOUGHTS)
    # The seconds themselves are thought_for's (tested above); a loaded machine may take 2.
    assert re.fullmatch(r"Thought for \d+ s", step["name"])
    assert step["type"] == "llm"
    assert step["end"] and step["defaultOpen"] and step["autoCollapse"]
    # In the answer's run, above it: sent first, stamped earlier.
    reply = replies[0]
    assert step["parentId"] == reply.parent_id
    order = [d["id"] for n, d in chat.events if n in ("stream_start", "new_message")]
    assert order.index(step["id"]) < order.index(reply.id)

    await chat.ask("And beavers?")
    second = (await gemini.arrived(2))[1]
    assert second.conversation[1:] == [
        ("user", "Tell me about otters"),
        ("assistant", ANSWER),
        ("user", "And beavers?"),
    ]
    assert "mustelids" not in json.dumps(second.body)

    # Stored with the chat, above its answer; a resumed chat's history leaves it out.
    thread_id = await chat.chat_thread()
    url = f"sqlite+aiosqlite:///{app.directory}/chats.db"

    async def stored():
        return await query(
            url,
            'SELECT "type", "name", "output", "metadata" FROM steps WHERE "threadId" = :t '
            "AND \"type\" IN ('llm', 'assistant_message') ORDER BY \"createdAt\"",
            t=thread_id,
        )

    rows = await eventually(lambda: _with_two_replies(stored), what="the stored steps")
    shown = [(r[0], r[1], r[2]) for r in rows if "Ask me anything" not in r[2]]
    assert shown == [
        ("llm", step["name"], "".join(THOUGHTS)),
        ("assistant_message", "Gemini", ANSWER),
        ("assistant_message", "Gemini", "Beavers build dams."),
    ]
    steps = await query(
        url,
        'SELECT "id", "type", "output", "metadata" FROM steps WHERE "threadId" = :t '
        'ORDER BY "createdAt"',
        t=thread_id,
    )
    columns = ("id", "type", "output", "metadata")
    history = history_from_steps([dict(zip(columns, row, strict=True)) for row in steps], 32000)
    assert [(t.user, t.assistant) for t in history.turns] == [
        ("Tell me about otters", ANSWER),
        ("And beavers?", "Beavers build dams."),
    ]


async def _with_two_replies(stored):
    rows = await stored()
    return rows if sum(r[0] == "assistant_message" for r in rows) >= 2 else None


async def test_a_reopened_chat_shows_the_step_and_sends_no_thought_to_the_model(app, gemini):
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages)
    gemini.script(Reply(ANSWER, thoughts=THOUGHTS, thought_shape="reasoning_content"))
    await client.ask("Tell me about otters")
    thread_id = await client.chat_thread()
    await client.disconnect()

    again = await ChatClient(app.url, headers=client.headers).connect(thread_id=thread_id)
    await again.wait_for(lambda: thought_steps(again), what="the stored thinking step")
    (step,) = thought_steps(again)
    assert step["output"] == "".join(THOUGHTS)
    assert step["name"].startswith("Thought for")
    # The page builds the chat in this order and drops a step met before its parent: the step
    # must load after its run and before its answer.
    loaded = next(d for n, d in again.events if n == "resume_thread")["steps"]
    order = [s["id"] for s in loaded]
    reply = next(s for s in loaded if s["type"] == "assistant_message" and s["output"] == ANSWER)
    assert order.index(step["parentId"]) < order.index(step["id"]) < order.index(reply["id"])
    gemini.script(Reply("Beavers build dams."))
    await again.ask("And beavers?")
    second = (await gemini.arrived(2))[1]
    assert second.conversation[1:] == [
        ("user", "Tell me about otters"),
        ("assistant", ANSWER),
        ("user", "And beavers?"),
    ]
    await again.disconnect()


async def test_a_tab_opened_while_thinking_shows_the_thoughts_so_far_then_the_rest(app, gemini):
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages)
    ideas = [f"idea {i}. " for i in range(40)]
    gemini.script(Reply(ANSWER, thoughts=ideas, delay=0.08))
    client.mark()
    await client.send("Think it over")
    thread_id = await client.chat_thread()
    await client.wait_for(
        lambda: any("idea 5." in s["output"] for s in thought_steps(client)), what="thinking"
    )

    second = await ChatClient(app.url, headers=client.headers).connect(thread_id=thread_id)
    loaded = await second.wait_for(
        lambda: next((d for n, d in second.events if n == "resume_thread"), None),
        what="the chat as loaded",
    )
    at_open = next(s for s in loaded["steps"] if is_thinking_step(s))
    assert at_open["name"] == "Thinking…" and "idea 5." in at_open["output"]
    assert "idea 39." not in at_open["output"]

    def finished() -> bool:
        steps = thought_steps(second)
        return bool(steps) and steps[0]["name"].startswith("Thought for")

    await second.wait_for(finished, timeout=20, what="the finished step in the second tab")
    (step,) = thought_steps(second)
    assert step["output"] == "".join(ideas)  # every piece exactly once
    await second.wait_for(
        lambda: any(m.content == ANSWER for m in second.assistant_messages()), what="the answer"
    )
    await client.wait_idle()
    await second.disconnect()
    await client.disconnect()


async def test_a_long_thought_costs_a_few_socket_events_not_one_per_piece(chat, gemini):
    pieces = [f"t{i} " for i in range(2000)]
    gemini.script(Reply(ANSWER, thoughts=pieces))
    await chat.ask("Think a lot, fast")
    (step,) = thought_steps(chat)
    assert step["output"] == "".join(pieces)
    events = [
        n for n, d in chat.events if n in ("stream_start", "stream_token") and d["id"] == step["id"]
    ]
    assert 1 <= len(events) <= 20, len(events)


async def test_stop_while_thinking_leaves_a_finished_step(chat, gemini):
    many = [f"thought {i}. " for i in range(200)]
    gemini.script(Reply(ANSWER, thoughts=many, delay=0.05))
    chat.mark()
    await chat.send("Think hard")
    await chat.wait_for(
        lambda: any("thought 3." in s["output"] for s in thought_steps(chat)), what="thinking"
    )
    await chat.stop()
    await chat.wait_idle()
    await chat.wait_for(
        lambda: any(s["name"] == "Stopped while thinking" for s in thought_steps(chat)),
        what="the stopped step",
    )
    (step,) = thought_steps(chat)
    assert step["end"]
    assert "thought 3." in step["output"] and "thought 199." not in step["output"]
    assert [m.content for m in chat.assistant_messages()][-1] == "*Stopped before any answer.*"


async def test_a_drop_while_thinking_says_so_in_the_step_and_the_notice(chat, gemini):
    gemini.script(Reply(chunks=[], thoughts=THOUGHTS, delay=0.1, ending="drop"))
    replies = await chat.ask("Think and fail")
    assert [m.is_error for m in replies] == [True]
    # Gemini was reached and had begun: not "couldn't reach Gemini".
    assert "dropped before the answer was complete" in replies[0].content
    (step,) = thought_steps(chat)
    assert step["name"] == "Thinking cut off"
    assert step["output"] == "".join(THOUGHTS)


async def test_with_show_thoughts_off_no_step_and_no_include_thoughts(start_app_with, gemini):
    app = start_app_with(SHOW_THOUGHTS="false")
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages)
    # A server that sends thoughts unasked (the recording) is still not shown them.
    gemini.script(recording("thoughts_stream"), Reply(ANSWER, thoughts=THOUGHTS))
    first = await client.ask("你好")
    assert [m.content for m in first] == ["你好！有什么我可以帮助你的吗？"]
    second = await client.ask("Otters?")
    assert [m.content for m in second] == [ANSWER]
    for request in await gemini.arrived(2):
        assert "extra_body" not in request.body
    assert thought_steps(client) == []
    await client.disconnect()


async def test_two_replies_at_once_each_get_their_own_thoughts(app, gemini):
    clients = [await ChatClient(app.url).connect() for _ in range(2)]
    for client in clients:
        await client.wait_for(client.assistant_messages)
    gemini.script(
        Reply("A.", thoughts=["alpha ", "thinking"], delay=0.05),
        Reply("B.", thoughts=["beta ", "thinking"], delay=0.05),
    )
    await asyncio.gather(*(c.ask(f"Q{i}") for i, c in enumerate(clients)))
    outputs = sorted(thought_steps(c)[0]["output"] for c in clients)
    assert outputs == ["alpha thinking", "beta thinking"]
    for client in clients:
        await client.disconnect()
