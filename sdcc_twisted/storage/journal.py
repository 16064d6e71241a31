"""The pending journal: instances stored on disk but not yet indexed.

When Redis does not answer, the C-STORE still succeeds (the file is durably in
place) and its :class:`InstanceRecord` goes here, one JSON file per record,
normally in ``{data_dir}/pending/``.  :class:`JournalReplayer` indexes them, in
order, once Redis is back.

:meth:`PendingJournal.append` does blocking file work (write, fsync of the
file and of the directory); run it where the store's own fsync runs, on the
thread pool (``deferToThreadPool``), not on the reactor thread.  The replayer
reads and deletes entries in bounded batches through the same thread pool.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from sdcc_twisted.storage.files import fsync_directory, make_private_dirs, remove_quietly
from sdcc_twisted.storage.index import IInstanceIndex, IndexUnavailable, NotReplicated
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.records import InstanceRecord

_log = get_logger("sdcc.journal")

#: The journal's directory under ``[server] data_dir``.
PENDING_DIR: Final = "pending"
#: Entries that kept failing, under the journal's directory.
QUARANTINE_DIR: Final = "quarantine"
#: Entries a replay round reads at once (memory and reactor time per step).
REPLAY_BATCH: Final = 256
#: Rounds an entry may fail before it goes to the quarantine.
MAX_ENTRY_FAILURES: Final = 3
#: Seconds a finished index log segment is kept after its records reached
#: Redis: more than the append-only file's fsync interval (one second, up to
#: two when the disk is slow), so that a power cut cannot take the index
#: entries and their log lines together.
RETIRE_DELAY: Final = 3.0

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
        """Write ``rec`` durably (tmp, fsync, rename, fsync dir); its name.

        Raises:
            OSError: no entry was made (nothing is left behind).
        """
        make_private_dirs(self.directory)
        name = (f"{time.time_ns():020d}-{os.getpid()}-"
                f"{next(self._sequence):08d}{_SUFFIX}")
        body = json.dumps({"format": _FORMAT, "record": rec.to_dict()},
                          sort_keys=True).encode("utf-8")
        tmp = os.path.join(self.directory, "." + name + ".tmp")
        path = os.path.join(self.directory, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            fsync_directory(self.directory)
        except BaseException:
            for each in (tmp, path):
                try:
                    os.unlink(each)
                except OSError:
                    pass
            raise
        return name

    @property
    def quarantine_dir(self) -> str:
        """Where entries that keep failing are set aside."""
        return os.path.join(self.directory, QUARANTINE_DIR)

    def names(self) -> list[str]:
        """The pending entries' names, oldest first (lists them all)."""
        try:
            listing = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in listing if _is_entry(n))

    def count(self) -> int:
        """How many entries are pending (blocking; reads the directory
        without holding the names)."""
        try:
            with os.scandir(self.directory) as listing:
                return sum(1 for entry in listing if _is_entry(entry.name))
        except FileNotFoundError:
            return 0

    def entries(self) -> list[tuple[str, InstanceRecord]]:
        """The pending records, oldest first (reads them all).

        A file that cannot be read back is moved to the quarantine, logged
        and left out, so that it does not block the others.
        """
        result = []
        for name, rec, _ in self.load(self.names()):
            if isinstance(rec, Exception):
                self.quarantine(name, rec)
            else:
                result.append((name, rec))
        return result

    def batch(self, limit: int, skip: frozenset[str] = frozenset()
              ) -> list[tuple[str, InstanceRecord | Exception, bool]]:
        """Up to ``limit`` entries not in ``skip``, as :meth:`load` gives
        them; blocking.  The directory is read only as far as needed, so the
        cost and memory do not grow with the backlog; the entries come in
        directory order, sorted within the batch (the replay is conditional
        on each record's sequence, so the order across batches is free)."""
        names = []
        try:
            with os.scandir(self.directory) as listing:
                for entry in listing:
                    if _is_entry(entry.name) and entry.name not in skip:
                        names.append(entry.name)
                        if len(names) >= limit:
                            break
        except FileNotFoundError:
            return []
        return self.load(sorted(names))

    def load(self, names: list[str]) -> list[tuple[str, InstanceRecord | Exception, bool]]:
        """``(name, record or why it cannot be read, whether its file
        exists)`` for each entry still there; blocking."""
        result: list[tuple[str, InstanceRecord | Exception, bool]] = []
        for name in names:
            try:
                with open(os.path.join(self.directory, name), "rb") as handle:
                    rec = _record_of(json.loads(handle.read().decode("utf-8")))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                result.append((name, exc, False))
                continue
            result.append((name, rec, os.path.exists(rec.path)))
        return result

    def quarantine(self, name: str, why: object) -> None:
        """Move an entry to :attr:`quarantine_dir` and log it; blocking."""
        path = os.path.join(self.directory, name)
        try:
            make_private_dirs(self.quarantine_dir)
            os.replace(path, os.path.join(self.quarantine_dir, name))
        except OSError as exc:
            _log.error("cannot move the pending journal entry {path} to the "
                       "quarantine: {why}", path=path, why=exc)
            return
        _log.error("pending journal entry {name} keeps failing ({why}); moved to "
                   "{where}. List with 'sdcc-admin quarantine', retry with "
                   "'sdcc-admin quarantine --retry'", name=name, why=why,
                   where=self.quarantine_dir)

    def quarantined(self) -> list[tuple[str, InstanceRecord | Exception, bool]]:
        """The quarantined entries, as :meth:`load` gives them."""
        try:
            names = sorted(n for n in os.listdir(self.quarantine_dir) if _is_entry(n))
        except FileNotFoundError:
            return []
        return PendingJournal(self.quarantine_dir).load(names)

    def retry(self, name: str) -> None:
        """Move a quarantined entry back to the journal.

        Raises:
            OSError: it is not in the quarantine (FileNotFoundError) or
                cannot be moved.
        """
        if not _is_entry(name) or os.sep in name:
            raise FileNotFoundError(errno.ENOENT, "not a journal entry name", name)
        os.replace(os.path.join(self.quarantine_dir, name),
                   os.path.join(self.directory, name))

    def discard(self, *names: str) -> None:
        """Delete entries (gone already is fine); blocking."""
        for name in names:
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass


def _is_entry(name: str) -> bool:
    return name.endswith(_SUFFIX) and not name.startswith(".")


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

    Redis answering a write does not mean it is on disk: its append-only
    file is fsynced about every second (``appendfsync everysec``, up to two
    seconds behind when the disk is slow).  So with ``retire_delay`` and a
    ``clock`` a finished segment is deleted only that many seconds later
    (:data:`RETIRE_DELAY` with fsync on; issue 11, finding 3), and
    :meth:`close` waits for them.

    :meth:`reserve` and :meth:`settle` run on the reactor thread;
    :meth:`append` may run on any thread.
    """

    SEGMENT_RECORDS = 1000

    def __init__(self, directory: str, fsync: bool = True,
                 clock: IReactorTime | None = None, retire_delay: float = 0.0) -> None:
        self.directory = directory
        self.fsync = fsync
        self.clock = clock
        self.retire_delay = retire_delay if clock is not None else 0.0
        self._retiring: dict[int, defer.Deferred[None]] = {}
        make_private_dirs(directory)
        self._fds: dict[int, int] = {}
        self._write_lock = threading.Lock()   # appends come from pool threads
        self._open: dict[int, int] = {}      # segment -> records not yet settled
        self._current = max(self._segments(), default=0) + 1
        self._in_current = 0

    @classmethod
    def in_data_dir(cls, data_dir: str, fsync: bool = True,
                    clock: IReactorTime | None = None) -> IndexLog:
        """The log ``{data_dir}/index.wal.N``; with a clock and fsync on,
        segments retire :data:`RETIRE_DELAY` seconds after they finished."""
        return cls(data_dir, fsync, clock, RETIRE_DELAY if fsync else 0.0)

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
        """The segment the next record goes to (counted as on its way).  The
        first segment opens with the first record, so a server that never
        starts leaves no file behind."""
        if self._current not in self._fds:
            self._start(self._current)
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
        fsync runs).

        The whole line is written (a short write is completed) and, with
        ``fsync``, made durable before this returns.  On any failure the
        segment is cut back to where the line began, so that no torn line
        precedes the next record, and the error is raised: the record then
        has no copy here.

        Raises:
            OSError: the line could not be written or synced (ENOSPC, EIO,
                EBADF once the log is closed, ...).
        """
        line = json.dumps({"format": _FORMAT, "record": rec.to_dict()},
                          sort_keys=True).encode("utf-8") + b"\n"
        with self._write_lock:
            fd = self._fds.get(segment)
            if fd is None:
                raise OSError(errno.EBADF, "the index log is closed")
            start = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
            except OSError:
                self._cut(fd, start, segment)
                raise
        if self.fsync:
            os.fdatasync(fd)

    def _cut(self, fd: int, size: int, segment: int) -> None:
        """Truncate a segment back to ``size`` after a failed append."""
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            # recovery skips a torn line, and finds the record after it
            _log.error("cannot cut a torn line off the index log segment "
                       "{path}: {why}", path=self._path(segment), why=exc)

    def settle(self, segment: int) -> None:
        """One record of ``segment`` reached the index or the journal, or
        was never written.  Never settle a record whose only copy is here:
        its segment must stay for :meth:`recover`."""
        if segment not in self._open:
            return                  # closed meanwhile: recovery handles it
        self._open[segment] -= 1
        self._retire_if_done(segment)

    def _retire_if_done(self, segment: int) -> None:
        if segment != self._current and self._open.get(segment) == 0:
            del self._open[segment]
            with self._write_lock:
                os.close(self._fds.pop(segment))
            self._retire(segment)

    def _retire(self, segment: int) -> None:
        """Delete a finished segment, after ``retire_delay`` if there is one
        (an empty segment holds nothing to wait for)."""
        try:
            empty = os.path.getsize(self._path(segment)) == 0
        except OSError:
            empty = False
        if not self.retire_delay or empty:
            self._unlink(segment)
            return
        assert self.clock is not None
        later = task.deferLater(self.clock, self.retire_delay, self._unlink, segment)
        self._retiring[segment] = later
        later.addBoth(self._retired, segment)

    def _retired(self, result: Any, segment: int) -> Any:
        del self._retiring[segment]
        return result

    def _unlink(self, segment: int) -> None:
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
                    rec = _parse_line(raw)
                    if rec is None:
                        continue  # cut short by the crash: its C-STORE was not answered
                    journal.append(rec)
                    moved += 1
            os.unlink(self._path(segment))
        return moved

    def close(self) -> "defer.Deferred[None]":
        """Close the segment files; delete those whose every record settled
        (after the retire delay: the Deferred fires then).

        After a clean stop (every store answered and indexed or journaled)
        nothing is left for :meth:`recover` at the next start.
        """
        with self._write_lock:
            fds, self._fds = self._fds, {}
            for fd in fds.values():
                os.close(fd)
        for segment in fds:
            if self._open.get(segment) == 0:
                self._retire(segment)
        self._open.clear()
        waiting = list(self._retiring.values())
        return defer.gatherResults(waiting).addCallback(lambda _: None)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a short write is not an
    error; the next call either continues or raises)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _parse_line(raw: bytes) -> InstanceRecord | None:
    """The record of one index log line, or None for a torn one.

    A line that a failed append left torn and could not cut off runs into
    the next record; that record starts at the last ``{"format"`` (sort_keys
    puts it first, and a JSON string cannot hold an unescaped quote).
    """
    start = raw.rfind(b'{"format"')
    if start < 0:
        return None
    try:
        return _record_of(json.loads(raw[start:].decode("utf-8")))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _record_of(data: dict[str, object]) -> InstanceRecord:
    """An :class:`InstanceRecord` from a decoded log line or journal file."""
    if data.get("format") != _FORMAT:
        raise ValueError(f"unknown format {data.get('format')!r}")
    fields = dict(data["record"])  # type: ignore[call-overload]
    fields["attributes"] = dict(fields.get("attributes") or {})
    return InstanceRecord(**fields)


class JournalReplayer(service.Service):
    """Indexes the journal's entries on start and every ``interval`` seconds.

    A round reads :data:`REPLAY_BATCH` entries at a time off the reactor
    thread (``run_blocking``), indexes them one by one and deletes them in
    one go; the first :class:`IndexUnavailable` ends the round and the next
    tick tries again.  The loop cannot die: every round is guarded and a
    failure is logged.  An entry that fails for any other reason is skipped
    for the round, so it blocks no other; after :data:`MAX_ENTRY_FAILURES`
    rounds (at once if it cannot be read) it moves to ``pending/quarantine/``
    with a log line.  A
    :class:`NotReplicated` entry (written, not yet on a replica) is kept for
    the next round and the round goes on.

    An entry whose file is gone is dropped.  An entry older (by sequence)
    than what the index holds for its SOP Instance UID is not indexed, in the
    same step as the check (:meth:`IInstanceIndex.record`): its file is
    deleted unless the newer copy uses the same path, and the entry is
    dropped.
    """

    def __init__(self, journal: PendingJournal, index: IInstanceIndex,
                 clock: IReactorTime, interval: float = 5.0,
                 run_blocking: Callable[..., "defer.Deferred[Any]"] | None = None) -> None:
        self.journal = journal
        self.index = index
        self.clock = clock
        self.interval = interval
        self.run_blocking = run_blocking or defer.maybeDeferred
        self._lock = defer.DeferredLock()
        self._loop: task.LoopingCall | None = None
        self._failures: dict[str, int] = {}
        self._stopping = False
        self._indexed = 0           # in the round under way

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        # a round in progress ends after the entry it is at (bounded by the
        # index's timeout); the rest waits for the next start
        return self._lock.run(lambda: None)

    def _tick(self) -> None:
        """One round, unless one runs; never raises (the loop must live)."""
        if self._lock.locked:
            return
        self.replay_now().addErrback(
            lambda f: _log.failure("journal replay round failed; the next "
                                   "round in {s:g} s tries again", f, s=self.interval))

    def replay_now(self) -> defer.Deferred[int]:
        """Index what is pending now; fires with how many were indexed."""
        return self._lock.run(
            lambda: defer.Deferred.fromCoroutine(self._replay()))

    async def _replay(self) -> int:
        self._indexed = 0
        try:
            await self._batches()
        finally:
            if self._indexed:
                _log.info("indexed {n} pending instances", n=self._indexed)
        return self._indexed

    async def _batches(self) -> None:
        """Work through the journal batch by batch (see the class)."""
        skip: set[str] = set()
        while True:
            batch = await self.run_blocking(self.journal.batch, REPLAY_BATCH,
                                            frozenset(skip))
            finished: list[str] = []
            try:
                for name, rec, present in batch:
                    if self._stopping:
                        return
                    if isinstance(rec, Exception):
                        skip.add(name)
                        await self._failed(name, rec, permanent=not isinstance(rec, OSError))
                        continue
                    if not present:
                        _log.warn("pending instance {uid}: its file {path} is gone; "
                                  "dropping the entry", uid=rec.sop_instance_uid,
                                  path=rec.path)
                        finished.append(name)
                        continue
                    try:
                        await self._index(rec)
                    except NotReplicated:
                        skip.add(name)      # written, not confirmed: kept; go on
                        continue
                    except IndexUnavailable as exc:
                        _log.info("index unavailable, journal entries stay pending: "
                                  "{why}", why=exc)
                        return
                    except Exception as exc:  # noqa: BLE001 - one entry, not the round
                        skip.add(name)
                        await self._failed(name, exc, permanent=False)
                        continue
                    finished.append(name)
                    self._failures.pop(name, None)
                    self._indexed += 1
            finally:
                if finished:
                    await self.run_blocking(self.journal.discard, *finished)
            if len(batch) < REPLAY_BATCH:
                return

    async def _index(self, rec: InstanceRecord) -> None:
        """Index one record; the index keeps a newer entry (by sequence),
        and whichever file is no longer indexed is deleted."""
        superseded = await self.index.record(rec)
        if superseded:
            await self.run_blocking(remove_quietly, superseded)

    async def _failed(self, name: str, why: Exception, permanent: bool) -> None:
        """An entry failed this round: quarantine it if it keeps failing."""
        count = self._failures.get(name, 0) + 1
        if permanent or count >= MAX_ENTRY_FAILURES:
            self._failures.pop(name, None)
            await self.run_blocking(self.journal.quarantine, name, why)
            return
        self._failures[name] = count
        _log.warn("pending journal entry {name} failed ({why}); attempt {n} of "
                  "{most}, it is skipped this round", name=name, why=why, n=count,
                  most=MAX_ENTRY_FAILURES)

