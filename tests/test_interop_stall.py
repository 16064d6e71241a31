"""A disk that stops answering stalls one association only (issue 13).

The reactor never waits on a file: a C-GET whose stored file is a FIFO
(a read that never returns, as on a hung NFS mount) and a C-STORE whose
writes wait on an event each hold one disk worker, while a C-ECHO from
another AE is answered within 100 ms and another AE's stores complete.
Real peers throughout: DCMTK getscu and storescu, pynetdicom for the timed
C-ECHO.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

from twisted.internet import reactor, utils
from twisted.trial.unittest import TestCase

from .redis_support import wait_for
from .server_support import DCMTK_ENV, dcmtk, in_thread, start_server
from .support import require_tool
from .test_interop_qr import write_study
from .test_interop_store import dcm_files

VERIFICATION = "1.2.840.10008.1.1"
STUDY = "1.2.826.0.1.3680043.8.498.77"
#: how long a C-ECHO may take while another association's disk is stalled
ECHO_BOUND = 0.100
#: after this many seconds the stalled disk answers anyway (a reactor that
#: waits on it then fails the test rather than hanging it)
STALL_GUARD = 30.0


def timed_echoes(port: int, count: int = 3) -> list[tuple[int, float]]:
    """``count`` associations from AE PINGER, one C-ECHO each: (status,
    seconds from A-ASSOCIATE-RQ to C-ECHO-RSP) per association."""
    from pynetdicom import AE

    ae = AE(ae_title="PINGER")
    ae.add_requested_context(VERIFICATION)
    results = []
    for _ in range(count):
        started = time.monotonic()
        assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
        if not assoc.is_established:
            results.append((-1, time.monotonic() - started))
            continue
        status = assoc.send_c_echo()
        results.append((status.Status if status else -1, time.monotonic() - started))
        assoc.release()
    return results


class StallTests(TestCase):
    """One association's stalled disk leaves the others served."""

    timeout = 180

    def assert_others_served(self, echoes: list[tuple[int, float]]) -> None:
        """Every C-ECHO answered 0x0000 within :data:`ECHO_BOUND`."""
        for status, seconds in echoes:
            self.assertEqual(status, 0x0000, echoes)
            self.assertLess(seconds, ECHO_BOUND, echoes)

    async def store_other(self, server: Any, count: int = 4) -> list[str]:
        """storescu from AE OTHER stores ``count`` new instances; their
        paths as sent."""
        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        files = write_study(source, "P9", "Other^Ann", STUDY + ".9", 1, count, "20240101")
        out, code = await dcmtk(self, "storescu", "-aet", "OTHER", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *files, timeout=60)
        self.assertEqual(code, 0, out)
        return files

    async def test_cget_of_a_fifo_stalls_only_itself(self) -> None:
        """A C-GET whose stored file is a FIFO blocks in a disk worker, not
        the reactor: C-ECHOs from another AE are answered within 100 ms and
        another AE's C-STOREs succeed meanwhile; once the FIFO is fed the
        C-GET finishes with every instance."""
        server = await start_server(self)
        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        files = write_study(source, "P7", "Stall^Sam", STUDY, 1, 3, "20240202")
        out, code = await dcmtk(self, "storescu", "-aet", "LOADER", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *files)
        self.assertEqual(code, 0, out)
        stored = dcm_files(server.root)
        self.assertEqual(len(stored), 3)
        victim = stored[0]
        with open(victim, "rb") as handle:
            content = handle.read()
        os.unlink(victim)
        os.mkfifo(victim, 0o600)
        target = os.path.abspath(self.mktemp())
        os.makedirs(target)
        getting = utils.getProcessOutputAndValue(
            require_tool(self, "getscu"),
            ["-S", "-aet", "GETTER", "-aec", "SDCC", "-od", target,
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
             "127.0.0.1", str(server.port)], env=DCMTK_ENV)
        getting.addTimeout(120, reactor)
        writer: list[int] = []
        feeding = threading.Lock()

        def feed() -> None:
            # idempotent; from the guard thread too, so that a reactor stuck
            # in open() (the defect this test is for) fails the test instead
            # of hanging it
            with feeding:
                if not writer:
                    writer.append(os.open(victim, os.O_WRONLY))
                if writer[0] < 0:
                    return
                os.set_blocking(writer[0], True)
                try:
                    os.write(writer[0], content)
                finally:
                    os.close(writer[0])
                    writer[0] = -1
        fired: list[bool] = []
        guard = threading.Timer(STALL_GUARD, lambda: (fired.append(True), feed()))
        guard.daemon = True
        guard.start()
        self.addCleanup(guard.cancel)

        def server_reads_fifo() -> bool:
            # succeeds only once the server has the FIFO open for reading;
            # the server then waits in read() for data that does not come
            with feeding:
                if writer:
                    return True
                try:
                    writer.append(os.open(victim, os.O_WRONLY | os.O_NONBLOCK))
                except OSError as exc:
                    if exc.errno != errno.ENXIO:
                        raise
                    return False
            return True

        try:
            await wait_for(server_reads_fifo, STALL_GUARD, "the C-GET to open the FIFO")
            echoes = await in_thread(timed_echoes, server.port)
            others = await self.store_other(server)
            self.assertFalse(getting.called, "the C-GET was not stalled")
        finally:
            await in_thread(feed)
        self.assertEqual(fired, [], "the reactor waited on the stalled disk")
        self.assert_others_served(echoes)
        self.assertEqual(len(dcm_files(server.root)), 3 + len(others))
        out, err, code = await getting
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        self.assertEqual(len(os.listdir(target)), 3, out)

    async def test_store_with_blocked_writes_stalls_only_itself(self) -> None:
        """A C-STORE whose writes wait on the disk holds its association
        only: C-ECHOs from another AE are answered within 100 ms and another
        AE's C-STOREs succeed; once the disk answers, the stalled store
        succeeds too."""
        server = await start_server(self)
        store = server.service.store
        entered = threading.Event()
        release = threading.Event()
        waited_out: list[bool] = []
        self.addCleanup(release.set)
        original_new_sink = store.new_sink

        def new_sink(sop_class: str, uid: str, syntax: str, calling_ae: str) -> Any:
            sink = original_new_sink(sop_class, uid, syntax, calling_ae)
            if calling_ae.strip() == "STALLED":
                write = sink.store

                def blocked_write(data: Any) -> None:
                    entered.set()
                    if not release.wait(STALL_GUARD):
                        waited_out.append(True)
                    write(data)
                sink.store = blocked_write  # type: ignore[method-assign]
            return sink
        store.new_sink = new_sink  # type: ignore[method-assign]

        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        files = write_study(source, "P8", "Slow^Sid", STUDY + ".8", 1, 2, "20240303")
        stalled = utils.getProcessOutputAndValue(
            require_tool(self, "storescu"),
            ["-aet", "STALLED", "-aec", "SDCC", "127.0.0.1", str(server.port), *files],
            env=DCMTK_ENV)
        stalled.addTimeout(120, reactor)
        try:
            await wait_for(entered.is_set, STALL_GUARD, "the stalled C-STORE to write")
            echoes = await in_thread(timed_echoes, server.port)
            others = await self.store_other(server)
            self.assertFalse(stalled.called, "the C-STORE was not stalled")
            self.assertEqual(waited_out, [], "the reactor waited on the stalled disk")
        finally:
            release.set()
        self.assert_others_served(echoes)
        out, err, code = await stalled
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        self.assertEqual(len(dcm_files(server.root)), len(files) + len(others))
