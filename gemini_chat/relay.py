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


# The relay of this process; replaced at start when other instances may share the database.
relay = LocalRelay()
