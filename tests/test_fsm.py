"""Every (state, event) cell of PS3.8 Table 9-10 against the state machine."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core import fsm
from sdcc_twisted.core.errors import LocalProtocolError
from sdcc_twisted.core.events import (
    CloseTransport,
    Indication,
    OpenTransport,
    SendPDU,
    StartARTIM,
    StopARTIM,
)
from sdcc_twisted.core.pdu import AAbort, AAssociateRJ

# PS3.8 Table 9-10 as the standard prints it: one row per event, one column
# per state Sta1..Sta13; "." is an empty cell.  Transcribed separately from
# fsm.TRANSITION_TABLE so that the two transcriptions check each other.
PRINTED_TABLE = """
Evt1   AE-1 .    .    .    .    .    .    .    .    .     .    .    .
Evt2   .    .    .    AE-2 .    .    .    .    .    .     .    .    .
Evt3   .    AA-1 AA-8 .    AE-3 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt4   .    AA-1 AA-8 .    AE-4 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt5   AE-5 .    .    .    .    .    .    .    .    .     .    .    .
Evt6   .    AE-6 AA-8 .    AA-8 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-7
Evt7   .    .    AE-7 .    .    .    .    .    .    .     .    .    .
Evt8   .    .    AE-8 .    .    .    .    .    .    .     .    .    .
Evt9   .    .    .    .    .    DT-1 .    AR-7 .    .     .    .    .
Evt10  .    AA-1 AA-8 .    AA-8 DT-2 AR-6 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt11  .    .    .    .    .    AR-1 .    .    .    .     .    .    .
Evt12  .    AA-1 AA-8 .    AA-8 AR-2 AR-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-6
Evt13  .    AA-1 AA-8 .    AA-8 AA-8 AR-3 AA-8 AA-8 AR-10 AR-3 AA-8 AA-6
Evt14  .    .    .    .    .    .    .    AR-4 AR-9 .     .    AR-4 .
Evt15  .    .    AA-1 AA-2 AA-1 AA-1 AA-1 AA-1 AA-1 AA-1  AA-1 AA-1 .
Evt16  .    AA-2 AA-3 .    AA-3 AA-3 AA-3 AA-3 AA-3 AA-3  AA-3 AA-3 AA-2
Evt17  .    AA-5 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4 AA-4  AA-4 AA-4 AR-5
Evt18  .    AA-2 .    .    .    .    .    .    .    .     .    .    AA-2
Evt19  .    AA-1 AA-8 .    AA-8 AA-8 AA-8 AA-8 AA-8 AA-8  AA-8 AA-8 AA-7
"""

STATE_NAMES = [f"Sta{i}" for i in range(1, 14)]


def printed_cells() -> dict[tuple[str, str], str]:
    cells = {}
    for line in PRINTED_TABLE.strip().splitlines():
        event, *row = line.split()
        assert len(row) == 13, line
        for state, action in zip(STATE_NAMES, row):
            if action != ".":
                cells[(event, state)] = action
    return cells


# What each action does (PS3.8 Tables 9-6 to 9-9): next state and effect kinds.
ACTION_RESULTS = {
    "AE-1": ("Sta4", [OpenTransport]),
    "AE-2": ("Sta5", [SendPDU]),
    "AE-3": ("Sta6", [Indication]),
    "AE-4": ("Sta1", [Indication, CloseTransport]),
    "AE-5": ("Sta2", [StartARTIM]),
    "AE-6": ("Sta3", [StopARTIM, Indication]),
    "AE-7": ("Sta6", [SendPDU]),
    "AE-8": ("Sta13", [SendPDU, StartARTIM]),
    "DT-1": ("Sta6", [SendPDU]),
    "DT-2": ("Sta6", [Indication]),
    "AR-1": ("Sta7", [SendPDU]),
    "AR-2": ("Sta8", [Indication]),
    "AR-3": ("Sta1", [Indication, CloseTransport]),
    "AR-4": ("Sta13", [SendPDU, StartARTIM]),
    "AR-5": ("Sta1", [StopARTIM]),
    "AR-6": ("Sta7", [Indication]),
    "AR-7": ("Sta8", [SendPDU]),
    "AR-8": ("Sta10", [Indication]),  # acceptor; Sta9 for the requestor
    "AR-9": ("Sta11", [SendPDU]),
    "AR-10": ("Sta12", [Indication]),
    "AA-1": ("Sta13", [SendPDU, StartARTIM]),
    "AA-2": ("Sta1", [StopARTIM, CloseTransport]),
    "AA-3": ("Sta1", [Indication, CloseTransport]),
    "AA-4": ("Sta1", [Indication]),
    "AA-5": ("Sta1", [StopARTIM]),
    "AA-6": ("Sta13", []),
    "AA-7": ("Sta13", [SendPDU]),
    "AA-8": ("Sta13", [SendPDU, Indication, StartARTIM]),
}


class TransitionTableTests(SynchronousTestCase):
    """The literal table and the actions behind it."""

    def test_table_matches_printed_standard(self) -> None:
        """fsm.TRANSITION_TABLE holds exactly the cells PS3.8 Table 9-10 prints."""
        self.assertEqual(fsm.TRANSITION_TABLE, printed_cells())

    def test_every_cell(self) -> None:
        """Each of the 13 x 19 cells moves to the right state with the right
        effects, or (empty cell) raises for a local primitive and is ignored
        for anything else."""
        cells = printed_cells()
        checked = 0
        for state in STATE_NAMES:
            for number in range(1, 20):
                event = f"Evt{number}"
                machine = fsm.StateMachine(requestor=False, state=state)
                action = cells.get((event, state))
                if action is None:
                    if event in fsm.LOCAL_EVENTS:
                        self.assertRaises(LocalProtocolError, machine.handle, event)
                    else:
                        self.assertEqual(machine.handle(event), [], (state, event))
                    self.assertEqual(machine.state, state, (state, event))
                else:
                    pdu = AAbort(0, 0) if event in ("Evt15", "Evt16") else object()
                    effects = machine.handle(event, pdu)
                    next_state, kinds = ACTION_RESULTS[action]
                    self.assertEqual(machine.state, next_state, (state, event, action))
                    self.assertEqual([type(e) for e in effects], kinds,
                                     (state, event, action))
                checked += 1
        self.assertEqual(checked, 13 * 19)

    def test_ae6_unacceptable_request(self) -> None:
        """AE-6 with a provider rejection sends the A-ASSOCIATE-RJ, starts
        ARTIM and goes to Sta13 instead of indicating."""
        machine = fsm.StateMachine(state="Sta2")
        rj = AAssociateRJ(1, 2, 2)
        effects = machine.handle("Evt6", object(), rejection=rj)
        self.assertEqual(machine.state, "Sta13")
        self.assertEqual(effects, [StopARTIM(), SendPDU(rj), StartARTIM()])

    def test_ar8_release_collision_requestor(self) -> None:
        """AR-8 goes to Sta9 for the association-requestor (PS3.8 Table 9-8)."""
        machine = fsm.StateMachine(requestor=True, state="Sta7")
        machine.handle("Evt12", object())
        self.assertEqual(machine.state, "Sta9")

    def test_aa8_sends_provider_abort(self) -> None:
        """AA-8 sends an A-ABORT with the service-provider source and the
        unexpected-PDU reason, and indicates an A-P-ABORT."""
        machine = fsm.StateMachine(state="Sta6")
        effects = machine.handle("Evt6", object())
        self.assertEqual(effects[0], SendPDU(AAbort(2, 2)))
        self.assertEqual(effects[1].primitive, fsm.P_ABORT_INDICATION)

    def test_invalid_pdu_abort_carries_reason(self) -> None:
        """Evt19 in Sta6 aborts with the reason found by the decoder."""
        machine = fsm.StateMachine(state="Sta6")
        effects = machine.handle("Evt19", abort_reason=6)
        self.assertEqual(effects[0], SendPDU(AAbort(2, 6)))

    def test_local_abort_uses_user_source(self) -> None:
        """AA-1 for a local A-ABORT request sends the service-user source."""
        machine = fsm.StateMachine(state="Sta6")
        effects = machine.handle("Evt15")
        self.assertEqual(effects[0], SendPDU(AAbort(0, 0)))
        self.assertEqual(machine.state, "Sta13")

    def test_peer_abort_indication_kind(self) -> None:
        """AA-3 indicates A-ABORT for a user-source abort and A-P-ABORT for a
        provider-source one."""
        user = fsm.StateMachine(state="Sta6").handle("Evt16", AAbort(0, 0))
        provider = fsm.StateMachine(state="Sta6").handle("Evt16", AAbort(2, 1))
        self.assertEqual(user[0].primitive, fsm.ABORT_INDICATION)
        self.assertEqual(provider[0].primitive, fsm.P_ABORT_INDICATION)

    def test_acceptor_happy_path(self) -> None:
        """Connect, associate, transfer, release, close: Sta1 -> ... -> Sta1."""
        machine = fsm.StateMachine()
        path = []
        for event in ("Evt5", "Evt6", "Evt7", "Evt10", "Evt9", "Evt12", "Evt14", "Evt17"):
            machine.handle(event, object())
            path.append(machine.state)
        self.assertEqual(path, ["Sta2", "Sta3", "Sta6", "Sta6", "Sta6", "Sta8",
                                "Sta13", "Sta1"])

    def test_requestor_happy_path(self) -> None:
        """Request, connect, accepted, release requested and confirmed."""
        machine = fsm.StateMachine(requestor=True)
        path = []
        for event in ("Evt1", "Evt2", "Evt3", "Evt9", "Evt11", "Evt13"):
            machine.handle(event, object())
            path.append(machine.state)
        self.assertEqual(path, ["Sta4", "Sta5", "Sta6", "Sta6", "Sta7", "Sta1"])

    def test_every_state_and_event_documented(self) -> None:
        """All 13 states and 19 events have a description and every action
        named in the table exists."""
        self.assertEqual(sorted(fsm.STATES, key=lambda s: int(s[3:])), STATE_NAMES)
        self.assertEqual(len(fsm.EVENTS), 19)
        self.assertTrue(set(fsm.TRANSITION_TABLE.values()) <= set(fsm.ACTIONS))
