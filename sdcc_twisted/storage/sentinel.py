"""Redis Sentinel: the index and the AE locks on a primary that fails over.

``[index] redis = redis+sentinel://host:port[,host:port...]/service?db=0``.
txredisapi's :class:`txredisapi.Sentinel` asks the Sentinels for the
primary's address before every connection attempt and drops connections to
a server that is no longer the primary, so after a failover the pool
reconnects to the new primary by itself.  Meanwhile index writes time out
and instances go to the pending journal, as with any Redis outage.

Replication is asynchronous, so a write the old primary answered may never
reach the new one.  :class:`ReplicatedIndex` therefore counts a record as
indexed (and lets its write-ahead log record be retired) only once a replica
confirmed it: after the write, one connection of its own runs ``INCR`` on a
barrier key and ``WAIT 1 timeout``.  Every write answered before that
``INCR`` precedes it in the replication stream, so one ``WAIT`` covers all
records written before it; concurrent records share one round.  While the
primary has no replica (after losing the only other server), records are
still written but stay in the write-ahead log and journal, and are recorded
again until a replica confirms them.

:class:`ReplicatedLock` holds the per-AE lock the same way, so that a
failover does not lose it; a primary without replicas cannot be failed over,
so there its lock counts at once.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from sdcc_twisted.config import SentinelTarget
from sdcc_twisted.core.index_keys import KeyLayout
from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.storage.index import IInstanceIndex, IndexUnavailable, NotReplicated, PoolHandler
from sdcc_twisted.storage.locks import IAssociationLock, LostCallback

__all__ = ["REPLICAS", "Replication", "ReplicatedIndex", "ReplicatedLock", "SentinelRedis"]

#: Replicas that must confirm a record before it counts as indexed.
REPLICAS: Final = 1
#: Seconds one question to the Sentinels for the primary may take.
DISCOVERY_TIMEOUT: Final = 0.5


class Replication(NamedTuple):
    """What one ``WAIT`` round found."""

    #: replicas connected to the primary (``ROLE``)
    replicas: int
    #: of them, how many acknowledged every write answered before the round
    acknowledged: int


class _PrimaryFactory(txredisapi.SentinelConnectionFactory):
    """txredisapi's Sentinel pool with a configurable reconnect back-off cap."""

    def __init__(self, *args: Any, max_retry_delay: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.maxDelay = max_retry_delay


class SentinelRedis:
    """A connection pool on the primary that the Sentinels name, followed
    across failovers; otherwise used like a txredisapi handler."""

    def __init__(self, target: SentinelTarget, clock: IReactorTime, *,
                 key_prefix: str = "sdcc:", poolsize: int = 4,
                 connect_timeout: float = 5.0, max_retry_delay: float = 1.0) -> None:
        self.target = target
        self._clock = clock
        self._sentinel = txredisapi.Sentinel(list(target.sentinels),
                                             connectTimeout=connect_timeout)
        # While the primary is down (sdown/odown) no Sentinel names one: each
        # discovery waits this long before the pool's next attempt.  Keep it
        # short, or reconnection lags the failover by as much.
        self._sentinel.discovery_timeout = DISCOVERY_TIMEOUT
        # txredisapi bounds each connection attempt to the primary by the
        # factory's maxDelay, the reconnect back-off cap
        options: dict[str, Any] = dict(
            factory_class=_PrimaryFactory, dbid=target.db or None, convertNumbers=False,
            password=target.password, max_retry_delay=max_retry_delay,
            # the pool's factory public, for RedisIndex's WATCHed transactions
            handler=PoolHandler)
        self._primary = self._sentinel.master_for(target.service, poolsize=poolsize,
                                                  **options)
        # WAIT covers the writes of its own connection: one of its own
        self._barrier = self._sentinel.master_for(target.service, poolsize=1, **options)
        self._barrier_key = KeyLayout(key_prefix).replication_barrier()
        self._next: list[defer.Deferred[Replication]] = []
        self._waiting = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._primary, name)

    def disconnect(self) -> defer.Deferred[Any]:
        """Close the pools and the Sentinel connections."""
        return defer.gatherResults(
            [defer.maybeDeferred(each.disconnect)
             for each in (self._primary, self._barrier, self._sentinel)],
            consumeErrors=True)

    def replicated(self, timeout: float) -> defer.Deferred[Replication]:
        """Fires with how many replicas the primary has, and how many of
        them hold every write answered so far (``WAIT`` for up to
        :data:`REPLICAS` of them, at most ``timeout`` seconds)."""
        d: defer.Deferred[Replication] = defer.Deferred()
        self._next.append(d)
        if not self._waiting:
            self._round(timeout)
        return d

    def _round(self, timeout: float) -> None:
        self._waiting = True
        waiters, self._next = self._next, []
        d = defer.Deferred.fromCoroutine(self._barrier_round(timeout))
        # WAIT answers by itself within its timeout; this bounds a missing
        # connection
        d.addTimeout(timeout + 1.0, self._clock)

        def finish(outcome: Any) -> None:
            self._waiting = False
            for waiter in waiters:
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(outcome)
            if self._next:
                self._round(timeout)

        d.addBoth(finish)

    async def _barrier_round(self, timeout: float) -> Replication:
        conn = self._barrier
        role = await conn.execute_command("ROLE")
        replicas = len(role[2]) if role and role[0] == "master" else 0
        wanted = min(REPLICAS, replicas)
        if not wanted:
            return Replication(replicas, 0)
        # both on the one connection, in order: WAIT then covers the INCR,
        # and so every write answered before it
        _, acknowledged = await defer.gatherResults(
            [conn.incr(self._barrier_key),
             conn.execute_command("WAIT", wanted, max(1, int(timeout * 1000)))],
            consumeErrors=True)
        return Replication(replicas, int(acknowledged))


@implementer(IInstanceIndex)
class ReplicatedIndex:
    """An :class:`IInstanceIndex` whose records count only once a replica
    holds them (see the module docstring); reads and removals pass through."""

    def __init__(self, index: IInstanceIndex, redis: Any, timeout: float) -> None:
        self._index = index
        self._redis = redis
        self.timeout = timeout
        # SOP Instance UID -> the path a record not yet confirmed moved it
        # from: reported (to be deleted) once a replica confirms the move
        self._moved_from: dict[str, str] = {}

    def record(self, rec: InstanceRecord) -> defer.Deferred[str | None]:
        """Index ``rec`` and wait for a replica; :class:`NotReplicated` if
        none confirms it within the timeout (it is then journaled and
        recorded again later: recording twice is harmless).  The previous
        path of a moved instance is reported once the move is confirmed,
        so its old file goes only then (a restart in between forgets it:
        the old file then stays, unindexed)."""
        d = self._index.record(rec)

        def confirm(previous: str | None) -> defer.Deferred[str | None]:
            try:
                barrier = self._redis.replicated(self.timeout)
            except txredisapi.ConnectionError as exc:
                raise IndexUnavailable(f"Redis is not connected ({exc})") from None

            def check(found: Replication) -> str | None:
                uid = rec.sop_instance_uid
                if previous and previous != rec.path:
                    self._moved_from[uid] = previous
                if found.acknowledged < REPLICAS:
                    raise NotReplicated(
                        f"no replica confirmed {uid} within "
                        f"{self.timeout:g} s (the primary has {found.replicas})")
                return self._moved_from.pop(uid, None) or previous

            def unavailable(failure: Failure) -> None:
                if isinstance(failure.value, defer.FirstError):
                    failure = failure.value.subFailure
                failure.trap(defer.TimeoutError, defer.CancelledError,
                             txredisapi.ConnectionError, txredisapi.RedisError)
                raise IndexUnavailable("no replica confirmed the index write: "
                                       + (failure.getErrorMessage()
                                          or getattr(failure.type, "__name__", "error")))

            return barrier.addCallbacks(check, unavailable)

        return d.addCallback(confirm)

    def get(self, sop_instance_uid: str) -> defer.Deferred[dict[str, str] | None]:
        """As the wrapped index's."""
        return self._index.get(sop_instance_uid)

    def remove(self, sop_instance_uid: str) -> defer.Deferred[None]:
        """As the wrapped index's."""
        return self._index.remove(sop_instance_uid)


@implementer(IAssociationLock)
class ReplicatedLock:
    """The Redis per-AE lock, held only once a replica has it, so that a
    failover cannot hand the new primary a fleet without it.

    No in-process fallback: while no primary answers, :meth:`acquire` fails
    and the association is refused as temporarily congested (PS3.8 7.1.1.10,
    2/3/1); associations already running go on.
    """

    def __init__(self, lock: IAssociationLock, redis: Any, timeout: float) -> None:
        self._lock = lock
        self._redis = redis
        self.timeout = timeout
        self.on_lost: LostCallback | None = None
        lock.on_lost = self._lost

    def _lost(self, calling_ae: str, token: object) -> None:
        """The inner lock found the slot held by another holder."""
        if self.on_lost is not None:
            self.on_lost(calling_ae, token)

    def acquire(self, calling_ae: str) -> defer.Deferred[object | None]:
        """The inner lock's token once a replica holds it; ``None`` if the
        AE is busy; :class:`IndexUnavailable` if no replica confirms."""
        d = self._lock.acquire(calling_ae)

        def confirm(token: object | None) -> Any:
            if token is None:
                return None

            def check(found: Replication) -> object:
                # a primary without replicas cannot be failed over: its lock
                # holds as it is
                if found.acknowledged < min(REPLICAS, found.replicas):
                    raise IndexUnavailable(f"no replica confirmed the lock of "
                                           f"{calling_ae!r} within {self.timeout:g} s")
                return token

            def give_back(failure: Failure) -> Failure:
                self._lock.release(calling_ae, token)
                return failure

            barrier = defer.maybeDeferred(self._redis.replicated, self.timeout)
            return barrier.addCallback(check).addErrback(give_back)

        return d.addCallback(confirm)

    def release(self, calling_ae: str, token: object) -> defer.Deferred[None]:
        """As the inner lock's."""
        return self._lock.release(calling_ae, token)

    def held(self) -> frozenset[str]:
        """As the inner lock's (a :class:`RedisAssociationLock`)."""
        held: frozenset[str] = self._lock.held()  # type: ignore[attr-defined]
        return held
