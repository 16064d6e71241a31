"""A clean stop (issue 11, finding 6; issue 17): associations finish within
``[server] stop_grace``, the rest are aborted, and every answered store is in
the index or the journal before the index log closes."""

from __future__ import annotations

import os
import signal
import threading

from twisted.trial.unittest import TestCase

from sdcc_twisted.core.dimse import STATUS, decode_command
from sdcc_twisted.core.pdu import AAbort, AReleaseRP, AReleaseRQ, encode
from sdcc_twisted.runtime.shutdown import GracefulStop, OrderedMultiService
from sdcc_twisted.storage.journal import IndexLog

from . import corpus
from .redis_support import start_redis, wait_for
from .server_support import TwistdServer, free_port, ini_text
from .support import dataset_bytes, message_pdus, store_command
from .test_crash import CT, PER_SENDER, SENDERS, Sender
from .test_index_log import SlowIndex
from .test_interop_store import check_stored
from .test_protocol import ProtocolTestBase


class GracefulStopTests(ProtocolTestBase):
    """GracefulStop on a task.Clock with StringTransports."""

    def setUp(self) -> None:
        super().setUp()
        self.stop = GracefulStop(self.factory, self.storage, self.clock, grace=10)
        self.stop.startService()

    def test_open_association_aborted_after_grace(self) -> None:
        """An idle association keeps the stop waiting for the grace period
        only; then it gets an A-ABORT and is closed, and the stop completes
        once its transport is gone."""
        proto, transport = self.associate()
        self.sent(transport)
        stopped = self.stop.stopService()
        self.clock.advance(9.5)
        self.assertFalse(stopped.called)
        self.assertEqual(self.sent(transport), [])
        self.clock.advance(1)
        self.assertIsInstance(self.sent(transport)[-1], AAbort)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(stopped.called)
        proto.connectionLost(None)
        self.assertTrue(stopped.called)

    def test_release_within_grace_is_not_aborted(self) -> None:
        """An association that releases during the grace period gets its
        A-RELEASE-RP, not an A-ABORT, and the stop completes when it closes."""
        proto, transport = self.associate()
        self.sent(transport)
        stopped = self.stop.stopService()
        self.clock.advance(3)
        proto.dataReceived(encode(AReleaseRQ()))
        self.assertEqual(self.sent(transport), [AReleaseRP()])
        self.close(proto, transport)
        self.assertTrue(stopped.called)

    def test_waits_for_index_write_behind_answer(self) -> None:
        """A store answered from its index log line whose index write is
        still on its way keeps the stop waiting after the peer left; when it
        lands, the stop completes and the log's close leaves no segment."""
        directory = self.mktemp()
        wal = IndexLog.in_data_dir(directory, fsync=False)
        slow = SlowIndex()
        self.storage.index = slow
        self.storage.index_log = wal
        proto, transport = self.associate()
        self.sent(transport)
        proto.dataReceived(message_pdus(3, store_command("1.2.3.5"), dataset_bytes("1.2.3.5")))
        (rsp,) = self.sent(transport)
        self.assertEqual(decode_command(bytes(rsp.pdvs[0].data)).get(STATUS), 0)
        self.close(proto, transport)
        stopped = self.stop.stopService()
        self.assertFalse(stopped.called)
        ((_, d),) = slow.waiting
        d.callback(None)
        self.assertTrue(stopped.called)
        wal.close()
        self.assertEqual([n for n in os.listdir(directory) if n.startswith("index.wal")], [])


class OrderedStopTests(TestCase):
    """OrderedMultiService."""

    def test_children_stop_one_at_a_time_in_reverse(self) -> None:
        """The last child started stops first, and the one before it only
        once that stop has finished."""
        from twisted.application import service
        from twisted.internet import defer

        order: list[str] = []
        gates: dict[str, defer.Deferred[None]] = {}

        class Child(service.Service):
            def stopService(self) -> defer.Deferred[None]:
                super().stopService()
                order.append(self.name)
                gates[self.name] = defer.Deferred()
                return gates[self.name]

        top = OrderedMultiService()
        for name in ("first", "second", "third"):
            child = Child()
            child.setName(name)
            child.setServiceParent(top)
        top.startService()
        done = top.stopService()
        self.assertEqual(order, ["third"])
        gates["third"].callback(None)
        self.assertEqual(order, ["third", "second"])
        gates["second"].callback(None)
        gates["first"].callback(None)
        self.assertEqual(order, ["third", "second", "first"])
        self.assertTrue(done.called)


class SigtermTests(TestCase):
    """SIGTERM to a real ``twistd sdcc`` while four pynetdicom peers store."""

    timeout = 120

    async def test_sigterm_during_concurrent_stores(self) -> None:
        """SIGTERM after about a third of 4x30 stores: the associations
        already open finish within stop_grace and every store is answered
        0x0000 (none fails because of the shutdown order); the stop leaves
        no index log segment; after a restart every instance is on disk and
        indexed, and the log does not claim records were on their way."""
        redis = start_redis(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        port = free_port()
        data_dir = os.path.join(base, "data")
        ini = os.path.join(base, "sdcc.ini")
        with open(ini, "w", encoding="utf-8") as handle:
            handle.write(ini_text(data_dir, redis.url, port=port, storage={"fsync": "yes"},
                                  server={"stop_grace": "60"}))
        root = os.path.join(data_dir, "store")
        study = corpus.new_uid()
        samples = {
            f"TERM{s}": [corpus.write_small(os.path.join(base, "in", f"{s}-{n}.dcm"), CT,
                                            study=study, number=n + 1)
                         for n in range(PER_SENDER)]
            for s in range(SENDERS)}
        server = TwistdServer(self, ini)
        server.start(port)
        acked: list[str] = []
        lock = threading.Lock()
        senders = [Sender(port, ae, xs, acked, lock) for ae, xs in samples.items()]
        threads = [threading.Thread(target=s.run, daemon=True) for s in senders]
        for t in threads:
            t.start()
        total = SENDERS * PER_SENDER
        await wait_for(lambda: len(acked) >= total // 3, 40, "a third of the stores")
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGTERM)
        termed_at = len(acked)
        await wait_for(lambda: not any(t.is_alive() for t in threads), 60,
                       "the senders to finish")
        await wait_for(lambda: server.process.poll() is not None, 30, "twistd to exit")
        self.assertEqual([s.error for s in senders], [None] * SENDERS)
        statuses = {uid: st for s in senders for uid, st in s.status.items()}
        self.assertLess(termed_at, total, "SIGTERM came after the last store")
        self.assertEqual(set(statuses.values()), {0x0000}, server.log()[-3000:])
        self.assertEqual(len(statuses), total)
        self.assertEqual([n for n in os.listdir(data_dir) if n.startswith("index.wal")], [])

        restarted = TwistdServer(self, ini)
        restarted.start(port)
        client = redis.client()
        for ae, xs in samples.items():
            for sample in xs:
                check_stored(self, root, client, sample, ae)
        self.assertNotIn("on their way to the index", restarted.log())
