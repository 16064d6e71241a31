"""Values that cross the boundary of the sans-I/O core.

They are frozen dataclasses, except the two made for every P-DATA-TF
(:class:`Indication`, :class:`DataFragment`), which are plain slotted ones:
a frozen dataclass costs a ``object.__setattr__`` per field.

Effects are what the Upper Layer state machine asks its environment to do
(PS3.8 9.2.2 actions: send a PDU, start or stop ARTIM, open or close the
transport).  Events are what the :class:`~sdcc_twisted.core.association.Association`
facade tells the service above it (PS3.8 primitives and DIMSE messages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # for the annotations only: pdu and dimse import this module
    from sdcc_twisted.core.dimse import Command
    from sdcc_twisted.core.pdu import PDU, AAssociateAC, AAssociateRJ, AAssociateRQ

# ---------------------------------------------------------------- effects


@dataclass(frozen=True)
class SendPDU:
    """Write this PDU to the transport."""

    pdu: PDU


@dataclass(frozen=True)
class StartARTIM:
    """Start (or restart) the ARTIM timer (PS3.8 9.1.5)."""


@dataclass(frozen=True)
class StopARTIM:
    """Stop the ARTIM timer if it runs (PS3.8 9.1.5)."""


@dataclass(frozen=True)
class OpenTransport:
    """Issue a TRANSPORT CONNECT request (AE-1; requestor side only)."""


@dataclass(frozen=True)
class CloseTransport:
    """Close the transport connection."""


@dataclass(slots=True)
class Indication:
    """A primitive issued to the Upper Layer service user (PS3.8 9.2.2).

    Attributes:
        primitive: one of the ``*_INDICATION`` / ``*_CONFIRMATION`` names of
            :mod:`sdcc_twisted.core.fsm`.
        pdu: the PDU that caused it, when there is one.
    """

    primitive: str
    pdu: PDU | None = None


Effect = Union[SendPDU, StartARTIM, StopARTIM, OpenTransport, CloseTransport,
               Indication]

# ----------------------------------------------------------------- events


@dataclass(frozen=True)
class AssociationRequested:
    """An A-ASSOCIATE-RQ arrived; the service must accept or reject it."""

    request: AAssociateRQ


@dataclass(frozen=True)
class AssociationAccepted:
    """We (acceptor) sent the A-ASSOCIATE-AC, or (requestor) received one."""

    accept: AAssociateAC


@dataclass(frozen=True)
class AssociationRejected:
    """We (acceptor) sent the A-ASSOCIATE-RJ, or (requestor) received one."""

    reject: AAssociateRJ


@dataclass(frozen=True)
class CommandReceived:
    """A whole DIMSE command set arrived (PS3.7 6.3, PS3.8 E.2).

    Attributes:
        context_id: presentation context the message travels on.
        command: the decoded :class:`~sdcc_twisted.core.dimse.Command`.
    """

    context_id: int
    command: Command


@dataclass(slots=True)
class DataFragment:
    """A piece of the data set of the current message, verbatim.

    Attributes:
        context_id: presentation context of the message.
        data: the fragment bytes (a view into the received PDU).
        last: True on the last fragment of the data set (PS3.8 E.2 bit 1).
    """

    context_id: int
    data: bytes | memoryview
    last: bool


@dataclass(frozen=True)
class ReleaseRequested:
    """The peer asked to release; answer with ``release_response()``."""


@dataclass(frozen=True)
class Released:
    """The release completed (requestor side: A-RELEASE-RP received)."""


@dataclass(frozen=True)
class Aborted:
    """The association ended abnormally.

    Attributes:
        source: A-ABORT source (PS3.8 Table 9-26) or None for a local cause.
        reason: A-ABORT Reason/Diag.
        by_peer: True when the peer sent the A-ABORT.
        detail: a sentence a person can act on.
    """

    source: int | None
    reason: int
    by_peer: bool
    detail: str


Event = Union[AssociationRequested, AssociationAccepted, AssociationRejected,
              CommandReceived, DataFragment, ReleaseRequested, Released,
              Aborted, StartARTIM, StopARTIM, OpenTransport,
              CloseTransport]
