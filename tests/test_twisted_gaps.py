"""sdcc_twisted.runtime.twisted_gaps against the installed Twisted: each test
fails if an upgrade changes what a stand-in for a missing public API uses."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, ssl, tcp
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sdcc_twisted.runtime.twisted_gaps import (
    replace_server_tls_options,
    send_now,
    server_tls_options,
)

from .test_interop_tls import make_pki


class SendNowTests(TestCase):
    """send_now drives a real loopback TCP connection."""

    async def test_bytes_reach_the_socket_before_the_next_turn(self) -> None:
        """Written and handed over with send_now, the bytes are in the peer's
        socket while this code still runs: a blocking recv on the peer, with
        the reactor not turning, gets them.  This fails if tcp.Connection's
        doWrite, producer or disconnecting attributes change meaning."""
        made: defer.Deferred[Any] = defer.Deferred()

        class Server(protocol.Protocol):
            def connectionMade(self) -> None:
                made.callback(self.transport)

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        self.addCleanup(peer.close)
        transport = await made
        self.addCleanup(transport.loseConnection)
        self.assertIsInstance(transport, tcp.Connection)
        self.assertFalse(transport.disconnecting)
        self.assertIsNone(transport.producer)
        transport.write(b"now")
        send_now(transport)
        self.assertEqual(peer.recv(16), b"now")

    async def test_paused_producer_is_left_alone(self) -> None:
        """While a streaming producer is paused, send_now leaves the write to
        the reactor (doWrite would resume the producer from inside it)."""
        made: defer.Deferred[Any] = defer.Deferred()

        class Server(protocol.Protocol):
            def connectionMade(self) -> None:
                made.callback(self.transport)

        class Producer:
            resumed = 0

            def pauseProducing(self) -> None:
                pass

            def resumeProducing(self) -> None:
                self.resumed += 1

            def stopProducing(self) -> None:
                pass

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        self.addCleanup(peer.close)
        transport = await made
        self.addCleanup(transport.loseConnection)
        producer = Producer()
        transport.registerProducer(producer, True)
        self.addCleanup(transport.unregisterProducer)
        transport.write(b"x" * (transport.bufferSize + 1))   # a full buffer pauses it
        self.assertTrue(transport.producerPaused)
        send_now(transport)
        self.assertEqual(producer.resumed, 0)
        peer.setblocking(False)
        self.assertRaises(BlockingIOError, peer.recv, 16)


class ServerTLSOptionsTests(SynchronousTestCase):
    """The options of an ssl: server endpoint string can be read and replaced."""

    def test_read_and_replace(self) -> None:
        """serverFromString("ssl:...") gives an endpoint whose CertificateOptions
        server_tls_options returns, and replace_server_tls_options puts new
        ones in their place; other endpoints give None and refuse."""
        directory = self.mktemp()
        os.makedirs(directory)
        pki = make_pki(directory)
        endpoint = endpoints.serverFromString(
            reactor, f"ssl:0:privateKey={pki['server.key']}:certKey={pki['server.crt']}")
        original = server_tls_options(endpoint)
        self.assertIsInstance(original, ssl.CertificateOptions)
        self.assertIsNotNone(original.privateKey)
        self.assertIsNotNone(original.certificate)
        replacement = ssl.CertificateOptions(privateKey=original.privateKey,
                                             certificate=original.certificate)
        replace_server_tls_options(endpoint, replacement)
        self.assertIs(server_tls_options(endpoint), replacement)
        plain = endpoints.serverFromString(reactor, "tcp:0")
        self.assertIsNone(server_tls_options(plain))
        self.assertRaises(TypeError, replace_server_tls_options, plain, replacement)
