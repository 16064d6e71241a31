"""Admission: which connections and association requests a listener accepts.

At accept time a connection is admitted under ``max_connections`` (total) and
``max_connections_per_address``, each counting only connections it admitted;
one over a cap never counts: its request is answered 2/3/2 at once, and if
none comes within :data:`REFUSED_GRACE` seconds it is closed.  A request then
goes through negotiation (the sans-I/O policy of
:mod:`sdcc_twisted.core.negotiation`), ``max_associations`` and one
association per calling AE title (the lock).  A request that passes holds a
slot until :meth:`Admission.release`; a refused one never holds one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol, Union

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
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

#: Seconds a connection refused at accept time has to send its
#: A-ASSOCIATE-RQ (answered 2/3/2) and then to close; its ARTIM.
REFUSED_GRACE = 1.0
#: Refused connections that may wait out :data:`REFUSED_GRACE` at one time
#: (and no more than ``max_connections``); beyond that a refused connection
#: is closed at once (its descriptor is what a flood would exhaust).
REFUSED_WAITING = 256
#: The kernel's queue of connections not yet accepted (Twisted's default, 50,
#: drops a burst's SYNs, and each dropped one waits a second to retry).
LISTEN_BACKLOG = 1024
#: Endpoint types whose listener takes a ``backlog`` argument.
_BACKLOG_ENDPOINTS = ("tcp", "tcp6", "ssl", "unix")


def with_backlog(listen: str, backlog: int = LISTEN_BACKLOG) -> str:
    """The endpoint string ``listen`` with ``backlog=`` added where its
    type takes one and it sets none."""
    kind = listen.partition(":")[0]
    if kind not in _BACKLOG_ENDPOINTS or "backlog=" in listen:
        return listen
    return f"{listen}:backlog={backlog}"


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


class SlotHolder(Protocol):
    """A connection whose association holds a per-AE slot."""

    def slot_lost(self, calling_ae: str) -> None:
        """Its slot was found held by another holder: end the association."""


class RefusalLog:
    """One log line per cap per ``every`` seconds while connections are
    refused at accept time (a flood must not flood the log)."""

    def __init__(self, clock: IReactorTime, every: float = 10.0) -> None:
        self.clock = clock
        self.every = every
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()

    def refused(self, limit: str) -> None:
        """A connection was refused for ``limit`` (``key=value ...``)."""
        key = limit.partition("=")[0]
        self._since[key] += 1
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return
        self._last[key] = now
        log.warn("refusing connections at accept time: {limit} reached ({n} refused "
                 "since the last such line); if this is legitimate load, raise "
                 "[server] {key}", limit=limit, n=self._since.pop(key), key=key)


class Admission:
    """Admission for one listener; connections register while they are open.

    Args:
        policy: the negotiation policy (AE title, contexts, Maximum Length).
        lock: one association per calling AE title.
        max_associations: the total cap on associations (2/3/2 beyond it).
        max_connections_per_address: connections one peer address may hold;
            a connection beyond it is refused at accept time.
        max_connections: connections the listener holds in all; a connection
            beyond it is refused at accept time.
    """

    def __init__(self, policy: AcceptorPolicy, lock: IAssociationLock,
                 max_associations: int = ServerSettings.max_associations,
                 max_connections_per_address: int =
                 ServerSettings.max_connections_per_address,
                 max_connections: int = ServerSettings.max_connections) -> None:
        self.policy = policy
        self.lock = lock
        self.max_associations = max_associations
        self.max_connections_per_address = max_connections_per_address
        self.max_connections = max_connections
        #: Admitted open connections and their peer address.
        self.connections: dict[object, str | None] = {}
        #: Connections refused at accept time, until they close.
        self.refused: set[object] = set()
        self._per_address: Counter[str | None] = Counter()
        self._counted: set[object] = set()
        self._holders: dict[object, SlotHolder] = {}
        lock.on_lost = self.slot_lost

    def refusal(self, host: str | None) -> Refused | None:
        """Whether a new connection from ``host`` is over a cap (2/3/2)."""
        if len(self.connections) >= self.max_connections:
            return Refused(REJECT_TOO_MANY, f"max_connections={self.max_connections}")
        if self._per_address[host] >= self.max_connections_per_address:
            return Refused(REJECT_TOO_MANY, "max_connections_per_address="
                           f"{self.max_connections_per_address} from {host}")
        return None

    def may_wait(self) -> bool:
        """Whether one more refused connection may wait for its request."""
        return len(self.refused) < min(REFUSED_WAITING, self.max_connections)

    def connection_made(self, connection: object, host: str | None,
                        refusal: Refused | None) -> None:
        """A connection opened: admitted (it counts from now) unless
        ``refusal`` says otherwise (then it never counts)."""
        if refusal is not None:
            self.refused.add(connection)
        else:
            self.connections[connection] = host
            self._per_address[host] += 1

    def connection_lost(self, connection: object) -> None:
        """A connection closed."""
        self.refused.discard(connection)
        self._counted.discard(connection)
        if connection in self.connections:
            host = self.connections.pop(connection)
            self._per_address[host] -= 1
            if not self._per_address[host]:
                del self._per_address[host]

    def association_count(self) -> int:
        """Associations that count against the cap (established or being set up)."""
        return len(self._counted)

    def address_count(self, host: str | None) -> int:
        """Admitted open connections from one peer address."""
        return self._per_address[host]

    def admit(self, connection: SlotHolder, rq: AAssociateRQ,
              host: str | None) -> "defer.Deferred[Answer]":
        """Decide on ``rq`` (PS3.8 9.2, AE-6): Admitted or Refused."""
        decision = negotiate(rq, self.policy, host)
        if isinstance(decision, Rejected):
            return defer.succeed(Refused(decision.reason))
        if self.association_count() >= self.max_associations:
            return defer.succeed(Refused(REJECT_TOO_MANY,
                                         f"max_associations={self.max_associations}"))
        self._counted.add(connection)

        def answer(token: object | None) -> Answer:
            if token is None:
                self._counted.discard(connection)
                return Refused(REJECT_AE_BUSY)
            self._holders[token] = connection
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
            self._holders.pop(token, None)
            self.lock.release(calling_ae, token)
        self._counted.discard(connection)

    def slot_lost(self, calling_ae: str, token: object) -> None:
        """The lock found the slot of ``token`` held by another holder: the
        association holding it ends."""
        holder = self._holders.pop(token, None)
        if holder is not None:
            holder.slot_lost(calling_ae)


__all__ = ["Admission", "Admitted", "Answer", "LISTEN_BACKLOG", "REFUSED_GRACE",
           "REFUSED_WAITING", "RefusalLog", "Refused", "SlotHolder", "with_backlog"]
