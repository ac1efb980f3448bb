"""A lean socket.io client speaking the browser's protocol, so one process can drive hundreds of
chats without the client becoming the bottleneck.

It connects as Chainlit's page does (socket.io-client with its default transports): the sticky
session cookie first (``POST /set-session-cookie``), then Engine.IO 4 long-polling (the handshake
``GET``, the socket.io connect ``40{auth}`` in a ``POST``, polling ``GET``s), then the upgrade to a
websocket (``2probe``/``3probe``, the pending poll ended, ``5``). Like a browser it keeps the
cookies each response sets (nginx's ``route``) for its own later requests and its websocket;
only the login cookie is shared. ``transports=("websocket",)`` connects straight over a
websocket instead, as the benchmark's earlier clients did."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

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
    # The answer as last sent whole (its status: "complete", or "incomplete" with its mark),
    # and the notice that explains a failure; ``text`` is whichever of them came last.
    answer: str | None = None
    status: str | None = None
    notice: str | None = None


@dataclass
class BrowserChat:
    """One tab: connects like the browser, sends one message, records the reply as it streams."""

    base_url: str
    cookie: str
    session: aiohttp.ClientSession
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    thread_id: str = ""  # a chat to open again, as a second tab does; "" for a new chat
    reply: Reply = field(default_factory=Reply)
    welcome: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    # socket.io-client's option: long-polling first, then the websocket (the browser's default),
    # or ("websocket",) alone.
    transports: tuple[str, ...] = ("polling", "websocket")
    # The cookies responses set for this tab alone (nginx's route cookie, Chainlit's session
    # cookie), sent back with every later request of the tab, as a browser does.
    cookies: dict[str, str] = field(default_factory=dict)
    ws: aiohttp.ClientWebSocketResponse | None = None
    reader: asyncio.Task | None = None

    @property
    def socket_path(self) -> str:
        return self.base_url + "/ws/socket.io/?EIO=4"

    def _headers(self, origin: bool = False) -> dict[str, str]:
        cookie = "; ".join([self.cookie, *(f"{k}={v}" for k, v in self.cookies.items())])
        # The browser sends its page's origin with a POST and a websocket, not with a GET.
        return {"Cookie": cookie, **({"Origin": self.base_url} if origin else {})}

    def _keep_cookies(self, cookies: SimpleCookie) -> None:
        self.cookies.update((name, morsel.value) for name, morsel in cookies.items())

    def _auth(self) -> str:
        return "40" + json.dumps(
            {
                "clientType": "webapp",
                "sessionId": self.session_id,
                "threadId": self.thread_id,
                "userEnv": "{}",
                "chatProfile": "",
            }
        )

    async def connect(self) -> None:
        # The page asks for its sticky-session cookie before it opens the socket.
        async with self.session.post(
            self.base_url + "/set-session-cookie",
            json={"session_id": self.session_id},
            headers=self._headers(origin=True),
        ) as response:
            response.raise_for_status()
            self._keep_cookies(response.cookies)
        self._sending = asyncio.Lock()  # one polling POST at a time; held over the upgrade
        self._connected = asyncio.Event()
        if "polling" not in self.transports:
            self.ws = await self._open_websocket(self.socket_path + "&transport=websocket")
            opened = await self.ws.receive_str()
            assert opened.startswith("0"), opened
            await self.ws.send_str(self._auth())
            self.reader = asyncio.create_task(self._read())
            await self._connected.wait()
            return
        # Long-polling: the handshake, then the socket.io connect, as socket.io-client does.
        opened = await self._get(self.socket_path + "&transport=polling")
        assert opened.startswith("0"), opened
        handshake = json.loads(opened[1:])
        self.sid = handshake["sid"]
        self._polling_url = self.socket_path + f"&transport=polling&sid={self.sid}"
        self._upgrading = False
        self.poller = asyncio.create_task(self._poll())
        await self._send(self._auth())
        if "websocket" in self.transports and "websocket" in handshake["upgrades"]:
            self.reader = asyncio.create_task(self._upgrade())
        await self._connected.wait()

    async def _open_websocket(self, url: str) -> aiohttp.ClientWebSocketResponse:
        ws = await self.session.ws_connect(
            url.replace("http", "ws", 1), headers=self._headers(origin=True), max_msg_size=0
        )
        if ws._response is not None:  # the 101 may set a cookie too
            self._keep_cookies(ws._response.cookies)
        return ws

    async def _get(self, url: str) -> str:
        # socket.io-client's cache buster on every polling request.
        async with self.session.get(
            f"{url}&t={secrets.token_urlsafe(5)}", headers=self._headers()
        ) as response:
            response.raise_for_status()
            self._keep_cookies(response.cookies)
            return await response.text()

    async def _post(self, frame: str) -> None:
        async with self.session.post(
            f"{self._polling_url}&t={secrets.token_urlsafe(5)}",
            data=frame.encode(),
            headers={**self._headers(origin=True), "Content-Type": "text/plain;charset=UTF-8"},
        ) as response:
            response.raise_for_status()
            self._keep_cookies(response.cookies)

    async def _send(self, frame: str) -> None:
        async with self._sending:  # in order, and never a POST once the websocket took over
            if self.ws is not None:
                await self.ws.send_str(frame)
            else:
                await self._post(frame)

    async def _poll(self) -> None:
        """Long-poll until the websocket takes over (the server ends the last poll with a noop)."""
        while not self._upgrading:
            payload = await self._get(self._polling_url)
            for frame in payload.split("\x1e"):
                if frame == "1":  # closed by the server
                    return
                await self._on_frame(frame)

    async def _upgrade(self) -> None:
        """engine.io-client's probe: the websocket is tested with ``2probe``, polling is paused
        (the pending poll returns, no POST in flight), then ``5`` moves the socket over."""
        ws = await self._open_websocket(self.socket_path + f"&transport=websocket&sid={self.sid}")
        self._probing = ws  # closed with the tab even if it closes before the upgrade ends
        await ws.send_str("2probe")
        answer = await ws.receive_str()
        assert answer == "3probe", answer
        self._upgrading = True
        await self.poller
        async with self._sending:
            await ws.send_str("5")
            self.ws = ws
        await self._read()

    async def _emit(self, event: str, data=None) -> None:
        payload = [event] if data is None else [event, data]
        await self._send("42" + json.dumps(payload))

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            await self._on_frame(message.data)

    async def _on_frame(self, frame: str) -> None:
        if frame == "2":
            await self._send("3")
            return
        if frame.startswith("40"):
            # Connected: what the page does on socket.io's "connect".
            await self._emit("connection_successful")
            await self._emit("fetch_favorites")
            self._connected.set()
            return
        if not frame.startswith("42"):
            return
        reply = self.reply
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
            metadata = data.get("metadata") or {}
            if reply.sent_at and metadata.get("kind") in ("reply", "notice"):
                reply.text = data.get("output", "")
                reply.done_at = now
                if metadata["kind"] == "notice":
                    reply.notice = reply.text
                else:
                    reply.answer, reply.status = reply.text, metadata.get("status")
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
        """Leave like the browser's "New chat" does (the session is cleared at once), or with
        ``clear=False`` like a closed tab: the connection just ends."""
        if clear and (self.ws is None or not self.ws.closed):
            await self._emit("clear_session")
        for ws in {self.ws, getattr(self, "_probing", None)} - {None}:
            await ws.close()
        for task in (self.reader, getattr(self, "poller", None)):
            if task is not None:
                task.cancel()


async def login(session: aiohttp.ClientSession, base_url: str) -> str:
    """Local mode's header login, as the page does it; returns the cookie header value."""
    async with session.post(base_url + "/auth/header", json={}) as response:
        response.raise_for_status()
        return f"access_token={response.cookies['access_token'].value}"
