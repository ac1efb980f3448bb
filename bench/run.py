"""The benchmark: the app against the Agents SDK alone and a bare openai client, in one run.

    uv run python -m bench.run              # the full run (about 7 minutes on 2 cores)
    uv run python -m bench.run --quick      # smaller waves, for a quick look
    uv run python -m bench.run --tool-turn  # only the turn with one tool call (under a minute)

It starts the fake Gemini server (tests/fake_gemini.py) and the real `chainlit run chatbot.py`
as processes of their own, drives the app with browser-like socket.io clients, and measures the
two baselines in this process against the same fake server: plain replies, waves of chats, and
a turn with one tool call (the app given bench/tools.py's tool, as the Agents SDK alone is). It
prints a table, saves the figures as JSON and plots first-token latency against concurrent
chats (bench/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from tqdm import tqdm

from bench.client import BrowserChat, Reply, login
from bench.tools import bench_clock, clock
from tests.app_process import ROOT, AppServer, start_app
from tests.fake_gemini import DEFAULT_KEY, bench_tokens

RESULTS = ROOT / "bench" / "results"
MODEL = "gemini-3.8-flash"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MEMORY_SETTLE_S = 25
# The turn with one tool call: the fake calls bench/tools.py's tool, then streams this many
# tokens, 1 ms apart, once the follow-up request carries the result. (Paced, so the first token
# arrives alone and its time is latency, not the time to parse a burst of chunks.)
TOOL_TURN_TOKENS = 100
TOOL_TURN_DELAY = 0.001
TOOL_TURN = f"bench-tool {TOOL_TURN_TOKENS} {TOOL_TURN_DELAY} 0"
TOOL_TARGET = 1.10  # within 10% of the Agents SDK alone


# --- measuring processes ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def expected_text(tokens: int) -> str:
    return "".join(bench_tokens(tokens))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(name: str, results: dict, text: str, rows, plots=()) -> int:
    """Every benchmark's ending: its figures saved as bench/results/NAME-STAMP.json, each
    ``(draw, file name)`` of ``plots`` drawn there, ``text`` printed; the exit status says
    whether every target row ``(name, value, ok)`` was met."""
    RESULTS.mkdir(exist_ok=True)
    saved = [RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"]
    saved[0].write_text(json.dumps(results, indent=2))
    for draw, file_name in plots:
        draw(results, RESULTS / file_name)
        saved.append(RESULTS / file_name)
    print(text)
    print(f"\nSaved {' and '.join(map(str, saved))}")
    return 0 if all(ok for _, _, ok in rows) else 1


# --- the baselines, in this process -------------------------------------------------------------


async def bare_stream(client, text: str) -> tuple[float, float, str]:
    """(first token seconds, total seconds, text) for a bare openai client."""
    start = time.perf_counter()
    first = None
    parts = []
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
    return first - start, time.perf_counter() - start, "".join(parts)


async def sdk_stream(agent, run_config, text: str) -> tuple[float, float, str]:
    """The same through the Agents SDK alone: Runner.run_streamed, text deltas."""
    from agents import Runner

    start = time.perf_counter()
    first = None
    parts = []
    result = Runner.run_streamed(agent, text, run_config=run_config)
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            first = first or time.perf_counter()
            parts.append(event.data.delta)
    return first - start, time.perf_counter() - start, "".join(parts)


async def bare_tool_turn(client, text: str) -> tuple[float, float, float, str]:
    """A turn with one tool call through a bare openai client: the first request, the tool's
    call collected from the stream, the tool run, the follow-up request carrying the call and
    its result. (first token, tool done, total) in seconds from the start, and the text."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": bench_clock.name,
                "description": bench_clock.description,
                "parameters": bench_clock.params_json_schema,
            },
        }
    ]
    start = time.perf_counter()
    messages: list[dict] = [{"role": "user", "content": text}]
    calls: list[dict] = []
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, stream=True
    )
    async for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.id:  # a new call; later pieces of its arguments come without an id
                calls.append({"id": delta.id, "name": delta.function.name, "arguments": ""})
            calls[-1]["arguments"] += delta.function.arguments or ""
    messages.append(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in calls
            ],
        }
    )
    for call in calls:
        output = clock(**json.loads(call["arguments"]))
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
    tool_done = time.perf_counter()
    first = None
    parts = []
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
    return first - start, tool_done - start, time.perf_counter() - start, "".join(parts)


async def sdk_tool_turn(agent, run_config, text: str) -> tuple[float, float, float, str]:
    """The same turn through the Agents SDK alone (an agent with the same tool): one
    Runner.run_streamed runs both requests and the tool."""
    from agents import Runner

    start = time.perf_counter()
    first = tool_done = None
    parts = []
    result = Runner.run_streamed(agent, text, run_config=run_config)
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            first = first or time.perf_counter()
            parts.append(event.data.delta)
        elif event.type == "run_item_stream_event" and event.name == "tool_output":
            tool_done = time.perf_counter()
    return first - start, tool_done - start, time.perf_counter() - start, "".join(parts)


async def sdk_wave(
    agent,
    run_config,
    chats: int,
    tokens: int,
    delay: float,
    stagger: float = 0.0,
    agent_per_run: bool = False,
) -> Wave:
    """The same wave through the Agents SDK alone, in this process: the floor for the app."""
    from agents import Runner

    wave = Wave(chats, tokens, delay, natural_s=delay * (tokens - 1), stagger_s=stagger)
    text = f"bench {tokens} {delay} 0"
    expected = expected_text(tokens)
    start = time.perf_counter()

    async def one(offset: float) -> tuple[float, float, float, bool]:
        await asyncio.sleep(offset)
        sent = time.perf_counter()
        first = None
        parts = []
        own = copy.copy(agent) if agent_per_run else agent
        try:
            result = Runner.run_streamed(own, text, run_config=run_config)
            async for event in result.stream_events():
                data = event.data if event.type == "raw_response_event" else None
                if data is not None and data.type == "response.output_text.delta":
                    first = first or time.perf_counter() - sent
                    parts.append(data.delta)
        except Exception as error:
            # Overloaded, the stock client gives up (a connect timeout after 5 s): that chat
            # is not intact, and the wave, and the run, go on.
            parts = [f"failed: {type(error).__name__}"]
        done = time.perf_counter()
        return first, done - start, done - sent, "".join(parts) == expected

    outcomes = await asyncio.gather(*(one(stagger * i / chats) for i in range(chats)))
    wave.first_tokens = [first for first, _, _, _ in outcomes if first is not None] or [math.inf]
    wave.first_token_p50 = statistics.median(wave.first_tokens)
    wave.first_token_p95 = percentile(wave.first_tokens, 0.95)
    wave.completion_s = max(done for _, done, _, _ in outcomes)
    wave.slowest_ratio = max(own for _, _, own, _ in outcomes) / wave.natural_s
    wave.intact = sum(ok for _, _, _, ok in outcomes)
    return wave


def build_baselines(base_url: str):
    from agents import Agent, OpenAIChatCompletionsModel, RunConfig, set_tracing_disabled
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient

    from gemini_chat.llm import POOL_LIMITS

    set_tracing_disabled(True)
    client = AsyncOpenAI(
        api_key=DEFAULT_KEY,
        base_url=base_url,
        max_retries=0,
        # The same connection pool as the app's, so bursts compare fairly.
        http_client=DefaultAsyncHttpxClient(limits=POOL_LIMITS),
    )
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    agent = Agent(name="Gemini", instructions="Be brief.", model=model)
    return client, agent, RunConfig(tracing_disabled=True)


def build_tuned_baseline(base_url: str):
    """The Agents SDK alone on the app's own client (gemini_chat.llm.GeminiClient): the floor
    once the app's tuning below the SDK is taken away from the comparison."""
    from agents import Agent, OpenAIChatCompletionsModel

    from gemini_chat.config import load_settings
    from gemini_chat.llm import build_client

    settings = load_settings({"GEMINI_API_KEY": DEFAULT_KEY, "GEMINI_BASE_URL": base_url})
    client = build_client(settings)
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    return client, Agent(name="Gemini", instructions="Be brief.", model=model)


# --- the app --------------------------------------------------------------------------------------


@dataclass
class Wave:
    chats: int
    tokens: int
    delay: float
    first_token_p50: float = 0.0
    first_token_p95: float = 0.0
    completion_s: float = 0.0
    natural_s: float = 0.0
    intact: int = 0
    events_per_reply: float = 0.0
    stagger_s: float = 0.0
    slowest_ratio: float = 0.0  # max over chats of (its own duration / natural time)
    first_tokens: list[float] = field(default_factory=list)

    @property
    def completion_ratio(self) -> float:
        """All chats done, from the first send, against the natural time (plus the stagger)."""
        natural = self.natural_s + self.stagger_s
        return self.completion_s / natural if natural else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.chats * self.tokens / self.natural_s if self.natural_s else 0.0


class AppDriver:
    def __init__(
        self,
        base_url: str,
        http: aiohttp.ClientSession,
        transports: tuple[str, ...] = BrowserChat.transports,
    ) -> None:
        self.base_url = base_url
        self.http = http
        self.cookie = ""
        self.transports = transports  # how its chats connect (bench/client.py)

    async def start(self) -> None:
        self.cookie = await login(self.http, self.base_url)

    async def open_chats(self, count: int) -> list[BrowserChat]:
        chats = [
            BrowserChat(self.base_url, self.cookie, self.http, transports=self.transports)
            for _ in range(count)
        ]
        for batch in range(0, count, 50):
            await asyncio.gather(*(c.connect() for c in chats[batch : batch + 50]))
        await asyncio.gather(*(asyncio.wait_for(c.welcome.wait(), 60) for c in chats))
        return chats

    async def one(self, chat: BrowserChat, text: str) -> None:
        chat.reset()
        await chat.send(text)
        await asyncio.wait_for(chat.finished.wait(), 120)

    async def wave(
        self,
        chats: int,
        tokens: int,
        delay: float,
        label: str,
        stagger: float = 0.0,
        close_tab: bool = False,
    ) -> Wave:
        """``chats`` chats streaming at once; then each leaves by "New chat", or with
        ``close_tab`` by closing its tab (the session then waits for it to come back)."""
        browsers = await self.open_chats(chats)
        wave = Wave(chats, tokens, delay, natural_s=delay * (tokens - 1), stagger_s=stagger)
        text = f"bench {tokens} {delay} 0"
        expected = expected_text(tokens)
        progress = tqdm(total=chats, desc=label, unit="chat", leave=False)

        async def run(chat: BrowserChat) -> None:
            await chat.finished.wait()
            progress.update()

        for chat in browsers:
            chat.reset()
        waiters = [asyncio.create_task(run(c)) for c in browsers]
        start = time.perf_counter()

        async def send(chat: BrowserChat, offset: float) -> None:
            await asyncio.sleep(offset)
            await chat.send(text)

        await asyncio.gather(*(send(c, stagger * i / chats) for i, c in enumerate(browsers)))
        await asyncio.wait_for(asyncio.gather(*waiters), max(120, wave.natural_s * 4))
        progress.close()
        replies = [c.reply for c in browsers]
        wave.first_tokens = [r.first_token_at - r.sent_at for r in replies if r.first_token_at]
        wave.first_token_p50 = statistics.median(wave.first_tokens)
        wave.first_token_p95 = percentile(wave.first_tokens, 0.95)
        wave.completion_s = max(r.done_at for r in replies) - start
        wave.slowest_ratio = max(r.done_at - r.sent_at for r in replies) / wave.natural_s
        wave.intact = sum(r.text == expected for r in replies)
        wave.events_per_reply = statistics.mean(r.stream_events for r in replies)
        await asyncio.gather(*(c.close(clear=not close_tab) for c in browsers))
        return wave


# --- the run --------------------------------------------------------------------------------------


async def settle(seconds: float) -> None:
    """Let background work (persistence, cleanup) finish before reading memory."""
    await asyncio.sleep(seconds)


async def measure_tool_turn_only(app: AppServer, fake_url: str) -> dict:
    """``--tool-turn``: only the turn with one tool call (40 of each, after a warm-up), for a
    quick look at the tool path."""
    results: dict = {"machine": machine(), "quick": False}
    client, agent, run_config = build_baselines(fake_url)
    tool_agent = agent.clone(tools=[bench_clock])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        driver = AppDriver(app.url, http)
        await driver.start()
        for _ in range(3):
            await bare_tool_turn(client, TOOL_TURN)
            await sdk_tool_turn(tool_agent, run_config, TOOL_TURN)
            (chat,) = await driver.open_chats(1)
            await driver.one(chat, TOOL_TURN)
            await chat.close()
        results["tool_turn"] = await measure_tool_turn(
            app, driver, client, tool_agent, run_config, 40
        )
    await client.close()
    return results


async def measure(app: AppServer, fake_url: str, quick: bool) -> dict:
    results: dict = {"machine": machine(), "quick": quick}
    client, agent, run_config = build_baselines(fake_url)
    tool_agent = agent.clone(tools=[bench_clock])
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        driver = AppDriver(app.url, http)
        await driver.start()
        (solo,) = await driver.open_chats(1)

        # Warm-up of every path, long replies and tool turns included.
        for _ in range(1 if quick else 3):
            await bare_tool_turn(client, TOOL_TURN)
            await sdk_tool_turn(tool_agent, run_config, TOOL_TURN)
            (chat,) = await driver.open_chats(1)
            await driver.one(chat, TOOL_TURN)
            await chat.close()
        for text in ["bench 20 0 0"] * 3 + ["bench 5000 0 0"]:
            await bare_stream(client, text)
            await sdk_stream(agent, run_config, text)
            (chat,) = await driver.open_chats(1)
            await driver.one(chat, text)
            await chat.close()
        await solo.close()

        # First token: the first message of a chat (like the SDK's single message), one at a
        # time; the app's tab is connected before the clock starts, as a user's would be.
        trials = 15 if quick else 40
        first = {"bare": [], "sdk": [], "app": []}
        for _ in tqdm(range(trials), desc="first token", leave=False):
            first["bare"].append((await bare_stream(client, "bench 3 0 0"))[0])
            first["sdk"].append((await sdk_stream(agent, run_config, "bench 3 0 0"))[0])
            (chat,) = await driver.open_chats(1)
            await driver.one(chat, "bench 3 0 0")
            first["app"].append(chat.reply.first_token_at - chat.reply.sent_at)
            await chat.close()
        results["first_token_ms"] = {k: statistics.median(v) * 1000 for k, v in first.items()}

        # One long reply at full upstream speed: throughput and CPU per token.
        tokens = 5000
        runs = 2 if quick else 3
        long = {"bare": [], "sdk": [], "app": []}
        for _ in tqdm(range(runs), desc="5000-token reply", leave=False):
            for name, call in (
                ("bare", lambda: bare_stream(client, f"bench {tokens} 0 0")),
                ("sdk", lambda: sdk_stream(agent, run_config, f"bench {tokens} 0 0")),
            ):
                cpu = time.process_time()
                _, total, text = await call()
                assert text == expected_text(tokens), name
                long[name].append((tokens / total, (time.process_time() - cpu) / tokens))
            (chat,) = await driver.open_chats(1)
            cpu = cpu_seconds(app.pid)
            await driver.one(chat, f"bench {tokens} 0 0")
            reply = chat.reply
            await chat.close()
            assert reply.text == expected_text(tokens), "app reply not intact"
            long["app"].append(
                (tokens / (reply.done_at - reply.sent_at), (cpu_seconds(app.pid) - cpu) / tokens)
            )
            results["events_per_5000_token_reply"] = reply.stream_events
        # The same reply after as many pieces of thought summary (SHOW_THOUGHTS is on): the
        # thinking step's text is batched like the answer's, so it adds a few socket events.
        (chat,) = await driver.open_chats(1)
        cpu = cpu_seconds(app.pid)
        await driver.one(chat, f"bench {tokens} 0 0 {tokens}")
        reply = chat.reply
        await chat.close()
        assert reply.text == expected_text(tokens), "app reply with thoughts not intact"
        results["thinking_reply"] = {
            "pieces_per_s": 2 * tokens / (reply.done_at - reply.sent_at),
            "cpu_us_per_piece": (cpu_seconds(app.pid) - cpu) / (2 * tokens) * 1e6,
            "answer_events": reply.stream_events,
            "thought_events": reply.thought_events,
        }
        results["long_reply"] = {
            name: {
                "tokens_per_s": statistics.median(rate for rate, _ in values),
                "cpu_us_per_token": statistics.median(cpu for _, cpu in values) * 1e6,
            }
            for name, values in long.items()
        }

        results["tool_turn"] = await measure_tool_turn(
            app, driver, client, tool_agent, run_config, 5 if quick else 40
        )

        # Capacity: chats streaming 500 tokens at 10 ms each, their starts spread over a second
        # so the load is sustained rather than a burst; a load fits when every chat finishes
        # within 1.1x its own natural time. For the app and, as its floor, the SDK alone.
        def fits(wave: Wave) -> bool:
            return wave.slowest_ratio <= 1.1 and wave.intact == wave.chats

        capacity, sdk_capacity = [], []
        for chats in [10, 20, 30, 40, 50, 60, 70, 80, 100, 120, 140, 160]:
            sdk = await sdk_wave(agent, run_config, chats, 500, 0.01, stagger=1.0)
            sdk_capacity.append(sdk)
            app_wave = await driver.wave(chats, 500, 0.01, f"capacity {chats}", stagger=1.0)
            capacity.append(app_wave)
            if not fits(app_wave) and not fits(sdk):
                break
        results["capacity"] = {
            "tokens_per_s": max((w.tokens_per_s for w in capacity if fits(w)), default=0.0),
            "sdk_tokens_per_s": max((w.tokens_per_s for w in sdk_capacity if fits(w)), default=0.0),
            "steps": [summary(w) for w in capacity],
            "sdk_steps": [summary(w) for w in sdk_capacity],
        }

        # First-token latency against the number of chats started together (short replies at
        # Gemini-like pacing), for the plot.
        ramp = {"sdk": [], "app": []}
        for chats in [1, 10, 50, 100] if quick else [1, 10, 25, 50, 100, 200, 300, 500]:
            ramp["sdk"].append(summary(await sdk_wave(agent, run_config, chats, 20, 0.05)))
            ramp["app"].append(summary(await driver.wave(chats, 20, 0.05, f"ramp {chats}")))
        results["ramp"] = ramp

        # Gemini-like pacing, everyone at once: the SDK alone first, then the app.
        small = 30 if quick else 150
        results["sdk_wave_150"] = summary(await sdk_wave(agent, run_config, small, 200, 0.05))
        results["wave_150"] = summary(await driver.wave(small, 200, 0.05, f"{small} chats"))
        big = 100 if quick else 500
        results["sdk_wave_500"] = summary(await sdk_wave(agent, run_config, big, 100, 0.2))
        tuned_client, tuned_agent = build_tuned_baseline(fake_url)
        results["tuned_sdk_wave_500"] = summary(
            await sdk_wave(tuned_agent, run_config, big, 100, 0.2, agent_per_run=True)
        )
        await tuned_client.close()
        await settle(2)
        baseline_rss = rss_mb(app.pid)
        # Memory is read once the server has let go of the wave's connections: engine.io drops
        # closed sockets in a service cycle of its ping timeout (20 s).
        first_wave = await driver.wave(big, 100, 0.2, f"{big} chats")
        await settle(MEMORY_SETTLE_S)
        after_first = rss_mb(app.pid)
        second_wave = await driver.wave(big, 100, 0.2, f"{big} more chats")
        await settle(MEMORY_SETTLE_S)
        after_second = rss_mb(app.pid)
        results["wave_500"] = summary(first_wave)
        results["wave_500_again"] = summary(second_wave)
        results["memory_mb"] = {
            "before_waves": baseline_rss,
            "after_first_wave": after_first,
            "after_second_wave": after_second,
            "second_wave_added": after_second - after_first,
            "per_chat_first_wave_kb": (after_first - baseline_rss) * 1024 / big,
        }
    await client.close()
    return results


async def measure_tool_turn(
    app: AppServer, driver: AppDriver, client, tool_agent, run_config, trials: int
) -> dict:
    """A turn with one tool call, one at a time, the three ways in turn: the first token of the
    answer (after the tool), the gap from the tool's end to it, the whole turn, CPU per turn.
    Beside it, the same reply without the tool call (same agent, same tool offered), so the
    tool call's own cost shows apart from the cost of any turn."""
    expected = expected_text(TOOL_TURN_TOKENS)
    plain = f"bench {TOOL_TURN_TOKENS} {TOOL_TURN_DELAY} 0"
    turns: dict[str, list[tuple[float, float, float, float]]] = {"bare": [], "sdk": [], "app": []}
    plains: dict[str, list[tuple[float, float, float]]] = {"bare": [], "sdk": [], "app": []}

    async def app_turn(text: str) -> tuple[Reply, float]:
        (chat,) = await driver.open_chats(1)
        cpu = cpu_seconds(app.pid)
        await driver.one(chat, text)
        await settle(0.05)  # the turn's last writes (its steps, the reply) count as its own
        cpu = cpu_seconds(app.pid) - cpu
        await chat.close()
        assert chat.reply.text == expected, f"app: {text!r} not intact: {chat.reply.text[:200]!r}"
        return chat.reply, cpu

    for _ in tqdm(range(trials), desc="tool turn", leave=False):
        for name, call, without in (
            (
                "bare",
                lambda: bare_tool_turn(client, TOOL_TURN),
                lambda: bare_stream(client, plain),
            ),
            (
                "sdk",
                lambda: sdk_tool_turn(tool_agent, run_config, TOOL_TURN),
                lambda: sdk_stream(tool_agent, run_config, plain),
            ),
        ):
            cpu = time.process_time()
            first, tool_done, total, text = await call()
            cpu = time.process_time() - cpu
            assert text == expected, f"{name}: tool turn not intact"
            turns[name].append((first, first - tool_done, total, cpu))
            cpu = time.process_time()
            first, total, text = await without()
            plains[name].append((first, total, time.process_time() - cpu))
            assert text == expected, f"{name}: reply not intact"
        reply, cpu = await app_turn(TOOL_TURN)
        steps = list(reply.tool_steps.values())
        assert len(steps) == 1 and not steps[0].get("isError") and steps[0].get("output"), (
            f"app: expected one tool step with a result, got {steps}"
        )
        turns["app"].append(
            (
                reply.first_token_at - reply.sent_at,
                reply.first_token_at - reply.tool_done_at,
                reply.done_at - reply.sent_at,
                cpu,
            )
        )
        reply, cpu = await app_turn(plain)
        plains["app"].append(
            (reply.first_token_at - reply.sent_at, reply.done_at - reply.sent_at, cpu)
        )
    # Medians of times; CPU as a mean, since the app's is read from /proc in 10 ms ticks.
    return {
        "tokens": TOOL_TURN_TOKENS,
        "trials": trials,
        **{
            name: {
                "first_token_ms": statistics.median(v[0] for v in values) * 1000,
                "tool_to_first_token_ms": statistics.median(v[1] for v in values) * 1000,
                "total_ms": statistics.median(v[2] for v in values) * 1000,
                "cpu_ms_per_turn": statistics.mean(v[3] for v in values) * 1000,
                "without_tool": {
                    "first_token_ms": statistics.median(v[0] for v in plains[name]) * 1000,
                    "total_ms": statistics.median(v[1] for v in plains[name]) * 1000,
                    "cpu_ms_per_turn": statistics.mean(v[2] for v in plains[name]) * 1000,
                },
            }
            for name, values in turns.items()
        },
    }


def summary(wave: Wave) -> dict:
    return {
        "chats": wave.chats,
        "tokens": wave.tokens,
        "delay_s": wave.delay,
        "tokens_per_s": wave.tokens_per_s,
        "first_token_p50_ms": wave.first_token_p50 * 1000,
        "first_token_p95_ms": wave.first_token_p95 * 1000,
        "completion_s": wave.completion_s,
        "natural_s": wave.natural_s,
        "completion_ratio": wave.completion_ratio,
        "slowest_ratio": wave.slowest_ratio,
        "intact": wave.intact,
        "events_per_reply": wave.events_per_reply,
    }


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        # Other work on the machine moves the timings: the load when the run began.
        "load_average": os.getloadavg(),
    }


# --- reporting ------------------------------------------------------------------------------------


def verdicts(r: dict) -> list[tuple[str, str, bool]]:
    first, long = r["first_token_ms"], r["long_reply"]
    sdk_rate = long["sdk"]["tokens_per_s"]
    w150, w500, again = r["wave_150"], r["wave_500"], r["wave_500_again"]
    rows = [
        (
            "first token added over the SDK alone (median)",
            f"{first['app'] - first['sdk']:+.1f} ms",
            first["app"] - first["sdk"] <= 5,
        ),
        (
            "5,000-token reply vs the SDK alone",
            f"{long['app']['tokens_per_s'] / sdk_rate:.2f}x",
            long["app"]["tokens_per_s"] / sdk_rate >= 0.95,
        ),
        (
            "CPU per token above the SDK alone",
            f"{long['app']['cpu_us_per_token'] - long['sdk']['cpu_us_per_token']:+.0f} us",
            long["app"]["cpu_us_per_token"] - long["sdk"]["cpu_us_per_token"] <= 20,
        ),
        (
            "capacity vs the SDK's single-stream rate",
            f"{r['capacity']['tokens_per_s'] / sdk_rate:.2f}x "
            f"(the SDK alone: {r['capacity']['sdk_tokens_per_s'] / sdk_rate:.2f}x)",
            r["capacity"]["tokens_per_s"] / sdk_rate >= 0.75,
        ),
    ]
    floors = {
        "150 chats": r["sdk_wave_150"],
        "500 chats": r["sdk_wave_500"],
        "500 more chats": r["sdk_wave_500"],
    }
    for name, wave, ratio in (
        ("150 chats", w150, 1.15),
        ("500 chats", w500, 1.1),
        ("500 more chats", again, 1.1),
    ):
        rows.append(
            (
                f"{name}: intact, p95 first token, completion",
                f"{wave['intact']}/{wave['chats']}, {wave['first_token_p95_ms']:.0f} ms, "
                f"{wave['completion_ratio']:.2f}x (the SDK alone: "
                f"{floors[name]['first_token_p95_ms']:.0f} ms, "
                f"{floors[name]['completion_ratio']:.2f}x"
                + (
                    f"; on the app's client: {tuned['first_token_p95_ms']:.0f} ms, "
                    f"{tuned['completion_ratio']:.2f}x)"
                    if name.startswith("500") and (tuned := r.get("tuned_sdk_wave_500"))
                    else ")"
                ),
                wave["intact"] == wave["chats"]
                and wave["first_token_p95_ms"] <= 500
                and wave["completion_ratio"] <= ratio,
            )
        )
    if turn := r.get("tool_turn"):
        rows += tool_turn_verdicts(turn)
    added = r["memory_mb"]["second_wave_added"]
    rows.append(("memory added by the second 500-chat wave", f"{added:+.1f} MB", added <= 5))
    return rows


def tool_turn_verdicts(turn: dict) -> list[tuple[str, str, bool]]:
    """The turn with one tool call against the Agents SDK alone: first token, whole turn and
    CPU each within 10%."""
    rows = []
    for key, what in (
        ("first_token_ms", "first token after the tool"),
        ("total_ms", "whole turn"),
        ("cpu_ms_per_turn", "CPU per turn"),
    ):
        app, sdk = turn["app"][key], turn["sdk"][key]
        rows.append(
            (
                f"turn with one tool call, {what}: within 10% of the SDK alone",
                f"{app:.1f} ms against {sdk:.1f} ms ({app / sdk - 1:+.0%})",
                app <= sdk * TOOL_TARGET,
            )
        )
    return rows


def thinking_lines(t: dict | None) -> list[str]:
    if t is None:
        return []
    events = f"{t['answer_events']} + {t['thought_events']}"
    rate = f"{t['pieces_per_s']:.0f}, {t['cpu_us_per_piece']:.0f}"
    return [
        f"{'  after 5,000 thought pieces':34}{'':>28}{events:>14}",
        f"{'  thought+answer pieces/s, CPU (us)':34}{'':>28}{rate:>14}",
    ]


def tool_turn_lines(t: dict | None) -> list[str]:
    if t is None:
        return []
    rows = (
        ("first token after the tool (ms)", "first_token_ms"),
        ("  from the tool's end (ms)", "tool_to_first_token_ms"),
        ("whole turn (ms)", "total_ms"),
        ("CPU per turn (ms)", "cpu_ms_per_turn"),
    )
    without = (
        ("  without the tool: first token", "first_token_ms"),
        ("  without the tool: whole turn", "total_ms"),
        ("  without the tool: CPU", "cpu_ms_per_turn"),
    )
    return [
        f"Turn with one tool call, {t['tokens']} tokens 1 ms apart after it "
        f"(median of {t['trials']}):",
        *(
            f"{'  ' + label:34}{t['bare'][key]:>14.1f}{t['sdk'][key]:>14.1f}{t['app'][key]:>14.1f}"
            for label, key in rows
        ),
        *(
            f"{'  ' + label:34}"
            + "".join(f"{t[who]['without_tool'][key]:>14.1f}" for who in ("bare", "sdk", "app"))
            for label, key in without
        ),
    ]


def machine_line(m: dict) -> str:
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['date']}, "
        "load average " + ", ".join(f"{load:.1f}" for load in m.get("load_average", ()))
    )


def render(r: dict) -> str:
    first, long = r["first_token_ms"], r["long_reply"]
    lines = [
        machine_line(r["machine"]),
        "",
        f"{'':34}{'bare openai':>14}{'Agents SDK':>14}{'the app':>14}",
        f"{'first token, median (ms)':34}{first['bare']:>14.1f}{first['sdk']:>14.1f}"
        f"{first['app']:>14.1f}",
        f"{'5,000-token reply (tokens/s)':34}{long['bare']['tokens_per_s']:>14.0f}"
        f"{long['sdk']['tokens_per_s']:>14.0f}{long['app']['tokens_per_s']:>14.0f}",
        f"{'CPU per token (us)':34}{long['bare']['cpu_us_per_token']:>14.0f}"
        f"{long['sdk']['cpu_us_per_token']:>14.0f}{long['app']['cpu_us_per_token']:>14.0f}",
        f"{'socket events per 5,000-token reply':34}{'':>28}{r['events_per_5000_token_reply']:>14}",
        *thinking_lines(r.get("thinking_reply")),
        *tool_turn_lines(r.get("tool_turn")),
        "",
        "SDK: the Agents SDK alone, stock client, one Agent. SDK+: the Agents SDK alone on the",
        "app's client (GeminiClient) with an agent copy per run. app: the app, through socket.io.",
        f"{'    chats':18}{'tokens x delay':>16}{'tok/s':>8}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'done/natural':>14}{'slowest':>9}{'intact':>9}{'events':>8}",
    ]
    waves = [
        *(("SDK", w) for w in r["capacity"]["sdk_steps"]),
        *(("app", w) for w in r["capacity"]["steps"]),
        ("SDK", r["sdk_wave_150"]),
        ("app", r["wave_150"]),
        ("SDK", r["sdk_wave_500"]),
        ("SDK+", r["tuned_sdk_wave_500"]),
        ("app", r["wave_500"]),
        ("app", r["wave_500_again"]),
    ]
    for who, w in waves:
        lines.append(
            f"{who:<5}{w['chats']:<13}{w['tokens']:>8} x {w['delay_s'] * 1000:>3.0f}ms"
            f"{w['tokens_per_s']:>8.0f}"
            f"{w['first_token_p50_ms']:>9.0f}{w['first_token_p95_ms']:>9.0f}"
            f"{w['completion_ratio']:>13.2f}x{w['slowest_ratio']:>8.2f}x"
            f"{w['intact']:>6}/{w['chats']:<3}"
            f"{w['events_per_reply']:>7.0f}"
        )
    m = r["memory_mb"]
    lines += [
        "",
        f"Resident memory: {m['before_waves']:.0f} MB before the waves, "
        f"{m['after_first_wave']:.0f} MB after 500 chats ended "
        f"({m['per_chat_first_wave_kb']:.0f} KB per chat), {m['after_second_wave']:.0f} MB after "
        f"500 more ({m['second_wave_added']:+.1f} MB).",
        "",
        "Targets:",
    ]
    for name, value, ok in verdicts(r):
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}: {value}")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for who, style, label in (("app", "-", "the app"), ("sdk", "--", "Agents SDK alone")):
        waves = r["ramp"][who]
        chats = [w["chats"] for w in waves]
        axis.plot(
            chats, [w["first_token_p50_ms"] for w in waves], "o" + style, label=f"{label}, median"
        )
        axis.plot(
            chats,
            [w["first_token_p95_ms"] for w in waves],
            "s" + style,
            label=f"{label}, 95th percentile",
        )
    axis.axhline(500, color="grey", linewidth=0.8, linestyle=":", label="0.5 s target (p95)")
    axis.set_xscale("log")
    ticks = [w["chats"] for w in r["ramp"]["app"]]
    axis.set_xticks(ticks, [str(t) for t in ticks])
    axis.minorticks_off()
    axis.set_xlabel("chats started together")
    axis.set_ylabel("first token (ms)")
    axis.set_title("First-token latency against concurrent chats")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def app_env(fake_url: str, **overrides: str) -> dict[str, str]:
    """How the benchmark runs the single app: the fake upstream, SQLite in a directory of its
    own, the benchmark's one tool; ``overrides`` win."""
    directory = Path(tempfile.mkdtemp(prefix="gemini-chat-bench-"))
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "OPENAI_"))},
        "GEMINI_API_KEY": DEFAULT_KEY,
        "GEMINI_BASE_URL": fake_url,
        "CHAINLIT_ENV_FILE": "/nonexistent/.env",
        "DATABASE_URL": f"sqlite+aiosqlite:///{directory}/bench.db",
        # The app gets the same one tool as the Agents SDK alone, so both send the same request.
        "TOOLS": "none",
        "TOOL_MODULES": "bench.tools",
        "PYTHONPATH": str(ROOT),
        **overrides,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller waves, fewer trials")
    parser.add_argument(
        "--tool-turn", action="store_true", help="only the turn with one tool call (under a minute)"
    )
    args = parser.parse_args()

    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_gemini"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    fake_url = fake.stdout.readline().strip()
    app = None
    try:
        app = start_app(app_env(fake_url))
        if args.tool_turn:
            results = asyncio.run(measure_tool_turn_only(app, fake_url))
        else:
            results = asyncio.run(measure(app, fake_url, args.quick))
        results["machine"]["load_average_at_end"] = os.getloadavg()
    finally:
        if app is not None:
            app.stop()
        fake.terminate()
    if args.tool_turn:
        rows = tool_turn_verdicts(results["tool_turn"])
        lines = [machine_line(results["machine"]), *tool_turn_lines(results["tool_turn"])]
        lines += ["", "Targets:"]
        lines += [f"  {'PASS' if ok else 'FAIL'}  {name}: {value}" for name, value, ok in rows]
        return report("tool-turn", results, "\n".join(lines), rows)
    return report("bench", results, render(results), verdicts(results), [(plot, "first-token.png")])


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Wave", "asdict", "main"]
