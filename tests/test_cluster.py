"""Two instances of the real app behind nginx (deploy/nginx.conf) on one PostgreSQL database, in
accounts mode, driven through nginx by the socket client and by Chromium: new chats spread over
both instances and each stays on its own; logging in works through nginx; an instance killed
mid-answer hands its open page to the other instance, which shows the chat and answers the next
message with its history."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request

import pytest
from playwright.async_api import expect

from tests.chat_client import ChatClient
from tests.cluster import Cluster, cluster_env, find_nginx
from tests.conftest import app_env
from tests.db import eventually, query
from tests.fake_gemini import Reply
from tests.test_accounts import SECRET, accounts_command
from tests.test_browser import type_and_send
from tests.test_page import WELCOME, last_step, screenshot

PASSWORD = "alice-password"
INTERRUPTED_MARK = "interrupted: the server writing this answer stopped"


@pytest.fixture(scope="module")
def cluster(fake_gemini_server, postgres_cluster):
    if find_nginx() is None:
        message = "nginx is not installed (apt-get install nginx)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    database_url = postgres_cluster.database()
    added = accounts_command(database_url, "add", "alice", password=PASSWORD)
    assert added.returncode == 0, added.stderr
    env = app_env(
        fake_gemini_server,
        DATABASE_URL=database_url,
        CHAINLIT_AUTH_SECRET=SECRET,
        # Many chats of one user in a minute.
        USER_MESSAGES_PER_MINUTE="0",
        # A stream left waiting after its first pieces stays open until the instance dies.
        GEMINI_STALL_TIMEOUT="60",
        PARTIAL_SAVE_SECONDS="0.5",
    )
    cluster = Cluster(cluster_env(env), database_url=database_url).launch()
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def cluster_up(request, cluster):
    """Every instance serving when a test starts (one killed by the test before is started
    again); a failed test prints the end of each instance's log and nginx's own output."""
    for index, server in enumerate(cluster.instances):
        if server.process.poll() is not None:
            cluster.start(index)
    yield
    if getattr(request.node, "call_failed", False):
        for index, server in enumerate(cluster.instances):
            tail = "\n".join(server.log().splitlines()[-40:])
            print(f"--- end of instance {index}'s log (port {cluster.ports[index]}):\n{tail}")
        print(f"--- nginx:\n{cluster.nginx_output()[-3000:]}")


async def logged_in_page(browser, cluster: Cluster):
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    page = await context.new_page()
    await page.goto(cluster.url)
    await page.get_by_label("User name").fill("alice")
    await page.locator("#password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign In").click()
    await page.get_by_text(WELCOME).wait_for(timeout=30_000)
    return page


async def route_of(page) -> dict:
    cookies = {cookie["name"]: cookie for cookie in await page.context.cookies()}
    assert "route" in cookies, f"no route cookie among {sorted(cookies)}"
    return cookies["route"]


async def logged(cluster: Cluster, predicate, what: str, timeout: float = 10.0):
    """nginx writes a request's log line once it has ended (a websocket's when it closes)."""

    async def check():
        return predicate(cluster.served())

    try:
        return await eventually(check, timeout=timeout, what=what)
    except AssertionError as error:
        lines = "\n".join(str(r) for r in cluster.served()[-30:])
        raise AssertionError(f"{error}; nginx's log ends with:\n{lines}") from None


# --- chats spread over the instances, each on its own --------------------------------------------


async def test_new_chats_spread_over_both_instances_and_each_stays_on_its_own(cluster, gemini):
    chats: dict[str, int] = {}  # route -> the instance that served the chat
    number = 0
    # Each new browser lands where its route hashes: keep opening chats until both instances
    # have served two (four or five chats, almost always).
    while sorted(chats.values()).count(0) < 2 or sorted(chats.values()).count(1) < 2:
        assert number < 16, f"16 chats, all but a few on one instance: {chats}"
        client = ChatClient(cluster.url)
        # The first response (the login) gives the tab its route; it sends it from then on.
        await client.login("alice", PASSWORD)
        assert client.route, "nginx gave no route cookie"
        # As the browser does: long-polling, then upgraded to a websocket.
        await client.connect(transports=("polling", "websocket"))
        await client.wait_for(client.assistant_messages, what="the welcome")

        async def upgraded(client=client):
            return client.sio.transport() == "websocket"

        # The upgrade sends the client no event to wait on.
        await eventually(upgraded, what="the socket upgraded to a websocket")
        question = f"Question {number} for the cluster"
        gemini.script_for(question, Reply(f"Answer {number} from the cluster."))
        replies = await client.ask(question)
        assert [m.content for m in replies] == [f"Answer {number} from the cluster."]
        await client.disconnect()
        route = client.route

        def whole_chat(served, route=route):
            mine = [r for r in served if r.route == route]
            upgraded = any("transport=websocket" in r.uri and r.status == 101 for r in mine)
            return mine if upgraded else None

        mine = await logged(cluster, whole_chat, f"chat {number}'s websocket in nginx's log")
        # Login, polling and the websocket: every request of the chat, on one instance.
        assert mine[0].method == "POST" and mine[0].uri == "/login"
        assert any("transport=polling" in r.uri for r in mine)
        assert len({r.upstream for r in mine}) == 1, [(r.uri, r.upstreams) for r in mine]
        assert all(r.status < 400 for r in mine), [(r.uri, r.status) for r in mine]
        chats[route] = cluster.index_of(mine[0].upstream)
        number += 1
    # Metrics are for the operator's scraper, which asks each instance: never through nginx.
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, cluster.url + "/metrics", timeout=10)
    assert refused.value.code == 403
    # Every question reached Gemini once, whichever instance it went to.
    asked = [request.conversation[-1][1] for request in gemini.requests]
    assert sorted(asked) == sorted(f"Question {n} for the cluster" for n in range(number))


# --- logging in through nginx --------------------------------------------------------------------


@pytest.mark.browser
async def test_a_browser_logs_in_through_nginx_and_chats_on_one_instance(cluster, browser, gemini):
    page = await logged_in_page(browser, cluster)
    route = await route_of(page)
    # Sent back on every request of this site, never readable by scripts, not sent by other
    # sites' requests; Secure only over HTTPS.
    assert route["httpOnly"] and route["sameSite"] == "Lax" and route["path"] == "/"
    assert not route["secure"]

    gemini.script_for("Tell me about otters", Reply("Otters hold hands while they sleep."))
    await type_and_send(page, "Tell me about otters")
    await expect(last_step(page, "assistant_message")).to_have_text(
        "Otters hold hands while they sleep."
    )
    await page.wait_for_url("**/thread/*", timeout=15_000)
    await screenshot(page, "cluster-login.png")

    served = cluster.served_for(route["value"])
    assert any(r.method == "POST" and r.uri == "/login" for r in served)
    assert any(r.uri.startswith("/ws/socket.io") for r in served)
    # The page, its login, its scripts and its socket: one instance.
    assert len(cluster.instances_of(route["value"])) == 1, [(r.uri, r.upstreams) for r in served]


# --- an instance dies mid-answer -----------------------------------------------------------------


def reconnected_to(cluster: Cluster, route: str, index: int, since: float):
    """The browser's socket, opened again after ``since`` (epoch seconds) on instance ``index``."""
    address = f"127.0.0.1:{cluster.ports[index]}"

    def check(served):
        return [
            r
            for r in served
            if r.route == route
            and r.started > since
            and r.uri.startswith("/ws/socket.io")
            and r.status in (101, 200)
            and r.upstream == address
        ]

    return check


async def kill_mid_answer(cluster: Cluster, page, gemini, first: str, second: str) -> int:
    """Chat once, then ask ``second`` and kill the instance while the answer streams: its
    index. The answer shows "Sea otters use tools." and then waits for more."""
    gemini.script_for(
        first,
        Reply("Otters hold hands while they sleep."),
        Reply(chunks=["Sea otters ", "use tools."], ending="stall"),
    )
    await type_and_send(page, first)
    await expect(last_step(page, "assistant_message")).to_have_text(
        "Otters hold hands while they sleep."
    )
    await type_and_send(page, second)
    await (
        last_step(page, "assistant_message")
        .get_by_text("Sea otters use tools.")
        .wait_for(timeout=15_000)
    )
    return serving(cluster, (await route_of(page))["value"])


def serving(cluster: Cluster, route: str) -> int:
    (index,) = cluster.instances_of(route)
    return index


@pytest.mark.browser
async def test_an_instance_killed_mid_answer_hands_the_page_to_the_other_instance(
    cluster, browser, gemini
):
    page = await logged_in_page(browser, cluster)
    route = (await route_of(page))["value"]
    first, second = "Tell me about otters", "Do otters use tools?"
    index = await kill_mid_answer(cluster, page, gemini, first, second)
    other = 1 - index
    killed_at = time.time()
    cluster.kill(index)

    # The page's socket reconnects through nginx by itself, to the other instance.
    await logged(
        cluster,
        reconnected_to(cluster, route, other, killed_at),
        "the page's socket reconnected to the other instance",
        timeout=20,
    )
    # The other instance shows the chat from the database: both questions and the answer.
    chat = page.get_by_role("main")
    await chat.get_by_text("Otters hold hands while they sleep.").wait_for(timeout=15_000)
    await chat.get_by_text(first, exact=True).wait_for(timeout=15_000)
    await chat.get_by_text(second, exact=True).wait_for(timeout=15_000)
    await screenshot(page, "cluster-after-kill.png")

    # The next message is answered there, with the chat's history.
    gemini.script_for(first, Reply("Beavers build dams."))
    await type_and_send(page, "And beavers?")
    await expect(last_step(page, "assistant_message")).to_have_text("Beavers build dams.")
    request = gemini.requests[-1]
    assert request.conversation[1:3] == [
        ("user", first),
        ("assistant", "Otters hold hands while they sleep."),
    ]
    assert request.conversation[-1] == ("user", "And beavers?")
    # Every request the page made since the kill was answered by the other instance.
    after = [r for r in cluster.served_for(route) if r.started > killed_at and r.upstream]
    assert {r.upstream for r in after} == {f"127.0.0.1:{cluster.ports[other]}"}


@pytest.mark.browser
async def test_the_answer_of_a_killed_instance_is_kept_marked_interrupted(cluster, browser, gemini):
    page = await logged_in_page(browser, cluster)
    route = (await route_of(page))["value"]
    first, second = "Tell me about sea otters", "Do sea otters use tools?"
    index = await kill_mid_answer(cluster, page, gemini, first, second)
    other = 1 - index
    thread = page.url.rsplit("/", 1)[1]

    async def saved():
        rows = await query(
            cluster.database_url,
            'SELECT "output" FROM steps WHERE "threadId" = :t AND "type" = :kind',
            t=thread,
            kind="assistant_message",
        )
        return any(output == "Sea otters use tools." for (output,) in rows)

    # The answer so far is stored while it streams (PARTIAL_SAVE_SECONDS), before the kill.
    await eventually(saved, timeout=5, what="the partial answer stored while it streams")
    killed_at = time.time()
    cluster.kill(index)
    await logged(
        cluster,
        reconnected_to(cluster, route, other, killed_at),
        "the page's socket reconnected to the other instance",
        timeout=20,
    )
    answer = page.locator('.step[data-step-type="assistant_message"]', has_text="Sea otters")
    await answer.get_by_text(INTERRUPTED_MARK).wait_for(timeout=15_000)
    await expect(answer.locator(".message-content").first).to_contain_text("Sea otters use tools.")
    await screenshot(page, "cluster-interrupted.png")

    gemini.script_for(first, Reply("Beavers build dams."))
    await type_and_send(page, "And beavers?")
    await expect(last_step(page, "assistant_message")).to_have_text("Beavers build dams.")
    assert gemini.requests[-1].conversation[1:] == [
        ("user", first),
        ("assistant", "Otters hold hands while they sleep."),
        ("user", second),
        ("assistant", "Sea otters use tools."),
        ("user", "And beavers?"),
    ]
