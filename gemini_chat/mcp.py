"""MCP servers listed by the operator (``MCP_SERVERS_FILE``): their tools join the agent's."""

from __future__ import annotations

from agents import FunctionTool

from .config import Settings


class McpServers:
    """The process's MCP servers, started on first use and shared by every chat."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def tools(self) -> tuple[list[FunctionTool], list[str]]:
        """The tools of every server that is up, for one message's turn, and a user-safe notice
        for each server that is not (it is tried again on the next message)."""
        return [], []

    async def close(self) -> None:
        """Stop every server (at shutdown)."""
