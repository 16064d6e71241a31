"""The index write-ahead log and the answer/index ordering around it."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from sdcc_twisted.dimse import STATUS, decode_command
from sdcc_twisted.journal import IndexLog, PendingJournal
from sdcc_twisted.pdu import AReleaseRP, AReleaseRQ, PDataTF, encode

from .support import dataset_bytes, message_pdus, store_command
from .test_protocol import ProtocolTestBase


class IndexLogTests(TestCase):
    """IndexLog on its own."""

    def test_recover_moves_records_to_journal(self) -> None:
        """Records a crash left in the log go to the pending journal, in
        order; a line cut short by the crash is skipped; the log is emptied."""
        from .test_index import make_record
        directory = self.mktemp()
        wal = IndexLog.in_data_dir(directory, fsync=True)
        self.addCleanup(wal.close)
        wal.append(make_record(sop="1.2.3.1"))
        wal.append(make_record(sop="1.2.3.2"))
        with open(wal.path, "ab") as handle:
            handle.write(b'{"format": 1, "record": {"sop_inst')
        journal = PendingJournal(os.path.join(directory, "pending"))
        self.assertEqual(wal.recover(journal), 2)
        self.assertEqual([r.sop_instance_uid for _, r in journal.entries()],
                         ["1.2.3.1", "1.2.3.2"])
        self.assertEqual(os.path.getsize(wal.path), 0)


class SlowIndex:
    """An index whose record() waits until the test releases it."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Any, defer.Deferred]] = []

    def record(self, rec: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting.append((rec, d))
        return d

    def get(self, uid: str) -> defer.Deferred:
        return defer.succeed(None)

    def remove(self, uid: str) -> defer.Deferred:
        return defer.succeed(None)


class AnswerOrderTests(ProtocolTestBase):
    """With the log, the answer does not wait for Redis; the release does."""

    def setUp(self) -> None:
        super().setUp()
        self.wal = IndexLog.in_data_dir(self.mktemp(), fsync=False)
        self.addCleanup(self.wal.close)
        self.slow = SlowIndex()
        self.storage.index = self.slow
        self.storage.index_log = self.wal

    def test_answer_before_index_release_after(self) -> None:
        """The C-STORE-RSP 0x0000 goes out while the index write is still on
        its way (the record is in the log); the A-RELEASE-RP waits for it,
        and the log is empty once it landed."""
        proto, transport = self.associate()
        self.sent(transport)
        proto.dataReceived(message_pdus(3, store_command("1.2.3.5"), dataset_bytes("1.2.3.5")))
        (rsp,) = self.sent(transport)
        self.assertEqual(decode_command(bytes(rsp.pdvs[0].data)).get(STATUS), 0)
        self.assertGreater(os.path.getsize(self.wal.path), 0)
        proto.dataReceived(encode(AReleaseRQ()))
        self.assertEqual(self.sent(transport), [])
        ((rec, d),) = self.slow.waiting
        self.assertEqual(rec.sop_instance_uid, "1.2.3.5")
        d.callback(None)
        self.assertEqual(self.sent(transport), [AReleaseRP()])
        self.assertEqual(os.path.getsize(self.wal.path), 0)

    def test_long_operation_is_not_idleness(self) -> None:
        """A commit that takes longer than the idle timeout is answered, and
        the association is not aborted right after its response."""
        gate: defer.Deferred = defer.Deferred()
        self.storage.run_blocking = lambda fn, *a: gate.addCallback(lambda _: fn(*a))
        self.store.fsync = True
        proto, transport = self.associate()
        self.sent(transport)
        proto.dataReceived(message_pdus(3, store_command("1.2.3.6"), dataset_bytes("1.2.3.6")))
        self.clock.advance(400)          # idle_timeout is 300 s
        self.assertEqual(self.sent(transport), [])
        gate.callback(None)
        ((_, d),) = self.slow.waiting
        d.callback(None)
        pdus = self.sent(transport)
        self.assertEqual([type(p) for p in pdus], [PDataTF])
        self.clock.advance(10)
        self.assertEqual(self.sent(transport), [])
        self.assertFalse(transport.disconnecting)
