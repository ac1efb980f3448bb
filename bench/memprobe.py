"""What the app holds in memory, read from inside the running app for the memory benchmark only.

The benchmark loads this module into the app with ``TOOL_MODULES=bench.memprobe`` (it offers no
tool) and ``MEMPROBE_FILE``; nothing of it ships with the product. On SIGUSR2 the app writes, to
that file, the chat sessions it still keeps (Chainlit's registries and the per-session state the
app releases), engine.io's sockets, asyncio's tasks, glibc's heap figures and the garbage
collector's counts; on SIGUSR1 also the live objects counted by type and, when the app runs under
``PYTHONTRACEMALLOC``, a tracemalloc snapshot beside it; on SIGURG it runs one full collection and
writes what it found, how long it took, and memory before and after. The benchmark waits on the
sessions it reads there to know when a wave's sessions have expired. The objects are counted only
on request: listing every object allocates megabytes, which would move the resident memory being
measured.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import os
import signal
import time
import tracemalloc
from collections import Counter
from pathlib import Path


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes of the main heap and the other arenas, from the system
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmap'd blocks
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use
            "fordblks",  # bytes free inside the heaps, not given back
            "keepcost",
        )
    ]


def _malloc() -> dict[str, int]:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {field: getattr(info, field) for field, _ in _MallInfo2._fields_}


# The pauses of full collections since the app started (seconds each), timed by the collector's
# own callbacks.
full_collections: list[float] = []
_started: list[float] = []


def _time_full_collections(phase: str, info: dict) -> None:
    if info["generation"] != 2:
        return
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        full_collections.append(time.perf_counter() - _started.pop())


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def state(objects: bool) -> dict:
    """What the app keeps now; with ``objects``, also its live objects by type."""
    from chainlit.chat_context import chat_contexts
    from chainlit.server import sio
    from chainlit.session import ws_sessions_id, ws_sessions_sid
    from chainlit.user_session import user_sessions

    loop = asyncio.events._get_running_loop()
    kept = {
        "rss_kb": _rss_kb(),
        "sessions": len(ws_sessions_id),
        "sessions_by_socket": len(ws_sessions_sid),
        "user_sessions": len(user_sessions),
        "chat_contexts": len(chat_contexts),
        "engineio_sockets": len(sio.eio.sockets),
        "tasks": len(asyncio.all_tasks(loop)) if loop is not None else None,
        "malloc": _malloc(),
        # The collector's view: objects waiting in each generation, and collections so far.
        "gc_count": gc.get_count(),
        "gc_stats": gc.get_stats(),
        "gc_frozen": gc.get_freeze_count(),
        "full_collection_seconds": list(full_collections),
    }
    if objects:
        # f-strings, since a few types' __module__ is a descriptor, not a string.
        counts = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        kept["gc_objects"] = sum(counts.values())
        kept["types"] = dict(counts.most_common(300))
    return kept


def collected() -> dict:
    """One full collection now: what it found, what it cost, and memory before and after."""
    before = {"rss_kb": _rss_kb(), "malloc": _malloc(), "gc_count": gc.get_count()}
    start = time.perf_counter()
    unreachable = gc.collect()
    seconds = time.perf_counter() - start
    after = {"rss_kb": _rss_kb(), "malloc": _malloc()}
    from gemini_chat.runtime import release_free_memory

    release_free_memory()
    return {
        "before": before,
        "collected": unreachable,
        "collect_seconds": seconds,
        "after_collect": after,
        "after_trim": {"rss_kb": _rss_kb(), "malloc": _malloc()},
    }


def probe_path(pid: int | None = None, template: str | None = None) -> Path:
    """The file the app with ``pid`` (this one by default) writes: "{pid}" in MEMPROBE_FILE gives
    each instance of a stack a file of its own."""
    template = template or os.environ["MEMPROBE_FILE"]
    return Path(template.replace("{pid}", str(pid or os.getpid())))


def _write(signum, frame) -> None:
    path = probe_path()
    objects = signum == signal.SIGUSR1
    # A signal handler runs inside whatever frame the app was in: an exception escaping it
    # would surface there (a storage call failing for no reason), so none may escape.
    try:
        if signum == signal.SIGURG:
            written = collected()
        else:
            written = state(objects)
        if objects and tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(path.with_suffix(".tracemalloc")))
            written["tracemalloc"] = True
    except Exception as error:  # reported to the benchmark instead
        written = {"error": repr(error)}
    # Renamed into place, so the benchmark never reads half a file.
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(written))
    partial.replace(path)


if os.environ.get("MEMPROBE_FILE"):
    gc.callbacks.append(_time_full_collections)
    signal.signal(signal.SIGUSR2, _write)
    signal.signal(signal.SIGUSR1, _write)
    signal.signal(signal.SIGURG, _write)
