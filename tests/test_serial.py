"""The per-association disk queue and its worker threads (issue 13)."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from sdcc_twisted.storage.serial import SerialQueue, ThreadWorkers

from .test_protocol import HeldPool


def inline(fn: Any, *args: Any) -> None:
    fn(*args)


class SerialQueueTests(TestCase):
    """Order, results, failures and the backlog of one queue."""

    def test_jobs_run_in_order_in_one_drain(self) -> None:
        """Jobs queued while the disk is busy run in the order queued, all
        in one hop to the pool."""
        pool = HeldPool()
        q = SerialQueue(pool, inline)
        done: list[int] = []
        for n in range(5):
            q.post(done.append, n)
        result = q.call(lambda: list(done))
        self.assertEqual(len(pool.jobs), 1)
        pool.run()
        self.assertEqual(done, [0, 1, 2, 3, 4])
        self.assertEqual(self.successResultOf(result), [0, 1, 2, 3, 4])

    def test_call_failure_reaches_the_caller(self) -> None:
        """An exception in a called job fails its Deferred; later jobs still run."""
        pool = HeldPool()
        q = SerialQueue(pool, inline)
        failing = q.call(lambda: 1 // 0)
        after = q.call(lambda: "next")
        pool.run()
        self.failureResultOf(failing, ZeroDivisionError)
        self.assertEqual(self.successResultOf(after), "next")

    def test_posted_failure_is_logged(self) -> None:
        """An exception in a posted job is logged as an error, not lost."""
        pool = HeldPool()
        q = SerialQueue(pool, inline)
        q.post(lambda: 1 // 0)
        pool.run()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_backlog_and_room(self) -> None:
        """Past the high-water mark the queue is backlogged; room() fires
        once the disk brought it down to half of it."""
        pool = HeldPool()
        q = SerialQueue(pool, inline, high_water=100)
        for _ in range(3):
            q.post(lambda: None, size=40)
        self.assertTrue(q.backlogged)
        room = q.room()
        self.assertNoResult(room)
        pool.run()
        self.assertFalse(q.backlogged)
        self.successResultOf(room)
        self.successResultOf(q.room())


class ThreadWorkersTests(TestCase):
    """The bounded pool of daemon threads."""

    def test_bounded_and_stalled_job_holds_one_thread(self) -> None:
        """A job that waits holds one thread; other jobs run on the others;
        the pool never starts more than its size."""
        pool = ThreadWorkers(2)
        self.addCleanup(pool.stop)
        release = threading.Event()
        self.addCleanup(release.set)
        ran = threading.Event()
        pool.callInThread(release.wait, 30)
        pool.callInThread(ran.set)
        self.assertTrue(ran.wait(30))
        for _ in range(10):
            pool.callInThread(lambda: None)
        self.assertLessEqual(len(pool._threads), 2)  # noqa: SLF001 - our own object

    def test_serial_queue_on_threads(self) -> None:
        """A SerialQueue on real threads delivers its results in order on
        the calling side."""
        pool = ThreadWorkers(2)
        self.addCleanup(pool.stop)
        answers: list[Any] = []
        arrived = threading.Event()

        def back(fn: Any, *args: Any) -> None:
            fn(*args)
            if len(answers) == 3:
                arrived.set()
        q = SerialQueue(pool, back)
        for n in range(3):
            d: defer.Deferred[Any] = q.call(lambda n=n: n)
            d.addCallback(answers.append)
        self.assertTrue(arrived.wait(30))
        self.assertEqual(answers, [0, 1, 2])
