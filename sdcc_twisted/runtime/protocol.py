"""The acceptor: one TCP connection carrying one association we accept.

:class:`DicomProtocol` is the :class:`~.shell.AssociationShell` in the
acceptor role: its request goes through :class:`~.admission.Admission`, its
DIMSE requests through a :class:`~.dispatch.Dispatcher` to the services of the
factory's table, and its release waits until what it stored is indexed.
:class:`DicomServerFactory` holds what the connections of a listener share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory

from sdcc_twisted.config import MoveDestination, ServerSettings
from sdcc_twisted.core.association import Association
from sdcc_twisted.core.conformance import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_REASON_TEXT,
    TRANSFER_SYNTAXES,
    RejectReason,
    sop_class_name,
)
from sdcc_twisted.core.events import (
    Aborted,
    AssociationRejected,
    AssociationRequested,
    CommandReceived,
    DataFragment,
    ReleaseRequested,
)
from sdcc_twisted.core.negotiation import Accepted, reject_pdu
from sdcc_twisted.logs import get_logger
from sdcc_twisted.monitor import Monitor
from sdcc_twisted.runtime.admission import (
    REFUSED_GRACE,
    Admission,
    Admitted,
    Answer,
    RefusalLog,
    Refused,
)
from sdcc_twisted.runtime.client import open_store_association
from sdcc_twisted.runtime.dispatch import Dispatcher
from sdcc_twisted.storage.serial import DiskWorkers
from sdcc_twisted.runtime.shell import AssociationShell, Handler
from sdcc_twisted.services.channel import DimseService, SubAssociation

log = get_logger("sdcc.association")


@dataclass(frozen=True)
class Timeouts:
    """ARTIM (PS3.8 9.1.5) and the idle-association timeout, in seconds."""

    artim: float = ServerSettings.artim_timeout
    idle: float = ServerSettings.idle_timeout


class DicomProtocol(AssociationShell):
    """One TCP connection carrying one DICOM association (acceptor side)."""

    factory: "DicomServerFactory"

    def __init__(self, factory: "DicomServerFactory", refusal: Refused | None = None) -> None:
        self.factory = factory
        self.dispatcher = Dispatcher(self, factory.services, factory.monitor)
        super().__init__(factory.clock, factory.timeouts.artim, factory.timeouts.idle,
                         factory.disk)
        self.calling_ae = ""
        self.called_ae = ""
        self._admitted: Admitted | None = None
        #: Over a cap at accept time: the answer to the request.
        self._refusal = refusal
        if refusal is not None:
            self.artim_timeout = REFUSED_GRACE
        self._released = False
        self._release_waiting = False
        self._ending: str | None = None

    def new_association(self) -> Association:
        """An acceptor's core, limited to the factory's PDU and command sizes."""
        return Association(self.factory.admission.policy.max_pdu_length,
                           max_command_length=self.factory.max_command_length)

    def handlers(self) -> dict[type, Handler]:
        """The acceptor's handler per core event."""
        return {DataFragment: self.dispatcher.on_fragment,
                AssociationRequested: self._on_request, AssociationRejected: self._rejected,
                ReleaseRequested: self._on_release, Aborted: self._on_aborted}

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the peer, counted for the operations surface."""
        self.factory.monitor.received(self, len(data))
        super().dataReceived(data)

    def on_command(self, event: CommandReceived) -> None:
        """A DIMSE request: the dispatcher's."""
        self.dispatcher.on_command(event)

    def working(self) -> bool:
        """Operations of this association still run."""
        return self.dispatcher.pending > 0

    def _end(self, how: str) -> None:
        """The first cause of the association's end is the one logged."""
        self._ending = self._ending or how

    # -- establishment (PS3.8 9.2, AE-6) -----------------------------------------------
    def _on_request(self, event: AssociationRequested) -> None:
        if self.assoc is None or self.assoc.state != "Sta3":
            return  # a later PDU of the same read already ended it
        rq = event.request
        self.calling_ae, self.called_ae = rq.calling_ae, rq.called_ae
        if self._refusal is not None:
            self._admission_answer(self._refusal)
            return
        d = self.factory.admission.admit(self, rq, self.peer_host)
        d.addCallback(self._admission_answer)
        d.addErrback(self.internal_error)

    def _admission_answer(self, answer: Answer) -> None:
        if self.closed or self.assoc is None or self.assoc.state != "Sta3":
            if isinstance(answer, Admitted):
                self.factory.admission.release(self, self.calling_ae, answer.token)
            return
        if not isinstance(answer, Admitted):
            reason = answer.reason
            self._end(f"rejected {reason.result}/{reason.source}/{reason.reason}")
            log.warn("association rejected peer={peer} calling_ae={calling} called_ae={called} "
                     "result/source/reason={r}/{s}/{d} ({text}){limit}",
                     peer=self.peer, calling=self.calling_ae, called=self.called_ae,
                     r=reason.result, s=reason.source, d=reason.reason, text=reason.text,
                     limit=f" limit {answer.limit}" if answer.limit else "")
            self.factory.monitor.association_rejected(reason, answer.limit or "")
            self.guard(self.assoc.reject, reject_pdu(reason))
            return
        self._admitted = answer
        decision = answer.decision
        self.guard(self.assoc.accept, decision)
        self.factory.monitor.association_accepted(self, self.peer, self.calling_ae)
        self.idle.start()
        contexts = sorted({
            f"{sop_class_name(c.abstract_syntax)}/{TRANSFER_SYNTAXES.get(c.transfer_syntax, c.transfer_syntax)}"
            for c in decision.contexts.values()})
        log.info("association accepted peer={peer} calling_ae={calling} called_ae={called} "
                 "peer_max_pdu={peer_max} accepted_contexts={accepted} "
                 "refused_contexts={refused} [{contexts}]",
                 peer=self.peer, calling=self.calling_ae, called=self.called_ae,
                 peer_max=decision.peer_max_pdu_length, accepted=len(decision.contexts),
                 refused=len(decision.ac.presentation_contexts) - len(decision.contexts),
                 contexts="; ".join(contexts))

    def _rejected(self, event: AssociationRejected) -> None:
        """AE-6 refused the request below the policy (e.g. protocol version)."""
        rj = event.reject
        self._end(f"rejected {rj.result}/{rj.source}/{rj.reason}")
        self.factory.monitor.association_rejected(
            RejectReason(rj.result, rj.source, rj.reason, ""))
        log.warn("association rejected by the upper layer peer={peer} "
                 "result/source/reason={r}/{s}/{d}", peer=self.peer,
                 r=rj.result, s=rj.source, d=rj.reason)

    # -- what the dispatcher's channel needs ------------------------------------------------
    @property
    def accepted(self) -> Accepted | None:
        """What was accepted (negotiation), once the association is."""
        return self._admitted.decision if self._admitted else None

    def _abort(self, why: str, end: str, reason: int = ABORT_REASON_NOT_SPECIFIED) -> None:
        """Log ``why``, keep ``end`` as the association's outcome, and send
        an A-ABORT (PS3.8 7.3.1, source 2) with ``reason``."""
        log.warn("aborting the association from {peer} calling_ae={calling}: {why}",
                 peer=self.peer, calling=self.calling_ae or "-", why=why)
        self._end(end)
        if self.assoc is not None and not self.closed and self.assoc.state != "Sta1":
            self.guard(self.assoc.abort, reason, why)

    def abort_for_stop(self) -> None:
        """The server stops and the grace period is over: A-ABORT and close."""
        if not self.closed:
            self._abort("the server stops", "aborted (server stopping)")
            self.close()

    def protocol_abort(self, detail: str) -> None:
        """The peer broke the protocol above the PDU layer: A-ABORT."""
        self._abort(detail, "aborted (protocol error)", ABORT_INVALID_PDU_PARAMETER_VALUE)

    def slot_lost(self, calling_ae: str) -> None:
        """Another node holds this calling AE's slot (taken while Redis did
        not answer): one of the two associations must end, and it is ours."""
        self._abort(f"the per-AE lock of {calling_ae} is held by another node",
                    "aborted (per-AE lock held by another node)")

    def idle_expired(self, idle_for: float) -> None:
        """Abort an association that stayed silent for the idle timeout."""
        self._abort(f"idle for {idle_for:.0f}s", "aborted (idle timeout)")

    def internal_error(self, failure: Any) -> None:
        """Our own bug: logged, A-ABORT, closed (see the shell)."""
        self._end("aborted (internal error)")
        super().internal_error(failure)

    # -- release and abort ---------------------------------------------------------------------
    def _on_release(self, _: ReleaseRequested) -> None:
        self.idle.cancel()
        self._released = True
        self._release_waiting = True
        self.operations_done()

    def operations_done(self) -> None:
        """Answer a waiting release once no operation runs and what this
        association stored is in the index (or journaled): after the
        A-RELEASE-RP, a query finds it."""
        if not self._release_waiting or self.dispatcher.pending:
            return
        self._release_waiting = False
        d = self.dispatcher.settled()
        d.addCallback(lambda _: self._release_now())
        d.addErrback(self.internal_error)

    def _release_now(self) -> None:
        assoc = self.assoc
        if assoc is not None and not self.closed and assoc.state in ("Sta8", "Sta9", "Sta12"):
            self.guard(assoc.release_response)

    def _on_aborted(self, event: Aborted) -> None:
        self.idle.cancel()
        if event.by_peer:
            self._end("aborted by peer")
        elif event.source is not None:
            self._end(f"aborted (A-ABORT sent: "
                      f"{ABORT_REASON_TEXT.get(event.reason, event.reason)})")
        log.warn("association from {peer} calling_ae={calling} ended abnormally: {detail}",
                 peer=self.peer, calling=self.calling_ae or "-", detail=event.detail)

    def lost(self) -> None:
        """Free the slot, stop the operations, log the association's line."""
        if self.dispatcher.abort() and self._admitted is not None:
            self._end("aborted")
        admission = self.factory.admission
        admitted, self._admitted = self._admitted, None
        admission.release(self, self.calling_ae, admitted.token if admitted else None)
        admission.connection_lost(self)
        self.factory.forget(self)
        outcome = self._ending or ("released" if self._released else
                                   "aborted (connection closed)" if admitted
                                   else "closed before association")
        self.factory.monitor.association_closed(self, outcome)
        if self.calling_ae:
            log.info("association peer={peer} calling_ae={calling} called_ae={called} "
                     "outcome={outcome} stored={stored} failed={failed} "
                     "duration={duration:.3f}s",
                     peer=self.peer, calling=self.calling_ae, called=self.called_ae,
                     outcome=outcome, stored=self.dispatcher.stored,
                     failed=self.dispatcher.failed,
                     duration=self.clock.seconds() - self.started)


class DicomServerFactory(Factory[DicomProtocol]):
    """Builds a :class:`DicomProtocol` per connection and holds what they share.

    Args:
        admission: negotiation, limits and the per-AE lock.
        services: the DIMSE services by Command Field (``dispatch.service_table``).
        clock: an ``IReactorTime`` for ARTIM and the idle timer; with
            ``reactor`` (an ``IReactorTCP``/``IReactorSSL``) C-MOVE opens its
            sub-associations.
        timeouts: ARTIM and idle timeouts.
        max_command_length: the largest command set we buffer.
        monitor: where associations and operations are counted.
        disk: the bounded worker threads every association's file work
            runs on (:class:`ThreadWorkers` in production; without it the
            work runs inline, for tests driven by ``task.Clock``).
    """

    noisy = False

    def __init__(self, admission: Admission, services: Mapping[int, DimseService],
                 clock: IReactorTime, timeouts: Timeouts = Timeouts(),
                 max_command_length: int = ServerSettings.max_command_length,
                 reactor: Any = None, monitor: Monitor | None = None,
                 disk: DiskWorkers | None = None) -> None:
        self.admission = admission
        self.disk = disk
        self.services = services
        self.clock = clock
        self.reactor = reactor if reactor is not None else clock
        self.timeouts = timeouts
        self.max_command_length = max_command_length
        self.monitor = monitor if monitor is not None else Monitor(clock)
        self._all_closed: list[defer.Deferred[None]] = []
        self.refusals = RefusalLog(clock)

    def startFactory(self) -> None:
        """The listener is up."""
        self.monitor.set_listening(True)

    def stopFactory(self) -> None:
        """The listener stopped."""
        self.monitor.set_listening(False)

    @property
    def connections(self) -> dict[object, str | None]:
        """The open connections (and their peer address)."""
        return self.admission.connections

    def forget(self, protocol: DicomProtocol) -> None:
        """A connection closed (after the admission forgot it)."""
        if not self.connections:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def all_closed(self) -> "defer.Deferred[None]":
        """Fires once no connection is open (at once if none is)."""
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._all_closed.append(d)
        return d

    def buildProtocol(self, addr: Any) -> DicomProtocol | None:
        """Admission at accept time: a protocol for a connection within the
        caps, or for one over a cap that may wait :data:`REFUSED_GRACE` for
        its request (answered 2/3/2); ``None`` (closed at once, never
        counted) when enough refused ones wait already (:data:`REFUSED_WAITING`)."""
        host = getattr(addr, "host", None)
        admission = self.admission
        refusal = admission.refusal(host)
        if refusal is not None:
            self.monitor.connection_refused(refusal.limit)
            self.refusals.refused(refusal.limit)
            if not admission.may_wait():
                return None
        protocol = DicomProtocol(self, refusal)
        admission.connection_made(protocol, host, refusal)
        return protocol

    def open_sub_association(self, destination: MoveDestination,
                             contexts: list[tuple[str, str]]) -> "defer.Deferred[SubAssociation]":
        """C-MOVE: an association from our AE title to ``destination``,
        each step bounded by ARTIM (PS3.4 C.4.2.2.4)."""
        return defer.Deferred.fromCoroutine(open_store_association(
            self.reactor, destination, self.admission.policy.ae_title, contexts,
            self.timeouts.artim, self.disk))


__all__ = ["DicomProtocol", "DicomServerFactory", "Timeouts"]
