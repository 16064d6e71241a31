"""Hostile peers against the real server (in-process, 127.0.0.1, real Redis).

Each test plays a misbehaving peer on a raw socket, built from the project's
own PDU encoders and the builders of tests/support.py, reads what the server
answers (every read has a timeout), and then checks that

* the server still answers a C-ECHO from a real peer (pynetdicom or DCMTK
  echoscu), and
* nothing partial is left: no ``.dcm`` under the root, an empty ``.tmp`` and
  no instance in the Redis index (except where a test stores on purpose).

Blocking socket work runs off the reactor thread (``in_thread`` or plain
threads), since the server runs on the trial reactor.
"""

from __future__ import annotations

import importlib
import random
import socket
import struct
import threading
import time
from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.dimse import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    COMMAND_DATA_SET_TYPE,
    ERROR_COMMENT,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    PRIORITY,
    STATUS,
    Command,
    decode_command,
    encode_command,
)
from sdcc_twisted.core.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_RELEASE_RP,
    P_DATA_TF,
    AReleaseRQ,
    decode,
    encode,
)

from . import corpus
from .redis_support import wait_for
from .server_support import in_thread, start_server
from .support import CT, associate_rq, dataset_bytes, echo_command, pdata, store_command
from .test_interop_echo import pynetdicom_echo
from .test_interop_store import (
    check_stored,
    dcm_files,
    dcmtk,
    instance_keys,
    pynetdicom_store,
    temp_files,
)

EXPLICIT = c.EXPLICIT_VR_LITTLE_ENDIAN
IMPLICIT = c.IMPLICIT_VR_LITTLE_ENDIAN
#: Contexts of every raw association: 1 Verification, 3 CT (Explicit VR LE).
CONTEXTS = ((1, c.VERIFICATION_SOP_CLASS, (IMPLICIT,)), (3, CT, (EXPLICIT,)))




# -- a raw peer ---------------------------------------------------------------------

class RawPeer:
    """A blocking TCP peer that speaks whatever bytes a test gives it."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int, timeout: float) -> bool:
        """Read until ``n`` bytes are buffered; False on EOF (or reset)."""
        self.sock.settimeout(timeout)
        while len(self.buffer) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return False
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read_pdu(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next PDU as (type, body), or None when the server closed."""
        if not self._fill(6, timeout):
            return None
        pdu_type, length = struct.unpack("!BxL", self.buffer[:6])
        if not self._fill(6 + length, timeout):
            return None
        body = self.buffer[6:6 + length]
        self.buffer = self.buffer[6 + length:]
        return pdu_type, body

    def read_abort(self, timeout: float = 5.0) -> tuple[int, int]:
        """Read one PDU, which must be an A-ABORT; its (source, reason)."""
        pdu = self.read_pdu(timeout)
        assert pdu is not None, "the server closed without an A-ABORT"
        assert pdu[0] == A_ABORT, f"expected an A-ABORT, got PDU type 0x{pdu[0]:02x}"
        abort = decode(*pdu)
        return abort.source, abort.reason

    def wait_closed(self, timeout: float) -> float:
        """Seconds until the server closes; fails if it sends anything else
        than an A-ABORT/A-RELEASE-RP meanwhile."""
        started = time.monotonic()
        while True:
            pdu = self.read_pdu(max(timeout - (time.monotonic() - started), 0.01))
            if pdu is None:
                return time.monotonic() - started

    def associate(self, calling: str, contexts: Any = CONTEXTS) -> Any:
        """Send an A-ASSOCIATE-RQ and return the A-ASSOCIATE-AC."""
        self.send(encode(associate_rq(calling=calling, contexts=contexts)))
        pdu = self.read_pdu()
        assert pdu is not None and pdu[0] == A_ASSOCIATE_AC, f"not accepted: {pdu!r}"
        ac = decode(*pdu)
        results = {pc.context_id: pc.result for pc in ac.presentation_contexts}
        assert all(r == 0 for r in results.values()), results
        return ac

    def read_command(self, timeout: float = 10.0) -> Command:
        """Read P-DATA-TFs until a whole command set; decode it."""
        command = b""
        while True:
            pdu = self.read_pdu(timeout)
            assert pdu is not None, "the server closed before answering"
            assert pdu[0] == P_DATA_TF, f"expected P-DATA-TF, got 0x{pdu[0]:02x}"
            for pdv in decode(*pdu).pdvs:
                assert pdv.control & 0x01, "a data set in a response to a C-STORE/C-ECHO"
                command += bytes(pdv.data)
                if pdv.control & 0x02:
                    return decode_command(command)

    def store(self, uid: str, data_set: bytes, command: bytes | None = None,
              context_id: int = 3) -> Command:
        """C-STORE ``data_set`` and return the C-STORE-RSP command."""
        self.send(pdata(context_id, 0x03, command or store_command(uid)))
        for start in range(0, max(len(data_set), 1), 8000):
            piece = data_set[start:start + 8000]
            last = start + 8000 >= len(data_set)
            self.send(pdata(context_id, 0x02 if last else 0x00, piece))
        return self.read_command()

    def release(self) -> None:
        self.send(encode(AReleaseRQ()))
        pdu = self.read_pdu()
        assert pdu is not None and pdu[0] == A_RELEASE_RP, f"no A-RELEASE-RP: {pdu!r}"
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def explicit(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element (short or long form by VR)."""
    size = len(value) if length is None else length
    if vr in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OD", "OF", "OL", "OV", "SV", "UV"):
        head = struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr.encode(), size)
    else:
        head = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), size)
    return head + value


def ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def uids_head(uid: str) -> bytes:
    """SOP Class and Instance UID elements of a CT with ``uid``."""
    return explicit(0x00080016, "UI", ui(CT)) + explicit(0x00080018, "UI", ui(uid))


# -- the checks after each hostile peer --------------------------------------------------

class HostileTestCase(TestCase):
    """Helpers: the server, its post-conditions, and a logged-error watch."""

    timeout = 60

    async def server(self, index: dict[str, str] | None = None, **server_keys: str) -> Any:
        keys = {"artim_timeout": "2", **server_keys}
        self.srv = await start_server(self, server=keys, **({"index": index} if index else {}))
        self.failures: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None or event.get("isError"):
                self.failures.append(event)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return self.srv

    async def assert_nothing_kept(self) -> None:
        """No connection left, no file, no temp file, no index entry."""
        srv = self.srv
        factory = srv.service.factory
        await wait_for(lambda: not factory.connections and not temp_files(srv.root), 10,
                       "the connections to close and .tmp to empty")
        self.assertEqual(dcm_files(srv.root), [])
        self.assertEqual(temp_files(srv.root), [])
        self.assertEqual(instance_keys(srv.redis.client()), [])

    async def assert_serving(self, calling: str = "CHECKER", dcmtk_echo: bool = False) -> None:
        """A real peer's C-ECHO still gets Success; no error was logged."""
        if dcmtk_echo:
            out, code = await dcmtk(self, "echoscu", "-aet", calling, "-aec", "SDCC",
                                    "127.0.0.1", str(self.srv.port), timeout=30)
            self.assertEqual(code, 0, out)
        else:
            result = await in_thread(pynetdicom_echo, self.srv.port, calling)
            self.assertEqual((result["established"], result.get("status")), (True, 0))
        self.assertEqual([e.get("log_format") for e in self.failures], [],
                         "the server logged an error")

    async def after(self, calling: str = "CHECKER", dcmtk_echo: bool = False) -> None:
        await self.assert_nothing_kept()
        await self.assert_serving(calling, dcmtk_echo)


def _run(fn: Any, *args: Any) -> Any:
    return in_thread(fn, *args)


# -- malformed PDUs and framing ------------------------------------------------------------

class FramingHostilityTests(HostileTestCase):
    """Bytes that are not DICOM, or not what the state allows."""

    async def test_garbage_bytes(self) -> None:
        """An HTTP request and then random bytes instead of an A-ASSOCIATE-RQ
        get an A-ABORT (provider, unrecognized PDU) at once; the server then
        closes (ARTIM) and keeps serving; nothing is kept."""
        srv = await self.server()

        def peer() -> tuple[tuple[int, int], float]:
            raw = RawPeer(srv.port)
            raw.send(b"GET / HTTP/1.1\r\nHost: sdcc\r\n\r\n"
                     + random.Random(1).randbytes(2000))
            abort = raw.read_abort()
            closed = raw.wait_closed(6)
            raw.close()
            return abort, closed

        abort, closed = await _run(peer)
        self.assertEqual(abort, (2, c.ABORT_UNRECOGNIZED_PDU))
        self.assertLess(closed, 5)
        await self.after(dcmtk_echo=True)

    async def test_unknown_pdu_type(self) -> None:
        """A PDU of type 0x09 gets an A-ABORT with reason 1 (unrecognized
        PDU), before an association (Sta2) and on an established one."""
        srv = await self.server()

        def peer(established: bool) -> tuple[int, int]:
            raw = RawPeer(srv.port)
            if established:
                raw.associate("UNKNOWNPDU")
            raw.send(b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00")
            abort = raw.read_abort()
            raw.close()
            return abort

        self.assertEqual(await _run(peer, False), (2, c.ABORT_UNRECOGNIZED_PDU))
        self.assertEqual(await _run(peer, True), (2, c.ABORT_UNRECOGNIZED_PDU))
        await self.after("UNKNOWNPDU")

    async def test_huge_declared_length(self) -> None:
        """A header declaring 0xFFFFFFF0 bytes is aborted (reason 6, invalid
        parameter value) as soon as its 6 bytes are in: the server does not
        wait for the body.  Checked for an A-ASSOCIATE-RQ in Sta2 and a
        P-DATA-TF on an established association."""
        srv = await self.server()

        def peer(header: bytes, established: bool) -> tuple[tuple[int, int], float]:
            raw = RawPeer(srv.port)
            if established:
                raw.associate("HUGE")
            started = time.monotonic()
            raw.send(header)
            abort = raw.read_abort(timeout=3)
            elapsed = time.monotonic() - started
            raw.close()
            return abort, elapsed

        for header, established in ((b"\x01\x00\xff\xff\xff\xf0", False),
                                    (b"\x04\x00\xff\xff\xff\xf0", True)):
            abort, elapsed = await _run(peer, header, established)
            self.assertEqual(abort, (2, c.ABORT_INVALID_PDU_PARAMETER_VALUE), header)
            self.assertLess(elapsed, 2.0, header)
            await wait_for(lambda: not srv.service.factory.connections, 5, "the close")
        await self.after("HUGE")

    async def test_truncated_request_then_close(self) -> None:
        """Half an A-ASSOCIATE-RQ and then a close: the server drops the
        connection and holds nothing for that calling AE, which associates
        again at once."""
        srv = await self.server()

        def peer() -> None:
            raw = RawPeer(srv.port)
            rq = encode(associate_rq(calling="TRUNCATED", contexts=CONTEXTS))
            raw.send(rq[:len(rq) // 2])
            time.sleep(0.1)
            raw.close()

        await _run(peer)
        await self.after("TRUNCATED")

    async def test_pdata_before_association(self) -> None:
        """A P-DATA-TF (a C-ECHO-RQ) before any A-ASSOCIATE-RQ gets an
        A-ABORT and no answer to the C-ECHO."""
        srv = await self.server()

        def peer() -> tuple[int, int]:
            raw = RawPeer(srv.port)
            raw.send(pdata(1, 0x03, echo_command()))
            abort = raw.read_abort()
            self.assertIsNone(raw.read_pdu(timeout=5), "more than the A-ABORT")
            raw.close()
            return abort

        source, reason = await _run(peer)
        self.assertIn(source, (0, 2))
        await self.after()

    async def test_malformed_pdv_lengths(self) -> None:
        """P-DATA-TFs whose PDV items are malformed (a length past the PDU,
        a length below 2, 0, a truncated PDV header, an even context ID)
        each get an A-ABORT with reason 6 (invalid parameter value)."""
        srv = await self.server()
        cases = [
            b"\x04\x00\x00\x00\x00\x08" + b"\x00\x00\x00\x40\x01\x03ab",      # past the PDU
            b"\x04\x00\x00\x00\x00\x08" + b"\x00\x00\x00\x01\x01\x03ab",      # 1 < 2
            b"\x04\x00\x00\x00\x00\x08" + b"\x00\x00\x00\x00\x01\x03ab",      # 0
            b"\x04\x00\x00\x00\x00\x03" + b"\x00\x00\x00",                    # truncated
            b"\x04\x00\x00\x00\x00\x08" + b"\x00\x00\x00\x04\x02\x03ab",      # even ID
            b"\x04\x00\x00\x00\x00\x00",                                       # no PDV
        ]

        def peer(n: int, bad: bytes) -> tuple[int, int]:
            raw = RawPeer(srv.port)
            raw.associate(f"PDV{n}")
            raw.send(bad)
            abort = raw.read_abort()
            raw.close()
            return abort

        for n, bad in enumerate(cases):
            self.assertEqual(await _run(peer, n, bad),
                             (2, c.ABORT_INVALID_PDU_PARAMETER_VALUE), bad)
        await self.after("PDV0")

    async def test_context_switch_inside_a_message(self) -> None:
        """A C-STORE whose command travels on context 3 and whose data set
        comes on context 1 gets an A-ABORT (reason 5, unexpected parameter);
        nothing is stored."""
        srv = await self.server()
        uid = corpus.new_uid()

        def peer() -> tuple[int, int]:
            raw = RawPeer(srv.port)
            raw.associate("SWITCH")
            raw.send(pdata(3, 0x03, store_command(uid)))
            raw.send(pdata(3, 0x00, dataset_bytes(uid)[:100]))
            raw.send(pdata(1, 0x02, dataset_bytes(uid)[100:]))
            abort = raw.read_abort()
            raw.close()
            return abort

        self.assertEqual(await _run(peer), (2, c.ABORT_UNEXPECTED_PDU_PARAMETER))
        await self.after("SWITCH")

    async def _pipelined(self, **index: str) -> None:
        srv = await self.server(**({"index": index} if index else {}))

        def peer(calling: str, tail: bytes) -> list[int]:
            raw = RawPeer(srv.port)
            raw.send(encode(associate_rq(calling=calling, contexts=CONTEXTS)) + tail)
            types = []
            while True:
                pdu = raw.read_pdu(timeout=6)
                if pdu is None:
                    break
                types.append(pdu[0])
            raw.close()
            return types

        tails = {"a P-DATA-TF": pdata(1, 0x03, echo_command()),
                 "an A-RELEASE-RQ": encode(AReleaseRQ()),
                 "an A-ASSOCIATE-RQ": encode(associate_rq(calling="PIPELINED")),
                 "an A-ABORT": b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",
                 "an unknown PDU type": b"\x09\x00\x00\x00\x00\x00"}
        for n, (name, tail) in enumerate(tails.items()):
            types = await _run(peer, f"PIPELINED{n}", tail)
            self.assertNotIn(A_ASSOCIATE_AC, types, name)
        await self.after("PIPELINED0")

    async def test_request_and_more_in_one_write(self) -> None:
        """An A-ASSOCIATE-RQ followed in the same write by a PDU that is not
        allowed before the answer (P-DATA-TF, A-RELEASE-RQ, another request,
        an A-ABORT, an unknown type) ends the association: the peer never
        gets an A-ASSOCIATE-AC, and the server logs no internal error for
        what is the peer's fault.  Checked with the in-process per-AE lock
        (``lock = memory``, what ``auto`` picks for the default embedded
        Redis: it answers inside the same read) and with the Redis lock
        (which answers a moment later, while the association is in Sta13)."""
        await self._pipelined(lock="memory")
        await self._pipelined(lock="redis")


# -- DIMSE and data sets ------------------------------------------------------------------

class DataSetHostilityTests(HostileTestCase):
    """C-STOREs whose data set or command set is broken."""

    async def test_broken_data_sets_get_c210(self) -> None:
        """Data sets that are garbage, end inside an element header, end
        inside a value, have an element running past its (top-level) end or
        past the end of its item each get 0xC210 with
        an Error Comment; the association goes on (a C-ECHO on it succeeds,
        the release is answered) and nothing is stored or indexed."""
        srv = await self.server()
        uid = corpus.new_uid
        good_uid = corpus.new_uid()
        good = dataset_bytes(good_uid)
        pixel = good.index(b"\xe0\x7f\x10\x00")

        def item_overrun(u: str) -> bytes:
            inner = explicit(0x00081150, "UI", ui(CT), length=200)      # runs past the item
            item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
            return (uids_head(u) + explicit(0x00081140, "SQ", item)
                    + explicit(0x0020000D, "UI", ui("1.2.3")))

        cases: dict[str, Any] = {
            "garbage": lambda u: random.Random(2).randbytes(600),
            "ends inside an element header": lambda u: dataset_bytes(u)[:pixel + 6],
            "ends inside a value": lambda u: dataset_bytes(u)[:pixel + 12 + 10],
            "element runs past the end": lambda u: (
                uids_head(u) + explicit(0x00100010, "PN", b"Doe^John", length=0x400)),
            "element runs past its item": item_overrun,
        }

        def peer() -> dict[str, tuple[int, str]]:
            raw = RawPeer(srv.port)
            raw.associate("BROKEN")
            answers = {}
            for name, build in cases.items():
                sop = uid()
                rsp = raw.store(sop, build(sop))
                answers[name] = (rsp.get(STATUS), rsp.get(ERROR_COMMENT, ""))
                assert rsp.get(AFFECTED_SOP_INSTANCE_UID) == sop
            raw.send(pdata(1, 0x03, echo_command(99)))
            echo = raw.read_command()
            answers["echo"] = (echo.get(STATUS), echo.get(MESSAGE_ID_BEING_RESPONDED_TO))
            raw.release()
            return answers

        answers = await _run(peer)
        self.assertEqual(answers.pop("echo"), (0, 99))
        for name, (status, comment) in answers.items():
            self.assertEqual(status, c.STATUS_DATASET_UNPARSEABLE, (name, comment))
            self.assertTrue(comment, f"{name}: no Error Comment")
        await self.after("BROKEN")

    async def test_store_missing_command_elements(self) -> None:
        """C-STORE-RQs without Affected SOP Instance UID, Priority, Message ID
        or Affected SOP Class UID get a failure status whose Error Comment
        names the missing element; nothing is stored."""
        srv = await self.server()
        cases = [(AFFECTED_SOP_INSTANCE_UID, "(0000,1000)"), (PRIORITY, "(0000,0700)"),
                 (MESSAGE_ID, "(0000,0110)"), (AFFECTED_SOP_CLASS_UID, "(0000,0002)")]

        def peer() -> list[tuple[str, int, str]]:
            raw = RawPeer(srv.port)
            raw.associate("MISSING")
            answers = []
            for element, name in cases:
                sop = corpus.new_uid()
                rsp = raw.store(sop, dataset_bytes(sop),
                                command=store_command(sop, message_id=7, drop=(element,)))
                answers.append((name, rsp.get(STATUS), rsp.get(ERROR_COMMENT, "")))
            raw.release()
            return answers

        for name, status, comment in await _run(peer):
            self.assertEqual(status, c.STATUS_PROCESSING_FAILURE, name)
            self.assertIn(name, comment)
        await self.after("MISSING")

    async def test_echo_missing_affected_sop_class(self) -> None:
        """A C-ECHO-RQ without Affected SOP Class UID (0000,0002), required
        by PS3.7 9.3.5, gets a failure status whose Error Comment names
        (0000,0002), as README's Security section promises for every
        command set without its required elements."""
        srv = await self.server()

        def peer() -> tuple[int, str]:
            raw = RawPeer(srv.port)
            raw.associate("NOCLASS")
            raw.send(pdata(1, 0x03, encode_command({
                0x0100: c.C_ECHO_RQ, MESSAGE_ID: 5, COMMAND_DATA_SET_TYPE: c.NO_DATA_SET})))
            rsp = raw.read_command()
            raw.release()
            return rsp.get(STATUS), rsp.get(ERROR_COMMENT, "")

        status, comment = await _run(peer)
        self.assertNotEqual(status, 0x0000)
        self.assertIn("(0000,0002)", comment)
        await self.after("NOCLASS")

    async def test_store_without_data_set_type(self) -> None:
        """A C-STORE-RQ without Command Data Set Type (0000,0800) is answered
        with a failure that names (0000,0800)."""
        srv = await self.server()

        def peer() -> tuple[int, str]:
            raw = RawPeer(srv.port)
            raw.associate("NOTYPE")
            sop = corpus.new_uid()
            raw.send(pdata(3, 0x03, store_command(sop, drop=(COMMAND_DATA_SET_TYPE,))))
            rsp = raw.read_command()
            raw.release()
            return rsp.get(STATUS), rsp.get(ERROR_COMMENT, "")

        status, comment = await _run(peer)
        self.assertNotEqual(status, 0x0000)
        self.assertIn("(0000,0800)", comment)
        await self.after("NOTYPE")


# -- time and concurrency --------------------------------------------------------------------

class TimingHostilityTests(HostileTestCase):
    """Silent, slow and numerous peers."""

    async def test_silent_connection_closed_after_artim(self) -> None:
        """With artim_timeout = 1, a TCP connection that sends nothing is
        closed by the server, without a PDU, between 0.5 and 3 s after it
        opened."""
        srv = await self.server(idle_timeout="1", artim_timeout="1")

        def peer() -> tuple[bytes, float]:
            raw = RawPeer(srv.port, timeout=6)
            started = time.monotonic()
            data = raw.sock.recv(100)
            elapsed = time.monotonic() - started
            raw.close()
            return data, elapsed

        data, elapsed = await _run(peer)
        self.assertEqual(data, b"")
        self.assertGreater(elapsed, 0.5)
        self.assertLess(elapsed, 3.0)
        await self.after()

    async def test_idle_association_aborted(self) -> None:
        """With idle_timeout = 1, an established association left silent
        gets an A-ABORT within 3 s, and the server closes the connection
        within ARTIM (1 s) after that."""
        srv = await self.server(idle_timeout="1", artim_timeout="1")

        def peer() -> tuple[tuple[int, int], float, float]:
            raw = RawPeer(srv.port, timeout=6)
            raw.associate("IDLER")
            started = time.monotonic()
            abort = raw.read_abort(timeout=6)
            aborted = time.monotonic() - started
            closed = raw.wait_closed(6)
            raw.close()
            return abort, aborted, closed

        abort, aborted, closed = await _run(peer)
        self.assertIn(abort[0], (0, 2), abort)
        self.assertGreater(aborted, 0.5)
        self.assertLess(aborted, 3.0)
        self.assertLess(closed, 3.0)
        await self.after("IDLER")

    async def test_dribbling_sender(self) -> None:
        """A peer that sends one byte per write (with tiny sleeps) through
        a whole association with a C-STORE of a small object gets 0x0000 and
        an orderly release; the instance is stored intact and indexed."""
        srv = await self.server()
        sample = corpus.write_small(f"{self.mktemp()}/small.dcm", CT, rows=4, columns=4)
        data_set = corpus.data_set_bytes(sample.path)

        def dribble(raw: RawPeer, data: bytes) -> None:
            for i in range(len(data)):
                raw.send(data[i:i + 1])
                time.sleep(0.0005)

        def peer() -> tuple[int, float, int]:
            raw = RawPeer(srv.port, timeout=10)
            started = time.monotonic()
            dribble(raw, encode(associate_rq(calling="DRIBBLE", contexts=CONTEXTS)))
            pdu = raw.read_pdu()
            assert pdu is not None and pdu[0] == A_ASSOCIATE_AC, pdu
            message = (pdata(3, 0x03, store_command(sample.sop_instance_uid))
                       + pdata(3, 0x02, data_set))
            dribble(raw, message)
            status = raw.read_command().get(STATUS)
            dribble(raw, encode(AReleaseRQ()))
            pdu = raw.read_pdu()
            assert pdu is not None and pdu[0] == A_RELEASE_RP, pdu
            elapsed = time.monotonic() - started
            raw.close()
            return status, elapsed, len(message)

        status, elapsed, size = await _run(peer)
        self.assertEqual(status, 0x0000)
        self.assertLess(elapsed, 3.0, f"{size} bytes dribbled")
        check_stored(self, srv.root, srv.redis.client(), sample, "DRIBBLE")
        await self.assert_serving()

    async def test_two_hundred_silent_connections(self) -> None:
        """200 connections opened at once and left silent do not delay a
        C-ECHO from another peer (answered within 2 s); they stay open until
        ARTIM, and closing them leaves nothing behind."""
        importlib.import_module("pynetdicom")       # imported before the clock starts

        srv = await self.server(max_connections_per_address="300", artim_timeout="30")
        sockets: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in sockets])

        def open_all() -> None:
            for _ in range(200):
                sockets.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))

        await _run(open_all)
        factory = srv.service.factory
        await wait_for(lambda: len(factory.connections) >= 200, 10, "200 accepted connections")
        started = time.monotonic()
        result = await in_thread(pynetdicom_echo, srv.port, "BUSYCHECK")
        elapsed = time.monotonic() - started
        self.assertEqual((result["established"], result.get("status")), (True, 0))
        self.assertLess(elapsed, 2.0)
        self.assertGreaterEqual(len(factory.connections), 200)
        for s in sockets:
            s.close()
        await self.after()

    async def test_fifty_concurrent_storing_associations(self) -> None:
        """50 associations from 50 calling AEs store at the same time (one
        pynetdicom thread each, started together): each gets 0x0000, and
        there are 50 files, intact, and 50 index entries."""
        srv = await self.server(max_connections_per_address="100")
        base = self.mktemp()
        samples = [corpus.write_small(f"{base}/{n}.dcm", CT, number=n + 1) for n in range(50)]
        results: dict[int, Any] = {}
        barrier = threading.Barrier(50)

        def worker(n: int) -> None:
            try:
                barrier.wait(20)
                results[n] = pynetdicom_store(srv.port, [samples[n].path],
                                              [(CT, [EXPLICIT])], f"CONC{n:02d}")
            except Exception as exc:  # noqa: BLE001 - reported below
                results[n] = {"error": repr(exc)}

        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(50)]
        for t in threads:
            t.start()
        await wait_for(lambda: not any(t.is_alive() for t in threads), 50,
                       "the 50 storing threads")
        statuses = {n: r.get("statuses", r) for n, r in results.items()}
        self.assertEqual(statuses, {n: [(0, "")] for n in range(50)})
        self.assertEqual(len(dcm_files(srv.root)), 50)
        client = srv.redis.client()
        self.assertEqual(len(instance_keys(client)), 50)
        for n, sample in enumerate(samples):
            check_stored(self, srv.root, client, sample, f"CONC{n:02d}")
        self.assertEqual(temp_files(srv.root), [])
        await self.assert_serving()
