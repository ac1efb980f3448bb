"""Downloading a chat and sharing it, from the hostile side: over HTTP and the socket against the
real `chainlit run`, with two accounts (alice's rated chat, bob after it) and in local mode.

What a person clicks for the same features is in tests/test_export_share_page.py."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid

from tests.chat_client import ChatClient
from tests.db import eventually, execute, query
from tests.fake_gemini import Reply
from tests.test_security_data import TwoUsers, alice_rows, changed, clean_log, two_users


def _fetch(url: str, method: str, headers: dict, body: dict | None) -> tuple[int, dict, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


async def fetch(base: str, method: str, path: str, headers: dict, body: dict | None = None):
    return await asyncio.to_thread(_fetch, base + path, method, headers, body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def metadata(world: TwoUsers) -> dict:
    (row,) = await query(
        world.url, 'SELECT "metadata" FROM threads WHERE "id" = :t', t=world.thread
    )
    return row[0] if isinstance(row[0], dict) else json.loads(row[0] or "{}")


async def is_shared(world: TwoUsers) -> bool:
    return (await metadata(world)).get("is_shared") is True


async def share(world: TwoUsers, headers: dict, shared: bool) -> int:
    status, _, _ = await fetch(
        world.app.url,
        "PUT",
        "/project/thread/share",
        headers,
        {"threadId": world.thread, "isShared": shared},
    )
    return status


def not_uuids(thread: str) -> list[str]:
    return [
        "not-a-uuid",
        thread.upper(),
        thread[:-1],
        f"{thread}'%20OR%20'1'='1",
        "%2e%2e",
        "0",
    ]


async def test_only_the_owner_downloads_a_chat_by_cookie_or_bearer_token(
    tmp_path, start_app_with, gemini
):
    world = await two_users(f"sqlite+aiosqlite:///{tmp_path}/chats.db", start_app_with, gemini)
    base = world.app.url

    # Alice downloads her chat: the Markdown has the turns exactly as written.
    for login in (world.cookie(world.alice_token), bearer(world.alice_token)):
        status, headers, text = await fetch(
            base, "GET", f"/project/thread/{world.thread}/export.md", login
        )
        assert status == 200, text
        assert headers["Content-Type"].startswith("text/markdown")
        assert headers["Content-Disposition"] == 'attachment; filename="Alice-s-secret-plan.md"'
        assert text == (
            "# Alice's secret plan\n\n## You\n\nAlice's secret plan\n\n"
            "## Gemini\n\nAlice's answer.\n"
        )
    # The JSON: each message with its role, time and what is stored for it.
    status, headers, text = await fetch(
        base, "GET", f"/project/thread/{world.thread}/export.json", bearer(world.alice_token)
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    document = json.loads(text)
    assert document["id"] == world.thread and document["name"] == "Alice's secret plan"
    question, answer = document["messages"]
    assert (question["role"], question["content"], question["id"]) == (
        "user",
        "Alice's secret plan",
        world.question,
    )
    assert (answer["role"], answer["content"], answer["status"]) == (
        "assistant",
        "Alice's answer.",
        "complete",
    )
    assert answer["metadata"]["for"] == world.question
    assert answer["rating"] == {"value": 1, "comment": "Spot on"}
    assert question["createdAt"] <= answer["createdAt"]

    # Bob, however he logs in, and whatever he names, gets "not found".
    for login in (world.cookie(world.bob_token), bearer(world.bob_token), {}):
        for thread in [world.thread, *not_uuids(world.thread)]:
            for extension in ("md", "json", "txt"):
                status, _, text = await fetch(
                    base, "GET", f"/project/thread/{thread}/export.{extension}", login
                )
                expected = 401 if not login and thread == world.thread else 404
                assert status in (expected, 404, 401), (login, thread, extension, status)
                assert status != 200 and "secret" not in text.lower(), (thread, text)
        status, _, _ = await fetch(base, "GET", f"/project/thread/{world.thread}/export.md", login)
        assert status == (404 if login else 401)

    # A login that has ended downloads nothing: these routes check logins as Chainlit's do.
    path = f"/project/thread/{world.thread}/export.md"
    assert (await fetch(base, "POST", "/logout", world.cookie(world.alice_token), {}))[0] == 200
    for login in (world.cookie(world.alice_token), bearer(world.alice_token)):
        status, _, text = await fetch(base, "GET", path, login)
        assert status == 401 and "secret" not in text.lower()
    assert clean_log(world.app)


async def test_a_chat_is_visible_to_others_only_while_its_owner_shares_it(
    tmp_path, start_app_with, gemini
):
    world = await two_users(f"sqlite+aiosqlite:///{tmp_path}/chats.db", start_app_with, gemini)
    base = world.app.url
    link = f"/project/share/{world.thread}"
    bob_logins = (world.cookie(world.bob_token), bearer(world.bob_token))

    # Never shared: nothing, for bob and for nobody at all.
    for login in bob_logins:
        status, _, text = await fetch(base, "GET", link, login)
        assert status == 404 and "secret" not in text.lower()
    assert (await fetch(base, "GET", link, {}))[0] == 401
    # Bob can neither share it nor unshare it; non-UUID ids are refused.
    before = await alice_rows(world)
    for login in bob_logins:
        assert await share(world, login, True) == 404
        for thread in not_uuids(world.thread):
            status, _, _ = await fetch(
                base, "PUT", "/project/thread/share", login, {"threadId": thread, "isShared": True}
            )
            assert status == 404
            assert (await fetch(base, "GET", f"/project/share/{thread}", login))[0] == 404
    assert not await is_shared(world)

    # Alice shares it: bob reads it, and only its messages.
    assert await share(world, bearer(world.alice_token), True) == 200
    assert await is_shared(world)
    for login in bob_logins:
        status, _, text = await fetch(base, "GET", link, login)
        assert status == 200, text
        shown = json.loads(text)
        outputs = [s["output"] for s in shown["steps"] if s["type"].endswith("_message")]
        assert "Alice's secret plan" in outputs and "Alice's answer." in outputs
        assert "Spot on" not in text  # her rating's comment stays hers
        assert "userIdentifier" not in shown and "userId" not in shown
        # Not even as the author of her messages.
        assert '"alice"' not in text and {s["name"] for s in shown["steps"]} >= {"User"}
        assert set(shown["metadata"]) == {"is_shared", "shared_at"}
        # Reading is all: no download, no rating, no unsharing.
        assert (await fetch(base, "GET", f"/project/thread/{world.thread}/export.md", login))[
            0
        ] == 404
        assert await share(world, login, False) == 404
    assert await is_shared(world)
    status, _, rated = await fetch(
        base,
        "PUT",
        "/feedback",
        world.cookie(world.bob_token),
        {"sessionId": "x", "feedback": {"forId": world.run, "value": 0, "comment": "Bob was here"}},
    )
    assert status != 200 and "Bob was here" not in rated

    # Over the socket, bob can neither resume it nor write into it.
    intruder = ChatClient(base, headers=world.cookie(world.bob_token))
    intruder.sio.on("resume_thread_error", intruder._handler("resume_thread_error"))
    await intruder.connect(thread_id=world.thread)
    await intruder.wait_for(
        lambda: next((d for n, d in intruder.events if n == "resume_thread_error"), None),
        what="the resume refused",
    )
    await intruder.wait_for(intruder.assistant_messages, what="a fresh chat's welcome")
    gemini.script(Reply("Fresh answer."))
    replies = await intruder.ask("Written into her shared chat?")
    assert [m.content for m in replies] == ["Fresh answer."]
    # Gemini was sent bob's message alone, none of her chat.
    assert (await gemini.arrived(2))[-1].conversation[1:] == [
        ("user", "Written into her shared chat?")
    ]
    await intruder.disconnect()
    assert changed(before, await alice_rows(world)) == 0

    # Alice opens the chat (her session copies its metadata), unshares it in another tab, then
    # leaves: the session saved as she leaves does not share it again.
    alice = ChatClient(base, headers=world.cookie(world.alice_token))
    await alice.connect(thread_id=world.thread)
    await alice.wait_for(
        lambda: any(n == "resume_thread" for n, _ in alice.events), what="her chat resumed"
    )
    assert await share(world, world.cookie(world.alice_token), False) == 200
    gemini.script(Reply("Still hers."))
    await alice.ask("One more")
    await alice.disconnect()

    async def session_saved() -> bool:
        return (await metadata(world)).get("id") == alice.session_id

    await eventually(session_saved, what="her session saved as she left")
    for login in bob_logins:
        assert (await fetch(base, "GET", link, login))[0] == 404
    assert not await is_shared(world)
    assert clean_log(world.app)


async def test_sharing_needs_accounts_in_local_mode_downloads_work(app, gemini):
    """Local mode has one user, nobody to share with: no share button, the share routes are
    refused; the local user downloads their chats."""
    client = ChatClient(app.url)
    await client.connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    gemini.script(Reply("Local answer."))
    await client.ask("Local question")
    thread = await client.chat_thread()
    await client.disconnect()
    cookie = {"Cookie": client.headers["Cookie"]}  # the page's own login

    status, _, settings = await fetch(app.url, "GET", "/project/settings", cookie)
    assert status == 200 and json.loads(settings)["threadSharing"] is False
    status, _, text = await fetch(
        app.url,
        "PUT",
        "/project/thread/share",
        cookie,
        {"threadId": thread, "isShared": True},
    )
    assert status == 403 and "turned off" in text
    assert (await fetch(app.url, "GET", f"/project/share/{thread}", cookie))[0] == 403

    async def downloaded():
        status, _, text = await fetch(app.url, "GET", f"/project/thread/{thread}/export.md", cookie)
        return text if status == 200 and "Local answer." in text else None

    text = await eventually(downloaded, what="the chat downloaded")
    assert text == "# Local question\n\n## You\n\nLocal question\n\n## Gemini\n\nLocal answer.\n"


# --- the data layer itself, on SQLite and PostgreSQL ---------------------------------------------


async def test_the_data_layer_reads_another_users_chat_only_while_shared(database_url):
    from chainlit.context import context_var
    from chainlit.user import User

    from gemini_chat.history import load_json
    from gemini_chat.schema import upgrade_schema
    from gemini_chat.storage import ChatDataLayer
    from tests.test_security_data import acting_as, step

    await upgrade_schema(database_url)
    layer = ChatDataLayer(database_url)
    alice = await layer.create_user(User(identifier="alice"))
    bob = await layer.create_user(User(identifier="bob"))
    hers, question = str(uuid.uuid4()), str(uuid.uuid4())

    token = acting_as(alice)
    await layer.update_thread(hers, name="Her chat", user_id=alice.id)
    await layer.create_step(step(question, hers, "Her question"))
    context_var.reset(token)
    await execute(
        database_url,
        'INSERT INTO elements ("id", "threadId", "type", "name", "display") '
        f"VALUES ('{uuid.uuid4()}', '{hers}', 'file', 'her-private.pdf', 'inline')",
    )

    async def as_(user, call):
        token = acting_as(user)
        try:
            return await call()
        finally:
            context_var.reset(token)

    # Not shared: bob reads nothing, and cannot share it himself; nobody logged in, nothing.
    assert await as_(bob, lambda: layer.get_shared_thread(hers)) is None
    assert await as_(bob, lambda: layer.share_thread(hers, True)) is None
    assert await as_(bob, lambda: layer.update_thread(hers, metadata={"is_shared": True})) is None
    assert await layer.get_shared_thread(hers) is None
    # Her own metadata writes (the session saved at a disconnect) never share it either.
    await as_(alice, lambda: layer.update_thread(hers, metadata={"is_shared": True, "x": 1}))
    assert await as_(bob, lambda: layer.get_shared_thread(hers)) is None
    # The owner reads her own link at any time.
    assert (await as_(alice, lambda: layer.get_shared_thread(hers)))["id"] == hers

    assert await as_(alice, lambda: layer.share_thread(hers, True)) is True
    shown = await as_(bob, lambda: layer.get_shared_thread(hers))
    assert [s["output"] for s in shown["steps"]] == ["Her question"]
    assert shown["metadata"]["is_shared"] is True and "x" not in shown["metadata"]
    assert shown["elements"] == [] and "her-private.pdf" not in json.dumps(shown)
    # Shared is readable through its link only: the general read stays the owner's.
    assert await as_(bob, lambda: layer.get_thread(hers)) is None
    assert await layer.get_shared_thread(hers) is None
    # Her metadata writes do not unshare it; her unsharing does, and bob cannot undo that.
    await as_(alice, lambda: layer.update_thread(hers, metadata={"is_shared": None}))
    assert await as_(bob, lambda: layer.get_shared_thread(hers)) is not None
    assert await as_(alice, lambda: layer.share_thread(hers, False)) is True
    assert await as_(bob, lambda: layer.share_thread(hers, True)) is None
    assert await as_(bob, lambda: layer.get_shared_thread(hers)) is None
    kept = (await as_(alice, lambda: layer.get_thread(hers)))["metadata"]
    assert load_json(kept) == {"x": 1}  # her other metadata is untouched
    await layer.engine.dispose()


def test_the_shared_view_hook_lets_the_owner_and_anyone_while_shared():
    from chainlit.user import User

    from gemini_chat.sharing import viewable

    alice, bob = User(identifier="alice"), User(identifier="bob")
    for metadata in ({"is_shared": True}, '{"is_shared": true}'):  # PostgreSQL, SQLite
        shared = {"userIdentifier": "alice", "metadata": metadata}
        assert viewable(shared, alice) and viewable(shared, bob)
        assert not viewable(shared, None)
    for metadata in ({}, "{}", None, '{"is_shared": "yes"}', {"is_shared": False}):
        private = {"userIdentifier": "alice", "metadata": metadata}
        assert viewable(private, alice) and not viewable(private, bob)
