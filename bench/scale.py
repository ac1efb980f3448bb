"""The deployed stack with one instance, then two, in one run: what a second instance buys.

    uv run python -m bench.scale            # the full run (5 to 10 minutes on 2 cores)
    uv run python -m bench.scale --quick    # 100 chats together and fewer capacity steps

For each size, the same pieces (bench/stack.py): the real `chainlit run` instances behind nginx
(deploy/nginx.conf rendered for them), one PostgreSQL cluster (a fresh database per size), the
fake Gemini server as its own process, and browser-like tabs (bench/client.py) in this process.
Both stacks stay up and are driven one at a time, wave by wave in turn, so that other work on
the machine weighs on both alike. Each gets a warm-up, then:

- 500 chats together: 500 tabs connected first (new browsers, so nginx spreads them in turn),
  then all send at once, 100 tokens 0.2 s apart: first-token p50/p95, completion against the
  natural time, every reply exactly the expected text;
- capacity: chats of 500 tokens 10 ms apart, their starts spread over a second, in growing
  steps; a step fits when every chat ends within 1.1x its natural time, all intact;
- the CPU seconds of every process (instances, nginx, PostgreSQL, the fake server, this one),
  how nginx spread the tabs, and the database's work per chat (pg_stat_database, pg_stat_wal);
- the relay between instances: its notifications per answer, with no tab elsewhere and with a
  tab following the answer from the other instance.

It prints both sizes side by side with the targets (two instances: at most 0.6x the one
instance's first-token p95 for 500 chats together, at least 1.5x its capacity), saves the JSON
under bench/results/ and exits non-zero when a target fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from bench.client import BrowserChat
from bench.run import (
    AppDriver,
    cpu_seconds,
    expected_text,
    machine,
    machine_line,
    report,
    summary,
)
from bench.stack import FakeUpstream, Postgres, Stack
from gemini_chat.relay import CHANNEL

FIRST_TOKEN_TARGET = 0.6  # two instances' p95 against one instance's, at most
CAPACITY_TARGET = 1.5  # two instances' capacity against one instance's, at least
# PostgreSQL backends report their statistics when idle at most this late (PGSTAT_IDLE_INTERVAL
# is 10 s); a reading taken sooner misses the last writes.
STATS_SETTLE_S = 11
CAPACITY_STEPS = [10, 20, 30, 40, 50, 60, 70, 80, 100, 120, 140, 160, 180, 200, 240, 280, 320]
QUICK_CAPACITY_STEPS = [10, 30, 60, 100, 140, 180, 240, 320]


# --- what every process used ----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its children, the living and the ones it has reaped (a
    PostgreSQL backend that ended, an nginx worker): their sum only grows."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        return own + sum(tree_cpu_seconds(child) for child in _children(pid))
    except OSError:  # ended meanwhile
        return 0.0


class Processes:
    """The stack's processes by role, for CPU readings over a phase."""

    def __init__(self, stack: Stack, fake: FakeUpstream, postgres_pid: int) -> None:
        self.roles = {
            **{f"instance {i + 1}": pid for i, pid in enumerate(stack.pids)},
            "nginx": stack.nginx_pid,
            "postgres": postgres_pid,
            "fake Gemini": fake.pid,
        }

    def read(self) -> dict[str, float]:
        readings = {role: tree_cpu_seconds(pid) for role, pid in self.roles.items()}
        readings["bench clients"] = cpu_seconds(os.getpid())
        return readings

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {role: after[role] - before[role] for role in before}


# --- the database and the relay ---------------------------------------------------------------

DATABASE_COUNTERS = (
    "SELECT d.xact_commit, d.xact_rollback, d.tup_inserted, d.tup_updated, d.tup_deleted, "
    "d.tup_fetched, d.blks_read, w.wal_records, w.wal_bytes "
    "FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()"
)


class Database:
    """A connection of the bench's own to the stack's database: its statistics, and the
    relay's channel heard as an instance hears it."""

    def __init__(self, database_url: str) -> None:
        self.dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.heard: list[dict] = []
        self.bytes_heard = 0

    async def __aenter__(self) -> Database:
        self.connection = await asyncpg.connect(self.dsn)
        self.listener = await asyncpg.connect(self.dsn)
        await self.listener.add_listener(CHANNEL, self._heard)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.listener.close()
        await self.connection.close()

    def _heard(self, _connection, _pid, _channel, payload: str) -> None:
        self.bytes_heard += len(payload.encode())
        self.heard.append(json.loads(payload))

    def heard_end(self) -> bool:
        """Whether the end of a followed answer went over the channel."""
        return any(m.get("k") == "ev" and m.get("e") == "end" for m in self.heard)

    def forget(self) -> None:
        self.heard, self.bytes_heard = [], 0

    def notifications(self) -> dict:
        kinds = Counter(m.get("k", "?") for m in self.heard)
        pieces = Counter(m.get("e") for m in self.heard if m.get("k") == "ev")
        return {
            "count": len(self.heard),
            "bytes": self.bytes_heard,
            "by_kind": dict(kinds),
            "changes_by_kind": {str(k): v for k, v in pieces.items()},
        }

    async def counters(self) -> dict[str, int]:
        await self.connection.execute("SELECT pg_stat_clear_snapshot()")
        row = await self.connection.fetchrow(DATABASE_COUNTERS)
        return {key: int(value) for key, value in row.items()}  # wal_bytes is a numeric

    async def thread_asking(self, text: str) -> str | None:
        found = await self.connection.fetchval(
            "SELECT \"threadId\" FROM steps WHERE type = 'user_message' AND output = $1", text
        )
        return str(found) if found is not None else None


def per_chat(before: dict[str, int], after: dict[str, int], chats: int) -> dict[str, float]:
    return {key: (after[key] - before[key]) / chats for key in before}


# --- one size ---------------------------------------------------------------------------------


def fits(step: dict) -> bool:
    """A capacity step fits when every chat ended within 1.1x its natural time, intact."""
    return step["slowest_ratio"] <= 1.1 and step["intact"] == step["chats"]


async def follow_elsewhere(stack: Stack, driver: AppDriver, database: Database) -> dict:
    """One answer on instance 1 followed by a tab on instance 2: the relay's notifications."""
    http = driver.http
    asker = BrowserChat(stack.url, driver.cookie + "; route=i1", http)
    await asker.connect()
    await asyncio.wait_for(asker.welcome.wait(), 30)
    database.forget()
    # A length no other wave asks for: the chat is found by its message.
    tokens, delay = 137, 0.05
    question = f"bench {tokens} {delay} 0"
    asker.reset()
    await asker.send(question)
    # The tab records what arrives without signalling each event: look at it now and then.
    while asker.reply.first_token_at is None:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    # The question is stored in the background: wait for it, as a page would wait for a link.
    thread_id = None
    deadline = time.monotonic() + 10
    while thread_id is None and time.monotonic() < deadline:
        thread_id = await database.thread_asking(question)
        await asyncio.sleep(0.05)
    if thread_id is None:
        raise RuntimeError("the followed question was not stored within 10 s")
    follower = BrowserChat(stack.url, driver.cookie + "; route=i2", http, thread_id=thread_id)
    await follower.connect()
    await asyncio.wait_for(asker.finished.wait(), 60)
    # The end goes over the channel after the asker's last event; give it the time to arrive.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not database.heard_end():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    result = database.notifications()
    result["tokens"] = tokens
    result["follower_pieces"] = follower.reply.thought_events  # stream events of a followed reply
    result["asker_intact"] = asker.reply.text == expected_text(tokens)
    await follower.close()
    await asker.close()
    return result


@dataclass
class Size:
    """One stack under test and what the bench holds of it."""

    instances: int
    stack: Stack
    driver: AppDriver
    database: Database
    processes: Processes
    result: dict

    async def wave(self, chats: int, tokens: int, delay: float, label: str, stagger=0.0):
        """A wave of chats with the CPU every process used and how nginx spread the tabs."""
        cpu, wall, since = self.processes.read(), time.perf_counter(), time.time()
        wave = await self.driver.wave(
            chats, tokens, delay, f"{self.instances}: {label}", stagger=stagger
        )
        figures = summary(wave)
        figures["cpu_s"] = Processes.used(cpu, self.processes.read())
        figures["wall_s"] = time.perf_counter() - wall
        figures["spread"] = self.stack.tabs_served(since)
        return wave, figures


async def together(size: Size, chats: int) -> dict:
    """Chats sent together, with the database's work and the relay's notifications."""
    await asyncio.sleep(STATS_SETTLE_S)
    counters = await size.database.counters()
    size.database.forget()
    _, figures = await size.wave(chats, 100, 0.2, f"{chats} chats")
    figures["notifications"] = size.database.notifications()
    await asyncio.sleep(STATS_SETTLE_S)
    figures["database_per_chat"] = per_chat(counters, await size.database.counters(), chats)
    return figures


async def measure_sizes(sizes: list[Size], quick: bool) -> None:
    """The same waves on every size in turn, so that other work on the machine weighs on
    each alike; the wave of chats together twice, in the order 1 2 2 1."""
    for size in sizes:
        # Warm-up: every instance answers short and long replies before anything counts.
        for chats, tokens, delay in ((20, 20, 0.01), (40, 100, 0.01), (20, 500, 0.01)):
            await size.wave(chats, tokens, delay, "warm-up")
    big = 100 if quick else 500
    for size in [*sizes, *reversed(sizes)]:
        size.result.setdefault("waves", []).append(await together(size, big))

    # Capacity, step by step on each size until two steps in a row do not fit (one may be
    # the machine's noise).
    misses = {size.instances: 0 for size in sizes}
    for chats in QUICK_CAPACITY_STEPS if quick else CAPACITY_STEPS:
        for size in sizes:
            if misses[size.instances] == 2:
                continue
            _, figures = await size.wave(chats, 500, 0.01, f"capacity {chats}", stagger=1.0)
            size.result.setdefault("capacity_steps", []).append(figures)
            misses[size.instances] = 0 if fits(figures) else misses[size.instances] + 1
        if all(missed == 2 for missed in misses.values()):
            break
    for size in sizes:
        steps = size.result["capacity_steps"]
        size.result["capacity_tokens_per_s"] = max(
            (s["tokens_per_s"] for s in steps if fits(s)), default=0.0
        )
        if size.instances > 1:
            size.result["followed_elsewhere"] = await follow_elsewhere(
                size.stack, size.driver, size.database
            )


# --- reporting ----------------------------------------------------------------------------------


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def wave_p95(size: dict) -> float:
    """The first-token p95 of the chats sent together: the mean of its waves'."""
    return mean(w["first_token_p95_ms"] for w in size["waves"])


def verdicts(r: dict) -> list[tuple[str, str, bool]]:
    one, two = r["sizes"]
    p95 = wave_p95(two) / wave_p95(one)
    capacity = (
        two["capacity_tokens_per_s"] / one["capacity_tokens_per_s"]
        if one["capacity_tokens_per_s"]
        else 0.0
    )
    rows = []
    for size in (one, two):
        chats = sum(w["chats"] for w in size["waves"])
        intact = sum(w["intact"] for w in size["waves"])
        rows.append(
            (
                f"chats together on {size['instances']} instance(s): every reply intact",
                f"{intact}/{chats}",
                intact == chats,
            )
        )
    rows += [
        (
            f"first-token p95, 2 instances against 1: at most {FIRST_TOKEN_TARGET}x",
            f"{p95:.2f}x",
            p95 <= FIRST_TOKEN_TARGET,
        ),
        (
            f"capacity, 2 instances against 1: at least {CAPACITY_TARGET}x",
            f"{capacity:.2f}x",
            capacity >= CAPACITY_TARGET,
        ),
    ]
    return rows


def render(r: dict) -> str:
    one, two = r["sizes"]
    chats = one["waves"][0]["chats"]

    def row(label: str, value, fmt: str = "{:.0f}", ratio: bool = True) -> str:
        a, b = value(one), value(two)
        text = f"{label:46}{fmt.format(a):>16}{fmt.format(b):>16}"
        if ratio and a:
            text += f"{b / a:>9.2f}x"
        return text

    def waves(key: str, fmt: str):
        return lambda s: " ".join(fmt.format(w[key]) for w in s["waves"])

    lines = [
        machine_line(r["machine"]),
        "",
        f"{'':46}{'1 instance':>16}{'2 instances':>16}{'2 vs 1':>10}",
        f"{chats} chats together (twice each, in the order 1 2 2 1):",
        row("  first token p95, mean of the waves (ms)", wave_p95),
        row(
            "  first token p95 of each wave (ms)",
            waves("first_token_p95_ms", "{:.0f}"),
            "{}",
            ratio=False,
        ),
        row(
            "  first token p50 of each wave (ms)",
            waves("first_token_p50_ms", "{:.0f}"),
            "{}",
            ratio=False,
        ),
        row("  all done / natural time", waves("completion_ratio", "{:.2f}x"), "{}", ratio=False),
        row("  intact", waves("intact", "{}"), "{}", ratio=False),
        row(
            "  tabs per instance",
            lambda s: " ".join("/".join(map(str, w["spread"])) for w in s["waves"]),
            "{}",
            ratio=False,
        ),
        row("capacity (tokens/s, every chat within 1.1x)", lambda s: s["capacity_tokens_per_s"]),
        "",
        "CPU seconds in the first wave of chats together (and its wall time):",
        row("  wall time (s)", lambda s: s["waves"][0]["wall_s"], "{:.1f}", ratio=False),
    ]
    roles = [*one["waves"][0]["cpu_s"]]
    roles += [k for k in two["waves"][0]["cpu_s"] if k not in roles]
    for role in roles:
        lines.append(
            row(
                f"  {role}",
                lambda s, role=role: s["waves"][0]["cpu_s"].get(role, 0.0),
                "{:.1f}",
                ratio=False,
            )
        )
    lines += ["", "Capacity steps (chats: tokens/s, slowest/natural, intact; CPU s by process):"]
    for size in (one, two):
        lines.append(f"  {size['instances']} instance(s):")
        for step in size["capacity_steps"]:
            cpu = ", ".join(f"{role} {used:.1f}" for role, used in step["cpu_s"].items())
            rate, slowest = step["tokens_per_s"], step["slowest_ratio"]
            lines.append(
                f"    {step['chats']:>4}: {rate:>6.0f} {slowest:.2f}x "
                f"{step['intact']}/{step['chats']}  ({cpu})"
            )
    lines += ["", "Database per chat (tab opened, one message and its answer, tab closed):"]
    for key in one["waves"][0]["database_per_chat"]:
        lines.append(
            row(
                f"  {key}",
                lambda s, key=key: mean(w["database_per_chat"][key] for w in s["waves"]),
                "{:.1f}",
                ratio=False,
            )
        )
    lines += ["", "Relay notifications:"]
    lines.append(
        row(
            "  during the waves, per chat",
            lambda s: mean(w["notifications"]["count"] / w["chats"] for w in s["waves"]),
            "{:.3f}",
            ratio=False,
        )
    )
    if followed := two.get("followed_elsewhere"):
        lines.append(
            f"  one answer of {followed['tokens']} tokens followed from the other instance: "
            f"{followed['count']} notifications, {followed['bytes']} bytes "
            f"({followed['by_kind']}; changes {followed['changes_by_kind']}); "
            f"the following tab got {followed['follower_pieces']} stream events"
        )
    lines += ["", "Targets:"]
    lines += [f"  {'PASS' if ok else 'FAIL'}  {name}: {value}" for name, value, ok in verdicts(r)]
    return "\n".join(lines)


async def measure(quick: bool) -> dict:
    """Both stacks side by side on one PostgreSQL cluster (a database each) and one fake
    server; only one of them is driven at a time."""
    results: dict = {"machine": machine(), "quick": quick}
    async with contextlib.AsyncExitStack() as stacks:
        fake = stacks.enter_context(FakeUpstream())
        postgres = stacks.enter_context(Postgres())
        postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
        connector = aiohttp.TCPConnector(limit=0)
        http = await stacks.enter_async_context(aiohttp.ClientSession(connector=connector))
        sizes = []
        for instances in (1, 2):
            database_url = postgres.database()
            stack = stacks.enter_context(Stack(instances, fake.url, database_url))
            driver = AppDriver(stack.url, http)
            await driver.start()
            sizes.append(
                Size(
                    instances,
                    stack,
                    driver,
                    await stacks.enter_async_context(Database(database_url)),
                    Processes(stack, fake, postmaster),
                    {"instances": instances},
                )
            )
        await measure_sizes(sizes, quick)
    results["sizes"] = [size.result for size in sizes]
    results["machine"]["load_average_at_end"] = os.getloadavg()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 chats together, fewer steps")
    args = parser.parse_args()
    results = asyncio.run(measure(args.quick))
    return report("scale", results, render(results), verdicts(results))


if __name__ == "__main__":
    sys.exit(main())
