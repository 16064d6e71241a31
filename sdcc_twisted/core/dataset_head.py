"""An incremental walker over a data set's bytes as they stream in.

Sans-I/O: no Twisted, no files, no clocks.  :class:`DatasetWalker` is fed the
data set of a C-STORE piece by piece.  It checks the structure of the whole
data set (PS3.5 7.1 data elements, 7.5 nesting of sequences and items, A.4
encapsulated pixel data) and collects the decoded values of a few wanted
top-level elements (the index keys of :data:`sdcc_twisted.core.records.HEAD_TAGS`)
while they stream past.  Values are skipped by arithmetic: the only bytes it
keeps are a carry-over of at most 11 bytes for a header split across two
pieces, and the value of each wanted element (capped at
:attr:`DatasetWalker.MAX_VALUE_BYTES`).

Encodings (PS3.5 7.1.2, 7.1.3, Annex A): Implicit VR Little Endian, Explicit
VR Big Endian, and Explicit VR Little Endian for every other transfer syntax
(all encapsulated syntaxes are explicit little endian, PS3.5 A.4).  An
undefined-length UN element is an Implicit VR Little Endian sequence inside
any of them (PS3.5 6.2.2).

What is walked and what is only skipped:

* defined- and undefined-length SQ elements in explicit syntaxes, their
  items (defined or undefined length) and the elements inside: descended into
  and checked;
* undefined-length elements in Implicit VR (sequences, PS3.5 7.5.1) and
  undefined-length UN: descended into as Implicit VR Little Endian;
* defined-length elements in Implicit VR and defined-length UN: skipped by
  length, since their VR cannot be known without a data dictionary;
* undefined-length OB/OW (encapsulated Pixel Data, PS3.5 A.4): fragments
  skipped by length until the sequence delimiter.

Deliberately strict (each raises :class:`DatasetError`): odd value lengths
(PS3.5 7.1.1), tags lower than their predecessor in the same data set or
item (PS3.5 7.1), VRs outside PS3.5 Table 6.2-1, item tags where a data
element is expected and data elements where an item is expected, a value or
an item running past the end of its enclosing item or sequence, and a data
set that ends inside an element, an item or a sequence.  Equal consecutive
tags (a duplicated element) are tolerated; the last value wins, as with
pydicom.  Group 0002 elements inside the data set are tolerated and walked
like any other.
"""

from __future__ import annotations

import struct
from typing import Final, Mapping, NoReturn

from sdcc_twisted.core.conformance import BIG_ENDIAN_SYNTAXES, IMPLICIT_VR_SYNTAXES
from sdcc_twisted.core.errors import DatasetError
from sdcc_twisted.core.records import HEAD_TAGS, SPECIFIC_CHARACTER_SET_TAG

__all__ = ["DatasetWalker"]

# -- Tags and lengths (PS3.5 7.5, Table 7.5-1 / 7.5-2; A.4) -------------------
_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITER: Final = 0xFFFEE00D
_SEQUENCE_DELIMITER: Final = 0xFFFEE0DD
_ITEM_GROUP: Final = 0xFFFE
_UNDEFINED: Final = 0xFFFFFFFF
_PIXEL_DATA: Final = 0x7FE00010
_NO_LIMIT: Final = 1 << 62

# -- Value representations (PS3.5 Table 6.2-1, 7.1.2) -------------------------
_VRS: Final = frozenset(
    vr.encode("ascii") for vr in (
        "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ "
        "SS ST SV TM UC UI UL UN UR US UT UV").split())
#: VRs with a reserved field and a 32-bit length in explicit syntaxes
#: (PS3.5 7.1.2).
LONG_VRS: Final = frozenset(
    vr.encode("ascii") for vr in "OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())

#: Explicit VR -> 1 for a 32-bit length, 0 for a 16-bit one; SQ is left out
#: (the fast path leaves sequences to the general one).
_HEADER_KINDS: Final[dict[bytes, int]] = {
    vr: int(vr in LONG_VRS) for vr in _VRS if vr != b"SQ"}

#: VRs of the index attributes, to decode them when the VR is implicit or UN.
_KNOWN_VRS: Final[dict[int, str]] = {
    0x00080005: "CS", 0x00080016: "UI", 0x00080018: "UI", 0x00080020: "DA",
    0x00080021: "DA", 0x00080023: "DA", 0x00080030: "TM", 0x00080031: "TM",
    0x00080033: "TM", 0x00080050: "SH", 0x00080060: "CS", 0x00080090: "PN",
    0x00081030: "LO", 0x0008103E: "LO", 0x00100010: "PN", 0x00100020: "LO",
    0x00100030: "DA", 0x00100040: "CS", 0x0020000D: "UI", 0x0020000E: "UI",
    0x00200010: "SH", 0x00200011: "IS", 0x00200013: "IS",
}

#: Text VRs whose value depends on Specific Character Set (PS3.5 6.1.2.3).
_CHARSET_VRS: Final = frozenset({"SH", "LO", "UC", "PN", "ST", "LT", "UT"})
#: Text VRs with a single value, never split on backslash (PS3.5 6.4).
_SINGLE_VALUE_VRS: Final = frozenset({"ST", "LT", "UT", "UR"})
#: Text VRs whose leading spaces are not significant (PS3.5 Table 6.2-1).
_STRIP_BOTH_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH",
                                    "TM", "UI"})
#: Binary numeric VRs: struct code and item size.
_BINARY_VRS: Final[dict[str, str]] = {
    "US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d",
    "SV": "q", "UV": "Q", "AT": "HH",
}
#: Control characters that reset ISO 2022 code extensions (PS3.5 6.1.2.5.3);
#: backslash is left out, as pydicom does, since it can be the second byte of
#: a JIS X 0208 character.
_TEXT_DELIMITERS: Final = {0x0D, 0x0A, 0x09, 0x0C}
_DEFAULT_ENCODINGS: Final = ["iso8859"]
#: Specific Character Set defined terms without code extensions (PS3.3
#: C.12.1.1.2, Tables C.12-2 and C.12-4) -> Python codec, as pydicom maps
#: them.  A single such term is decoded here; code extensions (ISO 2022) and
#: multi-valued terms go to pydicom, imported only then: it costs about
#: 24 MB of memory that the receive path otherwise never needs.
_SIMPLE_CHARSETS: Final[dict[str, str]] = {
    "": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 13": "shift_jis",
    "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2", "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4", "ISO_IR 126": "iso_ir_126", "ISO_IR 127": "iso_ir_127",
    "ISO_IR 138": "iso_ir_138", "ISO_IR 144": "iso_ir_144", "ISO_IR 148": "iso_ir_148",
    "ISO_IR 166": "iso_ir_166", "ISO_IR 192": "UTF8", "GB18030": "GB18030", "GBK": "GBK",
}
_ESC: Final = 0x1B

# -- Level kinds --------------------------------------------------------------
_ELEMENTS: Final = 0   # a data set or an item: data elements
_ITEMS: Final = 1      # a sequence: items, then maybe a sequence delimiter
_FRAGMENTS: Final = 2  # encapsulated pixel data: fragment items, delimiter


class _Encoding:
    """How the headers at one nesting level are encoded."""

    __slots__ = ("explicit", "little", "tag", "u16", "u32")

    def __init__(self, explicit: bool, little: bool) -> None:
        order = "<" if little else ">"
        self.explicit = explicit
        self.little = little
        self.tag = struct.Struct(order + "HH")
        self.u16 = struct.Struct(order + "H")
        self.u32 = struct.Struct(order + "L")


#: Tag, VR and short length of a little endian element header (the VR and
#: short length are the 32-bit length's bytes in Implicit VR).
_LE_HEADER: Final = struct.Struct("<HH2sH")
_LE_U32: Final = struct.Struct("<L")

_IMPLICIT_LE: Final = _Encoding(False, True)
_EXPLICIT_LE: Final = _Encoding(True, True)
_EXPLICIT_BE: Final = _Encoding(True, False)


class _Level:
    """One open data set, item, sequence or fragment list."""

    __slots__ = ("kind", "end", "limit", "enc", "last_tag")

    def __init__(self, kind: int, end: int, limit: int, enc: _Encoding) -> None:
        self.kind = kind
        self.end = end          # absolute end offset, or -1 if undefined length
        self.limit = limit      # no header or value may run past this offset
        self.enc = enc
        self.last_tag = -1


def _encoding_for(transfer_syntax: str) -> _Encoding:
    """Return the data set encoding of a transfer syntax (PS3.5 Annex A)."""
    if transfer_syntax in IMPLICIT_VR_SYNTAXES:
        return _IMPLICIT_LE
    if transfer_syntax in BIG_ENDIAN_SYNTAXES:
        return _EXPLICIT_BE
    return _EXPLICIT_LE


def _decode_with(raw: bytes, encodings: list[str], delimiters: set[int]) -> str:
    """Decode text with the Specific Character Set, never raising; as
    pydicom does (undecodable bytes become U+FFFD)."""
    if len(encodings) == 1 and _ESC not in raw:
        try:
            return raw.decode(encodings[0])
        except UnicodeError:
            return raw.decode(encodings[0], errors="replace")
        except LookupError:
            return raw.decode("latin-1")
    from pydicom.charset import decode_bytes

    try:
        return decode_bytes(raw, encodings, delimiters)
    except (UnicodeError, LookupError, ValueError):
        return raw.decode("latin-1")


def _encodings_for(terms: list[str]) -> list[str]:
    """Python codecs for the values of Specific Character Set (PS3.5 6.1)."""
    if len(terms) <= 1:
        codec = _SIMPLE_CHARSETS.get(terms[0] if terms else "")
        if codec is not None:
            return [codec]
    from pydicom.charset import convert_encodings

    try:
        return convert_encodings(terms) or _DEFAULT_ENCODINGS
    except (LookupError, ValueError):
        return _DEFAULT_ENCODINGS


def decode_value(raw: bytes, vr: str, little: bool, encodings: list[str]) -> str:
    """Return the string form of a value: padding stripped, values joined by
    backslash (PS3.5 6.2, 6.4); PN and other text VRs decoded with the
    Specific Character Set (PS3.5 6.1)."""
    fmt = _BINARY_VRS.get(vr)
    if fmt is not None:
        size = struct.calcsize("<" + fmt)
        count = len(raw) // size
        if count == 0:
            return ""
        values = struct.unpack(("<" if little else ">") + fmt * count,
                               raw[:count * size])
        if vr == "AT":
            return "\\".join(f"{values[k]:04X}{values[k + 1]:04X}"
                             for k in range(0, len(values), 2))
        return "\\".join(str(v) for v in values)
    if vr in _CHARSET_VRS:
        text = _decode_with(raw, encodings, _TEXT_DELIMITERS)
    else:
        text = raw.decode("latin-1")
    if vr in _SINGLE_VALUE_VRS:
        return text.rstrip("\x00 ")
    if "\\" not in text and vr != "PN":    # one value: the common case
        return text.strip("\x00 ") if vr in _STRIP_BOTH_VRS else text.rstrip("\x00 ")
    parts = text.rstrip("\x00 ").split("\\")
    if vr in _STRIP_BOTH_VRS:
        parts = [p.strip("\x00 ") for p in parts]
    elif vr == "PN":
        # PS3.5 6.2.1: component groups separated by "="; drop empty trailing.
        names = []
        for part in parts:
            groups = part.rstrip("\x00 ").split("=")
            while groups and not groups[-1]:
                groups.pop()
            names.append("=".join(groups))
        parts = names
    else:
        parts = [p.rstrip("\x00 ") for p in parts]
    return "\\".join(parts)


class DatasetWalker:
    """Walks a data set's element headers as its bytes stream in.

    Attributes:
        values: keyword -> decoded value of the wanted top-level elements seen
            so far (padding stripped, multiple values joined by backslash).
        head_complete: True once Pixel Data or a top-level tag past the last
            wanted tag was reached, or ``max_head_bytes`` were passed, or the
            data set was finished: no more values will be added.
        bytes_seen: the number of bytes fed so far.
    """

    #: Largest wanted value that is kept; longer ones are skipped unrecorded.
    MAX_VALUE_BYTES: Final = 4096
    #: How many irregularities are kept in :attr:`warnings`.
    MAX_WARNINGS: Final = 8

    def __init__(self, transfer_syntax: str, wanted: Mapping[int, str] = HEAD_TAGS,
                 max_head_bytes: int = 1 << 20) -> None:
        """Prepare to walk a data set encoded in ``transfer_syntax``.

        Args:
            transfer_syntax: the UID of the presentation context's syntax.
            wanted: tag -> keyword of the top-level elements to decode.
            max_head_bytes: values are only collected from elements that
                start within this many bytes of the data set.
        """
        self.values: dict[str, str] = {}
        #: Irregularities that do not break the structure (odd element
        #: lengths, tags out of order): the element boundaries are still
        #: known, and pydicom and DCMTK read such data sets, so they are
        #: stored as received (statement: nothing is "forcibly rounded or
        #: omitted") and reported here for the log.
        self.warnings: list[str] = []
        self.head_complete = False
        self.bytes_seen = 0
        self._wanted = dict(wanted)
        self._last_wanted = max(self._wanted, default=-1)
        self._max_head_bytes = max_head_bytes
        self._stack = [_Level(_ELEMENTS, -1, _NO_LIMIT, _encoding_for(transfer_syntax))]
        self._pos = 0            # absolute offset of the next unparsed byte
        self._skip = 0           # bytes of the current value still to come
        self._carry = b""        # start of a header split across two feeds
        self._capture: bytearray | None = None
        self._capture_tag = 0
        self._capture_vr = ""
        self._capture_little = True
        self._encodings = _DEFAULT_ENCODINGS
        self._error: DatasetError | None = None
        self._finished = False

    # -- public API ------------------------------------------------------------
    def feed(self, data: bytes | memoryview) -> None:
        """Walk the next piece of the data set.

        Raises:
            DatasetError: as soon as the structure is broken; every later
                call raises it again.
        """
        if self._error is not None:
            raise self._error
        if self._finished:
            self._fail("data after the end of the data set", self._pos)
        buf = memoryview(data)
        if buf.itemsize != 1 or buf.ndim != 1:
            buf = buf.cast("B")
        n = len(buf)
        self.bytes_seen += n
        i = 0
        try:
            while i < n:
                if self._skip:
                    take = min(self._skip, n - i)
                    if self._capture is not None:
                        self._capture += buf[i:i + take]
                    self._skip -= take
                    self._pos += take
                    i += take
                    if not self._skip:
                        self._value_done()
                elif self._carry:
                    carried = len(self._carry)
                    head = self._carry + bytes(buf[i:i + 12 - carried])
                    used = self._header(head, 0, len(head))
                    if not used:
                        self._carry = head
                        break
                    self._carry = b""
                    i += used - carried
                else:
                    if len(self._stack) == 1 and self._stack[0].enc.little:
                        j = self._top_level_run(buf, i, n)
                        if j != i:
                            i = j
                            continue
                    used = self._header(buf, i, n)
                    if not used:
                        self._carry = bytes(buf[i:n])
                        break
                    i += used
        except DatasetError as exc:
            self._error = exc
            self._capture = None
            raise

    def finish(self) -> None:
        """Declare the end of the data set.

        Raises:
            DatasetError: if the data set is empty, or ends inside an element
                header, a value, an undefined-length item or sequence, or a
                defined-length item or sequence.
        """
        if self._error is not None:
            raise self._error
        if self._finished:
            return
        if self.bytes_seen == 0:
            self._fail("empty data set", 0)
        if self._carry:
            self._fail(f"data set ends inside an element header "
                       f"({len(self._carry)} bytes of it)", self._pos)
        if self._skip:
            self._fail(f"data set ends inside a value ({self._skip} bytes "
                       f"missing)", self._pos)
        if len(self._stack) > 1:
            name = {_ELEMENTS: "an item", _ITEMS: "a sequence",
                    _FRAGMENTS: "encapsulated pixel data"}[self._stack[-1].kind]
            self._fail(f"data set ends inside {name}", self._pos)
        self._finished = True
        self.head_complete = True

    # -- internals -------------------------------------------------------------
    def _fail(self, message: str, offset: int) -> NoReturn:
        """Raise (and remember) a DatasetError at ``offset``."""
        self._error = DatasetError(message, offset)
        raise self._error

    def _header(self, buf: bytes | memoryview, i: int, n: int) -> int:
        """Parse and act on the header at ``buf[i:]``.

        Returns the header length, or 0 when more bytes are needed.
        """
        if n - i < 8:
            return 0
        level = self._stack[-1]
        enc = level.enc
        pos = self._pos
        group, elem = enc.tag.unpack_from(buf, i)
        tag = group << 16 | elem
        kind = level.kind

        if kind == _ELEMENTS and group != _ITEM_GROUP:
            return self._element(buf, i, n, level, tag, pos)

        # Item, item delimiter and sequence delimiter: tag + 32-bit length,
        # never a VR (PS3.5 7.5).
        length = enc.u32.unpack_from(buf, i + 4)[0]
        start = pos + 8
        if start > level.limit:
            self._fail("item header runs past the end of its container", pos)
        if kind == _ELEMENTS:
            if (tag == _ITEM_DELIMITER and level.end < 0
                    and len(self._stack) > 1):
                if length:
                    self._fail("item delimiter with a non-zero length", pos)
                self._pos = start
                self._stack.pop()
                self._close_levels()
                return 8
            self._fail(f"item tag ({group:04X},{elem:04X}) where a data "
                       f"element was expected", pos)
        if tag == _ITEM:
            if length == _UNDEFINED:
                if kind == _FRAGMENTS:
                    self._fail("pixel data fragment of undefined length", pos)
                self._pos = start
                self._stack.append(_Level(_ELEMENTS, -1, level.limit, enc))
                return 8
            if length & 1:
                self._fail(f"odd item length {length}", pos)
            if start + length > level.limit:
                self._fail("item runs past the end of its container", pos)
            self._pos = start
            if kind == _FRAGMENTS:
                self._skip = length
            else:
                end = start + length
                self._stack.append(_Level(_ELEMENTS, end, end, enc))
                self._close_levels()
            return 8
        if tag == _SEQUENCE_DELIMITER:
            if level.end >= 0:
                self._fail("sequence delimiter in a defined-length sequence", pos)
            if length:
                self._fail("sequence delimiter with a non-zero length", pos)
            self._pos = start
            self._stack.pop()
            self._close_levels()
            return 8
        self._fail(f"({group:04X},{elem:04X}) where an item was expected", pos)

    def _top_level_run(self, buf: memoryview, i: int, n: int) -> int:
        """The common case, fast: consecutive top-level little endian
        elements of defined length, in order and of even length, each
        header whole in ``buf``.  Walks as many as it can and returns the
        new offset; anything else (sequences, undefined lengths, items,
        irregular or broken elements, a header cut by the end of ``buf``)
        is left to :meth:`_header`, which has the checks and the messages.
        """
        level = self._stack[0]
        explicit = level.enc.explicit
        pos = self._pos
        last = level.last_tag
        wanted = self._wanted
        head_complete = self.head_complete
        last_wanted = self._last_wanted
        max_head = self._max_head_bytes
        unpack = _LE_HEADER.unpack_from
        u32 = _LE_U32.unpack_from
        header_kinds = _HEADER_KINDS
        while n - i >= 8:
            group, elem, vr, short = unpack(buf, i)
            tag = group << 16 | elem
            if tag < last or group == _ITEM_GROUP:
                break
            if explicit:
                kind = header_kinds.get(vr)
                if kind is None:          # an invalid VR, or SQ
                    break
                if kind:
                    if n - i < 12:
                        break
                    length = u32(buf, i + 8)[0]
                    hlen = 12
                else:
                    length = short
                    hlen = 8
            else:
                length = u32(buf, i + 4)[0]
                hlen = 8
            if length == _UNDEFINED or length & 1:
                break
            if not head_complete and (tag >= _PIXEL_DATA or tag > last_wanted
                                      or pos >= max_head):
                head_complete = self.head_complete = True
            start = i + hlen
            end = start + length
            if not head_complete and tag in wanted and length <= self.MAX_VALUE_BYTES:
                if end > n:
                    break                  # a wanted value cut by the end: general path
                self._capture_tag = tag
                self._capture_vr = vr.decode("ascii") if explicit else ""
                self._capture_little = True
                self._record(bytes(buf[start:end]))
            last = tag
            pos += hlen + length
            if end > n:
                self._skip = end - n       # the value goes on in the next piece
                pos -= end - n
                i = n
                break
            i = end
        level.last_tag = last
        self._pos = pos
        return i

    def _element(self, buf: bytes | memoryview, i: int, n: int, level: _Level,
                 tag: int, pos: int) -> int:
        """Parse and act on a data element header (PS3.5 7.1.2, 7.1.3)."""
        enc = level.enc
        if tag < level.last_tag:
            self._warn(f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) lower than its "
                       f"predecessor at {pos}")
        vr = b""
        if enc.explicit:
            vr = bytes(buf[i + 4:i + 6])
            if vr not in _VRS:
                self._fail(f"invalid VR {vr!r} in ({tag >> 16:04X},"
                           f"{tag & 0xFFFF:04X})", pos)
            if vr in LONG_VRS:
                if n - i < 12:
                    return 0
                length = enc.u32.unpack_from(buf, i + 8)[0]
                hlen = 12
            else:
                length = enc.u16.unpack_from(buf, i + 6)[0]
                hlen = 8
        else:
            length = enc.u32.unpack_from(buf, i + 4)[0]
            hlen = 8
        level.last_tag = tag
        start = pos + hlen
        if start > level.limit:
            self._fail("element header runs past the end of its container", pos)
        top = len(self._stack) == 1
        if top and not self.head_complete:
            if (tag >= _PIXEL_DATA or tag > self._last_wanted
                    or pos >= self._max_head_bytes):
                self.head_complete = True

        if length == _UNDEFINED:
            if not enc.explicit:
                new_kind = _FRAGMENTS if (top and tag == _PIXEL_DATA) else _ITEMS
                new_enc = _IMPLICIT_LE
            elif vr == b"SQ":
                new_kind, new_enc = _ITEMS, enc
            elif vr == b"UN":
                new_kind, new_enc = _ITEMS, _IMPLICIT_LE   # PS3.5 6.2.2
            elif vr in (b"OB", b"OW"):
                new_kind, new_enc = _FRAGMENTS, enc        # PS3.5 A.4
            else:
                self._fail(f"undefined length with VR {vr.decode('ascii')}", pos)
            self._pos = start
            self._stack.append(_Level(new_kind, -1, level.limit, new_enc))
            return hlen

        if length & 1:
            self._warn(f"odd length {length} in ({tag >> 16:04X},"
                       f"{tag & 0xFFFF:04X}) at {pos}")
        end = start + length
        if end > level.limit:
            if level.limit == _NO_LIMIT:
                self._fail("value length exceeds the largest possible", pos)
            self._fail("value runs past the end of its item or sequence", pos)
        self._pos = start
        if vr == b"SQ":
            self._stack.append(_Level(_ITEMS, end, end, enc))
            self._close_levels()
            return hlen
        if (top and not self.head_complete and tag in self._wanted
                and length <= self.MAX_VALUE_BYTES):
            self._capture = bytearray()
            self._capture_tag = tag
            self._capture_vr = vr.decode("ascii")
            self._capture_little = enc.little
        if length:
            self._skip = length
        else:
            self._value_done()
        return hlen

    def _warn(self, message: str) -> None:
        """Note an irregularity that leaves the structure intact."""
        if len(self.warnings) < self.MAX_WARNINGS:
            self.warnings.append(message)

    def _value_done(self) -> None:
        """A value has been passed: record it if wanted, close full levels."""
        if self._capture is not None:
            self._record(bytes(self._capture))
            self._capture = None
        self._close_levels()

    def _record(self, raw: bytes) -> None:
        """Decode and store the value of a wanted element."""
        tag = self._capture_tag
        vr = self._capture_vr
        if vr in ("", "UN", "OB", "OW"):
            vr = _KNOWN_VRS.get(tag, "LO")
        text = decode_value(raw, vr, self._capture_little, self._encodings)
        self.values[self._wanted[tag]] = text
        if tag == SPECIFIC_CHARACTER_SET_TAG:
            terms = [t.strip() for t in raw.decode("latin-1").rstrip("\x00 ").split("\\")]
            self._encodings = _encodings_for(terms)

    def _close_levels(self) -> None:
        """Pop every defined-length item or sequence that ends here."""
        stack = self._stack
        pos = self._pos
        while len(stack) > 1 and stack[-1].end == pos:
            stack.pop()
