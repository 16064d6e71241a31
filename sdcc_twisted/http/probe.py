"""Keeps the monitor's slow figures fresh: Redis up, journal backlog, disk free.

A scrape or a page poll must not wait on Redis or a disk, so these are
measured every few seconds on the injected clock and read from the monitor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from sdcc_twisted.logs import get_logger
from sdcc_twisted.monitor import Monitor

log = get_logger("sdcc.http")

#: ``ping() -> Deferred``: fires when Redis answered (errback otherwise).
Ping = Callable[[], "defer.Deferred[Any]"]
#: ``measure() -> Deferred[(journal entries, {volume: free bytes})]``, off
#: the reactor thread.
Measure = Callable[[], "defer.Deferred[tuple[int, dict[str, int]]]"]


class HealthProbe(service.Service):
    """Every ``interval`` seconds: ping Redis and measure the journal and disks,
    each bounded by ``timeout`` seconds."""

    def __init__(self, monitor: Monitor, clock: IReactorTime, ping: Ping,
                 measure: Measure, interval: float = 5.0, timeout: float = 2.0) -> None:
        self.monitor = monitor
        self.clock = clock
        self.ping = ping
        self.measure = measure
        self.interval = interval
        self.timeout = timeout
        self._loop: task.LoopingCall | None = None
        self._running: defer.Deferred[None] | None = None
        self._warned = False

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.probe_now)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("the health probe stopped", f))

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._running

    def probe_now(self) -> defer.Deferred[None]:
        """Probe once; fires when both answers (or their timeouts) are in."""
        pinged = defer.maybeDeferred(self.ping)
        pinged.addTimeout(self.timeout, self.clock)
        pinged.addCallbacks(lambda _: True, lambda _: False)
        pinged.addCallback(self._redis)
        measured = defer.maybeDeferred(self.measure)
        measured.addTimeout(self.timeout, self.clock)
        measured.addCallbacks(self._measured, self._not_measured)
        self._running = defer.gatherResults([pinged, measured]).addCallback(lambda _: None)
        return self._running

    def _redis(self, up: bool) -> None:
        if not up and self.monitor.redis_up:
            self._warned = True
            log.warn("index: Redis did not answer a PING within {t:g} s; stores "
                     "are journaled until it does", t=self.timeout)
        elif up and self._warned:
            self._warned = False
            log.info("index: Redis answers again")
        self.monitor.redis_up = up

    def _measured(self, result: tuple[int, dict[str, int]]) -> None:
        journal, free = result
        self.monitor.journal_pending = journal
        self.monitor.set_disk_free(free)

    def _not_measured(self, failure: Any) -> None:
        log.warn("cannot measure the journal and free disk space: {why}",
                 why=failure.getErrorMessage())
