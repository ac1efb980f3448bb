"""Running the agent's tools: the one guard every tool call goes through (approval, time limit,
result size, errors), and what the chat is told about each call as it happens.

This module is the run side and does not import chainlit; the chat side implements
``ToolObserver`` (gemini_chat/toolsteps.py: a Chainlit step per call, Allow / Deny buttons).
A call to a tool the agent does not have never reaches a guard: ``tool_error_message`` (the run
config's tool error formatter) answers it and tells the chat the same way.

``guard`` relies on two internals of openai-agents 0.24 (tests/test_contracts.py checks them):
a decorated tool's failure policy lives in ``FunctionTool._use_default_failure_error_function``
and ``_failure_error_function``, and ``copy.copy`` of a FunctionTool rebinds its invoker to the
copy, so switching the policy off on a copy makes that copy's invoker raise.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agents import FunctionTool
from agents.exceptions import ModelBehaviorError
from agents.run_config import ToolErrorFormatterArgs
from agents.tool import default_tool_error_function
from agents.tool_context import ToolContext

from .config import Settings

logger = logging.getLogger("gemini_chat")

# What the model is told of a call that did not run as asked; each says what to do next, so the
# answer goes on instead of retrying blindly.
DENIED = (
    "The user did not allow this call to {name}; it did not run. "
    "Do not call it again unless the user asks to."
)
TIMED_OUT = "Error: {name} gave no result within {seconds:g} seconds and was stopped."
FAILED = "Error: {name} failed: {reason}"
BAD_ARGUMENTS = (
    "Error: the arguments for {name} were not valid: {reason}. "
    "They must be a JSON object fitting this schema: {schema}"
)
NO_SUCH_TOOL = "Error: there is no tool named {name!r}. Use only the tools you were given."
# How long an error reason may be, for the model and on screen.
REASON_MAX_CHARS = 500
SHORTENED = (
    "\n\n[Shortened: the tool returned {total:,} characters; only the first {kept:,} are here.]"
)


class ToolObserver(Protocol):
    """What the chat shows of the tool calls of one turn. ``call_id`` is the call's stable id
    (the one sent back to Gemini with its result).

    For one call the guard calls, in order: ``approve`` (only when the tool needs approval),
    then ``started`` and ``finished``; a call that was denied gets ``finished`` (with an error)
    without ``started``. ``finished`` is always called once a call was started, also when it is
    stopped (error "Stopped")."""

    async def started(self, call_id: str, name: str, arguments: str) -> None:
        """A call began (after its approval, if it needed one): show it as running."""

    async def finished(self, call_id: str, output: str, error: str | None, seconds: float) -> None:
        """A call ended: ``output`` is what the model is given (shortened if it was long);
        ``error`` a short, user-safe reason when the call failed, timed out or was denied."""

    async def approve(self, call_id: str, name: str, arguments: str, wait_seconds: float) -> bool:
        """Ask the user whether the call may run; False on Deny or no answer in ``wait_seconds``."""


@dataclass
class TurnContext:
    """The run context of one turn (``Runner.run_streamed(context=...)``): tools reach the
    chat through it."""

    observer: ToolObserver | None = None


class ToolFailed(Exception):
    """A call did not give a result: ``output`` for the model, ``reason`` for the chat."""

    def __init__(self, output: str, reason: str) -> None:
        super().__init__(reason)
        self.output = output
        self.reason = reason


def guard(tool: FunctionTool, settings: Settings) -> FunctionTool:
    """``tool`` behind the app's guard: asked for approval in the chat when it needs one (its
    ``needs_approval``, or its name in ``TOOL_APPROVAL``), limited to ``TOOL_TIMEOUT_SECONDS``
    (or its own shorter timeout), its failures turned into a short error for the model and the
    chat, its result cut to ``TOOL_RESULT_MAX_CHARS``; the observer told as it starts and ends.

    The guarded tool never asks the SDK for approval (which would interrupt the streamed run) and
    never raises but for cancellation, so a bad call cannot end the answer.
    """
    inner = _raising(tool)
    name = tool.name
    approval = tool.needs_approval
    if name in settings.tool_approval:
        approval = True
    limit = settings.tool_timeout
    if tool.timeout_seconds:
        limit = min(limit, tool.timeout_seconds)
    max_chars = settings.tool_result_max_chars

    # Not annotated on purpose: before each call the SDK resolves the invoker's type hints to
    # choose what context to pass it (20 µs a call); without any, it passes the ToolContext.
    async def run_guarded(ctx, arguments):  # (ToolContext[TurnContext], str) -> str
        turn = ctx.context
        observer = turn.observer if isinstance(turn, TurnContext) else None
        call_id = ctx.tool_call_id
        began = time.monotonic()
        try:
            if approval is not False and await _needs_approval(approval, ctx, arguments, call_id):
                allowed = await _tell(
                    observer, "approve", call_id, name, arguments, settings.approval_timeout
                )
                if allowed is not True:
                    output = DENIED.format(name=name)
                    await _tell(observer, "finished", call_id, output, "Denied", 0.0)
                    return output
            await _tell(observer, "started", call_id, name, arguments)
            began = time.monotonic()
            error: str | None = None
            try:
                output = await _call(inner, ctx, arguments, limit)
            except ToolFailed as failure:
                output, error = failure.output, failure.reason
        except asyncio.CancelledError:
            # Stopped while it ran or while the user was asked. Shielded: a second stop must
            # not leave the step saying it is running.
            stopped = _tell(observer, "finished", call_id, "", "Stopped", _since(began))
            await asyncio.shield(stopped)
            raise
        output = shortened(output, max_chars)
        await _tell(observer, "finished", call_id, output, error, _since(began))
        return output

    guarded = copy.copy(tool)
    guarded.on_invoke_tool = run_guarded
    guarded.needs_approval = False
    guarded.timeout_seconds = None  # the guard keeps time itself
    return guarded


def guarded(tools: Iterable[FunctionTool], settings: Settings) -> list[FunctionTool]:
    return [guard(tool, settings) for tool in tools]


async def tool_error_message(args: ToolErrorFormatterArgs[Any]) -> str | None:
    """``RunConfig.tool_error_formatter``: the model called a tool the agent does not have
    (the SDK hands it this text instead of ending the run); the chat shows the call, failed.
    Other kinds keep the SDK's text (the guard leaves none of them to the SDK)."""
    if args.kind != "tool_not_found":
        return None
    output = NO_SUCH_TOOL.format(name=args.tool_name)
    turn = args.run_context.context
    observer = turn.observer if isinstance(turn, TurnContext) else None
    await _tell(observer, "started", args.call_id, args.tool_name, "")
    await _tell(observer, "finished", args.call_id, output, "There is no tool of this name.", 0.0)
    return output


async def _tell(observer: ToolObserver | None, method: str, *args: Any) -> Any:
    """Tell the chat about a call. The chat failing to show it (a tab gone mid-answer) must not
    fail the call: logged, and an approval that could not be asked counts as Deny."""
    if observer is None:
        return None
    try:
        return await getattr(observer, method)(*args)
    except Exception:
        logger.warning("The chat could not show a tool call (%s)", method, exc_info=True)
        return None


async def _call(inner: FunctionTool, ctx: ToolContext[Any], arguments: str, limit: float) -> str:
    name = inner.name
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            result = await inner.on_invoke_tool(ctx, arguments)
    except ModelBehaviorError as error:
        # The model's arguments were not JSON or did not fit the schema. The SDK's message
        # leaves out the details (they may hold user data), so the model is shown the schema
        # again to correct itself.
        reason = _short(str(error))
        logger.info("Tool %s refused its arguments: %s", name, reason)
        schema = json.dumps(inner.params_json_schema, ensure_ascii=False)
        output = BAD_ARGUMENTS.format(name=name, reason=reason, schema=schema)
        raise ToolFailed(output, reason) from None
    except Exception as error:
        if isinstance(error, TimeoutError) and deadline.expired():
            logger.warning("Tool %s gave no result within %.1fs", name, limit)
            raise ToolFailed(
                TIMED_OUT.format(name=name, seconds=limit),
                f"No result within {limit:g} s: stopped.",
            ) from None
        reason = _short(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
        logger.warning("Tool %s failed", name, exc_info=True)
        raise ToolFailed(FAILED.format(name=name, reason=reason), reason) from None
    return as_text(result)


async def _needs_approval(
    approval: Any, ctx: ToolContext[Any], arguments: str, call_id: str
) -> bool:
    """A tool's ``needs_approval``: a bool, or the SDK's policy callable (run context, parsed
    arguments, call id); a policy that fails asks, rather than runs unasked."""
    if isinstance(approval, bool):
        return approval
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
        decision = approval(ctx, parsed if isinstance(parsed, dict) else {}, call_id)
        if inspect.isawaitable(decision):
            decision = await decision
        return bool(decision)
    except Exception:
        logger.warning("Approval policy of a tool failed; asking the user", exc_info=True)
        return True


def _raising(tool: FunctionTool) -> FunctionTool:
    """A copy of ``tool`` whose failures raise instead of becoming the SDK's generic "An error
    occurred" text, so the guard can say what went wrong. A failure formatter of the tool's
    own (not the SDK's default) is kept: its author chose what the model reads."""
    uses_default = tool._use_default_failure_error_function or (
        tool._failure_error_function is default_tool_error_function
    )
    if not uses_default:
        return tool
    inner = copy.copy(tool)
    inner._use_default_failure_error_function = False
    inner._failure_error_function = None
    return inner


def as_text(result: Any) -> str:
    """A tool's result as the text Gemini's Chat Completions endpoint takes: strings as they
    are, text parts (MCP tools give them) joined, other data as JSON."""
    if isinstance(result, str):
        return result
    if isinstance(result, Mapping):
        part = _part_text(result)
        if part is not None:
            return part
    if isinstance(result, list) and result:
        parts = [_part_text(item) if isinstance(item, Mapping) else None for item in result]
        if all(part is not None for part in parts):
            return "\n".join(part for part in parts if part is not None)
    text = getattr(result, "text", None)
    if isinstance(text, str) and getattr(result, "type", None) == "text":
        return text
    if hasattr(result, "model_dump_json"):
        return result.model_dump_json()
    try:
        return json.dumps(result, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(result)


def _part_text(part: Mapping[str, Any]) -> str | None:
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        return part["text"]
    if kind in ("image", "file"):
        return f"[{kind}: not shown to the model]"
    return None


def shortened(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters, with a note saying so."""
    if len(text) <= max_chars:
        return text
    note = SHORTENED.format(total=len(text), kept=max_chars)
    kept = max(0, max_chars - len(note))
    note = SHORTENED.format(total=len(text), kept=kept)
    return text[:kept] + note


def _short(text: str) -> str:
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 1] + "…"


def _since(began: float) -> float:
    return time.monotonic() - began
