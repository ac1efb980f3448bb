"""Built-in tools an operator switches on with ``TOOLS``: time, calculator, fetch."""

from __future__ import annotations

from agents import FunctionTool

# By the name used in ``TOOLS``.
BUILTIN_TOOLS: dict[str, FunctionTool] = {}
