"""Auto-forwarding: rules send received instances on to other AEs.

A rule queues a matching instance (a ticket in the disk queue,
:mod:`sdcc_twisted.storage.forward_queue`) before the store is answered; for
a per-study rule the ticket is held until the study is complete.  Held
tickets whose study is no longer waiting in Redis (its event was claimed by
a process that died before releasing them, or the arrival could not be
noted) are released by the periodic check once the study has been quiet.  One sender per destination drains its queue: one
association at a time (so a destination's own one-per-AE rule holds), the
instances streamed from their files as C-MOVE sends them (decoded only when
the destination refused the stored syntax), each ticket removed once its
C-STORE-RSP says Success or Warning.  A failure backs off (doubling from
``retry_first_delay`` up to ``retry_max_delay``); after ``max_attempts`` the
ticket is parked for ``sdcc-admin forward retry``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.python.failure import Failure

from sdcc_twisted.config import ForwardRule, ForwardSettings, MoveDestination
from sdcc_twisted.core.conformance import STATUS_SUBOPS_WARNING, STATUS_SUCCESS, contexts_with_decoded
from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.logs import get_logger
from sdcc_twisted.services.after_receipt import StudyComplete
from sdcc_twisted.services.channel import SubAssociation, SubAssociationError
from sdcc_twisted.services.delivery import SubOperationRefused, send_instance
from sdcc_twisted.services.transcode import Transcoder
from sdcc_twisted.storage.forward_queue import ForwardQueue, Ticket
from sdcc_twisted.storage.studies import StudyArrivals

log = get_logger("sdcc.forward")

#: open(destination, contexts) -> a SubAssociation (runtime.client in production).
OpenAssociation = Callable[[MoveDestination, list[tuple[str, str]]],
                           "defer.Deferred[SubAssociation]"]


class Forwarder(service.Service):
    """Queues instances by the rules and sends each destination's queue.

    Args:
        queue: the disk queue.
        rules: ``[forward_rules]``.
        destinations: ``[move_destinations]``, by AE title.
        settings: ``[forward]``.
        open_association: connects and negotiates, per destination.
        clock: the reactor's clock (injected).
        run_blocking: runs the queue's (blocking) calls off the reactor thread.
        arrivals: the study-complete state, for releasing orphaned held tickets.
        quiet_seconds: ``[studies] quiet_seconds``.
        transcoder: decodes for a destination that refused the stored syntax.
        monitor: gets queue depths and outcomes (or None).
    """

    def __init__(self, queue: ForwardQueue, rules: tuple[ForwardRule, ...],
                 destinations: dict[str, MoveDestination], settings: ForwardSettings,
                 open_association: OpenAssociation, clock: Any,
                 run_blocking: Callable[..., "defer.Deferred[Any]"],
                 arrivals: StudyArrivals | None = None, quiet_seconds: float = 0.0,
                 transcoder: Transcoder | None = None, monitor: Any = None) -> None:
        self.queue = queue
        self.rules = rules
        self.destinations = {r.destination: destinations[r.destination] for r in rules}
        self.settings = settings
        self.open_association = open_association
        self.clock = clock
        self.run_blocking = run_blocking
        self.arrivals = arrivals
        self.quiet_seconds = quiet_seconds
        self.transcoder = transcoder
        self.monitor = monitor
        self._busy: dict[str, defer.Deferred[None]] = {}
        self._checks: dict[str, defer.Deferred[None]] = {}
        self._loop: task.LoopingCall | None = None

    # -- service -----------------------------------------------------------------------
    def startService(self) -> None:
        """Check every destination's queue now and every ``check_interval``."""
        super().startService()
        self._loop = task.LoopingCall(self.kick_all)
        self._loop.clock = self.clock
        self._loop.start(self.settings.check_interval, now=True)

    def stopService(self) -> "defer.Deferred[Any]":
        """Stop checking; wait for the batches in flight (each bounded)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return defer.DeferredList([*self._busy.values(), *self._checks.values()])

    def kick_all(self) -> None:
        """Start a drain of every destination that is not draining, after
        releasing the orphaned held tickets of the per-study rules."""
        for destination in self.destinations:
            self.kick(destination)
        if self.arrivals is not None:
            for destination in sorted({r.destination for r in self.rules if r.per_study}):
                if destination not in self._checks:
                    d = defer.Deferred.fromCoroutine(
                        self._release_orphans(self.arrivals, destination))
                    self._checks[destination] = d
                    d.addBoth(self._checked, destination)

    def _checked(self, _: Any, destination: str) -> None:
        self._checks.pop(destination, None)

    async def _release_orphans(self, arrivals: StudyArrivals, destination: str) -> None:
        now = self.clock.seconds()
        try:
            held = await self.run_blocking(self.queue.held, destination)
            for study, newest in held:
                if now - newest < self.quiet_seconds or await arrivals.is_waiting(study):
                    continue
                released = await self.run_blocking(self.queue.release, destination, study)
                self._orphans_released(study, released, destination)
        except Exception as exc:  # noqa: BLE001 - the next check tries again
            log.warn("cannot check the held items for {dest}: {why}", dest=destination, why=exc)

    def _orphans_released(self, study: str, released: int, destination: str) -> None:
        if released:
            log.warn("study {study}: {n} held instance(s) for {dest} released "
                     "(its complete event was not acted on)", study=study, n=released,
                     dest=destination)
            self.kick(destination)

    def kick(self, destination: str) -> None:
        """Drain ``destination``'s queue unless a drain already runs."""
        if destination in self._busy or not self.running:
            return
        d = defer.Deferred.fromCoroutine(self._drain(destination))
        self._busy[destination] = d

        def done(result: Any) -> None:
            self._busy.pop(destination, None)
            if isinstance(result, Failure):
                log.failure("forwarding to {dest} failed", result, dest=destination)
        d.addBoth(done)

    # -- queueing ----------------------------------------------------------------------
    def queue_instance(self, record: InstanceRecord) -> "defer.Deferred[None]":
        """Queue ``record`` for each destination of a matching rule, durably
        (the store's answer waits for this); held for its study when the
        rule is per study."""
        modality = record.attributes.get("Modality", "")
        study = record.attributes.get("StudyInstanceUID", "")
        wanted = sorted({(rule.destination, study if rule.per_study else "")
                         for rule in self.rules
                         if rule.matches(record.calling_ae, modality, record.sop_class_uid)})
        if not wanted:
            return defer.succeed(None)
        d = self.run_blocking(self._add_all, wanted, record.path, record.sop_class_uid,
                              record.sop_instance_uid, record.transfer_syntax)

        def queued(_: Any) -> None:
            for destination, held in wanted:
                self._count(destination, "queued")
                if not held:
                    self.kick(destination)

        def not_queued(failure: Any) -> None:
            log.error("cannot queue {uid} for {dests}: {why}; it is stored but will not be "
                      "forwarded", uid=record.sop_instance_uid,
                      dests=",".join(dest for dest, _ in wanted), why=failure.getErrorMessage())
        return d.addCallbacks(queued, not_queued)

    def _add_all(self, wanted: list[tuple[str, str]], path: str, sop_class_uid: str,
                 sop_instance_uid: str, transfer_syntax: str) -> None:
        for destination, held in wanted:
            self.queue.add(destination, path, sop_class_uid, sop_instance_uid, transfer_syntax,
                           held)

    def instance_stored(self, record: InstanceRecord) -> None:
        """(Queued before the answer: see :meth:`queue_instance`.)"""

    def study_complete(self, event: StudyComplete) -> None:
        """Release the study's held tickets of the per-study rules."""
        for destination in sorted({r.destination for r in self.rules if r.per_study}):
            d = self.run_blocking(self.queue.release, destination, event.study_uid)
            d.addCallbacks(self._released, lambda f, dest=destination: log.warn(
                "cannot release study {study} for {dest}: {why}", study=event.study_uid,
                dest=dest, why=f.getErrorMessage()), callbackArgs=(event.study_uid, destination))

    def _released(self, count: int, study: str, destination: str) -> None:
        if count:
            log.info("study {study}: {n} instance(s) queued for {dest}", study=study, n=count,
                     dest=destination)
            self.kick(destination)

    # -- sending -----------------------------------------------------------------------
    async def _drain(self, destination: str) -> None:
        while self.running:
            tickets = await self.run_blocking(self.queue.due, destination, self.clock.seconds(),
                                              self.settings.batch)
            if not tickets:
                break
            if not await self._send_batch(destination, tickets):
                break
        await self._report_depth(destination)

    async def _send_batch(self, destination: str, tickets: list[Ticket]) -> bool:
        """Send one batch on one association; False when the destination
        could not be reached or was lost (the rest waits for its back-off)."""
        wanted = sorted({(t.sop_class_uid, t.transfer_syntax) for t in tickets})
        if self.transcoder is not None:
            wanted = contexts_with_decoded(wanted)
        target = self.destinations[destination]
        try:
            client = await self.open_association(target, wanted)
        except SubAssociationError as exc:
            log.warn("forwarding to {dest}: {why}; {n} instance(s) wait", dest=destination,
                     why=exc, n=len(tickets))
            for ticket in tickets:
                await self._failed(destination, ticket, f"cannot reach {destination}: {exc}")
            return False
        sent = 0
        try:
            for ticket in tickets:
                attributes = {"sop_class_uid": ticket.sop_class_uid,
                              "transfer_syntax": ticket.transfer_syntax,
                              "SOPInstanceUID": ticket.sop_instance_uid, "path": ticket.path}
                try:
                    status = await send_instance(client, attributes, destination,
                                                 self.transcoder)
                except SubOperationRefused as exc:
                    await self._failed(destination, ticket, exc.reason)
                    continue
                except (SubAssociationError, ConnectionError, defer.TimeoutError) as exc:
                    await self._failed(destination, ticket, f"association lost: {exc}")
                    return False
                except OSError as exc:
                    await self._failed(destination, ticket, f"cannot read the file: {exc}")
                    continue
                if status == STATUS_SUCCESS or status & 0xF000 == STATUS_SUBOPS_WARNING:
                    await self.run_blocking(self.queue.done, destination, ticket)
                    self._count(destination, "sent")
                    sent += 1
                else:
                    await self._failed(destination, ticket, f"C-STORE-RSP status 0x{status:04X}")
        finally:
            await client.release()
            if sent:
                log.info("forwarded {n} instance(s) to {dest}", n=sent, dest=destination)
        return True

    async def _failed(self, destination: str, ticket: Ticket, why: str) -> None:
        s = self.settings
        delay = min(s.retry_max_delay, s.retry_first_delay * 2 ** ticket.attempts)
        parked = await self.run_blocking(self.queue.failed, destination, ticket, why,
                                         self.clock.seconds() + delay, s.max_attempts)
        if parked:
            log.warn("forwarding {uid} to {dest} parked after {n} attempts: {why} "
                     "(sdcc-admin forward retry {dest})", uid=ticket.sop_instance_uid,
                     dest=destination, n=ticket.attempts + 1, why=why)
            self._count(destination, "parked")
        else:
            self._count(destination, "failed")

    def _count(self, destination: str, outcome: str) -> None:
        if self.monitor is not None:
            self.monitor.forward_outcome(destination, outcome)

    async def _report_depth(self, destination: str) -> None:
        if self.monitor is not None:
            queued, parked = await self.run_blocking(self.queue.depth, destination)
            self.monitor.forward_depth(destination, queued, parked)
