"""The Twisted adapter on StringTransport and task.Clock: timers, limits, aborts."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.dimse import ERROR_COMMENT, STATUS, decode_command
from sdcc_twisted.core.framing import PDUFramer
from sdcc_twisted.storage.index import IInstanceIndex
from sdcc_twisted.storage.journal import PendingJournal
from sdcc_twisted.storage.locks import IAssociationLock, InProcessAssociationLock
from sdcc_twisted.core.negotiation import AcceptorPolicy
from sdcc_twisted.core.pdu import AAbort, AAssociateAC, AAssociateRJ, AReleaseRP, AReleaseRQ, PDataTF, decode, encode
from sdcc_twisted.runtime.admission import REFUSED_GRACE, REFUSED_WAITING, Admission
from sdcc_twisted.runtime.dispatch import service_table
from sdcc_twisted.runtime.protocol import DicomServerFactory, Timeouts
from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.services.scp import StorageSCP
from sdcc_twisted.storage.files import FileStore
from sdcc_twisted.storage.serial import DiskWorkers

from .support import associate_rq, dataset_bytes, echo_command, message_pdus, store_command


@implementer(IInstanceIndex)
class RecordingIndex:
    """An in-memory IInstanceIndex for adapter tests (Redis has its own tests)."""

    def __init__(self) -> None:
        self.records: dict[str, InstanceRecord] = {}
        self.fail = False

    def record(self, rec: InstanceRecord) -> "defer.Deferred[str | None]":
        if self.fail:
            return defer.fail(ConnectionError("index down"))
        old = self.records.get(rec.sop_instance_uid)
        self.records[rec.sop_instance_uid] = rec
        return defer.succeed(old.path if old and old.path != rec.path else None)

    def get(self, sop_instance_uid: str) -> Any:
        rec = self.records.get(sop_instance_uid)
        return defer.succeed(None if rec is None else {"path": rec.path})

    def remove(self, sop_instance_uid: str) -> Any:
        self.records.pop(sop_instance_uid, None)
        return defer.succeed(None)


def parse(data: bytes) -> list:
    return [decode(t, b) for t, b in PDUFramer(1 << 22).feed(data)]


class HeldPool:
    """A disk worker pool whose jobs wait until :meth:`run` (a disk that
    has not answered yet)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...]]] = []

    def callInThread(self, fn: Any, *args: Any) -> None:  # noqa: N802 - ThreadPool's name
        self.jobs.append((fn, args))

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for fn, args in jobs:
            fn(*args)


class ProtocolTestBase(TestCase):
    """A factory on a task.Clock with a real FileStore in a temp directory."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.root = self.mktemp()
        self.store = FileStore(self.root, fsync=False)
        self.index = RecordingIndex()
        self.journal = PendingJournal(self.mktemp())
        self.lock = InProcessAssociationLock()
        self.storage = StorageSCP(self.store, self.index, self.journal,
                                  lambda fn, *a: defer.maybeDeferred(fn, *a), self.clock)
        self.factory = DicomServerFactory(
            Admission(AcceptorPolicy(), self.lock, max_associations=3),
            service_table(self.storage), self.clock, timeouts=Timeouts(artim=30, idle=300))

    def connect(self, port: int = 40000) -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        proto.makeConnection(transport)
        return proto, transport

    def associate(self, calling: str = "PEER", port: int = 40000) -> tuple[Any, StringTransport]:
        proto, transport = self.connect(port)
        proto.dataReceived(encode(associate_rq(calling=calling)))
        return proto, transport

    def sent(self, transport: StringTransport) -> list:
        data = transport.value()
        transport.clear()
        return parse(data)

    def close(self, proto: Any, transport: StringTransport) -> None:
        transport.loseConnection()
        proto.connectionLost(None)


class EstablishmentTests(ProtocolTestBase):
    """ARTIM, the per-AE rule and the association cap."""

    def test_index_fake_is_complete(self) -> None:
        """The in-memory index used here provides the whole IInstanceIndex."""
        verifyObject(IInstanceIndex, self.index)
        verifyObject(IAssociationLock, self.lock)

    def test_accept_and_echo(self) -> None:
        """An A-ASSOCIATE-RQ is accepted and a C-ECHO answered 0x0000."""
        proto, transport = self.associate()
        (ac,) = self.sent(transport)
        self.assertIsInstance(ac, AAssociateAC)
        proto.dataReceived(message_pdus(1, echo_command(4)))
        (rsp,) = self.sent(transport)
        command = decode_command(bytes(rsp.pdvs[0].data))
        self.assertEqual((command.get(STATUS), command.command_field), (0, c.C_ECHO_RSP))

    def test_artim_closes_silent_connection(self) -> None:
        """A connection that sends no A-ASSOCIATE-RQ is closed when ARTIM expires."""
        proto, transport = self.connect()
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_artim_after_release(self) -> None:
        """After the A-RELEASE-RP, ARTIM closes the transport if the peer does not."""
        proto, transport = self.associate()
        proto.dataReceived(encode(AReleaseRQ()))
        self.assertIsInstance(self.sent(transport)[-1], AReleaseRP)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(31)
        self.assertTrue(transport.disconnecting)

    def test_second_association_same_ae(self) -> None:
        """A second association from the same calling AE gets 2/3/2 while the
        first is open; another AE is accepted at the same time; the slot
        frees the moment the first transport closes."""
        first, t1 = self.associate("CT1", 1)
        self.assertIsInstance(self.sent(t1)[0], AAssociateAC)
        second, t2 = self.associate("CT1", 2)
        self.assertEqual(self.sent(t2), [AAssociateRJ(2, 3, 2)])
        other, t3 = self.associate("MR1", 3)
        self.assertIsInstance(self.sent(t3)[0], AAssociateAC)
        self.close(first, t1)
        again, t4 = self.associate("CT1", 4)
        self.assertIsInstance(self.sent(t4)[0], AAssociateAC)

    def test_total_cap(self) -> None:
        """Beyond max_associations, an association is rejected 2/3/2."""
        for n in range(3):
            _, t = self.associate(f"AE{n}", n)
            self.assertIsInstance(self.sent(t)[0], AAssociateAC)
        _, t = self.associate("AE9", 9)
        self.assertEqual(self.sent(t), [AAssociateRJ(2, 3, 2)])

    def test_connections_per_address(self) -> None:
        """Beyond max_connections_per_address from one peer address, an
        association is rejected 2/3/2; another address is still accepted."""
        self.factory.admission.max_connections_per_address = 2
        self.factory.admission.max_associations = 10
        for n in range(2):
            _, t = self.associate(f"AE{n}", n)
            self.assertIsInstance(self.sent(t)[0], AAssociateAC)
        _, t = self.associate("AE5", 5)
        self.assertEqual(self.sent(t), [AAssociateRJ(2, 3, 2)])
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 9))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.2", 9))
        proto.makeConnection(transport)
        proto.dataReceived(encode(associate_rq(calling="AE6")))
        self.assertIsInstance(self.sent(transport)[0], AAssociateAC)

    def test_refused_connections_never_count(self) -> None:
        """Admission at accept time: over max_connections_per_address the
        connection is refused and never counts, so the first connections of
        a burst (each with its own calling AE) are accepted, the rest get
        2/3/2 at once; once an admitted one closes, the next is admitted."""
        self.factory.admission.max_connections_per_address = 2
        self.factory.admission.max_associations = 10
        burst = [self.connect(40000 + n) for n in range(6)]
        for n, (proto, transport) in enumerate(burst):
            proto.dataReceived(encode(associate_rq(calling=f"AE{n}")))
        answers = [type(self.sent(t)[0]) for _, t in burst]
        self.assertEqual(answers, [AAssociateAC] * 2 + [AAssociateRJ] * 4)
        self.assertEqual(self.factory.admission.address_count("127.0.0.1"), 2)
        self.assertEqual(len(self.factory.connections), 2)
        for proto, transport in burst[2:]:
            self.close(proto, transport)
        self.assertEqual(self.factory.admission.refused, set())
        self.close(*burst[0])
        _, t = self.associate("AE9", 40009)
        self.assertIsInstance(self.sent(t)[0], AAssociateAC)

    def test_total_connection_cap_at_accept(self) -> None:
        """Over max_connections the request is answered 2/3/2 before the
        lock is asked; a silent refused connection is closed after the short
        REFUSED_GRACE (not ARTIM), and it is counted in the metrics."""
        self.factory.admission.max_connections = 1
        self.associate("AE1", 40001)
        proto, transport = self.associate("AE2", 40002)
        self.assertEqual(self.sent(transport), [AAssociateRJ(2, 3, 2)])
        self.assertEqual(self.lock.held(), frozenset({"AE1"}))
        self.close(proto, transport)
        silent, st = self.connect(40003)
        self.clock.advance(REFUSED_GRACE - 0.1)
        self.assertFalse(st.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(st.disconnecting)
        self.assertEqual(self.factory.monitor.registry.get_sample_value(
            "sdcc_connections_refused_total", {"limit": "max_connections"}), 2)

    def test_refusals_logged_once_per_interval(self) -> None:
        """Connections refused at accept time give one warning per cap per
        10 s, naming the cap, the count since the last line and the key."""
        lines: list[str] = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.factory.admission.max_connections = 1
        self.connect(40000)
        for n in range(5):       # the first waits for its request, the others are closed
            self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001 + n))
        self.clock.advance(11)
        self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40009))
        refusing = [line for line in lines if "refusing connections" in line]
        self.assertEqual(len(refusing), 2, refusing)
        self.assertIn("max_connections=1 reached (1 refused", refusing[0])
        self.assertIn("max_connections=1 reached (5 refused", refusing[1])
        self.assertIn("raise [server] max_connections", refusing[1])

    def test_refused_beyond_waiting_are_dropped_at_once(self) -> None:
        """More than REFUSED_WAITING refused connections waiting at once: the
        next refused one is aborted at once (a flood cannot hold descriptors);
        the admitted one is unaffected."""
        self.factory.admission.max_connections_per_address = 1
        admitted, at = self.connect(40000)
        waiting = [self.connect(41000 + n) for n in range(REFUSED_WAITING)]
        self.assertFalse(any(t.disconnecting for _, t in waiting))
        self.assertIsNone(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 42000)))
        self.assertEqual(len(self.factory.admission.refused), REFUSED_WAITING)
        self.assertFalse(at.disconnecting)
        admitted.dataReceived(encode(associate_rq(calling="AE1")))
        self.assertIsInstance(self.sent(at)[0], AAssociateAC)

    def test_rejected_by_policy(self) -> None:
        """A wrong application context is rejected 1/1/2 and does not take a slot."""
        proto, transport = self.connect()
        proto.dataReceived(encode(associate_rq(application_context="1.2.3")))
        self.assertEqual(self.sent(transport), [AAssociateRJ(1, 1, 2)])
        self.assertEqual(self.factory.admission.association_count(), 0)
        self.assertEqual(self.lock.held(), frozenset())

    def test_lock_answer_after_close(self) -> None:
        """If the peer goes away while the lock is asked, the slot is given back."""
        pending: defer.Deferred = defer.Deferred()

        @implementer(IAssociationLock)
        class SlowLock:
            released: list = []

            def acquire(self, ae: str) -> defer.Deferred:
                return pending

            def release(self, ae: str, token: object) -> defer.Deferred:
                self.released.append((ae, token))
                return defer.succeed(None)

        slow = SlowLock()
        self.factory.admission.lock = slow
        proto, transport = self.associate("CT1")
        self.close(proto, transport)
        token = object()
        pending.callback(token)
        self.assertEqual(slow.released, [("CT1", token)])


    def test_lock_failure_is_congestion(self) -> None:
        """A per-AE lock that fails is logged and answered 2/3/1 (temporary
        congestion); the refused association holds no slot."""
        @implementer(IAssociationLock)
        class BrokenLock:
            def acquire(self, ae: str) -> defer.Deferred:
                return defer.fail(RuntimeError("lock store down"))

            def release(self, ae: str, token: object) -> defer.Deferred:
                return defer.succeed(None)

        self.factory.admission.lock = BrokenLock()
        proto, transport = self.associate("CT1")
        self.assertEqual(self.sent(transport), [AAssociateRJ(2, 3, 1)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.factory.admission.association_count(), 0)


class TimeoutAndAbortTests(ProtocolTestBase):
    """Idle timeout, peer aborts and our own errors."""

    def test_idle_association_aborted(self) -> None:
        """An established association silent for idle_timeout gets an A-ABORT,
        and ARTIM then closes the transport."""
        proto, transport = self.associate()
        self.sent(transport)
        self.clock.advance(200)
        proto.dataReceived(message_pdus(1, echo_command()))
        self.sent(transport)
        self.clock.advance(200)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(101)
        self.assertEqual(self.sent(transport), [AAbort(0, 0)])
        self.clock.advance(31)
        self.assertTrue(transport.disconnecting)

    def test_internal_error_becomes_abort(self) -> None:
        """An exception in our own code sends an A-ABORT, closes, logs, and the
        factory keeps serving new connections."""
        def broken(command: Any) -> Any:
            raise RuntimeError("boom")
        self.factory.services[c.C_ECHO_RQ].echo = broken  # type: ignore[attr-defined]
        proto, transport = self.associate()
        self.sent(transport)
        proto.dataReceived(message_pdus(1, echo_command()))
        self.assertIsInstance(self.sent(transport)[-1], AAbort)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.close(proto, transport)
        self.assertEqual(self.lock.held(), frozenset())

    def test_unaccepted_context(self) -> None:
        """A message on a presentation context that was not accepted aborts."""
        proto, transport = self.associate()
        self.sent(transport)
        proto.dataReceived(message_pdus(99, echo_command()))
        self.assertIsInstance(self.sent(transport)[-1], AAbort)


class SendNowTests(ProtocolTestBase):
    """Responses are handed to a TCP socket in the turn that made them."""

    async def test_response_written_inside_data_received(self) -> None:
        """Over a real loopback TCP connection the C-ECHO-RSP leaves through
        the connection's doWrite while the request is still being handled,
        not on the reactor's next turn, and the peer receives it whole."""
        from twisted.internet import protocol as tx_protocol
        from twisted.internet import reactor

        servers: list[Any] = []
        build = self.factory.buildProtocol

        def capture(addr: Any) -> Any:
            proto = build(addr)
            servers.append(proto)
            return proto

        self.factory.buildProtocol = capture   # type: ignore[method-assign]
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        received = bytearray()
        answered: defer.Deferred[None] = defer.Deferred()

        class Peer(tx_protocol.Protocol):
            def connectionMade(self) -> None:
                self.transport.write(encode(associate_rq(calling="NOWPEER")))

            def dataReceived(self, data: bytes) -> None:
                received.extend(data)
                pdus = parse(bytes(received))
                if len(pdus) == 1 and isinstance(pdus[0], AAssociateAC):
                    received.clear()
                    self.transport.write(message_pdus(1, echo_command(5)))
                elif pdus and isinstance(pdus[0], PDataTF) and not answered.called:
                    answered.callback(None)

        client = await tx_protocol.ClientCreator(reactor, Peer).connectTCP(
            "127.0.0.1", port.getHost().port)
        (server,) = servers
        inside = [False]
        during: list[bool] = []
        original_receive = server.dataReceived
        original_write = server.transport.doWrite

        def receive(data: bytes) -> None:
            inside[0] = True
            try:
                original_receive(data)
            finally:
                inside[0] = False

        def do_write() -> Any:
            during.append(inside[0])
            return original_write()

        server.dataReceived = receive
        server.transport.doWrite = do_write
        await answered
        (rsp,) = parse(bytes(received))
        self.assertEqual(decode_command(bytes(rsp.pdvs[0].data)).get(STATUS), 0)
        self.assertTrue(during and during[0], during)
        client.transport.loseConnection()
        await task.deferLater(reactor, 0.05, lambda: None)

    def test_not_through_a_wrapper(self) -> None:
        """A transport that is not the TCP connection itself (a TLS wrapper
        forwards doWrite to the connection under it) is left to the
        reactor."""
        from sdcc_twisted.runtime.twisted_gaps import send_now

        calls: list[str] = []

        class Wrapper:
            disconnecting = False
            producer = None

            def doWrite(self) -> None:
                calls.append("doWrite")

        send_now(Wrapper())
        self.assertEqual(calls, [])


class StoreTests(ProtocolTestBase):
    """C-STORE through the adapter into the file store."""

    def send_store(self, proto: Any, transport: StringTransport, uid: str, data: bytes,
              **kwargs: Any) -> Any:
        proto.dataReceived(message_pdus(3, store_command(uid, **kwargs), data, 4000))
        (rsp,) = self.sent(transport)
        return decode_command(bytes(rsp.pdvs[0].data))

    def test_store_success(self) -> None:
        """A C-STORE lands as a file and in the index before 0x0000 is sent."""
        proto, transport = self.associate()
        self.sent(transport)
        data = dataset_bytes("1.2.3.4.5", pixels=b"\x01\x02" * 5000)
        command = self.send_store(proto, transport, "1.2.3.4.5", data)
        self.assertEqual(command.get(STATUS), 0)
        rec = self.index.records["1.2.3.4.5"]
        with open(rec.path, "rb") as handle:
            self.assertTrue(handle.read().endswith(data))

    def _captured(self, level: str) -> list[dict[str, Any]]:
        """Events that reach the global log publisher with sdcc at ``level``."""
        from twisted.logger import globalLogPublisher

        from sdcc_twisted import logs

        events: list[dict[str, Any]] = []
        logs.set_level(level)
        self.addCleanup(logs.set_level, "info")
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def _store_two(self) -> list[dict[str, Any]]:
        """Store one good and one mismatched instance, then release."""
        proto, transport = self.associate(calling="LOGGER")
        self.sent(transport)
        self.send_store(proto, transport, "1.2.3.21", dataset_bytes("1.2.3.21"))
        self.send_store(proto, transport, "1.2.3.22", dataset_bytes("1.2.3.99"))
        proto.dataReceived(encode(AReleaseRQ()))
        self.close(proto, transport)

    def test_instance_lines_at_info(self) -> None:
        """At the default level a stored instance costs no log line of its
        own; a refused one is a warning with its UID, status and Error
        Comment; the association's line counts both."""
        from twisted.logger import LogLevel, formatEvent

        events = self._captured("info")
        self._store_two()
        texts = [formatEvent(e) for e in events]
        self.assertFalse([t for t in texts if "1.2.3.21" in t], texts)
        (refused,) = [e for e in events if "1.2.3.22" in formatEvent(e)]
        self.assertEqual(refused["log_level"], LogLevel.warn)
        self.assertIn("not stored", formatEvent(refused))
        self.assertIn("status=0xA900", formatEvent(refused))
        self.assertIn("differs from command", formatEvent(refused))
        (summary,) = [t for t in texts if t.startswith("association peer=")]
        self.assertIn("calling_ae=LOGGER", summary)
        self.assertIn("stored=1 failed=1", summary)

    def test_instance_lines_at_debug(self) -> None:
        """With [logging] level = debug every stored instance has its line:
        calling AE, SOP class name, UID, bytes and status."""
        from twisted.logger import LogLevel, formatEvent

        events = self._captured("debug")
        self._store_two()
        (stored,) = [e for e in events if "1.2.3.21" in formatEvent(e)]
        self.assertEqual(stored["log_level"], LogLevel.debug)
        text = formatEvent(stored)
        self.assertTrue(text.startswith("stored calling_ae=LOGGER sop_class="), text)
        self.assertIn("status=0x0000", text)

    def test_warn_level_hides_info(self) -> None:
        """[logging] level = warn keeps sdcc's info lines (the association
        line) out of every log, and still lets the refusal through."""
        from twisted.logger import formatEvent

        events = self._captured("warn")
        self._store_two()
        texts = [formatEvent(e) for e in events]
        self.assertFalse([t for t in texts if t.startswith("association ")], texts)
        self.assertTrue([t for t in texts if "1.2.3.22" in t], texts)

    def test_release_not_stuck_when_old_copy_cannot_be_removed(self) -> None:
        """An instance that moved to another series is stored and indexed;
        if removing its old copy fails (the thread pool refuses the work),
        the answer is a failure with an Error Comment, and the release that
        follows still gets its A-RELEASE-RP."""
        refuse = [False]

        def run_blocking(fn: Any, *args: Any) -> Any:
            if refuse[0]:
                return defer.fail(RuntimeError("thread pool stopped"))
            return defer.maybeDeferred(fn, *args)

        self.storage.run_blocking = run_blocking
        proto, transport = self.associate()
        self.sent(transport)
        first = self.send_store(proto, transport, "1.2.3.31",
                                dataset_bytes("1.2.3.31", series="1.2.3.77"))
        self.assertEqual(first.get(STATUS), 0)
        refuse[0] = True
        moved = self.send_store(proto, transport, "1.2.3.31",
                                dataset_bytes("1.2.3.31", series="1.2.3.78"))
        self.assertEqual(moved.get(STATUS), c.STATUS_PROCESSING_FAILURE)
        self.assertTrue(moved.get(ERROR_COMMENT))
        self.assertIn("1.2.3.78", self.index.records["1.2.3.31"].path)
        proto.dataReceived(encode(AReleaseRQ()))
        self.assertIsInstance(self.sent(transport)[-1], AReleaseRP)
        self.flushLoggedErrors(RuntimeError)

    def test_mismatched_uid(self) -> None:
        """A data set whose SOP Instance UID differs from the command's gets
        0xA900 with an Error Comment, and nothing is stored."""
        proto, transport = self.associate()
        self.sent(transport)
        command = self.send_store(proto, transport, "1.2.3.9", dataset_bytes("1.2.3.4"))
        self.assertEqual(command.get(STATUS), c.STATUS_DATASET_MISMATCH)
        self.assertTrue(command.get(ERROR_COMMENT))
        self.assertEqual(self.index.records, {})

    def test_index_down_is_journaled(self) -> None:
        """With the index failing, the instance is still acknowledged and
        waits in the journal."""
        self.index.fail = True
        proto, transport = self.associate()
        self.sent(transport)
        command = self.send_store(proto, transport, "1.2.3.7", dataset_bytes("1.2.3.7"))
        self.assertEqual(command.get(STATUS), 0)
        self.assertEqual([r.sop_instance_uid for _, r in self.journal.entries()], ["1.2.3.7"])
        self.flushLoggedErrors()

    def test_abort_mid_transfer_leaves_nothing(self) -> None:
        """An A-ABORT in the middle of a data set leaves no file behind."""
        import os
        proto, transport = self.associate()
        self.sent(transport)
        data = dataset_bytes("1.2.3.8", pixels=b"\x00" * 40000)
        stream = message_pdus(3, store_command("1.2.3.8"), data, 4000)
        proto.dataReceived(stream[:len(stream) // 2])
        proto.dataReceived(encode(AAbort(0, 0)))
        self.close(proto, transport)
        leftovers = [os.path.join(d, f) for d, _, fs in os.walk(self.root) for f in fs]
        self.assertEqual(leftovers, [])

    def test_missing_command_elements(self) -> None:
        """A C-STORE-RQ without its SOP Instance UID gets a failure status that
        names the missing element."""
        proto, transport = self.associate()
        self.sent(transport)
        command = self.send_store(proto, transport, "1.2.3", dataset_bytes("1.2.3"), drop=(0x1000,))
        self.assertNotEqual(command.get(STATUS), 0)
        self.assertIn("1000", command.get(ERROR_COMMENT))

    def test_release_waits_for_pending_store(self) -> None:
        """An A-RELEASE-RQ that arrives while a store is being committed is
        answered after the C-STORE-RSP."""
        held = HeldPool()
        self.factory.disk = DiskWorkers(held, lambda fn, *a: fn(*a))
        self.store.fsync = True
        proto, transport = self.associate()
        self.sent(transport)
        proto.dataReceived(message_pdus(3, store_command("1.2.3.6"), dataset_bytes("1.2.3.6")))
        proto.dataReceived(encode(AReleaseRQ()))
        self.assertEqual(self.sent(transport), [])
        held.run()
        pdus = self.sent(transport)
        self.assertEqual([type(p) for p in pdus], [PDataTF, AReleaseRP])
