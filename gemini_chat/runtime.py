"""The server's runtime, tuned: stock asyncio instead of nest_asyncio, no blocking sleeps, and
start-up objects frozen out of the garbage collector's way.

Chainlit's CLI applies ``nest_asyncio`` when it is imported. That swaps asyncio's C ``Task`` and
``Future`` for the pure-Python ones and runs the loop through a Python re-implementation of
``_run_once``: every step of every task (one per streamed token, several per socket event)
costs more. The app never nests event loops, so before ``chainlit run`` starts its loop
(``asyncio.run``, after loading this app) the stock implementations are put back.

Chainlit also calls ``time.sleep(0.001)`` in every ``Message`` and ``Step`` constructor, which
blocks the whole server for a millisecond each time: three per turn, a second and a half when
500 chats start at once. The app orders its stored messages explicitly (``created_at`` and the
reply's ``for`` link), so those sleeps are removed.

Both rely on the internals of nest_asyncio 1.6, CPython's asyncio (3.11 to 3.13) and Chainlit
2.12; tests/test_contracts.py fails when one of them moves. Where an internal is not where it
was, nothing is changed and an error is logged: the app then runs, slower, on what Chainlit set.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import asyncio.futures
import asyncio.runners
import asyncio.tasks
import ctypes
import ctypes.util
import gc
import importlib
import logging
import time
import types
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("gemini_chat")

GC_YOUNG_THRESHOLD = 20_000

# What nest_asyncio 1.6's ``_patch_loop`` sets on the loop class, besides its functions.
NEST_ASYNCIO_LOOP_FLAGS = ("_nest_patched", "_num_runs_pending", "_is_proactorloop")


class RuntimeContractError(RuntimeError):
    """An internal the runtime tuning relies on is not where it was."""


def _nest_asyncio_leftovers(cls: type) -> list[str]:
    """The attributes nest_asyncio set on ``cls`` itself (its functions and its flags)."""
    return [
        name
        for name, value in vars(cls).items()
        if name in NEST_ASYNCIO_LOOP_FLAGS
        or (isinstance(value, types.FunctionType) and value.__module__ == "nest_asyncio")
    ]


def _stock_asyncio() -> dict[str, Any]:
    """asyncio's own objects that nest_asyncio replaced, from where this Python keeps them.

    nest_asyncio overwrote ``asyncio.tasks._CTask`` and ``asyncio.futures._CFuture`` too, so the
    C classes come from ``_asyncio``. ``get_event_loop`` is kept aside as
    ``events._c_get_event_loop`` on 3.11 to 3.13. ``events._get_event_loop`` exists only up to
    3.11 (kept as ``_c__get_event_loop``); from 3.12 nest_asyncio adds it, so undoing it means
    deleting it (None here)."""
    try:
        import _asyncio
    except ImportError as error:
        raise RuntimeContractError("this Python has no C asyncio (_asyncio)") from error
    events = asyncio.events
    stock: dict[str, Any] = {"Task": _asyncio.Task, "Future": _asyncio.Future}
    if not hasattr(events, "_c_get_event_loop"):
        raise RuntimeContractError("asyncio.events._c_get_event_loop is missing")
    stock["get_event_loop"] = events._c_get_event_loop
    if hasattr(events, "_py__get_event_loop"):  # this Python has a _get_event_loop of its own
        if not hasattr(events, "_c__get_event_loop"):
            raise RuntimeContractError("asyncio.events._c__get_event_loop is missing")
        stock["_get_event_loop"] = events._c__get_event_loop
    else:
        stock["_get_event_loop"] = None
    return stock


def _patched_classes() -> tuple[type, type]:
    """The policy and loop classes nest_asyncio patched, checked to hold what it set there."""
    events = asyncio.events
    policy_class = type(events.get_event_loop_policy())
    probe = events.new_event_loop()
    loop_class = type(probe)
    probe.close()
    patched = vars(policy_class).get("get_event_loop")
    if getattr(patched, "__module__", None) != "nest_asyncio":
        raise RuntimeContractError(f"{policy_class.__name__}.get_event_loop is not nest_asyncio's")
    if "_run_once" not in _nest_asyncio_leftovers(loop_class):
        raise RuntimeContractError(f"{loop_class.__name__}._run_once is not nest_asyncio's")
    return policy_class, loop_class


def restore_stock_asyncio() -> bool:
    """Undo nest_asyncio's patches; True if it had been applied and is now undone.

    Everything is checked before anything changes: on a Python or a nest_asyncio this does
    not know, it raises ``RuntimeContractError`` and leaves nest_asyncio fully in place (a
    half-undone asyncio would mix C tasks with Python loop internals)."""
    if not getattr(asyncio, "_nest_patched", False):
        return False
    stock = _stock_asyncio()
    policy_class, loop_class = _patched_classes()

    asyncio.Task = asyncio.tasks.Task = asyncio.tasks._CTask = stock["Task"]
    asyncio.Future = asyncio.futures.Future = asyncio.futures._CFuture = stock["Future"]
    events = asyncio.events
    events.get_event_loop = asyncio.get_event_loop = stock["get_event_loop"]
    if stock["_get_event_loop"] is not None:
        events._get_event_loop = stock["_get_event_loop"]
    elif "_get_event_loop" in vars(events):
        del events._get_event_loop
    asyncio.run = asyncio.runners.run
    # The policy and loop classes inherit the stock methods: dropping what nest_asyncio set on
    # them exposes those again, so new loops run BaseEventLoop's own C-backed `_run_once`.
    delattr(policy_class, "get_event_loop")
    for name in _nest_asyncio_leftovers(loop_class):
        delattr(loop_class, name)
    del asyncio._nest_patched
    return True


# Stands in for the ``time`` module inside chainlit.message and chainlit.step, which only call
# its ``sleep``.
NO_SLEEP = types.SimpleNamespace(sleep=lambda seconds: None)
SLEEPING_MODULES = ("chainlit.message", "chainlit.step")


def _is_no_sleep(value: Any) -> bool:
    # Also the NO_SLEEP of an earlier load of this module (``chainlit run -w`` re-imports it).
    return type(value) is types.SimpleNamespace and list(vars(value)) == ["sleep"]


def remove_constructor_sleeps() -> None:
    """Replace the ``time`` module seen by Chainlit's Message and Step with ``NO_SLEEP``."""
    # By module path: ``chainlit.step`` as an attribute is the ``step`` decorator, which
    # chainlit's __init__ re-exports over the submodule of the same name.
    modules = [importlib.import_module(name) for name in SLEEPING_MODULES]
    for module in modules:
        if not (module.__dict__.get("time") is time or _is_no_sleep(module.__dict__.get("time"))):
            raise RuntimeContractError(f"{module.__name__} no longer imports the time module")
    for module in modules:
        module.time = NO_SLEEP


def tune_garbage_collector() -> None:
    """Streaming allocates many short-lived objects per token (pydantic events, chunks); at the
    default threshold of 700 allocations the collector ran so often under load that 500
    concurrent replies took twice their natural time. Everything alive at start-up (the
    frameworks) is frozen out of its sight, and collections run less often while replies
    stream; ``IdleCollector`` then collects fully once the server is idle (and about once a
    minute under unbroken load), so memory comes back between bursts."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to call
        return None


_trim = _malloc_trim()


def release_free_memory() -> None:
    """Hand memory freed by a burst back to the system.

    A burst of replies leaves glibc's heap full of free holes (request and response buffers,
    JSON strings) that it keeps for reuse, so resident memory stepped up by about 20 MB per
    burst of 500 chats until the heap stopped growing; ``malloc_trim`` returns them.
    """
    if _trim is not None:
        _trim(0)


class IdleCollector:
    """Runs one full garbage collection when no reply has been streaming for a moment.

    A server that is never idle (chats arriving all the time) would never get there. There,
    with the raised thresholds, the collector looked at its oldest generation about every 20
    minutes, and the sessions of closed tabs, which Chainlit lets go as cycles (the session, its
    emitter and context, its messages), piled up unreachable until then: resident memory rose
    for 20 minutes, then dropped. So under unbroken load, a reply's end runs the collection at
    most every ``busy_every`` seconds when sessions were let go since the last one (a pause of
    some 100 to 250 ms while 50 chats stream), and hands free heap back."""

    def __init__(self, delay: float = 1.0, busy_every: float = 60.0) -> None:
        self.delay = delay
        self.busy_every = busy_every
        self.active = 0
        self._timer: asyncio.TimerHandle | None = None
        self._done_at = time.monotonic()
        self._released = False  # sessions let go since the last full collection

    def started(self) -> None:
        self.active += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def finished(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._when_idle)
        elif time.monotonic() - self._done_at >= self.busy_every:
            self._collect(fully=self._released)

    def released(self) -> None:
        """A chat's session was let go, outside any reply: what it held (cycles among the
        session, its context and the chat's state) waits for a full collection that no reply
        would trigger any more, since closed tabs expire minutes after their last reply. One
        collection runs once nothing has been released for ``delay``, if no reply is
        streaming then (otherwise a reply's end collects)."""
        self._released = True
        if self.active == 0:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._when_idle)

    def _when_idle(self) -> None:
        self._timer = None
        if self.active == 0:
            self._collect(fully=True)

    def _collect(self, fully: bool) -> None:
        self._done_at = time.monotonic()
        if fully:
            self._released = False
            gc.collect()
        release_free_memory()


idle_collector = IdleCollector()


def tune_runtime() -> None:
    tune_garbage_collector()
    try:
        if restore_stock_asyncio():
            logger.debug("Running on stock asyncio (nest_asyncio undone)")
    except RuntimeContractError as error:
        logger.error("Running on nest_asyncio's slower event loop: %s", error)
    try:
        remove_constructor_sleeps()
    except RuntimeContractError as error:
        logger.error("Chainlit's message and step sleeps are still in place: %s", error)
