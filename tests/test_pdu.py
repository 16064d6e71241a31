"""Tests for sdcc_twisted.core.pdu, the PDU codec (PS3.8 9.3, PS3.7 Annex D)."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core import pdu
from sdcc_twisted.core.conformance import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_UNEXPECTED_PDU_PARAMETER,
    ABORT_UNRECOGNIZED_PDU,
    ABORT_UNRECOGNIZED_PDU_PARAMETER,
    APPLICATION_CONTEXT_NAME,
)
from sdcc_twisted.core.errors import LocalProtocolError, PDUDecodeError
from sdcc_twisted.core.framing import PDUFramer
from sdcc_twisted.core.pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    UserInformation,
)

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"

# -- Sample PDUs using every item and sub-item --------------------------------
FULL_USER_INFO = UserInformation(
    max_length=16384,                                       # 0x51
    implementation_class_uid="1.2.392.100224.1.2002.100.5",  # 0x52
    implementation_version_name="SDCC 1.1",                 # 0x55
    async_ops=(2, 3),                                       # 0x53
    role_selections=(RoleSelection(CT_IMAGE, 1, 0),         # 0x54
                     RoleSelection(VERIFICATION, 0, 1)),
    extended=(
        (0x56, b"\x00\x1b1.2.840.10008.5.1.4.1.2.1.1\x01\x01"),  # SOP class extended
        (0x57, b"\x00\x05" + b"1.2.3" + b"\x00\x05" + b"1.2.4" + b"\x00\x00"),  # common ext.
        (0x58, b"\x02\x01\x00\x04user\x00\x02pw"),           # user identity RQ
        (0x59, b"\x00\x03abc"),                              # user identity AC
    ),
)

SAMPLE_RQ = AAssociateRQ(
    called_ae="ANY-SCP",
    calling_ae="STORESCU",
    application_context=APPLICATION_CONTEXT_NAME,
    presentation_contexts=(
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(3, CT_IMAGE, (EXPLICIT, IMPLICIT, "1.2.840.10008.1.2.4.50")),
        PresentationContextRQ(255, CT_IMAGE, (IMPLICIT,)),
    ),
    user_information=FULL_USER_INFO,
)

SAMPLE_AC = AAssociateAC(
    called_ae="ANY-SCP",
    calling_ae="STORESCU",
    application_context=APPLICATION_CONTEXT_NAME,
    presentation_contexts=(
        PresentationContextAC(1, 0, IMPLICIT),
        PresentationContextAC(3, 4, IMPLICIT),
        PresentationContextAC(5, 3, ""),
    ),
    user_information=UserInformation(
        max_length=16384,
        implementation_class_uid="1.2.392.100224.1.2002.100.5",
        implementation_version_name="SDCC 1.1",
        async_ops=(1, 1),
        role_selections=(RoleSelection(CT_IMAGE, 1, 1),),
        extended=((0x59, b"\x00\x00"),),
    ),
)

SAMPLE_PDATA = PDataTF((
    PDV(1, 0x03, b"\x00" * 10),
    PDV(1, 0x00, bytes(range(256)) * 3),
    PDV(3, 0x02, b""),
))

SAMPLES = (
    SAMPLE_RQ,
    SAMPLE_AC,
    AAssociateRJ(1, 1, 7),
    SAMPLE_PDATA,
    AReleaseRQ(),
    AReleaseRP(),
    AAbort(2, 6),
)


def _roundtrip(value: pdu.PDU) -> pdu.PDU:
    """Encode a PDU, check its header and decode its body."""
    data = pdu.encode(value)
    pdu_type, length = struct.unpack_from("!BxL", data)
    assert length == len(data) - 6, (length, len(data))
    return pdu.decode(pdu_type, data[6:])


# -- Hand-made bytes, written independently of the encoder --------------------
def _item(item_type: int, value: bytes) -> bytes:
    """An item or sub-item: type, reserved, 2-byte length, value (PS3.8 9.3.2)."""
    return struct.pack("!BxH", item_type, len(value)) + value


def _fixed(called: bytes = b"ANY-SCP", calling: bytes = b"ECHOSCU", version: int = 1) -> bytes:
    """The 68-byte fixed part of an A-ASSOCIATE-RQ/AC body (PS3.8 Table 9-11)."""
    return (struct.pack("!H", version) + b"\x00\x00" + called.ljust(16, b" ")
            + calling.ljust(16, b" ") + bytes(32))


APP_CONTEXT_ITEM = _item(0x10, APPLICATION_CONTEXT_NAME.encode())
PC_RQ_ITEM = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, VERIFICATION.encode())
                   + _item(0x40, IMPLICIT.encode()))
PC_AC_ITEM = _item(0x21, b"\x01\x00\x00\x00" + _item(0x40, IMPLICIT.encode()))
USER_INFO_ITEM = _item(0x50, _item(0x51, struct.pack("!L", 16384))
                       + _item(0x52, b"1.2.3.4"))


def _rq_body(*items: bytes, fixed: bytes | None = None) -> bytes:
    """An A-ASSOCIATE-RQ/AC body made of the fixed part and *items*."""
    return (_fixed() if fixed is None else fixed) + b"".join(items)


# PS3.8 Table 9-11 layout, offsets from the start of the PDU.
GOLDEN_RQ = b"".join([
    b"\x01",                      # 0     PDU type: A-ASSOCIATE-RQ
    b"\x00",                      # 1     reserved
    b"\x00\x00\x00\xab",          # 2-5   PDU-length = 68 + 25 + 50 + 28 = 171
    b"\x00\x01",                  # 6-7   protocol version, bit 0 set
    b"\x00\x00",                  # 8-9   reserved
    b"ANY-SCP         ",          # 10-25 called AE title, space padded to 16
    b"ECHOSCU         ",          # 26-41 calling AE title
    b"\x00" * 32,                 # 42-73 reserved
    # Application Context item (PS3.8 9.3.2.1): 4 + 21 = 25 bytes
    b"\x10\x00\x00\x15", b"1.2.840.10008.3.1.1.1",
    # Presentation Context item (PS3.8 9.3.2.2): 4 + 46 = 50 bytes
    b"\x20\x00\x00\x2e",
    b"\x01\x00\x00\x00",          #   PC-ID 1, three reserved bytes
    b"\x30\x00\x00\x11", b"1.2.840.10008.1.1",   # abstract syntax: Verification
    b"\x40\x00\x00\x11", b"1.2.840.10008.1.2",   # transfer syntax: Implicit VR LE
    # User Information item (PS3.8 9.3.2.3): 4 + 8 + 11 + 5 = 28 bytes
    b"\x50\x00\x00\x18",
    b"\x51\x00\x00\x04\x00\x00\x40\x00",         # maximum length 16384
    b"\x52\x00\x00\x07", b"1.2.3.4",             # implementation class UID
    b"\x55\x00\x00\x01", b"X",                   # implementation version name
])
GOLDEN_RQ_PDU = AAssociateRQ(
    called_ae="ANY-SCP",
    calling_ae="ECHOSCU",
    application_context="1.2.840.10008.3.1.1.1",
    presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),),
    user_information=UserInformation(
        max_length=16384, implementation_class_uid="1.2.3.4",
        implementation_version_name="X"),
)


class RoundTripTests(SynchronousTestCase):
    """encode() then decode() gives back the same PDU."""

    def test_every_pdu_type(self) -> None:
        """Each of the seven PDU types survives encode -> decode unchanged."""
        for sample in SAMPLES:
            self.assertEqual(_roundtrip(sample), sample)

    def test_pdu_types_table(self) -> None:
        """PDU_TYPES maps 0x01..0x07 to the classes, and encode() writes that type."""
        self.assertEqual(sorted(pdu.PDU_TYPES), list(range(1, 8)))
        for sample in SAMPLES:
            self.assertIs(pdu.PDU_TYPES[pdu.encode(sample)[0]], type(sample))

    def test_every_user_information_sub_item(self) -> None:
        """Sub-items 0x51-0x55 decode to fields and 0x56-0x59 are kept raw, in order."""
        decoded = _roundtrip(SAMPLE_RQ)
        info = decoded.user_information
        self.assertEqual(info.max_length, 16384)
        self.assertEqual(info.implementation_class_uid, "1.2.392.100224.1.2002.100.5")
        self.assertEqual(info.implementation_version_name, "SDCC 1.1")
        self.assertEqual(info.async_ops, (2, 3))
        self.assertEqual(info.role_selections, (RoleSelection(CT_IMAGE, 1, 0),
                                                RoleSelection(VERIFICATION, 0, 1)))
        self.assertEqual([t for t, _ in info.extended], [0x56, 0x57, 0x58, 0x59])
        self.assertEqual(info.extended, FULL_USER_INFO.extended)

    def test_extended_sub_items_reencoded_verbatim(self) -> None:
        """Raw 0x56-0x59 sub-items appear byte for byte in the encoding."""
        data = pdu.encode(SAMPLE_RQ)
        for sub_type, value in FULL_USER_INFO.extended:
            self.assertIn(_item(sub_type, value), data)

    def test_empty_user_information(self) -> None:
        """A User Information item without sub-items decodes to all-absent fields."""
        rq = AAssociateRQ("A", "B", APPLICATION_CONTEXT_NAME,
                          (PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),),
                          UserInformation())
        self.assertEqual(_roundtrip(rq), rq)
        self.assertIn(b"\x50\x00\x00\x00", pdu.encode(rq))

    def test_ac_echoes_fields(self) -> None:
        """The AC keeps its called/calling AE titles and protocol version as given."""
        ac = AAssociateAC("CALLED", "CALLING", APPLICATION_CONTEXT_NAME,
                          (PresentationContextAC(7, 0, EXPLICIT),), UserInformation(),
                          protocol_version=0x8001)
        self.assertEqual(_roundtrip(ac), ac)

    def test_protocol_version_raw(self) -> None:
        """Decoding keeps the raw protocol version; bit 0 alone is not enforced."""
        for version in (0, 1, 3, 0xFFFF):
            body = _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, USER_INFO_ITEM,
                            fixed=_fixed(version=version))
            self.assertEqual(pdu.decode(0x01, body).protocol_version, version)

    def test_ae_titles_stripped_and_padded(self) -> None:
        """AE titles are space padded to 16 on encode, stripped both sides on decode."""
        body = _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, USER_INFO_ITEM,
                        fixed=_fixed(called=b"  PACS", calling=b"MODALITY 1"))
        decoded = pdu.decode(0x01, body)
        self.assertEqual(decoded.called_ae, "PACS")
        self.assertEqual(decoded.calling_ae, "MODALITY 1")
        self.assertIn(b"MODALITY 1      ", pdu.encode(decoded))
        full = AAssociateRQ("A" * 16, "B" * 16, APPLICATION_CONTEXT_NAME,
                            GOLDEN_RQ_PDU.presentation_contexts, UserInformation())
        self.assertEqual(_roundtrip(full), full)

    def test_uid_padding_stripped(self) -> None:
        """UIDs lose a trailing NUL or spaces on decode; the encoder does not pad."""
        body = _rq_body(
            _item(0x10, APPLICATION_CONTEXT_NAME.encode() + b"\x00"),
            _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2.840.10008.1.1\x00")
                  + _item(0x40, b"1.2.840.10008.1.2 ")),
            _item(0x50, _item(0x52, b"1.2.3\x00")))
        decoded = pdu.decode(0x01, body)
        self.assertEqual(decoded.application_context, APPLICATION_CONTEXT_NAME)
        self.assertEqual(decoded.presentation_contexts[0],
                         PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)))
        self.assertEqual(decoded.user_information.implementation_class_uid, "1.2.3")
        self.assertIn(b"\x30\x00\x00\x11" + VERIFICATION.encode() + b"\x40",
                      pdu.encode(decoded))

    def test_unknown_user_information_sub_items_ignored(self) -> None:
        """Sub-items other than 0x51-0x59 are skipped, not rejected (PS3.8 D.2)."""
        user_info = _item(0x50, _item(0x51, struct.pack("!L", 0)) + _item(0x5A, b"xyz")
                          + _item(0x52, b"1.2.3") + _item(0xFF, b"") + _item(0x00, b"\x01"))
        decoded = pdu.decode(0x01, _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info))
        self.assertEqual(decoded.user_information,
                         UserInformation(max_length=0, implementation_class_uid="1.2.3"))

    def test_items_in_any_order(self) -> None:
        """Top-level items are accepted whatever their order."""
        decoded = pdu.decode(0x01, _rq_body(USER_INFO_ITEM, PC_RQ_ITEM, APP_CONTEXT_ITEM))
        self.assertEqual(decoded.application_context, APPLICATION_CONTEXT_NAME)

    def test_ac_without_transfer_syntax_sub_item(self) -> None:
        """A rejected AC context without a transfer syntax sub-item decodes with ""."""
        body = _rq_body(APP_CONTEXT_ITEM, _item(0x21, b"\x01\x00\x03\x00"), USER_INFO_ITEM)
        decoded = pdu.decode(0x02, body)
        self.assertEqual(decoded.presentation_contexts, (PresentationContextAC(1, 3, ""),))

    def test_rq_context_without_transfer_syntax(self) -> None:
        """An RQ context without transfer syntaxes decodes, for negotiation to refuse."""
        item = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, VERIFICATION.encode()))
        decoded = pdu.decode(0x01, _rq_body(APP_CONTEXT_ITEM, item, USER_INFO_ITEM))
        self.assertEqual(decoded.presentation_contexts,
                         (PresentationContextRQ(1, VERIFICATION, ()),))

    def test_decode_accepts_memoryview(self) -> None:
        """decode() takes a memoryview body as well as bytes, for every type."""
        for sample in SAMPLES:
            data = pdu.encode(sample)
            self.assertEqual(pdu.decode(data[0], memoryview(data)[6:]), sample)


class PDataTests(SynchronousTestCase):
    """P-DATA-TF specifics: the hot path (PS3.8 9.3.5, Annex E)."""

    def test_pdv_data_is_view_of_body(self) -> None:
        """PDV data are memoryview slices of the body, not copies."""
        body = pdu.encode(SAMPLE_PDATA)[6:]
        decoded = pdu.decode(0x04, body)
        for pdv in decoded.pdvs:
            self.assertIsInstance(pdv.data, memoryview)
            self.assertIs(pdv.data.obj, body)

    def test_pdv_header_helpers(self) -> None:
        """encode_pdv_header() and pdata_header() match what encode() writes."""
        data = b"\x01\x02\x03"
        whole = pdu.encode(PDataTF((PDV(5, 0x02, data),)))
        self.assertEqual(pdu.pdata_header(9) + pdu.encode_pdv_header(5, 0x02, 3) + data,
                         whole)
        self.assertEqual(pdu.encode_pdv_header(1, 3, 10), b"\x00\x00\x00\x0c\x01\x03")
        self.assertEqual(pdu.pdata_header(0x01020304), b"\x04\x00\x01\x02\x03\x04")

    def test_memoryview_data_encoded(self) -> None:
        """encode() accepts PDV data given as a memoryview."""
        view = memoryview(b"abcdefgh")[2:6]
        self.assertEqual(pdu.encode(PDataTF((PDV(1, 0, view),))),
                         b"\x04\x00\x00\x00\x00\x0a\x00\x00\x00\x06\x01\x00cdef")

    def test_control_byte_kept(self) -> None:
        """Every message control header value is kept as given (PS3.8 E.2)."""
        pdata = PDataTF(tuple(PDV(1, control, b"x") for control in (0, 1, 2, 3, 0xFC)))
        self.assertEqual(_roundtrip(pdata), pdata)


class GoldenBytesTests(SynchronousTestCase):
    """Bytes written by hand from the tables of PS3.8 9.3."""

    def test_associate_rq_decode(self) -> None:
        """The hand-built A-ASSOCIATE-RQ decodes to the expected fields."""
        self.assertEqual(len(GOLDEN_RQ), 6 + 171)
        self.assertEqual(pdu.decode(GOLDEN_RQ[0], GOLDEN_RQ[6:]), GOLDEN_RQ_PDU)

    def test_associate_rq_encode(self) -> None:
        """Encoding the expected A-ASSOCIATE-RQ gives the hand-built bytes exactly."""
        self.assertEqual(pdu.encode(GOLDEN_RQ_PDU), GOLDEN_RQ)

    def test_associate_ac_encode(self) -> None:
        """An A-ASSOCIATE-AC is encoded as PS3.8 Table 9-17 and 9-18 lay it out."""
        ac = AAssociateAC("ANY-SCP", "ECHOSCU", APPLICATION_CONTEXT_NAME,
                          (PresentationContextAC(1, 0, IMPLICIT),),
                          UserInformation(max_length=16384))
        expected = b"".join([
            b"\x02\x00\x00\x00\x00\x86",           # A-ASSOCIATE-AC, length 68+25+29+12
            b"\x00\x01\x00\x00", b"ANY-SCP         ECHOSCU         ", bytes(32),
            b"\x10\x00\x00\x15", b"1.2.840.10008.3.1.1.1",
            b"\x21\x00\x00\x19", b"\x01\x00\x00\x00",   # PC-ID 1, result 0 (acceptance)
            b"\x40\x00\x00\x11", b"1.2.840.10008.1.2",
            b"\x50\x00\x00\x08", b"\x51\x00\x00\x04\x00\x00\x40\x00",
        ])
        self.assertEqual(pdu.encode(ac), expected)
        self.assertEqual(pdu.decode(2, expected[6:]), ac)

    def test_small_pdus(self) -> None:
        """RJ, P-DATA-TF, release and abort PDUs have the exact layouts of PS3.8 9.3."""
        cases = [
            (AAssociateRJ(1, 1, 7), b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x07"),
            (PDataTF((PDV(1, 3, b"\xab\xcd"),)),
             b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x04\x01\x03\xab\xcd"),
            (AReleaseRQ(), b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"),
            (AReleaseRP(), b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"),
            (AAbort(2, 6), b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"),
        ]
        for value, data in cases:
            self.assertEqual(pdu.encode(value), data)
            self.assertEqual(pdu.decode(data[0], data[6:]), value)

    def test_reserved_bytes_not_tested(self) -> None:
        """Reserved bytes of RJ, abort and release bodies are ignored on decode."""
        self.assertEqual(pdu.decode(0x03, b"\xff\x02\x03\x01"), AAssociateRJ(2, 3, 1))
        self.assertEqual(pdu.decode(0x07, b"\xff\xff\x00\x00"), AAbort(0, 0))
        self.assertEqual(pdu.decode(0x05, b"\xff\xff\xff\xff"), AReleaseRQ())
        self.assertEqual(pdu.decode(0x06, b"\x01\x02\x03\x04"), AReleaseRP())


class MalformedTests(SynchronousTestCase):
    """Malformed input raises PDUDecodeError with the A-ABORT reason to send."""

    def assertDecodeError(self, pdu_type: int, body: bytes, reason: int) -> None:
        """decode() raises PDUDecodeError with *reason*."""
        exc = self.assertRaises(PDUDecodeError, pdu.decode, pdu_type, body)
        self.assertEqual(exc.reason, reason, str(exc))

    def test_unknown_pdu_type(self) -> None:
        """An unknown PDU type is unrecognized-PDU (reason 1)."""
        for pdu_type in (0x00, 0x08, 0x10, 0xFF):
            self.assertDecodeError(pdu_type, b"\x00\x00\x00\x00", ABORT_UNRECOGNIZED_PDU)

    def test_item_overruns_pdu(self) -> None:
        """An item whose length runs past the end of the PDU is refused."""
        for pdu_type, pc in ((0x01, PC_RQ_ITEM), (0x02, PC_AC_ITEM)):
            body = _rq_body(APP_CONTEXT_ITEM, pc, USER_INFO_ITEM)
            self.assertDecodeError(pdu_type, body[:-1], ABORT_INVALID_PDU_PARAMETER_VALUE)
            bad = _rq_body(b"\x10\x00\x00\xff" + b"1.2", pc, USER_INFO_ITEM)
            self.assertDecodeError(pdu_type, bad, ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_truncated_item_header(self) -> None:
        """Fewer than 4 bytes left for an item header is refused."""
        body = _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, USER_INFO_ITEM) + b"\x10\x00\x00"
        self.assertDecodeError(0x01, body, ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_sub_item_overruns_item(self) -> None:
        """A sub-item that runs past its enclosing item is refused."""
        pc = _item(0x20, b"\x01\x00\x00\x00" + b"\x30\x00\x00\x40" + VERIFICATION.encode())
        self.assertDecodeError(0x01, _rq_body(APP_CONTEXT_ITEM, pc, USER_INFO_ITEM),
                               ABORT_INVALID_PDU_PARAMETER_VALUE)
        user_info = _item(0x50, b"\x52\x00\x00\x09" + b"1.2.3")
        self.assertDecodeError(0x01, _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, user_info),
                               ABORT_INVALID_PDU_PARAMETER_VALUE)
        ac_pc = _item(0x21, b"\x01\x00\x00\x00" + b"\x40\x00\x00\x20" + b"1.2")
        self.assertDecodeError(0x02, _rq_body(APP_CONTEXT_ITEM, ac_pc, USER_INFO_ITEM),
                               ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_truncated_fixed_part(self) -> None:
        """An A-ASSOCIATE-RQ/AC shorter than its 68-byte fixed part is refused."""
        for pdu_type in (0x01, 0x02):
            for length in (0, 1, 67):
                self.assertDecodeError(pdu_type, _fixed()[:length],
                                       ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_truncated_presentation_context(self) -> None:
        """A presentation context item shorter than its 4-byte fixed part is refused."""
        for pdu_type, item_type in ((0x01, 0x20), (0x02, 0x21)):
            body = _rq_body(APP_CONTEXT_ITEM, _item(item_type, b"\x01\x00"), USER_INFO_ITEM)
            self.assertDecodeError(pdu_type, body, ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_fixed_length_pdus(self) -> None:
        """RJ, release and abort bodies must be exactly 4 bytes long."""
        for pdu_type in (0x03, 0x05, 0x06, 0x07):
            for body in (b"", b"\x00\x00\x00", b"\x00" * 5, b"\x00" * 100):
                self.assertDecodeError(pdu_type, body, ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_pdata_without_pdv(self) -> None:
        """A P-DATA-TF with no PDV item is refused."""
        self.assertDecodeError(0x04, b"", ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_pdv_length_below_two(self) -> None:
        """A PDV item length under 2 (no room for PC-ID and control) is refused."""
        for body in (b"\x00\x00\x00\x00", b"\x00\x00\x00\x01\x01",
                     b"\x00\x00\x00\x01\x01\x00\x00\x00",
                     b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"):
            self.assertDecodeError(0x04, body, ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_pdv_truncated(self) -> None:
        """A PDV that runs past the body, or a partial PDV header, is refused."""
        good = b"\x00\x00\x00\x03\x01\x02x"
        for body in (b"\x00\x00\x00\x05\x01\x02x", good + b"\x00\x00",
                     good + b"\x00\x00\x00\x03\x01", good[:-1]):
            self.assertDecodeError(0x04, body, ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_pdv_even_context_id(self) -> None:
        """An even presentation context ID in a PDV is invalid-PDU-parameter-value."""
        for context_id in (0, 2, 254):
            body = struct.pack("!LBB", 3, context_id, 2) + b"x"
            self.assertDecodeError(0x04, body, ABORT_INVALID_PDU_PARAMETER_VALUE)
        second = b"\x00\x00\x00\x03\x01\x02x" + struct.pack("!LBB", 2, 4, 2)
        self.assertDecodeError(0x04, second, ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_missing_mandatory_items(self) -> None:
        """An RQ/AC without application context, presentation context or user info fails."""
        for pdu_type, pc in ((0x01, PC_RQ_ITEM), (0x02, PC_AC_ITEM)):
            for items in ((pc, USER_INFO_ITEM), (APP_CONTEXT_ITEM, USER_INFO_ITEM),
                          (APP_CONTEXT_ITEM, pc), ()):
                self.assertDecodeError(pdu_type, _rq_body(*items),
                                       ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_unknown_top_level_item(self) -> None:
        """An unknown item type in an RQ or AC is unrecognized-PDU-parameter."""
        for pdu_type, pc in ((0x01, PC_RQ_ITEM), (0x02, PC_AC_ITEM)):
            for item_type in (0x00, 0x30, 0x51, 0x60, 0xFF):
                body = _rq_body(APP_CONTEXT_ITEM, pc, _item(item_type, b"??"),
                                USER_INFO_ITEM)
                self.assertDecodeError(pdu_type, body, ABORT_UNRECOGNIZED_PDU_PARAMETER)

    def test_wrong_presentation_context_kind(self) -> None:
        """An AC context item in an RQ (and vice versa) is unexpected-PDU-parameter."""
        self.assertDecodeError(
            0x01, _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, PC_AC_ITEM, USER_INFO_ITEM),
            ABORT_UNEXPECTED_PDU_PARAMETER)
        self.assertDecodeError(
            0x02, _rq_body(APP_CONTEXT_ITEM, PC_AC_ITEM, PC_RQ_ITEM, USER_INFO_ITEM),
            ABORT_UNEXPECTED_PDU_PARAMETER)

    def test_duplicate_single_items(self) -> None:
        """A second application context or user information item is unexpected."""
        for items in ((APP_CONTEXT_ITEM, APP_CONTEXT_ITEM, PC_RQ_ITEM, USER_INFO_ITEM),
                      (APP_CONTEXT_ITEM, PC_RQ_ITEM, USER_INFO_ITEM, USER_INFO_ITEM)):
            self.assertDecodeError(0x01, _rq_body(*items), ABORT_UNEXPECTED_PDU_PARAMETER)

    def test_presentation_context_ids(self) -> None:
        """Even or repeated presentation context IDs in an RQ or AC are invalid."""
        even = _item(0x20, b"\x02\x00\x00\x00" + _item(0x30, b"1.2") + _item(0x40, b"1.2"))
        self.assertDecodeError(0x01, _rq_body(APP_CONTEXT_ITEM, even, USER_INFO_ITEM),
                               ABORT_INVALID_PDU_PARAMETER_VALUE)
        self.assertDecodeError(
            0x01, _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, PC_RQ_ITEM, USER_INFO_ITEM),
            ABORT_INVALID_PDU_PARAMETER_VALUE)
        even_ac = _item(0x21, b"\x00\x00\x00\x00" + _item(0x40, b"1.2"))
        self.assertDecodeError(0x02, _rq_body(APP_CONTEXT_ITEM, even_ac, USER_INFO_ITEM),
                               ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_presentation_context_sub_items(self) -> None:
        """Bad sub-items of a presentation context item are refused with their reason."""
        def rq_with(*subs: bytes) -> bytes:
            pc = _item(0x20, b"\x01\x00\x00\x00" + b"".join(subs))
            return _rq_body(APP_CONTEXT_ITEM, pc, USER_INFO_ITEM)

        abstract, transfer = _item(0x30, b"1.2"), _item(0x40, b"1.2")
        self.assertDecodeError(0x01, rq_with(transfer), ABORT_INVALID_PDU_PARAMETER_VALUE)
        self.assertDecodeError(0x01, rq_with(abstract, abstract, transfer),
                               ABORT_UNEXPECTED_PDU_PARAMETER)
        self.assertDecodeError(0x01, rq_with(abstract, transfer, _item(0x41, b"")),
                               ABORT_UNRECOGNIZED_PDU_PARAMETER)

        def ac_with(*subs: bytes) -> bytes:
            pc = _item(0x21, b"\x01\x00\x00\x00" + b"".join(subs))
            return _rq_body(APP_CONTEXT_ITEM, pc, USER_INFO_ITEM)

        self.assertDecodeError(0x02, ac_with(transfer, transfer),
                               ABORT_UNEXPECTED_PDU_PARAMETER)
        self.assertDecodeError(0x02, ac_with(abstract, transfer),
                               ABORT_UNEXPECTED_PDU_PARAMETER)
        self.assertDecodeError(0x02, ac_with(_item(0x50, b"")),
                               ABORT_UNRECOGNIZED_PDU_PARAMETER)

    def test_bad_user_information_sub_items(self) -> None:
        """Fixed-size sub-items with a wrong length, or a bad role selection, are refused."""
        bad = [
            _item(0x51, b"\x00\x00\x40"),                       # max length: 3 bytes
            _item(0x51, b"\x00\x00\x40\x00\x00"),               # max length: 5 bytes
            _item(0x53, b"\x00\x01\x00"),                       # async ops: 3 bytes
            _item(0x54, b"\x00"),                               # role: no UID length
            _item(0x54, b"\x00\x03" + b"1.2" + b"\x01"),        # role: one role byte
            _item(0x54, b"\x00\x02" + b"1.2" + b"\x01\x00"),    # role: UID length off
        ]
        for sub_item in bad:
            body = _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, _item(0x50, sub_item))
            self.assertDecodeError(0x01, body, ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_non_ascii_text(self) -> None:
        """Non-ASCII bytes in an AE title, a UID or a version name are refused."""
        bodies = [
            _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, USER_INFO_ITEM,
                     fixed=_fixed(called=b"SCP\xe9")),
            _rq_body(_item(0x10, b"1.2\xff"), PC_RQ_ITEM, USER_INFO_ITEM),
            _rq_body(APP_CONTEXT_ITEM, PC_RQ_ITEM, _item(0x50, _item(0x55, b"V\x80"))),
        ]
        for body in bodies:
            self.assertDecodeError(0x01, body, ABORT_INVALID_PDU_PARAMETER_VALUE)


class EncodeErrorTests(SynchronousTestCase):
    """encode() refuses what cannot be put on the wire with LocalProtocolError."""

    def test_unencodable_fields(self) -> None:
        """Long or non-ASCII AE titles, out-of-range numbers and huge items fail."""
        pcs = GOLDEN_RQ_PDU.presentation_contexts
        info = UserInformation()
        cases = [
            AAssociateRQ("A" * 17, "B", APPLICATION_CONTEXT_NAME, pcs, info),
            AAssociateRQ("Ä", "B", APPLICATION_CONTEXT_NAME, pcs, info),
            AAssociateRQ("A", "B", APPLICATION_CONTEXT_NAME,
                         (PresentationContextRQ(257, VERIFICATION, (IMPLICIT,)),), info),
            AAssociateRQ("A", "B", APPLICATION_CONTEXT_NAME, pcs,
                         UserInformation(max_length=1 << 32)),
            AAssociateRQ("A", "B", APPLICATION_CONTEXT_NAME, pcs,
                         UserInformation(extended=((0x60, b""),))),
            AAssociateRQ("A", "B", "1" * 70000, pcs, info),
            AAbort(2, 256),
            PDataTF((PDV(256, 0, b""),)),
            "not a PDU",
        ]
        for value in cases:
            self.assertRaises(LocalProtocolError, pdu.encode, value)


class FramerRoundTripTests(SynchronousTestCase):
    """Encoded PDUs fed to the PDUFramer come back whole and decode unchanged."""

    def _decode_all(self, chunks: list[bytes]) -> list[pdu.PDU]:
        framer = PDUFramer(max_pdata_length=1 << 16)
        frames = []
        for chunk in chunks:
            frames.extend(framer.feed(chunk))
        self.assertEqual(framer.buffered, 0)
        return [pdu.decode(pdu_type, body) for pdu_type, body in frames]

    def test_whole(self) -> None:
        """All sample PDUs in one feed decode to the originals."""
        stream = b"".join(map(pdu.encode, SAMPLES))
        self.assertEqual(self._decode_all([stream]), list(SAMPLES))

    def test_one_byte_at_a_time(self) -> None:
        """All sample PDUs fed one byte at a time decode to the originals."""
        stream = b"".join(map(pdu.encode, SAMPLES))
        chunks = [stream[i:i + 1] for i in range(len(stream))]
        self.assertEqual(self._decode_all(chunks), list(SAMPLES))

    def test_random_splits(self) -> None:
        """All sample PDUs fed in random splits decode to the originals."""
        stream = b"".join(map(pdu.encode, SAMPLES))
        rng = random.Random(8)
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 30)))
            chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
            self.assertEqual(self._decode_all(chunks), list(SAMPLES))


class PynetdicomCrossCheckTests(SynchronousTestCase):
    """pynetdicom's PDU classes, an independent implementation, agree with ours."""

    def setUp(self) -> None:
        from pynetdicom import pdu as pyn_pdu
        from pynetdicom import pdu_primitives as prim
        from pynetdicom.presentation import PresentationContext
        self.pyn = pyn_pdu
        self.prim = prim
        self.PresentationContext = PresentationContext

    def _user_information(self) -> list:
        prim = self.prim
        max_length = prim.MaximumLengthNotification()
        max_length.maximum_length_received = 32768
        class_uid = prim.ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
        async_ops = prim.AsynchronousOperationsWindowNegotiation()
        async_ops.maximum_number_operations_invoked = 5
        async_ops.maximum_number_operations_performed = 0
        role = prim.SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = CT_IMAGE
        role.scu_role = False
        role.scp_role = True
        version = prim.ImplementationVersionNameNotification()
        version.implementation_version_name = "PYNETDICOM_304"
        ext = prim.SOPClassExtendedNegotiation()
        ext.sop_class_uid = "1.2.840.10008.5.1.4.1.2.1.1"
        ext.service_class_application_information = b"\x01\x01"
        identity = prim.UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = b"user"
        identity.secondary_field = b"secret"
        identity.positive_response_requested = True
        # The order of our encoder, so that the bytes can be compared exactly.
        return [max_length, class_uid, async_ops, role, version, ext, identity]

    def _context(self, context_id: int, abstract: str, syntaxes: list[str],
                 result: int | None = None) -> object:
        context = self.PresentationContext()
        context.context_id = context_id
        context.abstract_syntax = abstract
        context.transfer_syntax = syntaxes
        if result is not None:
            context.result = result
        return context

    def test_pynetdicom_rq_decoded(self) -> None:
        """A pynetdicom A-ASSOCIATE-RQ decodes correctly and re-encodes byte for byte."""
        primitive = self.prim.A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT_NAME
        primitive.calling_ae_title = "STORESCU"
        primitive.called_ae_title = "ANY-SCP"
        primitive.presentation_context_definition_list = [
            self._context(1, VERIFICATION, [IMPLICIT]),
            self._context(3, CT_IMAGE, [EXPLICIT, IMPLICIT]),
        ]
        primitive.user_information = self._user_information()
        data = self.pyn.A_ASSOCIATE_RQ(primitive).encode()

        decoded = pdu.decode(data[0], data[6:])
        self.assertEqual(decoded.called_ae, "ANY-SCP")
        self.assertEqual(decoded.calling_ae, "STORESCU")
        self.assertEqual(decoded.protocol_version, 1)
        self.assertEqual(decoded.application_context, APPLICATION_CONTEXT_NAME)
        self.assertEqual(decoded.presentation_contexts, (
            PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
            PresentationContextRQ(3, CT_IMAGE, (EXPLICIT, IMPLICIT)),
        ))
        info = decoded.user_information
        self.assertEqual(info.max_length, 32768)
        self.assertEqual(info.implementation_class_uid, "1.2.826.0.1.3680043.9.3811.3.0.4")
        self.assertEqual(info.implementation_version_name, "PYNETDICOM_304")
        self.assertEqual(info.async_ops, (5, 0))
        self.assertEqual(info.role_selections, (RoleSelection(CT_IMAGE, 0, 1),))
        self.assertEqual([t for t, _ in info.extended], [0x56, 0x58])
        self.assertEqual(pdu.encode(decoded), data)

    def test_pynetdicom_ac_decoded(self) -> None:
        """A pynetdicom A-ASSOCIATE-AC decodes correctly."""
        primitive = self.prim.A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT_NAME
        primitive.calling_ae_title = "STORESCU"
        primitive.called_ae_title = "ANY-SCP"
        primitive.result = 0
        primitive.presentation_context_definition_results_list = [
            self._context(1, VERIFICATION, [IMPLICIT], result=0),
            self._context(3, CT_IMAGE, [EXPLICIT], result=3),
        ]
        max_length = self.prim.MaximumLengthNotification()
        max_length.maximum_length_received = 0
        class_uid = self.prim.ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = "1.2.3.4"
        primitive.user_information = [max_length, class_uid]
        data = self.pyn.A_ASSOCIATE_AC(primitive).encode()

        decoded = pdu.decode(data[0], data[6:])
        self.assertEqual(decoded, AAssociateAC(
            "ANY-SCP", "STORESCU", APPLICATION_CONTEXT_NAME,
            (PresentationContextAC(1, 0, IMPLICIT), PresentationContextAC(3, 3, EXPLICIT)),
            UserInformation(max_length=0, implementation_class_uid="1.2.3.4")))

    def test_pynetdicom_small_pdus_decoded(self) -> None:
        """pynetdicom's RJ, P-DATA-TF, release and abort PDUs decode correctly."""
        pyn = self.pyn
        rj = pyn.A_ASSOCIATE_RJ()
        rj.result, rj.source, rj.reason_diagnostic = 2, 3, 2
        pdata = pyn.P_DATA_TF()
        for context_id, value in ((1, b"\x03abcd"), (3, b"\x00" + bytes(1000))):
            item = pyn.PresentationDataValueItem()
            item.presentation_context_id = context_id
            item.presentation_data_value = value
            pdata.presentation_data_value_items.append(item)
        abort = pyn.A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = 2, 6
        cases = [
            (rj, AAssociateRJ(2, 3, 2)),
            (pdata, PDataTF((PDV(1, 3, b"abcd"), PDV(3, 0, bytes(1000))))),
            (pyn.A_RELEASE_RQ(), AReleaseRQ()),
            (pyn.A_RELEASE_RP(), AReleaseRP()),
            (abort, AAbort(2, 6)),
        ]
        for theirs, ours in cases:
            data = theirs.encode()
            self.assertEqual(pdu.decode(data[0], data[6:]), ours)
            self.assertEqual(pdu.encode(ours), data)

    def test_our_rq_decoded_by_pynetdicom(self) -> None:
        """pynetdicom decodes our A-ASSOCIATE-RQ to the same fields."""
        theirs = self.pyn.A_ASSOCIATE_RQ()
        theirs.decode(pdu.encode(SAMPLE_RQ))
        self.assertEqual(theirs.called_ae_title, "ANY-SCP")
        self.assertEqual(theirs.calling_ae_title, "STORESCU")
        self.assertEqual(theirs.application_context_name, APPLICATION_CONTEXT_NAME)
        contexts = [(c.context_id, c.abstract_syntax, c.transfer_syntax)
                    for c in theirs.presentation_context]
        self.assertEqual(contexts, [(c.context_id, c.abstract_syntax, list(c.transfer_syntaxes))
                                    for c in SAMPLE_RQ.presentation_contexts])
        info = theirs.user_information
        self.assertEqual(info.maximum_length, 16384)
        self.assertEqual(info.implementation_class_uid, "1.2.392.100224.1.2002.100.5")
        self.assertEqual(info.implementation_version_name, "SDCC 1.1")
        self.assertEqual((info.async_ops_window.maximum_number_operations_invoked,
                          info.async_ops_window.maximum_number_operations_performed), (2, 3))
        roles = {uid: (item.scu_role, item.scp_role)
                 for uid, item in info.role_selection.items()}
        self.assertEqual(roles, {CT_IMAGE: (1, 0), VERIFICATION: (0, 1)})
        self.assertEqual(info.user_identity.primary_field, b"user")
        self.assertEqual(info.user_identity.secondary_field, b"pw")
        self.assertEqual(info.ext_neg[0].sop_class_uid, "1.2.840.10008.5.1.4.1.2.1.1")
        self.assertEqual(theirs.encode(), pdu.encode(SAMPLE_RQ))

    def test_our_ac_decoded_by_pynetdicom(self) -> None:
        """pynetdicom decodes our A-ASSOCIATE-AC to the same fields."""
        ac = AAssociateAC("ANY-SCP", "STORESCU", APPLICATION_CONTEXT_NAME,
                          (PresentationContextAC(1, 0, IMPLICIT),
                           PresentationContextAC(3, 4, IMPLICIT)),
                          UserInformation(max_length=16384,
                                          implementation_class_uid="1.2.3.4",
                                          implementation_version_name="SDCC 1.1"))
        theirs = self.pyn.A_ASSOCIATE_AC()
        theirs.decode(pdu.encode(ac))
        self.assertEqual(theirs.application_context_name, APPLICATION_CONTEXT_NAME)
        self.assertEqual([(c.context_id, c.result_reason, c.transfer_syntax)
                          for c in theirs.presentation_context],
                         [(1, 0, IMPLICIT), (3, 4, IMPLICIT)])
        self.assertEqual(theirs.user_information.maximum_length, 16384)
        self.assertEqual(theirs.user_information.implementation_version_name, "SDCC 1.1")
        self.assertEqual(theirs.encode(), pdu.encode(ac))

    def test_our_small_pdus_decoded_by_pynetdicom(self) -> None:
        """pynetdicom decodes our RJ, P-DATA-TF, release and abort PDUs."""
        pyn = self.pyn
        rj = pyn.A_ASSOCIATE_RJ()
        rj.decode(pdu.encode(AAssociateRJ(1, 1, 3)))
        self.assertEqual((rj.result, rj.source, rj.reason_diagnostic), (1, 1, 3))
        abort = pyn.A_ABORT_RQ()
        abort.decode(pdu.encode(AAbort(2, 1)))
        self.assertEqual((abort.source, abort.reason_diagnostic), (2, 1))
        pdata = pyn.P_DATA_TF()
        pdata.decode(pdu.encode(SAMPLE_PDATA))
        self.assertEqual([(item.presentation_context_id, item.presentation_data_value)
                          for item in pdata.presentation_data_value_items],
                         [(p.context_id, bytes([p.control]) + bytes(p.data))
                          for p in SAMPLE_PDATA.pdvs])
        for ours, cls in ((AReleaseRQ(), pyn.A_RELEASE_RQ), (AReleaseRP(), pyn.A_RELEASE_RP)):
            theirs = cls()
            theirs.decode(pdu.encode(ours))
            self.assertEqual(theirs.encode(), pdu.encode(ours))


# -- Property tests -------------------------------------------------------------
_uids = st.from_regex(r"[1-9][0-9]{0,5}(\.[0-9]{1,8}){0,6}", fullmatch=True)
_ae_titles = st.from_regex(r"[A-Za-z0-9_\-]([A-Za-z0-9_\- ]{0,14}[A-Za-z0-9_\-])?",
                           fullmatch=True)
_odd_ids = st.integers(0, 127).map(lambda n: 2 * n + 1)
_byte = st.integers(0, 255)
_user_information = st.builds(
    UserInformation,
    max_length=st.none() | st.integers(0, 2**32 - 1),
    implementation_class_uid=st.none() | _uids,
    implementation_version_name=st.none() | st.from_regex(r"[A-Z0-9_ ]{0,15}[A-Z0-9_]",
                                                          fullmatch=True),
    async_ops=st.none() | st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    role_selections=st.lists(st.builds(RoleSelection, _uids, _byte, _byte),
                             max_size=3).map(tuple),
    extended=st.lists(st.tuples(st.integers(0x56, 0x59), st.binary(max_size=40)),
                      max_size=4).map(tuple),
)


def _unique_ids(contexts: list) -> bool:
    return len({c.context_id for c in contexts}) == len(contexts)


_rq_strategy = st.builds(
    AAssociateRQ,
    called_ae=_ae_titles,
    calling_ae=_ae_titles,
    application_context=_uids,
    presentation_contexts=st.lists(
        st.builds(PresentationContextRQ, _odd_ids, _uids,
                  st.lists(_uids, max_size=4).map(tuple)),
        min_size=1, max_size=5).filter(_unique_ids).map(tuple),
    user_information=_user_information,
    protocol_version=st.integers(0, 65535),
)
_ac_strategy = st.builds(
    AAssociateAC,
    called_ae=_ae_titles,
    calling_ae=_ae_titles,
    application_context=_uids,
    presentation_contexts=st.lists(
        st.builds(PresentationContextAC, _odd_ids, _byte, st.just("") | _uids),
        min_size=1, max_size=5).filter(_unique_ids).map(tuple),
    user_information=_user_information,
    protocol_version=st.integers(0, 65535),
)
_pdata_strategy = st.builds(
    PDataTF,
    st.lists(st.builds(PDV, _odd_ids, _byte, st.binary(max_size=64)),
             min_size=1, max_size=5).map(tuple))
_any_pdu = st.one_of(
    _rq_strategy, _ac_strategy, _pdata_strategy,
    st.builds(AAssociateRJ, _byte, _byte, _byte),
    st.builds(AAbort, _byte, _byte),
    st.just(AReleaseRQ()), st.just(AReleaseRP()),
)


@st.composite
def _mutated_bodies(draw: st.DrawFn) -> tuple[int, bytes]:
    """A valid PDU's type and body, with bytes changed, cut or inserted."""
    data = bytearray(pdu.encode(draw(st.sampled_from(SAMPLES) | _any_pdu)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set", "cut", "insert"]))
        position = draw(st.integers(6, max(6, len(data))))
        if action == "set" and position < len(data):
            data[position] = draw(_byte)
        elif action == "cut":
            del data[position:position + draw(st.integers(1, 8))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return data[0], bytes(data[6:])


class PropertyTests(SynchronousTestCase):
    """Hypothesis properties of the codec."""

    @settings(max_examples=150, deadline=None, database=None)
    @given(_any_pdu)
    def test_roundtrip(self, value: pdu.PDU) -> None:
        """Any well-formed PDU survives encode -> decode unchanged."""
        self.assertEqual(_roundtrip(value), value)

    @settings(max_examples=500, deadline=None, database=None)
    @given(st.integers(0, 255), st.binary(max_size=300))
    def test_arbitrary_bytes(self, pdu_type: int, body: bytes) -> None:
        """decode() of arbitrary bytes returns a PDU or raises PDUDecodeError only."""
        try:
            result = pdu.decode(pdu_type, body)
        except PDUDecodeError:
            return
        self.assertIsInstance(result, pdu.PDU_TYPES[pdu_type])

    @settings(max_examples=400, deadline=None, database=None)
    @given(_mutated_bodies())
    def test_mutated_pdus(self, case: tuple[int, bytes]) -> None:
        """decode() of a damaged valid PDU returns a PDU or raises PDUDecodeError only."""
        pdu_type, body = case
        try:
            result = pdu.decode(pdu_type, body)
        except PDUDecodeError as exc:
            self.assertIn(exc.reason, (1, 4, 5, 6))
            return
        self.assertIsInstance(result, pdu.PDU_TYPES[pdu_type])
