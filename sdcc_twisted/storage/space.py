"""Free space on the volumes that hold images and records: a floor.

:class:`SpaceGuard` measures the free space of each named volume (``statvfs``,
off the reactor thread) every ``interval`` seconds on the injected clock and
keeps the last figures.  Below the floor (``[storage] min_free_space``, bytes
or a percentage of the volume) the Storage SCP answers C-STORE with A702
without writing: a peer must not be able to fill the disk that the index log,
the journal and the embedded Redis need (issue 11, finding 7).  A warning is
logged once per crossing, and storing resumes by itself when space returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sdcc_twisted.config import SpaceFloor
from sdcc_twisted.logs import get_logger
from sdcc_twisted.monitor import ISpaceReport

_log = get_logger("sdcc.space")


def measure(paths: dict[str, str]) -> dict[str, tuple[int, int]]:
    """``name -> (free bytes for us, total bytes)`` of each path's volume;
    blocking.  A path that cannot be measured is left out."""
    found = {}
    for name, path in paths.items():
        try:
            st = os.statvfs(path)
        except OSError as exc:
            _log.warn("cannot measure the free space of {name} ({path}): {why}",
                      name=name, path=path, why=exc.strerror)
            continue
        found[name] = (st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
    return found


@implementer(ISpaceReport)
class SpaceGuard(service.Service):
    """The free space of named volumes against a floor.

    Args:
        volumes: name -> a path on the volume (``"storage_root"``,
            ``"data_dir"``); two names may share one volume.
        floor: the least free space each must keep.
        clock: when to measure.
        run_blocking: ``fn(*args) -> Deferred``, runs ``statvfs`` off the
            reactor thread.
        interval: seconds between measurements.
    """

    def __init__(self, volumes: dict[str, str], floor: SpaceFloor, clock: IReactorTime,
                 run_blocking: Callable[..., "defer.Deferred[Any]"],
                 interval: float = 1.0) -> None:
        self.volumes = dict(volumes)
        self.floor = floor
        self.clock = clock
        self.run_blocking = run_blocking
        self.interval = interval
        self._free: dict[str, int] = {}
        self._low: list[str] = []
        self._loop: task.LoopingCall | None = None

    def free_bytes(self) -> dict[str, int]:
        """Free bytes of each volume, as last measured (empty before the
        first measurement)."""
        return dict(self._free)

    def below_floor(self) -> list[str]:
        """Names of the volumes under the floor at the last measurement."""
        return list(self._low)

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> "defer.Deferred[None]":
        """Measure now (off the reactor thread); never fails."""
        d = defer.maybeDeferred(self.run_blocking, measure, self.volumes)
        d.addCallbacks(self._measured, lambda f: _log.warn(
            "cannot measure free space ({why}); the last figures stand",
            why=f.getErrorMessage()))
        return d

    def _measured(self, found: dict[str, tuple[int, int]]) -> None:
        self._free = {name: free for name, (free, _) in found.items()}
        low = [name for name, (free, total) in found.items()
               if free < self.floor.bytes_of(total)]
        for name in low:
            if name not in self._low:
                _log.warn("{name} ({path}) has {free} bytes free, below [storage] "
                          "min_free_space ({floor}): C-STORE is refused (A702) "
                          "until space is freed", name=name, path=self.volumes[name],
                          free=self._free[name], floor=self.floor)
        for name in self._low:
            if name not in low and name in found:
                _log.info("{name} ({path}) has {free} bytes free again; storing "
                          "resumes", name=name, path=self.volumes[name],
                          free=self._free[name])
        # a volume that could not be measured keeps its last state
        self._low = low + [name for name in self._low if name not in found]
