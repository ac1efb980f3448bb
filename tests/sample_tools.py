"""Tools the tests give the app (``TOOL_MODULES=tests.sample_tools``), one per behaviour."""

from __future__ import annotations

import asyncio

from agents import function_tool

from gemini_chat.tools import ToolError


@function_tool
def lookup_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}, 21 °C"


@function_tool
async def slow_tool(seconds: float) -> str:
    """Wait ``seconds``, then say so (a long-running tool; Stop and the time limit cut it)."""
    await asyncio.sleep(seconds)
    return f"waited {seconds} s"


@function_tool
def broken_tool() -> str:
    """A tool that fails."""
    raise RuntimeError("the widget is jammed")


@function_tool
def sold_out_tool(item: str) -> str:
    """A tool that fails with a reason meant for the user."""
    raise ToolError(f"No {item} left in stock.")


@function_tool
def huge_tool() -> str:
    """A tool whose result is 10 MB."""
    return "x" * 10_000_000


@function_tool(needs_approval=True)
def confirm_tool(action: str) -> str:
    """Do something the user must allow first."""
    return f"done: {action}"


TOOLS = [lookup_weather, slow_tool, broken_tool, sold_out_tool, huge_tool, confirm_tool]
