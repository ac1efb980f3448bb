"""The benchmark's tool, given to the app (``TOOL_MODULES=bench.tools``) and to the Agents SDK
alone alike: trivial, so a tool turn measures the tool path around it, not the tool."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from agents import function_tool


def clock(zone: str) -> str:
    return datetime.now(ZoneInfo(zone)).isoformat(timespec="seconds")


@function_tool
def bench_clock(zone: str) -> str:
    """The current date and time in an IANA time zone.

    Args:
        zone: The time zone, e.g. "Europe/Oslo" or "UTC".
    """
    return clock(zone)


TOOLS = [bench_clock]
