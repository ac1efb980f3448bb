"""Stop, closing the tab and reconnecting: the upstream request ends when it should, the
partial reply stays and is recorded, and nothing is lost when the network only blinks."""

from __future__ import annotations

import asyncio

from tests.chat_client import ChatClient
from tests.fake_gemini import Reply

LONG = [f" w{i}" for i in range(400)]


def shown_text(client: ChatClient) -> str:
    return next((m.content for m in client.assistant_messages() if " w" in m.content), "")


async def test_stop_cancels_upstream_and_keeps_partial_reply_in_history(chat, gemini):
    gemini.script(Reply(chunks=["Start", *LONG], delay=0.03))
    chat.mark()
    await chat.send("Write a lot")
    await chat.wait_for(lambda: shown_text(chat).count(" w") >= 5, what="some streamed words")
    await chat.stop()

    request = (await gemini.arrived(1))[0]
    # The server sees the connection close: the upstream request is cancelled, not left running.
    assert await asyncio.to_thread(request.disconnected.wait, 10)
    await chat.wait_idle()
    stopped = next(m for m in chat.assistant_messages() if m.content.startswith("Start"))
    assert stopped.content.endswith("\n\n*— stopped*")
    partial = stopped.content.removesuffix("\n\n*— stopped*")
    assert 5 <= partial.count(" w") < 400

    gemini.script(Reply("Next answer."))
    replies = await chat.ask("And now?")
    assert [m.content for m in replies if not m.is_error] == ["Next answer."]
    # The history holds exactly the partial text the user saw, without the UI's mark.
    assert (await gemini.arrived(2))[1].conversation[1:] == [
        ("user", "Write a lot"),
        ("assistant", partial),
        ("user", "And now?"),
    ]


async def test_stop_before_any_text_leaves_the_history_alternating(chat, gemini):
    gemini.script(Reply(chunks=["Late"], first_delay=30))
    chat.mark()
    await chat.send("Slow start")
    request = (await gemini.arrived(1))[0]
    await chat.stop()
    assert await asyncio.to_thread(request.disconnected.wait, 10)
    await chat.wait_idle()

    gemini.script(Reply("Fresh."))
    await chat.ask("Again")
    assert (await gemini.arrived(2))[1].conversation[1:] == [("user", "Again")]


async def test_stop_also_cancels_a_queued_message(chat, gemini):
    gemini.script(Reply(chunks=["One", *LONG], delay=0.03), Reply("must not be used"))
    chat.mark()
    await chat.send("first")
    await chat.wait_for(lambda: shown_text(chat).count(" w") >= 3)
    await chat.send("second, queued")
    await chat.stop()
    first = (await gemini.arrived(1))[0]
    assert await asyncio.to_thread(first.disconnected.wait, 10)
    # Nothing more was sent: the queued message was cancelled with the running one.
    gemini.script(Reply("Third."))
    await chat.ask("third")
    requests = await gemini.arrived(2)
    assert len(requests) == 2
    assert [c for c in requests[1].conversation[1:] if c[0] == "user"][-1] == ("user", "third")
    assert gemini.pending == 1


async def test_closing_the_tab_stops_upstream_after_the_grace_period(app, gemini):
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages)
    gemini.script(Reply(chunks=["Start", *LONG], delay=0.05))
    await client.send("Write a lot")
    await client.wait_for(lambda: shown_text(client).count(" w") >= 2)
    await client.disconnect()

    request = (await gemini.arrived(1))[0]
    # Grace period is 1.5 s in the test app; the stream alone would run 20 s.
    assert await asyncio.to_thread(request.disconnected.wait, 10)
    assert "Client gone for" in app.log()


async def test_a_brief_disconnect_that_reconnects_keeps_the_reply(app, gemini):
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages)
    words = [f" w{i}" for i in range(40)]
    gemini.script(Reply(chunks=["Start", *words], delay=0.05))
    await client.send("Write a bit")
    await client.wait_for(lambda: shown_text(client).count(" w") >= 2)
    await client.disconnect()

    # The same tab reconnects (same session id) before the grace period ends.
    again = await ChatClient(app.url, session_id=client.session_id).connect()
    request = (await gemini.arrived(1))[0]
    assert await asyncio.to_thread(request.finished.wait, 15)
    assert not request.disconnected.is_set()
    full = "Start" + "".join(words)
    await again.wait_for(
        lambda: any(m.content == full for m in again.assistant_messages()), what="the full reply"
    )
    await again.disconnect()
