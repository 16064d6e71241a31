"""Tests for :mod:`sdcc_twisted.storage.files`, the streaming Part 10 writer."""

from __future__ import annotations

import errno
import io
import os
import struct
import tempfile
import warnings
from typing import Iterable

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import dcmwrite
from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.storage import files as storage
from sdcc_twisted.core.conformance import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
    STATUS_DATASET_MISMATCH,
    STATUS_DATASET_UNPARSEABLE,
    STATUS_DISK_FULL,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
)
from sdcc_twisted.storage.files import (
    MISSING_SERIES_DIR,
    MISSING_STUDY_DIR,
    FileStore,
    Sink,
    StorageError,
    StoredFile,
    uid_path_part,
)

SC = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.2.1125.1"
SERIES = "1.2.826.0.1.3680043.2.1125.1.2"
INSTANCE = "1.2.826.0.1.3680043.2.1125.1.2.3"

ENCODINGS = (
    (IMPLICIT_VR_LITTLE_ENDIAN, True, True),
    (EXPLICIT_VR_LITTLE_ENDIAN, False, True),
    (EXPLICIT_VR_BIG_ENDIAN, False, False),
)


def make_dataset(instance: str = INSTANCE, study: str | None = STUDY,
                 series: str | None = SERIES, sop_class: str = SC) -> Dataset:
    """A small image data set with a sequence."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance
    ds.Modality = "OT"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = [item]
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID1"
    if study is not None:
        ds.StudyInstanceUID = study
    if series is not None:
        ds.SeriesInstanceUID = series
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 16
    ds.PixelData = b"\x01\x00\x02\x00\x03\x00\x04\x00"
    return ds


def encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    """The bare data set bytes, as a C-STORE carries them."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=implicit, little_endian=little)
    return buf.getvalue()


def chunks(data: bytes, size: int = 1000) -> Iterable[memoryview]:
    """Split ``data`` into memoryview pieces."""
    view = memoryview(data)
    return (view[i:i + size] for i in range(0, len(data), size))


def after_meta(path: str) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information."""
    with open(path, "rb") as f:
        raw = f.read()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return raw[fp.tell():]


def all_files(root: str) -> list[str]:
    """Every file under ``root``, relative paths, sorted."""
    found = []
    for base, _dirs, files in os.walk(root):
        found.extend(os.path.relpath(os.path.join(base, f), root) for f in files)
    return sorted(found)


class _FailingFile:
    """Stands in for the sink's file: writes raise the given OSError."""

    def __init__(self, real: io.BufferedWriter, error: int) -> None:
        self.real = real
        self.error = error

    def write(self, data: bytes) -> int:
        raise OSError(self.error, os.strerror(self.error))

    def flush(self) -> None:
        raise OSError(self.error, os.strerror(self.error))

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


class StoreTestCase(SynchronousTestCase):
    """A FileStore in a fresh temp directory, fsync off unless asked."""

    def setUp(self) -> None:
        """Create the store."""
        self.root = tempfile.mkdtemp(prefix="sdcc-store-")
        self.addCleanup(_rmtree, self.root)
        self.store = FileStore(self.root, fsync=False)

    def store_bytes(self, data: bytes, ts: str = EXPLICIT_VR_LITTLE_ENDIAN,
                    sop_class: str = SC, instance: str = INSTANCE,
                    calling_ae: str = "MODALITY") -> StoredFile:
        """Send ``data`` through a sink in pieces and finish it."""
        sink = self.store.open_sink(sop_class, instance, ts, calling_ae)
        for piece in chunks(data):
            sink.write(piece)
        return sink.finish()

    def assertNothingLeft(self) -> None:
        """No file anywhere under the root, temp directory included."""
        self.assertEqual(all_files(self.root), [])


def _rmtree(path: str) -> None:
    """Remove a test directory."""
    import shutil
    shutil.rmtree(path, ignore_errors=True)


class WriteTests(StoreTestCase):
    """Files written by a sink are valid Part 10 files holding the data set."""

    def test_round_trip_three_encodings(self) -> None:
        """In each base encoding the file reads back with pydicom, its meta
        is ours and the bytes after the meta are the data set sent."""
        for ts, implicit_vr, little in ENCODINGS:
            instance = INSTANCE + str(len(ts))
            data = encode(make_dataset(instance), implicit_vr, little)
            stored = self.store_bytes(data, ts, instance=instance)
            back = dcmread(stored.path)
            meta = back.file_meta
            self.assertEqual(meta.TransferSyntaxUID, ts)
            self.assertEqual(meta.MediaStorageSOPClassUID, SC)
            self.assertEqual(meta.MediaStorageSOPInstanceUID, instance)
            self.assertEqual(meta.ImplementationClassUID, IMPLEMENTATION_CLASS_UID)
            self.assertEqual(meta.ImplementationVersionName, IMPLEMENTATION_VERSION_NAME)
            self.assertEqual(meta.SourceApplicationEntityTitle, "MODALITY")
            self.assertEqual(meta.FileMetaInformationVersion, b"\x00\x01")
            self.assertEqual(back.PatientName, "Doe^Jane")
            self.assertEqual(after_meta(stored.path), data)
            self.assertEqual(stored.size, os.path.getsize(stored.path))
            self.assertEqual(stored.transfer_syntax, ts)
            self.assertEqual(stored.sop_instance_uid, instance)
            self.assertEqual(stored.sop_class_uid, SC)
            self.assertEqual(stored.attributes["PatientID"], "PID1")
            self.assertEqual(stored.attributes["StudyInstanceUID"], STUDY)

    def test_layout(self) -> None:
        """The file lands at {root}/{Study}/{Series}/{SOPInstance}.dcm and
        the temp directory is empty afterwards."""
        stored = self.store_bytes(encode(make_dataset()))
        self.assertEqual(stored.path,
                         os.path.join(self.root, STUDY, SERIES, INSTANCE + ".dcm"))
        self.assertEqual(stored.path, self.store.path_for(STUDY, SERIES, INSTANCE))
        self.assertEqual(os.listdir(self.store.tmp_dir), [])
        self.assertEqual(all_files(self.root), [os.path.join(STUDY, SERIES, INSTANCE + ".dcm")])

    def test_meta_encoding(self) -> None:
        """Group 0002 is Explicit VR LE with a correct group length; odd UIDs
        are NUL padded, AE and SH space padded; no Source AE when the
        calling AE is empty."""
        odd_instance = INSTANCE + "1"          # 33 characters
        self.assertEqual(len(odd_instance) % 2, 1)
        stored = self.store_bytes(encode(make_dataset(odd_instance)),
                                  instance=odd_instance, calling_ae="")
        with open(stored.path, "rb") as f:
            raw = f.read()
        self.assertEqual(raw[:128], b"\x00" * 128)
        self.assertEqual(raw[128:132], b"DICM")
        self.assertEqual(raw[132:140], b"\x02\x00\x00\x00UL\x04\x00")
        group_length = struct.unpack("<L", raw[140:144])[0]
        meta_end = 144 + group_length
        self.assertIn(odd_instance.encode() + b"\x00", raw[144:meta_end])
        self.assertIn(b"SDCC 1.1", raw[144:meta_end])
        self.assertNotIn(b"\x02\x00\x16\x00", raw[144:meta_end])
        self.assertEqual(raw[meta_end:meta_end + 2], b"\x08\x00")
        self.assertNotIn("SourceApplicationEntityTitle", dcmread(stored.path).file_meta)

    def test_odd_calling_ae_padded(self) -> None:
        """An odd-length calling AE is space padded and reads back."""
        stored = self.store_bytes(encode(make_dataset()), calling_ae="ABC")
        with open(stored.path, "rb") as f:
            self.assertIn(b"\x02\x00\x16\x00AE\x04\x00ABC ", f.read(400))
        self.assertEqual(dcmread(stored.path).file_meta.SourceApplicationEntityTitle, "ABC")

    def test_encapsulated_and_bundled_files(self) -> None:
        """Compressed data sets (pydicom's bundled files and one built with
        encapsulate) are stored byte for byte and read back."""
        for name in ("JPEG2000.dcm", "SC_rgb_rle.dcm", "JPEG-lossy.dcm",
                     "MR_small_bigendian.dcm"):
            path = get_testdata_file(name)
            source = dcmread(path)
            data = after_meta(path)
            ts = source.file_meta.TransferSyntaxUID
            stored = self.store_bytes(data, ts, source.SOPClassUID, source.SOPInstanceUID)
            back = dcmread(stored.path)
            self.assertEqual(after_meta(stored.path), data, name)
            self.assertEqual(back.file_meta.TransferSyntaxUID, ts)
            self.assertEqual(back.PixelData, source.PixelData)
        ds = make_dataset()
        ds.PixelData = encapsulate([b"\xff\xd8" + b"j" * 98 + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        data = encode(ds)
        stored = self.store_bytes(data, JPEG_BASELINE)
        self.assertEqual(after_meta(stored.path), data)

    def test_bytes_and_memoryview(self) -> None:
        """write() takes bytes and memoryviews; bytes_written counts the
        data set bytes."""
        data = encode(make_dataset())
        sink = self.store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        sink.write(data[:10])
        sink.write(memoryview(data)[10:])
        self.assertEqual(sink.bytes_written, len(data))
        self.assertEqual(after_meta(sink.finish().path), data)

    def test_group_0002_in_data_set_kept(self) -> None:
        """Group 0002 elements that a sender put in the data set are
        tolerated and stored verbatim."""
        extra = b"\x02\x00\x10\x00UI\x12\x00" + b"1.2.840.10008.1.2\x00"
        data = extra + encode(make_dataset())
        stored = self.store_bytes(data)
        with open(stored.path, "rb") as f:
            self.assertTrue(f.read().endswith(data))

    def test_fsync_on(self) -> None:
        """With fsync on, the file and the directories are fsynced before
        the file counts as stored."""
        store = FileStore(self.root, fsync=True)
        synced: list[int] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            synced.append(fd)
            real_fsync(fd)

        self.patch(storage.os, "fsync", fsync)
        sink = store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        sink.write(encode(make_dataset()))
        stored = sink.finish()
        self.assertTrue(os.path.exists(stored.path))
        # the file, the series directory, and the two new parents
        self.assertEqual(len(synced), 4)

    def test_custom_tmp_dir(self) -> None:
        """A given tmp_dir holds the temp file while the data set arrives."""
        tmp = os.path.join(self.root, "incoming")
        store = FileStore(self.root, fsync=False, tmp_dir=tmp)
        sink = store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        self.assertEqual(os.path.dirname(sink.temp_path), tmp)
        self.assertTrue(sink.temp_path.endswith(".part"))
        sink.write(encode(make_dataset()))
        sink.finish()
        self.assertEqual(os.listdir(tmp), [])


class OverwriteTests(StoreTestCase):
    """The same SOP Instance UID again replaces the file atomically."""

    def test_overwrite_replaces(self) -> None:
        """A second copy replaces the first through a rename (new inode),
        leaving one file with the new content."""
        first = encode(make_dataset())
        ds = make_dataset()
        ds.PatientID = "PID2"
        second = encode(ds)
        path = self.store_bytes(first).path
        inode = os.stat(path).st_ino
        handle = open(path, "rb")
        self.addCleanup(handle.close)
        stored = self.store_bytes(second)
        self.assertEqual(stored.path, path)
        self.assertEqual(after_meta(path), second)
        self.assertNotEqual(os.stat(path).st_ino, inode)
        # A reader that had the old file open still sees the old copy whole.
        self.assertTrue(handle.read().endswith(first))
        self.assertEqual(len(all_files(self.root)), 1)

    def test_other_series_is_a_new_path(self) -> None:
        """A copy of the instance in another series is stored at its own
        path (the caller removes the old one, knowing it from the index)."""
        old = self.store_bytes(encode(make_dataset())).path
        new = self.store_bytes(encode(make_dataset(series=SERIES + ".9"))).path
        self.assertNotEqual(old, new)
        self.assertTrue(os.path.exists(new))


class PathTests(StoreTestCase):
    """UIDs are untrusted: paths never leave the root."""

    def test_valid_uids_used_as_they_are(self) -> None:
        """Strings matching the UID grammar are used unchanged."""
        for uid in ("0", "1.2.3", "1.0.2", "2.25.123456789012345678901234567890",
                    "1" + ".1" * 31):
            self.assertEqual(uid_path_part(uid), uid)

    def test_invalid_uids_hashed(self) -> None:
        """Anything else becomes 'x' + 32 hex digits, deterministic, with no
        separator and never '.', '..' or empty."""
        hostile = ("../../etc", "a/b", "1.2.3/../..", "", "1" * 65, ".", "..",
                   "1..2", "1.02", "01.2", ".1", "1.", "1.2\x00", "C:\\x", "1.2 ",
                   "é", "\ud800")
        names = set()
        for uid in hostile:
            name = uid_path_part(uid)
            self.assertRegex(name, r"\Ax[0-9a-f]{32}\Z")
            self.assertEqual(name, uid_path_part(uid))
            names.add(name)
        self.assertEqual(len(names), len(hostile))

    def test_hostile_uids_stay_inside_root(self) -> None:
        """Hostile Study, Series and SOP Instance UIDs in the data set and
        the command give files inside the root under hashed names."""
        root = os.path.realpath(self.root)
        for uid in ("../../etc", "a/b", "1.2.3/../..", "1" * 65, ".."):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # pydicom warns about bad UIs
                data = encode(make_dataset(instance=uid, study=uid, series=uid))
            stored = self.store_bytes(data, instance=uid)
            real = os.path.realpath(stored.path)
            self.assertTrue(real.startswith(root + os.sep), real)
            name = uid_path_part(uid)
            self.assertEqual(os.path.relpath(real, root),
                             os.path.join(name, name, name + ".dcm"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.assertEqual(dcmread(stored.path).SOPInstanceUID, uid)

    def test_missing_study_and_series(self) -> None:
        """Without Study and Series Instance UIDs the file goes under
        'unknown-study/unknown-series'."""
        stored = self.store_bytes(encode(make_dataset(study=None, series=None)))
        self.assertEqual(
            stored.path,
            os.path.join(self.root, MISSING_STUDY_DIR, MISSING_SERIES_DIR, INSTANCE + ".dcm"))
        self.assertEqual(self.store.path_for("", "", INSTANCE), stored.path)

    def test_symlink_escape_refused(self) -> None:
        """A study directory that is a symbolic link out of the root is
        refused, and nothing is written through it."""
        outside = tempfile.mkdtemp(prefix="sdcc-outside-")
        self.addCleanup(_rmtree, outside)
        os.symlink(outside, os.path.join(self.root, STUDY))
        exc = self.assertRaises(StorageError, self.store.path_for, STUDY, SERIES, INSTANCE)
        self.assertEqual(exc.status, STATUS_PROCESSING_FAILURE)
        exc = self.assertRaises(StorageError, self.store_bytes, encode(make_dataset()))
        self.assertEqual(os.listdir(outside), [])
        self.assertEqual(os.listdir(self.store.tmp_dir), [])


class EarlyWritebackTests(StoreTestCase):
    """With fsync on, data on its way to disk is flushed in batches early."""

    def _store_large(self, fsync: bool) -> list[tuple[int, int, int]]:
        calls: list[tuple[int, int, int]] = []
        self.patch(storage, "_start_writeback", lambda fd, off, n: calls.append((fd, off, n)))
        store = FileStore(self.root, fsync=fsync)
        ds = make_dataset()
        ds.PixelData = b"\x00\x01" * 400_000        # 800 KB
        data = encode(ds)
        sink = store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        for piece in chunks(data, 16_000):
            sink.write(piece)
        stored = sink.finish()
        self.assertEqual(after_meta(stored.path), data)
        return calls

    def test_ranges_follow_the_file(self) -> None:
        """Each batch written asks the kernel to start writing exactly that
        range; the ranges are contiguous from offset 0."""
        calls = self._store_large(fsync=True)
        self.assertGreaterEqual(len(calls), 2)    # 800 KB: two full batches, then the tail
        offset = 0
        for _fd, start, count in calls:
            self.assertEqual(start, offset)
            self.assertGreaterEqual(count, 256 * 1024)
            offset += count

    def test_real_binding(self) -> None:
        """On Linux the C library's sync_file_range is bound and accepts a
        range of a real file (0 = started); elsewhere there is none."""
        import sys

        if not sys.platform.startswith("linux"):
            self.assertIsNone(storage._start_writeback)
            return
        assert storage._start_writeback is not None
        path = os.path.join(self.root, "range.bin")
        with open(path, "wb") as handle:
            handle.write(b"\x00" * 300_000)
            handle.flush()
            self.assertEqual(storage._start_writeback(handle.fileno(), 0, 300_000), 0)

    def test_not_without_fsync(self) -> None:
        """With fsync off nothing is pushed to the disk early."""
        self.assertEqual(self._store_large(fsync=False), [])


class KnownDirectoryTests(StoreTestCase):
    """The commit renames straight into a series directory it has seen."""

    def test_series_directory_removed_behind_its_back(self) -> None:
        """A series directory that was removed after earlier instances were
        stored in it is made again, and the next instance lands there."""
        import shutil

        first = self.store_bytes(encode(make_dataset(instance="1.2.3.1")), instance="1.2.3.1")
        second = self.store_bytes(encode(make_dataset(instance="1.2.3.2")), instance="1.2.3.2")
        series_dir = os.path.dirname(first.path)
        self.assertTrue(self.store.known_directory(series_dir))
        shutil.rmtree(os.path.join(self.root, STUDY))
        third = self.store_bytes(encode(make_dataset(instance="1.2.3.3")), instance="1.2.3.3")
        self.assertEqual(os.path.dirname(third.path), series_dir)
        self.assertEqual(all_files(self.root),
                         [os.path.relpath(third.path, self.root)])
        self.assertFalse(os.path.exists(second.path))


class FailureTests(StoreTestCase):
    """Every failure answers a status and leaves nothing on disk."""

    def test_instance_mismatch(self) -> None:
        """A data set whose SOP Instance UID differs from the command's gives
        A900 and no file."""
        data = encode(make_dataset(instance="1.2.3.999"))
        exc = self.assertRaises(StorageError, self.store_bytes, data)
        self.assertEqual(exc.status, STATUS_DATASET_MISMATCH)
        self.assertEqual(exc.comment, "SOP Instance UID in data set differs from command")
        self.assertNothingLeft()

    def test_class_mismatch(self) -> None:
        """A data set whose SOP Class UID differs from the command's gives
        A900 and no file."""
        data = encode(make_dataset(sop_class=CT))
        exc = self.assertRaises(StorageError, self.store_bytes, data)
        self.assertEqual(exc.status, STATUS_DATASET_MISMATCH)
        self.assertIn("SOP Class UID", exc.comment)
        self.assertNothingLeft()

    def test_command_uid_padding_ignored(self) -> None:
        """NUL or space padding on the command's UIDs does not count as a
        difference."""
        stored = self.store_bytes(encode(make_dataset()), sop_class=SC + "\x00",
                                  instance=INSTANCE + " ")
        self.assertEqual(stored.sop_instance_uid, INSTANCE)
        self.assertEqual(dcmread(stored.path).file_meta.MediaStorageSOPInstanceUID, INSTANCE)

    def test_missing_instance_uid(self) -> None:
        """A data set without SOP Instance UID gives C210 and no file."""
        ds = make_dataset()
        del ds.SOPInstanceUID
        exc = self.assertRaises(StorageError, self.store_bytes, encode(ds))
        self.assertEqual(exc.status, STATUS_DATASET_UNPARSEABLE)
        self.assertIn("missing", exc.comment)
        self.assertNothingLeft()

    def test_truncated(self) -> None:
        """A truncated data set gives C210 and no file, wherever the cut."""
        data = encode(make_dataset())
        for cut in (5, 40, len(data) - 3):
            exc = self.assertRaises(StorageError, self.store_bytes, data[:cut])
            self.assertEqual(exc.status, STATUS_DATASET_UNPARSEABLE)
            self.assertLessEqual(len(exc.comment), 64)
            self.assertNothingLeft()

    def test_garbage_discards_the_rest(self) -> None:
        """Once the structure is broken, write() keeps accepting data but
        discards it, the temp file is gone at once, and finish() gives C210."""
        data = encode(make_dataset())
        sink = self.store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        sink.write(b"\x08\x00\x16\x00")
        self.assertTrue(os.path.exists(sink.temp_path))
        sink.write(b"ZZ\x02\x00ab")   # invalid VR
        self.assertFalse(os.path.exists(sink.temp_path))
        written = sink.bytes_written
        sink.write(data)
        self.assertEqual(sink.bytes_written, written)
        exc = self.assertRaises(StorageError, sink.finish)
        self.assertEqual(exc.status, STATUS_DATASET_UNPARSEABLE)
        self.assertNothingLeft()

    def test_disk_full_while_writing(self) -> None:
        """ENOSPC from the file write gives A702 'disk full', removes the
        temp file, discards later data, and finish() repeats the error."""
        sink = self.store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        sink._file = _FailingFile(sink._file, errno.ENOSPC)
        exc = self.assertRaises(StorageError, sink.write, encode(make_dataset()))
        self.assertEqual(exc.status, STATUS_DISK_FULL)
        self.assertEqual(exc.comment, "Out of resources: disk full")
        self.assertNothingLeft()
        sink.write(b"\x00" * 100)
        self.assertIs(self.assertRaises(StorageError, sink.finish), exc)
        self.assertNothingLeft()

    def test_quota_and_other_errors(self) -> None:
        """EDQUOT also gives A702; EIO gives A700 with its strerror."""
        for code, status in ((errno.EDQUOT, STATUS_DISK_FULL),
                             (errno.EIO, STATUS_OUT_OF_RESOURCES)):
            sink = self.store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
            sink._file = _FailingFile(sink._file, code)
            exc = self.assertRaises(StorageError, sink.write, b"\x08\x00")
            self.assertEqual(exc.status, status)
            self.assertNothingLeft()
        self.assertIn(os.strerror(errno.EIO), exc.comment)

    def test_disk_full_at_finish(self) -> None:
        """ENOSPC from fsync at finish gives A702 and no file."""
        store = FileStore(self.root, fsync=True)

        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(storage.os, "fsync", fsync)
        sink = store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        sink.write(encode(make_dataset()))
        exc = self.assertRaises(StorageError, sink.finish)
        self.assertEqual(exc.status, STATUS_DISK_FULL)
        self.assertNothingLeft()

    def test_open_fails(self) -> None:
        """A temp directory that cannot be written gives A700 at open_sink."""
        os.rmdir(self.store.tmp_dir)
        exc = self.assertRaises(StorageError, self.store.open_sink, SC, INSTANCE,
                                EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        self.assertEqual(exc.status, STATUS_OUT_OF_RESOURCES)
        self.assertNothingLeft()

    def test_abort(self) -> None:
        """abort() removes the temp file, is idempotent, and never touches
        the root; finish() afterwards fails."""
        sink = self.store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        sink.write(encode(make_dataset()))
        self.assertTrue(os.path.exists(sink.temp_path))
        sink.abort()
        sink.abort()
        self.assertNothingLeft()
        self.assertRaises(StorageError, sink.finish)
        sink.write(b"\x00\x00")
        self.assertNothingLeft()

    def test_abort_after_finish_keeps_file(self) -> None:
        """abort() after a successful finish() leaves the stored file."""
        sink = self.store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        sink.write(encode(make_dataset()))
        stored = sink.finish()
        sink.abort()
        self.assertTrue(os.path.exists(stored.path))

    def test_comment_capped(self) -> None:
        """StorageError comments are cut to 64 characters."""
        exc = StorageError(0xA700, "x" * 100)
        self.assertEqual(len(exc.comment), 64)
        self.assertEqual(exc.status, 0xA700)


class StaleTempTests(StoreTestCase):
    """Startup cleanup of what a crash left in the temp directory."""

    def test_remove_stale_temp_files(self) -> None:
        """Leftover .part files are deleted and counted; other files stay."""
        for name in ("a.part", "b.part", "c.part"):
            with open(os.path.join(self.store.tmp_dir, name), "wb") as f:
                f.write(b"partial")
        keep = os.path.join(self.store.tmp_dir, "README")
        with open(keep, "w") as f:
            f.write("not ours")
        sink = self.store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        sink.abort()
        self.assertEqual(self.store.remove_stale_temp_files(), 3)
        self.assertEqual(os.listdir(self.store.tmp_dir), ["README"])
        self.assertEqual(self.store.remove_stale_temp_files(), 0)

    def test_sink_type(self) -> None:
        """open_sink returns a Sink whose temp file is in the temp dir."""
        sink = self.store.open_sink(SC, INSTANCE, EXPLICIT_VR_LITTLE_ENDIAN, "AE")
        self.addCleanup(sink.abort)
        self.assertIsInstance(sink, Sink)
        self.assertEqual(os.listdir(self.store.tmp_dir), [os.path.basename(sink.temp_path)])
