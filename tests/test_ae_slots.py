"""The per-AE rule under Redis stalls, with a real redis-server.

One table of granted slots per process is consulted first, whichever lock
backs it, so within a process the rule always holds; a node that finds its
Redis lock held by another node ends that association.  The faults are
caused: redis-server is paused with SIGSTOP (by its PID) and resumed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sdcc_twisted.core.negotiation import AcceptorPolicy
from sdcc_twisted.core.pdu import AAbort, AAssociateAC, encode
from sdcc_twisted.runtime.admission import Admission
from sdcc_twisted.runtime.protocol import DicomServerFactory, Timeouts
from sdcc_twisted.storage.index import RedisAssociationLock
from sdcc_twisted.storage.locks import (
    FallbackAssociationLock,
    IAssociationLock,
    InProcessAssociationLock,
)

from .redis_support import connect, sleep, start_redis, wait_for
from .server_support import in_thread, start_server
from .support import associate_rq
from .test_interop_echo import pynetdicom_echo
from .test_protocol import parse


class PausedRedisTests(TestCase):
    """SIGSTOP of the index's redis-server while associations come and go."""

    timeout = 120

    def pause(self, pid: int) -> None:
        """SIGSTOP the redis-server we started; SIGCONT in cleanup too."""
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)

    async def test_paused_redis_grants_no_second_association(self) -> None:
        """lock = redis: CT1 holds its slot through Redis; with Redis paused a
        second CT1 association to the same server is refused (the table of
        this process, not the fallback lock, answers), while MR1 is accepted
        through the fallback (outage: the rule per node, logged); after
        SIGCONT a third CT1 is refused while the first is open, and once it
        is released CT1 is accepted again."""
        srv = await start_server(self, index={"lock": "redis", "timeout": "0.5"})
        lines: list[str] = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        holding, done = threading.Event(), threading.Event()

        def hold(_: Any) -> None:
            holding.set()
            done.wait(60)

        first = in_thread(pynetdicom_echo, srv.port, "CT1", hold)
        self.addCleanup(done.set)
        await wait_for(holding.is_set, 20, "the first CT1 association")
        self.pause(srv.redis.pid)
        try:
            second = await in_thread(pynetdicom_echo, srv.port, "CT1")
            other = await in_thread(pynetdicom_echo, srv.port, "MR1")
        finally:
            os.kill(srv.redis.pid, signal.SIGCONT)
        self.assertEqual(second, {"established": False})
        self.assertEqual((other["established"], other["status"]), (True, 0))
        self.assertTrue(any("unavailable for MR1" in line and "this process only" in line
                            for line in lines), lines)
        third = await in_thread(pynetdicom_echo, srv.port, "CT1")
        self.assertEqual(third, {"established": False})
        done.set()
        self.assertEqual((await first)["status"], 0)
        await wait_for(lambda: not srv.service.factory.connections, 10, "the first to close")
        again = await in_thread(pynetdicom_echo, srv.port, "CT1")
        self.assertEqual((again["established"], again["status"]), (True, 0))

    async def test_lock_taken_by_another_node_ends_the_association(self) -> None:
        """Two nodes on one Redis (lock ttl 0.5 s): node A holds CT1; Redis is
        paused longer than the ttl, so A's key expires; node B then takes
        CT1; A's next refresh finds B's token and A aborts its CT1
        association (A-ABORT) with a log line naming CT1.  B keeps its slot."""
        redis = start_redis(self)
        a_clock = task.Clock()                  # A's refreshes run when the test says
        a_redis = RedisAssociationLock(connect(self, redis), a_clock, key_prefix="t:",
                                       ttl=0.5, refresh=0.2, timeout=0.3)
        a_lock = InProcessAssociationLock(FallbackAssociationLock(
            a_redis, InProcessAssociationLock()))
        b_lock = InProcessAssociationLock(FallbackAssociationLock(
            RedisAssociationLock(connect(self, redis), reactor, key_prefix="t:",
                                 ttl=0.5, refresh=0.2, timeout=0.3),
            InProcessAssociationLock()))
        self.addCleanup(a_redis.release_all)
        factory = DicomServerFactory(Admission(AcceptorPolicy(), a_lock), {},
                                     task.Clock(), timeouts=Timeouts(artim=30, idle=300))
        lines: list[str] = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        proto = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(encode(associate_rq(calling="CT1")))
        await wait_for(lambda: transport.value(), 10, "node A's answer")
        self.assertIsInstance(parse(transport.value())[0], AAssociateAC)
        transport.clear()

        self.pause(redis.pid)
        time.sleep(0.8)                         # longer than the ttl
        os.kill(redis.pid, signal.SIGCONT)
        b_token = await b_lock.acquire("CT1")
        self.assertIsNotNone(b_token)
        a_clock.advance(0.2)                    # A's refresh
        await wait_for(lambda: transport.value(), 10, "node A's A-ABORT")
        self.assertIsInstance(parse(transport.value())[-1], AAbort)
        self.assertTrue(any("CT1" in line and "another node" in line for line in lines),
                        lines)
        self.assertEqual(a_lock.held(), frozenset())
        self.assertEqual(b_lock.held(), frozenset({"CT1"}))
        proto.connectionLost(None)
        await sleep(0.1)
        self.assertIsNone(await a_lock.acquire("CT1"))     # B still holds it in Redis
        await b_lock.release("CT1", b_token)


@implementer(IAssociationLock)
class AskedLock:
    """A backing lock whose answers the test gives."""

    def __init__(self) -> None:
        self.on_lost: Any = None
        self.asked: list[defer.Deferred] = []
        self.released: list[tuple[str, object]] = []

    def acquire(self, calling_ae: str) -> defer.Deferred:
        self.asked.append(defer.Deferred())
        return self.asked[-1]

    def release(self, calling_ae: str, token: object) -> defer.Deferred:
        self.released.append((calling_ae, token))
        return defer.succeed(None)


class SlotTableTests(TestCase):
    """The in-process table in front of a backing lock, without Redis."""

    def test_consulted_first(self) -> None:
        """While the backing lock is asked for CT1, and once it granted CT1,
        another CT1 is refused without asking it; a refusal or a failure of
        the backing lock leaves no slot; release goes to the backing lock."""
        backing = AskedLock()
        table = InProcessAssociationLock(backing)
        verifyObject(IAssociationLock, table)
        first = table.acquire("CT1")
        self.assertIsNone(self.successResultOf(table.acquire("CT1")))
        self.assertEqual(len(backing.asked), 1)
        backing.asked[0].callback("token-1")
        self.assertEqual(self.successResultOf(first), "token-1")
        self.assertIsNone(self.successResultOf(table.acquire("CT1")))
        self.assertEqual(len(backing.asked), 1)
        refused, failed = table.acquire("MR1"), table.acquire("US1")
        backing.asked[1].callback(None)
        backing.asked[2].errback(ConnectionError("down"))
        self.assertIsNone(self.successResultOf(refused))
        self.failureResultOf(failed, ConnectionError)
        self.assertEqual(table.held(), frozenset({"CT1"}))
        table.release("CT1", "token-1")
        self.assertEqual((table.held(), backing.released), (frozenset(), [("CT1", "token-1")]))

    def test_lost_slot_is_reported_once(self) -> None:
        """The backing lock reporting a lost slot frees it in the table and
        calls on_lost once, only for the token the table granted."""
        backing = AskedLock()
        table = InProcessAssociationLock(backing)
        lost: list[tuple[str, object]] = []
        table.on_lost = lambda ae, token: lost.append((ae, token))
        d = table.acquire("CT1")
        backing.asked[0].callback("token-1")
        self.successResultOf(d)
        backing.on_lost("CT1", "stale-token")
        backing.on_lost("CT1", "token-1")
        backing.on_lost("CT1", "token-1")
        self.assertEqual((lost, table.held()), ([("CT1", "token-1")], frozenset()))
