"""An instance's life: serving, then draining after SIGTERM until it exits.

Read by the readiness check (not ready while draining, so a load balancer sends new chats
elsewhere) and by the chat (no new message is taken while draining).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Lifecycle:
    # Set once SIGTERM arrived: answers running finish (up to DRAIN_SECONDS), nothing new starts.
    draining: bool = False


# The one instance this process is.
lifecycle = Lifecycle()
