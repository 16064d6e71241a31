"""Tests for sdcc_twisted.storage.index and sdcc_twisted.core.index_keys (real redis-server)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from sdcc_twisted.core import index_keys
from sdcc_twisted.storage.index import (
    IInstanceIndex,
    IndexUnavailable,
    RedisAssociationLock,
    RedisIndex,
    connect_redis,
)
from sdcc_twisted.core.index_keys import NO_ID, KeyLayout, Placement
from sdcc_twisted.storage.locks import IAssociationLock
from sdcc_twisted.core.records import InstanceRecord

from .redis_support import connect, sleep, start_redis, wait_connected

CT = "1.2.840.10008.5.1.4.1.1.2"
EVRLE = "1.2.840.10008.1.2.1"


def make_record(sop: str = "1.2.3.1", series: str = "1.2.3", study: str = "1.2",
                patient: str = "P1", path: str | None = None,
                received_at: float = 1000.0, sequence: int = 0,
                **extra: str) -> InstanceRecord:
    attributes = {"SOPInstanceUID": sop, "SOPClassUID": CT,
                  "StudyInstanceUID": study, "SeriesInstanceUID": series,
                  "PatientID": patient, "PatientName": "Doe^Jane",
                  "StudyDate": "20240102", "Modality": "CT",
                  "InstanceNumber": "7"}
    attributes.update(extra)
    attributes = {k: v for k, v in attributes.items() if v is not None}
    return InstanceRecord(
        sop_instance_uid=sop, sop_class_uid=CT, transfer_syntax=EVRLE,
        path=path or f"/store/{study}/{series}/{sop}.dcm", size=1234,
        received_at=received_at, calling_ae="MODALITY", attributes=attributes,
        sequence=sequence)


class _Never:
    """A txredisapi stand-in whose every call waits forever."""

    def __init__(self) -> None:
        self.factory = self
        self.calls: list[str] = []

    def getConnection(self, peek: bool = False) -> defer.Deferred[Any]:
        self.calls.append("getConnection")
        return defer.Deferred()

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            self.calls.append(name)
            return defer.Deferred()
        return call


class _HeldScripts:
    """A txredisapi stand-in whose script calls wait until the test answers
    them: ``calls`` holds (KEYS, Deferred) of each."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], defer.Deferred[Any]]] = []

    def eval(self, script: str, keys: list[str], args: list[str]) -> Any:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((keys, d))
        return d


class _NotConnected:
    """Like service.LateRedis before the connection exists: every attribute
    raises txredisapi.ConnectionError at once."""

    def __getattr__(self, name: str) -> Any:
        import txredisapi
        raise txredisapi.ConnectionError("Redis is not connected yet")


class _StuckConnection:
    """A pooled connection that never answers WATCH."""

    connected = 1

    def __init__(self) -> None:
        self.aborted = False
        self.transport = self

    def abortConnection(self) -> None:
        self.aborted = True

    def watch(self, keys: Any) -> defer.Deferred[Any]:
        return defer.Deferred()


class KeyLayoutTests(unittest.SynchronousTestCase):
    """The pure record -> keys mapping shared by RedisIndex and sdcc-admin."""

    def test_keys_of_a_record(self) -> None:
        """record_commands writes the four hashes and the four relation sets."""
        layout = KeyLayout("p:")
        cmds = index_keys.record_commands(layout, make_record())
        keys = {c[1] for c in cmds}
        self.assertEqual(keys, {
            "p:instance:1.2.3.1", "p:series:1.2.3", "p:study:1.2",
            "p:patient:P1", "p:patients", "p:patient_studies:P1",
            "p:study_series:1.2", "p:series_instances:1.2.3"})
        self.assertEqual(cmds[0], ("DEL", "p:instance:1.2.3.1"))

    def test_level_fields(self) -> None:
        """Each hash holds its level's attributes plus the link to its parent."""
        rec = make_record()
        self.assertEqual(index_keys.series_fields(rec),
                         {"SeriesInstanceUID": "1.2.3", "Modality": "CT",
                          "study_uid": "1.2"})
        self.assertEqual(index_keys.study_fields(rec)["patient_id"], "P1")
        self.assertEqual(index_keys.patient_fields(rec),
                         {"PatientID": "P1", "PatientName": "Doe^Jane"})
        fields = index_keys.instance_fields(rec)
        self.assertEqual(fields["InstanceNumber"], "7")
        self.assertEqual(fields["received_at"], "1000.0")
        self.assertNotIn("StudyDate", fields)

    def test_empty_patient_id_placeholder(self) -> None:
        """An empty Patient ID is keyed as NO_ID; the raw value stays empty."""
        rec = make_record(patient="")
        self.assertEqual(Placement.of_record(rec).patient, NO_ID)
        cmds = index_keys.record_commands(KeyLayout(), rec)
        self.assertIn(("SADD", "sdcc:patients", NO_ID), cmds)
        self.assertEqual(index_keys.patient_fields(rec)["PatientID"], "")

    def test_ids_with_colons_do_not_collide(self) -> None:
        """A Patient ID that ends like another key kind still gets its own key."""
        layout = KeyLayout()
        a = {c[1] for c in index_keys.record_commands(
            layout, make_record(patient="P1"))}
        b = {c[1] for c in index_keys.record_commands(
            layout, make_record(sop="9", patient="P1:studies"))}
        self.assertNotIn(layout.patient("P1:studies"), a)
        self.assertEqual(a & b, {layout.patients(), layout.series("1.2.3"),
                                 layout.study("1.2"),
                                 layout.study_series("1.2"),
                                 layout.series_instances("1.2.3")})

    def test_no_detach_when_nothing_moves(self) -> None:
        """Re-recording in the same place probes nothing and detaches nothing."""
        at = Placement("P", "S", "R")
        self.assertEqual(index_keys.detach_probes(KeyLayout(), "I", at, at), [])

    def test_detach_into_sibling_series(self) -> None:
        """Moving to another series of the same study deletes the emptied
        series but keeps the study and the patient."""
        layout = KeyLayout("x:")
        old, new = Placement("P", "S", "R1"), Placement("P", "S", "R2")
        others = {layout.series_instances("R1"): 0, layout.study_series("S"): 0,
                  layout.patient_studies("P"): 0}
        cmds = index_keys.detach_commands(layout, "I", old, new, others)
        self.assertEqual(cmds, [
            ("SREM", "x:series_instances:R1", "I"),
            ("DEL", "x:series:R1"), ("DEL", "x:series_instances:R1"),
            ("SREM", "x:study_series:S", "R1")])

    def test_glob_prefix_escaped(self) -> None:
        """SCAN patterns escape glob characters of the prefix."""
        self.assertEqual(KeyLayout("a*[b]:").all_keys_pattern(), "a\\*\\[b\\]:*")


class TimeoutTests(unittest.TestCase):
    """Deadlines on an injected clock, no server needed."""

    def test_interfaces(self) -> None:
        """RedisIndex and RedisAssociationLock provide their interfaces."""
        clock = task.Clock()
        self.assertTrue(verifyObject(IInstanceIndex, RedisIndex(_Never(), clock)))
        self.assertTrue(verifyObject(
            IAssociationLock, RedisAssociationLock(_Never(), clock)))

    def test_record_times_out(self) -> None:
        """A record that gets no connection fails with IndexUnavailable at the
        deadline, not before."""
        clock = task.Clock()
        idx = RedisIndex(_Never(), clock, timeout=2.0)
        d = idx.record(make_record())
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        failure = self.failureResultOf(d, IndexUnavailable)
        self.assertIn("did not answer within 2 s", str(failure.value))

    def test_get_and_lock_time_out(self) -> None:
        """get, remove and acquire are bounded the same way."""
        clock = task.Clock()
        redis = _Never()
        ds = [RedisIndex(redis, clock, timeout=1).get("1"),
              RedisIndex(redis, clock, timeout=1).remove("1"),
              RedisAssociationLock(redis, clock, timeout=1).acquire("AE")]
        clock.advance(1)
        for d in ds:
            self.failureResultOf(d, IndexUnavailable)

    def test_timeout_inside_transaction_drops_connection(self) -> None:
        """A deadline that strikes while a pooled connection is in a
        transaction aborts that connection so it cannot stay stuck."""
        clock = task.Clock()
        conn = _StuckConnection()
        redis = _Never()
        redis.getConnection = lambda peek=False: defer.succeed(conn)
        # record() moves and remove() run a WATCHed transaction on a
        # connection of their own; remove() always does.
        d = RedisIndex(redis, clock, timeout=1).remove("1.2.3")
        self.assertFalse(conn.aborted)
        clock.advance(1)
        self.failureResultOf(d, IndexUnavailable)
        self.assertTrue(conn.aborted)

    def test_handler_that_raises_at_once(self) -> None:
        """A handler that raises instead of returning a Deferred still gives
        IndexUnavailable failures, and release still succeeds."""
        clock = task.Clock()
        redis = _NotConnected()
        idx = RedisIndex(redis, clock)
        for d in (idx.record(make_record()), idx.get("1"), idx.remove("1"),
                  RedisAssociationLock(redis, clock).acquire("AE")):
            failure = self.failureResultOf(d, IndexUnavailable)
            self.assertIn("not connected yet", str(failure.value))
        lock = RedisAssociationLock(redis, clock)
        self.assertIsNone(self.successResultOf(lock.release("AE", "token")))
        self.flushLoggedErrors()

    def test_batch_waits_and_bad_reply(self) -> None:
        """Records that come while a script call is on its way wait for it
        and go together in the next call; a reply that is not one answer per
        record fails those records with IndexUnavailable, and the records
        after them are still sent."""
        clock = task.Clock()
        handler = _HeldScripts()
        calls = handler.calls

        idx = RedisIndex(handler, clock, key_prefix="t:")
        first = idx.record(make_record(sop="1"))
        waiting = [idx.record(make_record(sop=s)) for s in ("2", "3")]
        self.assertEqual([keys for keys, _ in calls], [["t:instance:1"]])
        calls[0][1].callback('[["done", ""]]')
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(calls[1][0], ["t:instance:2", "t:instance:3"])
        later = idx.record(make_record(sop="4"))
        calls[1][1].callback('[["done", ""]]')      # one answer for two records
        for d in waiting:
            failure = self.failureResultOf(d, IndexUnavailable)
            self.assertIn("1 answers for 2 records", str(failure.value))
        self.assertEqual(calls[2][0], ["t:instance:4"])
        calls[2][1].callback('[["done", "/store/old.dcm"]]')
        self.assertEqual(self.successResultOf(later), "/store/old.dcm")

    def test_deadline_while_the_batch_is_on_its_way(self) -> None:
        """A record whose deadline passes while its script call is on its
        way fails with IndexUnavailable; the late reply is ignored for it,
        and the records queued behind go out next."""
        clock = task.Clock()
        handler = _HeldScripts()
        calls = handler.calls

        idx = RedisIndex(handler, clock, key_prefix="t:", timeout=2.0)
        first = idx.record(make_record(sop="1"))
        clock.advance(1.5)
        second = idx.record(make_record(sop="2"))
        clock.advance(0.6)
        self.failureResultOf(first, IndexUnavailable)
        self.assertNoResult(second)
        # the call itself is bounded too: it failed with its record, so the
        # queued one goes out now
        self.assertEqual([keys for keys, _ in calls], [["t:instance:1"], ["t:instance:2"]])
        calls[0][1].callback('[["done", ""]]')            # too late: ignored
        calls[1][1].callback('[["done", ""]]')
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_batch_that_cannot_be_built(self) -> None:
        """If the script call cannot even be made, that batch fails and the
        index keeps sending the next ones."""
        clock = task.Clock()
        sent: list[list[str]] = []

        class Handler:
            broken = True

            def eval(self, script: str, keys: list[str], args: list[str]) -> Any:
                if Handler.broken:
                    Handler.broken = False
                    raise RuntimeError("client bug")
                sent.append(keys)
                return defer.succeed('[["done", ""]]')

        idx = RedisIndex(Handler(), clock, key_prefix="t:")
        self.failureResultOf(idx.record(make_record(sop="1")), RuntimeError)
        self.assertIsNone(self.successResultOf(idx.record(make_record(sop="2"))))
        self.assertEqual(sent, [["t:instance:2"]])

    def test_move_is_bounded(self) -> None:
        """An instance that moves takes the transaction path under its own
        deadline: with no connection to be had, the record fails at the
        deadline and the move gives up too, leaving no timer behind."""
        clock = task.Clock()

        given_up: list[str] = []

        class Handler(_Never):
            def eval(self, script: str, keys: list[str], args: list[str]) -> Any:
                return defer.succeed('[["moved", ""]]')

            def getConnection(self, peek: bool = False) -> defer.Deferred[Any]:
                return defer.Deferred(lambda _: given_up.append("connection"))

        idx = RedisIndex(Handler(), clock, key_prefix="t:", timeout=1.0)
        d = idx.record(make_record(sop="1"))
        clock.advance(1.0)
        self.failureResultOf(d, IndexUnavailable)
        self.assertEqual(given_up, ["connection"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bad_lock_parameters(self) -> None:
        """The refresh period must be shorter than the ttl."""
        self.assertRaises(ValueError, RedisAssociationLock, _Never(),
                          task.Clock(), ttl=1, refresh=1)

    def test_bad_urls(self) -> None:
        """connect_redis rejects URLs it cannot use, saying which forms work."""
        for url in ("http://x", "redis://h:99999999/0", "redis://h/x",
                    "unix://", "unix:///tmp/s?db=-1"):
            self.assertRaises(ValueError, connect_redis, url, reactor)


class RedisIndexTests(unittest.TestCase):
    """RedisIndex against a real redis-server."""

    def setUp(self) -> None:
        self.server = start_redis(self)
        self.redis = connect(self, self.server)
        self.index = RedisIndex(self.redis, reactor, key_prefix="t:", timeout=2)
        self.client = self.server.client()
        self.addCleanup(self.client.close)

    def keys(self, pattern: str = "t:*") -> list[str]:
        return sorted(self.client.keys(pattern))

    async def test_round_trip(self) -> None:
        """record then get returns every field; a first record returns None."""
        rec = make_record()
        self.assertIsNone(await self.index.record(rec))
        fields = await self.index.get(rec.sop_instance_uid)
        self.assertEqual(fields, index_keys.instance_fields(rec))
        self.assertEqual(self.client.hgetall("t:series:1.2.3"),
                         index_keys.series_fields(rec))
        self.assertEqual(self.client.hgetall("t:study:1.2")["StudyDate"],
                         "20240102")
        self.assertEqual(self.client.hgetall("t:patient:P1")["PatientName"],
                         "Doe^Jane")

    def _script_calls(self) -> int:
        """EVAL and EVALSHA calls the server has run so far."""
        stats = self.client.info("commandstats")
        return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0)
                   for name in ("eval", "evalsha"))

    async def test_records_arriving_together_share_one_script_call(self) -> None:
        """Records that come while one is on its way go to Redis together:
        twenty records cost at most two script calls (one, when they come
        while the previous record's answer is being handed out), each
        record's Deferred gets its
        own answer (the old path of an overwritten instance), and an
        instance that moves in the same batch still moves."""
        await self.index.record(make_record(sop="9", series="1.2.3", path="/old/9.dcm"))
        await self.index.record(make_record(sop="8", series="1.2.3"))
        before = self._script_calls()
        records = [make_record(sop=f"5.{k}") for k in range(18)]
        records.append(make_record(sop="9", series="1.2.3", path="/new/9.dcm"))
        records.append(make_record(sop="8", series="1.2.7"))     # moves
        answers = await defer.gatherResults([self.index.record(r) for r in records])
        self.assertIn(self._script_calls() - before, (1, 2))
        self.assertEqual(answers[:18], [None] * 18)
        self.assertEqual(answers[18:], ["/old/9.dcm", "/store/1.2/1.2.3/8.dcm"])
        self.assertEqual(self.client.smembers("t:series_instances:1.2.3"),
                         {f"5.{k}" for k in range(18)} | {"9"})
        self.assertEqual(self.client.smembers("t:series_instances:1.2.7"), {"8"})
        self.assertEqual((await self.index.get("9"))["path"], "/new/9.dcm")

    async def test_non_ascii_values(self) -> None:
        """Non-ASCII names and ids round-trip through the one-trip record
        script unchanged."""
        rec = make_record(patient="ÄÖ-ü1", PatientName="Müller^Hans=山田^太郎")
        await self.index.record(rec)
        self.assertEqual(self.client.hgetall("t:patient:ÄÖ-ü1")["PatientName"],
                         "Müller^Hans=山田^太郎")
        self.assertEqual((await self.index.get(rec.sop_instance_uid))["patient_id"], "ÄÖ-ü1")

    async def test_values_stay_text(self) -> None:
        """Numeric-looking values (dates, ids) come back as the same text."""
        rec = make_record(patient="007", StudyDate="20240102")
        await self.index.record(rec)
        fields = await self.index.get(rec.sop_instance_uid)
        self.assertEqual(fields["patient_id"], "007")
        self.assertEqual(fields["size"], "1234")

    async def test_get_unknown(self) -> None:
        """get of an unindexed UID fires with None."""
        self.assertIsNone(await self.index.get("9.9.9"))

    async def test_same_path_again(self) -> None:
        """Recording the same instance at the same path returns None and keeps
        one entry."""
        rec = make_record()
        await self.index.record(rec)
        self.assertIsNone(await self.index.record(rec))
        self.assertEqual(self.client.smembers("t:series_instances:1.2.3"),
                         {"1.2.3.1"})

    async def test_rerecord_in_another_series(self) -> None:
        """Re-recording under another series returns the old path, moves the
        instance and deletes the emptied series; exactly one entry remains."""
        first = make_record(series="1.2.3")
        await self.index.record(first)
        moved = make_record(series="1.2.4")
        self.assertEqual(await self.index.record(moved), first.path)
        self.assertEqual((await self.index.get("1.2.3.1"))["path"], moved.path)
        self.assertEqual(self.keys("t:series_instances:*"),
                         ["t:series_instances:1.2.4"])
        self.assertEqual(self.keys("t:series:*"), ["t:series:1.2.4"])
        self.assertEqual(self.client.smembers("t:study_series:1.2"), {"1.2.4"})

    async def test_rerecord_in_another_study_and_patient(self) -> None:
        """Moving to another study and patient deletes the emptied study and
        patient and their set entries."""
        await self.index.record(make_record(study="1.2", patient="P1"))
        await self.index.record(make_record(study="1.5", series="1.5.1",
                                            patient="P2"))
        self.assertEqual(self.client.smembers("t:patients"), {"P2"})
        self.assertEqual(self.keys("t:study:*"), ["t:study:1.5"])
        self.assertEqual(self.keys("t:patient:*"), ["t:patient:P2"])
        self.assertEqual(self.keys("t:patient_studies:*"),
                         ["t:patient_studies:P2"])

    async def test_move_keeps_nonempty_parents(self) -> None:
        """A series that still has other instances stays when one moves out."""
        await self.index.record(make_record(sop="1"))
        await self.index.record(make_record(sop="2"))
        await self.index.record(make_record(sop="2", series="1.2.9"))
        self.assertEqual(self.client.smembers("t:series_instances:1.2.3"), {"1"})
        self.assertEqual(self.client.smembers("t:series_instances:1.2.9"), {"2"})
        self.assertEqual(self.client.smembers("t:study_series:1.2"),
                         {"1.2.3", "1.2.9"})

    async def test_relation_sets(self) -> None:
        """patients, patient_studies, study_series and series_instances form
        the tree of what was recorded."""
        for sop, series, study, patient in [
                ("1", "10", "100", "A"), ("2", "10", "100", "A"),
                ("3", "11", "100", "A"), ("4", "12", "101", "A"),
                ("5", "13", "102", "")]:
            await self.index.record(make_record(sop, series, study, patient))
        c = self.client
        self.assertEqual(c.smembers("t:patients"), {"A", NO_ID})
        self.assertEqual(c.smembers("t:patient_studies:A"), {"100", "101"})
        self.assertEqual(c.smembers(f"t:patient_studies:{NO_ID}"), {"102"})
        self.assertEqual(c.smembers("t:study_series:100"), {"10", "11"})
        self.assertEqual(c.smembers("t:series_instances:10"), {"1", "2"})
        self.assertEqual(c.hget("t:study:102", "patient_id"), "")

    async def test_remove_cascades(self) -> None:
        """remove deletes the instance and every parent it leaves empty."""
        await self.index.record(make_record(sop="1"))
        await self.index.record(make_record(sop="2", series="1.2.8"))
        await self.index.remove("1")
        self.assertIsNone(await self.index.get("1"))
        self.assertEqual(self.client.smembers("t:study_series:1.2"), {"1.2.8"})
        await self.index.remove("2")
        self.assertEqual(self.keys(), [])
        await self.index.remove("2")  # gone already: fine

    async def test_concurrent_moves(self) -> None:
        """Many concurrent records and moves (two pools) end consistent."""
        other = RedisIndex(connect(self, self.server), reactor, key_prefix="t:")
        sops = [str(i) for i in range(30)]
        await defer.gatherResults(
            [(self.index if i % 2 else other).record(make_record(sop=s))
             for i, s in enumerate(sops)])
        await defer.gatherResults(
            [(other if i % 2 else self.index).record(
                make_record(sop=s, series="2.2", study="2", patient="Q"))
             for i, s in enumerate(sops)])
        self.assertEqual(self.client.smembers("t:series_instances:2.2"), set(sops))
        self.assertEqual(self.client.smembers("t:patients"), {"Q"})
        self.assertEqual(self.keys("t:series:*"), ["t:series:2.2"])
        self.assertEqual(self.keys("t:study:*"), ["t:study:2"])

    async def test_redis_down_then_back(self) -> None:
        """With Redis stopped record and get fail with IndexUnavailable within
        the timeout; once it is back they work again."""
        await self.index.record(make_record())
        self.server.stop()
        await sleep(0.05)  # let the pool notice the closed connections
        quick = RedisIndex(self.redis, reactor, key_prefix="t:", timeout=0.3)
        started = reactor.seconds()
        with self.assertRaises(IndexUnavailable):
            await quick.record(make_record(sop="2"))
        with self.assertRaises(IndexUnavailable):
            await quick.get("2")
        self.assertLess(reactor.seconds() - started, 2.0)
        self.server.start()
        await wait_connected(self.redis)
        self.assertIsNone(await quick.record(make_record(sop="2")))

    async def test_error_reply_in_exec(self) -> None:
        """A write Redis refuses inside EXEC (WRONGTYPE) fails the record with
        IndexUnavailable and leaves the pool usable."""
        self.client.set("t:series:1.2.3", "not a hash")
        with self.assertRaises(IndexUnavailable) as caught:
            await self.index.record(make_record())
        self.assertIn("WRONGTYPE", str(caught.exception))
        self.client.delete("t:series:1.2.3")
        for sop in "abc":
            await self.index.record(make_record(sop=sop))

    async def test_hung_redis_does_not_leak_connections(self) -> None:
        """Transactions that time out against a hung Redis (SIGSTOP) drop
        their connections; once it resumes, the pool serves again."""
        import os
        import signal

        quick = RedisIndex(self.redis, reactor, key_prefix="t:", timeout=0.2)
        await quick.record(make_record(sop="0"))
        os.kill(self.server.pid, signal.SIGSTOP)
        try:
            for sop in "abcd":  # more than the pool's 2 connections
                with self.assertRaises(IndexUnavailable):
                    await quick.record(make_record(sop=sop))
        finally:
            os.kill(self.server.pid, signal.SIGCONT)
        await wait_connected(self.redis)
        for sop in "abcd":
            await quick.record(make_record(sop=sop))
        self.assertEqual(len(self.client.smembers("t:series_instances:1.2.3")), 5)

    async def test_unix_url_with_db(self) -> None:
        """unix://...?db=N selects that database."""
        redis = connect_redis(self.server.url + "?db=3", reactor, poolsize=1)
        self.addCleanup(redis.disconnect)
        await RedisIndex(redis, reactor, key_prefix="t:").record(make_record())
        self.assertEqual(self.keys(), [])
        import redis as redis_py
        db3 = redis_py.Redis(unix_socket_path=self.server.socket_path, db=3,
                             decode_responses=True)
        self.addCleanup(db3.close)
        self.assertTrue(db3.exists("t:instance:1.2.3.1"))

    async def test_pool_built_from_public_txredisapi_parts(self) -> None:
        """connect_redis builds the pool from txredisapi's public RedisFactory
        and handler classes: the handler answers commands, and its public
        ``factory`` hands out a connection of our own (get, not peek) that
        goes back to the pool when its transaction ends.  This fails if a
        txredisapi upgrade changes RedisFactory, startConnecting or the
        handler's constructor."""
        import txredisapi

        from sdcc_twisted.storage.index import PoolHandler

        redis = connect_redis(self.server.url, reactor, poolsize=1)
        self.addCleanup(redis.disconnect)
        self.assertIsInstance(redis, PoolHandler)
        self.assertIsInstance(redis, txredisapi.ConnectionHandler)
        self.assertIsInstance(redis.factory, txredisapi.RedisFactory)
        self.assertEqual(await redis.ping(), "PONG")
        conn = await redis.factory.getConnection(peek=False)
        await conn.watch(["t:probe"])
        await conn.unwatch()
        self.assertEqual(await redis.ping(), "PONG")  # the one connection is back


class RedisLockTests(unittest.TestCase):
    """RedisAssociationLock against a real redis-server."""

    def setUp(self) -> None:
        self.server = start_redis(self)
        self.redis = connect(self, self.server)

    def lock(self, redis: Any = None, clock: Any = reactor,
             **kw: Any) -> RedisAssociationLock:
        lock = RedisAssociationLock(redis or self.redis, clock, key_prefix="t:",
                                    **kw)
        self.addCleanup(lock.release_all)
        return lock

    async def test_one_per_ae(self) -> None:
        """A second acquire for the same AE gets None; another AE gets a
        token; release frees the slot."""
        lock = self.lock()
        token = await lock.acquire("MODALITY")
        self.assertIsNotNone(token)
        self.assertIsNone(await lock.acquire("MODALITY"))
        self.assertIsNotNone(await lock.acquire("OTHER"))
        await lock.release("MODALITY", token)
        self.assertIsNotNone(await lock.acquire("MODALITY"))

    async def test_two_processes_share_the_rule(self) -> None:
        """Two locks on two connection pools (two nodes) allow one holder."""
        a = self.lock()
        b = self.lock(connect(self, self.server))
        token = await a.acquire("CT1")
        self.assertIsNotNone(token)
        self.assertIsNone(await b.acquire("CT1"))
        await a.release("CT1", token)
        self.assertIsNotNone(await b.acquire("CT1"))

    async def test_expires_when_not_refreshed(self) -> None:
        """A holder that stops refreshing (a crashed node) loses the slot
        after ttl, and its late release does not free the new holder's."""
        dead_clock = task.Clock()  # its refresh loop never runs
        crashed = self.lock(clock=dead_clock, ttl=0.3, refresh=0.1)
        alive = self.lock(connect(self, self.server))
        old_token = await crashed.acquire("US")
        self.assertIsNone(await alive.acquire("US"))
        await sleep(0.45)
        new_token = await alive.acquire("US")
        self.assertIsNotNone(new_token)
        await crashed.release("US", old_token)
        self.assertIsNone(await crashed.acquire("US"))

    async def test_refresh_keeps_it(self) -> None:
        """While held, the lock is renewed past its ttl."""
        holder = self.lock(ttl=0.3, refresh=0.1)
        other = self.lock(connect(self, self.server))
        token = await holder.acquire("MR")
        await sleep(0.8)
        self.assertIsNone(await other.acquire("MR"))
        self.assertEqual(holder.held(), frozenset({"MR"}))
        await holder.release("MR", token)
        self.assertEqual(holder.held(), frozenset())
        self.assertIsNotNone(await other.acquire("MR"))

    async def test_missing_key_is_taken_again(self) -> None:
        """A refresh that finds the key gone (a Sentinel failover that lost
        it) sets it again with our token: the slot stays ours."""
        clock = task.Clock()
        holder = self.lock(clock=clock, ttl=5, refresh=1)
        token = await holder.acquire("NM")
        client = self.server.client()
        self.assertEqual(client.delete("t:lock:ae:NM"), 1)
        clock.advance(1)
        for _ in range(100):
            if client.get("t:lock:ae:NM"):
                break
            await sleep(0.01)
        self.assertEqual(client.get("t:lock:ae:NM"), token)
        self.assertGreater(client.pttl("t:lock:ae:NM"), 0)
        self.assertEqual(holder.held(), frozenset({"NM"}))
        self.assertIsNone(await self.lock(connect(self, self.server)).acquire("NM"))

    async def test_lost_lock_stops_refreshing(self) -> None:
        """A refresh that finds another token stops renewing and forgets it."""
        clock = task.Clock()
        holder = self.lock(clock=clock, ttl=0.2, refresh=0.1)
        await holder.acquire("XA")
        await sleep(0.3)
        other = self.lock(connect(self, self.server))
        self.assertIsNotNone(await other.acquire("XA"))
        clock.advance(0.1)
        for _ in range(100):
            if not holder.held():
                break
            await sleep(0.01)
        self.assertEqual(holder.held(), frozenset())
        self.assertIsNone(await holder.acquire("XA"))

    async def test_acquire_fails_when_redis_down(self) -> None:
        """With Redis stopped acquire fails with IndexUnavailable (the caller
        falls back), and release does not fail."""
        lock = self.lock(timeout=0.3)
        token = await lock.acquire("AE1")
        self.server.stop()
        await sleep(0.05)
        with self.assertRaises(IndexUnavailable):
            await lock.acquire("AE2")
        self.assertIsNone(await lock.release("AE1", token))


class KeyIdTests(unittest.SynchronousTestCase):
    """Index key ids are one to one (issue 11, finding 9)."""

    def test_no_two_values_share_an_id(self) -> None:
        """The empty value, the two-valued Patient ID '\\none', values that
        start with one or two backslashes and plain ones all get distinct
        ids, and raw_id gives each value back."""
        from sdcc_twisted.core.index_keys import key_id, raw_id

        values = ["", NO_ID, "\\" + NO_ID, "\\", "\\\\", "none", "P1", "a\\b", "\\P1"]
        ids = [key_id(v) for v in values]
        self.assertEqual(len(set(ids)), len(values), ids)
        self.assertEqual([raw_id(i) for i in ids], values)
        self.assertEqual(key_id(""), NO_ID)
        self.assertEqual(key_id("P1"), "P1")


class KeyCollisionTests(unittest.TestCase):
    """Against a real redis-server: a Patient ID cannot take over another's."""

    def setUp(self) -> None:
        self.server = start_redis(self)
        self.redis = connect(self, self.server)
        self.index = RedisIndex(self.redis, reactor, key_prefix="t:", timeout=2)
        self.client = self.server.client()

    async def test_backslash_none_is_not_the_empty_patient(self) -> None:
        """A peer's Patient ID '\\none' (two values) makes its own patient
        entry: the patient without an ID keeps its name, both are listed by
        the catalog with their values as received, and each has its study."""
        from sdcc_twisted.storage.catalog import RedisCatalog

        await self.index.record(make_record("1", "10", "100", "", PatientName="Empty^Id"))
        await self.index.record(make_record("2", "11", "101", NO_ID, PatientName="Intruder"))
        self.assertEqual(self.client.hget(f"t:patient:{NO_ID}", "PatientName"), "Empty^Id")
        self.assertEqual(self.client.hget(f"t:patient:\\{NO_ID}", "PatientName"), "Intruder")
        catalog = RedisCatalog(self.redis, reactor, key_prefix="t:", timeout=2)
        async def members(level: str, parent: str | None) -> list[str]:
            return sorted([value async for value in catalog.members(level, parent)])
        self.assertEqual(await members("PATIENT", None), ["", NO_ID])
        self.assertEqual(await members("STUDY", ""), ["100"])
        self.assertEqual(await members("STUDY", NO_ID), ["101"])
        self.assertEqual((await catalog.attributes("PATIENT", NO_ID))["PatientName"],
                         "Intruder")
        # the attach script places it where key_id does: storing it again
        # is no move
        from sdcc_twisted.core.index_keys import (
            ATTACH_SCRIPT,
            attach_script_answers,
            attach_script_args,
        )

        keys, args = attach_script_args(KeyLayout("t:"), [make_record("2", "11", "101", NO_ID)])
        reply = self.client.eval(ATTACH_SCRIPT, len(keys), *keys, *args)
        self.assertEqual([outcome for outcome, _ in attach_script_answers(reply)], ["done"])
        self.assertEqual(self.client.smembers("t:patients"), {NO_ID, "\\" + NO_ID})
