"""Tests for sdcc_twisted.storage.journal: the pending journal and its replay."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sdcc_twisted.core import index_keys
from sdcc_twisted.storage.index import (
    IInstanceIndex,
    IndexUnavailable,
    NotReplicated,
    RedisIndex,
)
from sdcc_twisted.storage.journal import JournalReplayer, PendingJournal
from sdcc_twisted.core.records import InstanceRecord

from .redis_support import connect, sleep, start_redis, wait_connected
from .test_index import make_record


@implementer(IInstanceIndex)
class FakeIndex:
    """An in-memory index that can be switched off."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, str]] = {}
        self.up = True
        self.recorded: list[str] = []

    def record(self, rec: InstanceRecord) -> defer.Deferred[str | None]:
        if not self.up:
            return defer.fail(IndexUnavailable("down"))
        current = self.entries.get(rec.sop_instance_uid, {})
        if int(current.get("sequence", "0")) > rec.sequence:      # a newer copy
            return defer.succeed(rec.path if rec.path != current["path"] else None)
        old = current.get("path")
        self.entries[rec.sop_instance_uid] = index_keys.instance_fields(rec)
        self.recorded.append(rec.sop_instance_uid)
        return defer.succeed(old if old != rec.path else None)

    def get(self, uid: str) -> defer.Deferred[dict[str, str] | None]:
        if not self.up:
            return defer.fail(IndexUnavailable("down"))
        return defer.succeed(self.entries.get(uid))

    def remove(self, uid: str) -> defer.Deferred[None]:
        self.entries.pop(uid, None)
        return defer.succeed(None)


def touch(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"x")
    return path


class PendingJournalTests(unittest.TestCase):
    """PendingJournal on a temp directory."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.journal = PendingJournal(self.dir)

    def test_round_trip_in_order(self) -> None:
        """append writes one JSON file per record; entries gives them back
        equal and oldest first."""
        recs = [make_record(sop=str(i)) for i in range(5)]
        names = [self.journal.append(r) for r in recs]
        self.assertEqual(names, sorted(names))
        self.assertEqual(self.journal.entries(), list(zip(names, recs)))
        self.assertEqual(sorted(os.listdir(self.dir)), names)

    def test_record_dict_is_complete(self) -> None:
        """InstanceRecord.to_dict, which the journal and the index log write,
        holds every field of the record (as dataclasses.asdict would) and
        rebuilds an equal record."""
        import dataclasses

        rec = make_record()
        self.assertEqual(rec.to_dict(), dataclasses.asdict(rec))
        self.assertEqual(InstanceRecord(**rec.to_dict()), rec)

    def test_attributes_survive(self) -> None:
        """Unicode attribute values and floats round-trip exactly."""
        rec = make_record(PatientName="Müller^Zoë", received_at=1712345678.123456)
        self.journal.append(rec)
        [(_, back)] = self.journal.entries()
        self.assertEqual(back, rec)

    def test_discard(self) -> None:
        """discard deletes one entry; discarding it again is fine."""
        name = self.journal.append(make_record())
        self.journal.discard(name)
        self.journal.discard(name)
        self.assertEqual(self.journal.entries(), [])

    def test_missing_directory_is_empty(self) -> None:
        """A journal whose directory does not exist yet has no entries."""
        self.assertEqual(PendingJournal(self.dir + "/none").entries(), [])

    def test_unreadable_entry_is_set_aside(self) -> None:
        """A corrupt file is moved to the quarantine and does not hide the
        others."""
        good = self.journal.append(make_record())
        with open(os.path.join(self.dir, "00000000000000000000-1-x.json"),
                  "w") as handle:
            handle.write("{not json")
        self.assertEqual([n for n, _ in self.journal.entries()], [good])
        self.assertEqual(os.listdir(self.journal.quarantine_dir),
                         ["00000000000000000000-1-x.json"])

    def test_no_temp_files_left(self) -> None:
        """An append leaves no temporary file behind."""
        self.journal.append(make_record())
        self.assertFalse([n for n in os.listdir(self.dir) if n.startswith(".")])

    def test_in_data_dir(self) -> None:
        """in_data_dir puts the journal in {data_dir}/pending."""
        self.assertEqual(PendingJournal.in_data_dir("/d").directory, "/d/pending")


class ReplayerTestBase(unittest.TestCase):
    """A JournalReplayer with a fake index on a task.Clock."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.journal = PendingJournal(os.path.join(self.root, "pending"))
        self.index = FakeIndex()
        self.clock = task.Clock()
        self.replayer = JournalReplayer(self.journal, self.index, self.clock,
                                        interval=5)

    def rec(self, sop: str, series: str = "1.2.3", **kw: Any) -> InstanceRecord:
        path = touch(os.path.join(self.root, "store", series, sop + ".dcm"))
        return make_record(sop=sop, series=series, path=path, **kw)


class JournalReplayerTests(ReplayerTestBase):
    """JournalReplayer with a fake index and task.Clock."""

    def test_fake_provides_interface(self) -> None:
        """The fake index is a faithful IInstanceIndex."""
        self.assertTrue(verifyObject(IInstanceIndex, self.index))

    def test_replay_in_order_and_empty(self) -> None:
        """replay_now indexes every entry in order and empties the journal."""
        for sop in "abc":
            self.journal.append(self.rec(sop))
        self.assertEqual(self.successResultOf(self.replayer.replay_now()), 3)
        self.assertEqual(self.index.recorded, ["a", "b", "c"])
        self.assertEqual(self.journal.entries(), [])

    def test_stops_at_unavailable(self) -> None:
        """IndexUnavailable ends the round with the entries kept."""
        self.journal.append(self.rec("a"))
        self.index.up = False
        self.assertEqual(self.successResultOf(self.replayer.replay_now()), 0)
        self.assertEqual(len(self.journal.entries()), 1)

    def test_not_replicated_keeps_entry_and_goes_on(self) -> None:
        """NotReplicated (written, no replica confirmed it: Sentinel) keeps
        that entry and the round goes on with the next ones."""
        for sop in "abc":
            self.journal.append(self.rec(sop))
        record = self.index.record

        def unconfirmed_a(rec: InstanceRecord) -> defer.Deferred[str | None]:
            d = record(rec)
            if rec.sop_instance_uid == "a":
                return d.addCallback(lambda _: defer.fail(NotReplicated("no replica")))
            return d

        self.index.record = unconfirmed_a  # type: ignore[method-assign]
        self.assertEqual(self.successResultOf(self.replayer.replay_now()), 2)
        self.assertEqual(self.index.recorded, ["a", "b", "c"])
        self.assertEqual([r.sop_instance_uid for _, r in self.journal.entries()], ["a"])

    def test_ticks(self) -> None:
        """The service replays on start and again every interval."""
        self.index.up = False
        self.journal.append(self.rec("a"))
        self.replayer.startService()
        self.assertEqual(len(self.journal.entries()), 1)
        self.index.up = True
        self.clock.advance(4.9)
        self.assertEqual(len(self.journal.entries()), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.journal.entries(), [])
        self.successResultOf(self.replayer.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deletes_superseded_file(self) -> None:
        """The old path record() reports is deleted when it differs."""
        old = self.rec("a", series="1.1")
        self.successResultOf(self.index.record(old))
        self.journal.append(self.rec("a", series="1.2", received_at=2000.0))
        self.successResultOf(self.replayer.replay_now())
        self.assertFalse(os.path.exists(old.path))

    def test_stale_entry_does_not_overwrite_newer(self) -> None:
        """An entry older (by sequence) than the indexed copy is dropped
        with its file, and the newer copy stays indexed and on disk, although
        the older one's wall-clock time is later (a clock stepped back)."""
        stale = self.rec("a", series="1.1", received_at=3000.0, sequence=1)
        self.journal.append(stale)
        newer = self.rec("a", series="1.2", received_at=2000.0, sequence=2)
        self.successResultOf(self.index.record(newer))
        self.successResultOf(self.replayer.replay_now())
        self.assertEqual(self.index.entries["a"]["path"], newer.path)
        self.assertTrue(os.path.exists(newer.path))
        self.assertFalse(os.path.exists(stale.path))
        self.assertEqual(self.journal.entries(), [])

    def test_entry_without_file_dropped(self) -> None:
        """An entry whose file was deleted is dropped, not indexed."""
        rec = self.rec("a")
        os.unlink(rec.path)
        self.journal.append(rec)
        self.assertEqual(self.successResultOf(self.replayer.replay_now()), 0)
        self.assertEqual(self.index.recorded, [])
        self.assertEqual(self.journal.entries(), [])


class ReplayWithRedisTests(unittest.TestCase):
    """The whole story against a real redis-server."""

    async def test_redis_down_journal_then_replay(self) -> None:
        """Redis stops: record fails, the record goes to the journal; Redis
        comes back: replay_now indexes it and empties the journal."""
        server = start_redis(self)
        redis = connect(self, server)
        index = RedisIndex(redis, reactor, key_prefix="j:", timeout=0.3)
        root = os.path.abspath(self.mktemp())
        journal = PendingJournal(os.path.join(root, "pending"))
        replayer = JournalReplayer(journal, index, reactor)
        rec = make_record(path=touch(os.path.join(root, "a.dcm")))

        server.stop()
        await sleep(0.05)
        with self.assertRaises(IndexUnavailable):
            await index.record(rec)
        journal.append(rec)
        self.assertEqual(await replayer.replay_now(), 0)

        server.start()
        await wait_connected(redis)
        self.assertEqual(await replayer.replay_now(), 1)
        self.assertEqual(journal.entries(), [])
        self.assertEqual((await index.get(rec.sop_instance_uid))["path"], rec.path)


class ReplayerFaultTests(ReplayerTestBase):
    """The replayer cannot die, and a bad entry blocks no other (issue 11,
    finding 4); faults caused on the real file system."""

    def test_loop_survives_emfile(self) -> None:
        """With the descriptor limit reached, the round's directory scan
        fails with EMFILE: the failure is logged, the loop keeps ticking,
        and once descriptors are free again the next tick indexes."""
        import errno
        import resource

        self.journal.append(self.rec("a"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.dup(0)          # the kernel hands out the lowest free
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            self.replayer.startService()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        (failure,) = self.flushLoggedErrors(OSError)
        self.assertEqual(failure.value.errno, errno.EMFILE)
        self.assertEqual(self.index.recorded, [])
        self.clock.advance(5)
        self.assertEqual(self.index.recorded, ["a"])
        self.successResultOf(self.replayer.stopService())

    def test_failing_entry_skipped_then_quarantined(self) -> None:
        """An entry that cannot be opened (a directory where the file should
        be: EISDIR) does not hold back the entries after it; after three
        rounds it is in pending/quarantine/, listed by 'sdcc-admin
        quarantine', and '--retry' puts it back in the journal."""
        import io

        from sdcc_twisted import admin

        bad = "00000000000000000000-1-00000000.json"
        os.makedirs(os.path.join(self.journal.directory, bad))
        self.journal.append(self.rec("a"))
        self.journal.append(self.rec("b"))
        self.assertEqual(self.successResultOf(self.replayer.replay_now()), 2)
        self.assertEqual(self.index.recorded, ["a", "b"])
        self.assertEqual(self.journal.names(), [bad])
        self.successResultOf(self.replayer.replay_now())
        self.assertEqual(self.journal.names(), [bad])
        self.successResultOf(self.replayer.replay_now())
        self.assertEqual(self.journal.names(), [])
        self.assertEqual(os.listdir(self.journal.quarantine_dir), [bad])

        out, err = io.StringIO(), io.StringIO()
        node_dir = os.path.dirname(self.journal.directory)
        self.assertEqual(admin.main(["quarantine", "--node-dir", node_dir], out, err), 0)
        self.assertIn(bad, out.getvalue())
        self.assertIn("1 quarantined", out.getvalue())
        self.assertEqual(admin.main(["quarantine", "--node-dir", node_dir, "--retry"],
                                    out, err), 0)
        self.assertEqual(self.journal.names(), [bad])
        self.assertEqual(os.listdir(self.journal.quarantine_dir), [])

    def test_reads_in_bounded_batches(self) -> None:
        """A backlog larger than a batch is read batch by batch (each read
        bounded by REPLAY_BATCH) and all of it is indexed in one round."""
        from sdcc_twisted.storage import journal as journal_module

        self.patch(journal_module, "REPLAY_BATCH", 4)
        reads: list[int] = []
        self.replayer.run_blocking = lambda fn, *a: defer.maybeDeferred(fn, *a).addCallback(
            lambda r: reads.append(len(r)) or r if fn == self.journal.batch else r)
        for n in range(10):
            self.journal.append(self.rec(f"s{n}"))
        self.assertEqual(self.successResultOf(self.replayer.replay_now()), 10)
        self.assertEqual(reads, [4, 4, 2])
        self.assertEqual(self.journal.names(), [])
