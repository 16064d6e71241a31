"""The sans-I/O facade of one DICOM Upper Layer connection.

Bytes go in through :meth:`Association.receive_data`, events come out; local
requests (accept, reject, send a message, release, abort) go in as method
calls, and the bytes to write come out of :meth:`Association.data_to_send`.
It composes the framer, the PDU codec, the PS3.8 state machine and the DIMSE
assembler, and touches no socket, file or clock: the adapter runs the timer
and transport effects (:class:`StartARTIM`, :class:`StopARTIM`,
:class:`CloseTransport`, :class:`OpenTransport`) that it returns.
"""

from __future__ import annotations

from typing import Any, Final, cast

from sdcc_twisted.core import fsm
from sdcc_twisted.core.conformance import (
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_SOURCE_PROVIDER,
    ABORT_SOURCE_USER,
    DEFAULT_MAX_PDU_LENGTH,
)
from sdcc_twisted.core.dimse import DEFAULT_MAX_COMMAND_LENGTH, MessageAssembler, encode_command, fragment_message
from sdcc_twisted.core.errors import LocalProtocolError, RemoteProtocolError
from sdcc_twisted.core.events import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    CloseTransport,
    Event,
    Indication,
    OpenTransport,
    ReleaseRequested,
    Released,
    SendPDU,
    StartARTIM,
    StopARTIM,
)
from sdcc_twisted.core.framing import PDUFramer
from sdcc_twisted.core.negotiation import Accepted, AcceptedContext, check_protocol_version, reject_pdu
from sdcc_twisted.core.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    P_DATA_TF,
    PDataTF,
    decode,
    encode,
    encode_pdv_header,
    pdata_header,
    split_pdvs,
)

#: PDU type -> the Table 9-10 event for receiving it (PS3.8 9.3.1, 9.2.1).
RECEIVE_EVENTS: Final[dict[int, str]] = {
    0x01: "Evt6", 0x02: "Evt3", 0x03: "Evt4", 0x04: "Evt10",
    0x05: "Evt12", 0x06: "Evt13", 0x07: "Evt16",
}

#: Largest non-P-DATA PDU we take (an A-ASSOCIATE-RQ with 128 contexts of
#: 38 transfer syntaxes each is about 300 KB).
DEFAULT_MAX_OTHER_PDU_LENGTH: Final = 1 << 20

_PASS_THROUGH = (StartARTIM, StopARTIM, CloseTransport, OpenTransport)

#: The fast path of :meth:`Association.receive_data` applies DT-2 itself;
#: it is taken only while the table says that is what Evt10 in Sta6 does.
_PDATA_IN_STA6_IS_DT2: Final = fsm.TRANSITION_TABLE.get(("Evt10", "Sta6")) == "DT-2"


class Association:
    """One Upper Layer connection, acceptor or requestor (PS3.8 9).

    Args:
        max_pdu_length: the Maximum Length we propose and enforce on received
            P-DATA-TF PDUs (PS3.8 D.1).
        requestor: play the association-requestor role.
        max_command_length: the largest command set we buffer.
        max_other_pdu_length: the largest PDU of another type we buffer.
    """

    def __init__(self, max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH, *,
                 requestor: bool = False,
                 max_command_length: int = DEFAULT_MAX_COMMAND_LENGTH,
                 max_other_pdu_length: int = DEFAULT_MAX_OTHER_PDU_LENGTH) -> None:
        if max_pdu_length <= 0:
            raise ValueError("max_pdu_length must be positive")
        self.max_pdu_length = max_pdu_length
        self.machine = fsm.StateMachine(requestor=requestor)
        self._framer = PDUFramer(max_pdu_length, max_other_pdu_length)
        self._assembler = MessageAssembler(max_command_length)
        self._out: list[bytes] = []
        self._failed = False
        self._detail = ""
        self._pending_rq: AAssociateRQ | None = None
        self.request: AAssociateRQ | None = None
        self.contexts: dict[int, AcceptedContext] = {}
        self.peer_max_pdu_length = 0

    # -- state ------------------------------------------------------------
    @property
    def state(self) -> str:
        """The PS3.8 state name, ``"Sta1"`` ... ``"Sta13"``."""
        return self.machine.state

    @property
    def established(self) -> bool:
        """True in Sta6 (data transfer) or during an orderly release."""
        return self.machine.state in ("Sta6", "Sta7", "Sta8")

    def data_to_send(self) -> bytes:
        """The bytes queued for the transport since the last call."""
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return data

    # -- transport side -------------------------------------------------------
    def connection_made(self) -> list[Event]:
        """The transport is connected: Evt5 (acceptor) or Evt2 (requestor)."""
        if self.machine.requestor:
            return self._run("Evt2", self._pending_rq)
        return self._run("Evt5")

    def connection_lost(self) -> list[Event]:
        """The transport closed (Evt17), however it closed."""
        return self._run("Evt17")

    def timer_expired(self) -> list[Event]:
        """The ARTIM timer expired (Evt18)."""
        return self._run("Evt18")

    def receive_data(self, data: bytes) -> list[Event]:
        """Consume bytes from the peer and return what they caused.

        Peer faults become Evt19 (an A-ABORT), never an exception.
        """
        if self._failed or not data:
            return []
        framing_error = None
        try:
            frames = self._framer.feed(data)
        except RemoteProtocolError as exc:
            framing_error = exc
            frames = getattr(exc, "frames", [])  # FramingError keeps what came before
        events: list[Event] = []
        machine = self.machine
        for pdu_type, body in frames:
            if pdu_type == P_DATA_TF and machine.state == "Sta6" and _PDATA_IN_STA6_IS_DT2:
                # Table 9-10 (Evt10, Sta6) is DT-2: stay in Sta6 and hand the
                # PDVs to the service user.  Done here without building the
                # PDU, effect and context objects: it runs for every PDU.
                # As with the general path, a PDU with a bad PDV delivers
                # nothing of itself, only the abort.
                indicated: list[Event] = []
                try:
                    for context_id, control, fragment in split_pdvs(body):
                        done = self._assembler.feed_pdv(context_id, control, fragment)
                        if done is not None:
                            indicated.append(done)
                    events.extend(indicated)
                except RemoteProtocolError as exc:   # a bad PDV or DIMSE order
                    self._failed = True
                    events.extend(self._run("Evt19", abort_reason=exc.reason, detail=str(exc)))
                    break
                continue
            try:
                pdu = decode(pdu_type, body)
            except RemoteProtocolError as exc:
                self._failed = True
                events.extend(self._run("Evt19", abort_reason=exc.reason, detail=str(exc)))
                break
            evt = RECEIVE_EVENTS[pdu_type]
            if evt == "Evt6" and self.machine.state == "Sta2":
                rq = cast(AAssociateRQ, pdu)      # Evt6 is the A-ASSOCIATE-RQ
                self.request = rq
                rejection = self._provider_rejection(rq)
                events.extend(self._run(evt, pdu, rejection=rejection))
            else:
                events.extend(self._run(evt, pdu))
            if self._failed:
                break
        if framing_error is not None and not self._failed:
            self._failed = True
            events.extend(self._run("Evt19", abort_reason=framing_error.reason,
                                    detail=str(framing_error)))
        return events

    # -- service user side ----------------------------------------------------
    def request_association(self, rq: AAssociateRQ) -> list[Event]:
        """Requestor: ask for an association (Evt1); connect, then send ``rq``."""
        self._pending_rq = rq
        return self._run("Evt1", rq)

    def accept(self, accepted: Accepted) -> list[Event]:
        """Acceptor: send the A-ASSOCIATE-AC (Evt7)."""
        self.contexts = dict(accepted.contexts)
        self.peer_max_pdu_length = accepted.peer_max_pdu_length
        return self._run("Evt7", accepted.ac)

    def reject(self, rj: AAssociateRJ) -> list[Event]:
        """Acceptor: send the A-ASSOCIATE-RJ (Evt8)."""
        return self._run("Evt8", rj)

    def send_message(self, context_id: int, command: dict[int, Any],
                     data_set: bytes | None = None) -> list[Event]:
        """Send a DIMSE message as P-DATA-TF PDUs within the peer's limit (Evt9)."""
        events: list[Event] = []
        encoded = encode_command(command)
        for pdu_bytes in fragment_message(context_id, encoded, data_set,
                                          self.peer_max_pdu_length):
            events.extend(self._run("Evt9", pdu_bytes))
        return events

    def send_pdv(self, context_id: int, control: int, data: bytes | memoryview) -> list[Event]:
        """Send one PDV in its own P-DATA-TF (Evt9); ``data`` must fit the
        peer's limit (see :meth:`max_pdv_data`)."""
        view = memoryview(data)
        pdu = pdata_header(6 + len(view)) + encode_pdv_header(context_id, control, len(view))
        return self._run("Evt9", pdu + view.tobytes())

    def max_pdv_data(self) -> int:
        """The largest PDV payload one P-DATA-TF may carry to this peer
        (PS3.8 D.1: PDU length = 6 bytes of PDV header + payload)."""
        limit = self.peer_max_pdu_length if self.peer_max_pdu_length > 0 else 1 << 20
        return max(limit - 6, 1)

    def request_release(self) -> list[Event]:
        """Requestor: send A-RELEASE-RQ (Evt11)."""
        return self._run("Evt11", AReleaseRQ())

    def release_response(self) -> list[Event]:
        """Answer the peer's release request with A-RELEASE-RP (Evt14)."""
        return self._run("Evt14", AReleaseRP())

    def abort(self, reason: int = ABORT_REASON_NOT_SPECIFIED,
              detail: str = "aborted by the service user") -> list[Event]:
        """Abort the association (Evt15); a no-op where Table 9-10 has no cell."""
        if (("Evt15", self.machine.state) not in fsm.TRANSITION_TABLE):
            return []
        self._detail = detail
        source = ABORT_SOURCE_USER if reason == ABORT_REASON_NOT_SPECIFIED else ABORT_SOURCE_PROVIDER
        return self._run("Evt15", AAbort(source, reason), detail=detail)

    # -- internals ------------------------------------------------------------
    @staticmethod
    def _provider_rejection(rq: AAssociateRQ) -> AAssociateRJ | None:
        """AE-6: what the service-provider itself refuses (PS3.8 9.3.2)."""
        reason = check_protocol_version(rq)
        return None if reason is None else reject_pdu(reason)

    def _run(self, event: str, pdu: Any = None, *, rejection: Any = None,
             abort_reason: int = 0, detail: str = "") -> list[Event]:
        effects = self.machine.handle(event, pdu, rejection=rejection,
                                      abort_reason=abort_reason)
        events: list[Event] = []
        for effect in effects:
            if isinstance(effect, SendPDU):
                payload = effect.pdu
                self._out.append(payload if isinstance(payload, bytes) else encode(payload))
                if isinstance(payload, AAssociateRJ) and event == "Evt6":
                    events.append(AssociationRejected(payload))
            elif isinstance(effect, Indication):
                events.extend(self._indicate(effect, event, detail))
            elif isinstance(effect, _PASS_THROUGH):
                events.append(effect)
        return events

    def _indicate(self, effect: Indication, event: str, detail: str) -> list[Event]:
        primitive = effect.primitive
        if primitive == fsm.P_DATA_INDICATION:
            try:
                return list(self._assembler.feed(cast(PDataTF, effect.pdu)))
            except RemoteProtocolError as exc:
                self._failed = True
                return self._run("Evt19", abort_reason=exc.reason, detail=str(exc))
        if primitive == fsm.ASSOCIATE_INDICATION:
            return [AssociationRequested(cast(AAssociateRQ, effect.pdu))]
        if primitive == fsm.RELEASE_INDICATION:
            return [ReleaseRequested()]
        if primitive == fsm.RELEASE_CONFIRMATION:
            return [Released()]
        if primitive == fsm.ASSOCIATE_CONFIRMATION_ACCEPT:
            ac = cast(AAssociateAC, effect.pdu)
            self.peer_max_pdu_length = ac.user_information.max_length or 0
            return [AssociationAccepted(ac)]
        if primitive == fsm.ASSOCIATE_CONFIRMATION_REJECT:
            return [AssociationRejected(cast(AAssociateRJ, effect.pdu))]
        # A-ABORT / A-P-ABORT indications.
        abort = cast("AAbort | None", effect.pdu)
        by_peer = event == "Evt16"
        if abort is None:
            return [Aborted(None, 0, False, detail or "transport closed by the peer")]
        if by_peer:
            text = detail or "A-ABORT received from the peer"
        else:
            text = detail or f"unexpected PDU ({fsm.EVENTS.get(event, event)}) in this state"
        return [Aborted(abort.source, abort.reason, by_peer, text)]


__all__ = ["Association", "LocalProtocolError"]
