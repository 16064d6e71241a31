"""The Twisted adapter: bytes between the transport and the sans-I/O core.

:class:`DicomProtocol` feeds received bytes to an
:class:`~sdcc_twisted.core.association.Association`, writes what it has to send
(one ``transport.write`` per batch, TCP_NODELAY on), runs ARTIM and the idle
timer on the factory's injected clock, and hands DIMSE requests to the
service classes of :mod:`sdcc_twisted.services.scp`.  An exception from our own code
becomes an A-ABORT and a log line; the server keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from sdcc_twisted.core.association import Association
from sdcc_twisted.config import DEFAULT_ARTIM_TIMEOUT, DEFAULT_IDLE_TIMEOUT
from sdcc_twisted.core.conformance import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_REASON_TEXT,
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_FIND_RQ,
    C_GET_RQ,
    C_MOVE_RQ,
    C_STORE_RQ,
    C_STORE_RSP,
    COMMAND_NAMES,
    QUERY_RETRIEVE_MODELS,
    REJECT_AE_BUSY,
    REJECT_TOO_MANY,
    STATUS_PROCESSING_FAILURE,
    STATUS_UNRECOGNIZED_OPERATION,
    RejectReason,
    TRANSFER_SYNTAXES,
    sop_class_name,
)
from sdcc_twisted.core.dimse import (
    COMMAND_DATA_SET_TYPE,
    MESSAGE_ID_BEING_RESPONDED_TO,
    STATUS,
    Command,
    response,
    store_request,
)
from sdcc_twisted.core.events import (
    Aborted,
    AssociationRejected,
    AssociationRequested,
    CloseTransport,
    CommandReceived,
    DataFragment,
    Event,
    ReleaseRequested,
    StartARTIM,
    StopARTIM,
)
from sdcc_twisted.storage.locks import IAssociationLock
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.negotiation import AcceptorPolicy, Accepted, Rejected, negotiate, reject_pdu
from sdcc_twisted.services.scp import Outcome, Reception, StorageSCP, VerificationSCP, describe_missing
from sdcc_twisted.runtime.sending import MessageSender

log = get_logger("sdcc.association")

#: Bytes taken off the socket per read: several PDUs per reactor turn
#: (Twisted's default is 64 KiB).
READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class Timeouts:
    """ARTIM (PS3.8 9.1.5) and the idle-association timeout, in seconds."""

    artim: float = DEFAULT_ARTIM_TIMEOUT
    idle: float = DEFAULT_IDLE_TIMEOUT


class DicomProtocol(Protocol):
    """One TCP connection carrying one DICOM association (acceptor side)."""

    factory: "DicomServerFactory"

    def __init__(self) -> None:
        self.assoc: Association | None = None
        self._artim: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._force: IDelayedCall | None = None
        self._last_activity = 0.0
        self._started = 0.0
        self._peer = "?"
        self._peer_host: str | None = None
        self._lock_token: object | None = None
        self._calling_ae = ""
        self._called_ae = ""
        self._counted = False
        self._reception: Any = None
        self._reception_context = 0
        self._operations: dict[int, Any] = {}
        self._store_responses: dict[int, defer.Deferred[int]] = {}
        self._next_message_id = 1
        self._sender: MessageSender | None = None
        self._accepted: Accepted | None = None
        self._indexing: list[defer.Deferred[None]] = []
        self._pending = 0
        self._release_waiting = False
        self._outcome = "closed before association"
        self._stored = 0
        self._failed = 0
        self._closed = False

    # -- Twisted callbacks ----------------------------------------------------
    def connectionMade(self) -> None:
        """Evt5: the transport is open; start ARTIM for the A-ASSOCIATE-RQ."""
        factory = self.factory
        self._started = factory.clock.seconds()
        peer = self.transport.getPeer()
        self._peer_host = getattr(peer, "host", None)
        self._peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        try:
            self.transport.setTcpNoDelay(True)  # TLS wrappers pass it on
        except (AttributeError, NotImplementedError, OSError):
            pass
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE
        self.assoc = Association(factory.policy.max_pdu_length,
                                 max_command_length=factory.max_command_length)
        factory.connections.add(self)
        self._sender = MessageSender(self.assoc, self.transport, self._handle,
                                     factory.clock, factory.timeouts.idle)
        self._guard(self.assoc.connection_made)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the peer: feed the core and act on what it says."""
        self._last_activity = self.factory.clock.seconds()
        assoc = self.assoc
        if assoc is None:
            return
        self._guard(assoc.receive_data, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Evt17: however the transport closed, free everything it held."""
        if self._closed:
            return
        self._closed = True
        assoc = self.assoc
        if assoc is not None and assoc.state not in ("Sta1",):
            try:
                self._handle(assoc.connection_lost())
            except Exception:  # noqa: BLE001
                log.failure("error while closing the association from {peer}", peer=self._peer)
        self._cancel_artim()
        self._cancel_idle()
        if self._force is not None and self._force.active():
            self._force.cancel()
        self._force = None
        if self._reception is not None:
            self._reception.abort()
            self._reception = None
            if self._outcome in ("established", "released"):
                self._outcome = "aborted"
        for operation in list(self._operations.values()):
            operation.abort()
        waiting, self._store_responses = self._store_responses, {}
        for d in waiting.values():
            d.errback(ConnectionError("association closed before the C-STORE-RSP"))
        self._release_slot()
        self.factory.forget(self)
        if self._calling_ae:
            elapsed = self.factory.clock.seconds() - self._started
            log.info("association peer={peer} calling_ae={calling} called_ae={called} "
                     "outcome={outcome} stored={stored} failed={failed} "
                     "duration={duration:.3f}s",
                     peer=self._peer, calling=self._calling_ae, called=self._called_ae,
                     outcome=self._outcome, stored=self._stored, failed=self._failed,
                     duration=elapsed)

    # -- core effects ------------------------------------------------------------
    def _guard(self, fn: Any, *args: Any) -> None:
        """Run a core call and its effects; our own exceptions become an A-ABORT."""
        try:
            self._handle(fn(*args))
        except Exception:  # noqa: BLE001 - the boundary of our own code
            self._internal_error(Failure())

    def _internal_error(self, failure: Failure) -> None:
        log.failure("internal error on the association from {peer}; aborting it",
                    failure, peer=self._peer)
        self._outcome = "aborted (internal error)"
        assoc = self.assoc
        if assoc is not None:
            try:
                assoc.abort(ABORT_REASON_NOT_SPECIFIED, "internal error")
            except Exception:  # noqa: BLE001
                pass
            self._flush()
        self._close()

    def _close(self) -> None:
        """Close after what is queued has left; a peer that stops reading
        must not keep the connection (and its per-AE slot): after a grace
        period the connection is dropped."""
        if self._sender is not None and not self._closed:
            # The message sender stays registered as the transport's producer
            # for the whole connection; a TLS transport does not send its
            # close_notify and close while one is (tls.TLSMemoryBIOProtocol).
            self._sender.stopProducing()
            self.transport.unregisterProducer()
            self._sender = None
        self.transport.loseConnection()
        if not self._closed and self._force is None:
            self._force = self.factory.clock.callLater(self.factory.timeouts.artim,
                                                       self._force_close)

    def _force_close(self) -> None:
        self._force = None
        if not self._closed:
            self.transport.abortConnection()

    def _flush(self) -> None:
        assoc = self.assoc
        if assoc is not None:
            data = assoc.data_to_send()
            if data and not self._closed:
                transport = self.transport
                transport.write(data)
                _send_now(transport)

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            kind = type(event)
            if kind is DataFragment:
                self._on_fragment(event)
            elif kind is CommandReceived:
                self._on_command(event)
            elif kind is StartARTIM:
                self._start_artim()
            elif kind is StopARTIM:
                self._cancel_artim()
            elif kind is CloseTransport:
                self._flush()
                self._close()
            elif kind is AssociationRequested:
                self._on_request(event.request)
            elif kind is AssociationRejected:
                self._log_reject(event.reject)
            elif kind is ReleaseRequested:
                self._on_release()
            elif kind is Aborted:
                self._on_aborted(event)
        self._flush()

    # -- timers -------------------------------------------------------------
    def _start_artim(self) -> None:
        self._cancel_artim()
        self._artim = self.factory.clock.callLater(self.factory.timeouts.artim,
                                                   self._artim_expired)

    def _cancel_artim(self) -> None:
        if self._artim is not None and self._artim.active():
            self._artim.cancel()
        self._artim = None

    def _artim_expired(self) -> None:
        self._artim = None
        assoc = self.assoc
        if assoc is None:
            return
        if assoc.state == "Sta2":
            log.info("no A-ASSOCIATE-RQ from {peer} within {t}s (ARTIM); closing",
                     peer=self._peer, t=self.factory.timeouts.artim)
        self._guard(assoc.timer_expired)

    def _start_idle(self) -> None:
        self._idle = self.factory.clock.callLater(self.factory.timeouts.idle, self._idle_check)

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idle_check(self) -> None:
        """Abort an association that stayed silent for the idle timeout."""
        clock = self.factory.clock
        idle_for = clock.seconds() - self._last_activity
        limit = self.factory.timeouts.idle
        if self._pending:
            # Our own work is not the peer's silence: look again later.
            self._idle = clock.callLater(limit, self._idle_check)
            return
        if idle_for < limit:
            self._idle = clock.callLater(limit - idle_for, self._idle_check)
            return
        self._idle = None
        log.warn("association from {peer} calling_ae={calling} idle for {t:.0f}s; "
                 "sending A-ABORT", peer=self._peer, calling=self._calling_ae, t=idle_for)
        self._outcome = "aborted (idle timeout)"
        if self.assoc is not None:
            self._guard(self.assoc.abort, ABORT_REASON_NOT_SPECIFIED, "idle timeout")

    # -- association establishment -------------------------------------------
    def _on_request(self, rq: Any) -> None:
        if self.assoc is None or self.assoc.state != "Sta3":
            return  # a later PDU of the same read already ended it
        factory = self.factory
        self._calling_ae = rq.calling_ae
        self._called_ae = rq.called_ae
        decision = negotiate(rq, factory.policy, self._peer_host)
        if isinstance(decision, Rejected):
            self._reject(decision.reason)
            return
        if factory.association_count() >= factory.max_associations:
            self._reject(REJECT_TOO_MANY, f"max_associations={factory.max_associations}")
            return
        if factory.address_count(self._peer_host) > factory.max_connections_per_address:
            self._reject(REJECT_TOO_MANY, f"max_connections_per_address="
                         f"{factory.max_connections_per_address} from {self._peer_host}")
            return
        self._counted = True
        d = factory.lock.acquire(rq.calling_ae)
        d.addCallbacks(self._lock_answer, self._lock_failed, callbackArgs=(decision,))
        d.addErrback(self._internal_error)

    def _lock_answer(self, token: object | None, decision: Accepted) -> None:
        if self._closed or self.assoc is None or self.assoc.state != "Sta3":
            self._counted = False
            if token is not None:
                self.factory.lock.release(self._calling_ae, token)
            return
        if token is None:
            self._counted = False
            self._reject(REJECT_AE_BUSY)
            self._flush()
            return
        self._lock_token = token
        self._accepted = decision
        self._accept(decision)

    def _lock_failed(self, failure: Failure) -> None:
        log.failure("the per-AE association lock failed for {calling}; refusing "
                    "the association as temporarily congested", failure,
                    calling=self._calling_ae)
        self._counted = False
        if not self._closed and self.assoc is not None and self.assoc.state == "Sta3":
            self._reject(RejectReason(2, 3, 1, "temporary-congestion (lock unavailable)"))
            self._flush()

    def _accept(self, decision: Accepted) -> None:
        assoc = self.assoc
        assert assoc is not None
        self._guard(assoc.accept, decision)
        self._outcome = "established"
        self._last_activity = self.factory.clock.seconds()
        self._start_idle()
        contexts = sorted({
            f"{sop_class_name(c.abstract_syntax)}/{TRANSFER_SYNTAXES.get(c.transfer_syntax, c.transfer_syntax)}"
            for c in decision.contexts.values()})
        refused = len(decision.ac.presentation_contexts) - len(decision.contexts)
        log.info("association accepted peer={peer} calling_ae={calling} called_ae={called} "
                 "peer_max_pdu={peer_max} accepted_contexts={accepted} "
                 "refused_contexts={refused} [{contexts}]",
                 peer=self._peer, calling=self._calling_ae, called=self._called_ae,
                 peer_max=decision.peer_max_pdu_length, accepted=len(decision.contexts),
                 refused=refused, contexts="; ".join(contexts))

    def _reject(self, reason: RejectReason, limit: str = "") -> None:
        assoc = self.assoc
        assert assoc is not None
        self._outcome = f"rejected {reason.result}/{reason.source}/{reason.reason}"
        log.warn("association rejected peer={peer} calling_ae={calling} called_ae={called} "
                 "result/source/reason={r}/{s}/{d} ({text}){limit}",
                 peer=self._peer, calling=self._calling_ae, called=self._called_ae,
                 r=reason.result, s=reason.source, d=reason.reason, text=reason.text,
                 limit=f" limit {limit}" if limit else "")
        self._guard(assoc.reject, reject_pdu(reason))

    def _log_reject(self, rj: Any) -> None:
        """AE-6 refused the request below the policy (e.g. protocol version)."""
        self._outcome = f"rejected {rj.result}/{rj.source}/{rj.reason}"
        log.warn("association rejected by the upper layer peer={peer} "
                 "result/source/reason={r}/{s}/{d}", peer=self._peer,
                 r=rj.result, s=rj.source, d=rj.reason)

    def _release_slot(self) -> None:
        if self._lock_token is not None:
            token, self._lock_token = self._lock_token, None
            self.factory.lock.release(self._calling_ae, token)
        self._counted = False

    # -- DIMSE ----------------------------------------------------------------
    def _on_command(self, event: CommandReceived) -> None:
        assoc = self.assoc
        assert assoc is not None
        command: Command = event.command
        context = assoc.contexts.get(event.context_id)
        if context is None:
            self._protocol_abort(f"message on presentation context {event.context_id}, "
                                 "which was not accepted")
            return
        field = command.command_field
        missing = describe_missing(command)
        if missing and not command.has_data_set:
            self._respond(event.context_id, command, (field or 0) | 0x8000,
                          Outcome(STATUS_PROCESSING_FAILURE, missing))
            return
        if field == C_ECHO_RQ:
            outcome = self.factory.verification.echo(command)
            self._respond(event.context_id, command, self.factory.verification.response_field,
                          outcome)
        elif field == C_STORE_RQ and command.has_data_set:
            storage = self.factory.storage
            self._reception = storage.begin(command, context.abstract_syntax,
                                            context.transfer_syntax, self._calling_ae)
            self._reception_context = event.context_id
        elif (field in (C_FIND_RQ, C_MOVE_RQ, C_GET_RQ) and command.has_data_set
              and self.factory.query_retrieve is not None
              and context.abstract_syntax in QUERY_RETRIEVE_MODELS):
            operation = self.factory.query_retrieve.begin(
                command, event.context_id, context.abstract_syntax,
                context.transfer_syntax, self)
            self._reception = operation
            self._reception_context = event.context_id
            self._operations[command.message_id or 0] = operation
        elif field == C_CANCEL_RQ:
            operation = self._operations.get(command.get(MESSAGE_ID_BEING_RESPONDED_TO))
            if operation is not None:
                log.info("C-CANCEL from {calling} for message {mid}", calling=self._calling_ae,
                         mid=command.get(MESSAGE_ID_BEING_RESPONDED_TO))
                operation.cancel()
            return
        elif field == C_STORE_RSP:
            waiting = self._store_responses.pop(command.get(MESSAGE_ID_BEING_RESPONDED_TO), None)
            if waiting is not None:
                waiting.callback(command.get(STATUS, 0xFFFF))
            return
        else:
            name = COMMAND_NAMES.get(field or 0, f"0x{field or 0:04X}")
            log.warn("unsupported {name} from {calling}; answering 0x0211",
                     name=name, calling=self._calling_ae)
            self._respond(event.context_id, command, (field or 0) | 0x8000,
                          Outcome(STATUS_UNRECOGNIZED_OPERATION,
                                  f"{name} is not supported here"[:64]))

    def _on_fragment(self, event: DataFragment) -> None:
        reception = self._reception
        if reception is None:
            return  # the data set of a request already answered with a failure
        reception.write(event.data)
        if not event.last:
            return
        self._reception = None
        self._pending += 1
        d = reception.complete()
        d.addCallback(self._operation_done, reception, self._reception_context)
        d.addErrback(self._internal_error)

    def _operation_done(self, outcome: Outcome, reception: Any, context_id: int) -> None:
        self._pending -= 1
        self._last_activity = self.factory.clock.seconds()
        if isinstance(reception, Reception):
            if outcome.success:
                self._stored += 1
            else:
                self._failed += 1
            if not reception.indexed.called:
                self._indexing.append(reception.indexed)
        else:
            self._operations.pop(reception.command.message_id or 0, None)
        if self._closed:
            if outcome.success and isinstance(reception, Reception):
                log.info("{uid} stored, but the association closed before the "
                         "response could be sent", uid=reception.command.affected_sop_instance_uid)
            return
        self._respond(context_id, reception.command, reception.response_field, outcome)
        if self._release_waiting and not self._pending:
            self._release_waiting = False
            self._release_when_settled()

    def _respond(self, context_id: int, command: Command, field: int, outcome: Outcome) -> None:
        assoc = self.assoc
        if assoc is None or not assoc.established or self._closed:
            return
        elements = response(command, field, outcome.status, outcome.comment, outcome.elements)
        if outcome.data_set is not None:
            elements[COMMAND_DATA_SET_TYPE] = 0x0001
        self._guard(assoc.send_message, context_id, elements, outcome.data_set)

    # -- the Channel of Query/Retrieve operations (sdcc_twisted.services.qr.Channel) -------
    @property
    def calling_ae(self) -> str:
        """The calling AE title of this association."""
        return self._calling_ae

    def send_pending(self, context_id: int, command: Command, field: int,
                     outcome: Outcome) -> None:
        """Send an intermediate (pending) response of a C-FIND/MOVE/GET."""
        self._respond(context_id, command, field, outcome)

    async def room(self) -> None:
        """Wait until the peer reads what we sent (flow control)."""
        if self._sender is not None:
            await self._sender.room()

    def store_context(self, sop_class_uid: str, transfer_syntax: str) -> int | None:
        """A context for C-GET's C-STORE sub-operations: that class, that
        syntax, and the requestor accepted the SCP role (PS3.7 D.3.3.4)."""
        if (self.assoc is None or self._accepted is None
                or not self._accepted.requestor_is_scp(sop_class_uid)):
            return None
        for context_id, context in sorted(self.assoc.contexts.items()):
            if (context.abstract_syntax == sop_class_uid
                    and context.transfer_syntax == transfer_syntax):
                return context_id
        return None

    def send_store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str,
                   path: str) -> "defer.Deferred[int]":
        """C-GET: send one C-STORE-RQ on this association from ``path``."""
        if self._sender is None:
            return defer.fail(ConnectionError("association closed before the C-STORE-RQ"))
        message_id = self._next_message_id
        self._next_message_id = (message_id % 0xFFFF) + 1
        command = store_request(message_id, sop_class_uid, sop_instance_uid)
        answer: defer.Deferred[int] = defer.Deferred()
        self._store_responses[message_id] = answer
        sending = defer.Deferred.fromCoroutine(self._sender.send_file(context_id, command, path))

        def not_sent(failure: Failure) -> Failure:
            self._store_responses.pop(message_id, None)
            return failure

        def sent(_: Any) -> "defer.Deferred[int]":
            # The peer has the whole data set: now its answer is due.
            answer.addTimeout(self.factory.timeouts.artim, self.factory.clock)
            return answer
        sending.addErrback(not_sent)
        return sending.addCallback(sent)

    def abort_for_stop(self) -> None:
        """The server stops and the grace period is over: A-ABORT (PS3.8
        7.3.1, source 2, reason not specified) and close."""
        if self._closed:
            return
        log.warn("aborting the association from {peer} calling_ae={calling}: "
                 "the server stops", peer=self._peer, calling=self._calling_ae or "-")
        self._outcome = "aborted (server stopping)"
        if self.assoc is not None and self.assoc.state not in ("Sta1",):
            self._guard(self.assoc.abort, ABORT_REASON_NOT_SPECIFIED, "server stopping")
        self._close()

    def _protocol_abort(self, detail: str) -> None:
        log.warn("aborting the association from {peer} calling_ae={calling}: {detail}",
                 peer=self._peer, calling=self._calling_ae, detail=detail)
        self._outcome = "aborted (protocol error)"
        if self.assoc is not None:
            self._guard(self.assoc.abort, ABORT_INVALID_PDU_PARAMETER_VALUE, detail)

    # -- release and abort -----------------------------------------------------
    def _on_release(self) -> None:
        self._cancel_idle()
        if self._outcome == "established":
            self._outcome = "released"
        if self._pending:
            self._release_waiting = True
            return
        self._release_when_settled()

    def _release_when_settled(self) -> None:
        """Answer the release once what this association stored is in the
        index (or journaled): after the A-RELEASE-RP, a query finds it."""
        waiting = [d for d in self._indexing if not d.called]
        self._indexing = []
        d = defer.gatherResults(waiting, consumeErrors=True) if waiting else defer.succeed(None)
        d.addCallback(lambda _: self._release_now())
        d.addErrback(self._internal_error)

    def _release_now(self) -> None:
        assoc = self.assoc
        if assoc is not None and not self._closed and assoc.state in ("Sta8", "Sta9", "Sta12"):
            self._guard(assoc.release_response)

    def _on_aborted(self, event: Aborted) -> None:
        self._cancel_idle()
        if event.by_peer:
            self._outcome = "aborted by peer"
        elif event.source is None:
            self._outcome = ("aborted (connection closed)" if self._outcome == "established"
                             else self._outcome)
        else:
            self._outcome = (f"aborted (A-ABORT sent: "
                             f"{ABORT_REASON_TEXT.get(event.reason, event.reason)})")
        log.warn("association from {peer} calling_ae={calling} ended abnormally: {detail}",
                 peer=self._peer, calling=self._calling_ae or "-", detail=event.detail)


def _send_now(transport: Any) -> None:
    """Hand what was just written to the socket now, not on the reactor's
    next turn.

    The peer of a C-STORE waits for each response before it sends the next
    instance (DCMTK storescu, pynetdicom and most modalities work one message
    at a time), so the response's latency is the throughput: sending it at
    once, before the index write and whatever else this turn still does, took
    the small-file benchmark from 1.25 s to 1.05 s (bench/RESULTS.md).  Done
    through the transport's own ``doWrite`` (``IWriteDescriptor``), only on a
    plain TCP transport, not while it closes, and not while a producer (our
    streaming MessageSender) is paused, which doWrite would resume here;
    what the socket does not take, and any error, stay with the reactor,
    which goes on watching the socket as before.
    """
    # Only the TCP connection itself: a TLS wrapper forwards doWrite to the
    # connection under it, whose state (closing after close_notify) the
    # wrapper does not show.
    if not isinstance(transport, tcp.Connection) or transport.disconnecting:
        return
    if transport.producer is not None and (
            not transport.streamingProducer or transport.producerPaused):
        return    # doWrite would resume the producer from inside this call
    if transport.doWrite() is not None:
        # The connection is done for: let the reactor see it as it would have.
        transport.startWriting()


class DicomServerFactory(Factory):
    """Builds a :class:`DicomProtocol` per connection and holds what they share.

    Args:
        policy: the negotiation policy (AE title, contexts, Maximum Length).
        storage: the Storage SCP.
        lock: the one-association-per-calling-AE lock.
        clock: an ``IReactorTime`` for ARTIM and the idle timer.
        timeouts: ARTIM and idle timeouts.
        max_associations: the total cap (2/3/2 beyond it).
        max_command_length: the largest command set we buffer.
        max_connections_per_address: connections one peer address may hold;
            an association asked beyond it is rejected 2/3/2.
    """

    protocol = DicomProtocol
    noisy = False

    def __init__(self, policy: AcceptorPolicy, storage: StorageSCP,
                 lock: IAssociationLock, clock: IReactorTime,
                 timeouts: Timeouts = Timeouts(), max_associations: int = 64,
                 max_command_length: int = 64 * 1024,
                 max_connections_per_address: int = 32,
                 query_retrieve: Any = None) -> None:
        self.policy = policy
        self.storage = storage
        self.verification = VerificationSCP()
        self.query_retrieve = query_retrieve
        self.lock = lock
        self.clock = clock
        self.timeouts = timeouts
        self.max_associations = max_associations
        self.max_command_length = max_command_length
        self.max_connections_per_address = max_connections_per_address
        self.connections: set[DicomProtocol] = set()
        self._all_closed: list[defer.Deferred[None]] = []

    def forget(self, protocol: DicomProtocol) -> None:
        """A connection closed."""
        self.connections.discard(protocol)
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

    def association_count(self) -> int:
        """Associations that count against the cap (established or being set up)."""
        return sum(1 for p in self.connections if p._counted)

    def address_count(self, host: str | None) -> int:
        """Open connections from one peer address (this one included)."""
        return sum(1 for p in self.connections if p._peer_host == host)


__all__ = ["DicomProtocol", "DicomServerFactory", "Timeouts"]
