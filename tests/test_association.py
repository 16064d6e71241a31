"""The sans-I/O facade end to end: bytes in, events and bytes out."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.association import Association
from sdcc_twisted.core.dimse import STATUS, decode_command, response
from sdcc_twisted.core.events import (
    Aborted,
    AssociationRequested,
    CloseTransport,
    CommandReceived,
    DataFragment,
    ReleaseRequested,
    StartARTIM,
    StopARTIM,
)
from sdcc_twisted.core.framing import PDUFramer
from sdcc_twisted.core.negotiation import AcceptorPolicy, negotiate
from sdcc_twisted.core.pdu import AAbort, AAssociateAC, AAssociateRJ, AReleaseRP, AReleaseRQ, PDataTF, decode, encode

from .support import associate_rq, echo_command, message_pdus, pdata, store_command


def parse(stream: bytes) -> list:
    """Decode the PDUs we sent."""
    return [decode(t, b) for t, b in PDUFramer(1 << 22).feed(stream)]


def feed(assoc: Association, data: bytes, one_byte: bool) -> list:
    if not one_byte:
        return assoc.receive_data(data)
    events = []
    for i in range(len(data)):
        events += assoc.receive_data(data[i:i + 1])
    return events


class AcceptorFlowTests(SynchronousTestCase):
    """A whole association, fed whole and one byte at a time."""

    def run_echo_and_store(self, one_byte: bool) -> None:
        assoc = Association()
        self.assertEqual(assoc.connection_made(), [StartARTIM()])
        events = feed(assoc, encode(associate_rq()), one_byte)
        self.assertEqual(type(events[0]), StopARTIM)
        self.assertIsInstance(events[1], AssociationRequested)
        self.assertEqual(assoc.state, "Sta3")
        assoc.accept(negotiate(events[1].request, AcceptorPolicy()))
        (ac,) = parse(assoc.data_to_send())
        self.assertIsInstance(ac, AAssociateAC)
        self.assertEqual(assoc.state, "Sta6")

        events = feed(assoc, message_pdus(1, echo_command(3)), one_byte)
        (cmd,) = events
        self.assertIsInstance(cmd, CommandReceived)
        assoc.send_message(1, response(cmd.command, c.C_ECHO_RSP, 0))
        (rsp,) = parse(assoc.data_to_send())
        self.assertIsInstance(rsp, PDataTF)
        decoded = decode_command(bytes(rsp.pdvs[0].data))
        self.assertEqual((decoded.get(STATUS), decoded.get(0x0120)), (0, 3))

        payload = bytes(range(256)) * 40
        events = feed(assoc, message_pdus(3, store_command("1.2.3"), payload, 1000), one_byte)
        self.assertIsInstance(events[0], CommandReceived)
        frags = [e for e in events if isinstance(e, DataFragment)]
        self.assertEqual(b"".join(bytes(f.data) for f in frags), payload)
        self.assertTrue(frags[-1].last)

        events = feed(assoc, encode(AReleaseRQ()), one_byte)
        self.assertEqual(events, [ReleaseRequested()])
        events = assoc.release_response()
        self.assertEqual(events, [StartARTIM()])
        self.assertIsInstance(parse(assoc.data_to_send())[0], AReleaseRP)
        self.assertEqual(assoc.state, "Sta13")
        assoc.connection_lost()
        self.assertEqual(assoc.state, "Sta1")

    def test_whole(self) -> None:
        """Associate, echo, store and release with each PDU fed whole."""
        self.run_echo_and_store(one_byte=False)

    def test_one_byte_at_a_time(self) -> None:
        """The same association fed one byte at a time gives the same result."""
        self.run_echo_and_store(one_byte=True)

    def test_reject(self) -> None:
        """Rejecting sends the A-ASSOCIATE-RJ and starts ARTIM in Sta13."""
        assoc = Association()
        assoc.connection_made()
        assoc.receive_data(encode(associate_rq()))
        events = assoc.reject(AAssociateRJ(2, 3, 2))
        self.assertEqual(events, [StartARTIM()])
        self.assertEqual(parse(assoc.data_to_send()), [AAssociateRJ(2, 3, 2)])
        self.assertEqual(assoc.state, "Sta13")
        self.assertEqual(assoc.timer_expired(), [StopARTIM(), CloseTransport()])

    def test_protocol_version_rejected_by_provider(self) -> None:
        """A request without bit 0 of the protocol version is rejected 1/2/2
        by the upper layer itself (AE-6)."""
        assoc = Association()
        assoc.connection_made()
        assoc.receive_data(encode(associate_rq(protocol_version=2)))
        self.assertEqual(parse(assoc.data_to_send()), [AAssociateRJ(1, 2, 2)])
        self.assertEqual(assoc.state, "Sta13")


class MalformedInputTests(SynchronousTestCase):
    """Malformed bytes become an A-ABORT, never an exception."""

    def established(self) -> Association:
        assoc = Association()
        assoc.connection_made()
        (_, req) = assoc.receive_data(encode(associate_rq()))
        assoc.accept(negotiate(req.request, AcceptorPolicy()))
        assoc.data_to_send()
        return assoc

    def assert_aborted(self, assoc: Association, events: list, reason: int) -> None:
        aborts = [e for e in events if isinstance(e, Aborted)]
        self.assertEqual(len(aborts), 1, events)
        self.assertEqual(parse(assoc.data_to_send()), [AAbort(2, reason)])
        self.assertEqual(assoc.state, "Sta13")
        self.assertIn(StartARTIM(), events)

    def test_unknown_pdu_type(self) -> None:
        """An unknown PDU type aborts with unrecognized-PDU as soon as its
        header is in."""
        assoc = self.established()
        events = assoc.receive_data(b"\x09\x00\x00\x00\x00\x04")
        self.assert_aborted(assoc, events, c.ABORT_UNRECOGNIZED_PDU)

    def test_oversized_declared_length(self) -> None:
        """A P-DATA-TF declaring 0xFFFFFFF0 bytes aborts before any body arrives."""
        assoc = self.established()
        events = assoc.receive_data(b"\x04\x00\xff\xff\xff\xf0")
        self.assert_aborted(assoc, events, c.ABORT_INVALID_PDU_PARAMETER_VALUE)

    def test_garbage_before_association(self) -> None:
        """Garbage in Sta2 aborts (AA-1) and starts ARTIM."""
        assoc = Association()
        assoc.connection_made()
        events = assoc.receive_data(b"GET / HTTP/1.1\r\n\r\n")
        self.assertIn(StartARTIM(), events)
        self.assertEqual(assoc.state, "Sta13")
        self.assertEqual(len(parse(assoc.data_to_send())), 1)

    def test_pdata_before_association(self) -> None:
        """P-DATA in Sta2 is answered with an A-ABORT (AA-1)."""
        assoc = Association()
        assoc.connection_made()
        assoc.receive_data(pdata(1, 0x03, echo_command()))
        self.assertIsInstance(parse(assoc.data_to_send())[0], AAbort)
        self.assertEqual(assoc.state, "Sta13")

    def test_bad_pdv_length(self) -> None:
        """A PDV item length that runs past its PDU aborts the association."""
        assoc = self.established()
        bad = b"\x04\x00\x00\x00\x00\x08" + b"\x00\x00\x00\x40\x01\x03ab"
        events = assoc.receive_data(bad)
        self.assertTrue(any(isinstance(e, Aborted) for e in events))
        self.assertEqual(assoc.state, "Sta13")

    def test_context_switch_aborts(self) -> None:
        """A message whose PDVs switch presentation context aborts."""
        assoc = self.established()
        events = assoc.receive_data(pdata(3, 0x03, store_command("1.2"))
                                    + pdata(1, 0x02, b"ab"))
        self.assert_aborted(assoc, events, c.ABORT_UNEXPECTED_PDU_PARAMETER)

    def test_bad_pdv_after_last_fragment_delivers_nothing(self) -> None:
        """A P-DATA-TF whose first PDV ends a data set and whose second is
        on another context aborts without delivering that last fragment, so
        the instance is never completed (the whole PDU is refused)."""
        from sdcc_twisted.core.pdu import PDV, PDataTF as PData

        assoc = self.established()
        events = assoc.receive_data(pdata(3, 0x03, store_command("1.2"))
                                    + pdata(3, 0x00, b"\x08\x00"))
        self.assertEqual(len([e for e in events if isinstance(e, DataFragment)]), 1)
        pdu = encode(PData((PDV(3, 0x02, b"\x10\x00"), PDV(1, 0x00, b"xy"))))
        events = assoc.receive_data(pdu)
        self.assertEqual([e for e in events if isinstance(e, DataFragment)], [])
        self.assert_aborted(assoc, events, c.ABORT_UNEXPECTED_PDU_PARAMETER)

    def test_nothing_after_failure(self) -> None:
        """After a framing failure further bytes are ignored, not parsed."""
        assoc = self.established()
        assoc.receive_data(b"\x09\x00\x00\x00\x00\x00")
        assoc.data_to_send()
        self.assertEqual(assoc.receive_data(encode(AReleaseRQ())), [])

    def test_associate_rq_in_sta13(self) -> None:
        """An A-ASSOCIATE-RQ after the association ended gets an A-ABORT (AA-7)."""
        assoc = self.established()
        assoc.abort()
        assoc.data_to_send()
        assoc.receive_data(encode(associate_rq()))
        self.assertIsInstance(parse(assoc.data_to_send())[0], AAbort)
        self.assertEqual(assoc.state, "Sta13")
