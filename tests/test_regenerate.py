"""Regenerate and Continue on the last answer, through the real app: what Gemini is asked, what
the history keeps, what is stored, and what a hostile or late click gets."""

from __future__ import annotations

import asyncio
import json

from gemini_chat.actions import CONTINUE_PROMPT, EARLIER_MARK
from tests.chat_client import ChatClient
from tests.db import app_database, eventually, query
from tests.fake_gemini import Reply, overloaded


def button(client: ChatClient, message_id: str, name: str) -> dict:
    [action] = [a for a in client.actions_on(message_id) if a["name"] == name]
    return action


async def offered(client: ChatClient, message_id: str, name: str) -> dict:
    await client.wait_for(
        lambda: any(a["name"] == name for a in client.actions_on(message_id)),
        what=f"{name} on the answer",
    )
    return button(client, message_id, name)


async def click(client: ChatClient, action: dict, session_id: str | None = None) -> None:
    client.mark()
    status, body = await client.call_action(action, session_id)
    assert status == 200, body


async def stored_replies(app, thread_id: str, count: int) -> list[tuple[str, dict]]:
    async def rows():
        found = await query(
            app_database(app),
            'SELECT "output", "metadata" FROM steps WHERE "threadId" = :t AND '
            '"type" = \'assistant_message\' ORDER BY "createdAt"',
            t=thread_id,
        )
        found = [(text, json.loads(meta)) for text, meta in found]
        found = [(t, m) for t, m in found if m.get("kind") in ("reply", "earlier", "notice")]
        return found if len(found) == count else None

    return await eventually(rows, what=f"{count} stored answers")


async def test_regenerate_asks_again_with_the_same_history_and_keeps_the_earlier_answer(
    app, chat, gemini
):
    gemini.script(Reply("First answer."), Reply("Old answer."), Reply("New answer."))
    await chat.ask("one")
    [old] = await chat.ask("two")
    regenerate = await offered(chat, old.id, "regenerate")
    await click(chat, regenerate)
    await chat.wait_idle()
    first_time, again = (await gemini.arrived(3))[1:]
    assert again.messages == first_time.messages  # exactly the same request
    assert again.conversation[-1] == ("user", "two")
    new = chat.assistant_messages()[-1]
    assert new.content == "New answer." and new.id != old.id
    # The earlier answer is still on screen, marked; the buttons moved to the new one.
    assert chat.messages[old.id].content == EARLIER_MARK + "Old answer."
    assert [a["name"] for a in chat.actions_on(old.id)] == ["usage"]
    await offered(chat, new.id, "regenerate")

    gemini.script(Reply("Three."))
    await chat.ask("three")
    assert (await gemini.arrived(4))[-1].conversation[1:] == [
        ("user", "one"),
        ("assistant", "First answer."),
        ("user", "two"),
        ("assistant", "New answer."),
        ("user", "three"),
    ]
    thread_id = await chat.chat_thread()
    rows = await stored_replies(app, thread_id, 4)
    question = rows[1][1]["for"]
    assert [(text, meta["kind"], meta["for"] == question) for text, meta in rows[1:3]] == [
        (EARLIER_MARK + "Old answer.", "earlier", True),
        ("New answer.", "reply", True),
    ]

    # Reopened, the history has the new answer only, and the last answer can be asked again.
    await chat.disconnect()
    reopened = ChatClient(app.url, headers=dict(chat.headers))
    await reopened.connect(thread_id=thread_id)
    three = await reopened.wait_for(
        lambda: next((m for m in reopened.messages.values() if m.content == "Three."), None),
        what="the reopened chat",
    )
    gemini.script(Reply("Three again."))
    await click(reopened, await offered(reopened, three.id, "regenerate"))
    await reopened.wait_idle()
    assert (await gemini.arrived(5))[-1].messages == gemini.requests[3].messages
    await reopened.disconnect()


async def test_a_cut_off_answer_continues_in_place_and_the_history_holds_it_whole(
    app, chat, gemini
):
    gemini.script(
        Reply(chunks=["The start", " of it"], finish_reason="length"),
        Reply(chunks=[" and", " the end."]),
        Reply("Next."),
    )
    [cut, notice] = await chat.ask("Tell me all")
    assert cut.content == "The start of it\n\n*— incomplete reply*"
    assert "length limit" in notice.content
    await click(chat, await offered(chat, notice.id, "continue"))
    await chat.wait_idle()
    asked, continuing = await gemini.arrived(2)
    assert continuing.conversation == [
        *asked.conversation,
        ("assistant", "The start of it"),
        ("user", CONTINUE_PROMPT),
    ]
    # The same message goes on; the notice about the cut is gone.
    assert chat.messages[cut.id].content == "The start of it and the end."
    assert notice.id not in chat.messages
    await offered(chat, cut.id, "regenerate")
    # One usage line for the answer, its two parts added up (the fake counts each request's
    # words as its prompt, a piece as a token, and 66 thinking tokens).
    prompts = [sum(len(t.split()) for _, t in r.conversation) for r in (asked, continuing)]
    usage = [a["label"] for a in chat.actions_on(cut.id) if a["id"].startswith("gemini-usage-")]
    assert usage == [f"{sum(prompts)} in · 4 out · 132 thinking"]
    assert "continue" not in [a["name"] for a in chat.actions_on(cut.id)]

    await chat.ask("Thanks")
    assert (await gemini.arrived(3))[-1].conversation[1:] == [
        ("user", "Tell me all"),
        ("assistant", "The start of it and the end."),
        ("user", "Thanks"),
    ]
    thread_id = await chat.chat_thread()
    expected = [("The start of it and the end.", "complete"), ("Next.", "complete")]

    async def stored():
        rows = await stored_replies(app, thread_id, 2)
        return [(text, meta.get("status")) for text, meta in rows] == expected

    await eventually(stored, what="the continued answer stored whole, the notice gone")


async def test_an_error_notice_offers_regenerate_which_asks_again(chat, gemini):
    gemini.script(overloaded(), overloaded(), overloaded(), Reply("It works now."))
    [notice] = await chat.ask("hello")
    assert notice.is_error
    assert [a["name"] for a in chat.actions_on(notice.id)] == ["regenerate"]
    await click(chat, button(chat, notice.id, "regenerate"))
    await chat.wait_idle()
    requests = await gemini.arrived(4)
    assert requests[-1].messages == requests[0].messages
    assert chat.assistant_messages()[-1].content == "It works now."


async def test_stop_works_during_a_regenerated_answer(chat, gemini):
    gemini.script(Reply("Old."), Reply(chunks=[f"w{i} " for i in range(200)], delay=0.05))
    [old] = await chat.ask("count")
    await click(chat, await offered(chat, old.id, "regenerate"))
    await chat.wait_for(lambda: chat.running, what="the page showing Stop")
    await chat.wait_for(
        lambda: "w3" in chat.assistant_messages()[-1].content, what="the new answer streaming"
    )
    await chat.stop()
    await chat.wait_idle()
    request = (await gemini.arrived(2))[-1]
    assert await asyncio.to_thread(request.disconnected.wait, 10)
    assert chat.assistant_messages()[-1].content.endswith("*— stopped*")
    assert "w199" not in chat.assistant_messages()[-1].content


async def test_clicks_on_anything_but_this_chats_last_answer_are_refused(app, chat, gemini):
    other = await ChatClient(app.url, headers=dict(chat.headers)).connect()
    await other.wait_for(other.assistant_messages, what="the other chat's welcome")
    gemini.script(Reply("Mine 1."), Reply("Mine 2."), Reply("Theirs."))
    [mine_first] = await chat.ask("a")
    first_regenerate = button(chat, mine_first.id, "regenerate")  # offered, then withdrawn
    [mine] = await chat.ask("b")
    [theirs] = await other.ask("c")
    regenerate = await offered(chat, mine.id, "regenerate")
    their_regenerate = await offered(other, theirs.id, "regenerate")

    refused = [
        first_regenerate,  # an older answer
        {**regenerate, "payload": {"answer": theirs.id}},  # another chat's answer
        {**regenerate, "payload": {"answer": [mine.id]}},
        {**regenerate, "payload": "x"},
        {**regenerate, "name": "continue"},  # not cut off
        {**their_regenerate},  # another chat's button, sent in this chat's session
    ]
    for action in refused:
        await chat.call_action(action)  # some are refused by Chainlit itself, the rest by us
    gemini.script(Reply("D."))
    await chat.ask("d")
    # Nothing was asked but the next message, with the chat's own history.
    assert len(gemini.requests) == 4
    assert gemini.requests[-1].conversation[-2:] == [("assistant", "Mine 2."), ("user", "d")]

    # The new last answer's button is accepted once; a click replayed while the answer
    # streams, and after it, is ignored.
    regenerate = await offered(chat, chat.assistant_messages()[-1].id, "regenerate")
    gemini.script(Reply(chunks=["slow ", "answer"], delay=0.5))
    await click(chat, regenerate)
    await chat.wait_for(lambda: chat.running, what="the new answer running")
    assert (await chat.call_action(regenerate))[0] == 200
    await chat.wait_idle()
    assert (await chat.call_action(regenerate))[0] == 200
    gemini.script(Reply("E."))
    await chat.ask("e")
    assert len(gemini.requests) == 6
    assert gemini.requests[-1].conversation[-2:] == [("assistant", "slow answer"), ("user", "e")]
    await other.disconnect()


async def test_another_users_session_cannot_be_clicked_in(start_app_with, gemini, tmp_path):
    from tests.test_accounts import SECRET, accounts_command

    database_url = f"sqlite+aiosqlite:///{tmp_path}/chats.db"
    for name in ("alice", "mallory"):
        assert accounts_command(database_url, "add", name, password=f"{name}-pw").returncode == 0
    app = start_app_with(DATABASE_URL=database_url, CHAINLIT_AUTH_SECRET=SECRET)
    alice = ChatClient(app.url)
    await alice.login("alice", "alice-pw")
    await alice.connect()
    await alice.wait_for(alice.assistant_messages, what="the welcome")
    mallory = ChatClient(app.url)
    await mallory.login("mallory", "mallory-pw")
    gemini.script(Reply("For Alice."))
    [answer] = await alice.ask("hi")
    regenerate = await offered(alice, answer.id, "regenerate")
    status, _ = await mallory.call_action(regenerate, session_id=alice.session_id)
    assert status == 401
    assert len(gemini.requests) == 1
    await alice.disconnect()


async def test_continue_is_offered_again_after_a_reload_and_continues_the_stored_answer(
    app, chat, gemini
):
    gemini.script(
        Reply(chunks=["Part one", " and"], finish_reason="length", prompt_tokens=40),
        Reply(chunks=[" part two."], prompt_tokens=50),
    )
    [cut, notice] = await chat.ask("Go")
    thread_id = await chat.chat_thread()
    await offered(chat, notice.id, "continue")
    await chat.disconnect()

    reopened = ChatClient(app.url, headers=dict(chat.headers))
    await reopened.connect(thread_id=thread_id)
    cont = await offered(reopened, notice.id, "continue")
    await click(reopened, cont)
    await reopened.wait_idle()
    asked, continuing = await gemini.arrived(2)
    assert continuing.conversation == [
        *asked.conversation,
        ("assistant", "Part one and"),
        ("user", CONTINUE_PROMPT),
    ]
    assert reopened.messages[cut.id].content == "Part one and part two."
    assert notice.id not in reopened.messages
    # The usage stored with the cut answer and the continuation's are added up.
    usage = [a["label"] for a in reopened.actions_on(cut.id) if a["id"].startswith("gemini-usage-")]
    assert usage == ["90 in · 3 out · 132 thinking"]
    await reopened.disconnect()


async def test_an_answer_asked_again_counts_towards_the_users_limits(start_app_with, gemini):
    app = start_app_with(USER_MESSAGES_PER_MINUTE="1")
    client = await ChatClient(app.url).connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    gemini.script(Reply("Only one."))
    [answer] = await client.ask("hello")
    first = await offered(client, answer.id, "regenerate")

    def offers() -> int:
        return sum(1 for n, d in client.events if n == "action" and d["name"] == "regenerate")

    offered_before = offers()
    await click(client, first)
    await client.wait_idle()
    notice = client.assistant_messages()[-1]
    assert notice.is_error and "You've sent 1 message in the last minute" in notice.content
    assert len(gemini.requests) == 1
    # Nothing was lost: the answer is as it was, and still offers Regenerate.
    assert client.messages[answer.id].content == "Only one."
    await client.wait_for(
        lambda: (
            offers() > offered_before
            and [a["name"] for a in client.actions_on(answer.id)].count("regenerate") == 1
        ),
        what="Regenerate offered again",
    )
    await client.disconnect()
