"""A lean socket.io client speaking the browser's protocol (Engine.IO 4 over a websocket), so one
process can drive hundreds of chats without the client becoming the bottleneck."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Reply:
    """What one chat saw of its reply, timed on arrival."""

    sent_at: float = 0.0
    first_token_at: float | None = None
    done_at: float | None = None
    text: str = ""
    stream_events: int = 0  # stream_start + stream_token events for the reply
    thought_events: int = 0  # the same for its thinking step, when one streams
    reply_id: str | None = None
    # The turn's tool steps by id, as last sent (output, isError, end), and when the first of
    # them was sent ended.
    tool_steps: dict[str, dict] = field(default_factory=dict)
    tool_done_at: float | None = None


@dataclass
class BrowserChat:
    """One tab: connects like the browser, sends one message, records the reply as it streams."""

    base_url: str
    cookie: str
    session: aiohttp.ClientSession
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # A chat to open (the page's /thread/ID); "" for a new one.
    thread_id: str = ""
    reply: Reply = field(default_factory=Reply)
    welcome: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self) -> None:
        url = self.base_url.replace("http", "ws", 1) + "/ws/socket.io/?EIO=4&transport=websocket"
        self.ws = await self.session.ws_connect(
            url, headers={"Cookie": self.cookie, "Origin": self.base_url}, max_msg_size=0
        )
        opened = await self.ws.receive_str()
        assert opened.startswith("0"), opened
        auth = {
            "clientType": "webapp",
            "sessionId": self.session_id,
            "threadId": self.thread_id,
            "userEnv": "{}",
            "chatProfile": "",
        }
        await self.ws.send_str("40" + json.dumps(auth))
        self.reader = asyncio.create_task(self._read())
        await self._emit("connection_successful")

    async def _emit(self, event: str, data=None) -> None:
        payload = [event] if data is None else [event, data]
        await self.ws.send_str("42" + json.dumps(payload))

    async def _read(self) -> None:
        async for message in self.ws:
            reply = self.reply
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = message.data
            if frame == "2":
                await self.ws.send_str("3")
                continue
            if not frame.startswith("42"):
                continue
            now = time.perf_counter()
            event, *rest = json.loads(frame[2:])
            data = rest[0] if rest else None
            if event == "stream_start" and data.get("type") == "assistant_message":
                reply.stream_events += 1
                reply.first_token_at = reply.first_token_at or now
                reply.reply_id = data["id"]
                reply.text = data.get("output", "")
            elif event == "stream_start":
                reply.thought_events += 1
            elif event == "stream_token" and data["id"] != reply.reply_id:
                reply.thought_events += 1
            elif event == "stream_token":
                reply.stream_events += 1
                reply.first_token_at = reply.first_token_at or now
                reply.text += data["token"]
            elif event in ("new_message", "update_message") and data.get("type") == "tool":
                reply.tool_steps[data["id"]] = {**reply.tool_steps.get(data["id"], {}), **data}
                if data.get("end") and reply.tool_done_at is None:
                    reply.tool_done_at = now
            elif event == "new_message" and data.get("type") == "assistant_message":
                if reply.sent_at and (data.get("metadata") or {}).get("kind") in (
                    "reply",
                    "notice",
                ):
                    reply.text = data.get("output", "")
                    reply.done_at = now
                    self.finished.set()
                elif not reply.sent_at:
                    self.welcome.set()

    def reset(self) -> None:
        """Forget the previous reply before sending the next message."""
        self.reply = Reply()
        self.finished.clear()

    async def send(self, text: str) -> None:
        now = time.perf_counter()
        self.reply.sent_at = now
        step = {
            "id": str(uuid.uuid4()),
            "threadId": "",
            "name": "User",
            "type": "user_message",
            "output": text,
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        await self._emit("client_message", {"message": step, "fileReferences": None})

    async def close(self, clear: bool = True) -> None:
        """Leave like the browser's "New chat" does: the session is cleared at once."""
        if clear and not self.ws.closed:
            await self._emit("clear_session")
        await self.ws.close()
        self.reader.cancel()


async def login(session: aiohttp.ClientSession, base_url: str) -> str:
    """Local mode's header login, as the page does it; returns the cookie header value."""
    async with session.post(base_url + "/auth/header", json={}) as response:
        response.raise_for_status()
        return f"access_token={response.cookies['access_token'].value}"
