"""The agent's tools: where they are registered, and which are switched on.

Add your own here (or in a module of your own listed in ``TOOL_MODULES``)::

    from agents import function_tool

    @function_tool
    def lookup_order(order_id: str) -> str:
        \"\"\"The status of an order.\"\"\"
        ...

    TOOLS.append(lookup_order)

Mark a tool ``@function_tool(needs_approval=True)`` (or list its name in ``TOOL_APPROVAL``) and
the user is asked to Allow or Deny each call in the chat. Every tool, built-in, yours or from an
MCP server, runs through the same guard (gemini_chat/toolrun.py): time limit, result size,
errors shown in the chat and handed to the model.
"""

from __future__ import annotations

import importlib

from agents import FunctionTool

from .builtin_tools import BUILTIN_TOOLS, build_builtin_tools
from .config import ConfigError, Settings

# Your own tools: every one listed here is offered to the model in every chat.
TOOLS: list[FunctionTool] = []


def build_tools(settings: Settings) -> list[FunctionTool]:
    """The built-ins switched on in ``TOOLS``, then this module's ``TOOLS``, then the ``TOOLS``
    of each module in ``TOOL_MODULES``. Raises ConfigError for an unknown built-in, a module
    that cannot be imported or two tools of one name."""
    unknown = [name for name in settings.tools if name not in BUILTIN_TOOLS]
    if unknown:
        raise ConfigError(
            f"TOOLS={','.join(settings.tools)!r} is not valid: unknown tool {unknown[0]!r}"
            f" (built-in tools: {', '.join(BUILTIN_TOOLS)})."
        )
    builtins = build_builtin_tools(settings)
    tools = [builtins[name] for name in settings.tools] + list(TOOLS)
    for module_name in settings.tool_modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ConfigError(
                f"TOOL_MODULES={','.join(settings.tool_modules)!r} is not valid: "
                f"cannot import {module_name!r} ({error})."
            ) from None
        tools.extend(getattr(module, "TOOLS", []))
    names = [tool.name for tool in tools]
    if duplicate := next((name for name in names if names.count(name) > 1), None):
        raise ConfigError(f"Two tools are named {duplicate!r}; tool names must be unique.")
    return tools
