"""Token usage: each answer's figures from Gemini's reported usage, the chat's running total,
both stored with the chat and shown again when it is reopened; the history budget calibrated
with the prompt size Gemini reports."""

from __future__ import annotations

import json

from openai.types.chat import ChatCompletionChunk

from gemini_chat.history import History, estimate_tokens
from gemini_chat.llm import StreamReport
from gemini_chat.usage import TokenUsage, token_usage
from tests.chat_client import ChatClient
from tests.db import app_database, eventually, query
from tests.fake_gemini import Reply

RECORDED_G38 = (
    '{"choices":[{"delta":{"content":"OK.","role":"assistant"},"index":0}],"created":1788373398,'
    '"id":"x","model":"gemini-3.8-flash","object":"chat.completion.chunk",'
    '"usage":{"completion_tokens":2,"prompt_tokens":3,"total_tokens":71}}'
)


def _usage(**figures):
    return ChatCompletionChunk.model_validate(
        {
            "choices": [],
            "created": 1,
            "id": "x",
            "model": "m",
            "object": "chat.completion.chunk",
            "usage": figures,
        }
    ).usage


# --- the figures ---------------------------------------------------------------------------------


def test_thinking_is_what_the_total_counts_beyond_prompt_and_output():
    usage = ChatCompletionChunk.model_validate_json(RECORDED_G38).usage
    assert token_usage(usage) == TokenUsage(prompt=3, output=2, thinking=66)
    assert token_usage(usage).line() == "3 in · 2 out · 66 thinking"


def test_reasoning_tokens_are_the_thinking_whichever_way_completion_counts_them():
    gemini = _usage(
        prompt_tokens=1234,
        completion_tokens=56,
        total_tokens=2079,
        completion_tokens_details={"reasoning_tokens": 789},
    )
    assert token_usage(gemini) == TokenUsage(1234, 56, 789)
    # OpenAI's reading: completion_tokens includes the reasoning tokens.
    openai_style = _usage(
        prompt_tokens=1234,
        completion_tokens=845,
        total_tokens=2079,
        completion_tokens_details={"reasoning_tokens": 789},
    )
    assert token_usage(openai_style) == TokenUsage(1234, 56, 789)
    assert TokenUsage(1234, 56, 789).line() == "1,234 in · 56 out · 789 thinking"
    assert TokenUsage(12, 159, 0).line() == "12 in · 159 out"


def test_the_report_adds_up_every_attempt_and_has_none_without_usage():
    report = StreamReport()
    assert report.usage is None and report.total_tokens is None
    report.attempts = [None]
    assert report.usage is None and report.last_prompt_tokens is None
    first = _usage(prompt_tokens=10, completion_tokens=0, total_tokens=10)
    second = _usage(prompt_tokens=10, completion_tokens=5, total_tokens=40)
    report.attempts = [first, second]
    assert report.usage == TokenUsage(20, 5, 25)
    assert report.total_tokens == 50  # what the daily limit counts (limits.py)
    assert report.last_prompt_tokens == 10


def test_stored_usage_is_read_back_only_when_it_is_three_counts():
    stored = TokenUsage(5, 6, 7).as_metadata()
    assert TokenUsage.from_metadata({"usage": stored}) == TokenUsage(5, 6, 7)
    for bad in ({}, {"usage": "5"}, {"usage": {"in": 5, "out": "6", "thinking": 7}}):
        assert TokenUsage.from_metadata(bad) is None


# --- the history budget -------------------------------------------------------------------------


def test_the_window_shrinks_when_gemini_reports_more_tokens_than_the_estimate():
    history = History(token_budget=200)
    for index in range(4):
        history.record(f"question {index} " + "x" * 40, f"answer {index} " + "y" * 40)
    estimated_window = history.request_items("next")
    assert len(estimated_window) == 2 * 4 + 1  # all four turns fit the estimate
    sent = history.request_tokens
    history.calibrate(reported=sent * 2, estimated=sent)
    calibrated = history.request_items("next")
    assert len(calibrated) < len(estimated_window)
    assert calibrated[-3:] == estimated_window[-3:]  # the newest turns are kept
    # Gemini counting fewer tokens than estimated lets more of the chat in again.
    history.calibrate(reported=sent // 2, estimated=sent)
    assert len(history.request_items("next")) == len(estimated_window)
    # A turn that reported nothing leaves the calibration as it was.
    history.calibrate(reported=sent * 2, estimated=sent)
    history.calibrate(reported=None, estimated=sent)
    assert history.request_items("next") == calibrated


# --- in the running app ---------------------------------------------------------------------------


def _lines(client: ChatClient, message_id: str) -> list[str]:
    return [a["label"] for a in client.actions_on(message_id) if a["id"].startswith("gemini-")]


async def test_each_answer_shows_its_usage_and_the_last_one_the_chats_total(app, chat, gemini):
    gemini.script(
        Reply("First.", prompt_tokens=1234, completion_tokens=56, thinking_tokens=789),
        Reply("Second.", prompt_tokens=2000, completion_tokens=10, thinking_tokens=0),
    )
    [first] = await chat.ask("one")
    await chat.wait_for(lambda: len(_lines(chat, first.id)) == 2, what="the usage lines")
    assert _lines(chat, first.id) == [
        "1,234 in · 56 out · 789 thinking",
        "2,079 tokens in this chat",
    ]
    [second] = await chat.ask("two")
    await chat.wait_for(lambda: len(_lines(chat, second.id)) == 2, what="the usage lines")
    assert _lines(chat, second.id) == ["2,000 in · 10 out", "4,089 tokens in this chat"]
    # The total moved to the last answer; the first keeps its own line.
    assert _lines(chat, first.id) == ["1,234 in · 56 out · 789 thinking"]

    thread_id = await chat.chat_thread()

    async def both_stored():
        rows = await query(
            app_database(app),
            'SELECT "output", "metadata" FROM steps WHERE "threadId" = :t AND '
            "\"type\" = 'assistant_message' AND \"output\" IN ('First.', 'Second.') "
            'ORDER BY "createdAt"',
            t=thread_id,
        )
        return rows if len(rows) == 2 else None

    stored = await eventually(both_stored, what="the stored answers")
    assert [(text, json.loads(meta)["usage"]) for text, meta in stored] == [
        ("First.", {"in": 1234, "out": 56, "thinking": 789}),
        ("Second.", {"in": 2000, "out": 10, "thinking": 0}),
    ]

    # Reopened, the chat shows the same lines, and its total goes on from them.
    await chat.disconnect()
    reopened = ChatClient(app.url, headers=dict(chat.headers))
    await reopened.connect(thread_id=thread_id)
    await reopened.wait_for(lambda: len(_lines(reopened, second.id)) == 2, what="the lines")
    assert _lines(reopened, first.id) == ["1,234 in · 56 out · 789 thinking"]
    assert _lines(reopened, second.id) == ["2,000 in · 10 out", "4,089 tokens in this chat"]
    gemini.script(Reply("Third.", prompt_tokens=3000, completion_tokens=1, thinking_tokens=9))
    [third] = await reopened.ask("three")
    await reopened.wait_for(lambda: len(_lines(reopened, third.id)) == 2, what="the lines")
    assert _lines(reopened, third.id) == [
        "3,000 in · 1 out · 9 thinking",
        "7,099 tokens in this chat",
    ]
    await reopened.disconnect()


async def test_a_stream_without_usage_shows_no_figures(chat, gemini):
    gemini.script(Reply("No figures.", usage=False))
    [answer] = await chat.ask("hello")
    # The buttons came (Regenerate), but no usage line and no total: nothing is guessed.
    await chat.wait_for(lambda: chat.actions_on(answer.id), what="the answer's buttons")
    assert [a["name"] for a in chat.actions_on(answer.id)] == ["regenerate"]


async def test_the_next_request_leaves_out_old_turns_once_gemini_reports_a_larger_prompt(
    start_app_with, gemini
):
    app = start_app_with(HISTORY_TOKEN_BUDGET="150", ASSISTANT_INSTRUCTIONS="Be brief.")
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    first = "first " + "word " * 40
    gemini.script(Reply("A" * 40), Reply("B" * 40))
    await client.ask(first)
    await client.ask("second")
    # The third request is reported four times larger than the app's estimate of it.
    texts = [first, "A" * 40, "second", "B" * 40, "third"]
    estimate = sum(map(estimate_tokens, ["Be brief.", *texts]))
    gemini.script(Reply("D", prompt_tokens=estimate * 4), Reply("E"))
    await client.ask("third")
    assert [text for _, text in gemini.requests[-1].conversation[1:]] == texts
    await client.ask("fourth")
    # By the estimate alone every turn would fit (114 of 150 tokens); in Gemini's tokens only
    # the newest one does.
    assert gemini.requests[-1].conversation[1:] == [
        ("user", "third"),
        ("assistant", "D"),
        ("user", "fourth"),
    ]
    await client.disconnect()
