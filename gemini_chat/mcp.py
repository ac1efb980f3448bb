"""MCP servers listed by the operator (``MCP_SERVERS_FILE``): their tools join the agent's.

The file has the shape most MCP clients use::

    {"mcpServers": {
        "files": {"command": "npx",
                  "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"],
                  "env": {"API_TOKEN": "${FILES_TOKEN}"}, "cwd": "/srv"},
        "search": {"url": "https://mcp.example.com/mcp",
                   "headers": {"Authorization": "Bearer ${SEARCH_KEY}"}}}}

``${NAME}`` in an ``env`` or ``headers`` value is replaced by the app's environment variable
NAME, so secrets stay out of the file. A stdio server gets a minimal environment (PATH, HOME,
...) plus its ``env``, never the app's own (no Gemini key). Servers are shared by every chat of
the process: each starts on the first message and is checked on every message (listing its
tools, within ``MCP_TIMEOUT_SECONDS``). One found stopped is started again at once; one that
cannot be started or reached, or does not answer, is left out of that message with a notice
and tried again with the next. A call to a server that dies meanwhile fails clearly. Its
tools are named ``mcp_<server>__<tool>`` (the Agents SDK's prefixing), so they never clash with
the app's own tools or with another server's. Each server's stderr goes to the log, line by
line, under its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import re
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

from agents import FunctionTool
from agents.mcp import MCPServer, MCPServerStdio, MCPServerStreamableHttp, MCPUtil
from agents.run_context import RunContextWrapper
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError
from mcp.types import CONNECTION_CLOSED

from .config import ConfigError, Settings
from .tools import build_tools

logger = logging.getLogger("gemini_chat.mcp")
T = TypeVar("T")

# A server's name becomes part of its tools' names, which Gemini limits to letters, digits,
# "_" and "-" (64 characters in all).
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_TRANSPORTS = {"stdio": "command", "http": "url", "streamable-http": "url", "streamableHttp": "url"}
# How long a stopping server may take before it is cancelled: the MCP client gives a stdio
# server 2 s to exit after its input closes, then 2 s more after SIGTERM before SIGKILL.
_STOP_SECONDS = 6.0
# How often a running call to an HTTP server checks that the server is still there.
_PROBE_SECONDS = 5.0


class McpToolError(Exception):
    """A call to an MCP tool failed because of its server; the message is safe to show."""


@dataclass(frozen=True)
class ServerConfig:
    """One entry of the file: a stdio command or a streamable-HTTP URL."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # env and headers hold secrets taken from the environment.
        target = self.url if self.url else self.command
        return f"ServerConfig(name={self.name!r}, target={target!r})"


def load_server_configs(settings: Settings, environ: Mapping[str, str]) -> list[ServerConfig]:
    """The servers listed in ``MCP_SERVERS_FILE``: none when the default file does not exist,
    but a file named on purpose must exist. Raises ConfigError naming the file and the entry
    for anything the app cannot use."""
    path = os.path.abspath(settings.mcp_servers_file)
    where = f"MCP_SERVERS_FILE={path!r} is not valid"
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        if settings.mcp_servers_file == Settings.mcp_servers_file:
            return []
        raise ConfigError(f"{where}: there is no such file.") from None
    except OSError as error:
        raise ConfigError(f"{where}: it cannot be read ({error.strerror}).") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{where}: it is not JSON ({error.msg} at line {error.lineno}, column {error.colno})."
        ) from None
    servers = document.get("mcpServers") if isinstance(document, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(f'{where}: it must be an object with "mcpServers": {{"name": {{...}}}}.')
    base = os.path.dirname(path)
    configs = []
    for name, entry in servers.items():
        try:
            configs.append(_server_config(name, entry, environ, base))
        except ValueError as error:
            raise ConfigError(f"{where}: server {name!r}: {error}.") from None
    return configs


def _server_config(name: str, entry: Any, environ: Mapping[str, str], base: str) -> ServerConfig:
    if not _SERVER_NAME.fullmatch(name):
        raise ValueError("a server's name may hold only letters, digits, _ and - (at most 32)")
    if not isinstance(entry, dict):
        raise ValueError('it must be an object with "command" or "url"')
    allowed = {"type", "command", "args", "env", "cwd", "url", "headers"}
    if unknown := sorted(set(entry) - allowed):
        raise ValueError(f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(allowed))})")
    kind = entry.get("type")
    if kind is not None and kind not in _TRANSPORTS:
        raise ValueError(
            f'"type" {kind!r} is not supported: use "stdio" (a command) or "http" (a '
            "streamable-HTTP URL)"
        )
    if ("command" in entry) == ("url" in entry):
        raise ValueError('it needs either "command" (stdio) or "url" (streamable HTTP)')
    if kind is not None and _TRANSPORTS[kind] not in entry:
        raise ValueError(f'"type" {kind!r} needs "{_TRANSPORTS[kind]}"')
    if "command" in entry:
        stray = sorted({"url", "headers"} & set(entry))
        if stray:
            raise ValueError(f'"{stray[0]}" belongs to an HTTP server, not a command')
        command = entry["command"]
        if not isinstance(command, str) or not command.strip():
            raise ValueError('"command" must be a non-empty string')
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
            raise ValueError('"args" must be a list of strings')
        cwd = entry.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd):
            raise ValueError('"cwd" must be a directory path')
        return ServerConfig(
            name=name,
            command=command,
            args=tuple(args),
            env=_expanded(entry.get("env", {}), '"env"', environ),
            # Relative to the file, as the paths in it were written.
            cwd=os.path.join(base, cwd) if cwd else None,
        )
    stray = sorted({"args", "env", "cwd"} & set(entry))
    if stray:
        raise ValueError(f'"{stray[0]}" belongs to a command, not an HTTP server')
    url = entry["url"]
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError('"url" must be an http(s) URL such as https://mcp.example.com/mcp')
    return ServerConfig(
        name=name, url=url, headers=_expanded(entry.get("headers", {}), '"headers"', environ)
    )


def _expanded(values: Any, label: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``values`` (an object of strings) with each ``${NAME}`` replaced from ``environ``."""
    if not isinstance(values, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in values.items()
    ):
        raise ValueError(f"{label} must be an object of strings")

    def substitute(match: re.Match[str]) -> str:
        variable = match.group(1)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable):
            raise ValueError(f"{label}: ${{{variable}}} is not a variable name")
        if variable not in environ:
            raise ValueError(f"{label} uses ${{{variable}}}, which is not set in the environment")
        return environ[variable]

    return {key: _VARIABLE.sub(substitute, value) for key, value in values.items()}


class _LoggedStdio(MCPServerStdio):
    """A stdio server whose stderr goes to the log, line by line, under the server's name."""

    def __init__(self, label: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.errlog: TextIO | None = None

    def create_streams(self):  # the SDK's hook for the transport
        read_end, write_end = os.pipe()
        self.errlog = os.fdopen(write_end, "w")
        threading.Thread(
            target=_log_lines, args=(read_end, self.label), daemon=True, name="mcp-stderr"
        ).start()
        return stdio_client(self.params, errlog=self.errlog)

    def close_errlog(self) -> None:
        """Drop the app's end of the stderr pipe once the process holds its own: the log
        reader then ends when the process does."""
        if self.errlog is not None:
            self.errlog.close()
            self.errlog = None


def _log_lines(read_end: int, label: str) -> None:
    with open(read_end, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            logger.info("MCP server %r: %s", label, line.rstrip())


class _Connection:
    """One started server, owned from connect to cleanup by a task of its own: the MCP client
    must leave its transport in the task that entered it, and this one outlives any chat."""

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self.lost = False  # a call found the server gone
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        # A fresh context: the task must not hold on to the chat that happened to start it.
        self._task = asyncio.get_running_loop().create_task(
            self._own(), name=f"mcp-{server.name}", context=contextvars.Context()
        )

    @property
    def alive(self) -> bool:
        return not self.lost and not self._task.done()

    async def _own(self) -> None:
        try:
            try:
                await self.server.connect()
            finally:
                if isinstance(self.server, _LoggedStdio):
                    self.server.close_errlog()
        except BaseException as error:
            if not self._ready.done():
                self._ready.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        self._ready.set_result(None)
        try:
            await self._stop.wait()
        finally:
            # Also reached when the transport fails on its own (the process died, the HTTP
            # stream broke): the MCP client then cancels this task.
            await self.server.cleanup()

    async def tools(self, reserved_names: set[str]) -> list[FunctionTool]:
        """Wait until connected, then list the server's tools."""
        return await self.while_up(self._list(reserved_names))

    async def while_up(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work``, failing at once if the connection ends meanwhile (a request to a
        server that is gone would otherwise wait for its time limit)."""
        if not self.alive:
            work.close()
            raise ConnectionError("the connection had ended")
        waiting = asyncio.ensure_future(work)
        try:
            await asyncio.wait({waiting, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                return waiting.result()
            if self._ready.done() and not self._ready.cancelled() and self._ready.exception():
                raise self._ready.exception()  # it did not start
            raise ConnectionError("the connection ended")
        finally:
            if not waiting.done():
                waiting.cancel()
                # Its outcome no longer matters; keep asyncio from reporting it.
                waiting.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def call(self, work: Coroutine[Any, Any, T], probe_seconds: float) -> T:
        """``while_up`` for a tool call. An HTTP server that goes away during a call leaves the
        call waiting on a dead stream; the next request to it is what fails (and ends the
        connection), so one is sent every ``probe_seconds`` while the call runs."""
        if not isinstance(self.server, MCPServerStreamableHttp):
            return await self.while_up(work)
        probe = asyncio.get_running_loop().create_task(self._probe(probe_seconds))
        try:
            return await self.while_up(work)
        finally:
            probe.cancel()

    async def _probe(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            session = self.server.session
            if session is None:
                return
            # Its answer does not matter: a server that is gone ends the connection.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(seconds):
                    await session.send_ping()

    async def _list(self, reserved_names: set[str]) -> list[FunctionTool]:
        await asyncio.shield(self._ready)
        tools = await MCPUtil.get_function_tools(
            self.server,
            convert_schemas_to_strict=False,
            run_context=RunContextWrapper(context=None),
            agent=None,  # only used by tool filters, which the app does not set
            include_server_in_tool_names=True,
            reserved_tool_names=reserved_names,
        )
        return [tool for tool in tools if isinstance(tool, FunctionTool)]

    async def stop(self) -> None:
        """Stop the server (its process ends) and wait, within bounds, until it has."""
        self._stop.set()
        if not self._ready.done():
            self._task.cancel()  # still starting: the MCP client cleans up on cancel
        done, _ = await asyncio.wait({self._task}, timeout=_STOP_SECONDS)
        if not done:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=_STOP_SECONDS)
        if self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # seen (it was logged where it mattered)
        if self._task.done() and not self._task.cancelled() and self._task.exception():
            logger.warning(
                "MCP server %r stopped with an error: %r", self.server.name, self._task.exception()
            )


class _Server:
    """One configured server across the process: its current connection, checked once per
    message however many chats ask at the same time."""

    def __init__(self, config: ServerConfig, settings: Settings, stopping: set[asyncio.Task]):
        self.config = config
        self.settings = settings
        self.connection: _Connection | None = None
        self._check: asyncio.Task | None = None
        self._stopping = stopping
        # The connection, the signature and the tools of the last listing.
        self._listed: tuple[_Connection, list, list[FunctionTool]] | None = None

    async def tools(self, reserved_names: set[str]) -> tuple[list[FunctionTool], str | None]:
        """This server's tools and, when it is not available, a notice instead."""
        if self._check is None or self._check.done():
            # The check runs in a task of its own so that one chat's Stop does not cancel it
            # for every other chat waiting on it.
            self._check = asyncio.get_running_loop().create_task(
                self._checked_tools(reserved_names), context=contextvars.Context()
            )
        return await asyncio.shield(self._check)

    async def _checked_tools(
        self, reserved_names: set[str]
    ) -> tuple[list[FunctionTool], str | None]:
        seconds = self.settings.mcp_timeout
        if self.connection is not None and not self.connection.alive:
            logger.warning("MCP server %r had stopped; starting it again", self.config.name)
            self._drop()
        starting = self.connection is None
        try:
            async with asyncio.timeout(seconds):
                if self.connection is not None:
                    try:
                        return self._wrapped(await self.connection.tools(reserved_names)), None
                    except Exception as error:
                        # Gone since the last message: start it again at once.
                        logger.warning(
                            "MCP server %r stopped answering (%r); starting it again",
                            self.config.name,
                            error,
                        )
                        self._drop()
                        starting = True
                self.connection = _Connection(self._build())
                logger.info("Starting MCP server %r", self.config.name)
                return self._wrapped(await self.connection.tools(reserved_names)), None
        except TimeoutError:
            reason = f"it did not {'start' if starting else 'answer'} in {seconds:g} s"
            logger.warning("MCP server %r is not available: %s", self.config.name, reason)
        except Exception as error:
            reason = "it could not be started" if self.config.command else "it could not be reached"
            logger.warning(
                "MCP server %r is not available: %s: %s", self.config.name, reason, _describe(error)
            )
        self._drop()
        return [], (
            f"The tool server '{self.config.name}' is not available ({reason}); "
            "answering without it."
        )

    def _build(self) -> MCPServer:
        options: dict[str, Any] = {
            "name": self.config.name,
            # Tools fail by raising, so the app's one guard shows and reports every failure.
            "failure_error_function": None,
            # A backstop only: calls are limited by TOOL_TIMEOUT_SECONDS, listing by
            # MCP_TIMEOUT_SECONDS.
            "client_session_timeout_seconds": self.settings.tool_timeout
            + self.settings.mcp_timeout,
        }
        if self.config.command:
            params: dict[str, Any] = {
                "command": self.config.command,
                "args": list(self.config.args),
            }
            if self.config.env:
                params["env"] = dict(self.config.env)
            if self.config.cwd:
                params["cwd"] = self.config.cwd
            return _LoggedStdio(self.config.name, params=params, **options)
        return MCPServerStreamableHttp(
            params={
                "url": self.config.url or "",
                "headers": dict(self.config.headers),
                "timeout": self.settings.mcp_timeout,
            },
            **options,
        )

    def _wrapped(self, tools: list[FunctionTool]) -> list[FunctionTool]:
        """The listed tools, calling through the current connection. While the server and its
        tools stay the same, the same objects are handed out on every message (so what is
        built on them, such as the guarded copies, is built once)."""
        connection = self.connection
        assert connection is not None
        signature = [
            (tool.name, tool.description, json.dumps(tool.params_json_schema, sort_keys=True))
            for tool in tools
        ]
        if self._listed is not None and self._listed[:2] == (connection, signature):
            return self._listed[2]
        for tool in tools:
            tool.on_invoke_tool = self._call_through(tool.on_invoke_tool, connection)
        self._listed = (connection, signature, tools)
        return tools

    def _call_through(self, invoke: Any, connection: _Connection) -> Any:
        name = self.config.name
        probe_seconds = min(_PROBE_SECONDS, self.settings.mcp_timeout)

        async def on_invoke_tool(context: Any, arguments: str) -> Any:
            try:
                output = await connection.call(invoke(context, arguments), probe_seconds)
            except Exception as error:
                if connection.alive and not _is_connection_lost(error):
                    raise
                connection.lost = True
                logger.warning("MCP server %r stopped during a call: %s", name, _describe(error))
                raise McpToolError(
                    f"The tool server '{name}' stopped during the call; it will be started "
                    "again with the next message."
                ) from None
            # An MCP result's parts (text, images) become text in the guard (toolrun.as_text).
            return output

        return on_invoke_tool

    def _drop(self) -> None:
        """Forget the connection and stop it in the background (close() waits for it)."""
        self._listed = None
        if self.connection is None:
            return
        task = asyncio.get_running_loop().create_task(
            self.connection.stop(), context=contextvars.Context()
        )
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        self.connection = None

    async def close(self) -> None:
        if self._check is not None and not self._check.done():
            self._check.cancel()
            await asyncio.wait({self._check})
        self._drop()


def _is_connection_lost(error: BaseException) -> bool:
    """Whether a failed call means the server is gone (rather than that it refused the call)."""
    if isinstance(error, McpError):
        return error.error.code == CONNECTION_CLOSED
    return True


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"


class McpServers:
    """The process's MCP servers, started on first use and shared by every chat."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        """Reads ``MCP_SERVERS_FILE`` (ConfigError when it is malformed); starts nothing."""
        self.settings = settings
        self.configs = load_server_configs(settings, os.environ if environ is None else environ)
        # The app's own tools' names, which an MCP tool's name must avoid (only looked up when
        # there are servers).
        self._reserved_names: set[str] = set()
        if self.configs:
            self._reserved_names = {tool.name for tool in build_tools(settings)}
        self._stopping: set[asyncio.Task] = set()
        self._servers = [_Server(config, settings, self._stopping) for config in self.configs]
        self._closed = False

    async def tools(self) -> tuple[list[FunctionTool], list[str]]:
        """The tools of every server that is up, for one message's turn, and a user-safe notice
        for each server that is not (it is tried again on the next message)."""
        if self._closed or not self._servers:
            return [], []
        results = await asyncio.gather(
            *(server.tools(self._reserved_names) for server in self._servers)
        )
        tools = [tool for server_tools, _ in results for tool in server_tools]
        notices = [notice for _, notice in results if notice]
        return tools, notices

    async def close(self) -> None:
        """Stop every server (at shutdown): their processes end before this returns."""
        self._closed = True
        for server in self._servers:
            await server.close()
        while self._stopping:
            await asyncio.wait(set(self._stopping))
