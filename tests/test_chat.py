"""The chat as a user sees it, against the real `chainlit run` process and the fake Gemini."""

from __future__ import annotations

from tests.chat_client import ChatClient
from tests.fake_gemini import FakeGemini, Reply

INSTRUCTIONS_START = "You are a helpful, precise assistant."


async def test_reply_streams_into_one_message_that_ends_with_the_model_text(chat, gemini):
    words = [f" word{i}" for i in range(12)]
    text = "Streaming" + "".join(words) + "."
    gemini.script(Reply(chunks=["Streaming", *words, "."], delay=0.06))

    replies = await chat.ask("stream please")

    assert [m.content for m in replies] == [text]
    reply = replies[0]
    assert not reply.is_error
    events = [
        (name, data)
        for name, data in chat.events
        if isinstance(data, dict) and data.get("id") == reply.id
    ]
    # It opens with the first token itself: no placeholder text, no empty message sent first.
    assert events[0][0] == "stream_start"
    assert events[0][1]["output"] == "Streaming"
    # And keeps streaming in several steps rather than arriving at once.
    assert sum(1 for name, _ in events if name == "stream_token") >= 4
    assert events[-1][1]["output"] == text


async def test_history_sent_on_turn_n_is_exactly_the_earlier_turns(chat, gemini):
    gemini.script(Reply("First answer."), Reply("Second answer."), Reply("Third answer."))
    await chat.ask("first question")
    await chat.ask("second question")
    await chat.ask("third question")

    third = (await gemini.arrived(3))[2]
    assert third.conversation[0][0] == "system"
    assert third.conversation[0][1].startswith(INSTRUCTIONS_START)
    assert third.conversation[1:] == [
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question"),
        ("assistant", "Second answer."),
        ("user", "third question"),
    ]
    # Plain strings, the welcome message is not part of it, nothing the UI added.
    assert all(isinstance(m["content"], str) for m in third.messages)


async def test_unusual_text_reaches_the_model_exactly_as_typed(chat, gemini):
    typed = (
        "Zoë 👩‍👩‍👧‍👦 שלום עולם مرحبا e\u0301\u0323 "
        "\u202eevil\u202c tab\there\x07bell\x1b[0m\r\nend"
    )
    replies = await chat.ask(typed)

    assert (await gemini.arrived(1))[0].conversation[-1] == ("user", typed)
    assert replies[0].content == "Echo: " + typed


async def test_empty_message_gets_a_hint_and_no_upstream_call(chat, gemini):
    for text in ["", "   ", "\n\t \u00a0", "\u200b"]:
        replies = await chat.ask(text)
        assert [m.is_error for m in replies] == [True]
        assert "empty" in replies[0].content
    assert gemini.requests == []


async def test_message_over_the_limit_is_refused_without_upstream_call(chat, gemini):
    replies = await chat.ask("x" * 100_001)
    assert len(replies) == 1 and replies[0].is_error
    assert "100,001 characters" in replies[0].content and "100,000" in replies[0].content

    # Up to six times the limit (what the longest allowed message can take as JSON): still a
    # polite refusal, not a dropped connection.
    replies = await chat.ask("y" * 600_000, timeout=30)
    assert "600,000 characters" in replies[0].content
    assert gemini.requests == []

    # A message right at the limit goes through.
    gemini.script(Reply("Fine."))
    replies = await chat.ask("z" * 100_000)
    assert [m.content for m in replies] == ["Fine."]
    assert (await gemini.arrived(1))[0].conversation[-1] == ("user", "z" * 100_000)


async def test_one_client_serves_every_message(app, gemini):
    """The client is built once: the requests of a second chat go over the keep-alive
    connections the first chat used, and no new one is opened."""
    for _ in range(2):
        client = await ChatClient(app.url).connect()
        await client.wait_for(client.assistant_messages, what="welcome")
        await client.ask("hello")
        await client.ask("again")
        await client.disconnect()
    peers = [r.peer for r in await gemini.arrived(4)]
    assert set(peers[2:]) <= set(peers[:2]), peers
    # One connection, or two when a chat's first request went while the list of models (fetched
    # as the chat opened) was still being read on the other.
    assert len(set(peers)) <= 2, peers


async def test_queued_message_waits_for_the_running_reply(chat, gemini: FakeGemini):
    gemini.script(
        Reply(chunks=["Slow", " first", " answer", " here."], delay=0.15), Reply("Second answer.")
    )
    chat.mark()
    await chat.send("first")
    await chat.wait_for(lambda: any("Slow" in m.content for m in chat.assistant_messages()))
    await chat.send("second")

    await chat.wait_for(
        lambda: any(m.content == "Second answer." for m in chat.assistant_messages()),
        what="the second answer",
    )
    first, second = await gemini.arrived(2)
    # The second request started only after the first reply was complete and recorded.
    assert first.finished.is_set()
    assert second.conversation[1:] == [
        ("user", "first"),
        ("assistant", "Slow first answer here."),
        ("user", "second"),
    ]
    contents = [m.content for m in chat.assistant_messages()]
    assert contents[-2:] == ["Slow first answer here.", "Second answer."]


async def test_a_fast_stream_is_batched_but_exact_and_its_first_token_is_not_held_back(
    chat, gemini
):
    pieces = [f" p{i}" for i in range(400)]
    gemini.script(Reply(chunks=pieces))  # as fast as the server can send

    replies = await chat.ask("fast please")

    assert [m.content for m in replies] == ["".join(pieces)]
    events = [
        (name, data)
        for name, data in chat.events
        if name in ("stream_start", "stream_token") and data.get("id") == replies[0].id
    ]
    # The first piece went out alone, at once; the rest came in a few batches, not 399 events.
    assert events[0] == ("stream_start", events[0][1])
    assert events[0][1]["output"] == pieces[0]
    assert len(events) < 40
    streamed = events[0][1]["output"] + "".join(data["token"] for _, data in events[1:])
    assert streamed == "".join(pieces)
