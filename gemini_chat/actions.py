"""What sits under the answers: each answer's token usage, and on the last one the chat's total
and the buttons Regenerate and, for an answer cut off by the length limit, Continue.

Chainlit has no footer slot per message; it has actions, drawn in the row of copy and thumbs
buttons under the message they are sent for. The usage line and the chat's total are actions
too, with ids public/gemini-chat.js styles as small muted text (``USAGE_ID``, ``TOTAL_ID``);
the copy button copies the answer's own text, never that row. Actions are not stored with the
chat, so a reopened chat gets them again from the stored answers (``Answers.from_steps``).

A click names the answer it was offered on. The chat accepts it only for its own last answer,
once, and only while nothing runs in the chat: an id of another chat or user, an older answer
or a click replayed while a reply streams is refused (logged, nothing sent to Gemini).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import chainlit as cl

from .history import REPLY_MARKS, STOPPED_BEFORE_TEXT, load_json
from .usage import TokenUsage, chat_total, total_line

logger = logging.getLogger("gemini_chat")

REGENERATE = "regenerate"
CONTINUE = "continue"
USAGE = "usage"  # the name of the usage and total lines: clicking them does nothing
USAGE_ID = "gemini-usage-"
# The buttons of a last answer, by its id: a page that reconnected holds them under these ids.
REGENERATE_ID = "regenerate-"
CONTINUE_ID = "continue-"
TOTAL_ID = "gemini-total-"
# Put before an answer that was asked again, on screen and in storage; never sent to Gemini.
EARLIER_MARK = "*Earlier answer; a new one was asked for below.*\n\n"
# What Gemini is asked, after the cut answer, to continue it.
CONTINUE_PROMPT = (
    "Your previous answer was cut off by the length limit. Continue it exactly where it "
    "stopped, without repeating anything and without any preamble."
)


@dataclass
class LastAnswer:
    """The chat's last answer: what was asked, and what is on screen for it."""

    user_text: str
    user_message_id: str
    reply: cl.Message | None  # the answer shown, None when only a notice is
    notice: cl.Message | None  # a notice that followed it (a failure)
    truncated: bool = False  # cut off by the length limit: it can be continued
    usage: TokenUsage | None = None

    @property
    def anchor(self) -> cl.Message | None:
        """The message the buttons go on: the notice, the last thing shown, else the answer."""
        return self.notice or self.reply

    @property
    def text(self) -> str:
        """The answer's text as the history has it (without the marks the screen adds)."""
        if self.reply is None:
            return ""
        text = self.reply.content or ""
        for mark in REPLY_MARKS.values():
            if text.endswith(mark):
                return text[: -len(mark)]
        return "" if text == STOPPED_BEFORE_TEXT else text


@dataclass
class Answers:
    """One chat's last answer, its token total and the buttons offered on it."""

    last: LastAnswer | None = None
    tokens: int = 0
    offered: list[cl.Action] = field(default_factory=list)

    @classmethod
    def from_steps(
        cls, steps: Iterable[dict[str, Any]]
    ) -> tuple[Answers, list[tuple[str, TokenUsage]]]:
        """A stored chat's answers: the last one (with the notice after it), the total, and
        (message id, usage) of every message that carries usage, to show again."""
        answers = cls()
        usages: list[tuple[str, TokenUsage]] = []
        metadatas = []
        users: dict[str, str] = {}
        last_user: str | None = None
        replies: dict[str, dict] = {}
        notices: dict[str, dict] = {}
        for step in steps:
            meta = load_json(step.get("metadata"))
            if step.get("type") == "user_message":
                users[step["id"]] = step.get("output") or ""
                last_user = step["id"]
                continue
            if step.get("type") != "assistant_message":
                continue
            metadatas.append(meta)
            usage = TokenUsage.from_metadata(meta)
            if usage is not None:
                usages.append((step["id"], usage))
            target = {"reply": replies, "notice": notices}.get(meta.get("kind"))
            if target is not None and isinstance(meta.get("for"), str):
                target[meta["for"]] = {**step, "metadata": meta}
        answers.tokens = chat_total(metadatas)
        if last_user is not None and (last_user in replies or last_user in notices):
            reply, notice = replies.get(last_user), notices.get(last_user)
            answers.last = LastAnswer(
                user_text=users[last_user],
                user_message_id=last_user,
                reply=cl.Message.from_dict(reply) if reply else None,
                notice=cl.Message.from_dict(notice) if notice else None,
                truncated=bool(notice and notice["metadata"].get("truncated")),
                usage=TokenUsage.from_metadata(reply["metadata"]) if reply else None,
            )
        return answers, usages

    # -- what a click may do

    def claim(self, action: cl.Action, continuing: bool = False) -> LastAnswer | None:
        """The last answer, if ``action`` was offered on it and may run now; it is then no
        longer offered, so the same click cannot run twice."""
        payload = action.payload if isinstance(action.payload, dict) else {}
        answer_id = payload.get("answer")
        last = self.last
        anchor = last.anchor if last is not None else None
        if anchor is None or not isinstance(answer_id, str) or answer_id != anchor.id:
            logger.warning("Refused %s: not offered on this chat's last answer", action.name)
            return None
        if continuing and not last.truncated:
            logger.warning("Refused continue: the last answer was not cut off")
            return None
        self.last = None
        return last

    # -- on screen

    async def offer(self, last: LastAnswer, replace: bool = False) -> None:
        """``last`` is now the chat's last answer: the chat's total and the buttons go on it;
        ``replace`` the copies a page that reconnected may still show (same ids)."""
        await self.withdraw()
        self.last = last
        anchor = last.anchor
        if anchor is None:
            return
        payload = {"answer": anchor.id}
        offered = []
        if self.tokens:
            offered.append(
                cl.Action(
                    name=USAGE,
                    payload={},
                    label=total_line(self.tokens),
                    tooltip="Tokens of every answer in this chat, as Gemini counted them",
                    id=f"{TOTAL_ID}{anchor.id}",
                )
            )
        offered.append(
            cl.Action(
                name=REGENERATE,
                payload=payload,
                label="Regenerate",
                tooltip="Ask Gemini again for a new answer to the same message",
                icon="refresh-cw",
                id=f"{REGENERATE_ID}{anchor.id}",
            )
        )
        if last.truncated:
            offered.append(
                cl.Action(
                    name=CONTINUE,
                    payload=payload,
                    label="Continue",
                    tooltip="Ask Gemini to go on from where the answer was cut off",
                    icon="arrow-right",
                    id=f"{CONTINUE_ID}{anchor.id}",
                )
            )
        for action in offered:
            if replace:
                await action.remove()  # the page removes an action by its id
            await action.send(for_id=anchor.id)
        self.offered = offered

    async def withdraw(self) -> None:
        """Take the buttons and the total off the answer that is no longer the last."""
        offered, self.offered = self.offered, []
        for action in offered:
            await action.remove()

    async def show_stored(self, usages: Iterable[tuple[str, TokenUsage]], offer: bool) -> None:
        """A reopened chat: every stored answer's usage again, then the last answer's buttons
        (not while an answer is being written in it elsewhere: that one will be the last).

        A page whose socket reconnected to a server that resumes its chat afresh (a restart,
        another instance) keeps the lines and buttons it had, and the page adds an action
        without looking for its id: each replaces its copy, so none shows twice."""
        for message_id, usage in usages:
            await show_usage(message_id, usage, replace=True)
        if offer and self.last is not None:
            last, self.last = self.last, None
            await self.offer(last, replace=True)


async def show_usage(message_id: str, usage: TokenUsage, replace: bool = False) -> None:
    """The usage line under a message; ``replace`` the one it has (a continued answer)."""
    line = cl.Action(
        name=USAGE,
        payload={},
        label=usage.line(),
        tooltip=usage.explanation(),
        id=f"{USAGE_ID}{message_id}",
    )
    if replace:
        await line.remove()  # the page removes an action by its id
    await line.send(for_id=message_id)


async def set_aside(last: LastAnswer) -> None:
    """Keep the answer being asked again on screen, marked as the earlier one and out of the
    history (it is stored as kind "earlier")."""
    reply = last.reply
    if reply is None or not last.text:
        return
    reply.content = EARLIER_MARK + (reply.content or "")
    reply.metadata = {**(reply.metadata or {}), "kind": "earlier"}
    await reply.update()
