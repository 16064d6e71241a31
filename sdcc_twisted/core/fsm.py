"""The DICOM Upper Layer state machine, PS3.8 9.2, written from Table 9-10.

Rule: everything that decides the next state lives in this file.  The
transition table maps (event, state) to an action name exactly as PS3.8
Table 9-10 prints it; each action (PS3.8 Tables 9-6 to 9-9) is a pure
function that returns the next state and the effects for the environment to
carry out.  Nothing here touches a socket, a timer or a clock.

Both roles are covered: the acceptor (our SCP) and the requestor (needed for
the sub-associations of C-MOVE).  A (state, event) pair that Table 9-10 leaves
empty is either a local misuse (a primitive our own code issued in the wrong
state, :class:`LocalProtocolError`) or a stale timer or transport event, which
is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Final

from sdcc_twisted.core.conformance import (
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_SOURCE_PROVIDER,
    ABORT_SOURCE_USER,
    ABORT_UNEXPECTED_PDU,
)
from sdcc_twisted.core.errors import LocalProtocolError
from sdcc_twisted.core.events import (
    CloseTransport,
    Effect,
    Indication,
    OpenTransport,
    SendPDU,
    StartARTIM,
    StopARTIM,
)
from sdcc_twisted.core.pdu import AAbort

#: PS3.8 Table 9-1.
STATES: Final[dict[str, str]] = {
    "Sta1": "Idle",
    "Sta2": "Transport connection open (Awaiting A-ASSOCIATE-RQ PDU)",
    "Sta3": "Awaiting local A-ASSOCIATE response primitive",
    "Sta4": "Awaiting transport connection opening to complete",
    "Sta5": "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU",
    "Sta6": "Association established and ready for data transfer",
    "Sta7": "Awaiting A-RELEASE-RP PDU",
    "Sta8": "Awaiting local A-RELEASE response primitive",
    "Sta9": "Release collision requestor side; awaiting A-RELEASE response",
    "Sta10": "Release collision acceptor side; awaiting A-RELEASE-RP PDU",
    "Sta11": "Release collision requestor side; awaiting A-RELEASE-RP PDU",
    "Sta12": "Release collision acceptor side; awaiting A-RELEASE response primitive",
    "Sta13": "Awaiting Transport Connection Close Indication",
}

#: PS3.8 Table 9-10, the event column.
EVENTS: Final[dict[str, str]] = {
    "Evt1": "A-ASSOCIATE request (local user)",
    "Evt2": "Transport connect confirmation (local transport service)",
    "Evt3": "A-ASSOCIATE-AC PDU (received on transport connection)",
    "Evt4": "A-ASSOCIATE-RJ PDU (received on transport connection)",
    "Evt5": "Transport connection indication (local transport service)",
    "Evt6": "A-ASSOCIATE-RQ PDU (received on transport connection)",
    "Evt7": "A-ASSOCIATE response primitive (accept)",
    "Evt8": "A-ASSOCIATE response primitive (reject)",
    "Evt9": "P-DATA request primitive",
    "Evt10": "P-DATA-TF PDU",
    "Evt11": "A-RELEASE request primitive",
    "Evt12": "A-RELEASE-RQ PDU (received on open transport connection)",
    "Evt13": "A-RELEASE-RP PDU (received on transport connection)",
    "Evt14": "A-RELEASE response primitive",
    "Evt15": "A-ABORT request primitive",
    "Evt16": "A-ABORT PDU (received on open transport connection)",
    "Evt17": "Transport connection closed indication (local transport service)",
    "Evt18": "ARTIM timer expired (Association reject/release timer)",
    "Evt19": "Unrecognized or invalid PDU received",
}

#: Events that come from our own service user; an empty cell is our bug.
LOCAL_EVENTS: Final = frozenset(
    {"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})

# Primitives issued to the service user (PS3.8 7.1-7.3).
ASSOCIATE_INDICATION: Final = "A-ASSOCIATE indication"
ASSOCIATE_CONFIRMATION_ACCEPT: Final = "A-ASSOCIATE confirmation (accept)"
ASSOCIATE_CONFIRMATION_REJECT: Final = "A-ASSOCIATE confirmation (reject)"
P_DATA_INDICATION: Final = "P-DATA indication"
RELEASE_INDICATION: Final = "A-RELEASE indication"
RELEASE_CONFIRMATION: Final = "A-RELEASE confirmation"
ABORT_INDICATION: Final = "A-ABORT indication"
P_ABORT_INDICATION: Final = "A-P-ABORT indication"

# PS3.8 Table 9-10, transcribed cell by cell: (event, state) -> action.
TRANSITION_TABLE: Final[dict[tuple[str, str], str]] = {
    ("Evt1", "Sta1"): "AE-1",
    ("Evt2", "Sta4"): "AE-2",
    ("Evt3", "Sta2"): "AA-1",
    ("Evt3", "Sta3"): "AA-8",
    ("Evt3", "Sta5"): "AE-3",
    ("Evt3", "Sta6"): "AA-8",
    ("Evt3", "Sta7"): "AA-8",
    ("Evt3", "Sta8"): "AA-8",
    ("Evt3", "Sta9"): "AA-8",
    ("Evt3", "Sta10"): "AA-8",
    ("Evt3", "Sta11"): "AA-8",
    ("Evt3", "Sta12"): "AA-8",
    ("Evt3", "Sta13"): "AA-6",
    ("Evt4", "Sta2"): "AA-1",
    ("Evt4", "Sta3"): "AA-8",
    ("Evt4", "Sta5"): "AE-4",
    ("Evt4", "Sta6"): "AA-8",
    ("Evt4", "Sta7"): "AA-8",
    ("Evt4", "Sta8"): "AA-8",
    ("Evt4", "Sta9"): "AA-8",
    ("Evt4", "Sta10"): "AA-8",
    ("Evt4", "Sta11"): "AA-8",
    ("Evt4", "Sta12"): "AA-8",
    ("Evt4", "Sta13"): "AA-6",
    ("Evt5", "Sta1"): "AE-5",
    ("Evt6", "Sta2"): "AE-6",
    ("Evt6", "Sta3"): "AA-8",
    ("Evt6", "Sta5"): "AA-8",
    ("Evt6", "Sta6"): "AA-8",
    ("Evt6", "Sta7"): "AA-8",
    ("Evt6", "Sta8"): "AA-8",
    ("Evt6", "Sta9"): "AA-8",
    ("Evt6", "Sta10"): "AA-8",
    ("Evt6", "Sta11"): "AA-8",
    ("Evt6", "Sta12"): "AA-8",
    ("Evt6", "Sta13"): "AA-7",
    ("Evt7", "Sta3"): "AE-7",
    ("Evt8", "Sta3"): "AE-8",
    ("Evt9", "Sta6"): "DT-1",
    ("Evt9", "Sta8"): "AR-7",
    ("Evt10", "Sta2"): "AA-1",
    ("Evt10", "Sta3"): "AA-8",
    ("Evt10", "Sta5"): "AA-8",
    ("Evt10", "Sta6"): "DT-2",
    ("Evt10", "Sta7"): "AR-6",
    ("Evt10", "Sta8"): "AA-8",
    ("Evt10", "Sta9"): "AA-8",
    ("Evt10", "Sta10"): "AA-8",
    ("Evt10", "Sta11"): "AA-8",
    ("Evt10", "Sta12"): "AA-8",
    ("Evt10", "Sta13"): "AA-6",
    ("Evt11", "Sta6"): "AR-1",
    ("Evt12", "Sta2"): "AA-1",
    ("Evt12", "Sta3"): "AA-8",
    ("Evt12", "Sta5"): "AA-8",
    ("Evt12", "Sta6"): "AR-2",
    ("Evt12", "Sta7"): "AR-8",
    ("Evt12", "Sta8"): "AA-8",
    ("Evt12", "Sta9"): "AA-8",
    ("Evt12", "Sta10"): "AA-8",
    ("Evt12", "Sta11"): "AA-8",
    ("Evt12", "Sta12"): "AA-8",
    ("Evt12", "Sta13"): "AA-6",
    ("Evt13", "Sta2"): "AA-1",
    ("Evt13", "Sta3"): "AA-8",
    ("Evt13", "Sta5"): "AA-8",
    ("Evt13", "Sta6"): "AA-8",
    ("Evt13", "Sta7"): "AR-3",
    ("Evt13", "Sta8"): "AA-8",
    ("Evt13", "Sta9"): "AA-8",
    ("Evt13", "Sta10"): "AR-10",
    ("Evt13", "Sta11"): "AR-3",
    ("Evt13", "Sta12"): "AA-8",
    ("Evt13", "Sta13"): "AA-6",
    ("Evt14", "Sta8"): "AR-4",
    ("Evt14", "Sta9"): "AR-9",
    ("Evt14", "Sta12"): "AR-4",
    ("Evt15", "Sta3"): "AA-1",
    ("Evt15", "Sta4"): "AA-2",
    ("Evt15", "Sta5"): "AA-1",
    ("Evt15", "Sta6"): "AA-1",
    ("Evt15", "Sta7"): "AA-1",
    ("Evt15", "Sta8"): "AA-1",
    ("Evt15", "Sta9"): "AA-1",
    ("Evt15", "Sta10"): "AA-1",
    ("Evt15", "Sta11"): "AA-1",
    ("Evt15", "Sta12"): "AA-1",
    ("Evt16", "Sta2"): "AA-2",
    ("Evt16", "Sta3"): "AA-3",
    ("Evt16", "Sta5"): "AA-3",
    ("Evt16", "Sta6"): "AA-3",
    ("Evt16", "Sta7"): "AA-3",
    ("Evt16", "Sta8"): "AA-3",
    ("Evt16", "Sta9"): "AA-3",
    ("Evt16", "Sta10"): "AA-3",
    ("Evt16", "Sta11"): "AA-3",
    ("Evt16", "Sta12"): "AA-3",
    ("Evt16", "Sta13"): "AA-2",
    ("Evt17", "Sta2"): "AA-5",
    ("Evt17", "Sta3"): "AA-4",
    ("Evt17", "Sta4"): "AA-4",
    ("Evt17", "Sta5"): "AA-4",
    ("Evt17", "Sta6"): "AA-4",
    ("Evt17", "Sta7"): "AA-4",
    ("Evt17", "Sta8"): "AA-4",
    ("Evt17", "Sta9"): "AA-4",
    ("Evt17", "Sta10"): "AA-4",
    ("Evt17", "Sta11"): "AA-4",
    ("Evt17", "Sta12"): "AA-4",
    ("Evt17", "Sta13"): "AR-5",
    ("Evt18", "Sta2"): "AA-2",
    ("Evt18", "Sta13"): "AA-2",
    ("Evt19", "Sta2"): "AA-1",
    ("Evt19", "Sta3"): "AA-8",
    ("Evt19", "Sta5"): "AA-8",
    ("Evt19", "Sta6"): "AA-8",
    ("Evt19", "Sta7"): "AA-8",
    ("Evt19", "Sta8"): "AA-8",
    ("Evt19", "Sta9"): "AA-8",
    ("Evt19", "Sta10"): "AA-8",
    ("Evt19", "Sta11"): "AA-8",
    ("Evt19", "Sta12"): "AA-8",
    ("Evt19", "Sta13"): "AA-7",
}


@dataclass(frozen=True)
class Context:
    """What an action may look at.

    Attributes:
        event: the event name (``"Evt1"`` ... ``"Evt19"``).
        pdu: the PDU received (Evt3/4/6/10/12/13/16) or to send (Evt1/7/8/9/15).
        requestor: True when this machine is the association-requestor.
        rejection: for Evt6, an A-ASSOCIATE-RJ when the service-provider
            finds the request unacceptable (AE-6), else None.
        abort_reason: for Evt19 and unexpected PDUs, the A-ABORT reason.
    """

    event: str
    pdu: Any = None
    requestor: bool = False
    rejection: Any = None
    abort_reason: int = ABORT_UNEXPECTED_PDU


Action = Callable[[Context], "tuple[str, list[Effect]]"]


def _provider_abort(ctx: Context) -> AAbort:
    """The A-ABORT PDU the provider sends for an unexpected or bad PDU."""
    if ctx.event == "Evt19":
        return AAbort(ABORT_SOURCE_PROVIDER, ctx.abort_reason)
    return AAbort(ABORT_SOURCE_PROVIDER, ABORT_UNEXPECTED_PDU)


# -- Association establishment actions, PS3.8 Table 9-6 ----------------------
def ae_1(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue TRANSPORT CONNECT request primitive to local transport service."""
    return "Sta4", [OpenTransport()]


def ae_2(ctx: Context) -> tuple[str, list[Effect]]:
    """Send A-ASSOCIATE-RQ-PDU."""
    return "Sta5", [SendPDU(ctx.pdu)]


def ae_3(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue A-ASSOCIATE confirmation (accept) primitive."""
    return "Sta6", [Indication(ASSOCIATE_CONFIRMATION_ACCEPT, ctx.pdu)]


def ae_4(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue A-ASSOCIATE confirmation (reject) primitive and close transport."""
    return "Sta1", [Indication(ASSOCIATE_CONFIRMATION_REJECT, ctx.pdu),
                    CloseTransport()]


def ae_5(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue Transport connection response primitive; start ARTIM timer."""
    return "Sta2", [StartARTIM()]


def ae_6(ctx: Context) -> tuple[str, list[Effect]]:
    """Stop ARTIM; indicate if acceptable, else send A-ASSOCIATE-RJ and start ARTIM."""
    if ctx.rejection is None:
        return "Sta3", [StopARTIM(), Indication(ASSOCIATE_INDICATION, ctx.pdu)]
    return "Sta13", [StopARTIM(), SendPDU(ctx.rejection), StartARTIM()]


def ae_7(ctx: Context) -> tuple[str, list[Effect]]:
    """Send A-ASSOCIATE-AC PDU."""
    return "Sta6", [SendPDU(ctx.pdu)]


def ae_8(ctx: Context) -> tuple[str, list[Effect]]:
    """Send A-ASSOCIATE-RJ PDU and start ARTIM timer."""
    return "Sta13", [SendPDU(ctx.pdu), StartARTIM()]


# -- Data transfer actions, PS3.8 Table 9-7 ----------------------------------
def dt_1(ctx: Context) -> tuple[str, list[Effect]]:
    """Send P-DATA-TF PDU."""
    return "Sta6", [SendPDU(ctx.pdu)]


def dt_2(ctx: Context) -> tuple[str, list[Effect]]:
    """Send P-DATA indication primitive."""
    return "Sta6", [Indication(P_DATA_INDICATION, ctx.pdu)]


# -- Association release actions, PS3.8 Table 9-8 ----------------------------
def ar_1(ctx: Context) -> tuple[str, list[Effect]]:
    """Send A-RELEASE-RQ PDU."""
    return "Sta7", [SendPDU(ctx.pdu)]


def ar_2(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue A-RELEASE indication primitive."""
    return "Sta8", [Indication(RELEASE_INDICATION, ctx.pdu)]


def ar_3(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue A-RELEASE confirmation primitive, and close transport connection."""
    return "Sta1", [Indication(RELEASE_CONFIRMATION, ctx.pdu), CloseTransport()]


def ar_4(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue A-RELEASE-RP PDU and start ARTIM timer."""
    return "Sta13", [SendPDU(ctx.pdu), StartARTIM()]


def ar_5(ctx: Context) -> tuple[str, list[Effect]]:
    """Stop ARTIM timer."""
    return "Sta1", [StopARTIM()]


def ar_6(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue P-DATA indication."""
    return "Sta7", [Indication(P_DATA_INDICATION, ctx.pdu)]


def ar_7(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue P-DATA-TF PDU."""
    return "Sta8", [SendPDU(ctx.pdu)]


def ar_8(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue A-RELEASE indication (release collision)."""
    next_state = "Sta9" if ctx.requestor else "Sta10"
    return next_state, [Indication(RELEASE_INDICATION, ctx.pdu)]


def ar_9(ctx: Context) -> tuple[str, list[Effect]]:
    """Send A-RELEASE-RP PDU."""
    return "Sta11", [SendPDU(ctx.pdu)]


def ar_10(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue A-RELEASE confirmation primitive."""
    return "Sta12", [Indication(RELEASE_CONFIRMATION, ctx.pdu)]


# -- Association abort actions, PS3.8 Table 9-9 ------------------------------
def aa_1(ctx: Context) -> tuple[str, list[Effect]]:
    """Send A-ABORT PDU and start (or restart) ARTIM timer.

    A local A-ABORT request (Evt15) is sent with the service-user source, as
    the table says.  When a PDU from the peer caused it (Sta2), we say so:
    service-provider source with the reason, so the peer's log names the fault.
    """
    if ctx.event == "Evt15":
        abort = ctx.pdu if ctx.pdu is not None else AAbort(
            ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED)
    else:
        abort = _provider_abort(ctx)
    return "Sta13", [SendPDU(abort), StartARTIM()]


def aa_2(ctx: Context) -> tuple[str, list[Effect]]:
    """Stop ARTIM timer if running.  Close transport connection."""
    return "Sta1", [StopARTIM(), CloseTransport()]


def aa_3(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue A-ABORT (user source) or A-P-ABORT indication; close transport."""
    abort = ctx.pdu
    user = abort is None or abort.source == ABORT_SOURCE_USER
    primitive = ABORT_INDICATION if user else P_ABORT_INDICATION
    return "Sta1", [Indication(primitive, abort), CloseTransport()]


def aa_4(ctx: Context) -> tuple[str, list[Effect]]:
    """Issue A-P-ABORT indication primitive."""
    return "Sta1", [Indication(P_ABORT_INDICATION, None)]


def aa_5(ctx: Context) -> tuple[str, list[Effect]]:
    """Stop ARTIM timer."""
    return "Sta1", [StopARTIM()]


def aa_6(ctx: Context) -> tuple[str, list[Effect]]:
    """Ignore PDU."""
    return "Sta13", []


def aa_7(ctx: Context) -> tuple[str, list[Effect]]:
    """Send A-ABORT PDU."""
    return "Sta13", [SendPDU(_provider_abort(ctx))]


def aa_8(ctx: Context) -> tuple[str, list[Effect]]:
    """Send A-ABORT PDU (provider source), issue A-P-ABORT indication, start ARTIM."""
    abort = _provider_abort(ctx)
    return "Sta13", [SendPDU(abort), Indication(P_ABORT_INDICATION, abort),
                     StartARTIM()]


ACTIONS: Final[dict[str, Action]] = {
    "AE-1": ae_1, "AE-2": ae_2, "AE-3": ae_3, "AE-4": ae_4, "AE-5": ae_5,
    "AE-6": ae_6, "AE-7": ae_7, "AE-8": ae_8,
    "DT-1": dt_1, "DT-2": dt_2,
    "AR-1": ar_1, "AR-2": ar_2, "AR-3": ar_3, "AR-4": ar_4, "AR-5": ar_5,
    "AR-6": ar_6, "AR-7": ar_7, "AR-8": ar_8, "AR-9": ar_9, "AR-10": ar_10,
    "AA-1": aa_1, "AA-2": aa_2, "AA-3": aa_3, "AA-4": aa_4, "AA-5": aa_5,
    "AA-6": aa_6, "AA-7": aa_7, "AA-8": aa_8,
}


@dataclass
class StateMachine:
    """The state of one Upper Layer connection and the table that moves it.

    Attributes:
        requestor: True for the association-requestor role (C-MOVE sub-
            associations); False for the acceptor (our SCP).
        state: the current state name, ``"Sta1"`` ... ``"Sta13"``.
    """

    requestor: bool = False
    state: str = "Sta1"

    def handle(self, event: str, pdu: Any = None, *, rejection: Any = None,
               abort_reason: int = ABORT_UNEXPECTED_PDU) -> list[Effect]:
        """Apply ``event`` in the current state and return the effects.

        Raises:
            LocalProtocolError: a local primitive (Evt1/7/8/9/11/14/15) in a
                state where Table 9-10 has no action for it.
        """
        action_name = TRANSITION_TABLE.get((event, self.state))
        if action_name is None:
            if event in LOCAL_EVENTS:
                raise LocalProtocolError(
                    f"{EVENTS[event]} ({event}) is not allowed in {self.state}")
            # A late timer, a second close or a PDU with no connection: no cell.
            return []
        ctx = Context(event, pdu, self.requestor, rejection, abort_reason)
        next_state, effects = ACTIONS[action_name](ctx)
        self.state = next_state
        return effects
