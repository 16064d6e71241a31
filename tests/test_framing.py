"""Tests for sdcc_twisted.core.framing.PDUFramer (PS3.8 9.3.1, D.1)."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core.conformance import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_UNRECOGNIZED_PDU,
)
from sdcc_twisted.core.errors import FramingError
from sdcc_twisted.core.framing import PDUFramer


def _pdu(pdu_type: int, body: bytes) -> bytes:
    """A PDU: 6-byte header (type, reserved, big-endian length) and body."""
    return struct.pack("!BxL", pdu_type, len(body)) + body


def _pairs(framer: PDUFramer, chunks: list[bytes]) -> list[tuple[int, bytes]]:
    """Feed every chunk; return the (type, body) pairs with bodies as bytes."""
    out = []
    for chunk in chunks:
        out.extend((pdu_type, bytes(body)) for pdu_type, body in framer.feed(chunk))
    return out


def _split(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    """Cut *data* at random places into at most *pieces* chunks."""
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


PDUS = [
    (0x01, bytes(range(200))),
    (0x04, b"\x00\x00\x00\x04\x01\x03ab"),
    (0x04, bytes(4000)),
    (0x05, bytes(4)),
    (0x04, b""),
    (0x07, b"\x00\x00\x02\x06"),
    (0x02, b"ac" * 50),
    (0x03, b"\x00\x01\x01\x07"),
    (0x06, bytes(4)),
]
STREAM = b"".join(_pdu(t, b) for t, b in PDUS)


class SplittingTests(SynchronousTestCase):
    """The framer returns the same PDUs however the stream is cut."""

    def test_whole(self) -> None:
        """All PDUs in one feed come out complete and in order."""
        framer = PDUFramer(16384)
        self.assertEqual(_pairs(framer, [STREAM]), PDUS)
        self.assertEqual(framer.buffered, 0)

    def test_one_byte_at_a_time(self) -> None:
        """All PDUs fed one byte at a time come out complete and in order."""
        framer = PDUFramer(16384)
        chunks = [STREAM[i:i + 1] for i in range(len(STREAM))]
        self.assertEqual(_pairs(framer, chunks), PDUS)
        self.assertEqual(framer.buffered, 0)

    def test_random_splits(self) -> None:
        """All PDUs fed in random splits come out complete and in order."""
        rng = random.Random(4)
        for _ in range(300):
            framer = PDUFramer(16384)
            chunks = _split(STREAM, rng, rng.randint(2, 60))
            self.assertEqual(_pairs(framer, chunks), PDUS)

    def test_empty_feed(self) -> None:
        """Feeding b"" returns nothing and changes nothing."""
        framer = PDUFramer(16384)
        self.assertEqual(framer.feed(b""), [])
        framer.feed(STREAM[:3])
        self.assertEqual(framer.feed(b""), [])
        self.assertEqual(framer.buffered, 3)

    def test_buffered(self) -> None:
        """buffered counts the bytes of the incomplete PDU, header included."""
        framer = PDUFramer(16384)
        data = _pdu(0x04, bytes(100))
        framer.feed(data[:4])
        self.assertEqual(framer.buffered, 4)
        framer.feed(data[4:50])
        self.assertEqual(framer.buffered, 50)
        self.assertEqual(len(framer.feed(data[50:] + data[:7])), 1)
        self.assertEqual(framer.buffered, 7)

    def test_zero_length_body(self) -> None:
        """A PDU with PDU-length 0 is returned with an empty body (decode judges it)."""
        for chunks in ([b"\x05\x00\x00\x00\x00\x00"], [b"\x05\x00\x00", b"\x00\x00\x00"]):
            framer = PDUFramer(16384)
            self.assertEqual(_pairs(framer, chunks), [(0x05, b"")])

    def test_reserved_byte_ignored(self) -> None:
        """The reserved header byte is not tested (PS3.8 9.3.1)."""
        framer = PDUFramer(16384)
        self.assertEqual(_pairs(framer, [b"\x05\xff\x00\x00\x00\x04abcd"]), [(0x05, b"abcd")])

    def test_large_stream_one_byte_at_a_time(self) -> None:
        """A 1 MB stream fed in 1-byte pieces is framed correctly (amortised buffering)."""
        bodies = [bytes([i]) * 16378 + struct.pack("!LH", i, i) for i in range(64)]
        stream = b"".join(_pdu(0x04, body) for body in bodies)
        self.assertGreater(len(stream), 1 << 20)
        framer = PDUFramer(16384)
        feed = framer.feed
        got = []
        for i in range(len(stream)):
            got.extend(feed(stream[i:i + 1]))
        self.assertEqual([t for t, _ in got], [0x04] * 64)
        self.assertEqual([bytes(b) for _, b in got], bodies)


class ZeroCopyAndLifetimeTests(SynchronousTestCase):
    """Bodies are views that stay valid; whole PDUs are not copied."""

    def test_fast_path_views_into_input(self) -> None:
        """Whole PDUs fed to an empty framer are memoryview slices of the input."""
        framer = PDUFramer(16384)
        result = framer.feed(STREAM)
        for _, body in result:
            self.assertIsInstance(body, memoryview)
            self.assertIs(body.obj, STREAM)

    def test_bodies_intact_after_later_feeds(self) -> None:
        """Bodies returned earlier keep their bytes while later data is fed."""
        rng = random.Random(11)
        framer = PDUFramer(16384)
        kept = []
        for chunk in _split(STREAM * 5, rng, 200):
            kept.extend(framer.feed(chunk))
        self.assertEqual([(t, bytes(b)) for t, b in kept], PDUS * 5)

    def test_slow_path_bodies_intact(self) -> None:
        """A body completed from the internal buffer does not change on later feeds."""
        framer = PDUFramer(16384)
        first = _pdu(0x04, b"A" * 1000)
        second = _pdu(0x04, b"B" * 1000)
        framer.feed(first[:10])
        ((_, body),) = framer.feed(first[10:] + second[:500])
        framer.feed(second[500:])
        framer.feed(first[:600])
        self.assertEqual(bytes(body), b"A" * 1000)

    def test_bodies_read_only(self) -> None:
        """Bodies cannot be written to by the caller."""
        framer = PDUFramer(16384)
        data = _pdu(0x04, b"xyz")
        ((_, body),) = framer.feed(data[:4]) + framer.feed(data[4:])
        self.assertTrue(body.readonly)
        ((_, body),) = framer.feed(data)
        self.assertTrue(body.readonly)

    def test_mutable_input_copied(self) -> None:
        """A bytearray fed in may be reused by the caller: bodies do not change."""
        framer = PDUFramer(16384)
        data = bytearray(_pdu(0x04, b"hello"))
        ((_, body),) = framer.feed(data)
        data[:] = bytes(len(data))
        self.assertEqual(bytes(body), b"hello")

    def test_memory_bounded_by_one_pdu(self) -> None:
        """Feeding many PDUs plus a partial one holds only the partial one."""
        framer = PDUFramer(16384)
        tail = _pdu(0x04, bytes(1000))[:300]
        framer.feed(_pdu(0x04, bytes(10000)) * 20 + tail)
        self.assertEqual(framer.buffered, 300)


class LimitTests(SynchronousTestCase):
    """Types and lengths are checked as soon as the 6-byte header is in."""

    def test_pdata_over_limit_after_header(self) -> None:
        """A P-DATA-TF header declaring more than max_pdata_length fails at once."""
        framer = PDUFramer(16384)
        exc = self.assertRaises(FramingError, framer.feed, b"\x04\x00\x00\x00\x40\x01")
        self.assertEqual(exc.reason, ABORT_INVALID_PDU_PARAMETER_VALUE)
        self.assertIn("16385", str(exc))
        self.assertIn("16384", str(exc))

    def test_pdata_over_limit_header_in_pieces(self) -> None:
        """The check fires when the header's last byte arrives, without any body."""
        framer = PDUFramer(100)
        header = _pdu(0x04, bytes(101))[:6]
        for i in range(5):
            self.assertEqual(framer.feed(header[i:i + 1]), [])
        exc = self.assertRaises(FramingError, framer.feed, header[5:])
        self.assertEqual(exc.reason, ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_pdata_over_limit_after_other_pdus(self) -> None:
        """An over-long header behind complete PDUs in the same feed is refused."""
        framer = PDUFramer(100)
        self.assertRaises(FramingError, framer.feed,
                          _pdu(0x04, bytes(10)) + b"\x04\x00\xff\xff\xff\xff")

    def test_pdata_at_limit_accepted(self) -> None:
        """A P-DATA-TF exactly max_pdata_length long is accepted."""
        framer = PDUFramer(100)
        self.assertEqual(_pairs(framer, [_pdu(0x04, bytes(100))]), [(0x04, bytes(100))])

    def test_other_types_use_other_limit(self) -> None:
        """Non-P-DATA PDUs are limited by max_other_length, not max_pdata_length."""
        framer = PDUFramer(100, max_other_length=1000)
        self.assertEqual(_pairs(framer, [_pdu(0x01, bytes(1000))]), [(0x01, bytes(1000))])
        for pdu_type in (0x01, 0x02, 0x03, 0x05, 0x06, 0x07):
            framer = PDUFramer(100, max_other_length=1000)
            exc = self.assertRaises(FramingError, framer.feed,
                                    struct.pack("!BxL", pdu_type, 1001))
            self.assertEqual(exc.reason, ABORT_INVALID_PDU_PARAMETER_VALUE)
            self.assertIn("1001", str(exc))
            self.assertIn("1000", str(exc))

    def test_default_other_limit(self) -> None:
        """max_other_length defaults to 1 MiB."""
        framer = PDUFramer(100)
        framer.feed(struct.pack("!BxL", 0x01, 1 << 20))
        self.assertRaises(FramingError, PDUFramer(100).feed,
                          struct.pack("!BxL", 0x01, (1 << 20) + 1))

    def test_unknown_type_after_header(self) -> None:
        """An unknown PDU type is unrecognized-PDU as soon as the header is in."""
        for pdu_type in (0x00, 0x08, 0x10, 0xFF):
            framer = PDUFramer(16384)
            header = struct.pack("!BxL", pdu_type, 4)
            self.assertEqual(framer.feed(header[:5]), [])
            exc = self.assertRaises(FramingError, framer.feed, header[5:])
            self.assertEqual(exc.reason, ABORT_UNRECOGNIZED_PDU)
            exc = self.assertRaises(FramingError, PDUFramer(16384).feed, header)
            self.assertEqual(exc.reason, ABORT_UNRECOGNIZED_PDU)

    def test_failure_is_sticky(self) -> None:
        """After an error every later feed raises the same error."""
        framer = PDUFramer(16384)
        first = self.assertRaises(FramingError, framer.feed, b"\x09\x00\x00\x00\x00\x00")
        for data in (b"", _pdu(0x05, bytes(4))):
            again = self.assertRaises(FramingError, framer.feed, data)
            self.assertEqual(again.reason, first.reason)
            self.assertEqual(str(again), str(first))

    def test_bad_limits(self) -> None:
        """Limits must be positive."""
        self.assertRaises(ValueError, PDUFramer, 0)
        self.assertRaises(ValueError, PDUFramer, 100, 0)


class FramerPropertyTests(SynchronousTestCase):
    """Hypothesis properties of the framer."""

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(st.binary(max_size=40), max_size=20))
    def test_arbitrary_bytes(self, chunks: list[bytes]) -> None:
        """Arbitrary bytes in arbitrary splits give pairs or FramingError, nothing else."""
        framer = PDUFramer(32, max_other_length=64)
        try:
            for chunk in chunks:
                for pdu_type, body in framer.feed(chunk):
                    self.assertIn(pdu_type, range(1, 8))
                    self.assertLessEqual(len(body), 64)
        except FramingError as exc:
            self.assertIn(exc.reason, (ABORT_UNRECOGNIZED_PDU,
                                       ABORT_INVALID_PDU_PARAMETER_VALUE))

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(st.tuples(st.integers(1, 7), st.binary(max_size=50)), max_size=8),
           st.lists(st.integers(0, 500), max_size=20))
    def test_any_split_same_result(self, pdus: list[tuple[int, bytes]],
                                   cuts: list[int]) -> None:
        """Valid PDUs come out the same whatever the split points."""
        stream = b"".join(_pdu(t, b) for t, b in pdus)
        points = sorted({c for c in cuts if 0 < c < len(stream)})
        chunks = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]
        framer = PDUFramer(50, max_other_length=50)
        self.assertEqual(_pairs(framer, chunks), pdus)
        self.assertEqual(framer.buffered, 0)
