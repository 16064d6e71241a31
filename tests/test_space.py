"""The free-space floor (issue 11, finding 7), on a real small tmpfs."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from sdcc_twisted.config import SpaceFloor
from sdcc_twisted.core import conformance as c
from sdcc_twisted.storage.space import SpaceGuard

from . import corpus
from .server_support import in_thread, start_server
from .redis_support import wait_for
from .test_interop_echo import pynetdicom_echo
from .test_interop_store import dcm_files, pynetdicom_store
from .volume_support import fill, free, small_volume

CT = "1.2.840.10008.5.1.4.1.1.2"


def space_events() -> tuple[list[dict[str, Any]], Any]:
    """Collect the sdcc.space log events; (events, observer)."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "sdcc.space":
            events.append(event)
    return events, observe


class SpaceGuardTests(TestCase):
    """SpaceGuard on a task.Clock, measuring a real tmpfs."""

    def setUp(self) -> None:
        self.volume = small_volume(self, 1024 * 1024)
        self.clock = task.Clock()
        self.guard = SpaceGuard({"data_dir": self.volume, "storage_root": self.volume},
                                SpaceFloor(10, True), self.clock,
                                lambda fn, *a: defer.maybeDeferred(fn, *a), interval=1)
        self.events, observe = space_events()
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.guard.startService()
        self.addCleanup(self.guard.stopService)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]

    def test_measures_at_start(self) -> None:
        """The first measurement happens at start: both names carry the
        volume's free bytes, and neither is below a 10% floor."""
        free_bytes = self.guard.free_bytes()
        self.assertEqual(set(free_bytes), {"data_dir", "storage_root"})
        self.assertGreater(free_bytes["data_dir"], 900 * 1024)
        self.assertEqual(self.guard.below_floor(), [])

    def test_one_warning_per_crossing(self) -> None:
        """Filling the volume puts both names below the floor at the next
        tick with one warning each, however many ticks follow; freeing it
        clears them by itself; a second filling warns again."""
        fill(self.volume)
        self.assertEqual(self.guard.below_floor(), [])        # not measured yet
        self.clock.advance(1)
        self.assertEqual(sorted(self.guard.below_floor()), ["data_dir", "storage_root"])
        self.assertLess(self.guard.free_bytes()["data_dir"], 4096 * 2)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(self.warnings()), 2, self.warnings())
        self.assertIn("min_free_space", self.warnings()[0])
        free(self.volume)
        self.clock.advance(1)
        self.assertEqual(self.guard.below_floor(), [])
        fill(self.volume)
        self.clock.advance(1)
        self.assertEqual(len(self.warnings()), 4)


class FloorInteropTests(TestCase):
    """The running server with its storage root on a small tmpfs."""

    timeout = 60

    async def test_store_refused_below_floor_echo_answered(self) -> None:
        """Below min_free_space (500 KB left of a 1 MB floor) a pynetdicom
        C-STORE gets A702 with an Error Comment and nothing is written, C-ECHO still gets 0x0000; once space
        is freed, the same store succeeds without a restart."""
        root = small_volume(self, 2 * 1024 * 1024)
        server = await start_server(self, storage={"root": root,
                                                   "min_free_space": "1000000"})
        fill(root, leave=500_000)           # room for the file, below the floor
        await wait_for(lambda: server.service.space.below_floor(), 10, "the floor")
        sample = corpus.write_small(os.path.join(self.mktemp(), "a.dcm"), CT)
        contexts = [(CT, [c.EXPLICIT_VR_LITTLE_ENDIAN])]
        result = await in_thread(pynetdicom_store, server.port, [sample.path], contexts,
                                 "FLOOR")
        ((status, comment),) = result["statuses"]
        self.assertEqual(status, c.STATUS_DISK_FULL)
        self.assertIn("min_free_space", comment)
        self.assertEqual(dcm_files(root), [])
        echo = await in_thread(pynetdicom_echo, server.port, "FLOORECHO")
        self.assertEqual(echo.get("status"), 0)
        free(root)
        await wait_for(lambda: not server.service.space.below_floor(), 10, "space back")
        result = await in_thread(pynetdicom_store, server.port, [sample.path], contexts,
                                 "FLOOR")
        self.assertEqual([s for s, _ in result["statuses"]], [0])
        self.assertEqual(len(dcm_files(root)), 1)
