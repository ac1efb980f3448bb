"""Allow / Deny in the chat before a tool that needs confirmation runs."""

from __future__ import annotations


async def ask_approval(
    tool_name: str, arguments: str, wait_seconds: float, parent_id: str | None = None
) -> bool:
    """Show the call (tool and arguments) with Allow and Deny buttons under ``parent_id``;
    True only when the user clicks Allow within ``wait_seconds`` seconds. Deny, no answer and a
    closed tab are False. The buttons go away once answered or timed out, and what was decided
    stays readable in the chat."""
    raise NotImplementedError
