"""Faults around a real server: aborts and closes mid-transfer, a full disk,
Redis going away, hostile UIDs, and the per-AE lock across two processes.

The mid-transfer faults use a raw socket, with the project's own PDU
encoders, only to inject the fault at a known point; everything else uses
pynetdicom or DCMTK.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
import warnings
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from sdcc_twisted.config import default_node_id
from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.pdu import A_ASSOCIATE_AC, AAbort, decode, encode
from sdcc_twisted.storage.files import uid_path_part

from . import corpus
from .redis_support import sleep, start_redis, wait_for
from .server_support import TwistdServer, free_port, in_thread, ini_text, start_server
from .support import associate_rq, in_ci, pdata, store_command
from .test_interop_store import (
    PREFIX,
    check_indexed,
    check_stored,
    dcm_files,
    dcmtk,
    expected_path,
    instance_keys,
    pynetdicom_store,
    temp_files,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = c.EXPLICIT_VR_LITTLE_ENDIAN




# -- a raw peer, for fault injection only ---------------------------------------

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


class PartialStore:
    """Associates, sends a C-STORE-RQ and the first half of its data set,
    then ends the connection the way a test asks (A-ABORT, FIN or RST)."""

    def __init__(self, port: int, calling: str, uid: str, data_set: bytes,
                 fragment: int = 16000) -> None:
        self.port = port
        self.calling = calling
        self.uid = uid
        self.data_set = data_set
        self.fragment = fragment
        self.sock: socket.socket | None = None
        self.sent = 0

    def start(self) -> None:
        """Blocking: associate and send about half of the data set."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rq = associate_rq(calling=self.calling, contexts=((1, CT, (EXPLICIT,)),))
        sock.sendall(encode(rq))
        pdu_type, length = struct.unpack("!BxL", _recv_exact(sock, 6))
        if pdu_type != A_ASSOCIATE_AC:
            raise AssertionError(f"expected an A-ASSOCIATE-AC, got PDU type {pdu_type}")
        ac = decode(pdu_type, _recv_exact(sock, length))
        results = {pc.context_id: pc.result for pc in ac.presentation_contexts}
        if results != {1: 0}:
            raise AssertionError(f"context not accepted: {results}")
        sock.sendall(pdata(1, 0x03, store_command(self.uid, CT)))
        half = len(self.data_set) // 2
        while self.sent < half:
            piece = self.data_set[self.sent:self.sent + self.fragment]
            sock.sendall(pdata(1, 0x00, piece))   # never the last fragment
            self.sent += len(piece)

    def send_more(self, size: int) -> None:
        """Blocking: send about ``size`` more bytes of the data set, still
        not its last fragment."""
        sock = self.sock
        assert sock is not None
        until = min(self.sent + size, len(self.data_set) - 1)
        while self.sent < until:
            piece = self.data_set[self.sent:min(self.sent + self.fragment, until)]
            sock.sendall(pdata(1, 0x00, piece))
            self.sent += len(piece)

    def end(self, how: str) -> None:
        """Blocking: end the connection by ``abort``, ``fin`` or ``rst``."""
        sock = self.sock
        assert sock is not None
        if how == "abort":
            sock.sendall(encode(AAbort(0, 0)))
            sock.shutdown(socket.SHUT_WR)
            try:   # the acceptor closes after an A-ABORT (Sta13 -> Sta1)
                sock.settimeout(5)
                while sock.recv(4096):
                    pass
            except OSError:
                pass
        elif how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def big_ct(path: str, uid: str | None = None, rows: int = 1024, columns: int = 1024,
           **kwargs: Any) -> corpus.Sample:
    """A CT of rows*columns*2 bytes of pixels, Explicit VR LE, on disk."""
    return corpus.write_small(path, CT, sop_instance=uid, rows=rows, columns=columns,
                              **kwargs)


class MidTransferFaultTests(TestCase):
    """The peer goes away in the middle of a C-STORE data set."""

    timeout = 90

    async def _fault(self, how: str) -> None:
        server = await start_server(self)
        client = server.redis.client()
        sample = big_ct(os.path.join(os.path.abspath(self.mktemp()), "big.dcm"))
        peer = PartialStore(server.port, "FAULTY", sample.sop_instance_uid,
                            corpus.data_set_bytes(sample.path))
        await in_thread(peer.start)
        # the server really is mid-transfer: a temp file is growing
        await wait_for(lambda: any(os.path.getsize(p) > 0 for p in temp_files(server.root)),
                       10, "a growing .part file")
        await in_thread(peer.end, how)
        factory = server.service.factory
        await wait_for(lambda: not factory.connections and not temp_files(server.root),
                       10, "the connection to close and the temp file to go")
        self.assertEqual(dcm_files(server.root), [])
        self.assertEqual(temp_files(server.root), [])
        self.assertEqual(sorted(os.listdir(server.root)), [".tmp"])
        self.assertEqual(instance_keys(client), [])
        # the server still serves, and the AE's slot is free again
        out, code = await dcmtk(self, "echoscu", "-v", "-aet", "FAULTY", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), timeout=30)
        self.assertEqual(code, 0, out)
        self.assertIn("Received Echo Response (Success)", out)

    async def test_a_abort_mid_transfer(self) -> None:
        """An A-ABORT after half of a 2 MB data set leaves no .dcm, no .part
        and no index entry; a C-ECHO from the same AE then succeeds."""
        await self._fault("abort")

    async def test_tcp_close_mid_transfer(self) -> None:
        """A TCP close (FIN, no A-ABORT) after half of a 2 MB data set leaves
        no .dcm, no .part and no index entry; a C-ECHO then succeeds."""
        await self._fault("fin")

    async def test_tcp_reset_mid_transfer(self) -> None:
        """A TCP reset (RST) after half of a 2 MB data set leaves no .dcm, no
        .part and no index entry; a C-ECHO then succeeds."""
        await self._fault("rst")


class KilledServerTests(TestCase):
    """``twistd sdcc`` is killed (SIGKILL) in the middle of a C-STORE."""

    timeout = 90

    async def test_server_killed_mid_transfer(self) -> None:
        """The server is killed while half of a 2 MB data set has arrived: the
        .part file it leaves is removed when the server starts again, nothing
        was indexed, and the same instance is then stored normally."""
        redis = start_redis(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        port = free_port()
        ini = os.path.join(base, "sdcc.ini")
        data_dir = os.path.join(base, "data")
        with open(ini, "w", encoding="utf-8") as handle:
            handle.write(ini_text(data_dir, redis.url, port=port))
        root = os.path.join(data_dir, "store")
        server = TwistdServer(self, ini)
        server.start(port)
        sample = big_ct(os.path.join(base, "big.dcm"))
        peer = PartialStore(port, "KILLED", sample.sop_instance_uid,
                            corpus.data_set_bytes(sample.path))
        await in_thread(peer.start)
        await wait_for(lambda: any(os.path.getsize(p) > 0 for p in temp_files(root)),
                       10, "a growing .part file")
        server.kill()
        await in_thread(peer.end, "fin")
        self.assertEqual(len(temp_files(root)), 1)   # what a crash leaves
        self.assertEqual(dcm_files(root), [])
        server = TwistdServer(self, ini)
        server.start(port)
        self.assertEqual(temp_files(root), [])
        client = redis.client()
        self.assertEqual(instance_keys(client), [])
        # (another calling AE: the killed process's Redis lock on KILLED lives
        # until it expires, see TwoProcessLockTests)
        result = await in_thread(pynetdicom_store, port, [sample.path], [(CT, [EXPLICIT])],
                                 "AGAIN")
        self.assertEqual(result["statuses"], [(0, "")])
        check_stored(self, root, client, sample, "AGAIN")


def mount_tmpfs(testcase: TestCase, size: str) -> str:
    """A fresh tmpfs of ``size``; unmounted in cleanup.  Skips (fails under CI)
    where mounting is not allowed."""
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               directory], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        done = None
        why = str(exc)
    else:
        why = (done.stderr or done.stdout).strip()
    if done is None or done.returncode != 0:
        message = f"cannot mount a tmpfs ({why}); needs root"
        if in_ci():
            testcase.fail(message + " -- required under CI")
        raise SkipTest(message)
    testcase.addCleanup(subprocess.run, ["umount", directory], capture_output=True,
                        timeout=20)
    return directory


class DiskFullTests(TestCase):
    """The storage root is a 2 MB tmpfs."""

    timeout = 60

    async def test_disk_full(self) -> None:
        """On a 2 MB storage root, a small instance is stored; then a 3 MB
        copy of the same SOP Instance (same study and series) is answered A7xx
        with an Error Comment, and the first copy stays intact and indexed,
        with no .part left; a small object on the same association is then
        stored (0x0000)."""
        root = mount_tmpfs(self, "2m")   # cleanups run last-in first-out:
        server = await start_server(self, storage={"root": root})   # server stops first
        client = server.redis.client()
        base = os.path.abspath(self.mktemp())
        first = corpus.write_small(os.path.join(base, "first.dcm"), CT)
        large = big_ct(os.path.join(base, "large.dcm"), rows=1024, columns=1536,
                       uid=first.sop_instance_uid, study=first.study_uid,
                       series=first.series_uid)
        small = corpus.write_small(os.path.join(base, "small.dcm"), CT)
        self.assertGreater(os.path.getsize(large.path), 3 * 1024 * 1024)
        seen: list[Any] = []

        def after(n: int) -> None:
            if n == 2:   # between the failed store and the next, same association
                seen.append((temp_files(root), dcm_files(root)))

        result = await in_thread(pynetdicom_store, server.port,
                                 [first.path, large.path, small.path],
                                 [(CT, [EXPLICIT])], "DISKFULL", after)
        stored, (status, comment), last = result["statuses"]
        self.assertEqual(stored, (0, ""))
        self.assertTrue(0xA700 <= status <= 0xA7FF, f"status 0x{status:04X}")
        self.assertTrue(comment, "no Error Comment")
        print(f"\n[disk full] status 0x{status:04X}, Error Comment {comment!r}")
        self.assertEqual(seen, [([], [expected_path(root, first)])])
        self.assertEqual(last, (0, ""))
        self.assertEqual(dcm_files(root), sorted([expected_path(root, first),
                                                  expected_path(root, small)]))
        self.assertEqual(temp_files(root), [])
        check_stored(self, root, client, first, "DISKFULL")
        check_stored(self, root, client, small, "DISKFULL")

    async def test_disk_full_at_the_last_flush(self) -> None:
        """With fsync on and the 2 MB root filled up but for about 64 KB, a
        ~200 KB object (small enough to sit in the writer's buffer until the
        end, so the disk error shows at the final flush) is answered A7xx with
        an Error Comment and leaves no .part and no .dcm; after the filler is
        removed the same object is stored."""
        root = mount_tmpfs(self, "2m")
        server = await start_server(self, storage={"root": root, "fsync": "yes"})
        client = server.redis.client()
        base = os.path.abspath(self.mktemp())
        sample = big_ct(os.path.join(base, "medium.dcm"), rows=320, columns=320)
        filler = os.path.join(root, "filler")
        with open(filler, "wb") as handle:
            try:
                handle.write(b"\0" * (2 * 1024 * 1024))
                handle.flush()
            except OSError:
                pass
        os.truncate(filler, os.path.getsize(filler) - 64 * 1024)
        result = await in_thread(pynetdicom_store, server.port, [sample.path],
                                 [(CT, [EXPLICIT])], "DISKFULL")
        [(status, comment)] = result["statuses"]
        self.assertTrue(0xA700 <= status <= 0xA7FF, f"status 0x{status:04X}")
        self.assertTrue(comment, "no Error Comment")
        self.assertEqual(temp_files(root), [])
        self.assertEqual(dcm_files(root), [])
        self.assertFalse(client.exists(f"{PREFIX}instance:{sample.sop_instance_uid}"))
        os.unlink(filler)
        result = await in_thread(pynetdicom_store, server.port, [sample.path],
                                 [(CT, [EXPLICIT])], "DISKFULL")
        self.assertEqual(result["statuses"], [(0, "")])
        check_stored(self, root, client, sample, "DISKFULL")


class RedisDownTests(TestCase):
    """Redis stops while images arrive, and comes back."""

    timeout = 120

    async def test_redis_stopped_mid_run(self) -> None:
        """3 instances are stored, Redis is stopped, 3 more are sent on the same
        association (one of them re-sends the first instance's SOP Instance
        UID in another study and series) and 1 on a new association: each
        gets 0x0000 (index timeout 1 s, then the pending journal; the AE lock
        falls back to this process).  After Redis is started again the
        journal replayer indexes them: every acknowledged instance is on disk
        and in the index, the moved instance's old file and old series are
        gone, and the node's journal {data_dir}/nodes/{node_id}/pending ends
        empty."""
        redis = start_redis(self)
        server = await start_server(self, redis=redis)
        base = os.path.abspath(self.mktemp())
        study = corpus.new_uid()
        samples = [corpus.write_small(os.path.join(base, f"i{n}.dcm"), CT, study=study,
                                      number=n, patient_id="PID-REDIS") for n in range(5)]
        moved = corpus.write_small(os.path.join(base, "moved.dcm"), CT,
                                   sop_instance=samples[0].sop_instance_uid,
                                   patient_id="PID-REDIS", number=9)
        late = corpus.write_small(os.path.join(base, "late.dcm"), CT, study=study,
                                  number=10, patient_id="PID-REDIS")
        timings: list[float] = []

        def between(n: int) -> None:
            timings.append(time.monotonic())
            if n == 3:
                # the test Redis runs without persistence: save what it holds,
                # as a real (AOF/RDB) deployment would have it after a restart
                redis.client().save()
                redis.stop()

        first = await in_thread(pynetdicom_store, server.port,
                                [s.path for s in samples] + [moved.path],
                                [(CT, [EXPLICIT])], "REDISDOWN", between)
        self.assertEqual(first["statuses"], [(0, "")] * 6)
        started = time.monotonic()
        second = await in_thread(pynetdicom_store, server.port, [late.path],
                                 [(CT, [EXPLICIT])], "REDISDOWN")
        new_association = time.monotonic() - started
        self.assertEqual(second["statuses"], [(0, "")])
        pending = server.service.journal.directory
        self.assertEqual(os.path.dirname(pending),
                         os.path.join(server.data_dir, "nodes", default_node_id()))
        journaled = [n for n in os.listdir(pending) if n.endswith(".json")]
        self.assertEqual(len(journaled), 4, os.listdir(pending))
        acknowledged = samples[1:] + [moved, late]
        for sample in samples + [moved, late]:
            self.assertTrue(os.path.isfile(expected_path(server.root, sample)))
        redis.start()
        client = redis.client()
        took = await wait_for(
            lambda: len(instance_keys(client)) == len(acknowledged)
            and not os.listdir(pending), 30, "the journal to be replayed")
        print(f"\n[redis down] 3 stores with Redis down took {timings[5] - timings[2]:.1f} s,"
              f" a new association + store {new_association:.1f} s; journal replayed "
              f"{took:.1f} s after Redis came back")
        for sample in acknowledged:
            check_stored(self, server.root, client, sample, "REDISDOWN")
        self.assertEqual(sorted(dcm_files(server.root)),
                         sorted(expected_path(server.root, s) for s in acknowledged))
        self.assertFalse(os.path.exists(expected_path(server.root, samples[0])))
        self.assertFalse(client.exists(f"{PREFIX}series_instances:{samples[0].series_uid}"))
        self.assertFalse(client.exists(f"{PREFIX}series:{samples[0].series_uid}"))
        self.assertNotIn(samples[0].series_uid, client.smembers(f"{PREFIX}study_series:{study}"))
        self.assertEqual(client.smembers(f"{PREFIX}patient_studies:PID-REDIS"),
                         {study, moved.study_uid})
        self.assertEqual(os.listdir(pending), [])


class HostileUidTests(TestCase):
    """UIDs that try to leave the storage root."""

    timeout = 60

    async def test_path_traversal_uids(self) -> None:
        """SOP Instance, Study and Series UIDs such as ``../../../etc/passwd``,
        ``1.2/../../x`` and ``/tmp/abs`` sent by pynetdicom are stored (0x0000)
        inside the root under hashed names (``x`` + 32 hex digits), indexed
        under the raw UID with that path, and nothing is created outside the
        root."""
        server = await start_server(self)
        client = server.redis.client()
        base = os.path.abspath(self.mktemp())
        variants = [("../../../etc/passwd", "1.2/../../x", "../.."),
                    ("1.2/../../x", "..", "/tmp/sdcc-abs"),
                    ("..", ".", "1.2.3/4"),
                    ("/etc/sdcc-evil", "1.2.840.99.1", "1.2.840.99.1.1")]
        watched = os.path.dirname(server.data_dir)

        def snapshot() -> set[str]:
            """Everything outside the root, but the server's own index-log
            segments (in its node folder; the first one opens with the first
            record)."""
            seen = set()
            for directory, dirs, files in os.walk(watched):
                if os.path.abspath(directory) == server.root:
                    dirs[:] = []
                    continue
                seen.update(os.path.join(directory, n) for n in dirs + files
                            if not n.startswith("index.wal."))
            return seen

        before = snapshot()
        outside = ["/etc/passwd", "/etc/sdcc-evil", "/tmp/sdcc-abs"]
        stat_before = {p: os.stat(p).st_mtime_ns if os.path.exists(p) else None
                       for p in outside}
        samples = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            datasets = []
            for n, (sop, study, series) in enumerate(variants):
                ds = corpus.small_dataset(CT, sop_instance=sop, study=study, series=series,
                                          number=n, patient_id="PID-HOSTILE")
                datasets.append(ds)
                samples.append(corpus.sample_of(os.path.join(base, f"h{n}"), ds))

        def send() -> dict:
            from pynetdicom import _config

            enforce, _config.ENFORCE_UID_CONFORMANCE = _config.ENFORCE_UID_CONFORMANCE, False
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return pynetdicom_store(server.port, datasets, [(CT, [EXPLICIT])],
                                            "HOSTILE")
            finally:
                _config.ENFORCE_UID_CONFORMANCE = enforce

        result = await in_thread(send)
        self.assertEqual(result["statuses"], [(0, "")] * len(variants))
        files = dcm_files(server.root)
        self.assertEqual(len(files), len(variants))
        real_root = os.path.realpath(server.root)
        for sample in samples:
            path = os.path.join(server.root, uid_path_part(sample.study_uid),
                                uid_path_part(sample.series_uid),
                                uid_path_part(sample.sop_instance_uid) + ".dcm")
            self.assertIn(path, files)
            self.assertEqual(os.path.commonpath([os.path.realpath(path), real_root]),
                             real_root)
            for part, uid in zip(os.path.relpath(path, server.root).split(os.sep),
                                 (sample.study_uid, sample.series_uid,
                                  sample.sop_instance_uid + ".dcm")):
                if "/" in uid or uid.startswith("."):
                    self.assertRegex(part, r"^x[0-9a-f]{32}(\.dcm)?$")
            check_indexed(self, client, sample, path, "HOSTILE")
        self.assertEqual(snapshot() - before, set())
        self.assertEqual({p: os.stat(p).st_mtime_ns if os.path.exists(p) else None
                          for p in outside}, stat_before)


    async def test_symlink_planted_under_root(self) -> None:
        """A study directory that is a symbolic link to a directory outside the
        root makes the C-STORE fail (0x0110 with an Error Comment) instead of
        writing through the link: the outside directory stays empty, no .part
        is left and nothing is indexed; another study on the same association
        is stored."""
        server = await start_server(self)
        client = server.redis.client()
        base = os.path.abspath(self.mktemp())
        outside = os.path.join(base, "outside")
        os.makedirs(outside)
        trapped = corpus.write_small(os.path.join(base, "trapped.dcm"), CT)
        os.symlink(outside, os.path.join(server.root, trapped.study_uid))
        fine = corpus.write_small(os.path.join(base, "fine.dcm"), CT)
        result = await in_thread(pynetdicom_store, server.port, [trapped.path, fine.path],
                                 [(CT, [EXPLICIT])], "SYMLINK")
        (status, comment), second = result["statuses"]
        self.assertEqual(status, c.STATUS_PROCESSING_FAILURE, f"0x{status:04X} {comment}")
        self.assertTrue(comment)
        self.assertEqual(second, (0, ""))
        self.assertEqual(os.listdir(outside), [])
        self.assertEqual(temp_files(server.root), [])
        self.assertFalse(client.exists(f"{PREFIX}instance:{trapped.sop_instance_uid}"))
        check_stored(self, server.root, client, fine, "SYMLINK")


def hold_association(port: int, calling: str, inside: threading.Event,
                     proceed: threading.Event) -> int:
    """pynetdicom: associate, C-ECHO, set ``inside``, wait for ``proceed``,
    release; the echo status (-1 if not established)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(c.VERIFICATION_SOP_CLASS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
    try:
        if not assoc.is_established:
            return -1
        status = assoc.send_c_echo()
        inside.set()
        proceed.wait(60)
        return status.Status if status else -1
    finally:
        inside.set()
        if assoc.is_established:
            assoc.release()


class TwoProcessLockTests(TestCase):
    """Two ``twistd sdcc`` processes sharing one Redis and its AE lock."""

    timeout = 120

    def _two_servers(self) -> tuple[list[TwistdServer], list[int]]:
        redis = start_redis(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        servers, ports = [], []
        for name in ("a", "b"):
            port = free_port()
            ini = os.path.join(base, f"{name}.ini")
            with open(ini, "w", encoding="utf-8") as handle:
                handle.write(ini_text(os.path.join(base, name), redis.url, port=port,
                                      index={"lock": "redis"}))
            server = TwistdServer(self, ini)
            server.start(port)
            servers.append(server)
            ports.append(port)
        return servers, ports

    async def _echo(self, port: int, calling: str) -> tuple[str, int]:
        return await dcmtk(self, "echoscu", "-v", "-aet", calling, "-aec", "SDCC",
                           "127.0.0.1", str(port), timeout=30)

    def _assert_busy(self, out: str, code: int) -> None:
        self.assertNotEqual(code, 0, out)
        self.assertIn("Rejected Transient", out)
        self.assertIn("Local Limit Exceeded", out)

    async def _until_accepted(self, port: int, calling: str, limit: float) -> float:
        """Retry echoscu until it succeeds; the seconds it took."""
        started = time.monotonic()
        while True:
            out, code = await self._echo(port, calling)
            if code == 0 or time.monotonic() - started > limit:
                break
            await sleep(0.2)
        self.assertEqual(code, 0, out)
        self.assertIn("Received Echo Response (Success)", out)
        return time.monotonic() - started

    async def test_one_association_per_ae_across_processes(self) -> None:
        """While process A holds an association from MOD1 (pynetdicom), process
        B rejects MOD1 with 2/3/2 (echoscu: Rejected Transient, Local Limit
        Exceeded) and accepts MOD2, also after A held it for longer than the
        lock's 10 s expiry (A renews it); once A's association is released, B
        accepts MOD1 at once (within 1 s)."""
        _servers, (port_a, port_b) = self._two_servers()
        inside, proceed = threading.Event(), threading.Event()
        held = in_thread(hold_association, port_a, "MOD1", inside, proceed)
        await in_thread(inside.wait, 30)
        since = time.monotonic()
        try:
            self._assert_busy(*await self._echo(port_b, "MOD1"))
            out, code = await self._echo(port_b, "MOD2")
            self.assertEqual(code, 0, out)
            await sleep(max(0.0, 11.5 - (time.monotonic() - since)))
            self._assert_busy(*await self._echo(port_b, "MOD1"))
        finally:
            proceed.set()
        self.assertEqual(await held, 0)
        # the slot frees when A's transport closes: a peer that reconnects at
        # once is accepted (allow for pynetdicom closing its socket)
        took = await self._until_accepted(port_b, "MOD1", 1.0)
        print(f"\n[two processes] B accepted MOD1 {took:.2f} s after A released it")

    async def test_killed_process_frees_its_ae_slots(self) -> None:
        """Process A is killed (SIGKILL) while it holds MOD1's association: B
        still rejects MOD1 right after, and accepts it once A's Redis lock has
        expired (within its 10 s expiry plus 3 s)."""
        (server_a, _b), (port_a, port_b) = self._two_servers()
        inside, proceed = threading.Event(), threading.Event()
        held = in_thread(hold_association, port_a, "MOD1", inside, proceed)
        await in_thread(inside.wait, 30)
        try:
            server_a.kill()
            killed = time.monotonic()
            self._assert_busy(*await self._echo(port_b, "MOD1"))
        finally:
            proceed.set()
        await held
        await self._until_accepted(port_b, "MOD1", 13)
        print(f"\n[two processes] B accepted MOD1 {time.monotonic() - killed:.1f} s "
              f"after A was killed")
