"""Exceptions of the sans-I/O core.

Peer faults are inputs, not crashes (PS3.8 9.2, Evt19): the core turns a
:class:`RemoteProtocolError` into an A-ABORT.  A :class:`LocalProtocolError`
means that our own code misused the core.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every protocol error raised by the core."""


class LocalProtocolError(ProtocolError):
    """Our code asked the core for something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    Attributes:
        reason: the A-ABORT Reason/Diag to send (PS3.8 Table 9-26).
    """

    def __init__(self, message: str, reason: int = 0) -> None:
        super().__init__(message)
        self.reason = reason


class PDUDecodeError(RemoteProtocolError):
    """A PDU or one of its items is malformed (PS3.8 9.3)."""


class FramingError(RemoteProtocolError):
    """A PDU header announces a type or a length that we refuse (PS3.8 9.3.1).

    Attributes:
        frames: the complete (type, body) pairs that came before the bad
            header in the same feed; they are still handled.
    """

    def __init__(self, message: str, reason: int = 0) -> None:
        super().__init__(message, reason)
        self.frames: list[tuple[int, bytes | memoryview]] = []


class DIMSEError(RemoteProtocolError):
    """A DIMSE message is malformed (PS3.7 6.3, PS3.8 Annex E)."""


class DatasetError(Exception):
    """A data set's encoding cannot be walked (PS3.5 7.1).

    Attributes:
        offset: the data set byte offset at which the problem was found.
    """

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset
