"""What storing streaming answers costs: app CPU per token of a 5,000-token reply, with the
partial saves at their default interval, at a short one, and in effect off.

    uv run python -m bench.partial_saves

Each setting runs its own `chainlit run` against the fake Gemini server: a reply at full
upstream speed (over before a first save is due) and one paced over about ten seconds (several
saves, each writing the whole text so far).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench.run import AppDriver, cpu_seconds, expected_text
from tests.app_process import ROOT, start_app
from tests.fake_gemini import DEFAULT_KEY

TOKENS = 5000
RUNS = 3
# Saves every 3 s (the default), every 0.2 s, and never within a reply (a day).
SETTINGS = {"default (3 s)": "3", "every 0.2 s": "0.2", "off": "86400"}
REPLIES = {"full speed": f"bench {TOKENS} 0 0", "paced 10 s": f"bench {TOKENS} 0.002 0"}


async def measure(url: str, pid: int) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        driver = AppDriver(url, http)
        await driver.start()
        figures = {}
        for label, text in REPLIES.items():
            (chat,) = await driver.open_chats(1)
            await driver.one(chat, text)  # warm-up
            await chat.close()
            per_token = []
            for _ in range(RUNS):
                (chat,) = await driver.open_chats(1)
                cpu = cpu_seconds(pid)
                await driver.one(chat, text)
                per_token.append((cpu_seconds(pid) - cpu) / TOKENS)
                assert chat.reply.text == expected_text(TOKENS), "reply not intact"
                await chat.close()
            figures[label] = statistics.median(per_token) * 1e6
        return figures


def main() -> int:
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_gemini"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    fake_url = fake.stdout.readline().strip()
    rows = {}
    try:
        for label, interval in SETTINGS.items():
            directory = Path(tempfile.mkdtemp(prefix="gemini-chat-bench-"))
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "OPENAI_"))},
                "GEMINI_API_KEY": DEFAULT_KEY,
                "GEMINI_BASE_URL": fake_url,
                "CHAINLIT_ENV_FILE": "/nonexistent/.env",
                "DATABASE_URL": f"sqlite+aiosqlite:///{directory}/bench.db",
                "PARTIAL_SAVE_SECONDS": interval,
                "TOOLS": "none",
            }
            app = start_app(env)
            try:
                rows[label] = asyncio.run(measure(app.url, app.pid))
            finally:
                app.stop()
    finally:
        fake.terminate()
    print(f"{'app CPU per token (us)':24}" + "".join(f"{r:>14}" for r in REPLIES))
    for label, figures in rows.items():
        print(f"{label:24}" + "".join(f"{figures[r]:>14.1f}" for r in REPLIES))
    print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
