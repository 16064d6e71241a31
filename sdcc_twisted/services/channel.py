"""What a DIMSE service sees of its association: the channel.

The runtime implements it; the services (:mod:`.scp`, :mod:`.qr`) answer
and send sub-operations through it, and import nothing of the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer

from sdcc_twisted.config import MoveDestination
from sdcc_twisted.core.conformance import STATUS_SUCCESS
from sdcc_twisted.core.dimse import Command
from sdcc_twisted.storage.serial import SerialQueue


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


@dataclass(frozen=True)
class Request:
    """A DIMSE request as the runtime hands it to a service."""

    command: Command
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


class StoreSender(Protocol):
    """Where C-STORE sub-operations go: this association (C-GET, PS3.4
    C.4.3) or a sub-association (C-MOVE, C.4.2; forwarding)."""

    def store_context(self, sop_class_uid: str, transfer_syntax: str) -> int | None:
        """The accepted presentation context for sending this class in this
        syntax (for C-GET: one the requestor accepted the SCP role on)."""

    def send_store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str,
                   path: str, originator_ae: str = "",
                   originator_id: int | None = None) -> "defer.Deferred[int]":
        """Send one C-STORE-RQ from the Part 10 file at ``path``; fires with
        the C-STORE-RSP status (PS3.7 9.1.1)."""


class SubAssociation(StoreSender, Protocol):
    """An association we requested (PS3.8 7.1) to send sub-operations on."""

    def release(self) -> "defer.Deferred[None]":
        """A-RELEASE (or an abort if the peer does not answer in time)."""

    def abort(self) -> None:
        """A-ABORT and close."""


class Channel(StoreSender, Protocol):
    """What an operation in flight needs from its association."""

    @property
    def calling_ae(self) -> str:
        """The peer's AE title."""

    @property
    def disk(self) -> SerialQueue:
        """The association's file work: in order, off the reactor thread."""

    def send_pending(self, context_id: int, command: Command, field: int,
                     outcome: Outcome) -> None:
        """Send a pending (or other intermediate) response to ``command``."""

    async def room(self) -> None:
        """Wait while the peer is not reading what was sent (flow control)."""

    def open_sub_association(self, destination: MoveDestination,
                             contexts: list[tuple[str, str]]) -> "defer.Deferred[SubAssociation]":
        """Open an association to ``destination`` proposing each (SOP class,
        transfer syntax) of ``contexts``; fails with SubAssociationError."""


class Operation(Protocol):
    """One request being served: its data set goes in, its Outcome comes out.

    Attributes:
        command: the request.
        response_field: the Command Field of the response.
        counted: counted in the association's stored/failed summary.
        settled: fires when what the operation did is durable and findable
            (the association's release waits for it).
    """

    command: Command
    response_field: int
    counted: bool
    settled: "defer.Deferred[None]"

    def write(self, data: bytes | memoryview) -> None:
        """A fragment of the request's data set."""

    def complete(self) -> "defer.Deferred[Outcome]":
        """The data set is whole (or there is none): run; the final Outcome."""

    def cancel(self) -> None:
        """C-CANCEL-RQ for this request (PS3.7 9.3.2.3)."""

    def abort(self) -> None:
        """The association ended: stop, leave nothing half done."""


class DimseService(Protocol):
    """A DIMSE service: one per command field in the runtime's table.

    Attributes:
        needs_data_set: requests without a data set are not this service's.
    """

    needs_data_set: bool

    def accepts(self, abstract_syntax: str) -> bool:
        """Serves requests on a context of this abstract syntax."""

    def begin(self, request: Request, channel: Channel) -> Operation:
        """Start serving ``request``."""
