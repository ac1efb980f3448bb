"""Tool calls, seen in Chromium through Chainlit's real frontend: a step per call, there while
it runs, then with its arguments, result, duration or error; Allow / Deny before a tool that
needs approval; all of it back when the chat is reloaded or reopened from the sidebar. Beside
them, what one step costs in socket events."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from playwright.async_api import expect

from tests.app_process import ROOT, start_app
from tests.conftest import app_env
from tests.fake_gemini import Reply, ToolCall, tool_call_reply
from tests.test_browser import type_and_send
from tests.test_page import open_chat, screenshot

# Short, so that "no answer" is quick to see; long enough to click on a busy machine.
APPROVAL_WAIT = 6
ANSWERS = '.step[data-step-type="assistant_message"]'
QUESTIONS = '.step[data-step-type="system_message"]'


@pytest.fixture(scope="module")
def tools_app(fake_gemini_server):
    """The app with the tests' own tools (tests/sample_tools.py) and a short approval wait."""
    server = start_app(
        app_env(
            fake_gemini_server,
            TOOL_MODULES="tests.sample_tools",
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


async def opened(step):
    """The step, unfolded (a step loads folded)."""
    trigger = title(step)
    if await trigger.get_attribute("data-state") != "open":
        await trigger.click()
    await expect(trigger).to_have_attribute("data-state", "open")
    return step


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
    gemini.script(
        tool_call_reply(ToolCall("slow_tool", {"seconds": 3}), shape="openai"),
        Reply(text="I waited three seconds."),
        tool_call_reply(
            ToolCall("lookup_weather", {"city": "Oslo"}), ToolCall("broken_tool"), shape="openai"
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
    assert len(gemini.requests) == 1
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
    follow_up = (await gemini.arrived(2))[1]
    assert list(tool_results(follow_up).values()) == ["waited 3.0 s"]
    await screenshot(page, "tool-done.png")
    second_slow = await opened(tool_steps(second, "slow_tool"))
    await expect(second_slow).to_contain_text("waited 3.0 s")
    await second.close()

    # Two calls in one turn: a step each; the failing one says why, in red, and the answer goes
    # on with the other's result.
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
    await expect(title(broken)).to_have_class(re.compile("text-red-500"))
    await expect(title(weather)).not_to_have_class(re.compile("text-red-500"))
    results = list(tool_results((await gemini.arrived(4))[3]).values())
    assert results[0] == "Sunny in Oslo, 21 °C"
    assert "the widget is jammed" in results[1]
    await screenshot(page, "tool-two-calls.png")

    async def shows_every_step(view) -> None:
        await view.get_by_text("Oslo is sunny; the other tool is out of order.").wait_for(
            timeout=15_000
        )
        await expect(tool_steps(view)).to_have_count(3)
        slow = await opened(tool_steps(view, "slow_tool"))
        await expect(slow).to_contain_text('"seconds": 3')
        await expect(slow).to_contain_text("waited 3.0 s")
        assert await above(slow, view.locator(ANSWERS, has_text="I waited three seconds."))
        broken = await opened(tool_steps(view, "broken_tool"))
        await expect(broken).to_contain_text("the widget is jammed")
        await expect(title(broken)).to_have_class(re.compile("text-red-500"))
        weather = await opened(tool_steps(view, "lookup_weather"))
        await expect(weather).to_contain_text("Sunny in Oslo, 21 °C")

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
async def test_approval_allow_runs_deny_refuses_and_no_answer_counts_as_deny(
    browser, tools_app, gemini
):
    page = await open_chat(browser, tools_app)
    gemini.script(
        tool_call_reply(ToolCall("confirm_tool", {"action": "launch"}), shape="openai"),
        Reply(text="Launched."),
        tool_call_reply(ToolCall("confirm_tool", {"action": "erase"}), shape="openai"),
        Reply(text="I did not erase anything."),
        tool_call_reply(ToolCall("confirm_tool", {"action": "wait"}), shape="openai"),
        Reply(text="Nobody answered, so nothing ran."),
    )

    # Asked: the call and its arguments, with Allow and Deny; the tool waits for the answer.
    await type_and_send(page, "Launch it")
    question = page.locator(QUESTIONS, has_text="launch").last
    allow = question.get_by_role("button", name="Allow")
    await expect(allow).to_be_visible(timeout=15_000)
    await expect(question.get_by_role("button", name="Deny")).to_be_visible()
    await expect(question).to_contain_text("Allow confirm_tool to run with these arguments?")
    await expect(question).to_contain_text('"action": "launch"')
    assert len(gemini.requests) == 1
    await screenshot(page, "approval-asked.png")
    await allow.click()
    await page.locator(ANSWERS, has_text="Launched.").wait_for(timeout=15_000)
    await expect(question).to_contain_text("Allowed")
    await expect(question.get_by_role("button")).to_have_count(0)
    launched = await opened(tool_steps(page, "confirm_tool").nth(0))
    await expect(launched).to_contain_text("done: launch")
    assert list(tool_results((await gemini.arrived(2))[1]).values()) == ["done: launch"]
    await screenshot(page, "approval-allowed.png")

    # Denied: the tool does not run, the model is told so and answers all the same.
    await type_and_send(page, "Erase it")
    question = page.locator(QUESTIONS, has_text="erase").last
    await question.get_by_role("button", name="Deny").click(timeout=15_000)
    await page.locator(ANSWERS, has_text="I did not erase anything.").wait_for(timeout=15_000)
    await expect(question).to_contain_text("Denied")
    await expect(question.get_by_role("button")).to_have_count(0)
    erased = await opened(tool_steps(page, "confirm_tool").nth(1))
    await expect(erased).to_contain_text("Denied")
    await expect(title(erased)).to_have_class(re.compile("text-red-500"))
    (refusal,) = tool_results((await gemini.arrived(4))[3]).values()
    assert "did not allow" in refusal and "done:" not in refusal
    await screenshot(page, "approval-denied.png")

    # No answer: after the wait, the buttons go and the call counts as denied.
    await type_and_send(page, "Wait for me")
    question = page.locator(QUESTIONS, has_text="wait").last
    await expect(question.get_by_role("button", name="Allow")).to_be_visible(timeout=15_000)
    await page.locator(ANSWERS, has_text="Nobody answered").wait_for(
        timeout=(APPROVAL_WAIT + 15) * 1000
    )
    await expect(question).to_contain_text(f"No answer in {APPROVAL_WAIT} s: denied")
    await expect(question.get_by_role("button")).to_have_count(0)
    (refusal,) = tool_results((await gemini.arrived(6))[5]).values()
    assert "did not allow" in refusal and "done:" not in refusal
    await screenshot(page, "approval-no-answer.png")

    # Reloaded: every question with what was decided, and no buttons.
    await page.reload()
    await page.get_by_text("Nobody answered, so nothing ran.").wait_for(timeout=15_000)
    questions = page.locator(QUESTIONS)
    await expect(questions).to_have_count(3)
    for index, outcome in enumerate(
        ("Allowed", "Denied", f"No answer in {APPROVAL_WAIT} s: denied")
    ):
        await expect(questions.nth(index)).to_contain_text(outcome)
    await expect(page.get_by_role("button", name="Allow")).to_have_count(0)
    await expect(await opened(tool_steps(page, "confirm_tool").nth(0))).to_contain_text(
        "done: launch"
    )
    await screenshot(page, "approval-reloaded.png")


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
    assert quick["output"].startswith("Done in 0.0 s")
    assert "Sunny in Oslo, 21 °C" in quick["output"]
    assert all(s["end"] is None for s in sent[1:])  # shown as running
    assert all(u["end"] is not None and "waited 1 s" in u["output"] for u in updated)


async def test_a_result_shows_as_text_shortened_and_an_error_as_a_line(chainlit_context):
    from gemini_chat.config import Settings
    from gemini_chat.toolsteps import DISPLAY_MAX_CHARS, ToolSteps

    steps = ToolSteps("run-step", Settings())
    hostile = "```\n![x](https://attacker.example/leak.png) <b>bold</b>\n" + "y" * 10_000
    await steps.started("call_1", "fetch_page", '{"url": "https://example.org"}')
    await steps.finished("call_1", hostile, None, 0.4)
    await steps.started("call_2", "broken_tool", "{}")
    await steps.finished("call_2", "Error: broken_tool failed", "RuntimeError: the *widget*", 0.1)
    await steps.started("call_3", "slow_tool", "not json {")
    await steps.finished("call_3", "", "Stopped", 12.3)

    shown, failed, stopped = (c.args[0] for c in chainlit_context.emitter.send_step.await_args_list)
    # The result in a code block no backtick inside it can close: nothing in it renders.
    fence = "````"
    assert shown["output"].startswith(f"Done in 0.4 s\n\n{fence}text\n```\n![x]")
    assert f"the first {DISPLAY_MAX_CHARS:,} of {len(hostile):,} characters" in shown["output"]
    assert len(shown["output"]) < DISPLAY_MAX_CHARS + 200
    assert failed["isError"] is True
    assert failed["output"] == r"**Failed:** RuntimeError\: the \*widget\* (0.1 s)"
    assert stopped["isError"] is True and stopped["output"] == "Stopped after 12 s"
    assert stopped["input"] == "```text\nnot json {\n```"
