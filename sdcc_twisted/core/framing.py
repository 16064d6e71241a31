"""Sans-I/O PDU framing: split a TCP byte stream into PDUs (PS3.8 9.3.1).

Every PDU starts with a 6-byte header: PDU type, a reserved byte and a
4-byte big-endian PDU-length that counts the bytes after the header.  The
framer checks the type and the declared length as soon as a header is
complete, before it buffers any of the body, so a peer cannot make us hold
more than one PDU of the size we allow (PS3.8 D.1).
"""

from __future__ import annotations

import struct

from sdcc_twisted.core.conformance import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_UNRECOGNIZED_PDU,
)
from sdcc_twisted.core.errors import FramingError

__all__ = ["PDUFramer"]

_HEADER = struct.Struct("!BxL")
_HEADER_SIZE = _HEADER.size
_unpack_header = _HEADER.unpack_from
_P_DATA_TF = 0x04


class PDUFramer:
    """Turn received bytes into complete (PDU type, body) pairs.

    Bodies are read-only memoryviews (or bytes) that stay valid for as long as
    the caller keeps them: either slices of the ``bytes`` passed to
    :meth:`feed`, or a view of a buffer that the framer never touches again.

    Args:
        max_pdata_length: the largest PDU-length accepted for a P-DATA-TF,
            i.e. the Maximum Length we announced (PS3.8 D.1); must be > 0.
        max_other_length: the largest PDU-length accepted for any other PDU.
    """

    __slots__ = ("_max_pdata", "_max_other", "_header", "_type", "_length",
                 "_body", "_error")

    def __init__(self, max_pdata_length: int, max_other_length: int = 1 << 20) -> None:
        if max_pdata_length < 1 or max_other_length < 1:
            raise ValueError("PDU length limits must be positive")
        self._max_pdata = max_pdata_length
        self._max_other = max_other_length
        # A partial PDU: the header bytes while fewer than 6 are in, then its
        # type and length, and the body bytes received so far.
        self._header = bytearray()
        self._type = -1            # -1: the header is not complete yet
        self._length = 0
        self._body = bytearray()
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """The number of bytes held for a PDU that is not complete yet."""
        if self._type < 0:
            return len(self._header)
        return _HEADER_SIZE + len(self._body)

    def _check(self, pdu_type: int, length: int) -> None:
        """Refuse an unknown type or an over-long PDU (PS3.8 9.3.1, D.1)."""
        if not 0x01 <= pdu_type <= 0x07:
            raise FramingError(f"unrecognized PDU type 0x{pdu_type:02x}",
                               ABORT_UNRECOGNIZED_PDU)
        if pdu_type == _P_DATA_TF:
            if length > self._max_pdata:
                raise FramingError(
                    f"P-DATA-TF declares PDU-length {length}, "
                    f"more than the limit of {self._max_pdata}",
                    ABORT_INVALID_PDU_PARAMETER_VALUE)
        elif length > self._max_other:
            raise FramingError(
                f"PDU type 0x{pdu_type:02x} declares PDU-length {length}, "
                f"more than the limit of {self._max_other}",
                ABORT_INVALID_PDU_PARAMETER_VALUE)

    def feed(self, data: bytes) -> list[tuple[int, memoryview | bytes]]:
        """Take received bytes; return the PDUs they complete, in order.

        Raises FramingError (with the A-ABORT reason) on an unknown PDU type
        or an over-long PDU; after that every call raises the same error.
        """
        error = self._error
        if error is not None:
            raise FramingError(str(error), error.reason)
        out: list[tuple[int, memoryview | bytes]] = []
        try:
            return self._feed(data, out)
        except FramingError as exc:
            exc.frames = out    # the complete PDUs before the bad header
            self._error = exc
            self._header = bytearray()
            self._body = bytearray()
            raise

    def _feed(self, data: bytes, out: list[tuple[int, memoryview | bytes]]
              ) -> list[tuple[int, memoryview | bytes]]:
        if type(data) is not bytes:
            # Views must point into immutable memory: copy a bytearray etc.
            data = bytes(data)
        size = len(data)
        offset = 0
        if self._type >= 0 or self._header:
            offset = self._complete_partial(data, out)
            if offset < 0:
                return out
        # Fast path: whole PDUs become slices of ``data`` without a copy.
        view = memoryview(data)
        check = self._check
        while size - offset >= _HEADER_SIZE:
            pdu_type, length = _unpack_header(data, offset)
            check(pdu_type, length)
            start = offset + _HEADER_SIZE
            end = start + length
            if end > size:
                self._type = pdu_type
                self._length = length
                self._body = bytearray(view[start:])
                return out
            out.append((pdu_type, view[start:end]))
            offset = end
        if offset < size:
            self._header = bytearray(view[offset:])
        return out

    def _complete_partial(self, data: bytes,
                          out: list[tuple[int, memoryview | bytes]]) -> int:
        """Add bytes of *data* to the partial PDU.

        Return the offset in *data* after the completed PDU (appended to
        *out*), or -1 if *data* did not complete it.
        """
        offset = 0
        if self._type < 0:
            header = self._header
            offset = _HEADER_SIZE - len(header)
            header += data[:offset]
            if len(header) < _HEADER_SIZE:
                return -1
            pdu_type, length = _unpack_header(header)
            self._check(pdu_type, length)
            self._header = bytearray()
            self._type = pdu_type
            self._length = length
        body = self._body
        take = self._length - len(body)
        if take > len(data) - offset:
            body += memoryview(data)[offset:]
            return -1
        if take:
            body += memoryview(data)[offset:offset + take]
        out.append((self._type, memoryview(body).toreadonly()))
        # The finished body now belongs to the caller: never touch it again.
        self._body = bytearray()
        self._type = -1
        return offset + take
