"""DICOM Part 10 files as bytes (PS3.10 7.1): the File Meta Information
encoded and parsed, and where the data set starts.

Pure: no file is opened here.  Readers hand in bytes (or their own ``read``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sdcc_twisted.core.conformance import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from sdcc_twisted.core.dataset_head import LONG_VRS


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


#: 128-byte preamble and the ``DICM`` prefix (PS3.10 7.1).
HEAD_LENGTH: Final = 132
#: Bytes a reader asks for at a time while it looks for the data set.
READ_SIZE: Final = 4096


@dataclass(frozen=True)
class FileMeta:
    """The File Meta Information of a Part 10 file.

    Attributes:
        elements: element number of each (0002,eeee) -> its raw value.
        data_set_offset: where the data set starts in the file.
    """

    elements: dict[int, bytes]
    data_set_offset: int

    def text(self, element: int) -> str:
        """A value as text, without its NUL or space padding (PS3.5 6.2)."""
        return self.elements.get(element, b"").decode("ascii", "replace").rstrip("\x00 ")

    @property
    def sop_instance_uid(self) -> str:
        """(0002,0003) Media Storage SOP Instance UID."""
        return self.text(0x0003)

    @property
    def transfer_syntax(self) -> str:
        """(0002,0010) Transfer Syntax UID."""
        return self.text(0x0010)


def parse_file_meta(data: bytes, at_end: bool = False) -> FileMeta | None:
    """Parse the leading bytes of a Part 10 file.

    The group 0002 elements are walked one by one (Explicit VR Little
    Endian, PS3.10 7.1), not trusted from (0002,0000).

    Args:
        data: the file's bytes from its start (any prefix of the file).
        at_end: ``data`` is the whole file.

    Returns:
        The :class:`FileMeta`, or ``None`` when more bytes are needed.

    Raises:
        Part10Error: no ``DICM`` prefix, or the file ends inside the meta.
    """
    if len(data) < HEAD_LENGTH:
        if at_end:
            raise Part10Error("not a DICOM Part 10 file (shorter than its preamble)")
        return None
    if data[128:HEAD_LENGTH] != b"DICM":
        raise Part10Error("not a DICOM Part 10 file (no DICM prefix)")
    elements: dict[int, bytes] = {}
    offset = HEAD_LENGTH
    while True:
        if len(data) - offset < 8:
            if at_end:
                return FileMeta(elements, offset)
            return None
        group, element, vr = struct.unpack_from("<HH2s", data, offset)
        if group != 0x0002:
            return FileMeta(elements, offset)
        if vr in LONG_VRS:
            if len(data) - offset < 12:
                if at_end:
                    raise Part10Error("the file ends inside the File Meta Information")
                return None
            (length,) = struct.unpack_from("<L", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        if start + length > len(data):
            if at_end:
                raise Part10Error("the file ends inside the File Meta Information")
            return None
        elements[element] = data[start:start + length]
        offset = start + length


def read_file_meta(read: Callable[[int], bytes]) -> FileMeta:
    """Parse the File Meta Information from ``read`` (a file's ``read``,
    positioned at its start), asking for :data:`READ_SIZE` bytes at a time.

    Raises:
        Part10Error: see :func:`parse_file_meta`.
    """
    data = b""
    while True:
        more = read(READ_SIZE)
        data += more
        meta = parse_file_meta(data, at_end=not more)
        if meta is not None:
            return meta
