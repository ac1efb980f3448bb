"""Starters: a few ready-made first messages offered on a new chat, so a first-time user has
something to click.

They are buttons under the welcome message (Chainlit's own starters appear only on a chat with
no message at all, and every chat here opens with the welcome). Clicking one sends its message
as the user's, through the same ``on_message`` hook as a typed message: the same input checks,
limits, history and Stop. The buttons go away once the chat has its first message, typed or
clicked. ``CHAT_STARTERS`` configures them (``label|message;label|message``, ``none`` for none).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

logger = logging.getLogger("gemini_chat")

SEPARATOR = ";"
LABEL_SEPARATOR = "|"
MAX_STARTERS = 6
MAX_LABEL_CHARS = 40
SESSION_KEY = "starter_actions"
ICON = "message-square"  # Lucide's, as Chainlit's frontend draws action icons


@dataclass(frozen=True)
class Starter:
    label: str
    message: str


@dataclass
class Offer:
    """The starter buttons a chat shows. Kept in the session as an object Chainlit does not
    save into the chat's metadata, so a reopened chat offers none."""

    actions: list


DEFAULT_STARTERS = (
    Starter("Explain a concept", "Explain how vaccines train the immune system, in simple terms."),
    Starter(
        "Write some code",
        "Write a Python function that checks whether a word is a palindrome, with a few tests.",
    ),
    Starter(
        "Plan a trip",
        "Plan a relaxed three-day trip to Lisbon: one idea for each morning, afternoon and "
        "evening.",
    ),
    Starter("Summarize an idea", "Summarize the main ideas of Stoicism in five short bullets."),
)


def parse_starters(value: str) -> tuple[Starter, ...]:
    """``label|message;label|message``; ``none`` (or ``off``) for no starters."""
    if value.strip().lower() in ("none", "off"):
        return ()
    starters = []
    for entry in value.split(SEPARATOR):
        if not entry.strip():
            continue
        label, bar, message = entry.partition(LABEL_SEPARATOR)
        label, message = " ".join(label.split()), message.strip()
        if not bar or not label or not message:
            raise ValueError(f"each starter must be label|message, not {entry.strip()!r}")
        if len(label) > MAX_LABEL_CHARS:
            raise ValueError(f"a starter's label must be {MAX_LABEL_CHARS} characters at most")
        if any(s.message == message for s in starters):
            raise ValueError(f"two starters send the same message {message!r}")
        starters.append(Starter(label, message))
    if len(starters) > MAX_STARTERS:
        raise ValueError(f"at most {MAX_STARTERS} starters fit on a new chat")
    return tuple(starters)


async def offer_starters(welcome_id: str, starters: tuple[Starter, ...]) -> None:
    """Show the starters as buttons of the welcome message. Sent before the welcome itself, so
    that the welcome stays the last thing a new chat's start sends (the page draws buttons
    by the id of their message, whenever they come); remembered in the session so that they
    can be taken away once the chat begins."""
    import chainlit as cl

    # Each is named by its message: Chainlit names a chat begun by an action after the
    # action's name, as it names a typed one after its text.
    from .reconnect import stable_id

    actions = [
        cl.Action(
            name=s.message,
            payload={},
            label=s.label,
            tooltip=s.message,
            icon=ICON,
            id=stable_id(welcome_id, s.message),
        )
        for s in starters
    ]
    cl.user_session.set(SESSION_KEY, Offer(actions))
    for action in actions:
        # A page reconnecting to a restarted server still shows them: taken away before they
        # come again (the page adds buttons without looking for one of the same id).
        await action.remove()
        await action.send(for_id=welcome_id)


async def withdraw_starters() -> None:
    """Take the starter buttons away: the chat is no longer new."""
    import chainlit as cl

    actions = offered()
    cl.user_session.set(SESSION_KEY, None)  # before any await: a second click finds none
    for action in actions:
        await action.remove()


def offered() -> list:
    """The starter buttons on show in this chat."""
    import chainlit as cl

    offer = cl.user_session.get(SESSION_KEY)
    return offer.actions if isinstance(offer, Offer) else []


def install_starters(starters: tuple[Starter, ...]) -> None:
    """Register what clicking each starter does: send its message as the user's."""
    import chainlit as cl

    for starter in starters:
        cl.action_callback(starter.message)(_sender(starter))


def _sender(starter: Starter):
    async def send_starter(action) -> None:
        import chainlit as cl
        from chainlit.config import config

        if not any(shown.name == starter.message for shown in offered()):
            logger.info("Ignored a starter on a chat that has begun")
            return
        await withdraw_starters()
        session = cl.context.session
        author = session.user.identifier if session.user else "User"
        message = cl.Message(content=starter.message, author=author, type="user_message")
        await message.send()
        emitter = cl.context.emitter

        async def answer() -> None:
            # As Chainlit runs a typed message (socket.process_message): the page shows the
            # answer as running, Stop cancels it.
            await emitter.task_start()
            try:
                await config.code.on_message(message)
            finally:
                await emitter.task_end()

        session.current_task = asyncio.create_task(answer())

    return send_starter
