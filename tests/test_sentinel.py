"""Redis Sentinel: the ``redis+sentinel://`` setting, records and AE locks
confirmed by a replica, and a real failover under ingest.

Everything runs on loopback against real redis-server and redis-sentinel
processes (``tests/sentinel_support.py``); the failover test drives two
``twistd sdcc`` nodes with DCMTK storescu and kills the primary with SIGKILL.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sdcc_twisted.config import ConfigError, SentinelTarget, parse_sentinel_url, parse_settings
from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.storage.index import (
    IndexUnavailable,
    NotReplicated,
    RedisAssociationLock,
    RedisIndex,
)
from sdcc_twisted.storage.sentinel import ReplicatedIndex, ReplicatedLock, SentinelRedis

from . import corpus
from .redis_support import wait_for
from .sentinel_support import SentinelSet
from .server_support import TwistdServer, dcmtk, free_port, in_thread, ini_text
from .test_interop_faults import CT
from .test_interop_store import PREFIX, check_stored, instance_keys, storescu_successes


class SentinelUrlTests(SynchronousTestCase):
    """``[index] redis = redis+sentinel://host:port[,host:port...]/service?db=N``."""

    def test_parsed(self) -> None:
        """Sentinel addresses, service, database and password are read."""
        self.assertEqual(
            parse_sentinel_url("redis+sentinel://10.0.0.1:26379,s2:26380/pacs?db=3"),
            SentinelTarget((("10.0.0.1", 26379), ("s2", 26380)), "pacs", 3))
        self.assertEqual(parse_sentinel_url("redis+sentinel://:pw@[::1]:26379/m"),
                         SentinelTarget((("::1", 26379),), "m", 0, "pw"))

    def test_accepted_by_settings(self) -> None:
        """The INI accepts the Sentinel form as it is."""
        url = "redis+sentinel://127.0.0.1:26379/pacs?db=0"
        self.assertEqual(parse_settings(f"[index]\nredis = {url}\n").index.redis, url)

    def test_refused_names_section_and_key(self) -> None:
        """A Sentinel URL without a port, a service or a numeric db stops
        start-up naming [index] redis."""
        for url in ("redis+sentinel://h/pacs", "redis+sentinel://h:26379/",
                    "redis+sentinel://h:26379/pacs?db=x", "redis+sentinel://h:0/p",
                    "redis+sentinel://h:1,/p"):
            with self.subTest(url=url):
                with self.assertRaises(ConfigError) as caught:
                    parse_settings(f"[index]\nredis = {url}\n", "s.ini")
                self.assertIn("s.ini: [index] redis", str(caught.exception))


def record_of(uid: str) -> InstanceRecord:
    """A small record for ``uid``."""
    return InstanceRecord(sop_instance_uid=uid, sop_class_uid=CT, path=f"/r/{uid}.dcm",
                          size=1, transfer_syntax="1.2.840.10008.1.2.1", calling_ae="AE",
                          received_at=time.time(), attributes={})


class ReplicaConfirmationTests(TestCase):
    """Records and locks count only once a replica holds them."""

    timeout = 60

    def connect(self, sentinels: SentinelSet) -> SentinelRedis:
        redis = SentinelRedis(parse_sentinel_url(sentinels.url), reactor, key_prefix="t:",
                              connect_timeout=2.0)
        self.addCleanup(redis.disconnect)
        return redis

    async def test_replica_holds_the_record_when_it_fires(self) -> None:
        """With a replica, each of 20 concurrent records fires only when the
        replica already holds its instance hash."""
        sentinels = SentinelSet(self, replicas=1, sentinels=1)
        redis = self.connect(sentinels)
        index = ReplicatedIndex(RedisIndex(redis, reactor, key_prefix="t:", timeout=2.0),
                                redis, timeout=2.0)
        replica = sentinels.replicas[0].client()
        uids = [corpus.new_uid() for _ in range(20)]

        async def one(uid: str) -> bool:
            await index.record(record_of(uid))
            return bool(replica.exists(f"t:instance:{uid}"))

        held = await defer.gatherResults([defer.Deferred.fromCoroutine(one(u)) for u in uids])
        self.assertEqual(held, [True] * len(uids))
        inner = RedisAssociationLock(redis, reactor, key_prefix="t:", timeout=2.0)
        self.addCleanup(inner.release_all)
        token = await ReplicatedLock(inner, redis, timeout=2.0).acquire("MR1")
        self.assertEqual(replica.get("t:lock:ae:MR1"), token)

    async def test_no_replica_no_record(self) -> None:
        """Without a replica a record fails with IndexUnavailable (the
        instance stays journaled), though it is written; an AE lock is
        granted at once (nothing can fail over) and is exclusive."""
        sentinels = SentinelSet(self, replicas=0, sentinels=1)
        redis = self.connect(sentinels)
        index = ReplicatedIndex(RedisIndex(redis, reactor, key_prefix="t:", timeout=0.5),
                                redis, timeout=0.5)
        with self.assertRaises(IndexUnavailable) as caught:
            await index.record(record_of(corpus.new_uid()))
        self.assertIn("no replica confirmed", str(caught.exception))
        self.assertEqual(len(list(sentinels.primary.client().scan_iter("t:instance:*"))), 1)
        inner = RedisAssociationLock(redis, reactor, key_prefix="t:", timeout=0.5)
        lock = ReplicatedLock(inner, redis, timeout=0.5)
        self.addCleanup(inner.release_all)
        token = await lock.acquire("CT1")
        self.assertEqual(sentinels.primary.client().get("t:lock:ae:CT1"), token)
        self.assertIsNone(await lock.acquire("CT1"))


    async def test_move_reported_once_confirmed(self) -> None:
        """Without a replica, an instance that moves to another series is
        written but not confirmed (NotReplicated), and its old path is not
        reported; once a replica runs, the next record of it reports the
        old path, so that its old file goes only then."""
        sentinels = SentinelSet(self, replicas=0, sentinels=1)
        redis = self.connect(sentinels)
        index = ReplicatedIndex(RedisIndex(redis, reactor, key_prefix="t:", timeout=0.5),
                                redis, timeout=0.5)
        first = record_of(corpus.new_uid())
        with self.assertRaises(NotReplicated):
            await index.record(first)
        moved = dataclasses.replace(first, path=first.path + ".moved",
                                    attributes={"SeriesInstanceUID": corpus.new_uid()})
        with self.assertRaises(NotReplicated):
            await index.record(moved)
        self.assertEqual(sentinels.primary.client().hget(
            f"t:instance:{first.sop_instance_uid}", "path"), moved.path)
        replica = sentinels.add_replica()
        await wait_for(lambda: replica.client().info("replication")
                       .get("master_link_status") == "up", 20, "the replica in sync")
        # the primary's own barrier sees the replica a moment after the
        # replica sees its link up
        deadline = reactor.seconds() + 20
        while (await redis.replicated(1.0)).acknowledged < 1:
            self.assertLess(reactor.seconds(), deadline, "the barrier never saw the replica")
        self.assertEqual(await index.record(moved), first.path)


AES = {"node-a": ("CTA1", "CTA2"), "node-b": ("CTB1", "CTB2")}
BATCH = 20
#: How storescu reports an A-ASSOCIATE-RJ 2/3/x (rejected transient, by the
#: service provider: temporary congestion, local limit exceeded).
TRANSIENT = "Result: Rejected Transient, Source: Service Provider"


class FailoverTests(TestCase):
    """Two sdcc nodes ingest while the primary is killed (SIGKILL)."""

    timeout = 240

    async def test_kill_primary_mid_ingest(self) -> None:
        """A primary, a replica and three Sentinels; two twistd nodes, each
        receiving from two AEs (storescu, batches of 20 small CTs, one after
        another).  Once some instances are indexed, the primary is killed
        with SIGKILL.  The Sentinels promote the replica, the nodes follow it
        by themselves, and ingest goes on: every instance storescu got
        Success for is, in the end, on disk and in the new primary's index.
        While no primary answers, new associations are refused as
        temporarily congested (2/3/1), and an AE whose lock release fell
        into the failover is busy (2/3/2) until the lock expires; the sender
        tries again, as a modality does.
        Throughout, a second association from an AE that is busy on one node
        is never accepted by the other node.  Records the new primary holds
        alone stay journaled until the old primary, started again, is its
        replica; then the journals drain."""
        sentinels = SentinelSet(self, replicas=1, sentinels=3)
        base = os.path.abspath(self.mktemp())
        data_dir = os.path.join(base, "data")
        root = os.path.join(data_dir, "store")
        ports = {name: free_port() for name in AES}
        for name, port in ports.items():
            ini = os.path.join(base, f"{name}.ini")
            os.makedirs(base, exist_ok=True)
            with open(ini, "w", encoding="utf-8") as handle:
                handle.write(ini_text(data_dir, sentinels.url, port=port,
                                      server={"node_id": name},
                                      index={"timeout": "1"}))
            TwistdServer(self, ini).start(port)
        old_port = sentinels.primary.port
        study = corpus.new_uid()
        acknowledged: list[corpus.Sample] = []
        failures: list[str] = []
        overlaps: list[str] = []
        probes: list[float] = []
        refusals: list[float] = []
        state: dict[str, Any] = {"failed_over_at": None, "batches_after": 0, "stop": False}

        async def sender(node: str, ae: str, n: int) -> None:
            batch_no = 0
            while not state["stop"] and batch_no < 40:
                batch_no += 1
                series = corpus.new_uid()
                samples = [corpus.write_small(
                    os.path.join(base, "in", ae, f"{batch_no}-{k}.dcm"), CT, study=study,
                    series=series, number=k, patient_id="PID-FAILOVER")
                    for k in range(BATCH)]
                while True:
                    out, code = await dcmtk(self, "storescu", "-v", "-aet", ae, "-aec",
                                            "SDCC", "127.0.0.1", str(ports[node]),
                                            *[s.path for s in samples], timeout=60)
                    if TRANSIENT not in out or len(refusals) > 400:
                        break
                    # refused before any store, transiently: no primary to
                    # take the AE's lock on (2/3/1), or the lock of the AE's
                    # previous association, whose release fell into the
                    # failover, not expired yet (2/3/2); as a modality
                    # would, try again
                    refusals.append(time.monotonic())
                    await _sleep(0.2)
                if code == 0 and storescu_successes(out) == len(samples):
                    acknowledged.extend(samples)
                else:
                    failures.append(f"{ae} batch {batch_no}: exit {code}\n{out[-1500:]}")
                if state["failed_over_at"] is not None:
                    state["batches_after"] += 1
                    if state["batches_after"] >= 8:
                        state["stop"] = True

        holder = await in_thread(hold_association, ports["node-a"], "HOLDER")

        async def prober() -> None:
            # the per-AE rule: HOLDER is busy on node-a all along, so node-b
            # must refuse it, before, during and after the failover
            while not state["stop"]:
                probes.append(time.monotonic())
                out, code = await dcmtk(self, "echoscu", "-v", "-aet", "HOLDER", "-aec",
                                        "SDCC", "127.0.0.1", str(ports["node-b"]),
                                        timeout=30)
                if "Received Echo Response (Success)" in out:
                    overlaps.append(f"HOLDER accepted by node-b:\n{out[-800:]}")
                await _sleep(0.2)

        async def killer() -> None:
            primary = sentinels.primary.client()
            await wait_for(lambda: len(instance_keys(primary)) >= 60, 60,
                           "60 instances in the index before the kill")
            sentinels.primary.kill()
            state["killed"] = killed = time.monotonic()
            await wait_for(lambda: sentinels.primary_port() not in (None, old_port), 30,
                           "the Sentinels to promote the replica")
            state["promoted"] = time.monotonic()
            state["failed_over_at"] = state["promoted"] - killed

        work = [defer.Deferred.fromCoroutine(sender(node, ae, n))
                for node, titles in AES.items() for n, ae in enumerate(titles)]
        work.append(defer.Deferred.fromCoroutine(killer()))
        probe = defer.Deferred.fromCoroutine(prober())
        await defer.gatherResults(work, consumeErrors=True)
        state["stop"] = True
        await probe

        self.assertEqual(failures, [], sentinels.logs())
        new_primary = sentinels.node_on(sentinels.primary_port())
        client = new_primary.client()
        await wait_for(lambda: all(client.exists(f"{PREFIX}instance:{s.sop_instance_uid}")
                                   for s in acknowledged), 60,
                       "every acknowledged instance in the new primary's index")
        for sample in acknowledged:
            calling = client.hget(f"{PREFIX}instance:{sample.sop_instance_uid}", "calling_ae")
            check_stored(self, root, client, sample, calling)
        # what the new primary holds alone stays journaled until a replica
        # has it: the old primary comes back, the Sentinels make it a replica,
        # and the journals drain
        journals = [os.path.join(data_dir, "nodes", name, "pending") for name in AES]
        waiting = sum(len(os.listdir(j)) for j in journals)
        sentinels.primary.restart()
        await wait_for(lambda: not any(os.listdir(j) for j in journals), 60,
                       "the journals to drain once a replica is back")
        replica = sentinels.primary.client()
        self.assertTrue(all(replica.exists(f"{PREFIX}instance:{s.sop_instance_uid}")
                            for s in acknowledged))
        self.assertEqual(overlaps, [])
        # probed before the kill, while no primary was named, and after
        self.assertEqual([any(t < state["killed"] for t in probes),
                          any(state["killed"] <= t < state["promoted"] for t in probes),
                          any(t >= state["promoted"] for t in probes)], [True] * 3, probes)
        # HOLDER's association lived through the failover, and its slot with it
        self.assertEqual(await in_thread(holder.send_c_echo), 0x0000)
        await in_thread(holder.release)
        refused_for = max(refusals) - min(refusals) if refusals else 0.0
        print(f"\n[sentinel failover] promoted {state['failed_over_at']:.1f} s after "
              f"kill -9; {len(acknowledged)} instances acknowledged and indexed; "
              f"{len(refusals)} new associations refused 2/3/x over {refused_for:.1f} s; "
              f"{len(probes)} probes of the busy AE on the other node all refused; "
              f"{waiting} records journaled until the old primary came back as a replica")


def hold_association(port: int, calling: str) -> Any:
    """A pynetdicom Verification association left open (the caller
    releases it); its Status-returning ``send_c_echo`` is wrapped."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = 30
    ae.network_timeout = None   # pynetdicom would abort it after that long idle
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
    if not assoc.is_established:
        raise AssertionError(f"{calling} could not associate")

    class Held:
        def send_c_echo(self) -> int:
            return int(assoc.send_c_echo().Status)

        def release(self) -> None:
            assoc.release()

    return Held()


def _sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)
