"""Ids that stay the same when a page reconnects to a server that does not know its session.

When the instance serving a page dies and comes back (or another one takes over), Chainlit's
page reconnects its socket with the session id it had, and the server, which has no such
session, starts it afresh: a chat with messages is resumed from the database, a new chat gets
its welcome and starters again. The page keeps what it showed, and updates a message it already
has by id rather than adding it; so what a new chat shows first is given ids derived from the
session id, and the page shows it once.
"""

from __future__ import annotations

import uuid

# Any fixed namespace: the ids only need to be the same for the same session.
NAMESPACE = uuid.UUID("5f0d8a59-5b5c-4c38-9a0e-3f2b7f6a2c11")


def stable_id(session_id: str, *names: str) -> str:
    """The id of what the session shows as ``names``, the same on every start of the session."""
    return str(uuid.uuid5(NAMESPACE, "\n".join((session_id, *names))))
