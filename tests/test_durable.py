"""Tests for sdcc_twisted.durable: group commit of fsync calls."""

from __future__ import annotations

import os
import tempfile
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.durable import GroupSync, fsync_directory


class GroupSyncTests(SynchronousTestCase):
    """GroupSync with real threads and a slow stand-in for fsync."""

    def test_every_caller_covered_and_syncs_shared(self) -> None:
        """Sixteen threads each make a change and ask for it to be durable:
        each returns only after a sync that began after its change, and they
        need far fewer than sixteen syncs."""
        group = GroupSync()
        lock = threading.Lock()
        changes = [0]
        finished: list[int] = []      # change count seen by each completed sync
        problems: list[str] = []

        def slow_sync() -> None:
            with lock:
                covered = changes[0]
            time.sleep(0.02)
            with lock:
                finished.append(covered)

        def writer() -> None:
            with lock:
                changes[0] += 1
                mine = changes[0]
            group.sync("wal", slow_sync)
            with lock:
                if not any(covered >= mine for covered in finished):
                    problems.append(f"change {mine} returned before a sync covered it")

        threads = [threading.Thread(target=writer) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(problems, [])
        self.assertEqual(group.ran + group.shared, 16)
        self.assertLess(group.ran, 8)
        self.assertEqual(len(finished), group.ran)
        self.assertEqual(group._keys, {})

    def test_failed_sync_is_not_taken_for_done(self) -> None:
        """A sync that raises fails its caller; a caller that waited on it
        runs a sync of its own instead of returning as if covered."""
        group = GroupSync()
        started = threading.Event()
        release = threading.Event()
        calls: list[str] = []

        def failing() -> None:
            calls.append("failing")
            started.set()
            release.wait(5)
            raise OSError(5, "Input/output error")

        errors: list[BaseException] = []

        def first() -> None:
            try:
                group.sync("dir", failing)
            except OSError as exc:
                errors.append(exc)

        t1 = threading.Thread(target=first)
        t1.start()
        started.wait(5)
        t2 = threading.Thread(target=group.sync, args=("dir", lambda: calls.append("second")))
        t2.start()
        time.sleep(0.05)          # the second caller is waiting on the first sync
        release.set()
        t1.join(5)
        t2.join(5)
        self.assertEqual([type(e) for e in errors], [OSError])
        self.assertEqual(calls, ["failing", "second"])
        self.assertEqual((group.ran, group.shared), (1, 0))

    def test_keys_are_independent(self) -> None:
        """A sync of one key never counts for another."""
        group = GroupSync()
        calls: list[str] = []
        group.sync("a", lambda: calls.append("a"))
        group.sync("b", lambda: calls.append("b"))
        group.sync("a", lambda: calls.append("a"))
        self.assertEqual(calls, ["a", "b", "a"])

    def test_fsync_directory(self) -> None:
        """fsync_directory syncs a real directory and fails on a missing one."""
        path = tempfile.mkdtemp(prefix="sdcc-durable-")
        self.addCleanup(os.rmdir, path)
        fsync_directory(path)
        self.assertRaises(FileNotFoundError, fsync_directory, os.path.join(path, "gone"))
