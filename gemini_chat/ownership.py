"""Who may touch what: every chat, message, rating and attachment id a client can name is checked,
inside the data layer, against the user Chainlit authenticated.

The user is the one Chainlit itself authenticated, however they did it. Its routes and its
socket connect both authenticate through ``chainlit.auth.authenticate_user`` (cookie or bearer
token alike), after which the app notes the user for the rest of the request
(``framework.install_user_note``); on socket events Chainlit's own context holds the session's
user. ``owner_checked`` wraps every public method of
the data layer with the rule RULES names for it: each id the call carries must belong to that
user, else the call does nothing and returns what "not found" returns. A method without a rule
(one a later Chainlit adds) is refused outright, so nothing reaches the database unchecked.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("gemini_chat")


@dataclass(frozen=True)
class Actor:
    """The authenticated user a data-layer call is made for."""

    identifier: str
    user_id: str | None = None  # users.id, when Chainlit had the stored user at hand


def actor_of(user: Any) -> Actor | None:
    identifier = getattr(user, "identifier", None)
    if not identifier:
        return None
    user_id = getattr(user, "id", None)
    return Actor(str(identifier), str(user_id) if user_id else None)


# The user Chainlit authenticated for this request or socket connection.
_authenticated: contextvars.ContextVar[Actor | None] = contextvars.ContextVar(
    "authenticated_user", default=None
)
# The user a running data-layer call was checked for.
_checked: contextvars.ContextVar[Actor | None] = contextvars.ContextVar(
    "checked_user", default=None
)


def note_authenticated(user: Any) -> None:
    """Record the user Chainlit has just authenticated, for the rest of the request or socket
    connection (framework.install_user_note calls it)."""
    _authenticated.set(actor_of(user))


def acting_user() -> Actor | None:
    """The user this request or socket event is for; None when there is none, or when the
    request's login and the Chainlit session it names belong to different users."""
    from chainlit.context import context_var

    authenticated = _authenticated.get()
    context = context_var.get(None)
    session = actor_of(getattr(getattr(context, "session", None), "user", None))
    if authenticated and session and authenticated.identifier != session.identifier:
        logger.warning(
            "Refused a call of %r in a session of %r", authenticated.identifier, session.identifier
        )
        return None
    if authenticated and session:
        return authenticated if authenticated.user_id else session
    return authenticated or session


def checked_user() -> Actor:
    """The user the running data-layer call was checked for (only inside one)."""
    actor = _checked.get()
    if actor is None:
        raise RuntimeError("a data-layer write outside an ownership check")
    return actor


def is_uuid(value: Any) -> bool:
    if isinstance(value, uuid.UUID):
        return True
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


# --- the rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Id:
    """An id a call carries: a thread, step, feedback, element or user id; or a thread read
    through its share link ("shared_thread")."""

    kind: str
    value: Any
    new: bool = False  # the call may create it; if it exists already it must be the caller's


@dataclass(frozen=True)
class Rule:
    ids: Callable[[dict[str, Any]], Iterable[Id]]
    # What the call returns (or raises) when refused, given its arguments: what "not found" is.
    refused: Callable[[dict[str, Any]], Any]
    # Runs in line with the writes (see ChatDataLayer._in_order).
    ordered: bool = False


def _given(*ids: Id) -> list[Id]:
    return [i for i in ids if i.value not in (None, "")]


def _none(_: dict[str, Any]) -> None:
    return None


def _message_not_found(_: dict[str, Any]) -> None:
    # Chainlit's PUT /feedback answers an error with its text.
    raise ValueError("Message not found")


def _no_threads(_: dict[str, Any]) -> Any:
    from chainlit.types import PageInfo, PaginatedResponse

    info = PageInfo(hasNextPage=False, startCursor=None, endCursor=None)
    return PaginatedResponse(pageInfo=info, data=[])


def _step_ids(a: dict[str, Any]) -> list[Id]:
    step = a["step_dict"]
    return [
        Id("thread", step.get("threadId"), new=True),
        Id("step", step.get("id"), new=True),
        *_given(Id("step", step.get("parentId"), new=True)),
    ]


def _element_ids(a: dict[str, Any]) -> list[Id]:
    element = a["element"]
    return [
        Id("thread", getattr(element, "thread_id", None), new=True),
        Id("element", getattr(element, "id", None), new=True),
        *_given(Id("step", getattr(element, "for_id", None), new=True)),
    ]


RULES: dict[str, Rule] = {
    "get_thread": Rule(lambda a: [Id("thread", a["thread_id"])], _none, ordered=True),
    "get_thread_author": Rule(lambda a: [Id("thread", a["thread_id"])], lambda _: ""),
    "update_thread": Rule(
        lambda a: [Id("thread", a["thread_id"], new=True), *_given(Id("user", a["user_id"]))],
        _none,
        ordered=True,
    ),
    "delete_thread": Rule(lambda a: [Id("thread", a["thread_id"])], _none, ordered=True),
    # The one way a chat is read by someone other than its owner: its owner shared it.
    "get_shared_thread": Rule(lambda a: [Id("shared_thread", a["thread_id"])], _none),
    # The one way a chat's shared mark is set or removed: by its owner.
    "share_thread": Rule(lambda a: [Id("thread", a["thread_id"])], _none, ordered=True),
    # The cursor is compared with the caller's own threads only, never used as a key.
    "list_threads": Rule(lambda a: [Id("user", a["filters"].userId)], _no_threads),
    "create_step": Rule(_step_ids, _none, ordered=True),
    "update_step": Rule(_step_ids, _none, ordered=True),
    "delete_step": Rule(lambda a: [Id("step", a["step_id"])], _none, ordered=True),
    "get_step": Rule(lambda a: [Id("step", a["step_id"])], _none),
    "set_step_favorite": Rule(
        lambda a: [Id("step", a["step_dict"].get("id"))], lambda a: a["step_dict"], ordered=True
    ),
    "get_favorite_steps": Rule(lambda a: [Id("user", a["user_id"])], lambda _: []),
    # The feedback's threadId is not trusted: the stored one is the rated step's thread.
    "upsert_feedback": Rule(
        lambda a: [
            Id("step", a["feedback"].forId),
            *_given(Id("feedback", a["feedback"].id, new=True)),
        ],
        _message_not_found,
        ordered=True,
    ),
    "delete_feedback": Rule(
        lambda a: [Id("feedback", a["feedback_id"])], lambda _: False, ordered=True
    ),
    "create_element": Rule(_element_ids, _none, ordered=True),
    "get_element": Rule(
        lambda a: [Id("thread", a["thread_id"]), Id("element", a["element_id"])], _none
    ),
    "delete_element": Rule(
        lambda a: [Id("element", a["element_id"]), *_given(Id("thread", a["thread_id"]))],
        _none,
        ordered=True,
    ),
    # Attached files (storage.AttachmentStore): read by the chat they belong to, or one by one
    # by their own id; the SQL also compares the stored owner with the caller.
    "get_attachments": Rule(lambda a: [Id("thread", a["thread_id"])], lambda _: []),
    "get_attachment": Rule(lambda a: [Id("element", a["element_id"])], _none),
    # A chat not stored yet holds nothing; another user's chat is refused (None).
    "get_attachment_usage": Rule(lambda a: [Id("thread", a["thread_id"], new=True)], _none),
}
# No id a client names: the user comes from Chainlit's own login, or there is no id at all.
EXEMPT = frozenset({"get_user", "create_user", "build_debug_url", "close"})
# The SQLAlchemy layer's helpers, which Chainlit calls only from inside the data layer.
INTERNAL = frozenset(
    {"execute_sql", "clean_result", "get_current_timestamp", "get_all_user_threads"}
)
# What Chainlit defers until the chat's first user message (so a chat nobody wrote in is not
# stored); the check then runs when the call is made for real.
QUEUED = frozenset(
    {"create_step", "update_step", "delete_step", "create_element", "delete_element"}
)


def public_methods(cls: type) -> set[str]:
    return {
        name
        for name in dir(cls)
        if not name.startswith("_") and inspect.isfunction(getattr(cls, name, None))
    }


def owner_checked(cls: type) -> type:
    """Wrap every public method of a data layer with its rule (see the module docstring).

    The class provides ``_owner_of(kind, id)`` (the owner's identifier, "" for a row without
    one, None when there is no such row), ``_is_shared(thread_id)`` and ``_in_order(call)``
    (runs a call in line with the writes)."""
    from chainlit.data.utils import queue_until_user_message

    unknown = sorted(public_methods(cls) - set(RULES) - EXEMPT - INTERNAL)
    if unknown:
        logger.error("Data-layer methods with no ownership rule, refused: %s", ", ".join(unknown))
    for name in public_methods(cls) - EXEMPT - INTERNAL:
        method = getattr(cls, name)
        rule = RULES.get(name)
        wrapped = _guarded(name, method, rule) if rule else _refused(name, method)
        if name in QUEUED:
            wrapped = queue_until_user_message()(wrapped)
        setattr(cls, name, wrapped)
    return cls


def _guarded(name: str, method: Callable, rule: Rule) -> Callable:
    signature = inspect.signature(method)

    @functools.wraps(method)
    async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments

        async def checked() -> Any:
            actor = acting_user()
            if actor is None:
                logger.warning("Refused %s: no authenticated user", name)
                return rule.refused(arguments)
            for id_ in rule.ids(arguments):
                if not await _allowed(self, name, actor, id_):
                    return rule.refused(arguments)
            token = _checked.set(actor)
            try:
                return await method(self, *args, **kwargs)
            finally:
                _checked.reset(token)

        return await (self._in_order(checked) if rule.ordered else checked())

    return guarded


async def _allowed(layer: Any, name: str, actor: Actor, id_: Id) -> bool:
    if not is_uuid(id_.value):
        logger.warning("Refused a %s id that is not a UUID: %r", id_.kind, str(id_.value)[:80])
        return False
    if id_.kind == "shared_thread":
        # Readable by anyone logged in while its owner shares it; otherwise a chat like any.
        if await layer._is_shared(str(id_.value)):
            return True
        id_ = Id("thread", id_.value)
    owner = await layer._owner_of(id_.kind, str(id_.value))
    if owner is None:
        if not id_.new:
            logger.info("%s: no %s %s", name, id_.kind, id_.value)
        return id_.new
    if owner != actor.identifier:
        logger.warning(
            "Refused %s by %r: %s %s belongs to another user",
            name,
            actor.identifier,
            id_.kind,
            id_.value,
        )
        return False
    return True


def _refused(name: str, method: Callable) -> Callable:
    if not inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        def refused(*args: Any, **kwargs: Any) -> None:
            logger.error("Refused %s: no ownership rule for it", name)

        return refused

    @functools.wraps(method)
    async def refused_async(*args: Any, **kwargs: Any) -> None:
        logger.error("Refused %s: no ownership rule for it", name)

    return refused_async
