"""The soak: hours of traffic in miniature, to show nothing piles up. About 50 chats are open at
any time on the deployed stack (bench/stack.py: instances of the real `chainlit run` behind nginx,
on PostgreSQL, answered by the fake Gemini in a process of its own), for ``--minutes``.

    uv run python -m bench.soak                 # 30 minutes on 2 instances
    uv run python -m bench.soak --minutes 3     # a quick look

Each chat is a new browser tab (bench/client.py's BrowserChat through nginx, with no route cookie,
so nginx hands new tabs to the instances in turn). It sends 1 to 4 messages one after the other,
answers of varied length and pace, then closes the tab: mostly just closing it (its session
is kept for Chainlit's session_timeout, 5 minutes, in case the page comes back), sometimes with
"New chat" (cleared at once). A new chat
takes each one's place. A few percent of messages ask the fake for an upstream fault ("bench-fault
..." in tests/fake_gemini.py): a 429 with RetryInfo, a 500, a 503, a reset connection, an error
inside the stream or a connection dropped mid-stream; some fault only once, so the app's retry
gets the answer. Every answer must arrive intact, or fail with the notice the app shows for
that fault (gemini_chat/errors.py) and nothing but a marked partial answer before it.

Every few seconds it reads each instance's resident memory and open files (/proc), the
database's connections (pg_stat_activity) and nginx's open files. Over the last half of the run
(the window) memory must stay flat within 5 MB per instance, and open files and database
connections must not grow. It prints the figures and targets, saves JSON and a plot
(bench/results/), and exits non-zero when a target fails. The random choices follow ``--seed``.

With ``--probe`` the instances load bench/memprobe.py, and once a minute each one reports what
it keeps: the garbage collector's full collections so far and how long each took, the heap in
use and free (glibc),
the sessions Chainlit keeps and asyncio's tasks (in the JSON, and in the minute's line).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from bench import memprobe
from bench.client import BrowserChat, login
from bench.memory import Probe
from bench.run import expected_text, machine, machine_line, report, rss_mb
from bench.stack import FakeUpstream, Postgres, Stack
from gemini_chat import errors
from gemini_chat.history import REPLY_MARKS

CHATS = 50
FAULT_SHARE = 0.04
NEW_CHAT_SHARE = 0.2
MEMORY_BAND_MB = 5.0  # the "flat within 5 MB per instance"
# Open files and connections may differ by this much between the window's first and last slice:
# each open chat holds a socket, so the count follows the chats open at that moment. A leak of one
# per chat or per message would add hundreds over the window.
FILES_TOLERANCE = 10
CONNECTIONS_TOLERANCE = 2
# The window is cut into this many slices (a minute each in the 30-minute run); a slice's median
# is what is compared, so one reading caught mid-burst moves nothing.
SLICES = 15
SAMPLES_PER_SLICE = 6
INCOMPLETE = REPLY_MARKS["incomplete"]
# What the app says after each fault (the 429 asks for 1 s: "Wait a moment"); a fault retried
# to success ends intact instead.
NOTICES = {
    "429": str(errors.RateLimited(1.0)),
    "500": str(errors.UpstreamServerError()),
    "503": str(errors.Overloaded()),
    "reset": str(errors.ConnectionFailed()),
    "error": str(errors.Overloaded()),  # Gemini's in-stream error object is a 503
    "drop": str(errors.StreamInterrupted()),
}
BEFORE_TEXT = ("429", "500", "503", "reset")  # faults that come before any answer text


@dataclass
class Message:
    """One message a chat sends, and what may come back."""

    text: str
    tokens: int
    fault: str | None = None
    once: bool = False  # the fault hits the first request only: the app's retry gets the answer

    @property
    def may_end_intact(self) -> bool:
        # A fault after text has streamed is never retried; one before it is, within the cap.
        return self.fault is None or (self.once and self.fault in BEFORE_TEXT)


def plan_message(rng: random.Random, tag: str, fault_share: float) -> Message:
    """A message of varied length and pace (40 to 300 pieces, 10 to 50 ms apart), or now and
    then (``fault_share`` of messages) a fault."""
    delay = rng.choice((0.01, 0.02, 0.03, 0.05))
    if rng.random() >= fault_share:
        tokens = rng.randint(40, 300)
        return Message(f"bench {tokens} {delay} 0", tokens)
    fault = rng.choice(("429", "500", "503", "reset", "error", "drop"))
    if fault in BEFORE_TEXT:
        tokens = rng.randint(40, 300)
        once = rng.random() < 0.5
        suffix = f" once {tag}" if once else ""
        return Message(f"bench-fault {fault} {tokens} {delay}{suffix}", tokens, fault, once)
    tokens = rng.randint(5, 60)  # streamed before the fault
    return Message(f"bench-fault {fault} {tokens} {delay}", tokens, fault)


def judge(message: Message, reply) -> str:
    """The outcome of one answer: "intact", "failed" (with the fault's notice), or what was
    wrong with it."""
    expected = expected_text(message.tokens)
    if reply.notice is None:
        if reply.status == "complete" and reply.answer == expected and message.may_end_intact:
            return "intact"
        return f"no notice; answer {reply.status} with {len(reply.answer or '')} characters"
    if message.fault is None:
        return f"a notice for a message without fault: {reply.notice[:80]!r}"
    if reply.notice != NOTICES[message.fault]:
        return f"the wrong notice for {message.fault}: {reply.notice[:80]!r}"
    if reply.answer is not None:
        partial = reply.answer.removesuffix(INCOMPLETE)
        if reply.status != "incomplete" or partial == reply.answer:
            return f"a partial answer not marked incomplete ({reply.status})"
        if not expected.startswith(partial):
            return "a partial answer that is not the start of the answer"
    return "failed"


class Tally:
    """What the chats did so far, read by the sampler."""

    def __init__(self, fault_share: float, new_chat_share: float) -> None:
        self.fault_share = fault_share
        self.new_chat_share = new_chat_share
        self.open = 0
        self.chats = 0
        self.outcomes: Counter[str] = Counter()
        self.by_fault: dict[str, Counter[str]] = {}
        self.problems: list[dict] = []

    def note(self, message: Message, outcome: str, chat: int) -> None:
        kind = outcome if outcome in ("intact", "failed") else "problem"
        self.outcomes[kind] += 1
        self.by_fault.setdefault(message.fault or "none", Counter())[kind] += 1
        if kind == "problem":
            self.problems.append({"chat": chat, "message": message.text, "what": outcome})


async def answer_of(chat: BrowserChat, message: Message) -> str:
    chat.reset()
    await chat.send(message.text)
    # A failed answer's partial text comes first, its notice right after; the client sets
    # ``finished`` on each, so the notice is waited for by looking. The limit: a minute (retries,
    # a busy machine) plus three times the slowest streaming time (pieces 50 ms apart).
    limit = 60 + message.tokens * 0.05 * 3
    try:
        await asyncio.wait_for(chat.finished.wait(), limit)
        deadline = time.monotonic() + 10
        while chat.reply.notice is None and chat.reply.status != "complete":
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    except TimeoutError:
        return f"no answer within {limit:.0f} s"
    return judge(message, chat.reply)


async def one_chat(
    number: int, url: str, cookie: str, http: aiohttp.ClientSession, rng, tally
) -> None:
    """A tab's life: open, 1 to 4 messages with a pause to read each answer, close."""
    chat = BrowserChat(url, cookie, http)
    tally.open += 1
    tally.chats += 1
    try:
        try:
            await chat.connect()
            await asyncio.wait_for(chat.welcome.wait(), 30)
        except (OSError, aiohttp.ClientError, TimeoutError, AssertionError) as error:
            tally.outcomes["problem"] += 1
            tally.problems.append({"chat": number, "message": "", "what": f"open: {error!r}"})
            await asyncio.sleep(1)  # the stack is in trouble: no storm of tabs opening
            return
        for index in range(rng.randint(1, 4)):
            message = plan_message(rng, f"c{number}-{index}", tally.fault_share)
            try:
                outcome = await answer_of(chat, message)
            except (OSError, aiohttp.ClientError) as error:
                # The tab lost its connection (an instance gone): a problem, and the run goes on.
                tally.note(message, f"connection lost: {error!r}", number)
                return
            tally.note(message, outcome, number)
            if outcome.startswith("no answer"):
                break
            await asyncio.sleep(rng.uniform(0.2, 1.5))
        await chat.close(clear=rng.random() < tally.new_chat_share)
    finally:
        # Cut short (a failed open, the run stopped): nothing of the tab stays open.
        if getattr(chat, "reader", None) is not None:
            chat.reader.cancel()
        if getattr(chat, "ws", None) is not None and not chat.ws.closed:
            await chat.ws.close()
        tally.open -= 1


# --- readings ----------------------------------------------------------------------------------


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


PROBE_FILE = Path(tempfile.gettempdir()) / "soak-memprobe-{pid}.json"
PROBE_EVERY = 60.0  # seconds between two readings of the instances' probes (--probe)


def probe_figures(kept: dict) -> dict:
    """The figures of one probe reading (bench/memprobe.py) kept in the results."""
    heap = kept.get("malloc", {})
    return {
        "full_collections": kept["gc_stats"][2]["collections"] if "gc_stats" in kept else None,
        "full_collection_ms": [round(s * 1000, 1) for s in kept.get("full_collection_seconds", [])],
        "heap_used_mb": heap.get("uordblks", 0) / 2**20,
        "heap_free_mb": heap.get("fordblks", 0) / 2**20,
        "sessions": kept.get("sessions"),
        "tasks": kept.get("tasks"),
    }


async def probe_forever(probes: list[Probe], start: float, out: list[dict]) -> None:
    while True:
        await asyncio.sleep(PROBE_EVERY)
        readings = [probe_figures(await probe.read()) for probe in probes]
        out.append({"t": time.monotonic() - start, "instances": readings})


async def sample_forever(stack: Stack, database: asyncpg.Connection, tally, start, interval, out):
    nginx = [stack.nginx_pid, *children_of(stack.nginx_pid)]
    while True:
        connections = await database.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        out.append(
            {
                "t": time.monotonic() - start,
                "rss_mb": [rss_mb(pid) for pid in stack.pids],
                "files": [open_files(pid) for pid in stack.pids],
                "nginx_files": sum(open_files(pid) for pid in nginx),
                "db_connections": connections,
                "chats_open": tally.open,
                "intact": tally.outcomes["intact"],
                "failed": tally.outcomes["failed"],
                "problems": tally.outcomes["problem"],
            }
        )
        await asyncio.sleep(interval)


async def soak(stack: Stack, database_url: str, args, probes: Sequence[Probe] = ()) -> dict:
    rng = random.Random(args.seed)
    tally = Tally(args.fault_share, args.new_chat_share)
    samples: list[dict] = []
    probed: list[dict] = []
    seconds = args.minutes * 60
    interval = args.sample_seconds or min(10.0, seconds / 2 / SLICES / SAMPLES_PER_SLICE)
    parts = urlsplit(database_url.replace("+asyncpg", ""))
    database = await asyncpg.connect(
        user=parts.username,
        password=parts.password,
        host=parts.hostname,
        port=parts.port,
        database=parts.path.lstrip("/"),
    )
    numbers = iter(range(1, 10**9))
    started = machine()  # the date and the machine's load as the load begins
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        cookie = await login(http, stack.url)
        start = time.monotonic()
        deadline = start + seconds
        sampler = asyncio.create_task(
            sample_forever(stack, database, tally, start, interval, samples)
        )
        prober = asyncio.create_task(probe_forever(probes, start, probed)) if probes else None

        async def slot(offset: float) -> None:
            # Chats follow one another in each slot: a new one as soon as the last has closed.
            await asyncio.sleep(offset)
            while time.monotonic() < deadline:
                await one_chat(next(numbers), stack.url, cookie, http, rng, tally)

        async def report() -> None:
            while True:
                await asyncio.sleep(60)
                last = samples[-1]
                line = (
                    f"  {last['t'] / 60:4.1f} min: {tally.open} chats open, {tally.chats} opened, "
                    f"{last['intact']} intact, {last['failed']} failed with notice, "
                    f"{last['problems']} problems; RSS "
                    + " / ".join(f"{mb:.0f}" for mb in last["rss_mb"])
                    + " MB"
                )
                if probed:
                    line += "; full collections (last ms), heap used / free (MB), sessions: " + (
                        " | ".join(
                            f"{p['full_collections']} ({(p['full_collection_ms'] or [0])[-1]:.0f}),"
                            f" {p['heap_used_mb']:.0f} / {p['heap_free_mb']:.0f}, {p['sessions']}"
                            for p in probed[-1]["instances"]
                        )
                    )
                print(line, flush=True)

        reporter = asyncio.create_task(report())
        try:
            # Spread over the first ten seconds, so the chats do not move in step.
            await asyncio.gather(*(slot(10 * i / args.chats) for i in range(args.chats)))
        finally:
            sampler.cancel()
            reporter.cancel()
            if prober is not None:
                prober.cancel()
            await database.close()
    return {
        "machine": started,
        "settings": {
            "minutes": args.minutes,
            "instances": args.instances,
            "chats": args.chats,
            "seed": args.seed,
            "fault_share": args.fault_share,
            "new_chat_share": args.new_chat_share,
            "sample_seconds": interval,
        },
        "chats_opened": tally.chats,
        "outcomes": dict(tally.outcomes),
        "by_fault": {kind: dict(counts) for kind, counts in sorted(tally.by_fault.items())},
        "problems": tally.problems,
        "samples": samples,
        "probes": probed,
    }


# --- verdicts ------------------------------------------------------------------------------------


def slice_medians(samples: list[dict], read, start: float, end: float) -> list[float]:
    """The median of ``read(sample)`` in each of the window's SLICES equal slices."""
    width = (end - start) / SLICES
    medians = []
    for index in range(SLICES):
        low, high = start + index * width, start + (index + 1) * width
        values = [read(s) for s in samples if low <= s["t"] < high]
        if values:
            medians.append(statistics.median(values))
    return medians


def window_figures(r: dict) -> dict:
    """Over the window (the last half of the load): per instance the band of memory's slice
    medians (largest minus smallest) and its growth (last slice minus first); the growth of
    open files and database connections."""
    end = r["settings"]["minutes"] * 60
    start = end / 2
    samples = [s for s in r["samples"] if s["t"] < end]

    def figures(read) -> dict:
        medians = slice_medians(samples, read, start, end)
        return {
            "first": medians[0],
            "last": medians[-1],
            "growth": medians[-1] - medians[0],
            "band": max(medians) - min(medians),
            "slice_medians": medians,
        }

    count = r["settings"]["instances"]
    return {
        "start_s": start,
        "end_s": end,
        "rss_mb": [figures(lambda s, i=i: s["rss_mb"][i]) for i in range(count)],
        "files": [figures(lambda s, i=i: s["files"][i]) for i in range(count)],
        "nginx_files": figures(lambda s: s["nginx_files"]),
        "db_connections": figures(lambda s: s["db_connections"]),
    }


def verdicts(r: dict) -> list[tuple[str, str, bool]]:
    w = r["window"]
    outcomes = r["outcomes"]
    answers = outcomes.get("intact", 0) + outcomes.get("failed", 0)
    problems = outcomes.get("problem", 0)
    rows = [
        (
            "every answer intact or failed with its notice",
            f"{outcomes.get('intact', 0)} intact, {outcomes.get('failed', 0)} failed with "
            f"notice, {problems} otherwise",
            problems == 0 and answers > 0,
        )
    ]
    for index, memory in enumerate(w["rss_mb"]):
        rows.append(
            (
                f"instance {index + 1} memory flat within {MEMORY_BAND_MB:g} MB",
                f"band {memory['band']:.1f} MB (growth {memory['growth']:+.1f} MB, "
                f"{memory['first']:.0f} -> {memory['last']:.0f} MB)",
                memory["band"] <= MEMORY_BAND_MB,
            )
        )
    for index, files in enumerate(w["files"]):
        rows.append(
            (
                f"instance {index + 1} open files do not grow (+{FILES_TOLERANCE} allowed)",
                f"{files['first']:.0f} -> {files['last']:.0f}",
                files["growth"] <= FILES_TOLERANCE,
            )
        )
    db = w["db_connections"]
    rows.append(
        (
            f"database connections do not grow (+{CONNECTIONS_TOLERANCE} allowed)",
            f"{db['first']:.0f} -> {db['last']:.0f}",
            db["growth"] <= CONNECTIONS_TOLERANCE,
        )
    )
    return rows


def render(r: dict) -> str:
    s, w = r["settings"], r["window"]
    minutes = s["minutes"]
    lines = [
        machine_line(r["machine"]),
        "Load average at the end: "
        + ", ".join(f"{load:.1f}" for load in r["machine"].get("load_average_at_end", ())),
        "",
        f"{minutes:g} minutes, {s['instances']} instances behind nginx, about {s['chats']} chats "
        f"open, {r['chats_opened']} chats opened, seed {s['seed']}; a reading every "
        f"{s['sample_seconds']:.1f} s. Tabs per instance (nginx's log): "
        + " / ".join(map(str, r.get("tabs_per_instance", ()))),
        "Answers by fault asked for (intact / failed with notice / otherwise):",
    ]
    for kind, counts in r["by_fault"].items():
        lines.append(
            f"  {kind:6} {counts.get('intact', 0):>6} / {counts.get('failed', 0):>4} / "
            f"{counts.get('problem', 0):>3}"
        )
    for problem in r["problems"][:10]:
        chat, text, what = problem["chat"], problem["message"], problem["what"]
        lines.append(f"  problem in chat {chat} ({text}): {what}")
    lines += [
        "",
        f"Window: minutes {w['start_s'] / 60:g} to {w['end_s'] / 60:g}, cut into {SLICES} "
        "slices; each figure is a slice's median reading.",
        f"{'':28}{'first slice':>12}{'last slice':>12}{'growth':>9}{'band':>8}",
    ]
    rows = [
        *((f"instance {i + 1} RSS (MB)", f) for i, f in enumerate(w["rss_mb"])),
        *((f"instance {i + 1} open files", f) for i, f in enumerate(w["files"])),
        ("nginx open files", w["nginx_files"]),
        ("database connections", w["db_connections"]),
    ]
    for name, f in rows:
        lines.append(
            f"{name:28}{f['first']:>12.1f}{f['last']:>12.1f}{f['growth']:>+9.1f}{f['band']:>8.1f}"
        )
    lines += ["", "Targets:"]
    for name, value, ok in verdicts(r):
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}: {value}")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, w = r["samples"], r["window"]
    minutes = [s["t"] / 60 for s in samples]
    figure, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    memory, files, connections, chats = axes
    for index in range(r["settings"]["instances"]):
        memory.plot(minutes, [s["rss_mb"][index] for s in samples], label=f"instance {index + 1}")
        files.plot(minutes, [s["files"][index] for s in samples], label=f"instance {index + 1}")
    files.plot(minutes, [s["nginx_files"] for s in samples], label="nginx", linestyle="--")
    connections.plot(minutes, [s["db_connections"] for s in samples], color="tab:purple")
    chats.plot(minutes, [s["chats_open"] for s in samples], color="tab:green")
    memory.set_ylabel("resident memory (MB)")
    files.set_ylabel("open files")
    connections.set_ylabel("database connections")
    chats.set_ylabel("chats open")
    chats.set_xlabel("minutes")
    for axis in axes:
        axis.axvspan(w["start_s"] / 60, w["end_s"] / 60, color="grey", alpha=0.12, linewidth=0)
    for axis in (files, connections, chats):
        axis.set_ylim(bottom=0)  # memory keeps its own scale: a few MB must show
    memory.legend(loc="lower right")
    files.legend(loc="lower right")
    s = r["settings"]
    memory.set_title(
        f"Soak: {s['minutes']:g} minutes, {s['instances']} instances, about {s['chats']} chats "
        "open (shaded: the window judged)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="how long the load runs")
    parser.add_argument("--instances", type=int, default=2, help="instances behind nginx")
    parser.add_argument("--chats", type=int, default=CHATS, help="chats open at any time")
    parser.add_argument("--seed", type=int, default=12, help="seed of the random choices")
    parser.add_argument(
        "--fault-share", type=float, default=FAULT_SHARE, help="share of messages that fault"
    )
    parser.add_argument(
        "--new-chat-share",
        type=float,
        default=NEW_CHAT_SHARE,
        help="share of tabs closed with New chat (the rest linger for the session timeout)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="have each instance report its collector's and heap's figures once a minute",
    )
    parser.add_argument(
        "--sample-seconds",
        type=float,
        default=None,
        help=f"time between readings (default: {SAMPLES_PER_SLICE} a slice, at most 10 s)",
    )
    args = parser.parse_args()
    # A kill (SIGTERM) unwinds like Ctrl-C, so every process started here is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    probing = (
        {"TOOL_MODULES": "bench.memprobe", "MEMPROBE_FILE": str(PROBE_FILE)} if args.probe else {}
    )
    with FakeUpstream() as fake, Postgres() as postgres:
        database_url = postgres.database()
        with Stack(args.instances, fake.url, database_url, **probing) as stack:
            probes = (
                [Probe(pid, memprobe.probe_path(pid, str(PROBE_FILE))) for pid in stack.pids]
                if probing
                else []
            )
            print(
                f"Soaking {args.minutes:g} minutes: {args.instances} instances behind nginx at "
                f"{stack.url}, about {args.chats} chats open.",
                flush=True,
            )
            try:
                results = asyncio.run(soak(stack, database_url, args, probes))
            except KeyboardInterrupt:
                # A second Ctrl-C must not cut short the stopping of what was started.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                raise
            results["tabs_per_instance"] = stack.tabs_served()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["window"] = window_figures(results)
    return report("soak", results, render(results), verdicts(results), [(plot, "soak.png")])


if __name__ == "__main__":
    sys.exit(main())
