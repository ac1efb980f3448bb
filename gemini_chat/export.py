"""A stored chat as a file its owner can download: Markdown to read, JSON to process.

Both hold the conversation as the chat shows it: the user's messages and the assistant's
answers, in order, each exactly as stored (a stopped answer keeps its mark). The welcome and the
error notices are the page's, not the conversation's, and are left out, as they are from what
the model is sent (history.py). The JSON adds what the app stores with each message: its time,
an answer's status and the rest of its metadata, and the rating its owner gave it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from .history import load_json

FORMATS = {"md": "text/markdown; charset=utf-8", "json": "application/json"}
UNTITLED = "Chat"
# Kinds of assistant message that are the page's own, not answers.
NOT_ANSWERS = frozenset({"welcome", "notice"})


def messages(thread: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation's messages, oldest first: role, text, time and what is stored with
    them (an answer's metadata; its rating, kept on the run step around it)."""
    steps = thread.get("steps") or []
    ratings = {
        step["id"]: step["feedback"]
        for step in steps
        if isinstance(step.get("feedback"), dict) and step["feedback"].get("value") is not None
    }
    found = []
    for step in steps:
        kind = step.get("type")
        metadata = load_json(step.get("metadata"))
        if kind == "user_message":
            found.append(
                {
                    "id": step["id"],
                    "role": "user",
                    "createdAt": step.get("createdAt"),
                    "content": step.get("output") or "",
                }
            )
        elif (
            kind == "assistant_message"
            and not step.get("isError")
            and metadata.get("kind") not in NOT_ANSWERS
        ):
            message = {
                "id": step["id"],
                "role": "assistant",
                "createdAt": step.get("createdAt"),
                "content": step.get("output") or "",
                "status": metadata.get("status", "complete"),
                "metadata": metadata,
            }
            rating = ratings.get(step.get("parentId") or "")
            if rating is not None:
                message["rating"] = {
                    "value": rating.get("value"),
                    "comment": rating.get("comment"),
                }
            found.append(message)
    return found


def title(thread: dict[str, Any]) -> str:
    return " ".join(str(thread.get("name") or "").split()) or UNTITLED


def to_markdown(thread: dict[str, Any], assistant_name: str) -> str:
    """The chat as Markdown: its title, then each message under a heading naming its author,
    its text exactly as written."""
    parts = [f"# {title(thread)}"]
    for message in messages(thread):
        author = "You" if message["role"] == "user" else assistant_name
        parts.append(f"## {author}")
        parts.append(message["content"])
    return "\n\n".join(parts) + "\n"


def to_json(thread: dict[str, Any], now: datetime | None = None) -> str:
    """The chat as JSON: id, title, times and the messages with everything stored for them."""
    document = {
        "id": thread.get("id"),
        "name": title(thread),
        "createdAt": thread.get("createdAt"),
        "exportedAt": (now or datetime.now(UTC)).isoformat(),
        "messages": messages(thread),
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def file_name(thread: dict[str, Any], extension: str) -> str:
    """A file name from the chat's title: letters, digits and dashes only, so it is safe in a
    Content-Disposition header and on every file system."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title(thread)).strip("-")[:60].rstrip("-")
    return f"{slug or 'chat'}.{extension}"
