"""What instances of the app tell each other about answers streaming right now.

One instance (SQLite, or one process on PostgreSQL) has nobody to tell: ``LocalRelay``. Several
instances on one PostgreSQL database talk through its LISTEN/NOTIFY.
"""

from __future__ import annotations


class LocalRelay:
    """A single instance: no answer streams anywhere else."""

    async def streaming_elsewhere(self, thread_id: str) -> bool:
        """Whether another instance is writing an answer in this chat right now."""
        return False


_relay: LocalRelay = LocalRelay()


def current_relay() -> LocalRelay:
    """The relay of this process (read at each use: it is replaced at start when other
    instances may share the database)."""
    return _relay


def install_relay(relay: LocalRelay) -> None:
    global _relay
    _relay = relay
