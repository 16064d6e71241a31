"""The streaming DICOM Part 10 writer: temp file, fsync, atomic rename.

A received C-STORE data set is never decoded to be stored.  :class:`Sink`
writes the 128-byte preamble, ``DICM`` and the File Meta Information
(PS3.10 7.1, group 0002 in Explicit VR Little Endian) into a temp file, then
every data set fragment verbatim as it arrives, while a
:class:`~sdcc_twisted.core.dataset_head.DatasetWalker` checks the structure and
collects the index attributes.  :meth:`Sink.finish` checks the data set's SOP
Class and Instance UIDs against the command's, fsyncs, and renames the file
into ``{root}/{Study}/{Series}/{SOPInstance}.dcm``.  Nothing partial stays on
disk: every failure removes the temp file.

Leaf module: no Twisted.  :meth:`Sink.finish` blocks (fsync); the caller runs
it in a thread when fsync is on.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import os
import re
import secrets
from dataclasses import dataclass
from typing import Callable, Final

from sdcc_twisted.core.conformance import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_DATASET_UNPARSEABLE,
    STATUS_DISK_FULL,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
)
from sdcc_twisted.core.dataset_head import DatasetWalker
from sdcc_twisted.core.part10 import Part10Error, file_meta_bytes
from sdcc_twisted.core.errors import DatasetError
from sdcc_twisted.logs import get_logger

__all__ = [
    "FileStore",
    "disk_error",
    "fsync_directory",
    "make_private_dirs",
    "MISSING_SERIES_DIR",
    "MISSING_STUDY_DIR",
    "Sink",
    "StorageError",
    "StoredFile",
    "uid_path_part",
]

log = get_logger("sdcc.storage")

#: Directory names used when the data set has no (or an empty) Study or
#: Series Instance UID.  Neither matches the UID grammar nor the hashed form
#: (``x`` + 32 hex digits), so neither can collide with a real UID's name.
MISSING_STUDY_DIR: Final = "unknown-study"
MISSING_SERIES_DIR: Final = "unknown-series"

#: PS3.5 9.1: components of digits without leading zeros, separated by dots.
_UID_RE: Final = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*\Z")
_MAX_UID_LENGTH: Final = 64
_MAX_COMMENT: Final = 64               # Error Comment is LO (PS3.7 C.4)
_WRITE_BUFFER: Final = 256 * 1024
_TEMP_SUFFIX: Final = ".part"
_DISK_FULL_ERRNOS: Final = frozenset(
    {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class StorageError(Exception):
    """A C-STORE could not be stored.

    Attributes:
        status: the DIMSE status to answer (PS3.4 Table B.2-1, PS3.7 C).
        comment: the Error Comment (0000,0902), at most 64 characters.
    """

    def __init__(self, status: int, comment: str) -> None:
        comment = comment[:_MAX_COMMENT]
        super().__init__(f"0x{status:04X}: {comment}")
        self.status = status
        self.comment = comment


def disk_error(exc: OSError) -> StorageError:
    """Map a disk error to an A7xx Refused: Out of Resources status."""
    if exc.errno in _DISK_FULL_ERRNOS:
        return StorageError(STATUS_DISK_FULL, "Out of resources: disk full")
    reason = exc.strerror or type(exc).__name__
    return StorageError(STATUS_OUT_OF_RESOURCES, f"Out of resources: {reason}")


def uid_path_part(uid: str) -> str:
    """Return a safe file or directory name for a UID.

    A string matching the UID grammar (PS3.5 9.1, at most 64 characters) is
    used as it is; anything else, including the empty string, becomes ``x``
    and the first 32 hex digits of its SHA-256.  The result is never empty,
    ``.``, ``..`` or contains a path separator.
    """
    if 0 < len(uid) <= _MAX_UID_LENGTH and _UID_RE.match(uid):
        return uid
    digest = hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()
    return "x" + digest[:32]


def _clean_uid(value: str) -> str:
    """Strip the NUL and space padding of a UI value (PS3.5 6.2, 9.1)."""
    return value.strip("\x00 ")


@dataclass(frozen=True)
class StoredFile:
    """A Part 10 file durably in place.

    Attributes:
        path: absolute path of the file.
        size: file size in bytes (preamble and meta included).
        sop_class_uid, sop_instance_uid: from the command, equal to the data
            set's own.
        transfer_syntax: the presentation context's, as in (0002,0010).
        attributes: keyword -> value of the index attributes found in the
            data set (see :data:`sdcc_twisted.core.records.HEAD_TAGS`).
        warnings: irregularities of the data set that were stored as they
            came (odd element lengths, tags out of order).
    """

    path: str
    size: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    attributes: dict[str, str]
    warnings: tuple[str, ...] = ()


class FileStore:
    """The storage area: ``{root}/{Study}/{Series}/{SOPInstance}.dcm``."""

    def __init__(self, root: str, fsync: bool = True, tmp_dir: str | None = None,
                 max_head_bytes: int = 1 << 20, file_mode: int = 0o600,
                 dir_mode: int = 0o700) -> None:
        """Create the root and the temp directory if they are missing.

        Args:
            root: the storage root.
            fsync: fsync each file and its directory before it counts as
                stored (PS3.4 B.4.1: "Success" means the instance is kept).
            tmp_dir: where files are written while they arrive; must be on
                the root's filesystem for the rename to be atomic.  Default
                ``{root}/.tmp``.
            file_mode, dir_mode: the modes of the files and of the
                directories this store creates.  Images hold patient data:
                owner-only by default; ``[storage] file_mode`` and
                ``dir_mode`` may open them to a group.
        """
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.max_head_bytes = max_head_bytes
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.tmp_dir = os.path.abspath(tmp_dir or os.path.join(self.root, ".tmp"))
        for directory in (self.root, self.tmp_dir):
            make_private_dirs(directory, dir_mode)
        self._real_root = os.path.realpath(self.root)
        self._verified: set[str] = set()
        # temp names: a random prefix per store, then a counter (no
        # getrandom call per file); O_EXCL still guards against clashes
        self._temp_prefix = secrets.token_hex(8)
        self._temp_count = itertools.count()

    def temp_name(self) -> str:
        """A fresh name for a temp file in the temp directory."""
        return f"{self._temp_prefix}-{next(self._temp_count)}{_TEMP_SUFFIX}"

    def remove_stale_temp_files(self) -> int:
        """Delete the temp files a crash left behind; return how many.

        Call at startup, before any sink is open.
        """
        removed = 0
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                if entry.name.endswith(_TEMP_SUFFIX) and entry.is_file(follow_symlinks=False):
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                    removed += 1
        return removed

    def known_directory(self, directory: str) -> bool:
        """True if ``directory`` was seen to exist (and checked to be inside
        the root) before: the commit then renames into it at once."""
        return directory in self._verified

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        """Return where an instance is stored.

        Each UID becomes a path part through :func:`uid_path_part`; an empty
        Study or Series UID becomes :data:`MISSING_STUDY_DIR` or
        :data:`MISSING_SERIES_DIR`.

        Raises:
            StorageError: (0110) if the path would resolve outside the root,
                for instance through a symbolic link planted under it.
        """
        study = uid_path_part(study_uid) if study_uid else MISSING_STUDY_DIR
        series = uid_path_part(series_uid) if series_uid else MISSING_SERIES_DIR
        name = uid_path_part(sop_instance_uid) + ".dcm"
        directory = os.path.join(self.root, study, series)
        if directory not in self._verified:
            real = os.path.realpath(directory)
            if os.path.commonpath([real, self._real_root]) != self._real_root:
                raise StorageError(STATUS_PROCESSING_FAILURE, "Storage path outside the root")
            if os.path.isdir(directory):
                # Checked once: the rename into it replaces a link named like
                # the file, it never writes through one.
                if len(self._verified) > 100_000:
                    self._verified.clear()
                self._verified.add(directory)
        return os.path.join(directory, name)

    def open_sink(self, sop_class_uid: str, sop_instance_uid: str,
                  transfer_syntax: str, calling_ae: str) -> Sink:
        """Open a temp file for one incoming data set and write its meta.

        Args:
            sop_class_uid: Affected SOP Class UID (0000,0002) of the command.
            sop_instance_uid: Affected SOP Instance UID (0000,1000).
            transfer_syntax: the transfer syntax accepted for the context.
            calling_ae: the association's Calling AE Title.

        Raises:
            StorageError: A7xx when the temp file cannot be created.
        """
        sink = self.new_sink(sop_class_uid, sop_instance_uid, transfer_syntax, calling_ae)
        sink.open()
        return sink

    def new_sink(self, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax: str, calling_ae: str) -> Sink:
        """A sink whose temp file is not created yet (no I/O): the caller
        runs :meth:`Sink.open` where blocking is allowed.

        Raises:
            StorageError: Cxxx when the File Meta cannot be encoded.
        """
        return Sink(self, _clean_uid(sop_class_uid), _clean_uid(sop_instance_uid),
                    _clean_uid(transfer_syntax), calling_ae.strip())


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` where the
    C library has it (Linux), else None.  It starts writing a range to disk
    and returns: the later fsync then waits for less."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return lambda fd, offset, count: function(fd, offset, count, _SYNC_FILE_RANGE_WRITE)


_SYNC_FILE_RANGE_WRITE: Final = 2
_start_writeback = _writeback_starter()


class _GatherWriter:
    """Appends fragments to a file descriptor without copying them.

    Fragments (views into the received PDUs) are kept until about
    ``_WRITE_BUFFER`` bytes are pending, then written with one ``writev``: the
    kernel's copy into the page cache is the only copy of each byte.  With
    ``early_writeback`` (fsync on) each such batch is also sent on its way to
    the disk while the rest of the data set arrives, so that the fsync at the
    end waits for the tail only.
    """

    _MAX_PIECES = 512  # well under IOV_MAX (1024 on Linux)

    def __init__(self, fd: int, early_writeback: bool = False) -> None:
        self._fd = fd
        self._pieces: list[bytes | memoryview] = []
        self._pending = 0
        self._offset = 0
        self._writeback = _start_writeback if early_writeback else None

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes | memoryview) -> None:
        self._pieces.append(data)
        self._pending += len(data)
        if self._pending >= _WRITE_BUFFER or len(self._pieces) >= self._MAX_PIECES:
            start = self._offset
            self.flush()
            if self._writeback is not None:
                self._writeback(self._fd, start, self._offset - start)

    def flush(self) -> None:
        pieces = self._pieces
        while pieces:
            written = os.writev(self._fd, pieces)
            self._pending -= written
            self._offset += written
            while pieces and written >= len(pieces[0]):
                written -= len(pieces[0])
                pieces.pop(0)
            if written:
                pieces[0] = memoryview(pieces[0])[written:]

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pieces = []
            os.close(self._fd)


class Sink:
    """One data set on its way to disk (see the module docstring).

    Attributes:
        bytes_written: data set bytes written to the temp file so far.
    """

    def __init__(self, store: FileStore, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax: str, calling_ae: str) -> None:
        """Prepare the File Meta and the walker, no I/O (use
        :meth:`FileStore.open_sink`, or :meth:`FileStore.new_sink` and
        :meth:`open`)."""
        self.bytes_written = 0
        self._store = store
        self._sop_class_uid = sop_class_uid
        self._sop_instance_uid = sop_instance_uid
        self._transfer_syntax = transfer_syntax
        self._walker = DatasetWalker(transfer_syntax, max_head_bytes=store.max_head_bytes)
        self._failure: StorageError | None = None
        self._closed = False
        self._file: _GatherWriter | None = None
        try:
            meta = file_meta_bytes(sop_class_uid, sop_instance_uid, transfer_syntax, calling_ae)
        except Part10Error as exc:
            raise StorageError(STATUS_CANNOT_UNDERSTAND, str(exc)) from None
        self._meta = meta
        self._meta_size = len(meta)
        self.temp_path = os.path.join(store.tmp_dir, store.temp_name())

    def open(self) -> None:
        """Create the temp file and write preamble and meta.  Blocking.

        Raises:
            StorageError: A7xx when the temp file cannot be created.
        """
        store = self._store
        try:
            fd = os.open(self.temp_path,
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         store.file_mode)
            os.fchmod(fd, store.file_mode)      # exactly, whatever the umask
        except OSError as exc:
            self._closed = True
            raise disk_error(exc) from exc
        self._file = _GatherWriter(fd, early_writeback=store.fsync)
        try:
            self._file.write(self._meta)
        except OSError as exc:
            self.abort()
            raise disk_error(exc) from exc

    def write(self, data: bytes | memoryview) -> None:
        """Append a data set fragment verbatim and walk it (:meth:`inspect`
        then :meth:`store`)."""
        self.inspect(data)
        self.store(data)

    def inspect(self, data: bytes | memoryview) -> None:
        """Walk a data set fragment (CPU only, no I/O: any thread).

        A broken data set structure is remembered, not raised: the rest of
        the data is not written and :meth:`finish` reports it (C210).
        """
        if self._failure is not None:
            return
        try:
            self._walker.feed(data)
        except DatasetError as exc:
            self._failure = StorageError(
                STATUS_DATASET_UNPARSEABLE, f"Data set unparseable at {exc.offset}: {exc}")

    def store(self, data: bytes | memoryview) -> None:
        """Append an inspected fragment to the temp file.  Blocking.

        Raises:
            StorageError: A702 when the disk is full, A700 on any other disk
                error; the temp file is then removed and later data is
                discarded.
        """
        if self._failure is not None or self._closed:
            if self._failure is not None and not self._closed:
                self._discard()
            return
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:
            self._failure = disk_error(exc)
            self._discard()
            raise self._failure from exc
        self.bytes_written += len(data)

    def finish(self) -> StoredFile:
        """Check, fsync and move the file into place.  Blocking.

        Raises:
            StorageError: C210 if the data set is truncated or malformed or
                lacks SOP Class or Instance UID; A900 if they differ from the
                command's; A7xx on disk errors.  The temp file is gone.
        """
        if self._closed and self._failure is None:
            raise StorageError(STATUS_PROCESSING_FAILURE, "Sink already closed")
        try:
            return self._finish()
        except StorageError as exc:
            self._failure = self._failure or exc
            self._discard()
            raise
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Close and delete the temp file; idempotent, never raises."""
        try:
            self._discard()
        except Exception:  # pragma: no cover - _discard already swallows
            pass

    # -- internals -------------------------------------------------------------
    def _finish(self) -> StoredFile:
        """The body of :meth:`finish`; raises StorageError on failure."""
        if self._failure is not None:
            raise self._failure
        try:
            self._walker.finish()
        except DatasetError as exc:
            raise StorageError(STATUS_DATASET_UNPARSEABLE,
                               f"Data set unparseable at {exc.offset}: {exc}") from exc
        values = self._walker.values
        for keyword, expected, tag, name in (
                ("SOPClassUID", self._sop_class_uid, "(0008,0016)", "SOP Class UID"),
                ("SOPInstanceUID", self._sop_instance_uid, "(0008,0018)",
                 "SOP Instance UID")):
            found = values.get(keyword, "")
            if not found:
                raise StorageError(STATUS_DATASET_UNPARSEABLE,
                                   f"{name} {tag} missing from data set")
            if found != expected:
                raise StorageError(STATUS_DATASET_MISMATCH,
                                   f"{name} in data set differs from command")
        store = self._store
        path = store.path_for(values.get("StudyInstanceUID", ""),
                              values.get("SeriesInstanceUID", ""),
                              self._sop_instance_uid)
        file = self._file
        assert file is not None
        try:
            file.flush()
            if store.fsync:
                os.fsync(file.fileno())
            self._file = None
            file.close()
            directory = os.path.dirname(path)
            created: list[str] = []
            if store.known_directory(directory):
                try:
                    os.replace(self.temp_path, path)
                except FileNotFoundError:
                    # removed behind our back (not the temp file: it is open
                    # only to us): make it again
                    created = _makedirs(directory, store.root, store.dir_mode)
                    os.replace(self.temp_path, path)
            else:
                created = _makedirs(directory, store.root, store.dir_mode)
                os.replace(self.temp_path, path)
            self._closed = True
            if store.fsync:
                for each in [directory, *created]:
                    fsync_directory(each)
        except OSError as exc:
            raise disk_error(exc) from exc
        return StoredFile(
            path=path,
            size=self._meta_size + self.bytes_written,
            sop_class_uid=self._sop_class_uid,
            sop_instance_uid=self._sop_instance_uid,
            transfer_syntax=self._transfer_syntax,
            attributes=dict(values),
            warnings=tuple(self._walker.warnings),
        )

    def _discard(self) -> None:
        """Close the temp file if open and delete it if not yet renamed."""
        file, self._file = self._file, None
        if file is not None:
            file._pieces = []  # nothing more reaches a file we throw away
            try:
                file.close()
            except OSError:
                pass
        if not self._closed:
            self._closed = True
            try:
                os.unlink(self.temp_path)
            except OSError:
                pass


def _makedirs(directory: str, root: str, mode: int) -> list[str]:
    """Create ``directory`` and missing parents below ``root`` with ``mode``.

    Returns the parents whose entries changed (to fsync them), deepest first.
    """
    changed: list[str] = []
    current = directory
    while not os.path.isdir(current) and current != root:
        changed.append(os.path.dirname(current))
        current = os.path.dirname(current)
    if changed:
        make_private_dirs(directory, mode)
    return changed


def remove_quietly(path: str) -> None:
    """Remove a file no longer indexed (an older or moved copy); one already
    gone is fine, any other failure is logged (blocking)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warn("cannot remove {path}, which is no longer indexed: {why}",
                 path=path, why=exc.strerror)


def make_private_dirs(directory: str, mode: int = 0o700) -> None:
    """``os.makedirs`` where every directory it creates gets exactly
    ``mode`` (whatever the umask); existing ones are left as they are."""
    missing = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        if os.path.lexists(current):    # a file where a folder must go
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), current)
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for each in reversed(missing):
        try:
            os.mkdir(each, mode)
        except FileExistsError:
            if not os.path.isdir(each):
                raise
            continue                # made meanwhile by another store
        os.chmod(each, mode)


def fsync_directory(path: str) -> None:
    """fsync a directory so that a rename or new entry in it is durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
