"""Tests for :mod:`sdcc_twisted.core.dataset_head`, the streaming data set walker."""

from __future__ import annotations

import io
import os
import random
import struct
import tracemalloc
from typing import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.data import get_charset_files
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import dcmwrite
from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core.conformance import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
)
from sdcc_twisted.core.dataset_head import DatasetWalker
from sdcc_twisted.core.errors import DatasetError
from sdcc_twisted.core.records import HEAD_TAGS

#: (transfer syntax, implicit VR, little endian) for the three base encodings.
ENCODINGS = (
    (IMPLICIT_VR_LITTLE_ENDIAN, True, True),
    (EXPLICIT_VR_LITTLE_ENDIAN, False, True),
    (EXPLICIT_VR_BIG_ENDIAN, False, False),
)


# -- helpers --------------------------------------------------------------------
def encode(ds: Dataset, implicit: bool, little: bool) -> bytes:
    """Encode a data set alone (no preamble, no meta) with pydicom."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=implicit,
             little_endian=little)
    return buf.getvalue()


def file_body(name: str) -> tuple[str, bytes, Dataset]:
    """Return (transfer syntax, data set bytes, dataset) of a pydicom test file."""
    path = get_testdata_file(name) or get_charset_files(name)[0]
    with open(path, "rb") as f:
        raw = f.read()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    return meta.TransferSyntaxUID, raw[fp.tell():], dcmread(path)


def reread(data: bytes, ts: str) -> Dataset:
    """Read a bare data set back with pydicom."""
    implicit_vr = ts == IMPLICIT_VR_LITTLE_ENDIAN
    little = ts != EXPLICIT_VR_BIG_ENDIAN
    return read_dataset(io.BytesIO(data), implicit_vr, little)


def expected_values(ds: Dataset) -> dict[str, str]:
    """The index values as pydicom reads them: str of each value, multiple
    values joined by backslash."""
    out = {}
    for tag, keyword in HEAD_TAGS.items():
        if tag in ds:
            elem = ds[tag]
            if elem.value is None or elem.value == "":
                out[keyword] = ""
            elif elem.VM > 1:
                out[keyword] = "\\".join(str(v) for v in elem.value)
            else:
                out[keyword] = str(elem.value)
    return out


def pieces(data: bytes, how: str, seed: int = 0) -> Iterable[bytes | memoryview]:
    """Split ``data`` whole, one byte at a time, or at random points."""
    if how == "whole":
        yield data
    elif how == "bytes":
        for i in range(len(data)):
            yield data[i:i + 1]
    else:
        rng = random.Random(seed)
        view = memoryview(data)
        i = 0
        while i < len(data):
            n = rng.randint(0, 40)
            yield view[i:i + n]
            i += n


def walk(ts: str, data: bytes, how: str = "whole", seed: int = 0, **kw) -> DatasetWalker:
    """Feed ``data`` to a new walker and finish it."""
    walker = DatasetWalker(ts, **kw)
    for piece in pieces(data, how, seed):
        walker.feed(piece)
    walker.finish()
    return walker


def tag_bytes(tag: int, little: bool) -> bytes:
    """Encode a tag."""
    return struct.pack("<HH" if little else ">HH", tag >> 16, tag & 0xFFFF)


def explicit(tag: int, vr: str, value: bytes, little: bool = True,
             length: int | None = None) -> bytes:
    """Hand-encode one Explicit VR element (PS3.5 7.1.2)."""
    n = len(value) if length is None else length
    order = "<" if little else ">"
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"):
        head = vr.encode() + b"\x00\x00" + struct.pack(order + "L", n)
    else:
        head = vr.encode() + struct.pack(order + "H", n)
    return tag_bytes(tag, little) + head + value


def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    """Hand-encode one Implicit VR Little Endian element (PS3.5 7.1.3)."""
    n = len(value) if length is None else length
    return tag_bytes(tag, True) + struct.pack("<L", n) + value


def item(value: bytes, little: bool = True, undefined: bool = False) -> bytes:
    """Hand-encode a sequence item, defined or undefined length (PS3.5 7.5)."""
    order = "<" if little else ">"
    if undefined:
        return (tag_bytes(0xFFFEE000, little) + struct.pack(order + "L", 0xFFFFFFFF)
                + value + tag_bytes(0xFFFEE00D, little) + b"\x00" * 4)
    return tag_bytes(0xFFFEE000, little) + struct.pack(order + "L", len(value)) + value


def seq_delimiter(little: bool = True) -> bytes:
    """The sequence delimitation item."""
    return tag_bytes(0xFFFEE0DD, little) + b"\x00" * 4


UNDEFINED = 0xFFFFFFFF


def sample_dataset() -> Dataset:
    """A data set with every index attribute, a nested sequence and pixels."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7"
    ds.StudyDate = "20240102"
    ds.SeriesDate = "20240102"
    ds.ContentDate = "20240103"
    ds.StudyTime = "101112.5"
    ds.SeriesTime = "101113"
    ds.ContentTime = "101114"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "OT"
    ds.ReferringPhysicianName = "Müller^Jörg"
    ds.StudyDescription = "Brain  "
    ds.SeriesDescription = "Axial\\Coronal"
    inner = Dataset()
    inner.PatientID = "NESTED"
    inner.ReferencedSOPInstanceUID = "1.2.3"
    deeper = Dataset()
    deeper.CodeValue = "X1"
    inner.ConceptNameCodeSequence = [deeper, Dataset()]
    ds.ReferencedStudySequence = [inner, Dataset()]
    ds.PatientName = "Gómez^José=^"
    ds.PatientID = "PID-7"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.StudyID = "S1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = "12"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 8
    ds.PixelData = bytes(range(16))
    return ds


def undefined_lengths(ds: Dataset) -> Dataset:
    """Mark every sequence and item of ``ds`` as undefined length."""
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for each in elem.value:
                each.is_undefined_length_sequence_item = True
    return ds


def top_level_boundaries(ds: Dataset, implicit_vr: bool, little: bool) -> set[int]:
    """Offsets at which a data set can be cut and still be whole."""
    offsets = {0}
    total = 0
    for elem in ds:
        one = Dataset()
        one.add(elem)
        total += len(encode(one, implicit_vr, little))
        offsets.add(total)
    return offsets


class ValuesTests(SynchronousTestCase):
    """The walker's values equal pydicom's reading, however the bytes come."""

    def test_three_encodings_all_splits(self) -> None:
        """In Implicit VR LE, Explicit VR LE and BE, fed whole, a byte at a
        time and in random splits, the values equal pydicom's."""
        ds = sample_dataset()
        for ts, implicit_vr, little in ENCODINGS:
            data = encode(ds, implicit_vr, little)
            expected = expected_values(reread(data, ts))
            self.assertEqual(expected["ReferringPhysicianName"], "Müller^Jörg")
            self.assertEqual(expected["StudyDescription"], "Brain")
            for how in ("whole", "bytes", "random"):
                walker = walk(ts, data, how, seed=len(data))
                self.assertEqual(walker.values, expected, (ts, how))
                self.assertEqual(walker.bytes_seen, len(data))
                self.assertTrue(walker.head_complete)

    def test_undefined_length_sequences(self) -> None:
        """Undefined-length sequences and items are walked in every
        encoding; nested values do not leak into ``values``."""
        ds = undefined_lengths(sample_dataset())
        for ts, implicit_vr, little in ENCODINGS:
            data = encode(ds, implicit_vr, little)
            self.assertIn(b"\xe0\xdd" if not little else b"\xdd\xe0", data)
            for seed in range(5):
                walker = walk(ts, data, "random", seed)
                self.assertEqual(walker.values["PatientID"], "PID-7")
                self.assertEqual(walker.values, expected_values(reread(data, ts)))

    def test_mixed_defined_and_undefined(self) -> None:
        """A defined-length sequence holding undefined-length items, and an
        undefined-length sequence holding defined-length items, both walk."""
        ds = sample_dataset()
        outer = ds.ReferencedStudySequence
        outer.is_undefined_length = False
        for each in outer:
            each.is_undefined_length_sequence_item = True
        inner = outer[0]["ConceptNameCodeSequence"]
        inner.is_undefined_length = True
        for _ts, implicit_vr, little in ENCODINGS[1:]:
            data = encode(ds, implicit_vr, little)
            ts = EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN
            self.assertEqual(walk(ts, data, "bytes").values,
                             expected_values(reread(data, ts)))

    def test_hand_built_defined_length_sequences(self) -> None:
        """Empty defined-length sequences, empty items and nested
        defined-length items are walked in explicit LE and BE."""
        for ts, little in ((EXPLICIT_VR_LITTLE_ENDIAN, True),
                           (EXPLICIT_VR_BIG_ENDIAN, False)):
            nested = explicit(0x00080100, "SH", b"X1", little)
            inner_seq = explicit(0x0040A043, "SQ", item(nested, little) + item(b"", little),
                                 little)
            data = (explicit(0x00080016, "UI", b"1.2\x00", little)
                    + explicit(0x00081110, "SQ", b"", little)
                    + explicit(0x00081115, "SQ", item(inner_seq, little), little)
                    + explicit(0x00100020, "LO", b"ID", little))
            walker = walk(ts, data, "bytes")
            self.assertEqual(walker.values, {"SOPClassUID": "1.2", "PatientID": "ID"})

    def test_implicit_sequence_from_pydicom_file(self) -> None:
        """rtplan.dcm (Implicit VR LE, nested sequences) walks in random
        splits and gives pydicom's values."""
        ts, data, ds = file_body("rtplan.dcm")
        self.assertEqual(ts, IMPLICIT_VR_LITTLE_ENDIAN)
        for seed in range(3):
            self.assertEqual(walk(ts, data, "random", seed).values, expected_values(ds))

    def test_bundled_files(self) -> None:
        """pydicom's bundled compressed, big endian and implicit files walk,
        whole and in random splits, with pydicom's values."""
        names = ("JPEG2000.dcm", "SC_rgb_rle.dcm", "JPEG-lossy.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "CT_small.dcm",
                 "SC_rgb_rle_2frame.dcm", "UN_sequence.dcm", "reportsi.dcm",
                 "JPEG2000-embedded-sequence-delimiter.dcm", "waveform_ecg.dcm")
        for name in names:
            ts, data, ds = file_body(name)
            for how in ("whole", "random"):
                walker = walk(ts, data, how, seed=7)
                self.assertEqual(walker.values, expected_values(ds), (name, how))

    def test_bundled_files_one_byte_at_a_time(self) -> None:
        """A compressed file and a big endian file fed one byte at a time
        give pydicom's values."""
        for name in ("SC_rgb_rle.dcm", "MR_small_bigendian.dcm"):
            ts, data, ds = file_body(name)
            self.assertEqual(walk(ts, data, "bytes").values, expected_values(ds), name)

    def test_person_names_in_character_sets(self) -> None:
        """PN values are decoded with the Specific Character Set, including
        ISO 2022 code extensions, as pydicom decodes them."""
        for name in ("chrH31.dcm", "chrX1.dcm", "chrI2.dcm", "chrRuss.dcm",
                     "chrFrenMulti.dcm", "chrJapMulti.dcm", "chrArab.dcm"):
            ts, data, ds = file_body(name)
            walker = walk(ts, data, "random", seed=3)
            self.assertEqual(walker.values["PatientName"], str(ds.PatientName), name)
            self.assertEqual(walker.values, expected_values(ds), name)
        ts, data, _ = file_body("chrH31.dcm")
        self.assertEqual(walk(ts, data).values["PatientName"],
                         "Yamada^Tarou=山田^太郎=やまだ^たろう")

    def test_without_character_set_latin1(self) -> None:
        """Without Specific Character Set, text is decoded as Latin-1."""
        data = implicit(0x00100010, "Ré^Zoë  ".encode("latin-1"))
        walker = walk(IMPLICIT_VR_LITTLE_ENDIAN, data)
        self.assertEqual(walker.values, {"PatientName": "Ré^Zoë"})

    def test_padding_and_multiple_values(self) -> None:
        """UI NUL padding and trailing spaces are stripped; multiple values
        are joined with a backslash; an empty value gives ''."""
        data = (implicit(0x00080018, b"1.2.33\x00\x00")
                + implicit(0x00080060, b"")
                + implicit(0x0008103E, b"A \\B  ")
                + implicit(0x00200013, b" 7"))
        walker = walk(IMPLICIT_VR_LITTLE_ENDIAN, data)
        self.assertEqual(walker.values, {"SOPInstanceUID": "1.2.33", "Modality": "",
                                         "SeriesDescription": "A\\B",
                                         "InstanceNumber": "7"})

    def test_custom_wanted_binary_values(self) -> None:
        """Wanted binary elements (US) are decoded in either byte order."""
        for ts, implicit_vr, little in ENCODINGS:
            ds = Dataset()
            ds.Rows = 512
            ds.Columns = 256
            walker = walk(ts, encode(ds, implicit_vr, little),
                          wanted={0x00280010: "Rows", 0x00280011: "Columns"})
            if implicit_vr:
                # No dictionary: implicit values of unknown VR are text.
                self.assertIn("Rows", walker.values)
            else:
                self.assertEqual(walker.values, {"Rows": "512", "Columns": "256"})

    def test_nested_wanted_tags_ignored(self) -> None:
        """Wanted tags inside sequence items are not collected."""
        little = True
        data = explicit(0x00081110, "SQ", item(explicit(0x00100020, "LO", b"IN"), little))
        walker = walk(EXPLICIT_VR_LITTLE_ENDIAN, data)
        self.assertEqual(walker.values, {})

    def test_group_0002_in_data_set(self) -> None:
        """Group 0002 elements at the start of the data set are tolerated and
        their values ignored."""
        ds = sample_dataset()
        body = encode(ds, False, True)
        data = explicit(0x00020010, "UI", b"1.2.840.10008.1.2\x00") + body
        self.assertEqual(walk(EXPLICIT_VR_LITTLE_ENDIAN, data).values,
                         expected_values(reread(body, EXPLICIT_VR_LITTLE_ENDIAN)))

    def test_oversized_wanted_value_not_kept(self) -> None:
        """A wanted value longer than MAX_VALUE_BYTES is skipped unrecorded."""
        big = b"A" * (DatasetWalker.MAX_VALUE_BYTES + 2)
        data = implicit(0x00081030, big) + implicit(0x00100020, b"ID")
        walker = walk(IMPLICIT_VR_LITTLE_ENDIAN, data)
        self.assertEqual(walker.values, {"PatientID": "ID"})

    def test_duplicate_tag_last_wins(self) -> None:
        """A repeated element is tolerated and its last value kept."""
        data = implicit(0x00100020, b"A ") + implicit(0x00100020, b"B ")
        self.assertEqual(walk(IMPLICIT_VR_LITTLE_ENDIAN, data).values,
                         {"PatientID": "B"})


class StructureTests(SynchronousTestCase):
    """Structures that are valid although unusual are walked."""

    def test_encapsulated_pixel_data(self) -> None:
        """Encapsulated Pixel Data (undefined length, offset table and
        fragments) is skipped fragment by fragment up to its delimiter."""
        ds = sample_dataset()
        frames = [os.urandom(1000), os.urandom(2002), b"\xff\xfe\xe0\xdd" * 8]
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.ImageComments = "after"
        data = encode(ds, False, True)
        for how in ("whole", "bytes", "random"):
            walker = walk(JPEG_BASELINE, data, how)
            self.assertEqual(walker.values,
                             expected_values(reread(data, EXPLICIT_VR_LITTLE_ENDIAN)))

    def test_undefined_length_un_is_implicit_sequence(self) -> None:
        """An undefined-length UN element is an Implicit VR LE sequence
        (PS3.5 6.2.2), in little and big endian explicit data sets."""
        content = implicit(0x00080100, b"X1") + implicit(0x00080102, b"DCM ")
        un_value = item(content, True, undefined=True) + item(content) + seq_delimiter()
        for ts, little in ((EXPLICIT_VR_LITTLE_ENDIAN, True),
                           (EXPLICIT_VR_BIG_ENDIAN, False)):
            data = (explicit(0x00080018, "UI", b"1.2\x00", little)
                    + explicit(0x00091010, "UN", un_value, little, length=UNDEFINED)
                    + explicit(0x00100020, "LO", b"ID", little))
            walker = walk(ts, data, "bytes")
            self.assertEqual(walker.values, {"SOPInstanceUID": "1.2", "PatientID": "ID"})

    def test_implicit_undefined_length_is_sequence(self) -> None:
        """In Implicit VR, an undefined-length element is a sequence whose
        items are walked (a broken item inside it is found)."""
        good = implicit(0x00081110, item(implicit(0x00081150, b"1.2\x00"))
                        + seq_delimiter(), length=UNDEFINED)
        walk(IMPLICIT_VR_LITTLE_ENDIAN, good)
        bad = implicit(0x00081110, implicit(0x00081150, b"1.2\x00") + seq_delimiter(),
                       length=UNDEFINED)
        self.assertRaises(DatasetError, walk, IMPLICIT_VR_LITTLE_ENDIAN, bad)

    def test_head_complete(self) -> None:
        """head_complete turns True at Pixel Data or at the first tag past
        the last wanted one, not before; later wanted tags are ignored."""
        data = implicit(0x00100020, b"ID") + implicit(0x00280010, b"\x00\x02")
        walker = DatasetWalker(IMPLICIT_VR_LITTLE_ENDIAN)
        walker.feed(data[:10])
        self.assertFalse(walker.head_complete)
        walker.feed(data[10:])
        self.assertTrue(walker.head_complete)

        walker = DatasetWalker(EXPLICIT_VR_LITTLE_ENDIAN, wanted={0x7FE00010: "PixelData",
                                                                   0x00100020: "PatientID"})
        walker.feed(explicit(0x00100020, "LO", b"ID") + explicit(0x7FE00010, "OB", b"\x00\x01"))
        self.assertTrue(walker.head_complete)
        self.assertEqual(walker.values, {"PatientID": "ID"})

    def test_max_head_bytes(self) -> None:
        """Values are only collected from elements starting within
        max_head_bytes; after that head_complete is True."""
        data = (implicit(0x00080018, b"1.2\x00") + implicit(0x00080020, b"x" * 100)
                + implicit(0x00100020, b"ID"))
        walker = walk(IMPLICIT_VR_LITTLE_ENDIAN, data, max_head_bytes=50)
        self.assertEqual(walker.values, {"SOPInstanceUID": "1.2", "StudyDate": "x" * 100})

    def test_large_value_skipped_without_buffering(self) -> None:
        """A 32 MB value fed in 16 KiB pieces is skipped: the walker's
        memory stays small, far below the value's size."""
        size = 32 * 1024 * 1024
        header = explicit(0x00100020, "LO", b"ID") + explicit(0x7FE00010, "OW", b"",
                                                             length=size)
        chunk = memoryview(bytes(16384))
        walker = DatasetWalker(EXPLICIT_VR_LITTLE_ENDIAN)
        tracemalloc.start()
        try:
            walker.feed(header)
            for _ in range(size // len(chunk)):
                walker.feed(chunk)
            walker.finish()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 256 * 1024)
        self.assertEqual(walker.bytes_seen, len(header) + size)

    def test_huge_declared_length_needs_finish(self) -> None:
        """A top-level value declared longer than the data is only known to
        be short at finish; the walker allocates nothing for it."""
        walker = DatasetWalker(EXPLICIT_VR_LITTLE_ENDIAN)
        walker.feed(explicit(0x7FE00010, "OB", b"\x00" * 10, length=0xFFFFFFFE))
        exc = self.assertRaises(DatasetError, walker.finish)
        self.assertIn("ends inside a value", str(exc))


class MalformedTests(SynchronousTestCase):
    """Broken data sets raise DatasetError and nothing else."""

    def assertBroken(self, ts: str, data: bytes, text: str = "") -> DatasetError:
        """Walking ``data`` whole and byte by byte raises DatasetError."""
        exc = self.assertRaises(DatasetError, walk, ts, data)
        self.assertRaises(DatasetError, walk, ts, data, "bytes")
        if text:
            self.assertIn(text, str(exc))
        return exc

    def test_every_truncation(self) -> None:
        """Cut at any offset, a data set with sequences (defined and undefined
        length) is rejected at finish unless the cut falls between two
        top-level elements."""
        for make in (sample_dataset, lambda: undefined_lengths(sample_dataset())):
            ds = make()
            for ts, implicit_vr, little in ENCODINGS:
                data = encode(ds, implicit_vr, little)
                boundaries = top_level_boundaries(ds, implicit_vr, little)
                self.assertIn(len(data), boundaries)
                for cut in range(1, len(data)):
                    walker = DatasetWalker(ts)
                    walker.feed(data[:cut])
                    if cut in boundaries:
                        walker.finish()
                    else:
                        self.assertRaises(DatasetError, walker.finish)

    def test_truncated_in_header(self) -> None:
        """A data set that ends inside an element header is rejected."""
        data = explicit(0x00100020, "LO", b"ID") + explicit(0x7FE00010, "OB", b"")[:7]
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN, data, "inside an element header")

    def test_truncated_in_value(self) -> None:
        """A data set that ends inside a value is rejected with the offset."""
        data = explicit(0x00100020, "LO", b"ID") + explicit(0x00100030, "DA", b"2024",
                                                           length=8)
        exc = self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN, data, "inside a value")
        self.assertEqual(exc.offset, len(data))

    def test_length_past_item_end(self) -> None:
        """A value that runs past the end of its defined-length item is
        rejected as soon as its header arrives."""
        inner = explicit(0x00080100, "SH", b"X1", length=200)
        data = explicit(0x00081110, "SQ", item(inner)) + b"\x00" * 300
        walker = DatasetWalker(EXPLICIT_VR_LITTLE_ENDIAN)
        exc = self.assertRaises(DatasetError, walker.feed, data)
        self.assertEqual(exc.offset, 20)

    def test_item_past_sequence_end(self) -> None:
        """An item longer than its defined-length sequence is rejected."""
        bad_item = item(b"")[:4] + struct.pack("<L", 40)
        data = explicit(0x00081110, "SQ", bad_item) + b"\x00" * 40
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN, data, "past the end")

    def test_unclosed_undefined_sequence(self) -> None:
        """A data set ending inside an undefined-length sequence or item is
        rejected."""
        open_seq = explicit(0x00081110, "SQ", item(b""), length=UNDEFINED)
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN, open_seq, "inside a sequence")
        open_item = explicit(0x00081110, "SQ", b"\xfe\xff\x00\xe0\xff\xff\xff\xff",
                             length=UNDEFINED)
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN, open_item, "inside an item")
        open_pixels = explicit(0x7FE00010, "OB", item(b""), length=UNDEFINED)
        self.assertBroken(JPEG_BASELINE, open_pixels, "encapsulated")

    def test_odd_element_length_tolerated(self) -> None:
        """An odd element value length (against PS3.5 7.1.1, but read by
        pydicom and DCMTK) is walked past and reported as a warning, not
        refused: its boundaries are still known."""
        for ts, data in (
                (IMPLICIT_VR_LITTLE_ENDIAN, implicit(0x00100020, b"ABC")),
                (EXPLICIT_VR_LITTLE_ENDIAN, explicit(0x00100020, "LO", b"ABC")),
                (EXPLICIT_VR_BIG_ENDIAN, explicit(0x00100020, "LO", b"ABC", False))):
            walker = DatasetWalker(ts)
            walker.feed(data + (implicit(0x00200010, b"ST") if ts == IMPLICIT_VR_LITTLE_ENDIAN
                                else explicit(0x00200010, "SH", b"ST", ts != EXPLICIT_VR_BIG_ENDIAN)))
            walker.finish()
            self.assertIn("odd length 3", walker.warnings[0])
            self.assertEqual(walker.values["PatientID"], "ABC")
            self.assertEqual(walker.values["StudyID"], "ST")

    def test_odd_fragment_length(self) -> None:
        """An odd pixel data fragment length is refused (PS3.5 A.4)."""
        self.assertBroken(JPEG_BASELINE, explicit(0x7FE00010, "OB", item(b"") + item(b"abc")
                                                  + seq_delimiter(), length=UNDEFINED), "odd")

    def test_tags_out_of_order(self) -> None:
        """A tag lower than its predecessor is walked past and reported as a
        warning (pydicom reads such data sets)."""
        data = implicit(0x00100020, b"ID") + implicit(0x00080018, b"12")
        walker = DatasetWalker(IMPLICIT_VR_LITTLE_ENDIAN)
        walker.feed(data)
        walker.finish()
        self.assertIn("lower than its predecessor at 10", walker.warnings[0])

    def test_invalid_vr(self) -> None:
        """An explicit VR outside PS3.5 Table 6.2-1 is rejected."""
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN, explicit(0x00100020, "XX", b"ID"),
                          "invalid VR")
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN, explicit(0x00100020, "lo", b"ID"),
                          "invalid VR")

    def test_item_where_element_expected(self) -> None:
        """Item, item delimiter or sequence delimiter tags at the top level
        are rejected."""
        for data in (item(b""), seq_delimiter(), item(b"", undefined=True)[8:]):
            self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN, data, "where a data element")

    def test_element_where_item_expected(self) -> None:
        """A data element directly inside a sequence is rejected."""
        data = explicit(0x00081110, "SQ", explicit(0x00080100, "SH", b"X1"))
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN, data, "where an item")

    def test_delimiter_misuse(self) -> None:
        """A sequence delimiter in a defined-length sequence, delimiters with
        a length, and undefined-length fragments are rejected."""
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN,
                          explicit(0x00081110, "SQ", seq_delimiter()), "defined-length")
        with_length = tag_bytes(0xFFFEE0DD, True) + struct.pack("<L", 2)
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN,
                          explicit(0x00081110, "SQ", with_length, length=UNDEFINED),
                          "non-zero")
        fragment = tag_bytes(0xFFFEE000, True) + struct.pack("<L", UNDEFINED)
        self.assertBroken(JPEG_BASELINE,
                          explicit(0x7FE00010, "OB", fragment, length=UNDEFINED),
                          "fragment")
        # 0xFFFF in a 16-bit length is an (odd) length, not "undefined".
        walker = walk(EXPLICIT_VR_LITTLE_ENDIAN,
                      explicit(0x00100020, "LO", b"", length=0xFFFF) + b"x" * 0xFFFF)
        self.assertIn("odd length 65535", walker.warnings[0])

    def test_undefined_length_text_vr(self) -> None:
        """Undefined length on a VR that cannot be delimited is rejected."""
        self.assertBroken(EXPLICIT_VR_LITTLE_ENDIAN,
                          explicit(0x00100020, "UT", b"", length=UNDEFINED), "undefined")

    def test_garbage(self) -> None:
        """Random garbage is rejected in every encoding."""
        rng = random.Random(1)
        for seed in range(20):
            data = bytes(rng.getrandbits(8) for _ in range(200))
            for ts, _implicit, _little in ENCODINGS:
                self.assertRaises(DatasetError, walk, ts, data)

    def test_empty(self) -> None:
        """An empty data set is rejected at finish."""
        walker = DatasetWalker(EXPLICIT_VR_LITTLE_ENDIAN)
        walker.feed(b"")
        self.assertRaises(DatasetError, walker.finish)

    def test_error_is_sticky(self) -> None:
        """After an error, every feed and finish raises it again."""
        walker = DatasetWalker(EXPLICIT_VR_LITTLE_ENDIAN)
        exc = self.assertRaises(DatasetError, walker.feed, explicit(0x00100020, "XX", b"AB"))
        self.assertIs(self.assertRaises(DatasetError, walker.feed, b"\x00" * 8), exc)
        self.assertIs(self.assertRaises(DatasetError, walker.finish), exc)

    def test_truncated_bundled_file(self) -> None:
        """pydicom's truncated test files are rejected."""
        for name in ("MR_truncated.dcm", "rtplan_truncated.dcm"):
            path = get_testdata_file(name)
            with open(path, "rb") as f:
                raw = f.read()
            fp = io.BytesIO(raw)
            read_preamble(fp, False)
            ts = _read_file_meta_info(fp).TransferSyntaxUID
            self.assertRaises(DatasetError, walk, ts, raw[fp.tell():])


class PropertyTests(SynchronousTestCase):
    """Whatever bytes arrive, the walker raises only DatasetError."""

    @settings(max_examples=400, deadline=None)
    @given(data=st.binary(max_size=400),
           cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
           ts=st.sampled_from([IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
                               EXPLICIT_VR_BIG_ENDIAN, JPEG_BASELINE]))
    def test_arbitrary_bytes(self, data: bytes, cuts: list[int], ts: str) -> None:
        """Arbitrary bytes in arbitrary splits raise nothing but
        DatasetError, and the same bytes whole give the same outcome."""
        def run(parts: list[bytes]) -> tuple[str, dict[str, str]]:
            walker = DatasetWalker(ts)
            try:
                for part in parts:
                    walker.feed(part)
                walker.finish()
            except DatasetError:
                return "error", {}
            return "ok", walker.values

        bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
        split = [data[a:b] for a, b in zip(bounds, bounds[1:])]
        self.assertEqual(run(split), run([data]))

    @settings(max_examples=150, deadline=None)
    @given(st.data())
    def test_mutated_valid_data_set(self, draw: st.DataObject) -> None:
        """Valid data sets with random bytes overwritten raise nothing but
        DatasetError."""
        ts, implicit_vr, little = draw.draw(st.sampled_from(ENCODINGS))
        data = bytearray(encode(undefined_lengths(sample_dataset()), implicit_vr, little))
        for _ in range(draw.draw(st.integers(1, 4))):
            index = draw.draw(st.integers(0, len(data) - 1))
            data[index] = draw.draw(st.integers(0, 255))
        cut = draw.draw(st.integers(0, len(data)))
        walker = DatasetWalker(ts)
        try:
            walker.feed(bytes(data[:cut]))
            walker.feed(memoryview(data)[cut:])
            walker.finish()
        except DatasetError:
            pass
