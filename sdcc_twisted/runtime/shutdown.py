"""A clean stop: nothing answered is left half-way (issue 11, finding 6).

:class:`OrderedMultiService` stops its children one after the other, last
started first, each once the previous one has finished stopping (Twisted's
``MultiService`` stops them all at once).  :class:`GracefulStop`, started just
before the listener, is thus stopped right after the listener stopped
accepting: it lets the open associations finish for ``grace`` seconds,
A-ABORTs the rest, and waits until every instance already answered or being
committed is in the index or the journal.  Only then do the services started
before it stop: the replayer, the index log (which, all settled, leaves
nothing to recover), the Redis connection and the embedded Redis.
"""

from __future__ import annotations

from typing import cast

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from sdcc_twisted.logs import get_logger
from sdcc_twisted.runtime.protocol import DicomProtocol, DicomServerFactory
from sdcc_twisted.services.scp import StorageSCP

log = get_logger("sdcc.service")


class OrderedMultiService(service.MultiService):
    """A MultiService whose children stop in reverse start order, one at a
    time."""

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:  # noqa: BLE001 - the next ones must stop too
                log.failure("stopping {name} failed", name=child.name or child)

    def stopService(self) -> "defer.Deferred[None]":
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop_children())


class GracefulStop(service.Service):
    """Drains the associations and the stores on stop (see the module).

    Args:
        factory: the listener's factory (its open connections).
        storage: the Storage SCP (its commits and index writes on their way).
        clock: for the grace period.
        grace: seconds open associations may go on after the listener
            stopped (``[server] stop_grace``).
    """

    def __init__(self, factory: DicomServerFactory, storage: StorageSCP,
                 clock: IReactorTime, grace: float) -> None:
        self.factory = factory
        self.storage = storage
        self.clock = clock
        self.grace = grace

    def stopService(self) -> "defer.Deferred[None]":
        super().stopService()
        return defer.Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        factory = self.factory
        if factory.connections:
            log.info("stopping: {n} association(s) open, waiting up to {grace:g} s",
                     n=len(factory.connections), grace=self.grace)
            closed = factory.all_closed()
            closed.addTimeout(self.grace, self.clock)
            try:
                await closed
            except defer.TimeoutError:
                remaining = list(factory.connections)
                log.warn("stopping: {n} association(s) still open after [server] "
                         "stop_grace; aborting them", n=len(remaining))
                for protocol in remaining:
                    cast(DicomProtocol, protocol).abort_for_stop()
                await factory.all_closed()
        await self.storage.quiet()
