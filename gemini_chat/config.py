"""Settings: the one place that reads the environment (and `.env`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from .starters import DEFAULT_STARTERS, Starter, parse_starters

GOOGLE_OPENAI_ENDPOINT = "https://generativelanguage.googleapis.com/v1beta/openai/"
DEFAULT_MODEL = "gemini-3.8-flash"
DEFAULT_DATABASE = "sqlite+aiosqlite:///.chainlit/chats.db"
DEFAULT_INSTRUCTIONS = (
    "You are a helpful, precise assistant. Answer in the language the user writes in. "
    "Use Markdown when it helps: lists, tables, fenced code blocks with a language."
)


class ConfigError(Exception):
    """A setting has a value the app cannot use; the message names the variable."""


def _text(value: str) -> str:
    return value


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as " + GOOGLE_OPENAI_ENDPOINT)
    return value if value.endswith("/") else value + "/"


def _database_url(value: str) -> str:
    """Accept the usual spellings and pin the async drivers the app ships with."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
    ):
        if value.startswith(plain):
            value = driver + value[len(plain) :]
    if not value.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://")):
        raise ValueError(
            "must be sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASS@HOST/DB"
        )
    if value.startswith("sqlite+aiosqlite:///"):
        path = value[len("sqlite+aiosqlite:///") :]
        if path and path != ":memory:" and not os.path.isabs(path):
            # Relative to the app's directory (where `chainlit run` starts), not to a later cwd.
            value = "sqlite+aiosqlite:///" + os.path.abspath(path)
    return value


def _address_list(value: str) -> str:
    """A comma-separated list as uvicorn reads it, written one way."""
    return ",".join(part.strip() for part in value.split(",") if part.strip())


def _name_list(value: str) -> tuple[str, ...]:
    """A comma-separated list of names (model ids), blanks and repeats dropped, order kept."""
    return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def _names_or_none(value: str) -> tuple[str, ...]:
    """A comma-separated list of names, or ``none`` for an empty one."""
    return () if value.strip().lower() == "none" else _name_list(value)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in allowed:
            raise ValueError("must be " + " or ".join(allowed))
        return value.lower()

    return parse


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _whole_number(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value.replace("_", ""))
        except ValueError:
            raise ValueError("must be a whole number") from None
        if number < minimum:
            raise ValueError(f"must be {minimum} or more")
        return number

    return parse


def _seconds(allow_zero: bool) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if not (number >= 0 if allow_zero else number > 0) or number == float("inf"):
            raise ValueError(
                "must be a number of seconds" + (", 0 or more" if allow_zero else " above 0")
            )
        return number

    return parse


@dataclass(frozen=True)
class Settings:
    """Every knob of the app. Field metadata names the environment variable behind it."""

    api_key: str | None = None
    model: str = DEFAULT_MODEL
    # The models a user may pick per chat; empty: every chat model Gemini lists.
    models: tuple[str, ...] = ()
    base_url: str = GOOGLE_OPENAI_ENDPOINT
    assistant_name: str = "Gemini"
    welcome: str = "Hello! I'm Gemini. Ask me anything."
    instructions: str = DEFAULT_INSTRUCTIONS
    # Ready-made first messages offered on a new chat (starters.py).
    starters: tuple[Starter, ...] = DEFAULT_STARTERS
    # Ask Gemini for thought summaries and show them above each answer.
    show_thoughts: bool = True
    # Built-in tools switched on (tools.py): "time", "calculator", "fetch".
    tools: tuple[str, ...] = ("time", "calculator")
    # Importable modules whose ``TOOLS`` lists join the agent's tools (a developer's own).
    tool_modules: tuple[str, ...] = ()
    # Tools (by name) that ask the user Allow / Deny in the chat before they run.
    tool_approval: tuple[str, ...] = ("fetch_page",)
    approval_timeout: float = 120.0
    tool_timeout: float = 30.0
    tool_result_max_chars: int = 20_000
    max_tool_rounds: int = 8
    fetch_max_bytes: int = 2_000_000
    # MCP servers whose tools join the agent's (mcp.py); a missing file means none.
    mcp_servers_file: str = "mcp_servers.json"
    mcp_timeout: float = 10.0
    history_token_budget: int = 32_000
    max_message_chars: int = 100_000
    # Per-user limits (limits.py); None: the login mode's default, 0: no limit.
    messages_per_minute: int | None = None
    tokens_per_day: int | None = None
    connect_timeout: float = 10.0
    stall_timeout: float = 30.0
    max_retries: int = 2
    max_retry_wait: float = 20.0
    disconnect_grace: float = 15.0
    flush_interval: float = 0.04
    database_url: str = ""
    auth_secret: str | None = None
    # Read by uvicorn itself (same variable, same default); the app checks it for local mode.
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # Running several instances (deploy/): a stopping instance lets answers finish this long.
    drain_timeout: float = 30.0
    # A streaming answer is stored this often, so an instance that dies loses at most this much.
    partial_save_interval: float = 3.0
    # /metrics answers only a request bearing this token; unset, there is no /metrics.
    metrics_token: str | None = None
    # "text" (one readable line) or "json" (one object a line, with chat and request ids).
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", _database_url(DEFAULT_DATABASE))

    def __repr__(self) -> str:
        # The key must never reach a log line, even through a repr.
        hidden = ("api_key", "auth_secret", "database_url", "metrics_token")
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
        key = "set" if self.api_key else "missing"
        return (
            f"Settings(api_key=<{key}>, " + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
        )


# Environment variable, parser, field: read in this order, documented in .env.example and README.
ENVIRONMENT: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("GEMINI_API_KEY", _text, "api_key"),
    ("GEMINI_MODEL", _text, "model"),
    ("GEMINI_MODELS", _name_list, "models"),
    ("GEMINI_BASE_URL", _url, "base_url"),
    ("ASSISTANT_NAME", _text, "assistant_name"),
    ("ASSISTANT_WELCOME", _text, "welcome"),
    ("ASSISTANT_INSTRUCTIONS", _text, "instructions"),
    ("CHAT_STARTERS", parse_starters, "starters"),
    ("SHOW_THOUGHTS", _flag, "show_thoughts"),
    ("TOOLS", _names_or_none, "tools"),
    ("TOOL_MODULES", _name_list, "tool_modules"),
    ("TOOL_APPROVAL", _names_or_none, "tool_approval"),
    ("APPROVAL_TIMEOUT_SECONDS", _seconds(allow_zero=False), "approval_timeout"),
    ("TOOL_TIMEOUT_SECONDS", _seconds(allow_zero=False), "tool_timeout"),
    ("TOOL_RESULT_MAX_CHARS", _whole_number(100), "tool_result_max_chars"),
    ("MAX_TOOL_ROUNDS", _whole_number(1), "max_tool_rounds"),
    ("FETCH_MAX_BYTES", _whole_number(1000), "fetch_max_bytes"),
    ("MCP_SERVERS_FILE", _text, "mcp_servers_file"),
    ("MCP_TIMEOUT_SECONDS", _seconds(allow_zero=False), "mcp_timeout"),
    ("HISTORY_TOKEN_BUDGET", _whole_number(1), "history_token_budget"),
    ("MAX_MESSAGE_CHARS", _whole_number(1), "max_message_chars"),
    ("USER_MESSAGES_PER_MINUTE", _whole_number(0), "messages_per_minute"),
    ("USER_TOKENS_PER_DAY", _whole_number(0), "tokens_per_day"),
    ("GEMINI_CONNECT_TIMEOUT", _seconds(allow_zero=False), "connect_timeout"),
    ("GEMINI_STALL_TIMEOUT", _seconds(allow_zero=False), "stall_timeout"),
    ("GEMINI_MAX_RETRIES", _whole_number(0), "max_retries"),
    ("GEMINI_MAX_RETRY_WAIT", _seconds(allow_zero=True), "max_retry_wait"),
    ("DISCONNECT_GRACE_SECONDS", _seconds(allow_zero=True), "disconnect_grace"),
    ("STREAM_FLUSH_INTERVAL", _seconds(allow_zero=True), "flush_interval"),
    ("DATABASE_URL", _database_url, "database_url"),
    ("CHAINLIT_AUTH_SECRET", _text, "auth_secret"),
    ("FORWARDED_ALLOW_IPS", _address_list, "forwarded_allow_ips"),
    ("DRAIN_SECONDS", _seconds(allow_zero=True), "drain_timeout"),
    ("PARTIAL_SAVE_SECONDS", _seconds(allow_zero=False), "partial_save_interval"),
    ("METRICS_TOKEN", _text, "metrics_token"),
    ("LOG_FORMAT", _choice("text", "json"), "log_format"),
)


def env_file_path() -> str:
    """The `.env` the app reads: the same file Chainlit loads (CHAINLIT_ENV_FILE, default .env)."""
    return os.path.join(os.getcwd(), os.environ.get("CHAINLIT_ENV_FILE", ".env"))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default: the process environment over `.env`).

    Raises ConfigError naming the first variable whose value is unusable. ``OPENAI_API_KEY`` is
    deliberately never read: a key for OpenAI must not be sent to Google.
    """
    if environ is None:
        file_values = {k: v for k, v in dotenv_values(env_file_path()).items() if v is not None}
        environ = {**file_values, **os.environ}
    values: dict[str, Any] = {}
    for variable, parse, name in ENVIRONMENT:
        raw = environ.get(variable)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[name] = parse(raw.strip() if parse is not _text else raw)
        except ValueError as error:
            raise ConfigError(f"{variable}={raw!r} is not valid: {error}.") from None
    if "api_key" in values:
        values["api_key"] = values["api_key"].strip()
    if "welcome" not in values and "assistant_name" in values:
        values["welcome"] = f"Hello! I'm {values['assistant_name']}. Ask me anything."
    return Settings(**values)
