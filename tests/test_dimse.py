"""DIMSE command sets, reassembly and response fragmentation (PS3.7, PS3.8 E)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.dimse import (
    AFFECTED_SOP_INSTANCE_UID,
    ERROR_COMMENT,
    MESSAGE_ID,
    STATUS,
    MessageAssembler,
    decode_command,
    encode_command,
    fragment_message,
    response,
)
from sdcc_twisted.core.errors import DIMSEError
from sdcc_twisted.core.events import CommandReceived, DataFragment
from sdcc_twisted.core.framing import PDUFramer
from sdcc_twisted.core.pdu import PDV, PDataTF, decode

from .support import echo_command, store_command


def pdvs(*items: tuple[int, int, bytes]) -> PDataTF:
    return PDataTF(tuple(PDV(cid, ctl, data) for cid, ctl, data in items))


class CommandSetTests(SynchronousTestCase):
    """Implicit VR Little Endian command sets (PS3.7 6.3.1, E.1)."""

    def test_round_trip(self) -> None:
        """A C-STORE-RQ command set decodes to the values it was built from,
        and the group length is computed, not trusted."""
        command = decode_command(store_command("1.2.3.4", message_id=7))
        self.assertEqual(command.command_field, c.C_STORE_RQ)
        self.assertEqual(command.message_id, 7)
        self.assertEqual(command.affected_sop_instance_uid, "1.2.3.4")
        self.assertTrue(command.has_data_set)
        raw = store_command("1.2.3.4")
        self.assertEqual(int.from_bytes(raw[8:12], "little"), len(raw) - 12)

    def test_matches_pydicom_encoding(self) -> None:
        """Our encoding equals pydicom's Implicit VR LE encoding of the same
        command elements (an independent encoder)."""
        from pydicom.dataset import Dataset
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        ds = Dataset()
        ds.CommandGroupLength = 0
        ds.AffectedSOPClassUID = c.VERIFICATION_SOP_CLASS
        ds.CommandField = c.C_ECHO_RQ
        ds.MessageID = 1
        ds.CommandDataSetType = c.NO_DATA_SET
        body = DicomBytesIO()
        body.is_little_endian, body.is_implicit_VR = True, True
        write_dataset(body, ds)
        ours = echo_command(1)
        self.assertEqual(ours[12:], body.getvalue()[12:])

    def test_data_set_type_values(self) -> None:
        """Only 0x0101 means no data set; 0x0001 and 0x0102 both announce one."""
        for value, expected in ((0x0101, False), (0x0001, True), (0x0102, True)):
            raw = encode_command({0x0100: 1, 0x0800: value})
            self.assertEqual(decode_command(raw).has_data_set, expected, hex(value))

    def test_malformed(self) -> None:
        """Truncated headers, overrunning lengths, foreign groups and wrong
        value sizes raise DIMSEError."""
        good = echo_command()
        cases = [good[:5], good[:-1], b"\x08\x00\x00\x00\x02\x00\x00\x00ab",
                 b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00\x00"]
        for raw in cases:
            self.assertRaises(DIMSEError, decode_command, raw)

    def test_missing_required_elements(self) -> None:
        """A C-STORE-RQ without its SOP Instance UID reports it missing."""
        command = decode_command(store_command("1.2", drop=(AFFECTED_SOP_INSTANCE_UID,)))
        self.assertEqual(command.missing(), [AFFECTED_SOP_INSTANCE_UID])

    def test_response_echoes_request(self) -> None:
        """A response echoes the message ID and UIDs, sets no data set and
        carries a truncated Error Comment."""
        request = decode_command(store_command("1.2.3", message_id=9))
        elements = response(request, c.C_STORE_RSP, 0xA700, "x" * 100)
        decoded = decode_command(encode_command(elements))
        self.assertEqual(decoded.get(0x0120), 9)
        self.assertEqual(decoded.get(STATUS), 0xA700)
        self.assertEqual(decoded.affected_sop_instance_uid, "1.2.3")
        self.assertEqual(len(decoded.get(ERROR_COMMENT)), 64)
        self.assertFalse(decoded.has_data_set)


class AssemblerTests(SynchronousTestCase):
    """PDV reassembly (PS3.8 E.2)."""

    def test_command_split_in_fragments(self) -> None:
        """A command set split over several PDVs (and PDUs) is decoded once whole."""
        raw = echo_command(5)
        assembler = MessageAssembler()
        events = []
        for i in range(len(raw)):
            last = 0x02 if i == len(raw) - 1 else 0
            events += assembler.feed(pdvs((1, 0x01 | last, raw[i:i + 1])))
        self.assertEqual(len(events), 1)
        self.assertIsInstance(events[0], CommandReceived)
        self.assertEqual(events[0].command.get(MESSAGE_ID), 5)
        self.assertFalse(assembler.in_message)

    def test_data_fragments_stream_through(self) -> None:
        """Data set fragments pass through one by one with the last flag,
        without being gathered."""
        assembler = MessageAssembler()
        events = assembler.feed(pdvs((3, 0x03, store_command("1.2")),
                                     (3, 0x00, b"abcd"), (3, 0x00, b"ef")))
        events += assembler.feed(pdvs((3, 0x02, b"gh")))
        frags = [e for e in events if isinstance(e, DataFragment)]
        self.assertEqual([(bytes(f.data), f.last) for f in frags],
                         [(b"abcd", False), (b"ef", False), (b"gh", True)])
        self.assertFalse(assembler.in_message)

    def test_context_switch_inside_message(self) -> None:
        """PDVs that switch presentation context inside a message are refused."""
        assembler = MessageAssembler()
        assembler.feed(pdvs((3, 0x03, store_command("1.2"))))
        self.assertRaises(DIMSEError, assembler.feed, pdvs((5, 0x02, b"ab")))

    def test_data_without_command(self) -> None:
        """A data fragment with no command that announced it is refused."""
        self.assertRaises(DIMSEError, MessageAssembler().feed, pdvs((1, 0x02, b"ab")))

    def test_command_after_command_with_data(self) -> None:
        """A new command where the data set is due is refused."""
        assembler = MessageAssembler()
        assembler.feed(pdvs((1, 0x03, store_command("1.2"))))
        self.assertRaises(DIMSEError, assembler.feed, pdvs((1, 0x03, echo_command())))

    def test_command_length_bounded(self) -> None:
        """A command set that grows past the limit is refused before it is whole."""
        assembler = MessageAssembler(max_command_length=100)
        self.assertRaises(DIMSEError, assembler.feed, pdvs((1, 0x01, b"\x00" * 101)))


class FragmentationTests(SynchronousTestCase):
    """Messages split to fit the peer's Maximum Length (PS3.8 D.1)."""

    def test_fits_peer_limit_and_reassembles(self) -> None:
        """Every PDU's length field is within the peer's limit and the PDUs
        reassemble to the original command and data set."""
        command = store_command("1.2.3.4")
        data = bytes(range(256)) * 200
        for limit in (4096, 16384, 131072):
            stream = b"".join(fragment_message(7, command, data, limit))
            framer = PDUFramer(limit)
            assembler = MessageAssembler()
            events = []
            for pdu_type, body in framer.feed(stream):
                self.assertLessEqual(len(body), limit)
                events += assembler.feed(decode(pdu_type, body))
            self.assertEqual(events[0].command.affected_sop_instance_uid, "1.2.3.4")
            self.assertEqual(b"".join(bytes(e.data) for e in events[1:]), data)
            self.assertTrue(events[-1].last)
