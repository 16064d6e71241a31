"""Decoding for a peer that does not accept the stored syntax: the choice of
syntax (core), and the decoded file (services.transcode) from real encoded
pixel data of each compressed syntax."""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from sdcc_twisted.core import conformance as c
from sdcc_twisted.services.transcode import DecodeRefused, Transcoder, decode_file
from sdcc_twisted.storage.files import FileStore

from . import corpus

CT = "1.2.840.10008.5.1.4.1.1.2"
#: The corpus's JPEG Extended sample (pydicom's JPEG-lossy.dcm) has a scan
#: header libjpeg refuses: the one instance no installed plugin decodes.
UNDECODABLE = c.JPEG_EXTENDED


class SyntaxChoiceTests(TestCase):
    """core.conformance: which syntax an instance goes in."""

    def test_stored_syntax_first(self) -> None:
        """An accepted stored syntax is used as it is, even when it is
        compressed and an uncompressed one is accepted too."""
        self.assertEqual(c.sending_syntax(c.JPEG_2000, lambda ts: True), c.JPEG_2000)

    def test_decoded_explicit_then_implicit(self) -> None:
        """A decodable syntax the peer refused goes as Explicit VR Little
        Endian when accepted, else Implicit; nothing when neither is."""
        for stored in c.DECODABLE_SYNTAXES:
            self.assertEqual(c.sending_syntax(stored, lambda ts: ts in c.DECODED_SYNTAXES),
                             c.EXPLICIT_VR_LITTLE_ENDIAN)
            self.assertEqual(c.sending_syntax(stored, lambda ts: ts == c.IMPLICIT_VR_LITTLE_ENDIAN),
                             c.IMPLICIT_VR_LITTLE_ENDIAN)
            self.assertIsNone(c.sending_syntax(stored, lambda ts: ts == c.EXPLICIT_VR_BIG_ENDIAN))

    def test_uncompressed_is_not_converted(self) -> None:
        """An uncompressed stored syntax the peer refused is not converted."""
        self.assertIsNone(c.sending_syntax(c.EXPLICIT_VR_BIG_ENDIAN,
                                           lambda ts: ts in c.DECODED_SYNTAXES))

    def test_contexts_with_decoded(self) -> None:
        """The contexts proposed for a C-MOVE: each as stored, first, then
        the uncompressed ones for each compressed class, without repeats."""
        wanted = [(CT, c.EXPLICIT_VR_LITTLE_ENDIAN), (CT, c.RLE_LOSSLESS), ("1.2.3", c.JPEG_BASELINE)]
        self.assertEqual(c.contexts_with_decoded(wanted), [
            *wanted, (CT, c.IMPLICIT_VR_LITTLE_ENDIAN),
            ("1.2.3", c.EXPLICIT_VR_LITTLE_ENDIAN), ("1.2.3", c.IMPLICIT_VR_LITTLE_ENDIAN)])


class DecodeFileTests(TestCase):
    """services.transcode.decode_file on real encoded pixel data."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.samples = corpus.transfer_syntax_corpus(self.directory)

    def test_every_decodable_syntax_to_both_targets(self) -> None:
        """Each compressed sample decodes to Explicit and to Implicit VR
        Little Endian: pixels equal pydicom's decoding, SOP Instance UID and
        every other attribute kept, lossy sources recorded, owner-only file."""
        from pydicom import dcmread

        for syntax in sorted(c.DECODABLE_SYNTAXES - {UNDECODABLE}):
            for target in c.DECODED_SYNTAXES:
                sample = self.samples[syntax]
                out = os.path.join(self.directory, f"out-{syntax}-{target}.dcm")
                decode_file(sample.path, target, out, 1 << 30)
                self.assertEqual(corpus.decoding_differences(sample.path, out), [], syntax)
                decoded = dcmread(out)
                self.assertEqual(str(decoded.file_meta.TransferSyntaxUID), target)
                self.assertEqual(decoded.SOPInstanceUID, sample.sop_instance_uid)
                self.assertEqual(decoded.file_meta.MediaStorageSOPInstanceUID,
                                 sample.sop_instance_uid)
                self.assertEqual(decoded.file_meta.ImplementationClassUID,
                                 c.IMPLEMENTATION_CLASS_UID)
                self.assertEqual(stat.S_IMODE(os.stat(out).st_mode), 0o600)

    def test_jpeg_baseline_gets_lossy_method_and_ratio(self) -> None:
        """A JPEG Baseline source that recorded nothing gets Lossy Image
        Compression 01, method ISO_10918_1 and its ratio (PS3.3
        C.7.6.1.1.5.1); one that recorded them keeps them, not repeated."""
        from pydicom import dcmread

        sample = self.samples[c.JPEG_BASELINE]
        out = os.path.join(self.directory, "kept.dcm")
        decode_file(sample.path, c.EXPLICIT_VR_LITTLE_ENDIAN, out, 1 << 30)
        self.assertEqual(dcmread(out).LossyImageCompressionMethod, "ISO_10918_1")
        self.assertEqual(str(dcmread(out).LossyImageCompressionRatio), "17.401")

        silent = dcmread(sample.path)
        for keyword in ("LossyImageCompression", "LossyImageCompressionMethod",
                        "LossyImageCompressionRatio"):
            delattr(silent, keyword)
        source = os.path.join(self.directory, "silent.dcm")
        silent.save_as(source, enforce_file_format=True)
        out = os.path.join(self.directory, "recorded.dcm")
        decode_file(source, c.IMPLICIT_VR_LITTLE_ENDIAN, out, 1 << 30)
        decoded = dcmread(out)
        self.assertEqual(decoded.LossyImageCompression, "01")
        self.assertEqual(decoded.LossyImageCompressionMethod, "ISO_10918_1")
        expected = 100 * 100 * 3 / len(silent.PixelData)
        self.assertAlmostEqual(float(decoded.LossyImageCompressionRatio), expected, places=1)

    def test_too_large(self) -> None:
        """An instance decoding to more than max_decode_bytes is refused with
        the sizes and the key named; nothing is left behind."""
        sample = self.samples[c.JPEG_2000_LOSSLESS]
        out = os.path.join(self.directory, "big.dcm")
        with self.assertRaises(DecodeRefused) as caught:
            decode_file(sample.path, c.EXPLICIT_VR_LITTLE_ENDIAN, out, 1000)
        self.assertIn("[retrieve] max_decode_bytes (1000)", caught.exception.reason)
        self.assertIn("8192 bytes", caught.exception.reason)
        self.assertLessEqual(len(caught.exception.short) + len("1 of 1 failed: "), 64)
        self.assertFalse(os.path.exists(out))

    def test_undecodable(self) -> None:
        """Pixel data no plugin decodes is refused with the syntax named and
        the codec's reason; nothing is left behind."""
        sample = self.samples[UNDECODABLE]
        out = os.path.join(self.directory, "bad.dcm")
        with self.assertRaises(DecodeRefused) as caught:
            decode_file(sample.path, c.EXPLICIT_VR_LITTLE_ENDIAN, out, 1 << 30)
        self.assertIn(f"cannot decode {c.TRANSFER_SYNTAXES[UNDECODABLE]}",
                      caught.exception.reason)
        self.assertEqual(caught.exception.short, f"cannot decode {UNDECODABLE}")
        self.assertFalse(os.path.exists(out))

    async def test_transcoder_runs_blocking_work_off_the_reactor(self) -> None:
        """Transcoder decodes and discards through the injected run_blocking
        (the thread pool in production), into the store's temp folder."""
        store = FileStore(os.path.join(self.directory, "store"), fsync=False)
        calls: list[str] = []

        def run_blocking(fn: Any, *args: Any) -> "defer.Deferred[Any]":
            calls.append(fn.__name__)
            return defer.maybeDeferred(fn, *args)
        transcoder = Transcoder(store, 1 << 30, run_blocking)
        path = await transcoder.decode(self.samples[c.RLE_LOSSLESS].path,
                                       c.IMPLICIT_VR_LITTLE_ENDIAN)
        self.assertEqual(os.path.dirname(path), store.tmp_dir)
        self.assertEqual(corpus.decoding_differences(self.samples[c.RLE_LOSSLESS].path, path), [])
        await transcoder.discard(path)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(calls, ["decode_file", "_remove"])
        self.assertEqual(store.remove_stale_temp_files(), 0)
