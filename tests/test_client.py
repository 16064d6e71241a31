"""The requestor (runtime.client.StoreClient) on a StringTransport with a
task.Clock: the other end is our own sans-I/O core in the acceptor role."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.config import MoveDestination
from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.negotiation import AcceptorPolicy, negotiate, reject_pdu
from sdcc_twisted.core.part10 import file_meta_bytes
from sdcc_twisted.core.pdu import AAbort, AReleaseRP, AReleaseRQ, encode
from sdcc_twisted.runtime.client import StoreClient, open_store_association
from sdcc_twisted.services.channel import SubAssociationError

from .support import CT, dataset_bytes, message_pdus
from .test_query_retrieve import Peer, store_response

EVRLE = c.EXPLICIT_VR_LITTLE_ENDIAN


class StoreClientTests(SynchronousTestCase):
    """Establishment, C-STORE, release and the timeouts of the requestor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()     # connects and clock
        path = os.path.abspath(self.mktemp())
        self.data_set = dataset_bytes("1.2.7.1")
        with open(path, "wb") as handle:
            handle.write(file_meta_bytes(CT, "1.2.7.1", EVRLE, "SDCC"))
            handle.write(self.data_set)
        self.path = path

    def open(self) -> tuple[Any, Peer, defer.Deferred[Any]]:
        """open_store_association on the fake reactor, up to the
        A-ASSOCIATE-RQ on the wire: the connection (as the endpoint wraps
        it), the other end, and the opening."""
        opening = defer.Deferred.fromCoroutine(open_store_association(
            self.reactor, MoveDestination("DEST", "127.0.0.1", 11113), "SDCC",
            [(CT, EVRLE)], timeout=10))
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        connection = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 11113))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 11113))
        connection.makeConnection(transport)
        peer = Peer(transport)
        peer.read()
        return connection, peer, opening

    def accept(self, connection: Any, peer: Peer,
               opening: defer.Deferred[Any]) -> tuple[StoreClient, int]:
        """Answer the request with an A-ASSOCIATE-AC: the client and the
        accepted context."""
        decision = negotiate(peer.pdus[0], AcceptorPolicy(ae_title="DEST"), "127.0.0.1")
        connection.dataReceived(encode(decision.ac))
        client = self.successResultOf(opening)
        self.assertIsInstance(client, StoreClient)
        return client, next(iter(decision.contexts))

    def test_store_and_release(self) -> None:
        """After the A-ASSOCIATE-AC the client knows the context for CT in
        Explicit VR LE; send_store sends the command and the file's data set
        and fires with the response's status; release sends A-RELEASE-RQ
        and ends when the connection closes."""
        connection, peer, opening = self.open()
        self.assertEqual((peer.pdus[0].calling_ae, peer.pdus[0].called_ae), ("SDCC", "DEST"))
        client, context_id = self.accept(connection, peer, opening)
        self.assertEqual(client.store_context(CT, EVRLE), context_id)
        self.assertIsNone(client.store_context(CT, c.IMPLICIT_VR_LITTLE_ENDIAN))
        status = client.send_store(context_id, CT, "1.2.7.1", self.path, "MOVER", 7)
        peer.read()
        command, data = peer.messages[0]
        self.assertEqual((command.command_field, command.get(0x1030), command.get(0x1031)),
                         (c.C_STORE_RQ, "MOVER", 7))
        self.assertEqual(bytes(data), self.data_set)
        self.assertNoResult(status)
        connection.dataReceived(message_pdus(context_id, store_response(command.message_id or 0,
                                                                    0xB000)))
        self.assertEqual(self.successResultOf(status), 0xB000)
        released = client.release()
        peer.read()
        self.assertIsInstance(peer.pdus[-1], AReleaseRQ)
        connection.dataReceived(encode(AReleaseRP()))
        self.assertTrue(peer.transport.disconnecting)
        connection.connectionLost(None)
        self.successResultOf(released)

    def test_rejected(self) -> None:
        """An A-ASSOCIATE-RJ fails the opening with SubAssociationError
        naming result/source/reason."""
        connection, peer, opening = self.open()
        connection.dataReceived(encode(reject_pdu(c.REJECT_CALLED_AE)))
        failure = self.failureResultOf(opening, SubAssociationError)
        self.assertIn("1/1/7", failure.getErrorMessage())
        connection.connectionLost(None)

    def test_no_answer(self) -> None:
        """A destination that does not answer the A-ASSOCIATE-RQ within the
        timeout is dropped, and the opening fails."""
        connection, peer, opening = self.open()
        self.reactor.advance(9.9)
        self.assertFalse(peer.transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(peer.transport.disconnecting)
        connection.connectionLost(None)
        self.failureResultOf(opening, SubAssociationError)

    def test_response_timeout_and_loss(self) -> None:
        """A C-STORE-RSP that does not come within the timeout fails the
        store (TimeoutError); a store waiting when the connection drops fails
        with SubAssociationError; the peer's A-ABORT drops it."""
        connection, peer, opening = self.open()
        client, context_id = self.accept(connection, peer, opening)
        late = client.send_store(context_id, CT, "1.2.7.1", self.path)
        self.reactor.advance(10.1)
        self.failureResultOf(late, defer.TimeoutError)
        waiting = client.send_store(context_id, CT, "1.2.7.1", self.path)
        connection.dataReceived(encode(AAbort(0, 0)))
        self.assertTrue(peer.transport.disconnecting)
        connection.connectionLost(None)
        self.failureResultOf(waiting, SubAssociationError)
