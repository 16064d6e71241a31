"""Study complete: arrivals noted in a real Redis, claimed once per quiet
period per study, across a restart and across several watchers."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.services.after_receipt import StudyComplete, StudyWatch
from sdcc_twisted.storage.studies import StudyArrivals

from .redis_support import connect, start_redis, wait_connected, wait_for

QUIET = 60.0


def record(study: str, n: int) -> InstanceRecord:
    """An instance record of ``study``."""
    return InstanceRecord(f"{study}.9.{n}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
                          f"/store/{study}/{n}.dcm", 100, 0.0, "CT1",
                          {"StudyInstanceUID": study})


class Recorder:
    """A listener that keeps what it is told."""

    def __init__(self) -> None:
        self.instances: list[str] = []
        self.studies: list[StudyComplete] = []

    def instance_stored(self, rec: InstanceRecord) -> None:
        self.instances.append(rec.sop_instance_uid)

    def study_complete(self, event: StudyComplete) -> None:
        self.studies.append(event)


class StudyCompleteTests(TestCase):
    """StudyWatch with StudyArrivals on a real redis-server; time from a
    task.Clock (the Redis calls' own timeouts run on the reactor)."""

    timeout = 60

    async def setUp(self) -> None:
        self.redis = start_redis(self)
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)

    async def watch(self, clock: Any = None,
                    timeout: float = 5.0) -> tuple[StudyWatch, Recorder]:
        """A watch on its own connection to the test's Redis."""
        handler = connect(self, self.redis)
        await wait_connected(handler)
        recorder = Recorder()
        watch = StudyWatch(StudyArrivals(handler, reactor, "t:", timeout), clock or self.clock,
                           QUIET, lambda study: f"/store/{study}", [recorder])
        return watch, recorder

    async def test_two_bursts_two_events(self) -> None:
        """A study quiet for quiet_seconds fires once with its count; more
        instances later fire again with the count of the new ones only; a
        second study keeps its own time; listeners hear every instance."""
        watch, seen = await self.watch()
        for n in range(3):
            await watch.instance_stored(record("1.2.3", n))
            self.clock.advance(1)
        await watch.instance_stored(record("1.2.4", 0))
        self.clock.advance(QUIET - 2)
        await watch.check()
        self.assertEqual(seen.studies, [])
        self.clock.advance(1)
        await watch.check()
        self.assertEqual(seen.studies, [StudyComplete("1.2.3", 3, "/store/1.2.3")])
        await watch.check()
        self.assertEqual(len(seen.studies), 1)

        for n in range(3, 5):
            await watch.instance_stored(record("1.2.3", n))
        self.clock.advance(1)
        await watch.check()
        self.assertEqual(seen.studies[1:], [StudyComplete("1.2.4", 1, "/store/1.2.4")])
        self.clock.advance(QUIET)
        await watch.check()
        self.assertEqual(seen.studies[2:], [StudyComplete("1.2.3", 2, "/store/1.2.3")])
        self.assertEqual(len(seen.instances), 6)

    async def test_restart_in_the_quiet_period_fires_once(self) -> None:
        """Arrivals noted by a watch that then stops are claimed by the next
        one (a restart, or another node on the same Redis) exactly once."""
        first, first_seen = await self.watch()
        first.startService()
        for n in range(4):
            await first.instance_stored(record("1.2.5", n))
        self.clock.advance(QUIET / 2)
        await first.check()
        first.stopService()
        self.assertEqual(first_seen.studies, [])

        later = task.Clock()
        later.advance(self.clock.seconds() + QUIET)
        second, second_seen = await self.watch(later)
        third, third_seen = await self.watch(later)
        await second.check()
        await third.check()
        await first.check()
        events = first_seen.studies + second_seen.studies + third_seen.studies
        self.assertEqual(events, [StudyComplete("1.2.5", 4, "/store/1.2.5")])

    async def test_watchers_racing_claim_each_study_once(self) -> None:
        """Three watchers checking at the same moment, many times over, hand
        each study's burst to exactly one of them."""
        watches = [await self.watch() for _ in range(3)]
        for round_ in range(10):
            studies = [f"1.2.6.{round_}.{k}" for k in range(5)]
            for k, study in enumerate(studies):
                for n in range(k + 1):
                    await watches[0][0].instance_stored(record(study, n))
            self.clock.advance(QUIET)
            await defer.gatherResults([defer.Deferred.fromCoroutine(w.check())
                                       for w, _ in watches for _ in range(2)])
        events = [e for _, seen in watches for e in seen.studies]
        self.assertEqual(len(events), 50)
        self.assertEqual(sorted((e.study_uid, e.new_instances) for e in events),
                         sorted((f"1.2.6.{r}.{k}", k + 1) for r in range(10) for k in range(5)))

    async def test_the_loop_checks_on_the_clock(self) -> None:
        """Started, the watch checks every interval of the injected clock."""
        watch, seen = await self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        await watch.instance_stored(record("1.2.7", 0))
        self.clock.advance(QUIET + watch.interval)
        await wait_for(lambda: seen.studies, 10, "the study-complete event")
        self.assertEqual(seen.studies, [StudyComplete("1.2.7", 1, "/store/1.2.7")])

    async def test_redis_down_never_fails_a_store(self) -> None:
        """With Redis stopped, noting an arrival and checking only log; the
        listeners still hear the instance."""
        watch, seen = await self.watch(timeout=0.3)
        self.redis.stop()
        await watch.instance_stored(record("1.2.8", 0))
        await watch.check()
        self.assertEqual(seen.instances, ["1.2.8.9.0"])
        self.assertEqual(seen.studies, [])
        self.flushLoggedErrors()
