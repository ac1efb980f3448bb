"""A real MCP server for the tests, built on the `mcp` package's FastMCP.

Run it over stdio (``python tests/mcp_server.py``) or streamable HTTP
(``python tests/mcp_server.py --http PORT``, served at ``http://127.0.0.1:PORT/mcp``).

Its tools: ``lookup_note(key)`` (a fixed answer), ``show_setting(name)`` (a variable of its
own environment, or a header of the HTTP request: proof of what the app passed it),
``slow_tool(seconds)`` and ``exit_server()`` (the process ends in the middle of the call).

Environment: ``MCP_TEST_PID_FILE`` (the process writes its pid there when it starts, so a test can
kill it or check it is gone), ``MCP_TEST_START_DELAY`` (seconds to wait before serving: a server
that starts too slowly). It writes one line to stderr when it starts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from mcp.server.fastmcp import Context, FastMCP

NOTES = {"launch": "The launch is on Tuesday at 10:00.", "budget": "The budget is 4,200 EUR."}

server = FastMCP("test-notes")


@server.tool()
def lookup_note(key: str) -> str:
    """A note from the team's notebook, by key (e.g. "launch")."""
    return NOTES.get(key, f"No note called {key!r}.")


@server.tool()
def show_setting(name: str, ctx: Context) -> str:
    """A setting this server was given: an HTTP request header, else an environment variable."""
    request = ctx.request_context.request
    if request is not None:
        return request.headers.get(name, "(no such header)")
    return os.environ.get(name, "(not set)")


@server.tool()
async def slow_tool(seconds: float) -> str:
    """Wait ``seconds``, then say so."""
    await asyncio.sleep(seconds)
    return f"Waited {seconds:g} s."


@server.tool()
def exit_server() -> str:
    """End this server's process in the middle of the call (a crash)."""
    sys.stderr.flush()
    os._exit(3)


def main() -> None:
    if pid_file := os.environ.get("MCP_TEST_PID_FILE"):
        with open(pid_file, "w") as file:
            file.write(str(os.getpid()))
    print(f"test MCP server {os.getpid()} starting", file=sys.stderr, flush=True)
    # A server that is slow to come up: it reads nothing (stdio) or listens on nothing (HTTP)
    # until the delay has passed.
    time.sleep(float(os.environ.get("MCP_TEST_START_DELAY", "0")))
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.settings.port = int(sys.argv[2])
        server.run("streamable-http")
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
