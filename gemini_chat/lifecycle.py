"""An instance's life: serving, then draining after SIGTERM until it exits.

Read by the readiness check (not ready while draining, so a load balancer sends new chats
elsewhere), by the HTTP edge (no new session is opened while draining) and by the chat (no new
message is taken while draining). The chat reports each turn it runs here, so the drain
(gemini_chat/drain.py) knows when the last answer has ended and which ones to cut when the
drain time runs out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

# Shown in the chat, instead of an answer, for a message sent while this instance drains.
DRAINING_NOTICE = (
    "This server is restarting, so your message was not sent. Reload the page to continue the "
    "chat on another server; nothing is lost."
)


@dataclass
class Lifecycle:
    # Set once SIGTERM arrived: answers running finish (up to DRAIN_SECONDS), nothing new starts.
    draining: bool = False
    # Set when the drain stops waiting (its time ran out, or a second signal came): the answers
    # still running are cut, and stored as interrupted rather than stopped.
    cutting: bool = False
    # The tasks running a turn (a message from its arrival, asking again), queued ones too.
    turns: set[asyncio.Task] = field(default_factory=set)
    _idle: asyncio.Event | None = None

    def track(self, task: asyncio.Task | None) -> None:
        """Count ``task`` as a running turn until it is done."""
        if task is None or task.done() or task in self.turns:
            return
        self.turns.add(task)
        task.add_done_callback(self._turn_done)

    def _turn_done(self, task: asyncio.Task) -> None:
        self.turns.discard(task)
        if not self.turns and self._idle is not None:
            self._idle.set()

    async def turns_ended(self) -> None:
        """Return once no turn is running here."""
        while self.turns:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def cut_turns(self) -> int:
        """Cancel every running turn, each to be stored as interrupted; how many there were."""
        self.cutting = True
        running = [task for task in self.turns if not task.done()]
        for task in running:
            task.cancel()
        return len(running)

    def reply_status_when_cancelled(self) -> str:
        """How a reply cancelled now is stored: cut by the drain, or stopped by the user."""
        return "interrupted" if self.cutting else "stopped"


# The one instance this process is.
lifecycle = Lifecycle()
