"""Allow / Deny in the chat before a tool that needs confirmation runs.

The question is a message under the tool's step, with two buttons, asked as Chainlit's
``AskActionMessage`` asks: the "ask" socket call to the tab that sent the message. The answer
can only come back as that call's acknowledgement, on that tab's socket, so no other tab,
session or user can answer it, whatever they send. While the question waits the page shows the
buttons, not Stop, and the composer is disabled (Chainlit's frontend does both). Answered or
not, the buttons go away and the message keeps the question with what was decided. A tab
following the answer (gemini_chat/live.py) sees the question, without the buttons; a closed or
reloaded tab, or a dropped connection, leaves nobody to answer it: denied at once.

How a call's arguments and result are written in the chat (code blocks nothing inside can
break out of, shortened for display) is here too, for the questions and the tool steps alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re

import chainlit as cl
from chainlit.types import AskActionSpec
from chainlit.utils import utc_now

from .live import live_replies

logger = logging.getLogger("gemini_chat")

KIND = "approval"
ALLOW = "allow_tool_call"
DENY = "deny_tool_call"
ALLOWED = "Allowed"
DENIED = "Denied"
STOPPED = "Stopped: not run"
CLOSED = "No answer: the page was closed or reloaded; denied"
ELSEWHERE = "Waiting for an answer in the tab that asked."
# How often the wait checks that the tab it asked is still open.
TAB_CHECK_SECONDS = 0.5
TAB_GONE = object()
# How much of a call's arguments or result the chat shows (the model has them whole).
DISPLAY_MAX_CHARS = 2_000
# Chainlit's own time limit on the question, a backstop behind ours (it takes whole seconds).
BACKSTOP_SECONDS = 5

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def escaped(text: str) -> str:
    """``text`` shown as typed in Markdown: no emphasis, link, image or HTML can come of it."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def fenced(text: str, language: str = "text") -> str:
    """``text`` in a code block that nothing inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def readable_arguments(arguments: str, max_chars: int = DISPLAY_MAX_CHARS) -> str:
    """A call's arguments as a code block: pretty JSON, or the text as the model wrote it;
    nothing for a call without arguments. Long ones are cut, with a note saying so."""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        text, language = arguments, "text"
    else:
        if parsed == {}:
            return ""
        text, language = json.dumps(parsed, indent=2, ensure_ascii=False), "json"
    return shortened_block(text, language, max_chars)


def shortened_block(text: str, language: str, max_chars: int = DISPLAY_MAX_CHARS) -> str:
    """``text`` as a code block, cut to ``max_chars`` with a note saying so."""
    if len(text) <= max_chars:
        return fenced(text, language)
    return (
        f"{fenced(text[:max_chars], language)}\n\n"
        f"*Shortened for display: the first {max_chars:,} of {len(text):,} characters.*"
    )


def timed_out(wait_seconds: float) -> str:
    return f"No answer in {wait_seconds:g} s: denied"


async def ask_approval(
    tool_name: str, arguments: str, wait_seconds: float, parent_id: str | None = None
) -> bool:
    """Show the call (tool and arguments) with Allow and Deny buttons under ``parent_id``;
    True only when the user clicks Allow within ``wait_seconds`` seconds. Deny, no answer and a
    closed tab are False; Stop (the turn cancelled) ends the wait with CancelledError. The
    buttons go away once answered or timed out, and what was decided stays readable in the
    chat."""
    shown = readable_arguments(arguments)
    question = (
        f"Allow **{escaped(tool_name)}** to run with these arguments?\n\n{shown}"
        if shown
        else f"Allow **{escaped(tool_name)}** to run?"
    )
    message = cl.Message(
        content=question,
        # Not an assistant message: the page puts no copy or thumbs buttons on it, and the
        # history and the export leave it out.
        type="system_message",
        metadata={"kind": KIND, "tool": tool_name},
        created_at=utc_now(),
    )
    # Set after construction: Chainlit puts a message under the current step whatever the
    # constructor was given.
    message.parent_id = parent_id
    message.wait_for_answer = True
    allow = cl.Action(name=ALLOW, payload={}, label="Allow")
    deny = cl.Action(name=DENY, payload={}, label="Deny")
    await message.send()
    # Other tabs cannot answer: they are told where the question waits.
    await _to_viewers(message, f"{question}\n\n*{ELSEWHERE}*")
    for action in (allow, deny):
        await action.send(for_id=message.id)
    spec = AskActionSpec(
        type="action",
        step_id=message.id,
        timeout=math.ceil(wait_seconds) + BACKSTOP_SECONDS,
        keys=[allow.id, deny.id],
    )
    outcome = DENIED
    allowed = False
    try:
        async with asyncio.timeout(wait_seconds):
            answer = await _answer(message.to_dict(), spec)
        # Whatever the tab sends back, only the Allow button this question offered allows.
        allowed = isinstance(answer, dict) and answer.get("id") == allow.id
        outcome = ALLOWED if allowed else CLOSED if answer is TAB_GONE else DENIED
    except TimeoutError:
        outcome = timed_out(wait_seconds)
    except asyncio.CancelledError:
        outcome = STOPPED
        raise
    finally:
        # Shielded: a second Stop must not leave the buttons on the page.
        await asyncio.shield(_settle(message, (allow, deny), question, outcome))
    logger.info("Approval for tool %s: %s", tool_name, outcome)
    return allowed


async def _answer(step: dict, spec: AskActionSpec) -> object:
    """What the tab sends back (None if nothing); ``TAB_GONE`` as soon as the tab that was
    asked is closed or reloaded: its socket, the only one that could answer, is gone."""
    from chainlit.server import sio

    socket_id = cl.context.session.socket_id
    asking = asyncio.ensure_future(cl.context.emitter.send_ask_user(step, spec))
    try:
        while True:
            done, _ = await asyncio.wait({asking}, timeout=TAB_CHECK_SECONDS)
            if done:
                return asking.result()
            if not sio.manager.is_connected(socket_id, "/"):
                return TAB_GONE
    finally:
        if not asking.done():
            asking.cancel()
            # Chainlit's own clean-up of the question (the page's busy state) runs to its end.
            await asyncio.gather(asking, return_exceptions=True)


async def _settle(message: cl.Message, actions, question: str, outcome: str) -> None:
    for action in actions:
        await action.remove()
    # Chainlit clears the question itself when it is answered, not when our time runs out or
    # the turn is stopped; the composer waits on it.
    await cl.context.emitter.clear("clear_ask")
    message.wait_for_answer = False
    message.content = f"{question}\n\n**{outcome}**"
    await message.update()
    await _to_viewers(message)


async def _to_viewers(message: cl.Message, content: str | None = None) -> None:
    """Tabs following the answer see the question (as ``content``, if given) and its outcome,
    without the buttons."""
    session = cl.context.session
    live = live_replies.watched_by(session)
    if live is not None and live.origin is session:
        step = message.to_dict()
        if content is not None:
            step["output"] = content
        await live.show_step(step)
