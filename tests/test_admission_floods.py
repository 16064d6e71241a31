"""Admission under floods, with the real server and raw TCP peers.

A burst of associations from one address, and a flood of silent connections
against a server whose file descriptors are limited (``ulimit -n 1024`` in a
child ``twistd``): the caps count only admitted connections, so the first
ones proceed and other peers are still served.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from twisted.trial.unittest import TestCase

from sdcc_twisted.core.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, encode

from . import corpus
from .redis_support import start_redis
from .server_support import TwistdServer, dcmtk, free_port, in_thread, ini_text, start_server
from .support import CT, associate_rq
from .test_hostile import CONTEXTS
from .test_interop_store import check_stored, storescu_successes


def read_pdu_type(sock: socket.socket) -> tuple[int, bytes] | None:
    """The type and body of the next PDU on ``sock``; None when it closed."""
    data = b""
    try:
        while len(data) < 6 or len(data) < 6 + struct.unpack("!BxL", data[:6])[1]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except ConnectionResetError:
        return None
    return data[0], data[6:]


def open_connections(count: int, port: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``count`` TCP connections to the server from ``source``, left silent."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        sockets.append(s)
    return sockets


class FloodTests(TestCase):
    """Caps at accept time, seen from real peers."""

    timeout = 240

    async def test_burst_from_one_address(self) -> None:
        """200 connections from one address, each sending its A-ASSOCIATE-RQ
        (its own calling AE) right after connecting: the first
        max_connections_per_address (32) are accepted, the other 168 get
        2/3/2 at once; the address is not locked out."""
        srv = await start_server(self)
        sockets: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in sockets])

        def burst() -> list[tuple[int, bytes] | None]:
            for n in range(200):
                s, = open_connections(1, srv.port)
                sockets.append(s)
                s.sendall(encode(associate_rq(calling=f"BURST{n:03d}", contexts=CONTEXTS)))
            return [read_pdu_type(s) for s in sockets]

        started = time.monotonic()
        answers = await in_thread(burst)
        elapsed = time.monotonic() - started
        kinds = [a[0] if a else None for a in answers]
        self.assertEqual(kinds, [A_ASSOCIATE_AC] * 32 + [A_ASSOCIATE_RJ] * 168)
        for pdu in answers[32:]:
            self.assertEqual(pdu[1][1:4], bytes([2, 3, 2]))     # result/source/reason
        self.assertLess(elapsed, 10.0)
        for s in sockets[32:]:
            s.close()
        # The 32 admitted connections hold their slots; the refused ones none.
        admission = srv.service.factory.admission
        self.assertEqual(admission.address_count("127.0.0.1"), 32)
        for s in sockets[:32]:
            s.close()

    async def test_silent_flood_with_few_descriptors(self) -> None:
        """A server limited to 1024 descriptors (child twistd, soft and hard
        limit) gets 1100 silent connections from 127.0.0.2: a C-ECHO from
        127.0.0.1 (DCMTK echoscu, after one before the flood) is answered
        within 1 s, and a C-STORE is stored and indexed (journal and index keep
        working); the server's log has no EMFILE."""
        redis = start_redis(self)
        data_dir = os.path.abspath(self.mktemp())
        port = free_port()
        ini = os.path.abspath(self.mktemp()) + ".ini"
        with open(ini, "w") as handle:
            handle.write(ini_text(data_dir, redis.url, port=port))
        server = TwistdServer(self, ini, nofile=1024)
        server.start(port)
        echo = ("echoscu", "-aet", "FLOODCHECK", "-aec", "SDCC", "127.0.0.1", str(port))
        out, code = await dcmtk(self, *echo, timeout=30)     # the first one, before
        self.assertEqual(code, 0, out)
        sockets: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in sockets])
        sockets.extend(await in_thread(open_connections, 1100, port, "127.0.0.2"))

        # DCMTK peers: this process holds 1100 sockets, beyond select()'s reach.
        started = time.monotonic()
        out, code = await dcmtk(self, *echo, timeout=30)
        elapsed = time.monotonic() - started
        self.assertEqual(code, 0, out)
        self.assertLess(elapsed, 1.0)

        sample = corpus.write_small(f"{self.mktemp()}/flood.dcm", CT)
        out, code = await dcmtk(self, "storescu", "-v", "-aet", "FLOODSTORE", "-aec", "SDCC",
                                "127.0.0.1", str(port), sample.path, timeout=30)
        self.assertEqual((code, storescu_successes(out)), (0, 1), out)
        check_stored(self, os.path.join(data_dir, "store"), redis.client(), sample,
                     "FLOODSTORE")
        log = server.log()
        self.assertNotIn("Too many open files", log)
        self.assertNotIn("EMFILE", log)


class ListenBacklogTests(TestCase):
    """The listener's backlog (the kernel queue a burst waits in)."""

    def test_backlog_added_unless_set(self) -> None:
        """tcp, tcp6, ssl and unix endpoint strings get backlog=1024 after
        their own options; one that sets backlog, or a type without one,
        is left as written; Twisted parses the result."""
        from twisted.internet import endpoints, reactor

        from sdcc_twisted.runtime.admission import LISTEN_BACKLOG, with_backlog

        self.assertEqual(with_backlog("tcp:11112:interface=127.0.0.1"),
                         f"tcp:11112:interface=127.0.0.1:backlog={LISTEN_BACKLOG}")
        self.assertEqual(with_backlog("unix:address=/run/sdcc.sock"),
                         f"unix:address=/run/sdcc.sock:backlog={LISTEN_BACKLOG}")
        self.assertEqual(with_backlog("tcp:port=11112:backlog=5"), "tcp:port=11112:backlog=5")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0"),
                         "systemd:domain=INET:index=0")
        endpoints.serverFromString(reactor, with_backlog("tcp6:11112:interface=\\:\\:1"))
