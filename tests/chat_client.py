"""A socket.io client that talks to the real Chainlit server the way the browser does.

It keeps the messages on screen as the React client does (new_message, stream_start,
stream_token, update_message, delete_message, by id), so tests assert on what a user sees.
Every wait is on an event, with a timeout that fails the test.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import socketio

SHOWN_TYPES = ("assistant_message", "user_message")


@dataclass
class ShownMessage:
    id: str
    author: str
    type: str
    content: str
    is_error: bool = False
    streaming: bool = False
    tokens: int = 0  # stream_token events received for this message
    # The hook's run step this message sits in; the frontend rates that run, not the message.
    parent_id: str | None = None

    @property
    def from_user(self) -> bool:
        return self.type == "user_message"


@dataclass
class ChatClient:
    """One browser tab."""

    url: str
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    headers: dict[str, str] = field(default_factory=dict)
    messages: dict[str, ShownMessage] = field(default_factory=dict)
    events: list[tuple[str, Any]] = field(default_factory=list)
    running: bool = False
    # The buttons (Chainlit actions) on screen, by id, in the order they came.
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Chainlit's "ask" calls received (see answer_questions), in order.
    questions: list[dict[str, Any]] = field(default_factory=list)
    # The route cookie a load balancer in front gave this tab (deploy/nginx.conf), if any.
    route: str | None = None

    def __post_init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self._changed = asyncio.Condition()
        for name in (
            "new_message",
            "update_message",
            "delete_message",
            "stream_start",
            "stream_token",
            "task_start",
            "task_end",
            "first_interaction",
            "resume_thread",
            "chat_settings",
            "action",
            "remove_action",
        ):
            self.sio.on(name, self._handler(name))

    def answer_questions(self, respond) -> None:
        """Answer Chainlit's "ask" calls (the questions with buttons) with what ``respond``
        returns. Each question is recorded in ``questions`` and wakes ``wait_for`` as it comes:
        nothing else arrives while a question waits, so a waiter would otherwise sleep on."""

        async def asked(data: Any = None) -> Any:
            self.questions.append(data)
            self.events.append(("ask", data))
            async with self._changed:
                self._changed.notify_all()
            return await respond(data)

        self.sio.on("ask", asked)

    def _handler(self, name: str):
        async def handle(data: Any = None) -> None:
            self.events.append((name, data))
            self._apply(name, data)
            async with self._changed:
                self._changed.notify_all()

        return handle

    def _apply(self, name: str, data: Any) -> None:
        if name in ("new_message", "update_message", "stream_start"):
            if data.get("type") not in SHOWN_TYPES:
                return  # hook run steps (never drawn) and thinking steps (not messages)
            message = self.messages.get(data["id"])
            tokens = message.tokens if message else 0
            self.messages[data["id"]] = ShownMessage(
                id=data["id"],
                author=data.get("name", ""),
                type=data.get("type", ""),
                content=data.get("output", ""),
                is_error=bool(data.get("isError")),
                streaming=name == "stream_start",
                tokens=tokens,
                parent_id=data.get("parentId"),
            )
        elif name == "stream_token":
            message = self.messages.get(data["id"])
            if message is None:
                return
            message.tokens += 1
            if data.get("isSequence"):
                message.content = data["token"]
            else:
                message.content += data["token"]
        elif name == "resume_thread":
            for step in data.get("steps", []):
                if step.get("type") in SHOWN_TYPES:
                    self.messages[step["id"]] = ShownMessage(
                        id=step["id"],
                        author=step.get("name", ""),
                        type=step["type"],
                        content=step.get("output", ""),
                        is_error=bool(step.get("isError")),
                        parent_id=step.get("parentId"),
                    )
        elif name == "action":
            self.actions[data["id"]] = data
        elif name == "remove_action":
            self.actions.pop(data["id"], None)
        elif name == "delete_message":
            self.messages.pop(data["id"], None)
        elif name == "task_start":
            self.running = True
        elif name == "task_end":
            self.running = False

    # -- login, as the browser does it

    def _post(self, path: str, data: bytes, content_type: str) -> str:
        # A load balancer's route cookie (deploy/nginx.conf) goes along, as a browser's does,
        # and the tab's User-Agent if it has one of its own (the socket sends it too).
        route = {"Cookie": f"route={self.route}"} if self.route else {}
        others = {k: v for k, v in self.headers.items() if k.lower() == "user-agent"}
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method="POST",
            headers={"Content-Type": content_type, **others, **route},
        )
        with urllib.request.urlopen(request, timeout=15) as response:
            cookies = response.headers.get_all("Set-Cookie") or []
        token = next(c.split(";")[0] for c in cookies if c.startswith("access_token="))
        routes = [c.split(";")[0] for c in cookies if c.startswith("route=")]
        if routes:
            self.route = routes[0].removeprefix("route=")
        self.headers["Cookie"] = f"{token}; route={self.route}" if self.route else token
        return token

    async def login_local(self) -> str:
        """Local mode: Chainlit's header login, which the page does by itself."""
        return await asyncio.to_thread(self._post, "/auth/header", b"{}", "application/json")

    async def login(self, name: str, password: str) -> str:
        """Accounts mode: the login form."""
        form = urllib.parse.urlencode({"username": name, "password": password}).encode()
        return await asyncio.to_thread(
            self._post, "/login", form, "application/x-www-form-urlencoded"
        )

    # -- connection

    async def connect(
        self,
        thread_id: str = "",
        origin: str | None = None,
        transports: Sequence[str] = ("websocket",),
        announce: bool = True,
    ) -> ChatClient:
        """Open the chat socket; ``transports=("polling", "websocket")`` connects as the
        browser does: long-polling first, then upgraded to a websocket. The page then says it
        is connected, which starts (or reopens) the chat; ``announce=False`` leaves that to
        ``announce()``."""
        if "Cookie" not in self.headers:
            await self.login_local()
        headers = dict(self.headers)
        if origin is not None:
            headers["Origin"] = origin
        await self.sio.connect(
            self.url,
            socketio_path="/ws/socket.io",
            transports=list(transports),
            headers=headers,
            auth={
                "clientType": "webapp",
                "sessionId": self.session_id,
                "threadId": thread_id,
                "userEnv": "{}",
                "chatProfile": "",
            },
            wait_timeout=10,
        )
        if announce:
            await self.announce()
        return self

    async def announce(self) -> None:
        await self.sio.emit("connection_successful")

    async def disconnect(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        http = getattr(self.sio.eio, "http", None)  # left open by a refused connection
        if http is not None and not http.closed:
            await http.close()

    # -- actions

    async def send(
        self, text: str, message_id: str | None = None, file_ids: Sequence[str] = ()
    ) -> str:
        """Send ``text`` (with the uploaded files ``file_ids``) as the frontend does; the
        frontend chooses the message's id (a hostile client may choose any)."""
        message_id = message_id or str(uuid.uuid4())
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        step = {
            "id": message_id,
            "threadId": "",
            "name": "User",
            "type": "user_message",
            "output": text,
            "createdAt": now,
        }
        self.messages[message_id] = ShownMessage(message_id, "User", "user_message", text)
        references = [{"id": file_id} for file_id in file_ids] or None
        await self.sio.emit("client_message", {"message": step, "fileReferences": references})
        return message_id

    def actions_on(self, message_id: str) -> list[dict[str, Any]]:
        """The actions shown under one message, as the page draws them."""
        return [a for a in self.actions.values() if a.get("forId") == message_id]

    def _post_json(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **self.headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    async def call_action(
        self, action: dict[str, Any], session_id: str | None = None
    ) -> tuple[int, Any]:
        """Click an action button as the page does: POST /project/action with the action as
        it was sent (a hostile client may change any of it, or name another session)."""
        body = {"sessionId": session_id or self.session_id, "action": action}
        return await asyncio.to_thread(self._post_json, "/project/action", body)

    async def stop(self) -> None:
        await self.sio.emit("stop")

    async def edit(self, message_id: str, text: str) -> None:
        """The edit button on one of the user's messages."""
        self.messages[message_id].content = text
        self.mark()
        await self.sio.emit(
            "edit_message", {"message": {"id": message_id, "output": text, "type": "user_message"}}
        )

    async def chat_thread(self) -> str:
        """The id of this chat's stored thread, once Chainlit has announced it."""
        return await self.wait_for(lambda: self.thread_id, what="the thread id")

    @property
    def thread_id(self) -> str | None:
        return next(
            (d["thread_id"] for n, d in self.events if n == "first_interaction" and d), None
        )

    # -- waiting

    async def wait_for(self, predicate, timeout: float = 15.0, what: str = "condition") -> Any:
        async def check():
            async with self._changed:
                while not (result := predicate()):
                    await self._changed.wait()
                return result

        try:
            return await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}; on screen: {self.transcript()}"
            ) from None

    async def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until the server signals the current task has ended."""

        def ended() -> bool:
            names = [n for n, _ in self.events[self._mark :]]
            return "task_start" in names and "task_end" in names[names.index("task_start") :]

        await self.wait_for(ended, timeout, "the end of the task")

    def mark(self) -> None:
        """Start a new window for wait_idle / new_replies."""
        self._mark = len(self.events)

    _mark: int = 0

    async def ask(self, text: str, timeout: float = 15.0) -> list[ShownMessage]:
        """Send ``text``, wait for the turn to end; return the assistant messages it produced."""
        before = set(self.messages)
        self.mark()
        await self.send(text)
        await self.wait_idle(timeout)
        return [m for mid, m in self.messages.items() if mid not in before and not m.from_user]

    # -- what is on screen

    def assistant_messages(self) -> list[ShownMessage]:
        return [m for m in self.messages.values() if not m.from_user]

    def errors(self) -> list[str]:
        return [m.content for m in self.messages.values() if m.is_error]

    def transcript(self) -> list[tuple[str, str]]:
        return [(m.author, m.content[:200]) for m in self.messages.values()]
