"""The instance index and the fleet-wide association lock, on Redis.

Key layout (``{p}`` = ``[index] key_prefix``, default ``sdcc:``; the mapping
itself lives in :mod:`sdcc_twisted.core.index_keys`, shared with ``sdcc-admin``)::

    {p}instance:{sop_uid}             hash  path, sop_class_uid, transfer_syntax,
                                            size, received_at, calling_ae,
                                            study_uid, series_uid, patient_id
                                            + IMAGE-level keywords
    {p}series:{series_uid}            hash  SERIES-level keywords + study_uid
    {p}study:{study_uid}              hash  STUDY-level keywords + patient_id
    {p}patient:{patient_id}           hash  PATIENT-level keywords
    {p}patients                       set   every patient id
    {p}patient_studies:{patient_id}   set   the patient's Study Instance UIDs
    {p}study_series:{study_uid}       set   the study's Series Instance UIDs
    {p}series_instances:{series_uid}  set   the series' SOP Instance UIDs
    {p}lock:ae:{ae_title}             str   association lock token (PX ttl)

An empty Patient ID (or Study/Series UID) is keyed as ``\\none``, and a value
starting with a backslash gets one more (:func:`~sdcc_twisted.core.index_keys.key_id`).

Every public operation is bounded in time: the Redis calls it makes share one
deadline (``timeout``, on the injected ``clock``), and running out of it, or
losing the connection, fails the operation with :class:`IndexUnavailable`.
With ``reconnect`` on, txredisapi never fails a command for a missing
connection, it waits; the deadline is what turns that into an error.

A record is one optimistic transaction on a connection taken out of the pool:
WATCH the instance hash, read it, WATCH and count the sets it may leave, then
MULTI, every write, EXEC.  A concurrent change makes EXEC fail and the record
is tried again after a short random back-off, until the deadline.  If the
deadline strikes while the connection is ours, its transport is aborted, so
no connection stays stuck in a transaction (the pool reconnects it).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.internet import defer, endpoints, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from sdcc_twisted.core.index_keys import (
    ATTACH_SCRIPT,
    Command,
    KeyLayout,
    Placement,
    attach_script_answers,
    attach_script_args,
    detach_probes,
    others_from_counts,
    plan_record,
    plan_remove,
    superseded_path,
)
from sdcc_twisted.storage.locks import IAssociationLock
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.records import InstanceRecord

T = TypeVar("T")

_log = get_logger("sdcc.index")

#: Most records indexed by one EVAL (see :meth:`RedisIndex.record`).
MAX_BATCH: Final = 64
#: Safety cap on optimistic retries; the operation's deadline comes first.
MAX_ATTEMPTS: Final = 200
#: First back-off (seconds) after a failed EXEC; doubles up to 32 times it,
#: with full jitter, so that writers moving out of one series do not livelock.
RETRY_BACKOFF: Final = 0.001


class IndexUnavailable(Exception):
    """Redis did not answer in time, or the connection failed."""


class NotReplicated(IndexUnavailable):
    """The primary holds the record, but no replica confirmed it yet
    (Sentinel): keep the record and write it again later."""


class IInstanceIndex(Interface):
    """Where each stored SOP instance is, by SOP Instance UID."""

    def record(rec: InstanceRecord) -> "defer.Deferred[str | None]":
        """Index ``rec``, replacing any older entry of its SOP Instance UID.

        Conditional on the sequence: an entry with a higher
        :attr:`InstanceRecord.sequence` is kept and ``rec`` is not written.

        Returns:
            A Deferred firing with the path of a file that is no longer
            indexed (the caller deletes it): the previous path when the
            instance was indexed under another one, or ``rec.path`` when a
            newer copy is indexed under another path; else ``None``.
            Failing with :class:`IndexUnavailable`.
        """

    def get(sop_instance_uid: str) -> "defer.Deferred[dict[str, str] | None]":
        """The instance's fields (all text), or ``None`` if not indexed."""

    def remove(sop_instance_uid: str) -> "defer.Deferred[None]":
        """Forget the instance; parents left empty go too."""


def _unavailable(failure: Any, what: str, timeout: float) -> Any:
    """Map a timeout or a Redis error to :class:`IndexUnavailable`."""
    if failure.check(defer.TimeoutError, defer.CancelledError):
        raise IndexUnavailable(
            f"Redis did not answer within {timeout:g} s ({what})") from None
    if failure.check(txredisapi.ConnectionError):
        raise IndexUnavailable(
            f"Redis connection failed ({what}): {failure.getErrorMessage()}"
        ) from None
    if failure.check(txredisapi.RedisError):
        raise IndexUnavailable(
            f"Redis error ({what}): {failure.getErrorMessage()}") from None
    return failure


class Bounded:
    """Runs each operation under one deadline, on an injected clock."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._clock = clock
        self.timeout = timeout

    def run(self, work: "Coroutine[Any, Any, T] | defer.Deferred[T]",
            what: str) -> "defer.Deferred[T]":
        """``work`` (a coroutine or a Deferred) under the deadline."""
        if isinstance(work, defer.Deferred):
            d = work
        else:
            d = defer.Deferred.fromCoroutine(work)
        d.addTimeout(self.timeout, self._clock)
        d.addErrback(_unavailable, what, self.timeout)
        return d


def _abandon(conn: Any) -> None:
    """Drop a connection we still own in an unknown transaction state.

    txredisapi clears ``pendingTransaction`` when it hands the connection
    back to the pool (after EXEC, a failed EXEC or UNWATCH).
    """
    transport = getattr(conn, "transport", None)
    if (transport is not None and getattr(conn, "connected", False)
            and getattr(conn, "pendingTransaction", True)):
        transport.abortConnection()


def _quiet(d: "defer.Deferred[Any]") -> "defer.Deferred[Any]":
    """Keep a Deferred whose failure is handled elsewhere out of the log."""
    d.addErrback(lambda _: None)
    return d


def _pass_on(result: Any, d: "defer.Deferred[Any]") -> None:
    """Fire ``d`` with ``result`` unless its caller gave up on it already."""
    if not d.called:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


def _check_replies(replies: Any) -> None:
    if not isinstance(replies, list):
        raise txredisapi.ResponseError(f"unexpected EXEC reply {replies!r}")
    for reply in replies:
        if isinstance(reply, Exception):
            raise txredisapi.ResponseError(str(reply))


@implementer(IInstanceIndex)
class RedisIndex:
    """The instance index in Redis, through a txredisapi connection pool.

    Args:
        redis: a txredisapi connection handler (see :func:`connect_redis`);
            made with ``convertNumbers=False`` so that values stay text.
        clock: the reactor's ``IReactorTime`` (``task.Clock`` in tests).
        key_prefix: prepended to every key.
        timeout: seconds allowed for each operation.
    """

    def __init__(self, redis: Any, clock: IReactorTime,
                 key_prefix: str = "sdcc:", timeout: float = 2.0) -> None:
        self._redis = redis
        self._clock = clock
        self._bounded = Bounded(clock, timeout)
        self.layout = KeyLayout(key_prefix)
        self._queue: list[tuple[InstanceRecord, defer.Deferred[str | None]]] = []
        self._busy = False

    @property
    def timeout(self) -> float:
        return self._bounded.timeout

    def record(self, rec: InstanceRecord) -> "defer.Deferred[str | None]":
        """Index ``rec`` (see :meth:`IInstanceIndex.record`).

        The usual case costs a share of one EVAL: while one batch is on its
        way to Redis, the records that come meanwhile wait and go together
        in the next (at most :data:`MAX_BATCH`), so that the round trip, the
        client's encoding and the reply parsing are paid per batch, not per
        instance, exactly when instances arrive faster than Redis answers.
        An instance that moves takes the transaction path.
        """
        d: defer.Deferred[str | None] = defer.Deferred()
        self._queue.append((rec, d))
        if not self._busy:
            self._send_batch()
        return self._bounded.run(d, f"record {rec.sop_instance_uid}")

    def _send_batch(self) -> None:
        """Send the waiting records (whose callers have not given up)."""
        queue = self._queue
        batch = [(rec, d) for rec, d in queue[:MAX_BATCH] if not d.called]
        del queue[:MAX_BATCH]
        if not batch:
            if queue:
                self._send_batch()
            return
        self._busy = True
        try:
            keys, args = attach_script_args(self.layout, [rec for rec, _ in batch])
            sent = defer.maybeDeferred(self._redis.eval, ATTACH_SCRIPT, keys, args)
        except Exception:  # noqa: BLE001 - the batch fails, the queue goes on
            sent = defer.fail()
        self._bounded.run(sent, f"record {len(batch)} instance(s)").addBoth(
            self._batch_done, batch)

    def _batch_done(self, reply: Any, batch: list[tuple[InstanceRecord, Any]]) -> None:
        """Give each record of a batch its answer, then send the next."""
        answers: list[tuple[str, str]] = []
        failure = reply if isinstance(reply, Failure) else None
        if failure is None:
            try:
                answers = attach_script_answers(reply)
                if len(answers) != len(batch):
                    raise ValueError(f"{len(answers)} answers for {len(batch)} records")
            except (TypeError, ValueError) as exc:
                failure = Failure(IndexUnavailable(
                    f"unexpected reply to the attach script ({exc})"))
        try:
            for k, (rec, d) in enumerate(batch):
                if d.called:
                    continue                  # its caller gave up (deadline)
                if failure is not None:
                    d.errback(failure)
                elif answers[k][0] == "done":
                    old_path = answers[k][1]
                    d.callback(old_path if old_path and old_path != rec.path else None)
                elif answers[k][0] == "stale":
                    d.callback(superseded_path(rec, answers[k][1]))
                else:
                    # bounded on its own: cancelling ``d`` does not reach it
                    move = self._bounded.run(self._move(rec), f"record {rec.sop_instance_uid}")
                    move.addBoth(_pass_on, d)
        finally:
            # records that callbacks above added wait for this: one batch in
            # flight at a time keeps the order of records per instance
            self._busy = False
            if self._queue:
                self._send_batch()

    def get(self, sop_instance_uid: str) -> "defer.Deferred[dict[str, str] | None]":
        """The instance hash, or ``None`` (see :meth:`IInstanceIndex.get`)."""
        return self._bounded.run(self._get(sop_instance_uid),
                                 f"get {sop_instance_uid}")

    def remove(self, sop_instance_uid: str) -> "defer.Deferred[None]":
        """Forget the instance (see :meth:`IInstanceIndex.remove`)."""
        return self._bounded.run(self._remove(sop_instance_uid),
                                 f"remove {sop_instance_uid}")

    async def _get(self, uid: str) -> dict[str, str] | None:
        fields = await self._redis.hgetall(self.layout.instance(uid))
        return dict(fields) if fields else None

    async def _take(self) -> Any:
        # txredisapi 1.6.0: a connection taken with get (not peek) is ours
        # until its transaction ends (EXEC, a failed EXEC or UNWATCH put it
        # back).  The handler's own watch()/multi() would leak it if the
        # caller gave up before the reply, hence the pool's factory
        # (:class:`PoolHandler`).
        return await self._redis.factory.getConnection(peek=False)

    async def _backoff(self, attempt: int) -> None:
        if attempt:
            delay = random.uniform(0, RETRY_BACKOFF * 2 ** min(attempt - 1, 5))
            await task.deferLater(self._clock, delay, lambda: None)

    async def _others(self, conn: Any,
                      probes: list[tuple[str, str]]) -> dict[str, int]:
        if not probes:
            return {}
        await conn.watch([key for key, _ in probes])
        replies = []
        for key, member in probes:
            replies.append(conn.scard(key))
            replies.append(conn.sismember(key, member))
        values = await defer.gatherResults(replies, consumeErrors=True)
        counts = list(zip(values[::2], values[1::2]))
        return others_from_counts(probes, counts)

    async def _exec(self, conn: Any, commands: list[Command]) -> None:
        await conn.multi()
        for cmd in commands:
            _quiet(conn.execute_command(*cmd))
        _check_replies(await conn.commit())

    async def _move(self, rec: InstanceRecord) -> str | None:
        """The instance changes patient, study or series: detach it from the
        old place and attach it to the new one in one WATCHed transaction."""
        key = self.layout.instance(rec.sop_instance_uid)
        new = Placement.of_record(rec)
        for attempt in range(MAX_ATTEMPTS):
            await self._backoff(attempt)
            conn = await self._take()
            try:
                await conn.watch([key])
                old_fields = await conn.hgetall(key)
                probes: list[tuple[str, str]] = []
                if old_fields:
                    probes = detach_probes(self.layout, rec.sop_instance_uid,
                                           Placement.of_fields(old_fields), new)
                others = await self._others(conn, probes)
                commands, previous = plan_record(self.layout, rec, old_fields,
                                                 others)
                if commands:
                    await self._exec(conn, commands)
                else:
                    await conn.unwatch()        # a newer copy is indexed
            except txredisapi.WatchError:
                continue
            except BaseException:
                _abandon(conn)
                raise
            return previous
        raise IndexUnavailable(
            f"record {rec.sop_instance_uid}: keys kept changing under "
            f"{MAX_ATTEMPTS} attempts")

    async def _remove(self, uid: str) -> None:
        key = self.layout.instance(uid)
        for attempt in range(MAX_ATTEMPTS):
            await self._backoff(attempt)
            conn = await self._take()
            try:
                await conn.watch([key])
                old_fields = await conn.hgetall(key)
                if not old_fields:
                    await conn.unwatch()
                    return None
                old = Placement.of_fields(old_fields)
                others = await self._others(
                    conn, detach_probes(self.layout, uid, old, None))
                await self._exec(conn, plan_remove(self.layout, uid,
                                                   old_fields, others))
            except txredisapi.WatchError:
                continue
            except BaseException:
                _abandon(conn)
                raise
            return None
        raise IndexUnavailable(
            f"remove {uid}: keys kept changing under {MAX_ATTEMPTS} attempts")


#: 1 renewed; 2 taken again (it expired, after a Sentinel failover or while
#: Redis did not answer, and nobody took it); 0 another holder has it.
_REFRESH_SCRIPT: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

_RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@implementer(IAssociationLock)
class RedisAssociationLock:
    """One association per calling AE title across every sdcc sharing Redis.

    ``acquire`` is ``SET {p}lock:ae:{AE} token NX PX ttl``; while held, a
    LoopingCall renews the expiry every ``refresh`` seconds if the key still
    holds our token, or takes it again if it expired meanwhile (Lua), and
    ``release`` deletes it only if it holds our token.  A node that dies stops
    renewing, so its slots free within ``ttl``.  A timeout in ``acquire``
    fails with :class:`IndexUnavailable` (the caller falls back).  A refresh
    that finds another holder's token calls :attr:`on_lost` (the association
    must end).
    """

    def __init__(self, redis: Any, clock: IReactorTime, key_prefix: str = "sdcc:",
                 ttl: float = 10.0, refresh: float = 3.0,
                 timeout: float = 2.0) -> None:
        if not 0 < refresh < ttl:
            raise ValueError(f"need 0 < refresh < ttl, got refresh={refresh!r}"
                             f" ttl={ttl!r}")
        self._redis = redis
        self._clock = clock
        self._bounded = Bounded(clock, timeout)
        self.layout = KeyLayout(key_prefix)
        self.ttl = ttl
        self.refresh = refresh
        self.on_lost: Callable[[str, object], None] | None = None
        self._held: dict[str, tuple[str, task.LoopingCall]] = {}

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    def acquire(self, calling_ae: str) -> "defer.Deferred[object | None]":
        """Take the slot of ``calling_ae``: a token, or ``None`` if taken."""
        return self._bounded.run(self._acquire(calling_ae),
                                 f"lock {calling_ae!r}")

    async def _acquire(self, ae: str) -> str | None:
        token = secrets.token_hex(16)
        reply = await self._redis.set(self.layout.ae_lock(ae), token,
                                      pexpire=self._ttl_ms(),
                                      only_if_not_exists=True)
        if reply != "OK":
            return None
        loop = task.LoopingCall(self._refresh, ae, token)
        loop.clock = self._clock
        self._held[ae] = (token, loop)
        _quiet(loop.start(self.refresh, now=False))
        return token

    def _refresh(self, ae: str, token: str) -> "defer.Deferred[None]":
        d = self._bounded.run(
            defer.maybeDeferred(self._eval, _REFRESH_SCRIPT, ae,
                                token, str(self._ttl_ms())),
            f"refresh lock {ae!r}")

        def renewed(result: Any) -> None:
            if self._held.get(ae, (None,))[0] != token:
                return
            if result == 2:
                _log.warn("association lock of {ae!r} had expired (Redis did not "
                          "answer for longer than its ttl); nobody took it, so it "
                          "is held again", ae=ae)
            elif not result:
                _log.warn("association lock of {ae!r} is held by another holder "
                          "(another node took it while Redis did not answer); "
                          "ending this node's association of {ae!r}", ae=ae)
                self._forget(ae)
                if self.on_lost is not None:
                    self.on_lost(ae, token)

        def failed(failure: Any) -> None:
            _log.warn("cannot renew the association lock of {ae!r}: {why}",
                      ae=ae, why=failure.getErrorMessage())

        return d.addCallbacks(renewed, failed)

    def _eval(self, script: str, ae: str, *args: str) -> "defer.Deferred[Any]":
        # may raise at once (a handler that is not connected yet)
        return self._redis.eval(script, [self.layout.ae_lock(ae)], list(args))

    def _forget(self, ae: str) -> None:
        _, loop = self._held.pop(ae)
        if loop.running:
            loop.stop()

    def release(self, calling_ae: str, token: object) -> "defer.Deferred[None]":
        """Free the slot if ``token`` still holds it; never fails."""
        if self._held.get(calling_ae, (None,))[0] == token:
            self._forget(calling_ae)
        d = self._bounded.run(
            defer.maybeDeferred(self._eval, _RELEASE_SCRIPT, calling_ae,
                                str(token)),
            f"unlock {calling_ae!r}")

        def failed(failure: Any) -> None:
            _log.warn("cannot release the association lock of {ae!r} (it "
                      "expires by itself): {why}", ae=calling_ae,
                      why=failure.getErrorMessage())

        return d.addCallbacks(lambda _: None, failed)

    def release_all(self) -> "defer.Deferred[None]":
        """Release every slot this object holds (for shutdown)."""
        ds = [self.release(ae, token) for ae, (token, _) in list(self._held.items())]
        return defer.gatherResults(ds).addCallback(lambda _: None)

    def held(self) -> frozenset[str]:
        """The calling AE titles whose slot this object holds and renews."""
        return frozenset(self._held)


class PoolHandler(txredisapi.ConnectionHandler):
    """txredisapi's connection handler, with the pool's factory public.

    txredisapi 1.6.0 has no public way from a handler to its pool, which
    :meth:`RedisIndex._take` needs (a connection of its own for a WATCHed
    transaction); :func:`connect_redis` builds the pool with this handler
    class, so the factory is the one we made, not the handler's private
    ``_factory``.
    """

    def __init__(self, factory: txredisapi.RedisFactory) -> None:
        super().__init__(factory)
        self.factory = factory


class UnixPoolHandler(PoolHandler, txredisapi.UnixConnectionHandler):
    """:class:`PoolHandler` on a unix socket (its ``repr`` names the path)."""


def connect_redis(url: str, reactor: Any, *, poolsize: int = 4,
                  connect_timeout: float = 5.0,
                  max_retry_delay: float = 10.0) -> PoolHandler:
    """A lazy, reconnecting txredisapi pool for ``url``.

    ``redis://[[user]:password@]host[:port][/db]`` or
    ``unix:///path/to/sock[?db=N]``.  Values come back as text
    (``convertNumbers`` off).  The pool is built as txredisapi's
    ``lazyConnectionPool`` builds it (``RedisFactory.startConnecting``), with
    endpoints on ``reactor`` and the handler :class:`PoolHandler`.

    Args:
        max_retry_delay: cap of the reconnect back-off, in seconds.

    Raises:
        ValueError: the URL is not one of the forms above.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username and password is not None else None
    endpoint: Any
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url!r}: a unix:// URL needs a socket path, "
                             "as in unix:///var/lib/sdcc/redis.sock?db=0")
        db = _db_number(url, query.get("db", ["0"])[0])
        path = unquote(parts.path)
        uuid, handler_class = path, UnixPoolHandler
        endpoint = endpoints.UNIXClientEndpoint(reactor, path, timeout=connect_timeout)
    elif parts.scheme == "redis":
        db = _db_number(url, parts.path.strip("/") or "0")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"{url!r}: bad port") from None
        host = parts.hostname or "localhost"
        uuid, handler_class = f"{host}:{port}", PoolHandler
        endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    else:
        raise ValueError(f"{url!r}: expected redis://host:port/db or "
                         "unix:///path/to/redis.sock?db=N")
    factory = txredisapi.RedisFactory(uuid, db or None, poolsize, isLazy=True,
                                      handler=handler_class, password=password,
                                      convertNumbers=False, username=username)
    factory.reconnect = True
    factory.maxDelay = max_retry_delay
    factory.initialDelay = min(factory.initialDelay, max_retry_delay)
    factory.startConnecting(endpoint)
    handler: PoolHandler = factory.handler
    return handler


def _db_number(url: str, text: str) -> int:
    try:
        db = int(text)
    except ValueError:
        db = -1
    if db < 0:
        raise ValueError(f"{url!r}: the database must be a number >= 0, "
                         f"got {text!r}")
    return db
