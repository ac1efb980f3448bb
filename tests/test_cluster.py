"""Two instances of the real app behind nginx (deploy/nginx.conf) on one PostgreSQL database, in
accounts mode, driven through nginx by the socket client and by Chromium: new chats spread over
both instances and each stays on its own; logging in works through nginx; an instance killed
mid-answer hands its open page to the other instance, which shows the chat and answers the next
message with its history; and once the killed instance is back, that page stays on the instance
that took it over (its buttons work there); a draining instance's refusal of a page load moves the
browser to the other instance too.

nginx's route cookie names an instance (i1, i2), shared by many browsers: each test browser sends
a user agent of its own (``browser_agent()``), by which nginx's log tells its requests apart."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request

import pytest
from playwright.async_api import expect

from tests.chat_client import ChatClient
from tests.cluster import Cluster, browser_agent, cluster_env, find_nginx
from tests.conftest import app_env
from tests.db import eventually, query
from tests.fake_gemini import Reply
from tests.test_accounts import SECRET, accounts_command
from tests.test_browser import type_and_send
from tests.test_page import WELCOME, last_step, screenshot

PASSWORD = "alice-password"
INTERRUPTED_MARK = "interrupted: the server writing this answer stopped"
# nginx leaves a failed instance out this long (deploy/render-nginx.sh's FAIL_TIMEOUT; 10 s by
# default): short, so that a killed instance started again is tried again soon.
FAIL_TIMEOUT = "2s"
ANSWERS = '.step[data-step-type="assistant_message"]'


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
    cluster = Cluster(
        cluster_env(env), database_url=database_url, fail_timeout=FAIL_TIMEOUT
    ).launch()
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
        print(f"--- nginx:\n{cluster.nginx_output()[-10000:]}")
        log = cluster.prefix / "logs" / "access.log"
        print("--- nginx's access log ends with:\n" + "\n".join(log.read_text().splitlines()[-60:]))


async def logged_in_page(browser, cluster: Cluster):
    context = await browser.new_context(
        viewport={"width": 1100, "height": 760}, user_agent=browser_agent()
    )
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


async def agent_of(page) -> str:
    """The user agent that tells this page's requests apart in nginx's log."""
    return await page.evaluate("navigator.userAgent")


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
    chats: dict[str, int] = {}  # browser -> the instance that served the chat
    number = 0
    # New browsers go to each instance in turn; keep opening chats until both instances have
    # served two (four, unless other requests came in between).
    while sorted(chats.values()).count(0) < 2 or sorted(chats.values()).count(1) < 2:
        assert number < 16, f"16 chats, all but a few on one instance: {chats}"
        agent = browser_agent("socket-client")
        client = ChatClient(cluster.url, headers={"User-Agent": agent})
        # The first response (the login) gives the tab its route; it sends it from then on.
        await client.login("alice", PASSWORD)
        assert client.route in (cluster.name(0), cluster.name(1)), client.route
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

        def whole_chat(served, agent=agent):
            mine = [r for r in served if r.agent == agent]
            upgraded = any("transport=websocket" in r.uri and r.status == 101 for r in mine)
            return mine if upgraded else None

        mine = await logged(cluster, whole_chat, f"chat {number}'s websocket in nginx's log")
        # Login, polling and the websocket: every request of the chat, on one instance.
        assert mine[0].method == "POST" and mine[0].uri == "/login"
        assert any("transport=polling" in r.uri for r in mine)
        assert len({r.upstream for r in mine}) == 1, [(r.uri, r.upstreams) for r in mine]
        assert all(r.status < 400 for r in mine), [(r.uri, r.status) for r in mine]
        chats[agent] = cluster.index_of(mine[0].upstream)
        # The route names the instance that served the chat.
        assert client.route == cluster.name(chats[agent])
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

    agent = await agent_of(page)
    served = cluster.served_for(agent)
    assert any(r.method == "POST" and r.uri == "/login" for r in served)
    assert any(r.uri.startswith("/ws/socket.io") for r in served)
    # The page, its login, its scripts and its socket: one instance, the one its route names.
    instances = cluster.instances_of(agent)
    assert len(instances) == 1, [(r.uri, r.upstreams) for r in served]
    (index,) = instances
    assert route["value"] == cluster.name(index)


# --- an instance dies mid-answer -----------------------------------------------------------------


def reconnected_to(cluster: Cluster, agent: str, index: int, since: float):
    """The browser's socket, opened again after ``since`` (epoch seconds) on instance ``index``."""
    address = f"127.0.0.1:{cluster.ports[index]}"

    def check(served):
        return [
            r
            for r in served
            if r.agent == agent
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
    # The page moves to the chat's own address after its first exchange; a question typed
    # while it does may be dropped with the composer it was typed in.
    await page.wait_for_url("**/thread/*", timeout=15_000)
    await type_and_send(page, second)
    await (
        last_step(page, "assistant_message")
        .get_by_text("Sea otters use tools.")
        .wait_for(timeout=15_000)
    )
    return await serving(cluster, page)


async def serving(cluster: Cluster, page) -> int:
    """The one instance that has served the page so far, which its route cookie names."""
    (index,) = cluster.instances_of(await agent_of(page))
    assert (await route_of(page))["value"] == cluster.name(index)
    return index


@pytest.mark.browser
async def test_an_instance_killed_mid_answer_hands_the_page_to_the_other_instance(
    cluster, browser, gemini
):
    page = await logged_in_page(browser, cluster)
    agent = await agent_of(page)
    first, second = "Tell me about otters", "Do otters use tools?"
    index = await kill_mid_answer(cluster, page, gemini, first, second)
    other = 1 - index
    killed_at = time.time()
    cluster.kill(index)

    # The page's socket reconnects through nginx by itself, to the other instance.
    await logged(
        cluster,
        reconnected_to(cluster, agent, other, killed_at),
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
    after = [r for r in cluster.served_for(agent) if r.started > killed_at and r.upstream]
    assert {r.upstream for r in after} == {f"127.0.0.1:{cluster.ports[other]}"}


@pytest.mark.browser
async def test_the_answer_of_a_killed_instance_is_kept_marked_interrupted(cluster, browser, gemini):
    page = await logged_in_page(browser, cluster)
    agent = await agent_of(page)
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
        reconnected_to(cluster, agent, other, killed_at),
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


# --- the killed instance comes back --------------------------------------------------------------


async def nginx_sends_new_browsers_to(cluster: Cluster, index: int) -> None:
    """Wait until nginx gives a request of a new browser (no route cookie) to instance
    ``index``: it has tried the instance again (after FAIL_TIMEOUT) and found it up."""
    probe = browser_agent("probe")
    address = cluster.address(index)

    def fetch():
        request = urllib.request.Request(cluster.url + "/health", headers={"User-Agent": probe})
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    async def served_by_it():
        await asyncio.to_thread(fetch)
        return any(r.agent == probe and r.upstream == address for r in cluster.served())

    await eventually(served_by_it, timeout=30, what=f"nginx sending a new browser to {address}")


@pytest.mark.browser
async def test_a_page_moved_by_a_failure_stays_on_its_new_instance_when_the_old_one_returns(
    cluster, browser, gemini
):
    page = await logged_in_page(browser, cluster)
    agent = await agent_of(page)
    first, later = "Tell me about herons", "And egrets?"
    gemini.script_for(
        first,
        Reply("Herons fish standing still."),
        Reply("Egrets are herons too."),
        Reply("Egrets are white herons."),
    )
    await type_and_send(page, first)
    await expect(last_step(page, "assistant_message")).to_have_text("Herons fish standing still.")
    index = await serving(cluster, page)
    other = 1 - index
    # The chat is stored (the app writes it from background tasks) before its instance dies.
    await page.wait_for_url("**/thread/*", timeout=15_000)
    thread = page.url.rsplit("/", 1)[1]

    async def stored():
        rows = await query(
            cluster.database_url,
            'SELECT "output" FROM steps WHERE "threadId" = :t AND "type" = :kind',
            t=thread,
            kind="assistant_message",
        )
        return ("Herons fish standing still.",) in rows

    await eventually(stored, what="the first answer stored")
    killed_at = time.time()
    cluster.kill(index)

    # The page moves to the other instance, and its route cookie now names that one.
    await logged(
        cluster,
        reconnected_to(cluster, agent, other, killed_at),
        "the page's socket reconnected to the other instance",
        timeout=20,
    )

    async def route_names_the_other():
        return (await route_of(page))["value"] == cluster.name(other)

    await eventually(route_names_the_other, what="the route cookie naming the other instance")

    # The killed instance is back, and nginx sends new browsers to it again.
    cluster.start(index)
    returned_at = time.time()
    await nginx_sends_new_browsers_to(cluster, index)

    # The page's next message and its Regenerate click (an HTTP request naming the page's
    # session) are both answered by the instance that holds the page's session now.
    await type_and_send(page, later)
    await expect(last_step(page, "assistant_message")).to_have_text("Egrets are herons too.")
    answer = page.locator(ANSWERS, has_text="Egrets are herons too.").last
    regenerate = answer.get_by_role("button", name="Regenerate")
    await expect(regenerate).to_be_visible(timeout=15_000)
    await regenerate.click()
    await expect(last_step(page, "assistant_message")).to_have_text(
        "Egrets are white herons.", timeout=15_000
    )
    await expect(
        page.locator(ANSWERS, has_text="Earlier answer").last.locator(".message-content").first
    ).to_contain_text("Egrets are herons too.")
    await screenshot(page, "cluster-regenerated-after-return.png")

    # Gemini was asked the regenerated answer with the same history as the answer it replaces.
    asked, regenerated = gemini.requests[-2:]
    assert asked.conversation[1:] == [
        ("user", first),
        ("assistant", "Herons fish standing still."),
        ("user", later),
    ]
    assert regenerated.messages == asked.messages

    def clicked(served):
        return [
            r
            for r in served
            if r.agent == agent and r.method == "POST" and r.uri == "/project/action"
        ]

    await logged(cluster, clicked, "the Regenerate click in nginx's log")
    since = [r for r in cluster.served_for(agent) if r.started > returned_at and r.upstream]
    assert {r.upstream for r in since} == {cluster.address(other)}, [
        (r.method, r.uri, r.upstreams) for r in since
    ]
    assert (await route_of(page))["value"] == cluster.name(other)


# --- a draining instance moves a browser's new page load -----------------------------------------


async def test_a_page_load_refused_by_a_draining_instance_moves_the_browser(cluster, gemini):
    agent = browser_agent("socket-client")
    client = ChatClient(cluster.url, headers={"User-Agent": agent})
    await client.login("alice", PASSWORD)
    index = [cluster.name(i) for i in range(cluster.size)].index(client.route)
    other = 1 - index
    # An answer that goes on writing keeps the instance draining (up to DRAIN_SECONDS).
    await client.connect()
    await client.wait_for(client.assistant_messages, what="the welcome")
    question = "Keep writing while the server stops"
    gemini.script_for(question, Reply(chunks=["Still ", "writing"], ending="stall"))
    await client.send(question)

    def writing():
        return any(m.content == "Still writing" for m in client.assistant_messages())

    await client.wait_for(writing, what="the answer streaming")
    try:
        cluster.term(index)

        async def draining():
            url = f"http://{cluster.address(index)}/readyz"
            try:
                await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
            except urllib.error.HTTPError as error:
                return error.code == 503
            return False

        await eventually(draining, what="the instance draining")
        # The browser loads a page again: its cookie names the draining instance, which refuses
        # it; the other instance answers, and the cookie now names that one.
        request = urllib.request.Request(
            cluster.url + "/", headers={"Cookie": f"route={client.route}", "User-Agent": agent}
        )
        with await asyncio.to_thread(urllib.request.urlopen, request, timeout=10) as response:
            assert response.status == 200
            cookies = response.headers.get_all("Set-Cookie") or []
        assert [c.split(";")[0] for c in cookies if c.startswith("route=")] == [
            f"route={cluster.name(other)}"
        ]

        def page_loads(served):
            return [r for r in served if r.agent == agent and r.method == "GET" and r.uri == "/"]

        (load,) = await logged(cluster, page_loads, "the page load in nginx's log")
        assert load.upstreams == [cluster.address(index), cluster.address(other)]
        assert load.status == 200
    finally:
        await client.disconnect()
        # Not left draining for the next test.
        cluster.kill(index)
