"""MCP servers (gemini_chat/mcp.py): the config file, a real MCP server (tests/mcp_server.py)
over stdio and streamable HTTP, its tools called through the Agents SDK against the fake
Gemini, and the server failing, timing out, dying and coming back."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
import tomllib
from pathlib import Path

import pytest
from agents import Runner
from agents.tool_context import ToolContext

from gemini_chat.config import ConfigError, Settings
from gemini_chat.llm import build_agent, build_client, build_model
from gemini_chat.mcp import McpServers, load_server_configs
from gemini_chat.toolrun import TurnContext, guard
from tests.app_process import ROOT, free_port
from tests.chat_client import ChatClient
from tests.fake_gemini import DEFAULT_KEY, Reply, ToolCall, tool_call_reply

MCP_SERVER = str(ROOT / "tests" / "mcp_server.py")
NOTE = "The launch is on Tuesday at 10:00."
STOPPED = (
    "The tool server '{}' stopped during the call; it will be started again with the next message."
)


# --- helpers -------------------------------------------------------------------------------------


def write_config(directory: Path, servers: dict) -> str:
    path = directory / "mcp_servers.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return str(path)


def stdio_entry(directory: Path, name: str = "notes", **env: str) -> dict:
    """The test server over stdio; it writes its pid to ``<directory>/<name>.pid``."""
    return {
        "command": sys.executable,
        "args": [MCP_SERVER],
        "env": {"MCP_TEST_PID_FILE": str(directory / f"{name}.pid"), **env},
    }


def pid_of(directory: Path, name: str = "notes") -> int:
    return int((directory / f"{name}.pid").read_text())


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that ended but was not yet reaped is gone for every purpose here.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (it can only be polled: it is not our child)."""
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def settings_for(config: str, **overrides) -> Settings:
    return Settings(mcp_servers_file=config, tools=(), **overrides)


class SeenCalls:
    """The chat's side of the tool calls (a ToolObserver): the error each call showed."""

    def __init__(self) -> None:
        self.errors: list[str | None] = []

    async def started(self, call_id: str, name: str, arguments: str) -> None:
        pass

    async def finished(self, call_id: str, output: str, error: str | None, seconds: float) -> None:
        self.errors.append(error)

    async def approve(self, call_id: str, name: str, arguments: str, wait_seconds: float) -> bool:
        return True


async def run_tool(tool, arguments: dict) -> tuple[str, str | None]:
    """Call a tool as the agent does, behind the app's guard: what the model is given, and the
    error the chat shows (None when it worked)."""
    text = json.dumps(arguments)
    seen = SeenCalls()
    context = ToolContext(
        context=TurnContext(seen), tool_name=tool.name, tool_call_id="call_t", tool_arguments=text
    )
    output = await guard(tool, Settings(tools=())).on_invoke_tool(context, text)
    return output, seen.errors[0]


async def call(tool, arguments: dict) -> str:
    """What the model is given for a call that worked."""
    output, error = await run_tool(tool, arguments)
    assert error is None, error
    return output


async def run_agent(gemini, tools, question: str) -> str:
    """The app's Gemini model (against the fake) in the app's agent with ``tools``; its answer."""
    settings = Settings(api_key=DEFAULT_KEY, base_url=gemini.base_url, show_thoughts=False)
    client = build_client(settings)
    # The app's agent: every tool behind its guard.
    agent = build_agent(settings, build_model(settings, client), tools)
    try:
        result = Runner.run_streamed(agent, question, context=TurnContext())
        async for _ in result.stream_events():
            pass
    finally:
        await client.close()
    return result.final_output


def named(tools, name: str):
    return next(tool for tool in tools if tool.name == name)


class LogWaiter(logging.Handler):
    """Lets a test wait for a log line (the server's stderr arrives from a reader thread)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)
        self.loop = asyncio.get_running_loop()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.pattern.search(record.getMessage()):
            self.loop.call_soon_threadsafe(self.seen.set)

    async def wait(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.seen.wait(), timeout)


@pytest.fixture
async def wait_for_log():
    handlers = []

    def make(pattern: str) -> LogWaiter:
        handler = LogWaiter(pattern)
        logging.getLogger("gemini_chat.mcp").addHandler(handler)
        handlers.append(handler)
        return handler

    logging.getLogger("gemini_chat.mcp").setLevel(logging.INFO)
    yield make
    for handler in handlers:
        logging.getLogger("gemini_chat.mcp").removeHandler(handler)


@pytest.fixture
async def mcp_servers():
    """Make McpServers; every one is closed at the end of the test."""
    made: list[McpServers] = []

    def make(settings: Settings, environ: dict | None = None) -> McpServers:
        servers = McpServers(settings, environ=environ or {})
        made.append(servers)
        return servers

    yield make
    for servers in made:
        await servers.close()


class HttpServer:
    """tests/mcp_server.py over streamable HTTP, as a process of its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._logged = asyncio.Condition()

    async def start(self) -> HttpServer:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            MCP_SERVER,
            "--http",
            str(self.port),
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert self.process.stderr is not None
        while b"Uvicorn running on" not in (line := await self.process.stderr.readline()):
            assert line, "the HTTP MCP server exited before serving"
        self._drain = asyncio.create_task(self._read_rest())
        return self

    async def _read_rest(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            async with self._logged:
                self.lines.append(line.decode(errors="replace"))
                self._logged.notify_all()

    async def logged(self, text: str, timeout: float = 10.0) -> None:
        """Wait until the server writes ``text`` to its stderr."""

        async def seen() -> None:
            async with self._logged:
                await self._logged.wait_for(lambda: any(text in line for line in self.lines))

        await asyncio.wait_for(seen(), timeout)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
            await self._drain


@pytest.fixture
async def http_server():
    started: list[HttpServer] = []

    async def start(port: int | None = None) -> HttpServer:
        server = await HttpServer(port or free_port()).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.kill()


# --- the config file -----------------------------------------------------------------------------


def test_no_file_means_no_servers_but_a_file_named_on_purpose_must_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default file is looked for beside the app
    assert load_server_configs(Settings(), {}) == []
    missing = str(tmp_path / "mcp.json")
    with pytest.raises(ConfigError) as raised:
        load_server_configs(settings_for(missing), {})
    assert str(raised.value) == f"MCP_SERVERS_FILE={missing!r} is not valid: there is no such file."
    # The default name is found where the app runs.
    write_config(tmp_path, {"files": {"command": "files-server"}})
    assert [config.name for config in load_server_configs(Settings(), {})] == ["files"]


def test_env_and_headers_take_variables_from_the_environment(tmp_path):
    path = write_config(
        tmp_path,
        {
            "files": {"command": "files-server", "args": ["--root", "docs"], "cwd": "srv",
                      "env": {"TOKEN": "${FILES_TOKEN}", "PLAIN": "a $b ${"}},
            "search": {"url": "https://mcp.example.com/mcp",
                       "headers": {"Authorization": "Bearer ${SEARCH_KEY}"}},
        },
    )  # fmt: skip
    environ = {"FILES_TOKEN": "t0k", "SEARCH_KEY": "k3y"}
    files, search = load_server_configs(settings_for(path), environ)
    assert files.command == "files-server" and files.args == ("--root", "docs")
    assert files.env == {"TOKEN": "t0k", "PLAIN": "a $b ${"}
    assert files.cwd == str(tmp_path / "srv")  # relative to the file
    assert search.url == "https://mcp.example.com/mcp"
    assert search.headers == {"Authorization": "Bearer k3y"}
    # Secrets from the environment stay out of reprs (and so out of log lines).
    assert "t0k" not in repr(files) and "k3y" not in repr(search)


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ({"files": {"command": "x", "arg": ["-v"]}}, "server 'files': unknown field 'arg'"),
        ({"files": {"command": "x", "url": "http://a/"}}, "either \"command\""),
        ({"files": {}}, "either \"command\" (stdio) or \"url\""),
        ({"files": {"command": ""}}, '"command" must be a non-empty string'),
        ({"files": {"command": "x", "args": "-v"}}, '"args" must be a list of strings'),
        ({"files": {"command": "x", "env": {"A": 1}}}, '"env" must be an object of strings'),
        ({"files": {"command": "x", "env": {"A": "${MISSING}"}}},
         "${MISSING}, which is not set in the environment"),
        ({"files": {"command": "x", "headers": {}}}, '"headers" belongs to an HTTP server'),
        ({"web": {"url": "ftp://example.com/"}}, '"url" must be an http(s) URL'),
        ({"web": {"url": "https://a/", "headers": {"K": "${1X}"}}}, "is not a variable name"),
        ({"web": {"url": "https://a/", "type": "sse"}}, '"type" \'sse\' is not supported'),
        ({"web": {"url": "https://a/", "cwd": "/"}}, '"cwd" belongs to a command'),
        ({"my files": {"command": "x"}}, "server 'my files': a server's name may hold only"),
        ({"files": ["x"]}, 'server \'files\': it must be an object with "command" or "url"'),
    ],
)  # fmt: skip
def test_a_malformed_entry_stops_the_start_naming_the_file_and_the_entry(
    tmp_path, servers, problem
):
    path = write_config(tmp_path, servers)
    with pytest.raises(ConfigError) as raised:
        McpServers(settings_for(path))
    message = str(raised.value)
    assert message.startswith(f"MCP_SERVERS_FILE={path!r} is not valid: server ")
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"mcpServers": {"a": ', "it is not JSON (Expecting value at line 1, column 22)"),
        ('{"servers": {}}', 'it must be an object with "mcpServers"'),
        ("[]", 'it must be an object with "mcpServers"'),
    ],
)
def test_a_malformed_file_stops_the_start_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "mcp.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"MCP_SERVERS_FILE={str(path)!r}")) as raised:
        McpServers(settings_for(str(path)))
    assert problem in str(raised.value)


# --- tools over stdio ----------------------------------------------------------------------------


async def test_stdio_server_tools_answer_through_the_agents_sdk(
    tmp_path, gemini, mcp_servers, caplog
):
    caplog.set_level(logging.INFO, logger="gemini_chat.mcp")
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path, TEAM="${TEAM_NAME}")})
    servers = mcp_servers(settings_for(path), {"TEAM_NAME": "rockets"})
    tools, notices = await servers.tools()
    assert notices == []
    # Prefixed with the server's name: never the name of a built-in or of another server's tool.
    assert [tool.name for tool in tools] == [
        "mcp_notes__lookup_note",
        "mcp_notes__show_setting",
        "mcp_notes__slow_tool",
        "mcp_notes__exit_server",
    ]

    gemini.script(
        tool_call_reply(
            ToolCall("mcp_notes__lookup_note", {"key": "launch"}, id="call_1"),
            ToolCall("mcp_notes__show_setting", {"name": "TEAM"}, id="call_2"),
            shape="openai",
        ),
        Reply(text="The launch is on Tuesday."),
    )
    assert await run_agent(gemini, tools, "When is the launch?") == "The launch is on Tuesday."

    first, follow_up = await gemini.arrived(2)
    offered = {tool["function"]["name"]: tool["function"] for tool in first.body["tools"]}
    assert offered["mcp_notes__lookup_note"]["parameters"]["properties"] == {
        "key": {"title": "Key", "type": "string"}
    }
    assert offered["mcp_notes__lookup_note"]["description"].startswith("A note from the team's")
    results = [m for m in follow_up.messages if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in results] == [
        ("call_1", NOTE),
        # The ${TEAM_NAME} of the file, taken from the environment, reached the server.
        ("call_2", "rockets"),
    ]
    # The server's stderr is in the log, under its name.
    pid = pid_of(tmp_path)
    assert f"MCP server 'notes': test MCP server {pid} starting" in caplog.text


async def test_stdio_server_gets_no_secret_of_the_app(tmp_path, mcp_servers, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "the-apps-own-key")
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path)})
    tools, _ = await mcp_servers(settings_for(path)).tools()
    show = named(tools, "mcp_notes__show_setting")
    assert await call(show, {"name": "GEMINI_API_KEY"}) == "(not set)"
    assert await call(show, {"name": "MCP_TEST_PID_FILE"}) == str(tmp_path / "notes.pid")


async def test_tool_approval_takes_an_mcp_tools_name(tmp_path, mcp_servers):
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path)})
    tools, _ = await mcp_servers(settings_for(path)).tools()
    settings = Settings(tools=(), tool_approval=("mcp_notes__lookup_note",))
    asked: list[str] = []

    class Denying(SeenCalls):
        async def approve(self, call_id, name, arguments, wait_seconds) -> bool:
            asked.append(name)
            return False

    for tool in tools[:2]:
        arguments = json.dumps({"key": "launch"} if tool.name.endswith("note") else {"name": "X"})
        context = ToolContext(
            context=TurnContext(Denying()),
            tool_name=tool.name,
            tool_call_id="call_a",
            tool_arguments=arguments,
        )
        output = await guard(tool, settings).on_invoke_tool(context, arguments)
        assert ("did not allow" in output) == (tool.name == "mcp_notes__lookup_note")
    assert asked == ["mcp_notes__lookup_note"]


async def test_many_chats_at_once_share_one_server_process(tmp_path, mcp_servers, caplog):
    caplog.set_level(logging.INFO, logger="gemini_chat.mcp")
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path)})
    servers = mcp_servers(settings_for(path))
    results = await asyncio.gather(*(servers.tools() for _ in range(20)))
    assert all(len(tools) == 4 and notices == [] for tools, notices in results)
    answers = await asyncio.gather(
        *(call(named(tools, "mcp_notes__lookup_note"), {"key": "launch"}) for tools, _ in results)
    )
    assert answers == [NOTE] * 20
    assert caplog.text.count("Starting MCP server 'notes'") == 1
    assert len(re.findall(r"test MCP server \d+ starting", caplog.text)) == 1


async def test_a_chat_stopped_while_waiting_does_not_stop_the_start_for_the_others(
    tmp_path, mcp_servers
):
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path)})
    servers = mcp_servers(settings_for(path))
    stopped = asyncio.create_task(servers.tools())
    other = asyncio.create_task(servers.tools())
    await asyncio.sleep(0)  # both are waiting on the one start
    stopped.cancel()
    tools, notices = await other
    assert len(tools) == 4 and notices == []
    with pytest.raises(asyncio.CancelledError):
        await stopped


# --- failures ----------------------------------------------------------------------------------


async def test_a_server_that_cannot_start_gives_a_notice_and_the_others_still_work(
    tmp_path, mcp_servers, caplog
):
    path = write_config(
        tmp_path,
        {"broken": {"command": str(tmp_path / "no-such-server")}, "notes": stdio_entry(tmp_path)},
    )
    servers = mcp_servers(settings_for(path))
    tools, notices = await servers.tools()
    assert notices == [
        "The tool server 'broken' is not available (it could not be started); answering without it."
    ]
    assert [tool.name for tool in tools][:1] == ["mcp_notes__lookup_note"]
    assert "no-such-server" in caplog.text  # the detail is for the operator's log
    # Tried again on the next message.
    _, notices = await servers.tools()
    assert len(notices) == 1
    assert caplog.text.count("MCP server 'broken' is not available") == 2


async def test_a_server_too_slow_to_start_gives_a_notice_and_is_stopped(tmp_path, mcp_servers):
    path = write_config(
        tmp_path, {"slow": stdio_entry(tmp_path, "slow", MCP_TEST_START_DELAY="60")}
    )
    servers = mcp_servers(settings_for(path, mcp_timeout=1.5))
    started = time.monotonic()
    tools, notices = await servers.tools()
    waited = time.monotonic() - started
    assert tools == []
    assert notices == [
        "The tool server 'slow' is not available (it did not start in 1.5 s); answering without it."
    ]
    assert 1.5 <= waited < 3
    # The process that did not start in time is not left behind.
    assert await gone(pid_of(tmp_path, "slow"))


async def test_a_server_that_stops_answering_gives_a_notice_and_is_replaced(tmp_path, mcp_servers):
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path)})
    servers = mcp_servers(settings_for(path, mcp_timeout=1))
    await servers.tools()
    hung = pid_of(tmp_path)
    os.kill(hung, signal.SIGSTOP)  # alive, but answers nothing
    tools, notices = await servers.tools()
    assert tools == []
    assert notices == [
        "The tool server 'notes' is not available (it did not answer in 1 s); answering without it."
    ]
    assert await gone(hung)  # the hung process is not left behind
    tools, notices = await servers.tools()
    assert notices == [] and pid_of(tmp_path) != hung
    assert await call(named(tools, "mcp_notes__lookup_note"), {"key": "launch"}) == NOTE


async def test_a_server_killed_between_messages_is_back_on_the_next(tmp_path, mcp_servers):
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path)})
    servers = mcp_servers(settings_for(path))
    await servers.tools()
    first = pid_of(tmp_path)
    os.kill(first, signal.SIGKILL)
    assert await gone(first)

    tools, notices = await servers.tools()
    assert notices == []
    assert pid_of(tmp_path) != first
    assert await call(named(tools, "mcp_notes__lookup_note"), {"key": "launch"}) == NOTE


async def test_a_server_killed_during_a_call_is_a_tool_error_then_back(
    tmp_path, mcp_servers, wait_for_log
):
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path)})
    servers = mcp_servers(settings_for(path))
    tools, _ = await servers.tools()
    first = pid_of(tmp_path)
    calling = wait_for_log("Processing request of type CallToolRequest")
    slow = asyncio.create_task(run_tool(named(tools, "mcp_notes__slow_tool"), {"seconds": 30}))
    await calling.wait()
    os.kill(first, signal.SIGKILL)
    output, error = await asyncio.wait_for(slow, 5)
    assert error == f"{STOPPED.format('notes')}"
    assert output == f"Error: mcp_notes__slow_tool failed: {STOPPED.format('notes')}"
    # A tool of the dead server called again in the same turn fails the same clear way.
    output, error = await run_tool(named(tools, "mcp_notes__lookup_note"), {"key": "launch"})
    assert error == f"{STOPPED.format('notes')}"

    tools, notices = await servers.tools()
    assert notices == [] and pid_of(tmp_path) != first
    assert await call(named(tools, "mcp_notes__lookup_note"), {"key": "launch"}) == NOTE


async def test_stop_during_a_call_ends_it_and_the_server_stays(tmp_path, mcp_servers, wait_for_log):
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path)})
    servers = mcp_servers(settings_for(path))
    tools, _ = await servers.tools()
    calling = wait_for_log("Processing request of type CallToolRequest")
    slow = asyncio.create_task(run_tool(named(tools, "mcp_notes__slow_tool"), {"seconds": 30}))
    await calling.wait()
    slow.cancel()  # what Stop does to the turn's task
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(slow, 2)
    # The same server process goes on serving, in this turn and the next.
    pid = pid_of(tmp_path)
    assert await call(named(tools, "mcp_notes__lookup_note"), {"key": "launch"}) == NOTE
    tools, notices = await servers.tools()
    assert notices == [] and pid_of(tmp_path) == pid


async def test_a_server_that_exits_in_a_call_is_a_tool_error_then_back(tmp_path, mcp_servers):
    path = write_config(tmp_path, {"notes": stdio_entry(tmp_path)})
    servers = mcp_servers(settings_for(path))
    tools, _ = await servers.tools()
    first = pid_of(tmp_path)
    _, error = await run_tool(named(tools, "mcp_notes__exit_server"), {})
    assert error == f"{STOPPED.format('notes')}"
    tools, notices = await servers.tools()
    assert notices == [] and pid_of(tmp_path) != first
    assert await call(named(tools, "mcp_notes__slow_tool"), {"seconds": 0}) == "Waited 0 s."


async def test_close_stops_every_server_process(tmp_path):
    path = write_config(
        tmp_path, {"notes": stdio_entry(tmp_path), "more": stdio_entry(tmp_path, "more")}
    )
    servers = McpServers(settings_for(path), environ={})
    await servers.tools()
    pids = [pid_of(tmp_path), pid_of(tmp_path, "more")]
    assert all(running(pid) for pid in pids)
    await servers.close()
    assert not any(running(pid) for pid in pids)
    assert await servers.tools() == ([], [])  # after shutdown nothing starts again


async def test_close_while_a_server_is_starting_leaves_no_process(tmp_path, wait_for_log):
    slow = stdio_entry(tmp_path, "slow", MCP_TEST_START_DELAY="60")
    servers = McpServers(settings_for(write_config(tmp_path, {"slow": slow})), environ={})
    spawned = wait_for_log(r"test MCP server \d+ starting")
    waiting = asyncio.create_task(servers.tools())
    await spawned.wait()
    pid = pid_of(tmp_path, "slow")
    await servers.close()
    assert not running(pid)
    with pytest.raises(asyncio.CancelledError):
        await waiting  # the message that was waiting ends with the app


# --- streamable HTTP ---------------------------------------------------------------------------


async def test_http_server_tools_with_headers_from_the_environment(
    tmp_path, gemini, mcp_servers, http_server
):
    server = await http_server()
    path = write_config(
        tmp_path, {"web": {"url": server.url, "headers": {"X-Team-Token": "${TEAM_TOKEN}"}}}
    )
    servers = mcp_servers(settings_for(path), {"TEAM_TOKEN": "s3cret-token"})
    tools, notices = await servers.tools()
    assert notices == []
    gemini.script(
        tool_call_reply(
            ToolCall("mcp_web__show_setting", {"name": "x-team-token"}, id="call_1"),
            shape="openai",
        ),
        Reply(text="Your token arrived."),
    )
    assert await run_agent(gemini, tools, "Did my token arrive?") == "Your token arrived."
    _, follow_up = await gemini.arrived(2)
    assert [m["content"] for m in follow_up.messages if m["role"] == "tool"] == ["s3cret-token"]


async def test_http_server_gone_gives_a_notice_and_is_back_when_it_is(
    tmp_path, mcp_servers, http_server
):
    server = await http_server()
    path = write_config(tmp_path, {"web": {"url": server.url}})
    servers = mcp_servers(settings_for(path))
    tools, _ = await servers.tools()
    assert await call(named(tools, "mcp_web__lookup_note"), {"key": "budget"}) == (
        "The budget is 4,200 EUR."
    )

    await server.kill()
    started = time.monotonic()
    _, error = await run_tool(named(tools, "mcp_web__lookup_note"), {"key": "budget"})
    assert error == f"{STOPPED.format('web')}"
    assert time.monotonic() - started < 2  # not after a time limit: the server is known gone
    tools, notices = await servers.tools()
    assert tools == []
    assert notices == [
        "The tool server 'web' is not available (it could not be reached); answering without it."
    ]

    await http_server(server.port)  # back on the same address
    tools, notices = await servers.tools()
    assert notices == []
    assert await call(named(tools, "mcp_web__lookup_note"), {"key": "launch"}) == NOTE


async def test_http_server_gone_during_a_call_is_a_tool_error_within_the_timeout(
    tmp_path, mcp_servers, http_server
):
    server = await http_server()
    path = write_config(tmp_path, {"web": {"url": server.url}})
    servers = mcp_servers(settings_for(path, mcp_timeout=1))
    tools, _ = await servers.tools()
    slow = asyncio.create_task(run_tool(named(tools, "mcp_web__slow_tool"), {"seconds": 30}))
    await server.logged("Processing request of type CallToolRequest")
    await server.kill()
    killed = time.monotonic()
    # Known within about MCP_TIMEOUT_SECONDS, not after TOOL_TIMEOUT_SECONDS (30).
    _, error = await asyncio.wait_for(slow, 10)
    assert error == f"{STOPPED.format('web')}"
    assert time.monotonic() - killed < 5


async def test_unreachable_http_server_gives_a_notice(tmp_path, mcp_servers):
    path = write_config(tmp_path, {"web": {"url": f"http://127.0.0.1:{free_port()}/mcp"}})
    tools, notices = await mcp_servers(settings_for(path)).tools()
    assert tools == []
    assert notices == [
        "The tool server 'web' is not available (it could not be reached); answering without it."
    ]


# --- never from the browser --------------------------------------------------------------------


def test_chainlits_mcp_panel_stays_off():
    config = tomllib.loads((ROOT / ".chainlit" / "config.toml").read_text())
    assert config["features"]["mcp"]["enabled"] is False
    assert config["features"]["mcp"]["user_servers"]["enabled"] is False


# --- the real app ------------------------------------------------------------------------------


def tool_results(request) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in request.messages if m["role"] == "tool"}


def offered_tools(request) -> list[str]:
    return [tool["function"]["name"] for tool in request.body.get("tools", [])]


async def test_the_app_answers_with_mcp_tools_and_goes_on_without_a_server_that_died(
    tmp_path, gemini, start_app_with, http_server
):
    web_port = free_port()
    path = write_config(
        tmp_path,
        {"notes": stdio_entry(tmp_path), "web": {"url": f"http://127.0.0.1:{web_port}/mcp"}},
    )
    web = await http_server(web_port)
    app = start_app_with(MCP_SERVERS_FILE=path, TOOLS="none", MCP_TIMEOUT_SECONDS="5")
    chat = await ChatClient(app.url).connect()
    await chat.wait_for(chat.assistant_messages, what="the welcome message")
    try:
        # 1. A message whose answer uses an MCP tool.
        gemini.script(
            tool_call_reply(
                ToolCall("mcp_notes__lookup_note", {"key": "launch"}, id="call_1"), shape="openai"
            ),
            Reply("The launch is on Tuesday."),
        )
        replies = await chat.ask("When is the launch?")
        assert [(m.content, m.is_error) for m in replies] == [("The launch is on Tuesday.", False)]
        first, follow_up = await gemini.arrived(2)
        assert offered_tools(first) == [
            *(f"mcp_notes__{name}" for name in ("lookup_note", "show_setting", "slow_tool")),
            "mcp_notes__exit_server",
            *(f"mcp_web__{name}" for name in ("lookup_note", "show_setting", "slow_tool")),
            "mcp_web__exit_server",
        ]
        assert tool_results(follow_up) == {"call_1": NOTE}
        first_pid = pid_of(tmp_path)

        # 2. The HTTP server is gone: a notice, and the answer comes without its tools.
        await web.kill()
        gemini.reset()
        gemini.script(Reply("Answered without the web tools."))
        replies = await chat.ask("Anything new?")
        assert [(m.content, m.is_error) for m in replies] == [
            (
                "The tool server 'web' is not available (it could not be reached); answering "
                "without it.",
                True,
            ),
            ("Answered without the web tools.", False),
        ]
        (request,) = await gemini.arrived(1)
        assert [name for name in offered_tools(request) if not name.startswith("mcp_notes__")] == []

        # 3. The stdio server dies during a call: the model reads a clear error, the answer
        # goes on.
        gemini.reset()
        gemini.script(
            tool_call_reply(ToolCall("mcp_notes__exit_server", {}, id="call_2"), shape="openai"),
            Reply("The notes server stopped."),
        )
        replies = await chat.ask("Stop the notes server.")
        assert [m.content for m in replies if not m.is_error][-1] == "The notes server stopped."
        _, follow_up = await gemini.arrived(2)
        # (The history carries the earlier turns' calls too.)
        assert tool_results(follow_up)["call_2"] == (
            "Error: mcp_notes__exit_server failed: " + STOPPED.format("notes")
        )

        # 4. Both are back on the next message (the HTTP one once it listens again).
        await http_server(web_port)
        gemini.reset()
        gemini.script(
            tool_call_reply(
                ToolCall("mcp_notes__lookup_note", {"key": "launch"}, id="call_3"),
                ToolCall("mcp_web__lookup_note", {"key": "budget"}, id="call_4"),
                shape="openai",
            ),
            Reply("Tuesday, 4,200 EUR."),
        )
        replies = await chat.ask("Launch and budget?")
        assert [(m.content, m.is_error) for m in replies] == [("Tuesday, 4,200 EUR.", False)]
        _, follow_up = await gemini.arrived(2)
        results = tool_results(follow_up)
        assert (results["call_3"], results["call_4"]) == (NOTE, "The budget is 4,200 EUR.")
        last_pid = pid_of(tmp_path)
        assert last_pid != first_pid

        # The servers' stderr went to the app's log, never to the chat.
        assert f"MCP server 'notes': test MCP server {last_pid} starting" in app.log()
        assert not any("test MCP server" in text for _, text in chat.transcript())
        # Nor does the log hold the HTTP server's session id or a line per request to it.
        assert "session ID" not in app.log() and f":{web_port}/mcp" not in app.log()
    finally:
        await chat.disconnect()

    # At shutdown the app stops its MCP servers: no process is left behind.
    assert running(last_pid)
    await asyncio.to_thread(app.stop)
    assert app.process.returncode == 0
    assert not running(last_pid)


async def test_a_malformed_servers_file_stops_the_app_in_one_line(tmp_path, start_app_with):
    path = write_config(tmp_path, {"files": {"command": "files-server", "args": "--all"}})
    app = start_app_with(wait=False, MCP_SERVERS_FILE=path, TOOLS="none")
    await asyncio.to_thread(app.process.wait, 60)
    assert app.process.returncode == 2
    # Chainlit's own lines (e.g. "Running in CI mode" under CI=true) aside, one line, no trace.
    output = app.log()
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if "Configuration error" in line] == [
        f"Configuration error: MCP_SERVERS_FILE={path!r} is not valid: server 'files': "
        '"args" must be a list of strings.'
    ]


async def test_the_browser_cannot_add_an_mcp_server(tmp_path, gemini, start_app_with):
    app = start_app_with(TOOLS="none")
    chat = await ChatClient(app.url).connect()
    marker = tmp_path / "added-from-the-browser"
    try:
        await chat.wait_for(chat.assistant_messages, what="the welcome message")
        for body in (
            {"clientType": "stdio", "name": "evil", "fullCommand": f"touch {marker}"},
            {"clientType": "streamable-http", "name": "evil", "url": "http://127.0.0.1:9/mcp"},
        ):
            status, _ = await asyncio.to_thread(
                chat._post_json, "/mcp", {"sessionId": chat.session_id, **body}
            )
            assert status == 403
    finally:
        await chat.disconnect()
    assert not marker.exists()
