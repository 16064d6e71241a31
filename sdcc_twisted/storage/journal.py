"""The pending journal: instances stored on disk but not yet indexed.

When Redis does not answer, the C-STORE still succeeds (the file is durably in
place) and its :class:`InstanceRecord` goes here, one JSON file per record,
normally in ``{data_dir}/pending/``.  :class:`JournalReplayer` indexes them, in
order, once Redis is back.

:meth:`PendingJournal.append` does blocking file work (write, fsync of the
file and of the directory); run it where the store's own fsync runs, on the
thread pool (``deferToThreadPool``), not on the reactor thread.  Replay only
lists, reads and deletes small files, which it does on the reactor thread.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Final

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from sdcc_twisted.storage.index import IInstanceIndex, IndexUnavailable, NotReplicated
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.records import InstanceRecord

_log = get_logger("sdcc.journal")

#: The journal's directory under ``[server] data_dir``.
PENDING_DIR: Final = "pending"

_SUFFIX: Final = ".json"
_FORMAT: Final = 1


class PendingJournal:
    """One JSON file per record in ``directory``, named so they sort in order."""

    _sequence = itertools.count()

    def __init__(self, directory: str) -> None:
        self.directory = directory

    @classmethod
    def in_data_dir(cls, data_dir: str) -> PendingJournal:
        """The journal of ``{data_dir}/pending``."""
        return cls(os.path.join(data_dir, PENDING_DIR))

    def append(self, rec: InstanceRecord) -> str:
        """Write ``rec`` durably (tmp, fsync, rename, fsync dir); its name."""
        os.makedirs(self.directory, exist_ok=True)
        name = (f"{time.time_ns():020d}-{os.getpid()}-"
                f"{next(self._sequence):08d}{_SUFFIX}")
        body = json.dumps({"format": _FORMAT, "record": rec.to_dict()},
                          sort_keys=True).encode("utf-8")
        tmp = os.path.join(self.directory, "." + name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, os.path.join(self.directory, name))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.directory)
        return name

    def names(self) -> list[str]:
        """The pending entries' names, oldest first."""
        try:
            listing = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in listing
                      if n.endswith(_SUFFIX) and not n.startswith("."))

    def entries(self) -> list[tuple[str, InstanceRecord]]:
        """The pending records, oldest first.

        A file that cannot be read back is renamed to ``*.bad``, logged and
        left out, so that it does not block the others.
        """
        result = []
        for name in self.names():
            try:
                result.append((name, self._load(name)))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError, KeyError) as exc:
                self._quarantine(name, exc)
        return result

    def _load(self, name: str) -> InstanceRecord:
        with open(os.path.join(self.directory, name), "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
        if data.get("format") != _FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        fields = data["record"]
        fields["attributes"] = dict(fields.get("attributes") or {})
        return InstanceRecord(**fields)

    def _quarantine(self, name: str, exc: Exception) -> None:
        path = os.path.join(self.directory, name)
        _log.error("pending journal entry {path} is unreadable ({why}); "
                   "renamed to .bad, index its file with sdcc-admin rebuild",
                   path=path, why=exc)
        try:
            os.replace(path, path + ".bad")
        except OSError:
            pass

    def discard(self, name: str) -> None:
        """Delete an entry (gone already is fine)."""
        try:
            os.unlink(os.path.join(self.directory, name))
        except FileNotFoundError:
            pass

    def __len__(self) -> int:
        return len(self.names())


#: The write-ahead log's segment files under ``[server] data_dir``.
INDEX_LOG: Final = "index.wal"


class IndexLog:
    """Write-ahead log of the records on their way to the index.

    Each stored instance's record is appended as one JSON line to the
    current segment (``{data_dir}/index.wal.N``; with ``fsync`` made durable
    with ``fdatasync``) before its C-STORE is answered; the Redis write then
    runs behind the answer.  A segment is deleted once it is no longer the
    current one and every record in it reached the index or the journal; the
    current one is replaced after :attr:`SEGMENT_RECORDS` records, so the log
    stays small under any load.  At startup, whatever a crash left moves to
    the pending journal and is indexed again: recording an instance twice is
    harmless.

    :meth:`reserve` and :meth:`settle` run on the reactor thread;
    :meth:`append` may run on any thread.
    """

    SEGMENT_RECORDS = 1000

    def __init__(self, directory: str, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        os.makedirs(directory, exist_ok=True)
        self._fds: dict[int, int] = {}
        self._open: dict[int, int] = {}      # segment -> records not yet settled
        self._current = max(self._segments(), default=0) + 1
        self._in_current = 0
        self._start(self._current)

    @classmethod
    def in_data_dir(cls, data_dir: str, fsync: bool = True) -> IndexLog:
        """The log ``{data_dir}/index.wal.N``."""
        return cls(data_dir, fsync)

    def _path(self, segment: int) -> str:
        return os.path.join(self.directory, f"{INDEX_LOG}.{segment}")

    def _segments(self) -> list[int]:
        prefix = INDEX_LOG + "."
        found = []
        for name in os.listdir(self.directory):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                found.append(int(name[len(prefix):]))
        return sorted(found)

    def _start(self, segment: int) -> None:
        self._fds[segment] = os.open(self._path(segment),
                                     os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                     | getattr(os, "O_CLOEXEC", 0), 0o600)
        self._open[segment] = 0

    def reserve(self) -> int:
        """The segment the next record goes to (counted as on its way)."""
        if self._in_current >= self.SEGMENT_RECORDS:
            previous = self._current
            self._current += 1
            self._in_current = 0
            self._start(self._current)
            self._retire_if_done(previous)
        self._in_current += 1
        self._open[self._current] += 1
        return self._current

    def append(self, rec: InstanceRecord, segment: int) -> None:
        """Log ``rec`` in ``segment``; blocking (run it where the store's
        fsync runs)."""
        line = json.dumps({"format": _FORMAT, "record": rec.to_dict()},
                          sort_keys=True).encode("utf-8") + b"\n"
        fd = self._fds[segment]
        os.write(fd, line)
        if self.fsync:
            os.fdatasync(fd)

    def settle(self, segment: int) -> None:
        """One record of ``segment`` reached the index or the journal, or
        was never written."""
        self._open[segment] -= 1
        self._retire_if_done(segment)

    def _retire_if_done(self, segment: int) -> None:
        if segment != self._current and self._open.get(segment) == 0:
            del self._open[segment]
            os.close(self._fds.pop(segment))
            try:
                os.unlink(self._path(segment))
            except OSError as exc:
                _log.warn("cannot delete the index log segment {path}: {why}",
                          path=self._path(segment), why=exc)

    def recover(self, journal: PendingJournal) -> int:
        """Move what a crash left in older segments to ``journal``; how many."""
        moved = 0
        for segment in self._segments():
            if segment == self._current:
                continue
            with open(self._path(segment), "rb") as handle:
                for raw in handle:
                    try:
                        data = json.loads(raw.decode("utf-8"))
                        fields = data["record"]
                        fields["attributes"] = dict(fields.get("attributes") or {})
                        rec = InstanceRecord(**fields)
                    except (ValueError, TypeError, KeyError):
                        continue  # cut short by the crash: its C-STORE was not answered
                    journal.append(rec)
                    moved += 1
            os.unlink(self._path(segment))
        return moved

    def close(self) -> None:
        """Close the segment files."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _delete_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _log.warn("cannot delete the superseded file {path}: {why}",
                  path=path, why=exc)


class JournalReplayer(service.Service):
    """Indexes the journal's entries on start and every ``interval`` seconds.

    Entries go in order; each is discarded once indexed, and the previous
    file that :meth:`IInstanceIndex.record` reports is deleted.  The first
    :class:`IndexUnavailable` ends the round; the next tick tries again.  A
    :class:`NotReplicated` entry (written, not yet on a replica) is kept and
    the round goes on.

    An entry whose file is gone is dropped.  An entry older than what the
    index holds for its SOP Instance UID (a newer copy was indexed directly
    meanwhile) is not indexed: its file is deleted unless the newer copy uses
    the same path, and the entry is dropped.
    """

    def __init__(self, journal: PendingJournal, index: IInstanceIndex,
                 clock: IReactorTime, interval: float = 5.0) -> None:
        self.journal = journal
        self.index = index
        self.clock = clock
        self.interval = interval
        self._lock = defer.DeferredLock()
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: _log.failure("journal replay loop died", f))

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        # wait for a round in progress (bounded by the index's timeout)
        return self._lock.run(lambda: None)

    def _tick(self) -> None:
        if self._lock.locked or not self.journal.names():
            return
        self.replay_now().addErrback(
            lambda f: _log.failure("journal replay failed", f))

    def replay_now(self) -> defer.Deferred[int]:
        """Index what is pending now; fires with how many were indexed."""
        return self._lock.run(
            lambda: defer.Deferred.fromCoroutine(self._replay()))

    async def _replay(self) -> int:
        done = 0
        for name, rec in self.journal.entries():
            if not os.path.exists(rec.path):
                _log.warn("pending instance {uid}: its file {path} is gone; "
                          "dropping the entry", uid=rec.sop_instance_uid,
                          path=rec.path)
                self.journal.discard(name)
                continue
            try:
                if await self._superseded(rec):
                    self.journal.discard(name)
                    continue
                previous = await self.index.record(rec)
            except NotReplicated:
                continue  # written, not confirmed: kept, the next entries go on
            except IndexUnavailable as exc:
                _log.info("index unavailable, {n} journal entries still "
                          "pending: {why}", n=len(self.journal), why=exc)
                break
            if previous and previous != rec.path and os.path.exists(previous):
                _delete_file(previous)
            self.journal.discard(name)
            done += 1
        if done:
            _log.info("indexed {n} pending instances", n=done)
        return done

    async def _superseded(self, rec: InstanceRecord) -> bool:
        current = await self.index.get(rec.sop_instance_uid)
        if not current:
            return False
        try:
            newer = float(current.get("received_at", "")) > rec.received_at
        except ValueError:
            return False
        if not newer:
            return False
        if current.get("path") != rec.path:
            _delete_file(rec.path)
        return True

    def pending(self) -> int:
        """How many entries wait."""
        return len(self.journal)
