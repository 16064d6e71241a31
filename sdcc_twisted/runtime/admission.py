"""Admission: which association requests a listener accepts.

Negotiation (the sans-I/O policy of :mod:`sdcc_twisted.core.negotiation`),
then the limits (``max_associations``, ``max_connections_per_address``),
then one association per calling AE title (the lock).  A request that passes
holds a slot until :meth:`Admission.release`; a refused one never holds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from twisted.internet import defer
from twisted.python.failure import Failure

from sdcc_twisted.config import ServerSettings
from sdcc_twisted.core.conformance import (
    REJECT_AE_BUSY,
    REJECT_LOCK_UNAVAILABLE,
    REJECT_TOO_MANY,
    RejectReason,
)
from sdcc_twisted.core.negotiation import AcceptorPolicy, Accepted, Rejected, negotiate
from sdcc_twisted.core.pdu import AAssociateRQ
from sdcc_twisted.logs import get_logger
from sdcc_twisted.storage.locks import IAssociationLock

log = get_logger("sdcc.association")


@dataclass(frozen=True)
class Admitted:
    """Accept with ``decision``; ``token`` holds the calling AE's slot."""

    decision: Accepted
    token: object


@dataclass(frozen=True)
class Refused:
    """Reject with ``reason``; ``limit`` names the limit that was reached."""

    reason: RejectReason
    limit: str = ""


Answer = Union[Admitted, Refused]


class Admission:
    """Admission for one listener; connections register while they are open.

    Args:
        policy: the negotiation policy (AE title, contexts, Maximum Length).
        lock: one association per calling AE title.
        max_associations: the total cap (2/3/2 beyond it).
        max_connections_per_address: connections one peer address may hold;
            an association asked beyond it is rejected 2/3/2.
    """

    def __init__(self, policy: AcceptorPolicy, lock: IAssociationLock,
                 max_associations: int = ServerSettings.max_associations,
                 max_connections_per_address: int =
                 ServerSettings.max_connections_per_address) -> None:
        self.policy = policy
        self.lock = lock
        self.max_associations = max_associations
        self.max_connections_per_address = max_connections_per_address
        #: Open connections and their peer address.
        self.connections: dict[object, str | None] = {}
        self._counted: set[object] = set()

    def connection_made(self, connection: object, host: str | None) -> None:
        """A connection opened (it counts against its address from now)."""
        self.connections[connection] = host

    def connection_lost(self, connection: object) -> None:
        """A connection closed."""
        self.connections.pop(connection, None)
        self._counted.discard(connection)

    def association_count(self) -> int:
        """Associations that count against the cap (established or being set up)."""
        return len(self._counted)

    def address_count(self, host: str | None) -> int:
        """Open connections from one peer address."""
        return sum(1 for h in self.connections.values() if h == host)

    def admit(self, connection: object, rq: AAssociateRQ,
              host: str | None) -> "defer.Deferred[Answer]":
        """Decide on ``rq`` (PS3.8 9.2, AE-6): Admitted or Refused."""
        decision = negotiate(rq, self.policy, host)
        if isinstance(decision, Rejected):
            return defer.succeed(Refused(decision.reason))
        if self.association_count() >= self.max_associations:
            return defer.succeed(Refused(REJECT_TOO_MANY,
                                         f"max_associations={self.max_associations}"))
        if self.address_count(host) > self.max_connections_per_address:
            return defer.succeed(Refused(
                REJECT_TOO_MANY, f"max_connections_per_address="
                f"{self.max_connections_per_address} from {host}"))
        self._counted.add(connection)

        def answer(token: object | None) -> Answer:
            if token is None:
                self._counted.discard(connection)
                return Refused(REJECT_AE_BUSY)
            return Admitted(decision, token)

        def failed(failure: Failure) -> Answer:
            log.failure("the per-AE association lock failed for {calling}; refusing "
                        "the association as temporarily congested", failure,
                        calling=rq.calling_ae)
            self._counted.discard(connection)
            return Refused(REJECT_LOCK_UNAVAILABLE)
        return self.lock.acquire(rq.calling_ae).addCallbacks(answer, failed)

    def release(self, connection: object, calling_ae: str, token: object | None) -> None:
        """Give back what :meth:`admit` granted."""
        if token is not None:
            self.lock.release(calling_ae, token)
        self._counted.discard(connection)


__all__ = ["Admission", "Admitted", "Answer", "Refused"]
