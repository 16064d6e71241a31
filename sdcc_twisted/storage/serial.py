"""Disk work off the reactor thread, in order per association.

Every file operation of an association (temp-file open, fragment writes,
commit, reads for C-GET/C-MOVE) goes into that association's
:class:`SerialQueue`.  A queue runs its jobs one at a time, in the order they
were queued, on a bounded thread pool shared by all associations; one thread
drains a queue's burst of jobs without going back to the reactor between
them, so a PDU's write costs no thread hop of its own.  A queue counts the
bytes waiting in it: past ``high_water`` the association's transport is
paused (producer/consumer) until the disk caught up, so a slow disk stalls
that association only and never grows a buffer.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any, Callable, Final, Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.python.failure import Failure

from sdcc_twisted.logs import get_logger

__all__ = ["DiskWorkers", "HIGH_WATER", "SerialQueue", "ThreadWorkers"]

log = get_logger("sdcc.storage")

#: Data bytes an association may have waiting for the disk before its
#: transport stops reading.
HIGH_WATER: Final = 4 * 1024 * 1024


class _Pool(Protocol):
    def callInThread(self, func: Callable[..., object], *args: Any) -> None:  # noqa: N802
        """Run ``func(*args)`` on one of the pool's threads."""


class _Inline:
    """A pool that runs the job at once on the caller's thread (tests with
    ``task.Clock`` and ``StringTransport``, where there is no reactor)."""

    def callInThread(self, func: Callable[..., object], *args: Any) -> None:  # noqa: N802
        func(*args)


class ThreadWorkers(service.Service):
    """A bounded pool of daemon threads fed by one ``SimpleQueue``: fewer
    layers per job than Twisted's ThreadPool (the receive path queues a job
    per instance).  Threads start as work needs them, up to ``size``; as a
    service, the pool ends when it stops (after the stores drained)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]] | None] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0          # threads waiting for a job
        self._queued = 0        # jobs no thread took yet

    def callInThread(self, func: Callable[..., object], *args: Any) -> None:  # noqa: N802
        """Run ``func(*args)`` on a pool thread (``SerialQueue`` catches its
        errors)."""
        thread: threading.Thread | None = None
        with self._lock:
            self._queued += 1
            # a thread for every job no idle thread will take: a job never
            # waits behind one that stalls while the pool has room
            if self._queued > self._idle and len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, name="sdcc-disk", daemon=True)
                self._threads.append(thread)
        self._jobs.put((func, args))
        if thread is not None:
            thread.start()

    def stopService(self) -> None:  # noqa: N802 - Twisted's name
        """Stop the pool with the server."""
        super().stopService()
        self.stop()

    def stop(self) -> None:
        """Let every thread finish its job and end."""
        with self._lock:
            count = len(self._threads)
            self._threads = []      # work queued later starts new threads
        for _ in range(count):
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
                if job is not None:
                    self._queued -= 1
            if job is None:
                return
            func, args = job
            func(*args)


class DiskWorkers:
    """Makes the per-association queues over one bounded thread pool.

    Args:
        pool: bounded worker threads (:class:`ThreadWorkers`).
        call_from_thread: ``reactor.callFromThread``.
        high_water: see :data:`HIGH_WATER`.
    """

    def __init__(self, pool: _Pool, call_from_thread: Callable[..., object],
                 high_water: int = HIGH_WATER) -> None:
        self.pool = pool
        self.call_from_thread = call_from_thread
        self.high_water = high_water

    @classmethod
    def inline(cls) -> DiskWorkers:
        """Jobs run at once, on the caller's thread: only for tests that
        drive the protocol with ``task.Clock`` (no threads, no reactor)."""
        return cls(_Inline(), lambda f, *a: f(*a))

    def queue(self) -> SerialQueue:
        """A new queue (one per association)."""
        return SerialQueue(self.pool, self.call_from_thread, self.high_water)


class SerialQueue:
    """One association's disk jobs, run in order on a pool thread.

    :meth:`post` and :meth:`call` are called on the reactor thread; results,
    failures and :meth:`room` fire there.
    """

    def __init__(self, pool: _Pool, call_from_thread: Callable[..., object],
                 high_water: int = HIGH_WATER) -> None:
        self._pool = pool
        self._call_from_thread = call_from_thread
        self._high = high_water
        self._low = high_water // 2
        self._lock = threading.Lock()
        self._jobs: deque[tuple[Callable[..., Any], tuple[Any, ...],
                                defer.Deferred[Any] | None, int]] = deque()
        self._running = False
        self._bytes = 0
        self._want_room = False
        self._room: list[defer.Deferred[None]] = []

    @property
    def backlogged(self) -> bool:
        """More than the high-water mark of data waits for the disk."""
        return self._bytes > self._high

    def post(self, fn: Callable[..., Any], *args: Any, size: int = 0) -> None:
        """Queue ``fn(*args)``, which keeps its own errors (an exception it
        raises is logged); ``size`` bytes of data count toward the backlog."""
        self._queue(fn, args, None, size)

    def call(self, fn: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        """Queue ``fn(*args)``; its result (or failure) on the reactor thread."""
        d: defer.Deferred[Any] = defer.Deferred()
        self._queue(fn, args, d, 0)
        return d

    def room(self) -> "defer.Deferred[None]":
        """Fires once the backlog is down to half the high-water mark (at
        once if it is)."""
        with self._lock:
            if self._bytes <= self._low:
                return defer.succeed(None)
            self._want_room = True
        d: defer.Deferred[None] = defer.Deferred()
        self._room.append(d)
        return d

    def _queue(self, fn: Callable[..., Any], args: tuple[Any, ...],
               d: defer.Deferred[Any] | None, size: int) -> None:
        with self._lock:
            self._jobs.append((fn, args, d, size))
            self._bytes += size
            start = not self._running
            self._running = True
        if start:
            self._pool.callInThread(self._drain)

    def _drain(self) -> None:
        """On a pool thread: run the jobs until none is left."""
        while True:
            with self._lock:
                if not self._jobs:
                    self._running = False
                    return
                fn, args, d, size = self._jobs.popleft()
            result: Any
            try:
                result = fn(*args)
            except BaseException:  # noqa: BLE001 - handed to the reactor thread
                result = Failure()
            wake = False
            with self._lock:
                self._bytes -= size
                if self._want_room and self._bytes <= self._low:
                    self._want_room = False
                    wake = True
            if d is not None:
                self._call_from_thread(_deliver, d, result)
            elif isinstance(result, Failure):
                self._call_from_thread(_lost, result)
            if wake:
                self._call_from_thread(self._wake)

    def _wake(self) -> None:
        waiting, self._room = self._room, []
        for d in waiting:
            d.callback(None)


def _deliver(d: "defer.Deferred[Any]", result: Any) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def _lost(failure: Failure) -> None:
    log.failure("a disk job failed", failure)
