"""Memory per wave, the browser's way: what a repeated wave of 500 chats leaves in the app once
their tabs are closed and their sessions have expired.

    uv run python -m bench.memory                        # both kinds of client, about 10 minutes
    uv run python -m bench.memory --session-timeout 300  # the reconnection window as shipped
    uv run python -m bench.memory --objects              # also count live objects by type

For each kind of client (browser-like: long-polling, then the websocket upgrade; and
websocket-only), one app as bench/run.py starts it (the real `chainlit run`, SQLite, the fake
Gemini server as a process). A warm-up wave, then two waves of 500 chats streaming 100 tokens
200 ms apart, every chat leaving by closing its tab (no "New chat": the session stays for the
reconnection window). After each wave the benchmark waits until the app holds none of the
wave's sessions any more, read from inside the app by bench/memprobe.py (loaded for the run
only), then reads the app's resident memory. Chainlit keeps a closed tab's session for its
`session_timeout` (300 s in .chainlit/config.toml); so that a run takes minutes, not half an
hour, the run's copy of that file says 60 s unless ``--session-timeout`` says otherwise, and the
output says which was used. Target: the second wave adds at most 5 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import aiohttp

from bench.client import BrowserChat
from bench.run import AppDriver, app_env, machine, machine_line, report, rss_mb, settle
from bench.stack import FakeUpstream
from tests.app_process import ROOT, app_directory, start_app

CHATS = 500
TOKENS = 100
DELAY = 0.2
TARGET_MB = 5.0
SHIPPED_TIMEOUT = 300
KINDS = {"browser": BrowserChat.transports, "websocket-only": ("websocket",)}


def directory_with_session_timeout(seconds: int) -> Path:
    """The app's directory (as tests/app_process.py makes it) with its own copy of
    .chainlit/config.toml, whose session_timeout is ``seconds``."""
    directory = app_directory()
    (directory / ".chainlit").unlink()
    shutil.copytree(ROOT / ".chainlit", directory / ".chainlit")
    config = directory / ".chainlit" / "config.toml"
    text, count = re.subn(
        r"(?m)^session_timeout = \d+", f"session_timeout = {seconds}", config.read_text()
    )
    assert count == 1, "session_timeout not found in .chainlit/config.toml"
    config.write_text(text)
    return directory


class Probe:
    """Asks the app (bench/memprobe.py) what it keeps, by a signal, and reads the answer."""

    def __init__(self, pid: int, path: Path) -> None:
        self.pid, self.path = pid, path

    async def read(self, objects: bool = False) -> dict:
        self.path.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1 if objects else signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not self.path.exists():  # the app answers between two steps of its loop
            if time.monotonic() > deadline:
                raise TimeoutError("the app did not answer the memory probe")
            await asyncio.sleep(0.05)
        return json.loads(self.path.read_text())

    async def wait_expired(self, within: float) -> tuple[dict, float]:
        """Until Chainlit has let every session go (no session, no user session, no socket);
        what the app keeps then and how long it took. Raises if ``within`` seconds pass first.
        (Whatever the app itself still keeps of them, e.g. chat contexts, is reported.)"""
        start = time.monotonic()
        while True:
            kept = await self.read()
            held = (
                kept["sessions"]
                + kept["sessions_by_socket"]
                + kept["user_sessions"]
                + kept["engineio_sockets"]
            )
            if held == 0:
                return kept, time.monotonic() - start
            if time.monotonic() - start > within:
                raise TimeoutError(f"sessions still kept after {within:.0f} s: {kept}")
            await asyncio.sleep(2)


def grown(before: dict, after: dict, top: int = 15) -> list[tuple[str, int]]:
    """The object types whose count grew most from ``before`` to ``after``."""
    types = after.get("types", {})
    growth = {name: n - before.get("types", {}).get(name, 0) for name, n in types.items()}
    return sorted(((n, g) for n, g in growth.items() if g > 0), key=lambda i: -i[1])[:top]


async def measure_kind(
    kind: str, fake_url: str, session_timeout: int, objects: bool, tracemalloc: int
) -> dict:
    directory = directory_with_session_timeout(session_timeout)
    probe_file = directory / "memprobe.json"
    env = app_env(
        fake_url,
        TOOL_MODULES="bench.tools,bench.memprobe",
        MEMPROBE_FILE=str(probe_file),
        **({"PYTHONTRACEMALLOC": str(tracemalloc)} if tracemalloc else {}),
    )
    app = start_app(env, directory=directory)
    probe = Probe(app.pid, probe_file)
    wait = session_timeout + 90  # the window, the app's release one second later, slack
    result: dict = {"kind": kind, "transports": list(KINDS[kind]), "waves": []}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            driver = AppDriver(app.url, http, transports=KINDS[kind])
            await driver.start()
            # Warm-up: every path a wave takes, run once, its sessions expired too.
            await driver.wave(20, 5, 0.01, f"{kind}: warm-up", close_tab=True)
            await probe.wait_expired(wait)
            await settle(2)
            result["before_mb"] = rss_mb(app.pid)
            previous = await probe.read(objects) if objects else {}
            for number in (1, 2):
                wave = await driver.wave(
                    CHATS, TOKENS, DELAY, f"{kind}: wave {number}", close_tab=True
                )
                ended_mb = rss_mb(app.pid)
                kept, waited = await probe.wait_expired(wait)
                await settle(2)
                after = rss_mb(app.pid)
                state = await probe.read(objects) if objects else kept
                result["waves"].append(
                    {
                        "intact": wave.intact,
                        "chats": wave.chats,
                        "rss_when_tabs_closed_mb": ended_mb,
                        "released_after_s": waited,
                        "rss_after_mb": after,
                        "malloc": state["malloc"],
                        "tasks": state["tasks"],
                        "chat_contexts_kept": state["chat_contexts"],
                        **({"grown": grown(previous, state)} if objects else {}),
                    }
                )
                previous = state
    finally:
        app.stop()
    first, second = result["waves"]
    result["first_wave_added_mb"] = first["rss_after_mb"] - result["before_mb"]
    result["second_wave_added_mb"] = second["rss_after_mb"] - first["rss_after_mb"]
    return result


def render(results: dict) -> str:
    timeout = results["session_timeout_s"]
    lines = [
        machine_line(results["machine"]),
        f"Chainlit's session_timeout: {timeout} s for this run"
        + ("" if timeout == SHIPPED_TIMEOUT else f" (shipped: {SHIPPED_TIMEOUT} s; shortened)"),
        f"{CHATS} chats a wave, {TOKENS} tokens {DELAY * 1000:.0f} ms apart, tabs closed.",
        "",
        f"{'':16}{'before':>8}{'wave 1':>8}{'expired':>9}{'wave 2':>8}{'expired':>9}"
        f"{'added 1':>9}{'added 2':>9}  (MB)",
    ]
    for kind in results["kinds"]:
        one, two = kind["waves"]
        lines.append(
            f"{kind['kind']:16}{kind['before_mb']:>8.1f}{one['rss_when_tabs_closed_mb']:>8.1f}"
            f"{one['rss_after_mb']:>9.1f}{two['rss_when_tabs_closed_mb']:>8.1f}"
            f"{two['rss_after_mb']:>9.1f}{kind['first_wave_added_mb']:>+9.1f}"
            f"{kind['second_wave_added_mb']:>+9.1f}"
        )
    lines.append("")
    for kind in results["kinds"]:
        for number, wave in enumerate(kind["waves"], 1):
            lines.append(
                f"{kind['kind']}, wave {number}: {wave['intact']}/{wave['chats']} intact, "
                f"sessions expired {wave['released_after_s']:.0f} s after the tabs closed, "
                f"chat contexts still kept {wave['chat_contexts_kept']}, "
                f"glibc heap in use {wave['malloc'].get('uordblks', 0) / 2**20:.1f} MB, "
                f"free in heap {wave['malloc'].get('fordblks', 0) / 2**20:.1f} MB"
            )
            for name, count in wave.get("grown", []):
                lines.append(f"    {count:+8d}  {name}")
    lines += ["", "Targets:"]
    for name, value, ok in verdicts(results):
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}: {value}")
    return "\n".join(lines)


def verdicts(results: dict) -> list[tuple[str, str, bool]]:
    rows = []
    for kind in results["kinds"]:
        added = kind["second_wave_added_mb"]
        intact = all(w["intact"] == w["chats"] for w in kind["waves"])
        kept = kind["waves"][-1]["chat_contexts_kept"]
        rows.append(
            (
                f"{kind['kind']} clients: second wave of {CHATS} adds at most {TARGET_MB:.0f} MB",
                f"{added:+.1f} MB" + ("" if intact else " (some replies not intact)"),
                added <= TARGET_MB and intact,
            )
        )
        rows.append(
            (
                f"{kind['kind']} clients: nothing of an expired session kept",
                f"{kept} chat contexts kept",
                kept == 0,
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--session-timeout",
        type=int,
        default=60,
        help=f"Chainlit's session_timeout for the run (shipped: {SHIPPED_TIMEOUT} s)",
    )
    parser.add_argument(
        "--kind", choices=sorted(KINDS), action="append", help="only this kind of client"
    )
    parser.add_argument(
        "--objects", action="store_true", help="count live objects by type after each wave"
    )
    parser.add_argument(
        "--tracemalloc", type=int, default=0, help="run the app under tracemalloc, N frames"
    )
    args = parser.parse_args()
    results: dict = {"machine": machine(), "session_timeout_s": args.session_timeout, "kinds": []}
    with FakeUpstream() as fake:
        for kind in args.kind or list(KINDS):
            results["kinds"].append(
                asyncio.run(
                    measure_kind(
                        kind, fake.url, args.session_timeout, args.objects, args.tracemalloc
                    )
                )
            )
    results["machine"]["load_average_at_end"] = os.getloadavg()
    return report("memory", results, render(results), verdicts(results))


if __name__ == "__main__":
    sys.exit(main())
