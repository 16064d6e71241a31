"""Group commit: fsync calls that concurrent writers share.

When several associations store at once (with ``[storage] fsync = yes``),
each instance needs its directory entry and its index-log line on disk
before it is answered.  One ``fsync`` of a directory, or ``fdatasync`` of the
log, makes durable everything done to it before the call began; so a caller
whose change is already covered by a sync that began after it need not sync
again, and one that arrives while a sync runs waits for it and then, if it
is still needed, runs one sync for itself and everyone who queued behind it.
That is the classic group commit of database logs, applied per file.

Leaf module: threads only (it runs in the reactor's thread pool).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable

__all__ = ["GroupSync", "fsync_directory"]


class _Key:
    """Sync state of one file or directory."""

    __slots__ = ("cond", "requested", "done", "running")

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.requested = 0   # changes registered so far
        self.done = 0        # changes known to be on disk
        self.running = False


class GroupSync:
    """Shares the syncs of each key (a path, a descriptor) among threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Hashable, _Key] = {}
        #: how many syncs ran, and how many callers were covered by another's
        self.ran = 0
        self.shared = 0

    def sync(self, key: Hashable, do_sync: Callable[[], object]) -> None:
        """Make the caller's finished changes to ``key`` durable.

        Call after the change (write, rename) has returned.  Runs
        ``do_sync`` unless a sync that began after this call covers it.

        Raises:
            OSError: from ``do_sync``, for the caller that ran it (the
                others then run their own).
        """
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _Key()
        with state.cond:
            state.requested += 1
            mine = state.requested
            while True:
                if state.done >= mine:
                    self.shared += 1
                    return
                if not state.running:
                    break
                state.cond.wait()
            state.running = True
            covers = state.requested
        ok = False
        try:
            do_sync()
            ok = True
        finally:
            with state.cond:
                state.running = False
                if ok:
                    state.done = max(state.done, covers)
                    self.ran += 1
                idle = state.done >= state.requested
                state.cond.notify_all()
            if idle:
                with self._lock:
                    if self._keys.get(key) is state and state.done >= state.requested \
                            and not state.running:
                        del self._keys[key]


def fsync_directory(path: str) -> None:
    """fsync a directory so that a rename or new entry in it is durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
