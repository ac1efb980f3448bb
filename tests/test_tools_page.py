"""Tool calls, seen in Chromium through Chainlit's real frontend: a step per call, there while
it runs, then with its arguments, result, duration or error; Allow / Deny before a tool that
needs approval; all of it back when the chat is reloaded or reopened from the sidebar. Beside
them, through the socket as the page speaks it: Stop while a question waits, who can answer it,
two questions in one turn, and what the steps cost in socket events."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from playwright.async_api import expect

from tests.app_process import ROOT, start_app
from tests.chat_client import ChatClient
from tests.conftest import app_env
from tests.fake_gemini import Reply, ToolCall, tool_call_reply
from tests.test_browser import type_and_send
from tests.test_page import open_chat, screenshot

# Short, so that "no answer" is quick to see; long enough for a busy machine to click and
# the socket tests to answer before it.
APPROVAL_WAIT = 20  # long enough for a loaded CI machine; the no-answer test waits it out
ANSWERS = '.step[data-step-type="assistant_message"]'
QUESTIONS = '.step[data-step-type="system_message"]'
# huge_tool's 10 MB, cut for the model to TOOL_RESULT_MAX_CHARS, then for the page.
SHORTENED = re.compile(r"Shortened for display: the first 2,000 of 20,000 characters\.")


@pytest.fixture(scope="module")
def tools_app(fake_gemini_server):
    """The app with the tests' own tools (tests/sample_tools.py) and a short approval wait."""
    server = start_app(
        app_env(
            fake_gemini_server,
            TOOL_MODULES="tests.sample_tools",
            TOOLS="none",  # the built-ins are not needed here
            APPROVAL_TIMEOUT_SECONDS=str(APPROVAL_WAIT),
            PYTHONPATH=str(ROOT),
        )
    )
    yield server
    server.stop()


def tool_steps(page, name: str | None = None):
    steps = page.locator('.step[data-step-type="tool"]')
    return steps.filter(has=page.locator(f"#step-{name}")) if name else steps


def title(step):
    """The step's title, a button that opens and folds it."""
    return step.locator("button").first


def answer_buttons(question):
    return question.get_by_role("button", name=re.compile("^(Allow|Deny)$"))


def error_mark(step):
    """The alert sign the page shows in place of the avatar of a step that failed."""
    return step.locator(".lucide-circle-alert")


async def opened(step):
    """The step, unfolded (a step loads folded)."""
    trigger = title(step)
    if await trigger.get_attribute("data-state") != "open":
        await trigger.click()
    await expect(trigger).to_have_attribute("data-state", "open")
    # Unfolding is animated: a screenshot waits for it (the shimmer of a running step repeats
    # for ever and is not waited for).
    await step.evaluate(
        """el => Promise.all(el.getAnimations({subtree: true})
            .filter(a => a.effect.getTiming().iterations !== Infinity)
            .map(a => a.finished))"""
    )
    return step


async def step_order(page) -> list[str]:
    """The steps below the welcome, top to bottom: their kind, and a tool step's name."""
    kinds = await page.locator(".step[data-step-type]").evaluate_all(
        """steps => steps.map(step => {
            const tool = step.dataset.stepType === 'tool'
                ? ':' + step.querySelector('button[id^="step-"], p[id^="step-"]').id.slice(5)
                : '';
            return step.dataset.stepType + tool;
        })"""
    )
    return kinds[2:]  # after the welcome and the first question


def tool_results(request) -> dict[str, str]:
    """What a request to the fake Gemini carried back from tools: call id -> content."""
    return {m["tool_call_id"]: m["content"] for m in request.messages if m["role"] == "tool"}


async def above(upper, lower) -> bool:
    top = await upper.bounding_box()
    bottom = await lower.bounding_box()
    return top is not None and bottom is not None and top["y"] + top["height"] <= bottom["y"]


@pytest.mark.browser
async def test_tool_calls_show_as_steps_live_in_a_second_tab_and_in_a_reopened_chat(
    browser, tools_app, gemini
):
    page = await open_chat(browser, tools_app)
    gemini.script_for(
        "Wait a little",
        tool_call_reply(
            ToolCall("slow_tool", {"seconds": 3}, id="call_1"),
            shape="openai",
            thoughts=["Waiting is what was asked."],
        ),
        Reply(text="I waited three seconds.", thoughts=["The wait is over."]),
        tool_call_reply(
            ToolCall("lookup_weather", {"city": "Oslo"}, id="call_2"),
            ToolCall("broken_tool", id="call_3"),
            ToolCall("huge_tool", id="call_huge"),
            shape="openai",
        ),
        Reply(text="Oslo is sunny; the other tool is out of order."),
    )
    await type_and_send(page, "Wait a little")

    # While the tool runs: its step is there, titled with its name and shimmering, with the
    # arguments, and no result yet (Gemini has not been asked again).
    slow = tool_steps(page, "slow_tool")
    await slow.wait_for(timeout=15_000)
    await expect(title(slow)).to_have_class(re.compile("loading-shimmer"))
    await opened(slow)
    await expect(slow).to_contain_text('"seconds": 3')
    assert len(requests_for(gemini, "Wait a little")) == 1
    await expect(slow).not_to_contain_text("waited")
    await screenshot(page, "tool-running.png")

    # A second tab on the same chat sees the running step too.
    await page.wait_for_url("**/thread/*", timeout=15_000)
    second = await page.context.new_page()
    await second.goto(page.url)
    await tool_steps(second, "slow_tool").wait_for(timeout=15_000)

    # Done: the result and the duration, and the answer below the step.
    answer = page.locator(ANSWERS, has_text="I waited three seconds.")
    await answer.wait_for(timeout=20_000)
    await expect(slow).to_contain_text("waited 3.0 s")
    await expect(slow).to_contain_text(re.compile(r"Done in 3\.\d s"))
    await expect(title(slow)).not_to_have_class(re.compile("loading-shimmer"))
    assert await above(slow, answer)
    follow_up = (await eventually_requests(gemini, "Wait a little", 2))[1]
    assert list(tool_results(follow_up).values()) == ["waited 3.0 s"]
    await screenshot(page, "tool-done.png")
    second_slow = await opened(tool_steps(second, "slow_tool"))
    await expect(second_slow).to_contain_text("waited 3.0 s")
    await second.close()

    # Three calls in one turn: a step each; the failing one says why, with an alert sign; a
    # long result shows its beginning and says it was shortened; the answer goes on.
    await type_and_send(page, "Weather in Oslo, and break something")
    await page.get_by_text("Oslo is sunny; the other tool is out of order.").wait_for(
        timeout=20_000
    )
    weather = await opened(tool_steps(page, "lookup_weather"))
    broken = await opened(tool_steps(page, "broken_tool"))
    await expect(weather).to_contain_text('"city": "Oslo"')
    await expect(weather).to_contain_text("Sunny in Oslo, 21 °C")
    await expect(broken).to_contain_text("Failed:")
    await expect(broken).to_contain_text("the widget is jammed")
    await expect(error_mark(broken)).to_be_visible()
    await expect(error_mark(weather)).to_have_count(0)
    huge = await opened(tool_steps(page, "huge_tool"))
    await expect(huge).to_contain_text(SHORTENED)
    results = tool_results((await eventually_requests(gemini, "Wait a little", 4))[3])
    assert results["call_2"] == "Sunny in Oslo, 21 °C"
    assert "the widget is jammed" in results["call_3"]
    await screenshot(page, "tool-two-calls.png")
    shown_live = await step_order(page)
    assert shown_live[:5] == ["llm", "tool:slow_tool", "llm", "assistant_message", "user_message"]

    async def shows_every_step(view) -> None:
        await view.get_by_text("Oslo is sunny; the other tool is out of order.").wait_for(
            timeout=15_000
        )
        # In the order they were shown live: the thinking of each round, the tool between.
        assert await step_order(view) == shown_live
        await expect(tool_steps(view)).to_have_count(4)
        slow = await opened(tool_steps(view, "slow_tool"))
        await expect(slow).to_contain_text('"seconds": 3')
        await expect(slow).to_contain_text("waited 3.0 s")
        assert await above(slow, view.locator(ANSWERS, has_text="I waited three seconds."))
        broken = await opened(tool_steps(view, "broken_tool"))
        await expect(broken).to_contain_text("the widget is jammed")
        await expect(error_mark(broken)).to_be_visible()
        weather = await opened(tool_steps(view, "lookup_weather"))
        await expect(weather).to_contain_text("Sunny in Oslo, 21 °C")
        await expect(await opened(tool_steps(view, "huge_tool"))).to_contain_text(SHORTENED)

    # Reloaded, then reopened from the sidebar: the same steps, with what they held.
    thread_id = page.url.rsplit("/", 1)[1]
    await page.reload()
    await shows_every_step(page)
    await screenshot(page, "tool-steps-reloaded.png")
    await page.locator("#header #new-chat-button").click()
    await page.get_by_role("button", name="Confirm").click()
    await page.get_by_text("Ask me anything").wait_for(timeout=15_000)
    await page.locator("#header #sidebar-trigger-button").click()
    await page.locator(f"#thread-{thread_id}").click()
    await shows_every_step(page)


@pytest.mark.browser
async def test_approval_allow_runs_deny_refuses_and_no_answer_or_a_reload_counts_as_deny(
    browser, tools_app, gemini
):
    page = await open_chat(browser, tools_app)
    gemini.script_for(
        "Launch it",
        tool_call_reply(
            ToolCall("confirm_tool", {"action": "launch"}, id="call_4"), shape="openai"
        ),
        Reply(text="Launched."),
        tool_call_reply(ToolCall("confirm_tool", {"action": "erase"}, id="call_5"), shape="openai"),
        Reply(text="I did not erase anything."),
        tool_call_reply(ToolCall("confirm_tool", {"action": "wait"}, id="call_6"), shape="openai"),
        Reply(text="Nobody answered, so nothing ran."),
        tool_call_reply(ToolCall("confirm_tool", {"action": "leave"}, id="call_7"), shape="openai"),
        Reply(text="The page went away, so nothing ran."),
    )

    # Asked: the call and its arguments, with Allow and Deny; the tool waits for the answer.
    await type_and_send(page, "Launch it")
    question = page.locator(QUESTIONS, has_text="launch").last
    allow = question.get_by_role("button", name="Allow")
    await expect(allow).to_be_visible(timeout=15_000)
    await expect(question.get_by_role("button", name="Deny")).to_be_visible()
    await expect(question).to_contain_text("Allow confirm_tool to run with these arguments?")
    await expect(question).to_contain_text('"action": "launch"')
    assert len(requests_for(gemini, "Launch it")) == 1
    await screenshot(page, "approval-asked.png")
    await allow.click()
    await page.locator(ANSWERS, has_text="Launched.").wait_for(timeout=15_000)
    await expect(question).to_contain_text("Allowed")
    await expect(answer_buttons(question)).to_have_count(0)
    launched = await opened(tool_steps(page, "confirm_tool").nth(0))
    await expect(launched).to_contain_text("done: launch")
    assert list(tool_results((await eventually_requests(gemini, "Launch it", 2))[1]).values()) == [
        "done: launch"
    ]
    await screenshot(page, "approval-allowed.png")

    # Denied: the tool does not run, the model is told so and answers all the same.
    await type_and_send(page, "Erase it")
    question = page.locator(QUESTIONS, has_text="erase").last
    await question.get_by_role("button", name="Deny").click(timeout=15_000)
    await page.locator(ANSWERS, has_text="I did not erase anything.").wait_for(timeout=15_000)
    await expect(question).to_contain_text("Denied")
    await expect(answer_buttons(question)).to_have_count(0)
    erased = await opened(tool_steps(page, "confirm_tool").nth(1))
    await expect(erased).to_contain_text("Denied")
    await expect(error_mark(erased)).to_be_visible()
    refusal = tool_results((await eventually_requests(gemini, "Launch it", 4))[3])["call_5"]
    assert "did not allow" in refusal and "done:" not in refusal
    await screenshot(page, "approval-denied.png")

    # No answer: after the wait, the buttons go and the call counts as denied. A second tab
    # following the answer shows the question, says where it can be answered, and then what
    # was decided.
    await type_and_send(page, "Wait for me")
    question = page.locator(QUESTIONS, has_text="wait").last
    await expect(question.get_by_role("button", name="Allow")).to_be_visible(timeout=15_000)
    second = await page.context.new_page()
    await second.goto(page.url)
    elsewhere = second.locator(QUESTIONS).last
    await expect(elsewhere).to_contain_text('"action": "wait"')
    await expect(elsewhere).to_contain_text("Waiting for an answer in the tab that asked.")
    await expect(answer_buttons(elsewhere)).to_have_count(0)
    await screenshot(second, "approval-second-tab.png")
    await expect(elsewhere).to_contain_text(
        f"No answer in {APPROVAL_WAIT} s: denied", timeout=(APPROVAL_WAIT + 15) * 1000
    )
    await expect(elsewhere).not_to_contain_text("Waiting for an answer")
    await second.close()
    await page.locator(ANSWERS, has_text="Nobody answered").wait_for(
        timeout=(APPROVAL_WAIT + 15) * 1000
    )
    await expect(question).to_contain_text(f"No answer in {APPROVAL_WAIT} s: denied")
    await expect(answer_buttons(question)).to_have_count(0)
    refusal = tool_results((await eventually_requests(gemini, "Launch it", 6))[5])["call_6"]
    assert "did not allow" in refusal and "done:" not in refusal
    await screenshot(page, "approval-no-answer.png")

    # Reloaded while asking: the question went to the page that is gone, so the call counts
    # as denied at once, and the reloaded page shows the answer going on.
    await type_and_send(page, "Then leave")
    question = page.locator(QUESTIONS, has_text="leave").last
    await expect(question.get_by_role("button", name="Allow")).to_be_visible(timeout=15_000)
    await page.reload()
    await page.get_by_text("The page went away, so nothing ran.").wait_for(timeout=15_000)
    refusal = tool_results((await eventually_requests(gemini, "Launch it", 8))[7])["call_7"]
    assert "did not allow" in refusal and "done:" not in refusal

    # Every question with what was decided, and no buttons.
    questions = page.locator(QUESTIONS)
    await expect(questions).to_have_count(4)
    for index, outcome in enumerate(
        (
            "Allowed",
            "Denied",
            f"No answer in {APPROVAL_WAIT} s: denied",
            "No answer: the page was closed or reloaded; denied",
        )
    ):
        await expect(questions.nth(index)).to_contain_text(outcome)
    # Each under its step, above the answer, as when it was asked.
    launched = tool_steps(page, "confirm_tool").nth(0)
    assert await above(launched, questions.nth(0))
    assert await above(questions.nth(0), page.locator(ANSWERS, has_text="Launched."))
    await expect(answer_buttons(page)).to_have_count(0)
    await expect(await opened(launched)).to_contain_text("done: launch")
    await screenshot(page, "approval-reloaded.png")


# --- who can answer, and Stop, through the socket as the page speaks it -------------------------


async def asking_client(app, on_ask) -> ChatClient:
    """A client of ``app`` that answers Chainlit's "ask" (the Allow / Deny question) with what
    ``on_ask`` returns, as the page acknowledges it with the button clicked."""
    client = ChatClient(app.url)
    client.answer_questions(on_ask)
    await client.connect()
    await client.wait_for(client.assistant_messages, what="the welcome message")
    return client


def brief(client):
    return [
        (n, d.get("type"), (d.get("output") or "")[-40:]) if isinstance(d, dict) else (n,)
        for n, d in client.events[-14:]
    ]


def shown(client: ChatClient, step_id: str) -> dict:
    """The step as the client was last sent it."""
    sent = [
        data
        for name, data in client.events
        if name in ("new_message", "update_message") and data.get("id") == step_id
    ]
    return sent[-1] if sent else {}


def tool_step_sent(client: ChatClient, name: str) -> dict:
    sent = [
        data
        for kind, data in client.events
        if kind in ("new_message", "update_message") and data.get("type") == "tool"
    ]
    return next(data for data in reversed(sent) if data["name"] == name)


async def test_stop_while_asking_ends_the_wait_and_the_call_never_runs(tools_app, gemini):
    unanswered = asyncio.get_running_loop().create_future()

    async def on_ask(data):
        return await unanswered  # a person looking at the buttons, then pressing Stop

    gemini.script_for(
        "Go",
        tool_call_reply(ToolCall("confirm_tool", {"action": "go"}, id="call_s"), shape="openai"),
        Reply(text="This is never asked for."),
    )
    client = await asking_client(tools_app, on_ask)
    try:
        client.mark()
        await client.send("Go")
        await client.wait_for(lambda: client.questions, what="the question")
        question = client.questions[0]["msg"]["id"]
        assert [a["label"] for a in client.actions_on(question)] == ["Allow", "Deny"]
        await client.stop()
        await client.wait_for(
            lambda: "Stopped: not run" in shown(client, question).get("output", ""),
            what=f"the question marked stopped (events: {brief(client)})",
        )
        assert client.actions_on(question) == []
        await client.wait_for(
            lambda: tool_step_sent(client, "confirm_tool")["output"] == "Stopped: not run",
            what="the step marked stopped",
        )
        assert tool_step_sent(client, "confirm_tool")["isError"] is True
        await client.wait_idle()
        # The tool did not run; Gemini was not asked again.
        assert len(requests_for(gemini, "Go")) == 1
        # The step was sent twice in all: waiting, then stopped.
        sent = [
            d["output"] for _, d in client.events if isinstance(d, dict) and d.get("type") == "tool"
        ]
        assert sent == ["Waiting for your approval…", "Stopped: not run"]
    finally:
        unanswered.cancel()
        await client.disconnect()


ASKED = "Go, from the tab that is asked"


def offered(client, question: str, label: str) -> dict | None:
    """The button ``label`` shown under ``question``, once it has come."""
    return next((a for a in client.actions_on(question) if a["label"] == label), None)


def requests_for(gemini, text: str) -> list:
    """The requests of the chat whose message was ``text``: a chat of an earlier test still
    winding down on the shared app must not count."""
    return [r for r in list(gemini.requests) if ("user", text) in r.conversation]


async def eventually_requests(gemini, text: str, count: int) -> list:
    deadline = asyncio.get_running_loop().time() + 15
    while len(found := requests_for(gemini, text)) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {count} request(s) for {text!r}, got {len(found)}")
        await gemini.arrived(len(gemini.requests) + 1, timeout=15)
    return found


async def test_only_the_tab_asked_can_allow_and_only_with_the_button_it_was_offered(
    tools_app, gemini
):
    reply = asyncio.get_running_loop().create_future()

    async def on_ask(data):
        return await reply

    gemini.script_for(
        ASKED,
        tool_call_reply(ToolCall("confirm_tool", {"action": "go"}, id="call_x"), shape="openai"),
        Reply(text="Not allowed, so not done."),
    )
    owner = await asking_client(tools_app, on_ask)
    other = await asking_client(tools_app, on_ask)
    try:
        await owner.send(ASKED)
        await owner.wait_for(
            lambda: owner.questions and offered(owner, owner.questions[0]["msg"]["id"], "Allow"),
            what="the question and its buttons",
        )
        question = owner.questions[0]["msg"]["id"]
        allow = offered(owner, question, "Allow")
        # Another session clicks the Allow button it learnt of, and the asked one posts it
        # over HTTP: neither is how the question is answered; the call still waits.
        for client in (other, owner):
            status, body = await client.call_action(allow, owner.session_id)
            assert status == 404 and "No callback found" in body
        assert len(owner.questions) == 1 and other.questions == []
        assert len(requests_for(gemini, ASKED)) == 1
        assert "Allowed" not in shown(owner, question).get("output", "")
        # The asked tab answers with an Allow button it was never offered: denied.
        reply.set_result({**allow, "id": "forged-id"})
        await owner.wait_for(
            lambda: shown(owner, question).get("output", "").endswith("**Denied**"),
            what="the question denied",
        )
        follow_up = (await eventually_requests(gemini, ASKED, 2))[1]
        refusal = tool_results(follow_up)["call_x"]
        assert "did not allow" in refusal and "done:" not in refusal
    finally:
        await owner.disconnect()
        await other.disconnect()


async def test_two_calls_asking_in_one_turn_are_asked_one_after_the_other(tools_app, gemini):
    first_when_second_came: list[str] = []

    async def on_ask(data):
        # The page holds one question at a time: the first is answered before the second comes.
        questions = client.questions  # this one included
        if len(questions) > 1:
            first_when_second_came.append(shown(client, questions[0]["msg"]["id"])["output"])
        allow = next(a for a in client.actions_on(data["msg"]["id"]) if a["label"] == "Allow")
        deny = next(a for a in client.actions_on(data["msg"]["id"]) if a["label"] == "Deny")
        return allow if len(questions) == 1 else deny

    gemini.script_for(
        "Do both",
        tool_call_reply(
            ToolCall("confirm_tool", {"action": "first"}, id="call_first"),
            ToolCall("confirm_tool", {"action": "second"}, id="call_second"),
            shape="openai",
        ),
        Reply(text="One done, one refused."),
    )
    client = await asking_client(tools_app, on_ask)
    try:
        await client.send("Do both")
        await client.wait_for(
            lambda: any("One done" in m.content for m in client.assistant_messages()),
            what="the answer",
        )
        assert [q["msg"]["output"] for q in client.questions] == [
            'Allow **confirm\\_tool** to run with these arguments?\n\n```json\n{\n  "action": '
            f'"{action}"\n}}\n```'
            for action in ("first", "second")
        ]
        assert len(first_when_second_came) == 1
        assert first_when_second_came[0].endswith("**Allowed**")
        results = tool_results((await eventually_requests(gemini, "Do both", 2))[1])
        assert results["call_first"] == "done: first"
        assert "did not allow" in results["call_second"]
    finally:
        await client.disconnect()


async def test_a_turn_with_three_quick_calls_costs_one_socket_event_per_call(tools_app, gemini):
    cities = ("Oslo", "Lima", "Pune")
    calls = [ToolCall("lookup_weather", {"city": c}, id=f"call_{c}") for c in cities]
    gemini.script_for(
        "Weather in three cities",
        tool_call_reply(*calls, shape="openai"),
        Reply(text="Sunny everywhere."),
    )
    client = ChatClient(tools_app.url)
    await client.connect()
    try:
        await client.wait_for(client.assistant_messages, what="the welcome message")
        client.mark()
        before = len(client.events)
        await client.send("Weather in three cities")
        await client.wait_idle()
        turn = client.events[before:]
        steps = [data for _, data in turn if isinstance(data, dict) and data.get("type") == "tool"]
        # Each call ended before it was worth showing as running: one event each, final.
        assert [s["name"] for s in steps] == ["lookup_weather"] * 3
        # Parallel calls end in the order their threads finish.
        assert sorted(s["output"].split("\n\n", 1)[1] for s in steps) == sorted(
            f"```result\nSunny in {c}, 21 °C\n```" for c in cities
        )
        assert all(s["end"] is not None for s in steps)
        print(f"socket events for a turn with three tool calls: {len(turn)}")
    finally:
        await client.disconnect()


# --- what the steps cost and hold, without a browser -------------------------------------------


async def test_a_quick_call_costs_one_socket_event_and_a_long_one_two(chainlit_context):
    from gemini_chat.config import Settings
    from gemini_chat.toolsteps import SHOW_AFTER, ToolSteps

    emitter = chainlit_context.emitter
    steps = ToolSteps("run-step", Settings())
    await steps.started("call_quick", "lookup_weather", json.dumps({"city": "Oslo"}))
    await steps.finished("call_quick", "Sunny in Oslo, 21 °C", None, 0.01)
    for call in ("call_a", "call_b", "call_c"):
        await steps.started(call, "slow_tool", '{"seconds": 1}')
    await asyncio.sleep(SHOW_AFTER * 3)
    for call in ("call_a", "call_b", "call_c"):
        await steps.finished(call, "waited 1 s", None, 1.0)

    sent = [c.args[0] for c in emitter.send_step.await_args_list]
    updated = [c.args[0] for c in emitter.update_step.await_args_list]
    assert [s["name"] for s in sent] == ["lookup_weather", "slow_tool", "slow_tool", "slow_tool"]
    assert len(updated) == 3  # the three long calls: opened, then finished
    quick = sent[0]
    assert quick["type"] == "tool" and quick["parentId"] == "run-step"
    assert quick["end"] is not None and quick["isError"] is False
    assert '"city": "Oslo"' in quick["input"]
    assert quick["output"].startswith("Done in under 0.1 s")
    assert "Sunny in Oslo, 21 °C" in quick["output"]
    assert all(s["end"] is None for s in sent[1:])  # shown as running
    assert all(u["end"] is not None and "waited 1 s" in u["output"] for u in updated)


async def test_a_result_shows_as_text_shortened_and_an_error_as_a_line(chainlit_context):
    from gemini_chat.config import Settings
    from gemini_chat.toolsteps import DISPLAY_MAX_CHARS, ToolSteps

    steps = ToolSteps("run-step", Settings())
    hostile = "```\n![x](https://attacker.example/leak.png) <b>bold</b>\n" + "y" * 10_000
    long_url = "https://example.org/" + "a" * 5_000
    await steps.started("call_1", "fetch_page", json.dumps({"url": long_url}))
    await steps.finished("call_1", hostile, None, 0.4)
    await steps.started("call_2", "broken_tool", "{}")
    await steps.finished("call_2", "Error: broken_tool failed", "RuntimeError: the *widget*", 0.1)
    await steps.started("call_3", "slow_tool", "not json {")
    await steps.finished("call_3", "", "Stopped", 12.3)

    shown, failed, stopped = (c.args[0] for c in chainlit_context.emitter.send_step.await_args_list)
    # The result in a code block no backtick inside it can close: nothing in it renders.
    fence = "````"
    assert shown["output"].startswith(f"Done in 0.4 s\n\n{fence}result\n```\n![x]")
    assert f"the first {DISPLAY_MAX_CHARS:,} of {len(hostile):,} characters" in shown["output"]
    assert len(shown["output"]) < DISPLAY_MAX_CHARS + 200
    # Long arguments too, shortened for display alike.
    assert shown["input"].startswith('```json\n{\n  "url": "https://example.org/aaa')
    assert f"the first {DISPLAY_MAX_CHARS:,} of 5,035 characters" in shown["input"]
    assert failed["isError"] is True
    assert failed["output"] == r"**Failed:** RuntimeError\: the \*widget\* (0.1 s)"
    assert stopped["isError"] is True and stopped["output"] == "Stopped after 12 s"
    assert stopped["input"] == "```text\nnot json {\n```"
