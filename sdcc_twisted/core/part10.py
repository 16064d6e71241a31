"""DICOM Part 10 files as bytes (PS3.10 7.1): the File Meta Information
encoded and parsed, and where the data set starts.

Pure: no file is opened here.  Readers hand in bytes (or their own ``read``).
"""

from __future__ import annotations

import struct

from sdcc_twisted.core.conformance import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


class Part10Error(ValueError):
    """Not a Part 10 file, or File Meta Information that cannot be written
    or read."""


# -- File Meta Information (PS3.10 7.1, Table 7.1-1) --------------------------
def _short_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """Encode an Explicit VR LE element with a 16-bit length (PS3.5 7.1.2)."""
    if len(value) > 0xFFFE:
        raise Part10Error(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) value too long")
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _ui(value: str) -> bytes:
    """A UI value, NUL-padded to even length (PS3.5 9.1)."""
    raw = value.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) & 1 else raw


def _text(value: str) -> bytes:
    """An AE or SH value, space-padded to even length (PS3.5 6.2)."""
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) & 1 else raw


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str,
                    transfer_syntax: str, calling_ae: str) -> bytes:
    """Return preamble, ``DICM`` and group 0002 of a Part 10 file.

    PS3.10 7.1: 128 zero bytes, the prefix, then Explicit VR Little Endian
    elements (0002,0000) to (0002,0016); Source AE is left out when empty.
    """
    body = b"".join([
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2), b"\x00\x01",
        _short_element(0x00020002, b"UI", _ui(sop_class_uid)),
        _short_element(0x00020003, b"UI", _ui(sop_instance_uid)),
        _short_element(0x00020010, b"UI", _ui(transfer_syntax)),
        _short_element(0x00020012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
        _short_element(0x00020013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
    ])
    if calling_ae:
        body += _short_element(0x00020016, b"AE", _text(calling_ae))
    group_length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body
