"""The index write-ahead log and the answer/index ordering around it."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from sdcc_twisted.core.dimse import STATUS, decode_command
from sdcc_twisted.storage.journal import IndexLog, PendingJournal
from sdcc_twisted.core.pdu import AReleaseRP, AReleaseRQ, PDataTF, encode

from sdcc_twisted.storage.serial import DiskWorkers

from .support import dataset_bytes, message_pdus, store_command
from .test_protocol import HeldPool, ProtocolTestBase


class IndexLogTests(TestCase):
    """IndexLog on its own."""

    def test_recover_moves_records_to_journal(self) -> None:
        """Records a crash left in the log go to the pending journal, in
        order; a line cut short by the crash is skipped; the old segment is
        deleted and a new one is written to."""
        from .test_index import make_record
        directory = self.mktemp()
        crashed = IndexLog.in_data_dir(directory, fsync=True)
        for sop in ("1.2.3.1", "1.2.3.2"):
            crashed.append(make_record(sop=sop), crashed.reserve())
        with open(os.path.join(directory, "index.wal.1"), "ab") as handle:
            handle.write(b'{"format": 1, "record": {"sop_inst')
        crashed.close()
        wal = IndexLog.in_data_dir(directory, fsync=True)
        self.addCleanup(wal.close)
        journal = PendingJournal(os.path.join(directory, "pending"))
        self.assertEqual(wal.recover(journal), 2)
        self.assertEqual([r.sop_instance_uid for _, r in journal.entries()],
                         ["1.2.3.1", "1.2.3.2"])
        self.assertEqual(sorted(n for n in os.listdir(directory) if n.startswith("index.wal")),
                         [])
        wal.append(make_record(sop="1.2.3.3"), wal.reserve())
        self.assertEqual(sorted(n for n in os.listdir(directory) if n.startswith("index.wal")),
                         ["index.wal.2"])

    def test_no_segment_before_the_first_record(self) -> None:
        """Opening the log creates no file: a server that stops before it
        stores anything (a start-up error) leaves no empty index.wal.N."""
        directory = self.mktemp()
        wal = IndexLog.in_data_dir(directory, fsync=True)
        wal.close()
        self.assertEqual(os.listdir(directory), [])

    def test_segments_rotate_and_retire(self) -> None:
        """Under constant load the log never needs a quiet moment: it moves
        to a new segment every SEGMENT_RECORDS records and deletes an old one
        once all its records settled."""
        from .test_index import make_record
        directory = self.mktemp()
        wal = IndexLog.in_data_dir(directory, fsync=False)
        self.addCleanup(wal.close)
        wal.SEGMENT_RECORDS = 3
        open_segments = []
        for n in range(7):
            segment = wal.reserve()
            wal.append(make_record(sop=f"1.2.3.{n}"), segment)
            open_segments.append(segment)
            if len(open_segments) > 2:     # always two records in flight
                wal.settle(open_segments.pop(0))
        names = sorted(n for n in os.listdir(directory) if n.startswith("index.wal"))
        self.assertEqual(names, ["index.wal.2", "index.wal.3"])
        for segment in open_segments:
            wal.settle(segment)
        names = sorted(n for n in os.listdir(directory) if n.startswith("index.wal"))
        self.assertEqual(names, ["index.wal.3"])


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
        self.wal_dir = self.wal.directory
        self.slow = SlowIndex()
        self.storage.index = self.slow
        self.storage.index_log = self.wal

    def log_size(self) -> int:
        return sum(os.path.getsize(os.path.join(self.wal_dir, n))
                   for n in os.listdir(self.wal_dir) if n.startswith("index.wal"))

    def test_answer_before_index_release_after(self) -> None:
        """The C-STORE-RSP 0x0000 goes out while the index write is still on
        its way (the record is in the log); the A-RELEASE-RP waits for it,
        and that release does not wait for another association's records."""
        proto, transport = self.associate("CT1", 1)
        other, other_transport = self.associate("MR1", 2)
        self.sent(transport)
        self.sent(other_transport)
        proto.dataReceived(message_pdus(3, store_command("1.2.3.5"), dataset_bytes("1.2.3.5")))
        other.dataReceived(message_pdus(3, store_command("1.2.3.9"), dataset_bytes("1.2.3.9")))
        (rsp,) = self.sent(transport)
        self.assertEqual(decode_command(bytes(rsp.pdvs[0].data)).get(STATUS), 0)
        self.assertGreater(self.log_size(), 0)
        proto.dataReceived(encode(AReleaseRQ()))
        self.assertEqual(self.sent(transport), [])
        (mine, d_mine), (theirs, d_theirs) = self.slow.waiting
        self.assertEqual((mine.sop_instance_uid, theirs.sop_instance_uid),
                         ("1.2.3.5", "1.2.3.9"))
        d_mine.callback(None)
        self.assertEqual(self.sent(transport), [AReleaseRP()])
        d_theirs.callback(None)

    def test_long_operation_is_not_idleness(self) -> None:
        """A commit that takes longer than the idle timeout is answered, and
        the association is not aborted right after its response."""
        held = HeldPool()
        self.factory.disk = DiskWorkers(held, lambda fn, *a: fn(*a))
        self.store.fsync = True
        proto, transport = self.associate()
        self.sent(transport)
        proto.dataReceived(message_pdus(3, store_command("1.2.3.6"), dataset_bytes("1.2.3.6")))
        self.clock.advance(400)          # idle_timeout is 300 s
        self.assertEqual(self.sent(transport), [])
        held.run()
        ((_, d),) = self.slow.waiting
        d.callback(None)
        pdus = self.sent(transport)
        self.assertEqual([type(p) for p in pdus], [PDataTF])
        self.clock.advance(10)
        self.assertEqual(self.sent(transport), [])
        self.assertFalse(transport.disconnecting)


class IndexLogFaultTests(TestCase):
    """The log under real faults, and after a clean stop."""

    def test_failed_append_leaves_no_torn_line(self) -> None:
        """On a tmpfs filled to ENOSPC an append raises and leaves the
        segment as it was; once there is room the next record is logged and
        recovered whole, with nothing before it lost."""
        from .test_index import make_record
        from .volume_support import fill, free, small_volume

        directory = small_volume(self, 64 * 1024)
        wal = IndexLog.in_data_dir(directory, fsync=True)
        wal.append(make_record(sop="1.2.3.1"), wal.reserve())
        path = os.path.join(directory, "index.wal.1")
        before = os.path.getsize(path)
        big = make_record(sop="1.2.3.2")
        big.attributes["StudyDescription"] = "x" * 8192   # more than a page
        fill(directory)
        with self.assertRaises(OSError):
            wal.append(big, wal.reserve())
        self.assertEqual(os.path.getsize(path), before)
        free(directory)
        wal.append(make_record(sop="1.2.3.3"), wal.reserve())
        wal.close()
        again = IndexLog.in_data_dir(directory, fsync=True)
        self.addCleanup(again.close)
        journal = PendingJournal(os.path.join(directory, "pending"))
        self.assertEqual(again.recover(journal), 2)
        self.assertEqual([r.sop_instance_uid for _, r in journal.entries()],
                         ["1.2.3.1", "1.2.3.3"])

    def test_recover_reads_past_a_torn_line(self) -> None:
        """A torn line that could not be cut off (no newline after it) does
        not take the record written after it down with it."""
        from .test_index import make_record
        directory = self.mktemp()
        wal = IndexLog.in_data_dir(directory, fsync=False)
        wal.append(make_record(sop="1.2.3.1"), wal.reserve())
        with open(os.path.join(directory, "index.wal.1"), "ab") as handle:
            handle.write(b'{"format": 1, "record": {"sop_instance_uid": "1.2.3.9", "pa')
        wal.append(make_record(sop="1.2.3.2"), wal.reserve())
        wal.close()
        again = IndexLog.in_data_dir(directory, fsync=False)
        self.addCleanup(again.close)
        journal = PendingJournal(os.path.join(directory, "pending"))
        self.assertEqual(again.recover(journal), 2)
        self.assertEqual([r.sop_instance_uid for _, r in journal.entries()],
                         ["1.2.3.1", "1.2.3.2"])

    def test_clean_close_leaves_nothing_to_recover(self) -> None:
        """Issue 17: close() after every record settled deletes the last
        segment too, so the next start recovers nothing (and warns of
        nothing); a record not settled at close stays for recovery."""
        from .test_index import make_record
        directory = self.mktemp()
        wal = IndexLog.in_data_dir(directory, fsync=False)
        for n in range(3):
            segment = wal.reserve()
            wal.append(make_record(sop=f"1.2.3.{n}"), segment)
            wal.settle(segment)
        wal.close()
        self.assertEqual([n for n in os.listdir(directory) if n.startswith("index.wal")], [])
        again = IndexLog.in_data_dir(directory, fsync=False)
        journal = PendingJournal(os.path.join(directory, "pending"))
        self.assertEqual(again.recover(journal), 0)
        again.append(make_record(sop="1.2.3.7"), again.reserve())   # never settled
        again.close()
        third = IndexLog.in_data_dir(directory, fsync=False)
        self.addCleanup(third.close)
        self.assertEqual(third.recover(journal), 1)

    def test_append_after_close_is_an_os_error(self) -> None:
        """An append that comes after close() fails as a disk error (EBADF),
        not a KeyError, and a settle after close is ignored."""
        from .test_index import make_record
        wal = IndexLog.in_data_dir(self.mktemp(), fsync=False)
        segment = wal.reserve()
        wal.close()
        with self.assertRaises(OSError):
            wal.append(make_record(sop="1.2.3.1"), segment)
        wal.settle(segment)


class RetireDelayTests(TestCase):
    """A finished segment outlives Redis's fsync interval (issue 11,
    finding 3)."""

    def test_segment_kept_for_the_retire_delay(self) -> None:
        """With fsync on, a segment whose records all reached the index is
        still on disk until RETIRE_DELAY (more than Redis's one-second
        append-only fsync) has passed, then deleted; close() fires only once
        the last segment has waited out the delay too."""
        from twisted.internet import task

        from sdcc_twisted.storage.journal import RETIRE_DELAY

        from .test_index import make_record
        self.assertGreater(RETIRE_DELAY, 2.0)
        clock = task.Clock()
        directory = self.mktemp()
        wal = IndexLog.in_data_dir(directory, fsync=True, clock=clock)
        wal.SEGMENT_RECORDS = 1
        first = wal.reserve()
        wal.append(make_record(sop="1.2.3.1"), first)
        second = wal.reserve()                  # the first segment is full
        wal.append(make_record(sop="1.2.3.2"), second)
        wal.settle(first)

        def segments() -> list[str]:
            return sorted(n for n in os.listdir(directory) if n.startswith("index.wal"))
        self.assertEqual(segments(), ["index.wal.1", "index.wal.2"])
        clock.advance(RETIRE_DELAY - 0.1)
        self.assertEqual(segments(), ["index.wal.1", "index.wal.2"])
        clock.advance(0.1)
        self.assertEqual(segments(), ["index.wal.2"])
        wal.settle(second)
        closed = wal.close()
        self.assertNoResult(closed)
        self.assertEqual(segments(), ["index.wal.2"])
        clock.advance(RETIRE_DELAY)
        self.successResultOf(closed)
        self.assertEqual(segments(), [])

    def test_empty_segment_retires_at_once(self) -> None:
        """A segment nothing was written to is deleted at close() at once,
        without the retire delay (there is nothing Redis could lose)."""
        from twisted.internet import task

        clock = task.Clock()
        directory = self.mktemp()
        wal = IndexLog.in_data_dir(directory, fsync=True, clock=clock)
        self.successResultOf(wal.close())
        self.assertEqual([n for n in os.listdir(directory) if n.startswith("index.wal")], [])
