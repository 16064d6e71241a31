"""The association-requestor side, for C-MOVE sub-associations (PS3.4 C.4.2).

:func:`open_store_association` connects to a move destination, negotiates
one presentation context per (SOP class, transfer syntax) to send, and
returns a :class:`StoreClient` whose :meth:`StoreClient.store` sends one
instance from its file and returns the C-STORE-RSP status.  The state
machine's requestor half does the Upper Layer work (PS3.8 9.2).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.protocol import Factory, Protocol

from sdcc_twisted.core.association import Association
from sdcc_twisted.config import DEFAULT_ARTIM_TIMEOUT
from sdcc_twisted.core.conformance import (
    APPLICATION_CONTEXT_NAME,
    C_STORE_RSP,
    DEFAULT_MAX_PDU_LENGTH,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PC_ACCEPTANCE,
)
from sdcc_twisted.core.dimse import (
    MESSAGE_ID_BEING_RESPONDED_TO,
    STATUS,
    store_request,
)
from sdcc_twisted.core.events import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    CloseTransport,
    CommandReceived,
    Event,
    Released,
    StartARTIM,
    StopARTIM,
)
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.pdu import AAssociateRQ, PresentationContextRQ, UserInformation
from sdcc_twisted.runtime.sending import MessageSender
from sdcc_twisted.services.channel import SubAssociationError

log = get_logger("sdcc.move")


@dataclass(frozen=True)
class Destination:
    """A C-MOVE destination from ``[move_destinations]``."""

    ae_title: str
    host: str
    port: int
    tls: bool = False


class StoreClient(Protocol):
    """One requestor association that sends C-STORE requests."""

    def __init__(self, rq: AAssociateRQ, clock: Any, timeout: float) -> None:
        self.rq = rq
        self.clock = clock
        self.timeout = timeout
        self.assoc = Association(DEFAULT_MAX_PDU_LENGTH, requestor=True)
        self.accepted: defer.Deferred[Any] = defer.Deferred()
        self._close_waiters: list[defer.Deferred[None]] = []
        self.contexts: dict[tuple[str, str], int] = {}
        self._responses: dict[int, defer.Deferred[int]] = {}
        self._next_id = 1
        self._artim: Any = None
        self._sender: MessageSender | None = None
        self._lost = False

    # -- Twisted ---------------------------------------------------------------
    def connectionMade(self) -> None:
        """Transport connected (Evt2): send the A-ASSOCIATE-RQ (AE-2)."""
        handle = getattr(self.transport, "getHandle", None)
        if handle is not None:
            try:
                handle().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        self.assoc.request_association(self.rq)
        self._sender = MessageSender(self.assoc, self.transport, self._handle,
                                     self.clock, self.timeout)
        self._handle(self.assoc.connection_made())
        self._artim = self.clock.callLater(self.timeout, self._no_answer)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the destination."""
        self._handle(self.assoc.receive_data(data))

    def connectionLost(self, reason: Any = None) -> None:
        """However it closed, fail what still waits."""
        self._lost = True
        self._cancel_artim()
        self.assoc.connection_lost()
        error = SubAssociationError("the move destination closed the connection")
        if not self.accepted.called:
            self.accepted.errback(error)
        for d in list(self._responses.values()):
            if not d.called:
                d.errback(error)
        self._responses.clear()
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    # -- events ----------------------------------------------------------------
    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, AssociationAccepted):
                self._cancel_artim()
                self._record_contexts(event.accept)
                self.accepted.callback(self)
            elif isinstance(event, AssociationRejected):
                self._cancel_artim()
                rj = event.reject
                self.accepted.errback(SubAssociationError(
                    f"rejected {rj.result}/{rj.source}/{rj.reason}"))
            elif isinstance(event, CommandReceived):
                command = event.command
                if command.command_field == C_STORE_RSP:
                    d = self._responses.pop(command.get(MESSAGE_ID_BEING_RESPONDED_TO), None)
                    if d is not None:
                        d.callback(command.get(STATUS, 0xFFFF))
            elif isinstance(event, (Aborted, Released)):
                pass
            elif isinstance(event, CloseTransport):
                self.transport.loseConnection()
            elif isinstance(event, StartARTIM):
                self._cancel_artim()
                self._artim = self.clock.callLater(self.timeout, self._artim_expired)
            elif isinstance(event, StopARTIM):
                self._cancel_artim()
        data = self.assoc.data_to_send()
        if data and not self._lost:
            self.transport.write(data)

    def _record_contexts(self, ac: Any) -> None:
        proposed = {pc.context_id: pc for pc in self.rq.presentation_contexts}
        for answer in ac.presentation_contexts:
            pc = proposed.get(answer.context_id)
            if pc is not None and answer.result == PC_ACCEPTANCE:
                self.contexts[(pc.abstract_syntax, answer.transfer_syntax)] = answer.context_id

    def _cancel_artim(self) -> None:
        if self._artim is not None and self._artim.active():
            self._artim.cancel()
        self._artim = None

    def _no_answer(self) -> None:
        self._artim = None
        log.warn("move destination did not answer the A-ASSOCIATE-RQ in {t}s", t=self.timeout)
        self.transport.abortConnection()

    def _artim_expired(self) -> None:
        self._artim = None
        self._handle(self.assoc.timer_expired())

    # -- service ----------------------------------------------------------------
    def context_for(self, sop_class_uid: str, transfer_syntax: str) -> int | None:
        """The accepted context for sending this class in this syntax."""
        return self.contexts.get((sop_class_uid, transfer_syntax))

    async def store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str,
                    path: str, originator_ae: str, originator_id: int) -> int:
        """Send one C-STORE-RQ from ``path``; return the response status."""
        assert self._sender is not None
        message_id = self._next_id
        self._next_id = (self._next_id % 0xFFFF) + 1
        command = store_request(message_id, sop_class_uid, sop_instance_uid,
                                originator_ae, originator_id)
        answer: defer.Deferred[int] = defer.Deferred()
        self._responses[message_id] = answer
        try:
            await self._sender.send_file(context_id, command, path)
        except BaseException:
            self._responses.pop(message_id, None)
            raise
        # The destination has the whole data set: now its answer is due.
        answer.addTimeout(self.timeout, self.clock)
        try:
            return await answer
        finally:
            self._responses.pop(message_id, None)

    async def release(self) -> None:
        """Release the association (AR-1) and wait for the close."""
        if self._lost:
            return
        closing: defer.Deferred[None] = defer.Deferred()
        self._close_waiters.append(closing)
        closing.addTimeout(self.timeout, self.clock)
        self._handle(self.assoc.request_release())
        try:
            await closing
        except defer.TimeoutError:
            self.transport.abortConnection()

    def abort(self) -> None:
        """Abort (AA-1) and drop the connection."""
        if not self._lost:
            self._handle(self.assoc.abort())
            self.transport.loseConnection()


async def open_store_association(reactor: Any, destination: Destination,
                                 calling_ae: str, contexts: list[tuple[str, str]],
                                 timeout: float = DEFAULT_ARTIM_TIMEOUT) -> StoreClient:
    """Connect to ``destination`` and negotiate one context per
    (SOP class, transfer syntax) in ``contexts`` (at most 128, PS3.8 9.3.2.2).

    Raises:
        SubAssociationError: no connection, rejected, or no answer in time.
    """
    rq = AAssociateRQ(
        called_ae=destination.ae_title,
        calling_ae=calling_ae,
        application_context=APPLICATION_CONTEXT_NAME,
        presentation_contexts=tuple(
            PresentationContextRQ(2 * n + 1, sop_class, (ts,))
            for n, (sop_class, ts) in enumerate(contexts[:128])),
        user_information=UserInformation(
            max_length=DEFAULT_MAX_PDU_LENGTH,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME),
    )
    if destination.tls:
        from twisted.internet import ssl
        endpoint: Any = endpoints.SSL4ClientEndpoint(
            reactor, destination.host, destination.port,
            ssl.optionsForClientTLS(destination.host), timeout=timeout)
    else:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, destination.host,
                                                destination.port, timeout=timeout)
    client = StoreClient(rq, reactor, timeout)
    try:
        await endpoint.connect(Factory.forProtocol(lambda: client))
    except Exception as exc:  # noqa: BLE001 - any connect failure
        raise SubAssociationError(f"cannot connect to {destination.host}:"
                                  f"{destination.port}: {exc}") from None
    await client.accepted
    return client
