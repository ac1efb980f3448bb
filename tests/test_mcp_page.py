"""MCP servers as a person sees them, in Chromium through Chainlit's real frontend: an answer
that used an MCP server's tool, and the notice for a server that is not there."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.fake_gemini import Reply, ToolCall, tool_call_reply
from tests.test_browser import reload_chat, type_and_send
from tests.test_mcp import NOTE, stdio_entry, tool_results, write_config
from tests.test_page import open_chat, screenshot

NOTICE = (
    "The tool server 'broken' is not available (it could not be started); answering without it."
)


@pytest.mark.browser
async def test_an_answer_uses_an_mcp_tool_and_a_missing_server_shows_its_notice(
    tmp_path, browser, gemini, start_app_with
):
    path = write_config(
        tmp_path,
        {"notes": stdio_entry(tmp_path), "broken": {"command": str(tmp_path / "no-such-server")}},
    )
    app = start_app_with(MCP_SERVERS_FILE=path, TOOLS="none")
    page = await open_chat(browser, app)
    gemini.script(
        tool_call_reply(
            ToolCall("mcp_notes__lookup_note", {"key": "launch"}, id="call_1"), shape="openai"
        ),
        Reply("The launch is on Tuesday at 10:00, says the notebook."),
    )
    await type_and_send(page, "When is the launch?")

    answer = page.get_by_text("The launch is on Tuesday at 10:00, says the notebook.")
    notice = page.get_by_text(NOTICE, exact=True)
    await expect(notice).to_be_visible()
    await expect(answer).to_be_visible()
    _, follow_up = await gemini.arrived(2)
    assert tool_results(follow_up) == {"call_1": NOTE}
    await screenshot(page, "mcp-notice.png")

    # Both are kept with the chat.
    await reload_chat(page)
    await expect(page.get_by_text(NOTICE, exact=True)).to_be_visible()
    await expect(answer).to_be_visible()
