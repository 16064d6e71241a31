"""sdcc_twisted.core.part10: File Meta Information as bytes (PS3.10 7.1)."""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core.conformance import IMPLEMENTATION_CLASS_UID
from sdcc_twisted.core.part10 import (
    Part10Error,
    file_meta_bytes,
    parse_file_meta,
    read_file_meta,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EVRLE = "1.2.840.10008.1.2.1"
#: (0008,0016) SOP Class UID, Explicit VR LE: the first element of a data set.
DATA_SET = b"\x08\x00\x16\x00UI\x1a\x00" + CT.encode() + b"\x00" * (26 - len(CT))


class ParseTests(SynchronousTestCase):
    """parse_file_meta and read_file_meta on bytes made by file_meta_bytes."""

    def setUp(self) -> None:
        self.meta = file_meta_bytes(CT, "1.2.3.4", EVRLE, "MODALITY")
        self.file = self.meta + DATA_SET

    def test_whole(self) -> None:
        """The whole file gives every group 0002 value and the offset where
        the data set starts; UI values read back without their padding."""
        meta = parse_file_meta(self.file)
        assert meta is not None
        self.assertEqual(meta.data_set_offset, len(self.meta))
        self.assertEqual(meta.sop_instance_uid, "1.2.3.4")
        self.assertEqual(meta.transfer_syntax, EVRLE)
        self.assertEqual(meta.text(0x0002), CT)
        self.assertEqual(meta.text(0x0012), IMPLEMENTATION_CLASS_UID)
        self.assertEqual(meta.text(0x0016), "MODALITY")
        self.assertEqual(meta.elements[0x0001], b"\x00\x01")   # OB: a 32-bit length

    def test_one_byte_at_a_time(self) -> None:
        """Every prefix too short to show where the meta ends asks for more
        (None); from the first data set element's header on, the answer is
        the same as for the whole file."""
        whole = parse_file_meta(self.file)
        end = len(self.meta) + 8
        for n in range(len(self.file) + 1):
            got = parse_file_meta(self.file[:n])
            if n < end:
                self.assertIsNone(got, n)
            else:
                self.assertEqual(got, whole, n)

    def test_reader_one_byte_at_a_time(self) -> None:
        """read_file_meta gets the same answer from a reader that returns
        one byte per call as from the whole bytes."""
        source = io.BytesIO(self.file)
        meta = read_file_meta(lambda n: source.read(min(n, 1)))
        self.assertEqual(meta, parse_file_meta(self.file))

    def test_empty_data_set(self) -> None:
        """A file that ends right after its meta has its data set offset at
        the end, once the caller says the bytes are the whole file."""
        self.assertIsNone(parse_file_meta(self.meta))
        meta = parse_file_meta(self.meta, at_end=True)
        assert meta is not None
        self.assertEqual(meta.data_set_offset, len(self.meta))
        self.assertEqual(read_file_meta(io.BytesIO(self.meta).read), meta)

    def test_not_part10(self) -> None:
        """No DICM prefix, a file shorter than the preamble, or one that ends
        inside a meta element is a Part10Error."""
        self.assertRaises(Part10Error, parse_file_meta, b"\x00" * 128 + b"DICX" + DATA_SET)
        self.assertRaises(Part10Error, parse_file_meta, b"\x00" * 100, True)
        self.assertRaises(Part10Error, parse_file_meta, self.meta[:-3], True)
        self.assertRaises(Part10Error, read_file_meta, io.BytesIO(self.meta[:170]).read)

    def test_value_too_long(self) -> None:
        """A value that does not fit a 16-bit length cannot be encoded."""
        self.assertRaises(Part10Error, file_meta_bytes, CT, "1" * 70000, EVRLE, "")
