"""Model wiring: one Gemini client, model, agent and run config, built once per process.

``GeminiClient`` and ``GeminiChatModel`` override internals of openai 3.52 (the client's
``_process_response_data``, the ``chat``/``completions`` properties and ``create``'s request
path) and of openai-agents 0.24 (``OpenAIChatCompletionsModel._fetch_response``);
tests/test_contracts.py fails when one of them moves.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import httpx2
import pydantic
from agents import (
    Agent,
    FunctionTool,
    ModelRetrySettings,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RetryDecision,
    RetryPolicyContext,
    RunConfig,
    set_tracing_disabled,
)
from agents.run_config import CallModelData, ModelInputData
from openai import AsyncOpenAI, DefaultAioHttpClient, Timeout
from openai.resources.chat import AsyncChat, AsyncCompletions
from openai.types.chat import ChatCompletionChunk

from . import metrics
from .config import Settings
from .errors import MalformedResponse, classify, log_detail
from .mcp import McpServers
from .preferences import (
    Preferences,
    chat_model_settings,
    combined_instructions,
    with_thinking_config,
)
from .thoughts import ThoughtFilter, move_inline_thought
from .toolcalls import CallNumbering, gemini_tools
from .toolrun import guarded, tool_error_message
from .usage import TokenUsage, token_usage

logger = logging.getLogger("gemini_chat")

# Keep as many idle connections as there may be concurrent replies: a new connection to Gemini
# costs a TLS handshake, and openai's default keeps only 100.
POOL_LIMITS = httpx2.Limits(
    max_connections=1000, max_keepalive_connections=1000, keepalive_expiry=30
)

# Backoff for retryable failures that carry no retryDelay (500, 503, refused connections).
FIRST_BACKOFF_SECONDS = 0.5


@dataclass
class StreamReport:
    """What the raw stream said that the Agents SDK does not pass on."""

    finish_reason: str | None = None
    chunks: int = 0
    # The text of the current attempt as it came off the wire. When a stream fails, the SDK
    # drops deltas it had parsed but not yet handed out; this is where they can be recovered.
    received: list[str] = field(default_factory=list)
    # Thought summaries of the current attempt as they came off the wire, inline in the text or
    # as ``reasoning_content``: the thoughts the SDK may drop on a failure, as ``received``.
    thoughts: list[str] = field(default_factory=list)
    # The last usage Gemini sent in each attempt (cumulative on every chunk, so the last one is
    # the attempt's), None for an attempt that carried none. Kept raw: read once, at the end.
    attempts: list[Any] = field(default_factory=list)
    # Model requests of the run so far (retries not counted), and how many may offer tools:
    # the request after the last tool round allowed gets tool_choice "none", so it answers
    # with what the tools gave (see ``count_round``).
    rounds: int = 0
    max_tool_rounds: int | None = None

    @property
    def tools_off(self) -> bool:
        return self.max_tool_rounds is not None and self.rounds > self.max_tool_rounds

    @property
    def total_tokens(self) -> int | None:
        """Tokens Gemini says the request cost (prompt, answer and thinking), over all
        attempts; None when no chunk carried usage."""
        totals = [u.total_tokens for u in self.attempts if u is not None and u.total_tokens]
        return sum(totals) if totals else None

    @property
    def usage(self) -> TokenUsage | None:
        """Prompt, output and thinking tokens over all attempts; None when none was reported."""
        usages = [token_usage(u) for u in self.attempts if u is not None and u.total_tokens]
        return sum(usages[1:], usages[0]) if usages else None

    @property
    def last_prompt_tokens(self) -> int | None:
        """The prompt size Gemini reported for the last attempt that reported one."""
        for usage in reversed(self.attempts):
            if usage is not None and usage.prompt_tokens:
                return usage.prompt_tokens
        return None


# Set around one run; the SDK copies the context into the run's task, so the model sees it.
current_report: ContextVar[StreamReport | None] = ContextVar("gemini_stream_report", default=None)


class _ObservedStream:
    """Wraps openai's AsyncStream to note the finish reason, which the SDK hides when some text
    came first (a ``content_filter`` after text would otherwise look like a normal answer), and
    to move Gemini's inline thought summaries out of the answer text into ``reasoning_content``
    before the SDK sees them (see gemini_chat/thoughts.py)."""

    def __init__(self, stream: Any, report: StreamReport) -> None:
        self._stream = stream
        self._report = report
        self.response = getattr(stream, "response", None)
        self._thoughts = ThoughtFilter()
        self._calls = CallNumbering()
        report.received = []  # a retried attempt starts over
        report.thoughts = []
        self._attempt = len(report.attempts)  # earlier attempts cost tokens too
        report.attempts.append(None)

    async def __aiter__(self) -> AsyncIterator[Any]:
        report = self._report
        received = report.received
        thoughts = self._thoughts
        thought_text = report.thoughts
        chunks_before = report.chunks
        attempts, attempt = report.attempts, self._attempt
        calls = self._calls
        async for chunk in self._stream:
            report.chunks += 1
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                # Cumulative on every chunk: the last one is the attempt's total.
                attempts[attempt] = usage
            for choice in chunk.choices or ():
                if choice.finish_reason is not None:
                    report.finish_reason = choice.finish_reason
                delta = choice.delta
                if delta is None:
                    continue
                if delta.content:
                    move_inline_thought(delta, thoughts.strip(delta))
                    if delta.content:
                        received.append(delta.content)
                if delta.tool_calls:
                    # Gemini's calls, each given its own index and an id (toolcalls.py).
                    calls.number(delta.tool_calls)
                if delta.model_extra and (reasoning := delta.model_extra.get("reasoning_content")):
                    thought_text.append(reasoning)
            yield chunk
        content_type = self.response.headers.get("content-type", "") if self.response else ""
        if report.chunks == chunks_before and not content_type.startswith("text/event-stream"):
            # A whole JSON answer (a proxy that ignores ``stream``) reads as no events at all:
            # say so, rather than report an empty answer that rephrasing would fix.
            raise MalformedResponse(kind="not a stream", content_type=content_type)

    async def close(self) -> None:
        await self._stream.close()


class GeminiChatModel(OpenAIChatCompletionsModel):
    """Chat Completions against Gemini, reporting each stream's finish reason to the caller."""

    async def _fetch_response(self, *args: Any, **kwargs: Any) -> Any:
        report = current_report.get()
        if report is not None and report.tools_off and len(args) > 3 and args[3]:
            # (system_instructions, input, model_settings, tools, ...): the tool rounds are
            # used up, so this request may only answer.
            settings = copy.copy(args[2])
            settings.tool_choice = "none"
            args = (*args[:2], settings, *args[3:])
        result = await super()._fetch_response(*args, **kwargs)
        if isinstance(result, tuple) and report is not None:
            response, stream = result
            return response, _ObservedStream(stream, report)
        return result


_JSON_SCALARS = (str, int, float, bool, type(None))


def is_plain_json(value: Any) -> bool:
    """True for data made only of dicts, lists, strings, numbers, booleans and None."""
    kind = type(value)
    if kind is dict:
        return all(type(key) is str and is_plain_json(item) for key, item in value.items())
    if kind is list:
        return all(is_plain_json(item) for item in value)
    return kind in _JSON_SCALARS


class _PlainMessagesCompletions(AsyncCompletions):
    """Sends plain-JSON messages as they are, past openai's request transform.

    Before sending, openai walks every message against each of the six message types it
    accepts, to rename aliased keys and encode dates or files: about 155 µs per message, so
    15 ms of CPU per request once a chat has 100 messages. Chat messages have no aliases, and
    plain JSON has nothing to encode, so for them the walk returns its input unchanged; they go
    in ``extra_body`` instead (merged into the same ``messages`` key, the same bytes on the wire).
    Anything else (a pydantic object, a file, a generator) still takes openai's way.
    """

    async def create(self, *, messages: Any, extra_body: Any = None, **params: Any) -> Any:
        if params.get("tools") and (tools := gemini_tools(params["tools"])) is not None:
            # Every tool's schema, the agent's own and MCP servers' alike, as Gemini takes it;
            # plain JSON, so past openai's transform too (1 ms a request for six tools).
            params["tools"] = []
            extra_body = {"tools": tools, **(extra_body or {})}
        if type(messages) is list and is_plain_json(messages):
            extra_body = {"messages": messages, **(extra_body or {})}
            messages = []
        return await super().create(messages=messages, extra_body=extra_body, **params)


class _GeminiChat(AsyncChat):
    @cached_property
    def completions(self) -> AsyncCompletions:
        return _PlainMessagesCompletions(self._client)


class GeminiClient(AsyncOpenAI):
    """AsyncOpenAI with the per-request and per-chunk overhead taken out of streaming.

    openai builds every streamed chunk with its lenient pure-Python ``construct_type``: about
    65 µs a chunk, half of what the Agents SDK spends per token. A chunk that fits the published
    schema is validated by pydantic-core instead (about 4 µs) into the same model; anything the
    schema refuses (Gemini's tool-call deltas without ``index``, a finish reason openai does not
    list) still takes openai's lenient path, so nothing that parsed before fails now. Requests
    skip openai's per-message transform (see ``_PlainMessagesCompletions``).
    """

    @cached_property
    def chat(self) -> AsyncChat:
        return _GeminiChat(self)

    def _process_response_data(self, *, data: object, cast_to: Any, response: Any) -> Any:
        if cast_to is ChatCompletionChunk and type(data) is dict:
            try:
                return ChatCompletionChunk.model_validate(data)
            except pydantic.ValidationError:
                pass
        return super()._process_response_data(data=data, cast_to=cast_to, response=response)


def build_client(settings: Settings) -> GeminiClient:
    """The client for Gemini: explicit key, no hidden retries, a stall timeout."""
    return GeminiClient(
        # Always explicit: without it openai would fall back to OPENAI_API_KEY and send it to
        # Google. build_client is only called once a Gemini key is configured.
        api_key=settings.api_key,
        base_url=settings.base_url,
        # The Agents SDK retry layer (build_run_config) is the only one.
        max_retries=0,
        # read= is the longest silence tolerated between two chunks of a stream.
        timeout=Timeout(
            connect=settings.connect_timeout,
            read=settings.stall_timeout,
            write=settings.connect_timeout,
            pool=settings.connect_timeout,
        ),
        # aiohttp under openai (its documented `aiohttp` extra): under many concurrent streams
        # it costs about a third less CPU per chunk than httpx's own transport, which pauses
        # and resumes the socket and opens a cancel scope around every read.
        http_client=DefaultAioHttpClient(limits=POOL_LIMITS),
    )


def build_model(settings: Settings, client: AsyncOpenAI | None = None) -> GeminiChatModel:
    return GeminiChatModel(model=settings.model, openai_client=client or build_client(settings))


def build_agent(settings: Settings, model: Any, tools: list[FunctionTool] | None = None) -> Agent:
    """The agent, with ``tools`` behind the app's guard (gemini_chat/toolrun.py)."""
    return Agent(
        name=settings.assistant_name,
        instructions=settings.instructions,
        model=model,
        tools=guarded(tools or (), settings),
    )


def count_round(data: CallModelData[Any]) -> ModelInputData:
    """Called by the SDK once before each model request of a run (not before its retries):
    counts the run's requests in its StreamReport, which turns tools off once
    ``MAX_TOOL_ROUNDS`` rounds of calls are done. The input goes as it is."""
    report = current_report.get()
    if report is not None:
        report.rounds += 1
    return data.model_data


def build_retry_policy(settings: Settings):
    """Retry only what can succeed: honour Gemini's retryDelay up to the cap; never a daily
    quota, a bad key or an unknown model. The SDK itself refuses once text has streamed."""

    def policy(context: RetryPolicyContext) -> RetryDecision:
        error = classify(context.error, model=settings.model)
        if not error.retryable:
            return RetryDecision(retry=False, reason=type(error).__name__)
        delay = error.retry_after
        if delay is None:
            delay = FIRST_BACKOFF_SECONDS * 2 ** (context.attempt - 1)
        if delay > settings.max_retry_wait:
            logger.info(
                "Not retrying %s: Gemini asks for %.1fs, over the %.1fs cap",
                log_detail(error),
                delay,
                settings.max_retry_wait,
            )
            return RetryDecision(retry=False, reason="retry delay over cap")
        logger.warning(
            "Retrying in %.1fs (attempt %d of %d) after %s",
            delay,
            context.attempt,
            context.max_retries,
            log_detail(error),
        )
        metrics.retrying(error)
        return RetryDecision(retry=True, delay=delay, reason=type(error).__name__)

    return policy


def build_model_settings(settings: Settings) -> ModelSettings:
    """Retries, and thought summaries when they are shown (``SHOW_THOUGHTS``): asked for only
    then, since Gemini thinks either way and the summaries cost streaming."""
    model_settings = ModelSettings(
        retry=ModelRetrySettings(
            max_retries=settings.max_retries, policy=build_retry_policy(settings)
        )
    )
    if settings.show_thoughts:
        model_settings = with_thinking_config(model_settings, include_thoughts=True)
    return model_settings


def build_run_config(settings: Settings, model: Any) -> RunConfig:
    # Tracing would export to OpenAI's servers (needing an OpenAI account); keep it off globally
    # so nothing ever tries, and so the Gemini key is never handed to an exporter.
    set_tracing_disabled(True)
    return RunConfig(
        model=model,
        tracing_disabled=True,
        model_settings=build_model_settings(settings),
        # A call to a tool the agent does not have is an error the model reads (and a step
        # says so), not the end of the answer.
        tool_not_found_behavior="return_error_to_model",
        tool_error_formatter=tool_error_message,
        call_model_input_filter=count_round,
    )


@dataclass(frozen=True)
class Backend:
    """Everything a turn needs from the model side, built once; ``for_chat`` gives one chat's
    version of it (its model, temperature, instructions and thinking level)."""

    settings: Settings
    agent: Agent
    run_config: RunConfig
    # The one client every chat's model shares, and those models by name.
    client: AsyncOpenAI | None = None
    models: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The operator's MCP servers (MCP_SERVERS_FILE), shared by every chat.
    mcp: McpServers | None = field(default=None, compare=False, repr=False)
    # MCP tools behind the guard, by the identity of the tool McpServers gave: guarded once,
    # not on every message.
    guarded_tools: dict[int, tuple[FunctionTool, FunctionTool]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def with_guard(self, tools: list[FunctionTool]) -> list[FunctionTool]:
        """``tools`` (an MCP server's) behind the app's guard; the ones seen before reuse their
        guarded copy, and those gone (a restarted server's old tools) are forgotten."""
        cache = self.guarded_tools
        result = []
        for tool in tools:
            known = cache.get(id(tool))
            if known is None or known[0] is not tool:
                known = cache[id(tool)] = (tool, guarded([tool], self.settings)[0])
            result.append(known[1])
        if len(cache) > len(tools):
            current = {id(tool) for tool in tools}
            for key in [key for key in cache if key not in current]:
                del cache[key]
        return result

    def model_named(self, name: str) -> Any:
        if name == self.settings.model or self.client is None:
            return self.run_config.model
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = GeminiChatModel(model=name, openai_client=self.client)
        return model

    def for_chat(self, preferences: Preferences) -> Backend:
        model = self.model_named(preferences.model)
        # Shallow copies, like each run's agent (streaming.py): dataclasses.replace() would run
        # RunConfig's checks, which resolve its type hints (about 1 ms a turn).
        agent = copy.copy(self.agent)
        agent.model = model
        agent.instructions = combined_instructions(
            self.settings.instructions, preferences.instructions
        )
        run_config = copy.copy(self.run_config)
        run_config.model = model
        run_config.model_settings = chat_model_settings(self.run_config.model_settings, preferences)
        settings = dataclasses.replace(self.settings, model=preferences.model)
        return Backend(
            settings, agent, run_config, self.client, self.models, self.mcp, self.guarded_tools
        )


def build_backend(
    settings: Settings,
    model: Any | None = None,
    client: AsyncOpenAI | None = None,
    tools: list[FunctionTool] | None = None,
) -> Backend | None:
    """The model side for ``settings``; None when no key is configured (nothing may go out).
    With ``client``, chats may use other models than ``settings.model``, through it; ``tools``
    (gemini_chat/tools.py ``build_tools``) are the agent's own, MCP servers' join per message."""
    if model is None:
        if not settings.api_key:
            return None
        client = client or build_client(settings)
        model = build_model(settings, client)
    return Backend(
        settings,
        build_agent(settings, model, tools),
        build_run_config(settings, model),
        client,
        mcp=McpServers(settings),
    )
