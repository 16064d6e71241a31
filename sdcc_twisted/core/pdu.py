"""Sans-I/O codec for the seven Upper Layer PDUs (PS3.8 9.3, PS3.7 Annex D).

:func:`encode` turns a PDU object into the bytes of a whole PDU, 6-byte
header included.  :func:`decode` turns a PDU body (the bytes after the
header, as :class:`sdcc_twisted.core.framing.PDUFramer` hands them out) into a PDU
object.  Every field is big-endian (PS3.8 9.3.1).

Malformed input never raises anything but
:class:`~sdcc_twisted.core.errors.PDUDecodeError`, whose ``reason`` is the A-ABORT
Reason/Diag to send (PS3.8 Table 9-26).  Asking :func:`encode` for something
that cannot be encoded raises :class:`~sdcc_twisted.core.errors.LocalProtocolError`.

P-DATA-TF decoding is the hot path: the PDV fragments are memoryview slices
of the body, never copies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Union

from sdcc_twisted.core.conformance import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_UNEXPECTED_PDU_PARAMETER,
    ABORT_UNRECOGNIZED_PDU,
    ABORT_UNRECOGNIZED_PDU_PARAMETER,
)
from sdcc_twisted.core.errors import LocalProtocolError, PDUDecodeError

__all__ = [
    "AAbort",
    "AAssociateAC",
    "AAssociateRJ",
    "AAssociateRQ",
    "AReleaseRP",
    "AReleaseRQ",
    "PDU",
    "PDU_TYPES",
    "PDV",
    "PDataTF",
    "PresentationContextAC",
    "PresentationContextRQ",
    "RoleSelection",
    "UserInformation",
    "decode",
    "encode",
    "encode_pdv_header",
    "pdata_header",
]

# -- PDU and item type codes (PS3.8 9.3.1, 9.3.2.x; PS3.7 Annex D) ----------
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_PRESENTATION_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
SUBITEM_MAXIMUM_LENGTH = 0x51
SUBITEM_IMPLEMENTATION_CLASS_UID = 0x52
SUBITEM_ASYNC_OPERATIONS = 0x53
SUBITEM_ROLE_SELECTION = 0x54
SUBITEM_IMPLEMENTATION_VERSION_NAME = 0x55
#: SOP Class Extended (0x56), SOP Class Common Extended (0x57), User Identity
#: RQ (0x58) and AC (0x59): kept as raw bytes (PS3.7 D.3.3.5 - D.3.3.7).
EXTENDED_SUBITEMS = range(0x56, 0x5A)

# -- Structures --------------------------------------------------------------
_HEADER = struct.Struct("!BxL")          # PDU type, reserved, PDU-length
_ITEM = struct.Struct("!BxH")            # item type, reserved, item-length
#: A-ASSOCIATE-RQ/AC fixed part after the header (PS3.8 Table 9-11, 9-17):
#: protocol version, 2 reserved, called AE, calling AE, 32 reserved.
_ASSOCIATE_FIXED = struct.Struct("!H2x16s16s32x")
_PDV_HEADER = struct.Struct("!LBB")      # item-length, PC-ID, control header
_U32 = struct.Struct("!L")
_U16 = struct.Struct("!H")
_U16_PAIR = struct.Struct("!HH")
_FOUR_BYTES = struct.Struct("!4B")

_pdv_header_unpack = _PDV_HEADER.unpack_from
_pdv_header_pack = _PDV_HEADER.pack


# -- Data classes ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """Presentation Context item of an A-ASSOCIATE-RQ, 0x20 (PS3.8 9.3.2.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """Presentation Context item of an A-ASSOCIATE-AC, 0x21 (PS3.8 9.3.3.2).

    ``result`` is the Result/Reason of PS3.8 Table 9-18; ``transfer_syntax``
    is not significant unless ``result`` is 0.
    """

    context_id: int
    result: int
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item, 0x54 (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: int
    scp_role: int


@dataclass(frozen=True, slots=True)
class UserInformation:
    """User Information item, 0x50, and its sub-items (PS3.8 9.3.2.3, PS3.7 D.3.3).

    ``None`` means that the sub-item is absent.  Sub-items 0x56 to 0x59 are
    kept raw in ``extended`` as (type, item value) pairs, in their order;
    other unknown sub-items are ignored on decode (PS3.8 D.2 note).
    """

    max_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_ops: tuple[int, int] | None = None
    role_selections: tuple[RoleSelection, ...] = ()
    extended: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class AAssociateRQ:
    """A-ASSOCIATE-RQ PDU, type 0x01 (PS3.8 9.3.2)."""

    pdu_type: ClassVar[int] = A_ASSOCIATE_RQ

    called_ae: str
    calling_ae: str
    application_context: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AAssociateAC:
    """A-ASSOCIATE-AC PDU, type 0x02 (PS3.8 9.3.3).

    ``called_ae`` and ``calling_ae`` are the reserved fields that echo the
    request; they are not significant on receipt.
    """

    pdu_type: ClassVar[int] = A_ASSOCIATE_AC

    called_ae: str
    calling_ae: str
    application_context: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AAssociateRJ:
    """A-ASSOCIATE-RJ PDU, type 0x03 (PS3.8 9.3.4, Table 9-21)."""

    pdu_type: ClassVar[int] = A_ASSOCIATE_RJ

    result: int
    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class PDV:
    """One Presentation Data Value item of a P-DATA-TF (PS3.8 9.3.5.1).

    ``control`` is the message control header byte (PS3.8 E.2): bit 0 set
    for a command fragment, bit 1 set for the last fragment.
    """

    context_id: int
    control: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class PDataTF:
    """P-DATA-TF PDU, type 0x04 (PS3.8 9.3.5)."""

    pdu_type: ClassVar[int] = P_DATA_TF

    pdvs: tuple[PDV, ...]


@dataclass(frozen=True, slots=True)
class AReleaseRQ:
    """A-RELEASE-RQ PDU, type 0x05 (PS3.8 9.3.6)."""

    pdu_type: ClassVar[int] = A_RELEASE_RQ


@dataclass(frozen=True, slots=True)
class AReleaseRP:
    """A-RELEASE-RP PDU, type 0x06 (PS3.8 9.3.7)."""

    pdu_type: ClassVar[int] = A_RELEASE_RP


@dataclass(frozen=True, slots=True)
class AAbort:
    """A-ABORT PDU, type 0x07 (PS3.8 9.3.8, Table 9-26)."""

    pdu_type: ClassVar[int] = A_ABORT

    source: int
    reason: int


PDU = Union[AAssociateRQ, AAssociateAC, AAssociateRJ, PDataTF, AReleaseRQ,
            AReleaseRP, AAbort]

PDU_TYPES: dict[int, type] = {
    A_ASSOCIATE_RQ: AAssociateRQ,
    A_ASSOCIATE_AC: AAssociateAC,
    A_ASSOCIATE_RJ: AAssociateRJ,
    P_DATA_TF: PDataTF,
    A_RELEASE_RQ: AReleaseRQ,
    A_RELEASE_RP: AReleaseRP,
    A_ABORT: AAbort,
}

_PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}


# -- Encoding ----------------------------------------------------------------
def pdata_header(body_length: int) -> bytes:
    """Return the 6-byte header of a P-DATA-TF whose body is *body_length* long."""
    return _HEADER.pack(P_DATA_TF, body_length)


def encode_pdv_header(context_id: int, control: int, fragment_length: int) -> bytes:
    """Return the 6 bytes that precede a PDV fragment (PS3.8 9.3.5.1).

    That is the 4-byte item-length (which counts the PC-ID and the control
    byte, so *fragment_length* + 2), the presentation context ID and the
    message control header.
    """
    return _pdv_header_pack(fragment_length + 2, context_id, control)


def _item(item_type: int, value: bytes) -> bytes:
    """Encode one item or sub-item with its 4-byte header (PS3.8 9.3.2)."""
    if len(value) > 0xFFFF:
        raise LocalProtocolError(
            f"item 0x{item_type:02x} is {len(value)} bytes long, "
            f"more than an item-length can say (65535)")
    return _ITEM.pack(item_type, len(value)) + value


def _ascii(text: str, what: str) -> bytes:
    """Encode *text* as ASCII, or fail with a LocalProtocolError."""
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{what} {text!r} is not ASCII") from None


def _ae_title(title: str, what: str) -> bytes:
    """Encode an AE title as 16 bytes, space padded (PS3.8 Table 9-11)."""
    raw = _ascii(title, what)
    if len(raw) > 16:
        raise LocalProtocolError(f"{what} {title!r} is longer than 16 characters")
    return raw.ljust(16, b" ")


def _encode_user_information(info: UserInformation) -> bytes:
    """Encode the User Information item and its sub-items (PS3.7 D.3.3)."""
    parts = []
    if info.max_length is not None:
        parts.append(_item(SUBITEM_MAXIMUM_LENGTH, _U32.pack(info.max_length)))
    if info.implementation_class_uid is not None:
        parts.append(_item(
            SUBITEM_IMPLEMENTATION_CLASS_UID,
            _ascii(info.implementation_class_uid, "implementation class UID")))
    if info.async_ops is not None:
        invoked, performed = info.async_ops
        parts.append(_item(SUBITEM_ASYNC_OPERATIONS, _U16_PAIR.pack(invoked, performed)))
    for role in info.role_selections:
        uid = _ascii(role.sop_class_uid, "role selection SOP class UID")
        parts.append(_item(
            SUBITEM_ROLE_SELECTION,
            _U16.pack(len(uid)) + uid + bytes((role.scu_role, role.scp_role))))
    if info.implementation_version_name is not None:
        parts.append(_item(
            SUBITEM_IMPLEMENTATION_VERSION_NAME,
            _ascii(info.implementation_version_name, "implementation version name")))
    for sub_type, value in info.extended:
        if sub_type not in EXTENDED_SUBITEMS:
            raise LocalProtocolError(
                f"extended user information sub-item type 0x{sub_type:02x} "
                f"is not one of 0x56..0x59")
        parts.append(_item(sub_type, bytes(value)))
    return _item(ITEM_USER_INFORMATION, b"".join(parts))


def _encode_associate(pdu: AAssociateRQ | AAssociateAC) -> bytes:
    """Encode an A-ASSOCIATE-RQ or -AC (PS3.8 9.3.2, 9.3.3)."""
    parts = [
        _ASSOCIATE_FIXED.pack(
            pdu.protocol_version,
            _ae_title(pdu.called_ae, "called AE title"),
            _ae_title(pdu.calling_ae, "calling AE title")),
        _item(ITEM_APPLICATION_CONTEXT,
              _ascii(pdu.application_context, "application context name")),
    ]
    if isinstance(pdu, AAssociateRQ):
        for rq in pdu.presentation_contexts:
            value = [bytes((rq.context_id, 0, 0, 0)),
                     _item(ITEM_ABSTRACT_SYNTAX, _ascii(rq.abstract_syntax, "abstract syntax"))]
            value += [_item(ITEM_TRANSFER_SYNTAX, _ascii(ts, "transfer syntax"))
                      for ts in rq.transfer_syntaxes]
            parts.append(_item(ITEM_PRESENTATION_CONTEXT_RQ, b"".join(value)))
    else:
        for ac in pdu.presentation_contexts:
            answer = bytes((ac.context_id, 0, ac.result, 0)) + _item(
                ITEM_TRANSFER_SYNTAX, _ascii(ac.transfer_syntax, "transfer syntax"))
            parts.append(_item(ITEM_PRESENTATION_CONTEXT_AC, answer))
    parts.append(_encode_user_information(pdu.user_information))
    body = b"".join(parts)
    return _HEADER.pack(pdu.pdu_type, len(body)) + body


def _encode_pdata(pdu: PDataTF) -> bytes:
    """Encode a P-DATA-TF with its PDV items (PS3.8 9.3.5)."""
    parts: list[bytes | memoryview] = [b""]
    for pdv in pdu.pdvs:
        parts.append(_pdv_header_pack(len(pdv.data) + 2, pdv.context_id, pdv.control))
        parts.append(pdv.data)
    length = sum(map(len, parts))
    parts[0] = _HEADER.pack(P_DATA_TF, length)
    return b"".join(parts)


def _encode_rj(pdu: AAssociateRJ) -> bytes:
    """Encode an A-ASSOCIATE-RJ (PS3.8 Table 9-21)."""
    return _HEADER.pack(A_ASSOCIATE_RJ, 4) + bytes((0, pdu.result, pdu.source, pdu.reason))


def _encode_abort(pdu: AAbort) -> bytes:
    """Encode an A-ABORT (PS3.8 Table 9-26)."""
    return _HEADER.pack(A_ABORT, 4) + bytes((0, 0, pdu.source, pdu.reason))


_RELEASE_RQ_BYTES = _HEADER.pack(A_RELEASE_RQ, 4) + bytes(4)
_RELEASE_RP_BYTES = _HEADER.pack(A_RELEASE_RP, 4) + bytes(4)

_ENCODERS: dict[type, Callable[..., bytes]] = {
    AAssociateRQ: _encode_associate,
    AAssociateAC: _encode_associate,
    AAssociateRJ: _encode_rj,
    PDataTF: _encode_pdata,
    AReleaseRQ: lambda pdu: _RELEASE_RQ_BYTES,
    AReleaseRP: lambda pdu: _RELEASE_RP_BYTES,
    AAbort: _encode_abort,
}


def encode(pdu: PDU) -> bytes:
    """Return the whole PDU, 6-byte header included (PS3.8 9.3).

    Raises LocalProtocolError if a field cannot be encoded (a value out of
    range, a non-ASCII string, an AE title over 16 characters, an item over
    65535 bytes).
    """
    encoder = _ENCODERS.get(type(pdu))
    if encoder is None:
        raise LocalProtocolError(f"not a PDU: {pdu!r}")
    try:
        return encoder(pdu)
    except (struct.error, ValueError, TypeError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {pdu!r}: {exc}") from exc


# -- Decoding ----------------------------------------------------------------
def _invalid(message: str) -> PDUDecodeError:
    return PDUDecodeError(message, ABORT_INVALID_PDU_PARAMETER_VALUE)


def _items(data: bytes, start: int, end: int, where: str) -> Iterator[tuple[int, int, int]]:
    """Yield (item type, value start, value end) for the items in data[start:end]."""
    offset = start
    while offset < end:
        if end - offset < 4:
            raise _invalid(f"truncated item header in {where}: "
                           f"{end - offset} bytes left, 4 needed")
        item_type, length = _ITEM.unpack_from(data, offset)
        value_start = offset + 4
        offset = value_start + length
        if offset > end:
            raise _invalid(
                f"item 0x{item_type:02x} in {where} declares length {length}, "
                f"but only {end - value_start} bytes remain")
        yield item_type, value_start, offset


def _uid(data: bytes, start: int, end: int) -> str:
    """Decode a UID item value, ignoring trailing NUL and space padding."""
    return data[start:end].decode("ascii").rstrip("\x00 ")


def _check_context_id(context_id: int, where: str) -> None:
    """Presentation context IDs are odd integers 1..255 (PS3.8 9.3.2.2)."""
    if not context_id & 1:
        raise _invalid(f"presentation context ID {context_id} in {where} is not odd")


def _decode_pc_rq(data: bytes, start: int, end: int) -> PresentationContextRQ:
    """Decode a Presentation Context item 0x20 (PS3.8 Table 9-13)."""
    if end - start < 4:
        raise _invalid(f"presentation context item is {end - start} bytes long, "
                       f"at least 4 needed")
    context_id = data[start]
    _check_context_id(context_id, "an A-ASSOCIATE-RQ")
    where = f"presentation context {context_id}"
    abstract_syntax = None
    transfer_syntaxes = []
    for sub_type, sub_start, sub_end in _items(data, start + 4, end, where):
        if sub_type == ITEM_TRANSFER_SYNTAX:
            transfer_syntaxes.append(_uid(data, sub_start, sub_end))
        elif sub_type == ITEM_ABSTRACT_SYNTAX:
            if abstract_syntax is not None:
                raise PDUDecodeError(f"{where} has two abstract syntax sub-items",
                                     ABORT_UNEXPECTED_PDU_PARAMETER)
            abstract_syntax = _uid(data, sub_start, sub_end)
        else:
            raise PDUDecodeError(f"unrecognized sub-item 0x{sub_type:02x} in {where}",
                                 ABORT_UNRECOGNIZED_PDU_PARAMETER)
    if abstract_syntax is None:
        raise _invalid(f"{where} has no abstract syntax sub-item")
    return PresentationContextRQ(context_id, abstract_syntax, tuple(transfer_syntaxes))


def _decode_pc_ac(data: bytes, start: int, end: int) -> PresentationContextAC:
    """Decode a Presentation Context item 0x21 (PS3.8 Table 9-18).

    A missing transfer syntax sub-item decodes as "" (it is not significant
    when the context was rejected).
    """
    if end - start < 4:
        raise _invalid(f"presentation context item is {end - start} bytes long, "
                       f"at least 4 needed")
    context_id = data[start]
    result = data[start + 2]
    _check_context_id(context_id, "an A-ASSOCIATE-AC")
    where = f"presentation context {context_id}"
    transfer_syntax = None
    for sub_type, sub_start, sub_end in _items(data, start + 4, end, where):
        if sub_type == ITEM_TRANSFER_SYNTAX:
            if transfer_syntax is not None:
                raise PDUDecodeError(f"{where} has two transfer syntax sub-items",
                                     ABORT_UNEXPECTED_PDU_PARAMETER)
            transfer_syntax = _uid(data, sub_start, sub_end)
        elif sub_type == ITEM_ABSTRACT_SYNTAX:
            raise PDUDecodeError(f"abstract syntax sub-item in {where} of an A-ASSOCIATE-AC",
                                 ABORT_UNEXPECTED_PDU_PARAMETER)
        else:
            raise PDUDecodeError(f"unrecognized sub-item 0x{sub_type:02x} in {where}",
                                 ABORT_UNRECOGNIZED_PDU_PARAMETER)
    return PresentationContextAC(context_id, result, transfer_syntax or "")


def _decode_user_information(data: bytes, start: int, end: int) -> UserInformation:
    """Decode the User Information sub-items (PS3.8 Annex D, PS3.7 Annex D.3.3)."""
    max_length = None
    class_uid = None
    version_name = None
    async_ops = None
    roles = []
    extended = []
    for sub_type, sub_start, sub_end in _items(data, start, end, "user information"):
        length = sub_end - sub_start
        if sub_type == SUBITEM_MAXIMUM_LENGTH:
            if length != 4:
                raise _invalid(f"maximum length sub-item is {length} bytes long, not 4")
            (max_length,) = _U32.unpack_from(data, sub_start)
        elif sub_type == SUBITEM_IMPLEMENTATION_CLASS_UID:
            class_uid = _uid(data, sub_start, sub_end)
        elif sub_type == SUBITEM_ASYNC_OPERATIONS:
            if length != 4:
                raise _invalid(
                    f"asynchronous operations window sub-item is {length} bytes long, not 4")
            async_ops = _U16_PAIR.unpack_from(data, sub_start)
        elif sub_type == SUBITEM_ROLE_SELECTION:
            if length < 2:
                raise _invalid(f"role selection sub-item is {length} bytes long")
            (uid_length,) = _U16.unpack_from(data, sub_start)
            if uid_length + 4 != length:
                raise _invalid(f"role selection sub-item is {length} bytes long, but its "
                               f"UID length {uid_length} implies {uid_length + 4}")
            uid_end = sub_start + 2 + uid_length
            roles.append(RoleSelection(_uid(data, sub_start + 2, uid_end),
                                       data[uid_end], data[uid_end + 1]))
        elif sub_type == SUBITEM_IMPLEMENTATION_VERSION_NAME:
            version_name = data[sub_start:sub_end].decode("ascii").rstrip("\x00 ")
        elif sub_type in EXTENDED_SUBITEMS:
            extended.append((sub_type, data[sub_start:sub_end]))
        # Any other sub-item is ignored (PS3.8 D.2, note).
    return UserInformation(
        max_length=max_length,
        implementation_class_uid=class_uid,
        implementation_version_name=version_name,
        async_ops=async_ops,
        role_selections=tuple(roles),
        extended=tuple(extended),
    )


def _decode_associate(body: bytes | memoryview, pdu_type: int) -> AAssociateRQ | AAssociateAC:
    """Decode an A-ASSOCIATE-RQ or -AC body (PS3.8 9.3.2, 9.3.3)."""
    data = bytes(body)
    name = _PDU_NAMES[pdu_type]
    if len(data) < _ASSOCIATE_FIXED.size:
        raise _invalid(f"{name} is {len(data)} bytes long, its fixed part alone is "
                       f"{_ASSOCIATE_FIXED.size}")
    version, called, calling = _ASSOCIATE_FIXED.unpack_from(data)
    is_rq = pdu_type == A_ASSOCIATE_RQ
    decode_pc: Callable[[bytes, int, int], PresentationContextRQ | PresentationContextAC]
    if is_rq:
        pc_item, other_pc_item, decode_pc = (
            ITEM_PRESENTATION_CONTEXT_RQ, ITEM_PRESENTATION_CONTEXT_AC, _decode_pc_rq)
    else:
        pc_item, other_pc_item, decode_pc = (
            ITEM_PRESENTATION_CONTEXT_AC, ITEM_PRESENTATION_CONTEXT_RQ, _decode_pc_ac)
    application_context = None
    user_information = None
    contexts: list[PresentationContextRQ | PresentationContextAC] = []
    seen_ids = set()
    for item_type, start, end in _items(data, _ASSOCIATE_FIXED.size, len(data), name):
        if item_type == pc_item:
            context = decode_pc(data, start, end)
            if context.context_id in seen_ids:
                raise _invalid(f"presentation context ID {context.context_id} appears "
                               f"twice in the {name}")
            seen_ids.add(context.context_id)
            contexts.append(context)
        elif item_type == ITEM_APPLICATION_CONTEXT:
            if application_context is not None:
                raise PDUDecodeError(f"{name} has two application context items",
                                     ABORT_UNEXPECTED_PDU_PARAMETER)
            application_context = _uid(data, start, end)
        elif item_type == ITEM_USER_INFORMATION:
            if user_information is not None:
                raise PDUDecodeError(f"{name} has two user information items",
                                     ABORT_UNEXPECTED_PDU_PARAMETER)
            user_information = _decode_user_information(data, start, end)
        elif item_type == other_pc_item:
            raise PDUDecodeError(
                f"presentation context item 0x{item_type:02x} in an {name}",
                ABORT_UNEXPECTED_PDU_PARAMETER)
        else:
            raise PDUDecodeError(f"unrecognized item 0x{item_type:02x} in an {name}",
                                 ABORT_UNRECOGNIZED_PDU_PARAMETER)
    if application_context is None:
        raise _invalid(f"{name} has no application context item")
    if not contexts:
        raise _invalid(f"{name} has no presentation context item")
    if user_information is None:
        raise _invalid(f"{name} has no user information item")
    cls = AAssociateRQ if is_rq else AAssociateAC
    return cls(
        called_ae=called.decode("ascii").strip(" "),
        calling_ae=calling.decode("ascii").strip(" "),
        application_context=application_context,
        # all RQ items or all AC items: decode_pc is the one for this PDU type
        presentation_contexts=tuple(contexts),  # type: ignore[arg-type]
        user_information=user_information,
        protocol_version=version,
    )


def _decode_pdata(body: bytes | memoryview) -> PDataTF:
    """Decode a P-DATA-TF body into PDVs whose data are views of *body* (PS3.8 9.3.5)."""
    return PDataTF(tuple(PDV(context_id, control, data)
                         for context_id, control, data in split_pdvs(body)))


def split_pdvs(body: bytes | memoryview) -> list[tuple[int, int, memoryview]]:
    """The PDV items of a P-DATA-TF body as ``(context id, control byte,
    data view)``, checked as :func:`decode` checks them (PS3.8 9.3.5.1):
    at least one item, each at least 2 bytes long, inside the PDU, with an
    odd presentation context ID.

    Raises:
        PDUDecodeError: on the first bad item.
    """
    view = body if type(body) is memoryview else memoryview(body)
    size = len(view)
    if not size:
        raise _invalid("P-DATA-TF without a PDV item")
    pdvs: list[tuple[int, int, memoryview]] = []
    append = pdvs.append
    offset = 0
    while offset < size:
        if size - offset < 6:
            _bad_pdv_tail(view, offset, size)
        length, context_id, control = _pdv_header_unpack(view, offset)
        end = offset + 4 + length
        if length < 2 or end > size or not context_id & 1:
            _bad_pdv(length, context_id, offset, size)
        append((context_id, control, view[offset + 6:end]))
        offset = end
    return pdvs


def _bad_pdv_tail(view: memoryview, offset: int, size: int) -> None:
    """Raise the error for a P-DATA-TF that ends with fewer than 6 bytes of a PDV."""
    left = size - offset
    if left >= 4:
        (length,) = _U32.unpack_from(view, offset)
        if length < 2:
            raise _invalid(f"PDV item length {length} at offset {offset} is less than 2")
    raise _invalid(f"truncated PDV item at offset {offset}: {left} bytes left")


def _bad_pdv(length: int, context_id: int, offset: int, size: int) -> None:
    """Raise the error for a PDV item whose header is invalid."""
    if length < 2:
        raise _invalid(f"PDV item length {length} at offset {offset} is less than 2")
    if offset + 4 + length > size:
        raise _invalid(f"PDV item at offset {offset} declares length {length}, but only "
                       f"{size - offset - 4} bytes remain in the P-DATA-TF")
    raise _invalid(f"presentation context ID {context_id} of the PDV at offset "
                   f"{offset} is not odd")


def _decode_fixed4(body: bytes | memoryview, pdu_type: int) -> tuple[int, int, int, int]:
    """Return the four bytes of a 4-byte PDU body, checking its length."""
    if len(body) != 4:
        raise _invalid(f"{_PDU_NAMES[pdu_type]} PDU-length is {len(body)}, not 4")
    return _FOUR_BYTES.unpack_from(body)


def _decode_rj(body: bytes | memoryview) -> AAssociateRJ:
    """Decode an A-ASSOCIATE-RJ body (PS3.8 Table 9-21)."""
    _, result, source, reason = _decode_fixed4(body, A_ASSOCIATE_RJ)
    return AAssociateRJ(result, source, reason)


def _decode_abort(body: bytes | memoryview) -> AAbort:
    """Decode an A-ABORT body (PS3.8 Table 9-26)."""
    _, _, source, reason = _decode_fixed4(body, A_ABORT)
    return AAbort(source, reason)


_RELEASE_RQ = AReleaseRQ()
_RELEASE_RP = AReleaseRP()


def _decode_release_rq(body: bytes | memoryview) -> AReleaseRQ:
    """Decode an A-RELEASE-RQ body (PS3.8 Table 9-24)."""
    _decode_fixed4(body, A_RELEASE_RQ)
    return _RELEASE_RQ


def _decode_release_rp(body: bytes | memoryview) -> AReleaseRP:
    """Decode an A-RELEASE-RP body (PS3.8 Table 9-25)."""
    _decode_fixed4(body, A_RELEASE_RP)
    return _RELEASE_RP


_DECODERS: dict[int, Callable[[bytes | memoryview], PDU]] = {
    A_ASSOCIATE_RQ: lambda body: _decode_associate(body, A_ASSOCIATE_RQ),
    A_ASSOCIATE_AC: lambda body: _decode_associate(body, A_ASSOCIATE_AC),
    A_ASSOCIATE_RJ: _decode_rj,
    P_DATA_TF: _decode_pdata,
    A_RELEASE_RQ: _decode_release_rq,
    A_RELEASE_RP: _decode_release_rp,
    A_ABORT: _decode_abort,
}


def decode(pdu_type: int, body: bytes | memoryview) -> PDU:
    """Decode a PDU from its type and its body, the bytes after the 6-byte header.

    Raises PDUDecodeError, and nothing else, if the body is malformed; its
    ``reason`` is the A-ABORT Reason/Diag to send (PS3.8 Table 9-26).
    """
    decoder = _DECODERS.get(pdu_type)
    if decoder is None:
        raise PDUDecodeError(f"unrecognized PDU type {pdu_type!r}", ABORT_UNRECOGNIZED_PDU)
    try:
        return decoder(body)
    except PDUDecodeError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, OverflowError) as exc:
        # ValueError covers UnicodeDecodeError (a non-ASCII AE title or UID).
        raise _invalid(f"malformed {_PDU_NAMES[pdu_type]}: {exc}") from exc
