"""Decoding a stored instance for a peer that does not accept its syntax.

When a C-MOVE destination or a C-GET requestor accepted the instance's class
only in an uncompressed syntax, the instance is decoded with pydicom and the
pylibjpeg plugins into a temp Part 10 file in that syntax, which is then
streamed like any stored file and removed.  The SOP Instance UID and every
other attribute stay as stored; the pixel description follows the decoded
pixels and the Lossy Image Compression attributes record a lossy source
(PS3.5 8.2, PS3.3 C.7.6.1.1.5).  Decoding is blocking: it runs in the
injected ``run_blocking`` (the reactor's thread pool), never on the reactor.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet import defer

from sdcc_twisted.core.conformance import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    LOSSY_COMPRESSION_METHODS,
    TRANSFER_SYNTAXES,
)
from sdcc_twisted.storage.files import FileStore


class DecodeRefused(Exception):
    """The instance cannot be decoded: the reason for the log, and a short
    one (at most 64 characters with its count) for the Error Comment."""

    def __init__(self, reason: str, short: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.short = short


def decoded_size(ds: Any) -> int:
    """Bytes of the decoded Pixel Data, from the Image Pixel module (PS3.3
    C.7.6.3): rows x columns x samples x frames x bytes per sample."""
    frames = int(ds.get("NumberOfFrames") or 1)
    bits = int(ds.BitsAllocated)
    samples = int(ds.get("SamplesPerPixel") or 1)
    pixels = int(ds.Rows) * int(ds.Columns) * samples * frames
    return (pixels * bits + 7) // 8


def decode_file(source: str, target_syntax: str, destination: str, max_bytes: int) -> None:
    """Write the instance of ``source`` decoded into ``target_syntax`` as a
    new owner-only Part 10 file at ``destination`` (blocking).

    Raises:
        DecodeRefused: too large for ``max_bytes``, or no plugin decodes it
            (nothing is left at ``destination``).
    """
    from pydicom import dcmread
    from pydicom.pixels.utils import decompress
    from pydicom.uid import UID

    ds = dcmread(source)
    stored = str(ds.file_meta.TransferSyntaxUID)
    name = TRANSFER_SYNTAXES.get(stored, stored)
    try:
        size = decoded_size(ds)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DecodeRefused(f"cannot decode {name}: no usable Image Pixel module ({exc})",
                            "cannot decode: no Image Pixel module") from None
    if size > max_bytes:
        raise DecodeRefused(
            f"{name} decodes to {size} bytes, over [retrieve] max_decode_bytes ({max_bytes})",
            f"too large to decode ({size} bytes)")
    compressed = len(ds.PixelData)
    try:
        decompress(ds, generate_instance_uid=False)
    except Exception as exc:  # noqa: BLE001 - any codec failure is this instance's
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DecodeRefused(f"cannot decode {name}: {first}", f"cannot decode {stored}") from None
    method = LOSSY_COMPRESSION_METHODS.get(stored)
    if method is not None:
        ds.LossyImageCompression = "01"
        methods = [str(m) for m in _values(ds.get("LossyImageCompressionMethod"))]
        if method not in methods:
            ratios = [str(r) for r in _values(ds.get("LossyImageCompressionRatio"))]
            if len(ratios) == len(methods):
                ratios.append(f"{size / max(compressed, 1):.2f}"[:16])
                ds.LossyImageCompressionRatio = ratios
            ds.LossyImageCompressionMethod = [*methods, method]
    ds.file_meta.TransferSyntaxUID = UID(target_syntax)
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            ds.save_as(handle, enforce_file_format=True)
    except BaseException:
        _remove(destination)
        raise


def _values(value: Any) -> list[Any]:
    """The values of a possibly multi-valued element (none when absent)."""
    from pydicom.multival import MultiValue

    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (MultiValue, list)) else [value]


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Transcoder:
    """Decodes instances into temp files of the store's temp folder (removed
    again after sending; a crash's leftovers go at the next start).

    Args:
        store: whose temp folder holds the decoded files.
        max_decode_bytes: ``[retrieve] max_decode_bytes``.
        run_blocking: runs a blocking call off the reactor thread.
    """

    def __init__(self, store: FileStore, max_decode_bytes: int,
                 run_blocking: Callable[..., "defer.Deferred[Any]"]) -> None:
        self.store = store
        self.max_decode_bytes = max_decode_bytes
        self.run_blocking = run_blocking

    async def decode(self, path: str, target_syntax: str) -> str:
        """The path of a temp Part 10 file holding ``path``'s instance in
        ``target_syntax``; the caller :meth:`discard` s it.

        Raises:
            DecodeRefused: it cannot or may not be decoded.
        """
        destination = os.path.join(self.store.tmp_dir, self.store.temp_name())
        await self.run_blocking(decode_file, path, target_syntax, destination,
                                self.max_decode_bytes)
        return destination

    async def discard(self, path: str) -> None:
        """Remove a file :meth:`decode` made."""
        await self.run_blocking(_remove, path)
