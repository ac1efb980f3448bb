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
import types
from collections.abc import Callable

logger = logging.getLogger("gemini_chat")

GC_YOUNG_THRESHOLD = 20_000


def restore_stock_asyncio() -> bool:
    """Undo nest_asyncio's module-level patches; True if there was something to undo."""
    if not getattr(asyncio, "_nest_patched", False):
        return False
    try:
        import _asyncio
    except ImportError:  # no C accelerator on this Python: nothing faster to go back to
        return False
    asyncio.Task = asyncio.tasks.Task = asyncio.tasks._CTask = _asyncio.Task
    asyncio.Future = asyncio.futures.Future = asyncio.futures._CFuture = _asyncio.Future
    events = asyncio.events
    events.get_event_loop = asyncio.get_event_loop = events._c_get_event_loop
    events._get_event_loop = events._c__get_event_loop
    asyncio.run = asyncio.runners.run
    # nest_asyncio's policy hook creates patched loops; the stock policy method is inherited.
    policy_class = type(events.get_event_loop_policy())
    if "get_event_loop" in vars(policy_class):
        delattr(policy_class, "get_event_loop")
    # It also patched the loop *class*, so every new loop would run its Python `_run_once`:
    # drop what it set there, exposing BaseEventLoop's own methods again.
    probe = events.new_event_loop()
    loop_class = type(probe)
    probe.close()
    for name, value in list(vars(loop_class).items()):
        if getattr(value, "__module__", None) == "nest_asyncio" or name in (
            "_nest_patched",
            "_num_runs_pending",
            "_is_proactorloop",
        ):
            delattr(loop_class, name)
    del asyncio._nest_patched
    return True


def remove_constructor_sleeps() -> None:
    # By module path: ``chainlit.step`` as an attribute is the ``step`` decorator, which
    # chainlit's __init__ re-exports over the submodule of the same name.
    no_sleep = types.SimpleNamespace(sleep=lambda seconds: None)
    for name in ("chainlit.message", "chainlit.step"):
        importlib.import_module(name).time = no_sleep


def tune_garbage_collector() -> None:
    """Streaming allocates many short-lived objects per token (pydantic events, chunks); at the
    default threshold of 700 allocations the collector ran so often under load that 500
    concurrent replies took twice their natural time. Everything alive at start-up (the
    frameworks) is frozen out of its sight, and collections run less often while replies
    stream; ``IdleCollector`` then collects fully once the server is idle, so memory comes back
    between bursts."""
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
    """Runs one full garbage collection when no reply has been streaming for a moment."""

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self.active = 0
        self._timer: asyncio.TimerHandle | None = None

    def started(self) -> None:
        self.active += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def finished(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._collect)

    def _collect(self) -> None:
        self._timer = None
        if self.active == 0:
            gc.collect()
            release_free_memory()


idle_collector = IdleCollector()


def tune_runtime() -> None:
    tune_garbage_collector()
    if restore_stock_asyncio():
        logger.debug("Running on stock asyncio (nest_asyncio undone)")
    remove_constructor_sleeps()
