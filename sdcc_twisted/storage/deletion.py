"""Deleting a study or a series: its files and its index entries; and
``[storage] retention_days``, which deletes the oldest studies.

Used by ``sdcc-admin delete`` and by :class:`RetentionService`; blocking
(redis-py, file system), so the server runs it in a worker thread.

Safe against a store in flight, instance by instance:

1. the instance hash is read and the file's identity (inode, mtime) taken;
2. the index entry goes in one WATCHed transaction, only if the hash is
   still the one read (a copy stored again meanwhile keeps its entry, and
   its file stays);
3. the file is renamed into the temp folder and deleted only if it is still
   the file of step 1 (a copy renamed into place meanwhile is put back).

An instance of the study that arrives while it is deleted is either kept
whole (file and index entry) or refused; a directory is removed only when
empty, and the server makes it again for the next store.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, task

from sdcc_twisted.core.index_keys import (
    KeyLayout,
    Placement,
    detach_probes,
    key_id,
    others_from_counts,
    plan_remove,
)
from sdcc_twisted.logs import get_logger, iso_time
from sdcc_twisted.storage.files import make_private_dirs

log = get_logger("sdcc.retention")

#: Where a file waits between its rename and its deletion (FileStore's temp
#: folder: same file system as the file, so the rename is atomic).
TRASH_DIR = ".tmp"


@dataclass
class Deleted:
    """What one deletion did."""

    instances: int = 0
    kept: int = 0
    missing_files: int = 0
    last_received: float = 0.0


def remove_instance(client: Any, layout: KeyLayout, uid: str,
                    expected: dict[str, str]) -> bool:
    """Forget instance ``uid`` if its hash is still ``expected``; False if
    it changed (or went) meanwhile.  One WATCHed MULTI/EXEC, as the server's
    own removal (:meth:`RedisIndex.remove`)."""
    import redis

    key = layout.instance(uid)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                old = pipe.hgetall(key)
                if old != expected:
                    pipe.unwatch()
                    return False
                probes = detach_probes(layout, uid, Placement.of_fields(old), None)
                if probes:
                    pipe.watch(*[k for k, _ in probes])
                counts = [(pipe.scard(k), pipe.sismember(k, m)) for k, m in probes]
                pipe.multi()
                for cmd in plan_remove(layout, uid, old, others_from_counts(probes, counts)):
                    pipe.execute_command(*cmd)
                pipe.execute()
                return True
            except redis.WatchError:
                continue


def _inside(path: str, root: str) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, real_root]) == real_root


def file_identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def delete_if_unchanged(path: str, root: str, identity: tuple[int, int]) -> None:
    """Delete ``path`` if it is still the file with ``identity``."""
    trash_dir = os.path.join(root, TRASH_DIR)
    make_private_dirs(trash_dir)            # files on their way out hold patient data
    trash = os.path.join(trash_dir, f"{secrets.token_hex(8)}.deleting")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    if file_identity(trash) == identity:
        os.unlink(trash)
    elif not os.path.exists(path):
        os.rename(trash, path)      # a copy stored meanwhile: put it back
    else:
        os.unlink(trash)            # superseded by a newer copy already


def _remove_empty(directory: str, root: str) -> None:
    """Remove ``directory`` and then its parent if empty, never the root."""
    real_root = os.path.realpath(root)
    for each in (directory, os.path.dirname(directory)):
        if os.path.realpath(each) == real_root or not _inside(each, root):
            return
        try:
            os.rmdir(each)
        except OSError:
            return


def delete_series(client: Any, layout: KeyLayout, series_uid: str, root: str,
                  done: Deleted | None = None) -> Deleted:
    """Delete every instance of a series: index entries, then files."""
    done = done if done is not None else Deleted()
    directories = set()
    for uid in sorted(client.smembers(layout.series_instances(key_id(series_uid)))):
        fields = client.hgetall(layout.instance(uid))
        if not fields:
            continue
        path = fields.get("path", "")
        identity = file_identity(path) if path and _inside(path, root) else None
        if not remove_instance(client, layout, uid, fields):
            done.kept += 1
            continue
        done.instances += 1
        done.last_received = max(done.last_received, float(fields.get("received_at") or 0))
        if identity is None:
            done.missing_files += 1
            continue
        delete_if_unchanged(path, root, identity)
        directories.add(os.path.dirname(path))
    for directory in directories:
        _remove_empty(directory, root)
    return done


def delete_study(client: Any, layout: KeyLayout, study_uid: str, root: str) -> Deleted:
    """Delete every series of a study (see :func:`delete_series`)."""
    done = Deleted()
    for series_uid in sorted(client.smembers(layout.study_series(key_id(study_uid)))):
        delete_series(client, layout, series_uid, root, done)
    return done


# -- retention -------------------------------------------------------------------

def expired_studies(root: str, cutoff: float) -> list[tuple[float, str]]:
    """(last change, folder) of every study folder under ``root`` where
    nothing was stored since ``cutoff``, oldest first.  A folder's mtime
    moves when a file is renamed into it, so the newest of the study folder
    and its series folders is when the study last received an instance."""
    found = []
    with os.scandir(root) as studies:
        for study in studies:
            if study.name.startswith(".") or not study.is_dir(follow_symlinks=False):
                continue
            newest = study.stat().st_mtime
            with os.scandir(study.path) as series:
                for each in series:
                    if each.is_dir(follow_symlinks=False):
                        newest = max(newest, each.stat().st_mtime)
            if newest < cutoff:
                found.append((newest, study.path))
    return sorted(found)


def study_uid_in(folder: str) -> str | None:
    """The Study Instance UID of the files in a study folder (its name may
    be a hash), read from the first file's header; None without files."""
    from pydicom import dcmread

    for directory, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.endswith(".dcm"):
                ds = dcmread(os.path.join(directory, name), stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID"])
                return str(ds.get("StudyInstanceUID", "") or "")
    return None


def apply_retention(client: Any, layout: KeyLayout, root: str,
                    cutoff: float) -> list[tuple[str, float, Deleted]]:
    """Delete every study nothing was stored in since ``cutoff``, oldest
    first; (Study Instance UID, last change, what went) of each."""
    done = []
    for newest, folder in expired_studies(root, cutoff):
        uid = study_uid_in(folder)
        if uid is None:
            _remove_empty(folder, root)
            continue
        done.append((uid, newest, delete_study(client, layout, uid, root)))
    return done


class RetentionService(service.Service):
    """``[storage] retention_days``: once an hour (and at start), delete the
    studies that received nothing for that many days, oldest first, with a
    log line per study.

    Args:
        days: the retention period.
        root: the storage root.
        redis_url: gives the index's URL when called (the embedded Redis
            has one only once it runs).
        key_prefix, timeout: as the index's.
        clock: for the schedule and the cutoff.
        run_blocking: runs a function in a worker thread; a Deferred.
    """

    interval = 3600.0

    def __init__(self, days: float, root: str, redis_url: Callable[[], str],
                 key_prefix: str, timeout: float, clock: Any,
                 run_blocking: Callable[..., "defer.Deferred[Any]"]) -> None:
        self.setName("retention")
        self.days = days
        self.root = root
        self.redis_url = redis_url
        self.layout = KeyLayout(key_prefix)
        self.timeout = timeout
        self.clock = clock
        self.run_blocking = run_blocking
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.run_now)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def run_now(self) -> "defer.Deferred[int]":
        """One pass; fires with how many studies went."""
        cutoff = self.clock.seconds() - self.days * 86400
        d = self.run_blocking(self._pass, cutoff)
        d.addCallbacks(self._report, self._failed)
        return d

    def _pass(self, cutoff: float) -> list[tuple[str, float, Deleted]]:
        import redis

        client = redis.Redis.from_url(self.redis_url(), decode_responses=True,
                                      socket_timeout=self.timeout,
                                      socket_connect_timeout=self.timeout)
        try:
            return apply_retention(client, self.layout, self.root, cutoff)
        finally:
            client.close()

    def _report(self, done: list[tuple[str, float, Deleted]]) -> int:
        for uid, newest, deleted in done:
            log.info("retention ({days:g} days): deleted study {uid}, last stored "
                     "{when}: {n} instance(s){kept}", days=self.days, uid=uid,
                     when=iso_time(newest), n=deleted.instances,
                     kept=f", kept {deleted.kept} stored meanwhile" if deleted.kept else "")
        return len(done)

    def _failed(self, failure: Any) -> int:
        log.warn("retention: this pass stopped ({why}); the next one is in "
                 "{interval:g} s", why=failure.getErrorMessage(), interval=self.interval)
        return 0
