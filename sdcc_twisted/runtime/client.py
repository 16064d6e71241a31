"""The association-requestor side, for C-MOVE sub-associations (PS3.4 C.4.2).

:func:`open_store_association` connects to a move destination, negotiates
one presentation context per (SOP class, transfer syntax) to send, and
returns a :class:`StoreClient` whose ``send_store`` sends one instance from
its file and returns the C-STORE-RSP status.  The state machine's requestor
half does the Upper Layer work (PS3.8 9.2); the Twisted side is the same
:class:`~.shell.AssociationShell` as the acceptor's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory

from sdcc_twisted.config import DEFAULT_ARTIM_TIMEOUT, MoveDestination
from sdcc_twisted.core.association import Association
from sdcc_twisted.core.conformance import (
    APPLICATION_CONTEXT_NAME,
    DEFAULT_MAX_PDU_LENGTH,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PC_ACCEPTANCE,
)
from sdcc_twisted.core.events import AssociationAccepted, AssociationRejected
from sdcc_twisted.core.pdu import AAssociateRQ, PresentationContextRQ, UserInformation
from sdcc_twisted.logs import get_logger
from sdcc_twisted.runtime.shell import AssociationShell, Handler
from sdcc_twisted.services.channel import SubAssociationError
from sdcc_twisted.storage.serial import DiskWorkers

log = get_logger("sdcc.move")


class StoreClient(AssociationShell):
    """One requestor association that sends C-STORE requests (a
    :class:`~sdcc_twisted.services.channel.SubAssociation`).

    Args:
        rq: the A-ASSOCIATE-RQ to send.
        clock: for every step's timeout.
        timeout: seconds the destination has for each step.
        disk: the worker threads that read the files it sends.
    """

    def __init__(self, rq: AAssociateRQ, clock: IReactorTime, timeout: float,
                 disk: DiskWorkers | None = None) -> None:
        super().__init__(clock, timeout, timeout, disk)
        self.rq = rq
        self.accepted: defer.Deferred[StoreClient] = defer.Deferred()
        self.contexts: dict[tuple[str, str], int] = {}
        self._close_waiters: list[defer.Deferred[None]] = []

    def new_association(self) -> Association:
        """A requestor's core with the A-ASSOCIATE-RQ on its way (AE-2)."""
        assoc = Association(DEFAULT_MAX_PDU_LENGTH, requestor=True)
        assoc.request_association(self.rq)
        return assoc

    def connectionMade(self) -> None:
        """Transport connected (Evt2): the request goes; its answer is due."""
        super().connectionMade()
        self.start_artim(self._no_answer)

    def handlers(self) -> dict[type, Handler]:
        """The requestor's handler per core event."""
        return {AssociationAccepted: self._on_accepted, AssociationRejected: self._on_rejected}

    def lost(self) -> None:
        """However it closed, fail what still waits."""
        if not self.accepted.called:
            self.accepted.errback(self.lost_error())
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    def lost_error(self) -> Exception:
        """The destination's close fails what waits for it."""
        return SubAssociationError("the move destination closed the connection")

    def _on_accepted(self, event: AssociationAccepted) -> None:
        self.cancel_artim()
        proposed = {pc.context_id: pc for pc in self.rq.presentation_contexts}
        for answer in event.accept.presentation_contexts:
            pc = proposed.get(answer.context_id)
            if pc is not None and answer.result == PC_ACCEPTANCE:
                self.contexts[(pc.abstract_syntax, answer.transfer_syntax)] = answer.context_id
        self.accepted.callback(self)

    def _on_rejected(self, event: AssociationRejected) -> None:
        self.cancel_artim()
        rj = event.reject
        self.accepted.errback(SubAssociationError(
            f"rejected {rj.result}/{rj.source}/{rj.reason}"))

    def _no_answer(self) -> None:
        log.warn("move destination did not answer the A-ASSOCIATE-RQ in {t}s",
                 t=self.artim_timeout)
        self.transport.abortConnection()

    # -- SubAssociation ---------------------------------------------------------------
    def store_context(self, sop_class_uid: str, transfer_syntax: str) -> int | None:
        """The accepted context for sending this class in this syntax."""
        return self.contexts.get((sop_class_uid, transfer_syntax))

    def release(self) -> "defer.Deferred[None]":
        """Release the association (AR-1); abort if the close does not come."""
        return defer.Deferred.fromCoroutine(self._release())

    async def _release(self) -> None:
        if self.closed or self.assoc is None:
            return
        closing: defer.Deferred[None] = defer.Deferred()
        self._close_waiters.append(closing)
        closing.addTimeout(self.artim_timeout, self.clock)
        self.guard(self.assoc.request_release)
        try:
            await closing
        except defer.TimeoutError:
            self.transport.abortConnection()

    def abort(self) -> None:
        """Abort (AA-1) and drop the connection."""
        if not self.closed and self.assoc is not None:
            self.guard(self.assoc.abort)
            self.close()


async def open_store_association(reactor: Any, destination: MoveDestination,
                                 calling_ae: str, contexts: list[tuple[str, str]],
                                 timeout: float = DEFAULT_ARTIM_TIMEOUT,
                                 disk: DiskWorkers | None = None) -> StoreClient:
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
    client = StoreClient(rq, reactor, timeout, disk)
    try:
        await endpoint.connect(Factory.forProtocol(lambda: client))
    except Exception as exc:  # noqa: BLE001 - any connect failure
        raise SubAssociationError(f"cannot connect to {destination.host}:"
                                  f"{destination.port}: {exc}") from None
    await client.accepted
    return client
