"""Logging that can never print the API key."""

from __future__ import annotations

import logging

REDACTED = "[redacted]"


class SecretFilter(logging.Filter):
    """Replaces every occurrence of the given secrets in a record's final text."""

    def __init__(self, *secrets: str) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        text = record.getMessage()
        if any(secret in text for secret in self.secrets):
            for secret in self.secrets:
                text = text.replace(secret, REDACTED)
            record.msg, record.args = text, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and any(secret in record.exc_text for secret in self.secrets):
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, REDACTED)
        return True


def install_secret_filter(*secrets: str) -> None:
    """Attach the filter to every handler of the root logger (and future ones via the root)."""
    secret_filter = SecretFilter(*secrets)
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(secret_filter)


class DropMessages(logging.Filter):
    """Drops records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_library_logs() -> None:
    """Keep the server log to what an operator acts on.

    - openai's HTTP client (httpx2) logs every request to Gemini at INFO under its own name;
      failures are logged by the app with their detail.
    - Under `chainlit run -w`, watchfiles logs "1 change detected" at every database write (the
      default database sits in the watched folder; Chainlit reloads only for code and config).
    - Chainlit warns on every page load that there is no chainlit_<language>.md; falling back to
      chainlit.md is what this app intends.
    - The MCP client logs each HTTP server's session id (a credential for that session) and its
      reconnections at INFO, and its HTTP client (httpx) every request with its URL; the app logs
      what happens to each server itself (mcp.py).
    """
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("mcp.client").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    chainlit_logger = logging.getLogger("chainlit")
    if not any(isinstance(f, DropMessages) for f in chainlit_logger.filters):
        chainlit_logger.addFilter(DropMessages("Translated markdown file for "))
