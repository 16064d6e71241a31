"""Query/Retrieve and the catalog without sockets: the acceptor on a
StringTransport with a task.Clock, the index in a real redis-server, and the
C-MOVE sub-association on a MemoryReactorClock."""

from __future__ import annotations

import os
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import TestCase

from sdcc_twisted.config import MoveDestination
from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.dimse import (
    AFFECTED_SOP_CLASS_UID,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    MOVE_DESTINATION,
    NUMBER_OF_COMPLETED,
    NUMBER_OF_FAILED,
    PRIORITY,
    STATUS,
    Command,
    MessageAssembler,
    encode_command,
)
from sdcc_twisted.core.events import CommandReceived, DataFragment
from sdcc_twisted.core.framing import PDUFramer
from sdcc_twisted.core.negotiation import AcceptorPolicy
from sdcc_twisted.core.part10 import file_meta_bytes
from sdcc_twisted.core.index_keys import KeyLayout, record_commands
from sdcc_twisted.core.pdu import (
    AAssociateAC,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    RoleSelection,
    UserInformation,
    decode,
    encode,
)
from sdcc_twisted.runtime.admission import Admission
from sdcc_twisted.runtime.dispatch import service_table
from sdcc_twisted.runtime.protocol import DicomServerFactory, Timeouts
from sdcc_twisted.services.qr import QueryRetrieveSCP
from sdcc_twisted.services.scp import StorageSCP
from sdcc_twisted.storage.catalog import RedisCatalog
from sdcc_twisted.storage.files import FileStore
from sdcc_twisted.storage.index import IndexUnavailable, RedisIndex
from sdcc_twisted.storage.journal import PendingJournal
from sdcc_twisted.storage.locks import InProcessAssociationLock

from .redis_support import connect, start_redis
from .support import CT, associate_rq, dataset_bytes, message_pdus
from .test_index import _Never, make_record
from .test_protocol import RecordingIndex

IVRLE = c.IMPLICIT_VR_LITTLE_ENDIAN
EVRLE = c.EXPLICIT_VR_LITTLE_ENDIAN
PENDING = (0xFF00, 0xFF01)


def identifier(level: str, **keys: str) -> bytes:
    """A Q/R identifier in Implicit VR Little Endian."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = True
    write_dataset(out, ds)
    return out.getvalue()


def request(field: int, sop_class: str, message_id: int = 1,
            destination: str | None = None) -> bytes:
    """An encoded C-FIND/C-MOVE/C-GET-RQ command set with a data set."""
    elements: dict[int, Any] = {AFFECTED_SOP_CLASS_UID: sop_class, COMMAND_FIELD: field,
                                MESSAGE_ID: message_id, PRIORITY: 0,
                                COMMAND_DATA_SET_TYPE: 0x0001}
    if destination is not None:
        elements[MOVE_DESTINATION] = destination
    return encode_command(elements)


def store_response(message_id: int, status: int = 0) -> bytes:
    """An encoded C-STORE-RSP."""
    return encode_command({AFFECTED_SOP_CLASS_UID: CT, COMMAND_FIELD: c.C_STORE_RSP,
                           MESSAGE_ID_BEING_RESPONDED_TO: message_id, STATUS: status,
                           COMMAND_DATA_SET_TYPE: c.NO_DATA_SET})


class Peer:
    """The other end of a StringTransport: what it received, as PDUs and
    DIMSE messages (command, data set bytes)."""

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport
        self.framer = PDUFramer(1 << 22)
        self.assembler = MessageAssembler()
        self.pdus: list[Any] = []
        self.messages: list[tuple[Command, bytearray]] = []

    def read(self) -> None:
        """Decode what arrived since the last read."""
        data = self.transport.value()
        self.transport.clear()
        for pdu_type, body in self.framer.feed(data):
            pdu = decode(pdu_type, bytes(body))
            self.pdus.append(pdu)
            if isinstance(pdu, PDataTF):
                for event in self.assembler.feed(pdu):
                    if isinstance(event, CommandReceived):
                        self.messages.append((event.command, bytearray()))
                    elif isinstance(event, DataFragment):
                        self.messages[-1][1].extend(event.data)

    async def until(self, done: Any, what: str, turns: int = 500) -> None:
        """Let the reactor run (Redis answers) until ``done()``, bounded."""
        for _ in range(turns):
            self.read()
            if done():
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"no {what} after {turns} reactor turns")

    def final(self) -> Command | None:
        """The last message if it is a final (not pending) response."""
        if self.messages and self.messages[-1][0].get(STATUS) not in PENDING:
            return self.messages[-1][0]
        return None


class HeldCatalog:
    """The real catalog, whose first ``members`` answer waits for
    :meth:`release`: a C-CANCEL can then come in between, every time."""

    def __init__(self, catalog: RedisCatalog) -> None:
        self.catalog = catalog
        self.first: defer.Deferred[None] = defer.Deferred()
        self.asked = False

    def release(self) -> None:
        """Let the first look-up answer."""
        self.first.callback(None)

    def page(self, level: str, parent: str | None,
             cursor: int = 0) -> "defer.Deferred[tuple[int, list[str]]]":
        gate = defer.succeed(None) if self.asked else self.first
        self.asked = True
        return gate.addCallback(lambda _: self.catalog.page(level, parent, cursor))

    members = RedisCatalog.members

    def attributes(self, level: str, ident: str) -> Any:
        return self.catalog.attributes(level, ident)


class QueryRetrieveTestBase(TestCase):
    """An acceptor with Q/R on a StringTransport; the index in redis-server."""

    def setUp(self) -> None:
        self.server = start_redis(self)
        self.redis = connect(self, self.server)
        self.index = RedisIndex(self.redis, reactor, key_prefix="t:")
        self.catalog = RedisCatalog(self.redis, reactor, key_prefix="t:")
        self.clock = task.Clock()
        self.reactor = MemoryReactorClock()
        self.store_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.store_dir)
        storage = StorageSCP(FileStore(self.mktemp(), fsync=False), RecordingIndex(),
                             PendingJournal(self.mktemp()),
                             lambda fn, *a: defer.maybeDeferred(fn, *a), self.clock)
        self.qr = QueryRetrieveSCP(self.catalog, {
            "DEST": MoveDestination("DEST", "127.0.0.1", 11113)}, self.clock)
        self.factory = DicomServerFactory(
            Admission(AcceptorPolicy(), InProcessAssociationLock()),
            service_table(storage, self.qr), self.clock,
            timeouts=Timeouts(artim=30, idle=300), reactor=self.reactor)

    async def stored(self, sop: str, study: str, series: str = "1.2.9.1",
                     patient: str = "P1") -> str:
        """Index an instance whose Part 10 file really exists; its path."""
        path = os.path.join(self.store_dir, f"{sop}.dcm")
        with open(path, "wb") as handle:
            handle.write(file_meta_bytes(CT, sop, EVRLE, "LOADER"))
            handle.write(dataset_bytes(sop, study=study, series=series, PatientID=patient))
        await self.index.record(make_record(sop=sop, series=series, study=study,
                                            patient=patient, path=path))
        return path

    def associate(self, *contexts: tuple[int, str, tuple[str, ...]],
                  roles: tuple[RoleSelection, ...] = ()) -> tuple[Any, Peer]:
        """An established association proposing ``contexts``."""
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        rq = associate_rq(calling="QRSCU", contexts=contexts)
        if roles:
            info = rq.user_information
            rq = AAssociateRQ(rq.called_ae, rq.calling_ae, rq.application_context,
                              rq.presentation_contexts,
                              UserInformation(info.max_length, info.implementation_class_uid,
                                              info.implementation_version_name,
                                              role_selections=roles))
        proto.dataReceived(encode(rq))
        peer = Peer(transport)
        peer.read()
        self.assertIsInstance(peer.pdus[-1], AAssociateAC)
        return proto, peer


class FindTests(QueryRetrieveTestBase):
    """C-FIND through the adapter (PS3.4 C.4.1)."""

    async def test_find_studies(self) -> None:
        """A Study Root C-FIND at STUDY level gets one pending response per
        study, each with the study's UID, then Success."""
        await self.stored("1.2.9.1.1", study="1.2.9")
        await self.stored("1.2.8.1.1", study="1.2.8", series="1.2.8.1")
        proto, peer = self.associate((1, c.STUDY_ROOT_FIND, (IVRLE,)))
        proto.dataReceived(message_pdus(1, request(c.C_FIND_RQ, c.STUDY_ROOT_FIND),
                                        identifier("STUDY", StudyInstanceUID="")))
        await peer.until(peer.final, "final C-FIND-RSP")
        statuses = [m[0].get(STATUS) for m in peer.messages]
        self.assertEqual(statuses, [0xFF00, 0xFF00, 0x0000])
        self.assertTrue(all(m[0].command_field == c.C_FIND_RSP for m in peer.messages))
        found = sorted(bytes(m[1]) for m in peer.messages[:2])
        self.assertTrue(any(b"1.2.9" in f for f in found) and any(b"1.2.8" in f for f in found))

    async def test_cancel_and_index_down(self) -> None:
        """C-CANCEL during a C-FIND ends it with Cancel (0xFE00); an index
        that does not answer ends it with A700 and says so."""
        held = HeldCatalog(self.catalog)
        self.qr.catalog = held  # type: ignore[assignment]
        await self.stored("1.2.9.1.1", study="1.2.9")
        proto, peer = self.associate((1, c.STUDY_ROOT_FIND, (IVRLE,)))
        proto.dataReceived(message_pdus(1, request(c.C_FIND_RQ, c.STUDY_ROOT_FIND),
                                        identifier("STUDY", StudyInstanceUID="")))
        proto.dataReceived(message_pdus(1, encode_command({
            COMMAND_FIELD: c.C_CANCEL_RQ, MESSAGE_ID_BEING_RESPONDED_TO: 1,
            COMMAND_DATA_SET_TYPE: c.NO_DATA_SET})))
        held.release()
        await peer.until(peer.final, "final C-FIND-RSP")
        self.assertEqual(peer.final().get(STATUS), c.STATUS_CANCEL)

        self.qr.catalog = RedisCatalog(_Never(), self.clock, timeout=2.0)
        proto.dataReceived(message_pdus(1, request(c.C_FIND_RQ, c.STUDY_ROOT_FIND, 2),
                                        identifier("STUDY", StudyInstanceUID="")))
        self.clock.advance(2.0)
        peer.read()
        final = peer.final()
        assert final is not None
        self.assertEqual(final.get(STATUS), c.STATUS_QR_OUT_OF_RESOURCES)
        self.assertEqual(final.get(0x0902), "Index unavailable")


class PagedCatalog:
    """The real catalog; page ``hold_from`` and later wait for :meth:`release`,
    and each page may cost ``cost`` seconds on the test's clock."""

    def __init__(self, catalog: RedisCatalog, clock: task.Clock, hold_from: int = 0,
                 cost: float = 0.0) -> None:
        self.catalog = catalog
        self.clock = clock
        self.hold_from = hold_from
        self.cost = cost
        self.pages = 0
        self.gate: defer.Deferred[None] = defer.Deferred()

    def release(self) -> None:
        """Let the held pages answer."""
        self.gate.callback(None)

    def page(self, level: str, parent: str | None,
             cursor: int = 0) -> "defer.Deferred[tuple[int, list[str]]]":
        self.pages += 1
        self.clock.advance(self.cost)
        if self.hold_from and self.pages >= self.hold_from:
            d = defer.Deferred()
            self.gate.addCallback(lambda _: self.catalog.page(level, parent, cursor).chainDeferred(d))
            return d
        return self.catalog.page(level, parent, cursor)

    members = RedisCatalog.members

    def attributes(self, level: str, ident: str) -> Any:
        return self.catalog.attributes(level, ident)


class BoundedQueryTests(QueryRetrieveTestBase):
    """Work per request is bounded: pages, streaming, a deadline."""

    async def index_studies(self, count: int) -> None:
        """``count`` studies of one patient, one instance each, written
        straight into Redis (the commands RedisIndex runs for a record)."""
        layout = KeyLayout("t:")
        client = self.server.client()
        pipe = client.pipeline(transaction=False)
        for n in range(count):
            rec = make_record(sop=f"1.3.{n}.1.1", series=f"1.3.{n}.1", study=f"1.3.{n}")
            for command in record_commands(layout, rec):
                pipe.execute_command(*command)
        pipe.execute()

    async def test_first_response_before_the_whole_set_is_read(self) -> None:
        """A Study Root C-FIND with no key over 2000 studies sends its first
        pending response after the catalog read the patient list and one
        page of the patient's study set; while the second page is held,
        responses went out and no final one: nothing reads a whole set first."""
        await self.index_studies(2000)
        paged = PagedCatalog(self.catalog, self.clock, hold_from=3)
        self.qr.catalog = paged  # type: ignore[assignment]
        proto, peer = self.associate((1, c.STUDY_ROOT_FIND, (IVRLE,)))
        proto.dataReceived(message_pdus(1, request(c.C_FIND_RQ, c.STUDY_ROOT_FIND),
                                        identifier("STUDY", StudyInstanceUID="")))
        await peer.until(lambda: peer.messages, "the first C-FIND-RSP")
        self.assertEqual(peer.messages[0][0].get(STATUS), 0xFF00)
        self.assertEqual(paged.pages, 2)            # patients, the first page of studies
        await peer.until(lambda: paged.pages == 3, "the second page of studies")
        peer.read()
        self.assertIsNone(peer.final())
        self.assertLess(len(peer.messages), 2000)
        paged.release()
        await peer.until(peer.final, "final C-FIND-RSP", turns=3000)
        self.assertEqual(peer.final().get(STATUS), 0x0000)
        self.assertEqual(len(peer.messages), 2001)

    async def test_deadline_answers_a700(self) -> None:
        """With [query] timeout 60 s and each page of the index costing 25 s
        (on the injected clock), a C-FIND over 2000 studies is answered A700
        with the Error Comment naming the timeout, after a few pending ones."""
        await self.index_studies(2000)
        self.qr.catalog = PagedCatalog(self.catalog, self.clock, cost=25)  # type: ignore[assignment]
        self.qr.timeout = 60
        proto, peer = self.associate((1, c.STUDY_ROOT_FIND, (IVRLE,)))
        proto.dataReceived(message_pdus(1, request(c.C_FIND_RQ, c.STUDY_ROOT_FIND),
                                        identifier("STUDY", StudyInstanceUID="")))
        await peer.until(peer.final, "final C-FIND-RSP", turns=3000)
        final = peer.final()
        assert final is not None
        self.assertEqual(final.get(STATUS), c.STATUS_QR_OUT_OF_RESOURCES)
        self.assertEqual(final.get(0x0902), "Query timed out after 60 s")
        self.assertLess(len(peer.messages), 2001)


class RetrieveTests(QueryRetrieveTestBase):
    """C-GET on the association, C-MOVE on a sub-association (PS3.4 C.4.2, C.4.3)."""

    async def test_get_sends_on_this_association(self) -> None:
        """C-GET sends the instance as a C-STORE-RQ on the CT context the
        requestor took the SCP role for, with the file's data set; after
        its C-STORE-RSP the final response counts one completed."""
        path = await self.stored("1.2.9.1.1", study="1.2.9")
        proto, peer = self.associate((1, c.STUDY_ROOT_GET, (IVRLE,)), (3, CT, (EVRLE,)),
                                     roles=(RoleSelection(CT, 0, 1),))
        proto.dataReceived(message_pdus(1, request(c.C_GET_RQ, c.STUDY_ROOT_GET),
                                        identifier("STUDY", StudyInstanceUID="1.2.9")))
        await peer.until(lambda: peer.messages, "C-STORE-RQ")
        command, data = peer.messages[0]
        self.assertEqual((command.command_field, command.affected_sop_instance_uid),
                         (c.C_STORE_RQ, "1.2.9.1.1"))
        with open(path, "rb") as handle:
            self.assertTrue(handle.read().endswith(bytes(data)))
        proto.dataReceived(message_pdus(3, store_response(command.message_id or 0)))
        peer.read()
        final = peer.final()
        assert final is not None
        self.assertEqual((final.command_field, final.get(STATUS), final.get(NUMBER_OF_COMPLETED)),
                         (c.C_GET_RSP, 0, 1))

    async def test_move_through_a_sub_association(self) -> None:
        """C-MOVE opens an association to the destination (on the injected
        reactor), sends the instance with the Move Originator, releases it,
        and answers Success with one completed; an unknown destination is
        A801."""
        await self.stored("1.2.9.1.1", study="1.2.9")
        proto, peer = self.associate((1, c.STUDY_ROOT_MOVE, (IVRLE,)))
        proto.dataReceived(message_pdus(1, request(c.C_MOVE_RQ, c.STUDY_ROOT_MOVE,
                                                   destination="NOWHERE"),
                                        identifier("STUDY", StudyInstanceUID="1.2.9")))
        await peer.until(peer.final, "final C-MOVE-RSP")
        self.assertEqual(peer.final().get(STATUS), c.STATUS_MOVE_DESTINATION_UNKNOWN)

        proto.dataReceived(message_pdus(1, request(c.C_MOVE_RQ, c.STUDY_ROOT_MOVE, 2,
                                                   destination="DEST"),
                                        identifier("STUDY", StudyInstanceUID="1.2.9")))
        await peer.until(lambda: self.reactor.tcpClients, "a connect to DEST", turns=300)
        host, port, client_factory, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 11113, 30))
        sub = client_factory.buildProtocol(IPv4Address("TCP", host, port))
        dest = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        sub.makeConnection(dest)
        dest_peer = Peer(dest)
        dest_peer.read()
        (rq,) = dest_peer.pdus
        self.assertEqual((rq.calling_ae, rq.called_ae), ("SDCC", "DEST"))
        from sdcc_twisted.core.negotiation import negotiate
        accepted = negotiate(rq, AcceptorPolicy(ae_title="DEST"), "127.0.0.1")
        sub.dataReceived(encode(accepted.ac))
        await dest_peer.until(lambda: dest_peer.messages, "C-STORE-RQ at DEST")
        command, _ = dest_peer.messages[0]
        self.assertEqual(command.affected_sop_instance_uid, "1.2.9.1.1")
        self.assertEqual(command.get(0x1030), "QRSCU")      # Move Originator AE
        context_id = next(iter(accepted.contexts))
        sub.dataReceived(message_pdus(context_id, store_response(command.message_id or 0)))
        await dest_peer.until(lambda: isinstance(dest_peer.pdus[-1], AReleaseRQ),
                              "A-RELEASE-RQ at DEST")
        sub.dataReceived(encode(AReleaseRP()))
        sub.connectionLost(None)
        await peer.until(peer.final, "final C-MOVE-RSP")
        final = peer.final()
        self.assertEqual((final.get(STATUS), final.get(NUMBER_OF_COMPLETED),
                          final.get(NUMBER_OF_FAILED)), (0, 1, 0))


class CatalogTests(TestCase):
    """RedisCatalog: the read side of the index."""

    async def test_levels(self) -> None:
        """What RedisIndex wrote is found level by level: patients, their
        studies, the series of a study, the instances of a series, and each
        entry's attributes; an unknown one is None or empty."""
        server = start_redis(self)
        redis = connect(self, server)
        await RedisIndex(redis, reactor, key_prefix="t:").record(
            make_record(sop="1.2.3.1", series="1.2.3", study="1.2", patient="P1"))
        catalog = RedisCatalog(redis, reactor, key_prefix="t:")
        for level, parent, ids in (("PATIENT", None, ["P1"]), ("STUDY", "P1", ["1.2"]),
                                   ("SERIES", "1.2", ["1.2.3"]), ("IMAGE", "1.2.3", ["1.2.3.1"])):
            self.assertEqual([i async for i in catalog.members(level, parent)], ids)
            self.assertEqual(await catalog.page(level, parent), (0, ids))
        study = await catalog.attributes("STUDY", "1.2")
        assert study is not None
        self.assertEqual(study["patient_id"], "P1")
        image = await catalog.attributes("IMAGE", "1.2.3.1")
        assert image is not None
        self.assertEqual(image["SOPInstanceUID"], "1.2.3.1")
        self.assertIsNone(await catalog.attributes("STUDY", "9.9"))
        self.assertEqual(await catalog.page("SERIES", "9.9"), (0, []))

    def test_timeout(self) -> None:
        """A Redis that does not answer fails a read with IndexUnavailable
        once the timeout passes on the injected clock."""
        clock = task.Clock()
        catalog = RedisCatalog(_Never(), clock, timeout=1.5)
        d = catalog.page("PATIENT", None)
        clock.advance(1.4)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, IndexUnavailable)
