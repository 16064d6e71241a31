"""DIMSE message assembly and command sets (PS3.7 6.3, 9.3, Annex E; PS3.8 E.2).

A message is one command set, then (when (0000,0800) is not 0x0101) one data
set, all on one presentation context.  Command sets are always Implicit VR
Little Endian.  The assembler buffers the (small, bounded) command set and
passes the data set through fragment by fragment: it never holds a data set.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Final

from sdcc_twisted.core.conformance import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_UNEXPECTED_PDU_PARAMETER,
    C_ECHO_RQ,
    C_FIND_RQ,
    C_GET_RQ,
    C_MOVE_RQ,
    C_STORE_RQ,
    NO_DATA_SET,
    PDV_COMMAND,
    PDV_LAST,
)
from sdcc_twisted.core.errors import DIMSEError
from sdcc_twisted.core.events import CommandReceived, DataFragment
from sdcc_twisted.core.pdu import PDataTF, encode_pdv_header, pdata_header

# Command set elements (PS3.7 Table E.1-1): element number -> VR.
COMMAND_GROUP_LENGTH: Final = 0x0000
AFFECTED_SOP_CLASS_UID: Final = 0x0002
REQUESTED_SOP_CLASS_UID: Final = 0x0003
COMMAND_FIELD: Final = 0x0100
MESSAGE_ID: Final = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO: Final = 0x0120
MOVE_DESTINATION: Final = 0x0600
PRIORITY: Final = 0x0700
COMMAND_DATA_SET_TYPE: Final = 0x0800
STATUS: Final = 0x0900
OFFENDING_ELEMENT: Final = 0x0901
ERROR_COMMENT: Final = 0x0902
ERROR_ID: Final = 0x0903
AFFECTED_SOP_INSTANCE_UID: Final = 0x1000
REQUESTED_SOP_INSTANCE_UID: Final = 0x1001
NUMBER_OF_REMAINING: Final = 0x1020
NUMBER_OF_COMPLETED: Final = 0x1021
NUMBER_OF_FAILED: Final = 0x1022
NUMBER_OF_WARNING: Final = 0x1023
MOVE_ORIGINATOR_AE: Final = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID: Final = 0x1031

VRS: Final[dict[int, str]] = {
    COMMAND_GROUP_LENGTH: "UL",
    AFFECTED_SOP_CLASS_UID: "UI",
    REQUESTED_SOP_CLASS_UID: "UI",
    COMMAND_FIELD: "US",
    MESSAGE_ID: "US",
    MESSAGE_ID_BEING_RESPONDED_TO: "US",
    MOVE_DESTINATION: "AE",
    PRIORITY: "US",
    COMMAND_DATA_SET_TYPE: "US",
    STATUS: "US",
    OFFENDING_ELEMENT: "AT",
    ERROR_COMMENT: "LO",
    ERROR_ID: "US",
    AFFECTED_SOP_INSTANCE_UID: "UI",
    REQUESTED_SOP_INSTANCE_UID: "UI",
    0x1002: "US",  # Event Type ID
    0x1005: "AT",  # Attribute Identifier List
    0x1008: "US",  # Action Type ID
    NUMBER_OF_REMAINING: "US",
    NUMBER_OF_COMPLETED: "US",
    NUMBER_OF_FAILED: "US",
    NUMBER_OF_WARNING: "US",
    MOVE_ORIGINATOR_AE: "AE",
    MOVE_ORIGINATOR_MESSAGE_ID: "US",
}

#: PS3.7 9.3 and 9.1: the elements a request must carry to be understood.
REQUIRED_ELEMENTS: Final[dict[int, tuple[int, ...]]] = {
    C_ECHO_RQ: (AFFECTED_SOP_CLASS_UID, MESSAGE_ID, COMMAND_DATA_SET_TYPE),
    C_STORE_RQ: (AFFECTED_SOP_CLASS_UID, MESSAGE_ID, PRIORITY,
                 COMMAND_DATA_SET_TYPE, AFFECTED_SOP_INSTANCE_UID),
    C_FIND_RQ: (AFFECTED_SOP_CLASS_UID, MESSAGE_ID, PRIORITY, COMMAND_DATA_SET_TYPE),
    C_GET_RQ: (AFFECTED_SOP_CLASS_UID, MESSAGE_ID, PRIORITY, COMMAND_DATA_SET_TYPE),
    C_MOVE_RQ: (AFFECTED_SOP_CLASS_UID, MESSAGE_ID, PRIORITY, COMMAND_DATA_SET_TYPE,
                MOVE_DESTINATION),
}

ELEMENT_NAMES: Final[dict[int, str]] = {
    AFFECTED_SOP_CLASS_UID: "Affected SOP Class UID",
    COMMAND_FIELD: "Command Field",
    MESSAGE_ID: "Message ID",
    PRIORITY: "Priority",
    COMMAND_DATA_SET_TYPE: "Command Data Set Type",
    AFFECTED_SOP_INSTANCE_UID: "Affected SOP Instance UID",
    MOVE_DESTINATION: "Move Destination",
}

#: Largest command set we buffer; real ones are a few hundred bytes.
DEFAULT_MAX_COMMAND_LENGTH: Final = 64 * 1024

_ELEMENT_HEADER = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")


class Command:
    """A decoded command set: element number (group 0000) -> value."""

    __slots__ = ("elements",)

    def __init__(self, elements: dict[int, Any]) -> None:
        self.elements = elements

    def get(self, element: int, default: Any = None) -> Any:
        """The value of ``(0000,element)`` or ``default``."""
        return self.elements.get(element, default)

    @property
    def command_field(self) -> int | None:
        """(0000,0100) Command Field."""
        return self.elements.get(COMMAND_FIELD)

    @property
    def message_id(self) -> int | None:
        """(0000,0110) Message ID."""
        return self.elements.get(MESSAGE_ID)

    @property
    def has_data_set(self) -> bool:
        """PS3.7 E.1: any (0000,0800) value other than 0x0101 means a data set."""
        return bool(self.elements.get(COMMAND_DATA_SET_TYPE, NO_DATA_SET) != NO_DATA_SET)

    @property
    def affected_sop_class_uid(self) -> str:
        """(0000,0002) Affected SOP Class UID, or empty."""
        return str(self.elements.get(AFFECTED_SOP_CLASS_UID, ""))

    @property
    def affected_sop_instance_uid(self) -> str:
        """(0000,1000) Affected SOP Instance UID, or empty."""
        return str(self.elements.get(AFFECTED_SOP_INSTANCE_UID, ""))

    def missing(self) -> list[int]:
        """Required elements (PS3.7 9.3) that this request lacks."""
        required = REQUIRED_ELEMENTS.get(self.command_field or 0, ())
        return [e for e in required if e not in self.elements]

    def __repr__(self) -> str:
        return f"Command({self.elements!r})"


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Decode an Implicit VR Little Endian command set (PS3.7 6.3.1).

    Raises:
        DIMSEError: an element outside group 0000, a length that runs past the
            end, or a value of the wrong size for its VR.
    """
    view = memoryview(data)
    end = len(view)
    offset = 0
    elements: dict[int, Any] = {}
    while offset < end:
        if end - offset < 8:
            raise DIMSEError("command set ends inside an element header",
                             ABORT_INVALID_PDU_PARAMETER_VALUE)
        group, element, length = _ELEMENT_HEADER.unpack_from(view, offset)
        offset += 8
        if group != 0x0000:
            raise DIMSEError(f"command set holds element ({group:04X},{element:04X})",
                             ABORT_INVALID_PDU_PARAMETER_VALUE)
        if length > end - offset:
            raise DIMSEError(f"command element (0000,{element:04X}) runs past the end",
                             ABORT_INVALID_PDU_PARAMETER_VALUE)
        raw = view[offset:offset + length]
        offset += length
        vr = VRS.get(element)
        if vr == "US":
            if length != 2:
                raise DIMSEError(f"(0000,{element:04X}) US of length {length}",
                                 ABORT_INVALID_PDU_PARAMETER_VALUE)
            elements[element] = _US.unpack(raw)[0]
        elif vr == "UL":
            if length != 4:
                raise DIMSEError(f"(0000,{element:04X}) UL of length {length}",
                                 ABORT_INVALID_PDU_PARAMETER_VALUE)
            elements[element] = _UL.unpack(raw)[0]
        elif vr in ("UI", "AE", "LO"):
            elements[element] = bytes(raw).decode("ascii", "replace").strip("\x00 ")
        else:
            elements[element] = bytes(raw)
    return Command(elements)


def _encode_value(element: int, value: Any) -> bytes:
    vr = VRS.get(element)
    if vr == "US":
        return _US.pack(value)
    if vr == "UL":
        return _UL.pack(value)
    if vr in ("UI", "AE", "LO"):
        raw = str(value).encode("ascii", "replace")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        return raw
    return bytes(value)


def encode_command(elements: dict[int, Any]) -> bytes:
    """Encode a command set in Implicit VR Little Endian (PS3.7 6.3.1).

    The Command Group Length (0000,0000) is computed here; any value given
    for it is ignored.
    """
    body = bytearray()
    for element in sorted(elements):
        if element == COMMAND_GROUP_LENGTH:
            continue
        value = _encode_value(element, elements[element])
        body += _ELEMENT_HEADER.pack(0, element, len(value)) + value
    return _ELEMENT_HEADER.pack(0, 0, 4) + _UL.pack(len(body)) + bytes(body)


def response(request: Command, command_field: int, status: int,
             comment: str | None = None,
             extra: dict[int, Any] | None = None) -> dict[int, Any]:
    """The elements of a response to ``request`` (PS3.7 9.3).

    Echoes the Affected SOP Class UID and, when present, the Affected SOP
    Instance UID; sets (0000,0800) to 0x0101; adds an Error Comment (at most
    64 characters, PS3.7 C.4) when one is given.
    """
    elements: dict[int, Any] = {
        COMMAND_FIELD: command_field,
        MESSAGE_ID_BEING_RESPONDED_TO: request.message_id or 0,
        COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        STATUS: status,
    }
    if request.affected_sop_class_uid:
        elements[AFFECTED_SOP_CLASS_UID] = request.affected_sop_class_uid
    if request.affected_sop_instance_uid:
        elements[AFFECTED_SOP_INSTANCE_UID] = request.affected_sop_instance_uid
    if comment:
        elements[ERROR_COMMENT] = comment[:64]
    if extra:
        elements.update(extra)
    return elements


def store_request(message_id: int, sop_class_uid: str, sop_instance_uid: str,
                  originator_ae: str | None = None,
                  originator_message_id: int | None = None) -> dict[int, Any]:
    """The elements of a C-STORE-RQ we send (PS3.7 9.3.1.1); the Move
    Originator elements for a C-MOVE sub-operation."""
    elements: dict[int, Any] = {
        AFFECTED_SOP_CLASS_UID: sop_class_uid, COMMAND_FIELD: C_STORE_RQ,
        MESSAGE_ID: message_id, PRIORITY: 0,
        COMMAND_DATA_SET_TYPE: 0x0001,  # any value but 0x0101: a data set follows
        AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
    }
    if originator_ae is not None:
        elements[MOVE_ORIGINATOR_AE] = originator_ae
        elements[MOVE_ORIGINATOR_MESSAGE_ID] = originator_message_id or 0
    return elements


def fragment_message(context_id: int, command: bytes, data_set: bytes | None,
                     max_pdu_length: int) -> Iterator[bytes]:
    """Encode a message as P-DATA-TF PDUs that fit ``max_pdu_length``.

    PS3.8 D.1: the PDU-length field of every P-DATA-TF we send is at most the
    peer's Maximum Length (0 = no limit).  Each PDU carries one PDV.
    """
    limit = max_pdu_length if max_pdu_length > 0 else 1 << 20
    room = max(limit - 6, 1)  # PDV item header: 4 length + 1 ID + 1 control
    for payload, flag in ((command, PDV_COMMAND), (data_set, 0)):
        if payload is None:
            continue
        view = memoryview(payload)
        total = len(view)
        offset = 0
        while True:
            piece = view[offset:offset + room]
            offset += len(piece)
            control = flag | (PDV_LAST if offset >= total else 0)
            yield (pdata_header(6 + len(piece))
                   + encode_pdv_header(context_id, control, len(piece))
                   + piece.tobytes())
            if offset >= total:
                break


class MessageAssembler:
    """Reassemble DIMSE messages from PDVs (PS3.8 E.2, PS3.7 6.3).

    Feed it the PDVs of each P-DATA-TF; it returns CommandReceived once a
    command set is whole and DataFragment for each data set piece.
    """

    def __init__(self, max_command_length: int = DEFAULT_MAX_COMMAND_LENGTH) -> None:
        self.max_command_length = max_command_length
        self._command = bytearray()
        self._context_id: int | None = None
        self._expect_data = False

    @property
    def in_message(self) -> bool:
        """True between the first command fragment and the end of the message."""
        return self._context_id is not None

    def feed(self, pdata: PDataTF) -> list[CommandReceived | DataFragment]:
        """Consume the PDVs of one P-DATA-TF PDU.

        Raises:
            DIMSEError: PDVs that switch presentation context inside a message,
                a data fragment where a command is expected (or the reverse), or
                an over-long command set.
        """
        out: list[CommandReceived | DataFragment | None] = []
        for pdv in pdata.pdvs:
            out.append(self.feed_pdv(pdv.context_id, pdv.control, pdv.data))
        return [event for event in out if event is not None]

    def feed_pdv(self, context_id: int, control: int,
                 data: bytes | memoryview) -> CommandReceived | DataFragment | None:
        """Consume one PDV; the event it completes, if any.

        Raises:
            DIMSEError: as :meth:`feed`.
        """
        if self._context_id is None:
            self._context_id = context_id
        elif context_id != self._context_id:
            raise DIMSEError(
                f"presentation context changed from {self._context_id} to "
                f"{context_id} inside a message", ABORT_UNEXPECTED_PDU_PARAMETER)
        last = bool(control & PDV_LAST)
        if control & PDV_COMMAND:
            if self._expect_data:
                raise DIMSEError("command fragment where data set was expected",
                                 ABORT_UNEXPECTED_PDU_PARAMETER)
            self._command += data
            if len(self._command) > self.max_command_length:
                raise DIMSEError(
                    f"command set longer than {self.max_command_length} bytes",
                    ABORT_INVALID_PDU_PARAMETER_VALUE)
            if not last:
                return None
            command = decode_command(self._command)
            self._command = bytearray()
            context_id = self._context_id
            if command.has_data_set:
                self._expect_data = True
            else:
                self._context_id = None
            return CommandReceived(context_id, command)
        if not self._expect_data:
            raise DIMSEError("data set fragment without a command that announced one",
                             ABORT_UNEXPECTED_PDU_PARAMETER)
        context_id = self._context_id
        if last:
            self._expect_data = False
            self._context_id = None
        return DataFragment(context_id, data, last)
