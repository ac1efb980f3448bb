"""Gemini's tool-call dialect made into what the Agents SDK expects: one index and one id per
call on the stream, and tool schemas Gemini accepts on the request.

On the stream (``CallNumbering``, one per streamed answer): Gemini sends every parallel call
without ``index`` (or each with ``index: 0``), with ``id: ""``, and long arguments as
continuation deltas that carry neither index nor id nor name. openai-agents 0.24 keys calls by
``index`` (agents/models/chatcmpl_stream_handler.py), so it would merge them into one call with
a concatenated name and broken arguments, and with no id it cannot pair a result with its call.
Each delta that names a function starts a call: it gets the next index and, when Gemini sent
none, an id ``call_<hex>``; a delta without a name continues the call its index (or, without
one, the last call) started. The call's ``extra_content`` (its thought signature) is left where
it is, so the SDK files it in that call's ``provider_data``.

On the request (``gemini_tools``): Gemini refuses parts of JSON Schema in a tool's parameters
with 400 "Invalid JSON payload received. Unknown name ..." (reported for ``$ref``, ``$defs``,
``const``, ``default``, ``examples``, ``$schema``, ``additionalProperties``,
``propertyNames``, ``exclusiveMinimum``, and ``type`` given as a list). They are rewritten into
what it takes (references inlined, ``const`` as an enum of one, exclusive bounds as bounds, a
type list as one type with ``nullable`` or as ``anyOf``) or left out. Only what Gemini is told
changes: a function tool still checks the model's arguments against its full pydantic model, an
MCP server against its own schema. The tools' own schemas are never modified.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from typing import Any

# --- the stream ----------------------------------------------------------------------------------


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


class CallNumbering:
    """Gives each tool call of one streamed answer its own index and a non-empty id."""

    __slots__ = ("_by_id", "_by_index", "_count", "_last")

    def __init__(self) -> None:
        self._count = 0
        self._last: int | None = None
        self._by_index: dict[int, int] = {}  # Gemini's index -> ours, for the call it began
        self._by_id: dict[str, int] = {}  # Gemini's non-empty ids -> ours

    def number(self, tool_calls: list[Any]) -> None:
        """Rewrite ``index`` and ``id`` of one delta's tool calls in place."""
        for call in tool_calls:
            function = call.function
            sent_id = call.id
            sent_index = call.index
            if sent_id and sent_id in self._by_id:
                # The same call again (some servers repeat id and name on every piece).
                ours = self._by_id[sent_id]
            elif function is not None and function.name:
                ours = self._count
                self._count += 1
                if sent_id:
                    self._by_id[sent_id] = ours
                else:
                    call.id = new_call_id()
            elif sent_index is not None and sent_index in self._by_index:
                ours = self._by_index[sent_index]
            elif self._last is not None:
                ours = self._last
            else:
                # A piece before any call was named: its own call, which the SDK reports as
                # a call without a function name.
                ours = self._count
                self._count += 1
            if sent_index is not None:
                self._by_index[sent_index] = ours
            self._last = ours
            call.index = ours


# --- the request ---------------------------------------------------------------------------------

# Keywords dropped from a schema: annotations and constraints Gemini refuses.
DROPPED = frozenset(
    {
        "$defs",
        "definitions",
        "$schema",
        "$id",
        "$comment",
        "default",
        "examples",
        "additionalProperties",
        "propertyNames",
    }
)
# Keywords whose value is one schema, a list of schemas, or a map of names to schemas.
ONE_SCHEMA = frozenset({"items", "not", "contains"})
SCHEMA_LIST = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
SCHEMA_MAP = frozenset({"properties", "patternProperties"})
JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}


def gemini_schema(schema: Any) -> Any:
    """``schema`` (a JSON Schema of a tool's parameters) in the part of JSON Schema Gemini takes."""
    if not isinstance(schema, dict):
        return schema
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _clean(schema, definitions, ())


def _resolve(reference: str, definitions: dict[str, Any], seen: tuple[str, ...]) -> Any:
    name = reference.rsplit("/", 1)[-1]
    if name in seen or name not in definitions:
        # A recursive (or dangling) reference cannot be inlined: any object will do, and the
        # SDK's own validation still checks what the model sends.
        return {"type": "object"}
    return _clean(definitions[name], definitions, (*seen, name))


def _clean(node: dict[str, Any], definitions: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if "$ref" in node:
        resolved = _resolve(node["$ref"], definitions, seen)
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        if not siblings:
            return resolved
        # Keywords beside the reference (a description) take precedence over the definition's.
        return {**resolved, **_clean(siblings, definitions, seen)}
    cleaned: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED:
            continue
        if key in SCHEMA_MAP and isinstance(value, dict):
            cleaned[key] = {
                name: _clean(sub, definitions, seen) if isinstance(sub, dict) else sub
                for name, sub in value.items()
            }
        elif key in ONE_SCHEMA and isinstance(value, dict):
            cleaned[key] = _clean(value, definitions, seen)
        elif key in SCHEMA_LIST and isinstance(value, list):
            cleaned[key] = [
                _clean(sub, definitions, seen) if isinstance(sub, dict) else sub for sub in value
            ]
        elif key == "const":
            cleaned["enum"] = [value]
            if "type" not in node and type(value) in JSON_TYPES:
                cleaned["type"] = JSON_TYPES[type(value)]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if bound not in node and not isinstance(value, bool):
                cleaned[bound] = value
        elif key == "type" and isinstance(value, list):
            kinds = [kind for kind in value if kind != "null"]
            if len(kinds) == 1:
                cleaned["type"] = kinds[0]
            elif kinds:
                cleaned["anyOf"] = [{"type": kind} for kind in kinds]
            if "null" in value:
                cleaned["nullable"] = True
        else:
            cleaned[key] = value
    return cleaned


def _gemini_tool(tool: Any) -> Any:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or "parameters" not in function:
        return tool
    return {**tool, "function": {**function, "parameters": gemini_schema(function["parameters"])}}


_CACHE_SIZE = 64
# The cleaned tools by the tuple of their names: the list they were cleaned from, and the result.
_cleaned: OrderedDict[tuple[Any, ...], tuple[list[Any], list[Any]]] = OrderedDict()


def gemini_tools(tools: Any) -> list[Any] | None:
    """``tools`` of a Chat Completions request with every parameters schema cleaned for Gemini,
    as plain JSON; None when they are not JSON (then they are sent as they are).

    The SDK rebuilds the list for every request, so the cleaned form is found by the tools'
    names and reused while the list equals the one it was made from: a comparison in C (about
    8 µs for six tools) instead of a walk of every schema in Python (about 50 µs; as long as
    ``json.dumps`` of the list would take as a key).
    """
    if type(tools) is not list:
        return None
    try:
        key = tuple([tool["function"]["name"] for tool in tools])
    except (KeyError, TypeError):
        key = None
    found = _cleaned.get(key) if key is not None else None
    if found is not None and found[0] == tools:
        _cleaned.move_to_end(key)
        return found[1]
    try:
        # Through JSON and back: plain dicts, lists and scalars, whatever the SDK handed over.
        cleaned = json.loads(json.dumps([_gemini_tool(tool) for tool in tools]))
    except (TypeError, ValueError):
        return None
    if key is not None:
        _cleaned[key] = (tools, cleaned)
        if len(_cleaned) > _CACHE_SIZE:
            _cleaned.popitem(last=False)
    return cleaned
