"""What a DIMSE service sees of its association: the channel.

The runtime implements it; the services (:mod:`.scp`, :mod:`.qr`) answer
and send sub-operations through it, and import nothing of the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdcc_twisted.core.conformance import STATUS_SUCCESS


@dataclass(frozen=True)
class Outcome:
    """The status of an operation and its Error Comment (PS3.7 C.4).

    Attributes:
        elements: more command elements for the response (sub-operation counts).
        data_set: an encoded data set to send with the response (an identifier).
    """

    status: int
    comment: str | None = None
    elements: dict[int, Any] | None = None
    data_set: bytes | None = None

    @property
    def success(self) -> bool:
        """True for status 0x0000."""
        return self.status == STATUS_SUCCESS


class SubAssociationError(Exception):
    """The sub-association could not be opened or was lost."""
