"""Versions of one SOP Instance UID are ordered by the server's sequence,
never by the clock (issue 11, finding 2): the index keeps the newest, and an
older copy never replaces it or deletes its file.  The two reported races run
100 times each against the real server, Redis and pynetdicom."""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from sdcc_twisted.core import conformance as c
from sdcc_twisted.storage.index import RedisIndex
from sdcc_twisted.storage.journal import JournalReplayer
from sdcc_twisted.storage.sequence import SequenceSource

from . import corpus
from .redis_support import connect, start_redis, wait_connected, wait_for
from .server_support import in_thread, start_server
from .test_index import make_record
from .test_interop_store import PREFIX, pynetdicom_store

CT = "1.2.840.10008.5.1.4.1.1.2"
CONTEXTS = [(CT, [c.EXPLICIT_VR_LITTLE_ENDIAN])]
RUNS = 100


def copy_of(sop: str, study: str, series: str, number: int) -> Any:
    """A small CT data set; InstanceNumber tells the copies apart."""
    return corpus.small_dataset(CT, sop_instance=sop, study=study, series=series,
                                number=number)


def stored_number(path: str) -> int:
    """The InstanceNumber of a stored file."""
    from pydicom import dcmread

    return int(dcmread(path, stop_before_pixels=True).InstanceNumber)


def path_of(root: str, ds: Any) -> str:
    return os.path.join(root, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                        str(ds.SOPInstanceUID) + ".dcm")


class SequenceSourceTests(unittest.TestCase):
    """SequenceSource on a real directory."""

    def test_with_a_clock_nodes_rank_by_arrival_and_steps_back_do_not_reorder(self) -> None:
        """Two nodes' sources on one clock: a copy that arrives later ranks
        higher whichever node took it, even if the other node handed out far
        more numbers; a clock stepping back keeps one node's numbers rising,
        and a restart continues above them."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        clock = [1000.0]
        busy = SequenceSource(os.path.join(folder, "a"), now=lambda: clock[0])
        quiet = SequenceSource(os.path.join(folder, "b"), now=lambda: clock[0])
        for _ in range(10000):
            busy_last = busy.next()
        clock[0] += 0.5
        later = quiet.next()
        self.assertGreater(later, busy_last)
        clock[0] -= 3600.0              # the wall clock steps back an hour
        after_step = busy.next()
        self.assertGreater(after_step, busy_last)
        restarted = SequenceSource(os.path.join(folder, "a"), now=lambda: clock[0])
        self.assertGreater(restarted.next(), after_step)

    def test_monotonic_across_restarts_and_blocks(self) -> None:
        """Numbers rise by one within a block, into the next block, and a new
        source on the same file (a restart, even after a crash that used
        only part of a block) starts above every number handed out."""
        path = os.path.join(os.path.abspath(self.mktemp()))
        first = SequenceSource(path, block=3)
        taken = [first.next() for _ in range(5)]
        self.assertEqual(taken, [1, 2, 3, 4, 5])
        second = SequenceSource(path, block=3)
        self.assertGreater(second.next(), 5)

    def test_garbage_file_is_an_error(self) -> None:
        """A sequence file that holds no number is refused, not reset."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="ascii") as handle:
            handle.write("twelve\n")
        with self.assertRaises(ValueError):
            SequenceSource(path)


class ConditionalRecordTests(unittest.TestCase):
    """RedisIndex.record against a real redis-server: by sequence."""

    def setUp(self) -> None:
        self.server = start_redis(self)
        self.redis = connect(self, self.server)
        self.index = RedisIndex(self.redis, reactor, key_prefix="t:", timeout=2)
        self.client = self.server.client()

    async def test_older_copy_elsewhere_is_not_indexed(self) -> None:
        """A record with a lower sequence, in another study (the transaction
        path), leaves the newer entry and its relations as they were and
        hands back its own path for deletion."""
        newer = make_record("1", "20", "2", sequence=7, received_at=1.0)
        older = make_record("1", "10", "1", sequence=3, received_at=9.0)
        self.assertIsNone(await self.index.record(newer))
        self.assertEqual(await self.index.record(older), older.path)
        self.assertEqual(self.client.hget("t:instance:1", "path"), newer.path)
        self.assertEqual(self.client.hget("t:instance:1", "sequence"), "7")
        self.assertFalse(self.client.exists("t:study:1"))
        self.assertEqual(self.client.smembers("t:series_instances:20"), {"1"})

    async def test_older_copy_same_place_is_not_indexed(self) -> None:
        """A record with a lower sequence at the same place (the one-script
        path) is not written; its path is the newer one's, so nothing is
        handed back for deletion."""
        newer = make_record("1", sequence=7, InstanceNumber="2")
        older = make_record("1", sequence=3, InstanceNumber="1")
        await self.index.record(newer)
        self.assertIsNone(await self.index.record(older))
        self.assertEqual(self.client.hget("t:instance:1", "InstanceNumber"), "2")

    async def test_newer_copy_replaces(self) -> None:
        """A higher sequence replaces the entry and hands back the old path."""
        older = make_record("1", "10", "1", sequence=3)
        newer = make_record("1", "20", "2", sequence=7)
        await self.index.record(older)
        self.assertEqual(await self.index.record(newer), older.path)
        self.assertEqual(self.client.hget("t:instance:1", "path"), newer.path)


class RaceTests(unittest.TestCase):
    """The two races of the issue, 100 times each, on the running server.

    Redis is held with SIGSTOP while the peer stores, so that the index
    writes behind the answers queue up and meet in Redis the way a busy
    index makes them meet; SIGCONT comes once the last store was answered.
    """

    timeout = 240

    def hold(self, redis: Any) -> Any:
        """SIGSTOP ``redis`` (by PID); the returned function sends SIGCONT,
        which the cleanup sends too."""
        pid = redis.pid

        def resume() -> None:
            os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(resume)
        return resume

    async def test_a1_b_a2_in_quick_succession(self) -> None:
        """For 100 SOP Instance UIDs one pynetdicom association stores A1
        (study 1), B (study 2), then A2 (study 1) back to back: every time the
        index ends on A2, A2's file is in place with A2's content, and B's
        file is gone."""
        redis = start_redis(self)
        server = await start_server(self, redis, index={"timeout": "20", "lock": "memory"})
        study1, study2 = corpus.new_uid(), corpus.new_uid()
        series1, series2 = corpus.new_uid(), corpus.new_uid()
        items = []
        finals = []
        for _ in range(RUNS):
            sop = corpus.new_uid()
            a1 = copy_of(sop, study1, series1, 1)
            b = copy_of(sop, study2, series2, 2)
            a2 = copy_of(sop, study1, series1, 3)
            items += [a1, b, a2]
            finals.append((a2, b))
        resume = self.hold(redis)
        result = await in_thread(pynetdicom_store, server.port, items, CONTEXTS, "RACE1",
                                 lambda n: n == len(items) and resume())
        self.assertEqual({s for s, _ in result["statuses"]}, {0}, result)
        client = redis.client()
        wrong = []
        for a2, b in finals:
            uid = str(a2.SOPInstanceUID)
            indexed = client.hget(f"{PREFIX}instance:{uid}", "path")
            a2_path, b_path = path_of(server.root, a2), path_of(server.root, b)
            if (indexed != a2_path or not os.path.exists(a2_path)
                    or stored_number(a2_path) != 3 or os.path.exists(b_path)):
                wrong.append((uid, indexed, os.path.exists(a2_path), os.path.exists(b_path)))
        self.assertEqual(wrong, [], f"{len(wrong)} of {RUNS} runs ended wrong")

    async def test_replay_of_older_entry_races_live_newer_store(self) -> None:
        """100 instances are stored in study 1 while Redis is down (their
        records go to the journal); once it is back, a replay round starts
        while newer copies of the same 100 go to study 2: every time the
        index ends on the study-2 copy, its file is in place, and the
        study-1 file is gone."""
        redis = start_redis(self)
        server = await start_server(self, redis, index={"timeout": "3", "lock": "memory"})
        replayer = next(s for s in server.service if isinstance(s, JournalReplayer))
        study1, study2 = corpus.new_uid(), corpus.new_uid()
        series1, series2 = corpus.new_uid(), corpus.new_uid()
        sops = [corpus.new_uid() for _ in range(RUNS)]
        old = [copy_of(sop, study1, series1, 1) for sop in sops]
        new = [copy_of(sop, study2, series2, 2) for sop in sops]
        redis.stop()
        result = await in_thread(pynetdicom_store, server.port, old, CONTEXTS, "RACE2")
        self.assertEqual({s for s, _ in result["statuses"]}, {0}, result)
        self.assertEqual(len(server.service.journal.names()), RUNS)
        redis.start()
        await wait_connected(server.service.connection.late)
        resume = self.hold(redis)
        replay = replayer.replay_now()
        result = await in_thread(pynetdicom_store, server.port, new, CONTEXTS, "RACE2",
                                 lambda n: n == len(new) and resume())
        await replay
        self.assertEqual({s for s, _ in result["statuses"]}, {0}, result)
        await wait_for(lambda: not server.service.journal.names(), 20, "the journal to empty")
        client = redis.client()
        wrong = []
        for before, after in zip(old, new):
            uid = str(after.SOPInstanceUID)
            indexed = client.hget(f"{PREFIX}instance:{uid}", "path")
            new_path, old_path = path_of(server.root, after), path_of(server.root, before)
            if indexed != new_path or not os.path.exists(new_path) or os.path.exists(old_path):
                wrong.append((uid, indexed, os.path.exists(new_path), os.path.exists(old_path)))
        self.assertEqual(wrong, [], f"{len(wrong)} of {RUNS} runs ended wrong")
