"""The README's example of your own tools, run as written: a module beside chatbot.py, named in
TOOL_MODULES, whose tools the model is offered and whose results go back to Gemini."""

from __future__ import annotations

import re
import textwrap

from tests.app_process import ROOT, app_directory, start_app
from tests.chat_client import ChatClient
from tests.conftest import app_env
from tests.fake_gemini import Reply, ToolCall, tool_call_reply


def readme_tools_example() -> str:
    """The README's Python example (the Tools section's only one), as a file's text."""
    (block,) = re.findall(
        r"^  ```python\n(.*?)^  ```$", (ROOT / "README.md").read_text(), re.M | re.S
    )
    return textwrap.dedent(block)


async def test_the_readme_example_of_your_own_tools_works_as_written(fake_gemini_server, gemini):
    directory = app_directory()
    (directory / "my_tools.py").write_text(readme_tools_example())
    # Found beside chatbot.py, as the README says: no PYTHONPATH.
    server = start_app(
        app_env(fake_gemini_server, TOOL_MODULES="my_tools", PYTHONPATH=None), directory=directory
    )
    client = await ChatClient(server.url).connect()
    try:
        await client.wait_for(client.assistant_messages, what="the welcome message")
        gemini.script(
            tool_call_reply(ToolCall("lookup_order", {"order_id": "A-1042"})),
            Reply("It has shipped."),
        )
        replies = await client.ask("Where is order A-1042?")
        assert [m.content for m in replies if m.type == "assistant_message"] == ["It has shipped."]
        first, second = await gemini.arrived(2)
        offered = [tool["function"]["name"] for tool in first.body["tools"]]
        assert offered == ["current_time", "calculate", "lookup_order", "cancel_order"]
        assert second.messages[-1]["role"] == "tool"
        assert second.messages[-1]["content"] == "shipped"
    finally:
        await client.disconnect()
        server.stop()
