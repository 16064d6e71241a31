"""After an instance is stored: tell the listeners, and find complete studies.

A study counts as complete when none of its instances arrived for
``[studies] quiet_seconds``.  Arrivals are noted in Redis
(:class:`~sdcc_twisted.storage.studies.StudyArrivals`) behind the store's
answer; :class:`StudyWatch` claims the quiet studies on the injected clock
and hands each to the listeners once, with its count of new instances.
Nothing here can delay or fail a store: every listener call is guarded,
and a Redis failure only costs a log line (the next check tries again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.logs import get_logger
from sdcc_twisted.storage.studies import StudyArrivals

log = get_logger("sdcc.studies")

#: Studies taken per check (more wait for the next check).
CLAIM_BATCH = 100


@dataclass(frozen=True)
class StudyComplete:
    """A study that went quiet: its UID, the instances that arrived since it
    last counted as complete, and the folder its files are in."""

    study_uid: str
    new_instances: int
    folder: str


class ReceiptListener(Protocol):
    """What happens after receipt (hooks, forwarding)."""

    def instance_stored(self, record: InstanceRecord) -> None:
        """An instance is durable in its file (called on the reactor thread;
        must not block or raise)."""

    def study_complete(self, event: StudyComplete) -> None:
        """A study went quiet (once per burst)."""


class StudyWatch(service.Service):
    """Notes arrivals and claims quiet studies every ``interval`` seconds.

    Args:
        arrivals: the Redis side.
        clock: the reactor's clock (injected).
        quiet_seconds: how long a study must be quiet to be complete.
        study_folder: the folder of a study's files, by Study Instance UID.
        listeners: told of every stored instance and every complete study.
    """

    def __init__(self, arrivals: StudyArrivals, clock: IReactorTime, quiet_seconds: float,
                 study_folder: Any, listeners: list[ReceiptListener] | None = None) -> None:
        self.arrivals = arrivals
        self.clock = clock
        self.quiet_seconds = quiet_seconds
        self.study_folder = study_folder
        self.listeners: list[ReceiptListener] = list(listeners or [])
        self.interval = max(0.05, min(5.0, quiet_seconds / 4))
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        """Start checking for quiet studies."""
        super().startService()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        """Stop checking (what was noted stays in Redis for the next start)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def instance_stored(self, record: InstanceRecord) -> "defer.Deferred[None]":
        """Note the arrival in Redis and tell the listeners; the Deferred
        fires once the arrival is noted (or could not be: logged), and the
        store's answer never waits for it."""
        study = record.attributes.get("StudyInstanceUID", "")
        for listener in self.listeners:
            try:
                listener.instance_stored(record)
            except Exception:  # noqa: BLE001 - a listener never fails a store
                log.failure("after-receipt listener {name} failed", name=type(listener).__name__)
        if not study:
            return defer.succeed(None)
        noted = self.arrivals.note(study, self.clock.seconds())

        def not_noted(failure: Any) -> None:
            log.warn("cannot note an arrival in study {study}: {why}; its study-complete "
                     "event comes with its next arrival", study=study,
                     why=failure.getErrorMessage())
        return noted.addCallbacks(lambda _: None, not_noted)

    async def check(self) -> None:
        """Claim the studies quiet for ``quiet_seconds`` and hand each on."""
        try:
            claimed = await self.arrivals.claim(self.clock.seconds() - self.quiet_seconds,
                                                CLAIM_BATCH)
        except Exception as exc:  # noqa: BLE001 - the next check tries again
            log.warn("cannot check for complete studies: {why}", why=exc)
            return
        for study, count in claimed:
            event = StudyComplete(study, count, self.study_folder(study))
            log.info("study {study} complete: {n} new instance(s)", study=study, n=count)
            for listener in self.listeners:
                try:
                    listener.study_complete(event)
                except Exception:  # noqa: BLE001 - one listener, not the others
                    log.failure("study-complete listener {name} failed",
                                name=type(listener).__name__)
