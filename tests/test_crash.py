"""Crash safety: ``kill -9`` of a real ``twistd sdcc`` while it stores.

The server runs as a child process (``TwistdServer``) with ``fsync = yes``
and the test's own redis-server (which survives the kill, as an external
Redis would).  Several pynetdicom associations store small instances at the
same time; the server is killed with SIGKILL once about half of them were
acknowledged, then started again on the same data directory and port.

The promise checked (README: "Never loses an acknowledged image. ... Nothing
partial stays on disk"): every instance that got 0x0000 is on disk, reads
back with pydicom with the data set bytes that were sent, and is indexed;
no temp file survives the restart; an instance that did not get 0x0000 is
either absent or complete, never half-written.
"""

from __future__ import annotations

import os
import threading
import time

from twisted.python import log
from twisted.trial.unittest import TestCase

from sdcc_twisted.core import conformance as c

from . import corpus
from .redis_support import start_redis
from .server_support import TwistdServer, free_port, in_thread, ini_text
from .test_interop_echo import pynetdicom_echo
from .test_interop_store import (
    PREFIX,
    check_stored,
    dcm_files,
    expected_path,
    temp_files,
)
from .test_hostile import wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = c.EXPLICIT_VR_LITTLE_ENDIAN

SENDERS = 4
PER_SENDER = 30


class Sender:
    """One pynetdicom association storing its instances in order, noting
    for each whether it was sent and which status came back."""

    def __init__(self, port: int, calling: str, samples: list[corpus.Sample],
                 acked: list[str], lock: threading.Lock) -> None:
        self.port = port
        self.calling = calling
        self.samples = samples
        self.acked = acked
        self.lock = lock
        self.status: dict[str, int | None] = {}
        self.error: str | None = None

    def run(self) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling)
        ae.add_requested_context(CT, [EXPLICIT])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        try:
            assoc = ae.associate("127.0.0.1", self.port, ae_title="SDCC")
            if not assoc.is_established:
                self.error = "not established"
                return
            for sample in self.samples:
                if not assoc.is_established:
                    break
                uid = sample.sop_instance_uid
                self.status[uid] = None                     # sent, not answered
                try:
                    rsp = assoc.send_c_store(sample.path)
                except (RuntimeError, OSError):
                    break
                status = rsp.get("Status") if rsp else None
                self.status[uid] = status
                if status == 0x0000:
                    with self.lock:
                        self.acked.append(uid)
            if assoc.is_established:
                assoc.release()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = repr(exc)


class KillNineTests(TestCase):
    """SIGKILL in the middle of concurrent storage, then a restart."""

    timeout = 90

    async def test_acknowledged_instances_survive_kill_9(self) -> None:
        """4 associations store 30 small CTs each with fsync on; the server
        is SIGKILLed after about half were acknowledged and started again:
        every acknowledged instance is on disk with the bytes that were sent
        and is indexed, .tmp is empty, every other instance is absent or
        complete, no file is anywhere else, and the server serves again."""
        redis = start_redis(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        port = free_port()
        data_dir = os.path.join(base, "data")
        ini = os.path.join(base, "sdcc.ini")
        with open(ini, "w", encoding="utf-8") as handle:
            handle.write(ini_text(data_dir, redis.url, port=port, storage={"fsync": "yes"}))
        root = os.path.join(data_dir, "store")

        study = corpus.new_uid()
        samples = {
            f"CRASH{s}": [corpus.write_small(os.path.join(base, "in", f"{s}-{n}.dcm"), CT,
                                             study=study, number=n + 1)
                          for n in range(PER_SENDER)]
            for s in range(SENDERS)}
        by_uid = {x.sop_instance_uid: (ae, x) for ae, xs in samples.items() for x in xs}

        server = TwistdServer(self, ini)
        server.start(port)
        acked: list[str] = []
        lock = threading.Lock()
        senders = [Sender(port, ae, xs, acked, lock) for ae, xs in samples.items()]
        threads = [threading.Thread(target=s.run, daemon=True) for s in senders]
        started = time.monotonic()
        for t in threads:
            t.start()
        total = SENDERS * PER_SENDER
        await wait_for(lambda: len(acked) >= total // 2 or not any(t.is_alive() for t in threads),
                       40, "half of the instances to be acknowledged")
        server.kill()                                       # SIGKILL, by PID
        acked_at_kill = len(acked)
        killed_after = time.monotonic() - started
        parts_left = len(temp_files(root))                  # what the crash left
        await wait_for(lambda: not any(t.is_alive() for t in threads), 40,
                       "the senders to notice the dead server")
        self.assertEqual([s.error for s in senders], [None] * SENDERS)
        statuses = {uid: st for s in senders for uid, st in s.status.items()}
        acknowledged = {uid for uid, st in statuses.items() if st == 0x0000}
        self.assertEqual(len(acknowledged), len(acked))
        self.assertLess(acked_at_kill, total, "the kill came after the last instance")
        self.assertGreater(len(acknowledged), 0)
        self.assertTrue(set(statuses.values()) <= {0x0000, None}, statuses)

        restarted = TwistdServer(self, ini)
        restarted.start(port)
        self.assertEqual(temp_files(root), [], "a temp file survived the restart")

        client = redis.client()
        # Indexing happens before 0x0000 (or the journal replays it): allow
        # the replayer a few seconds all the same.
        await wait_for(lambda: all(client.exists(f"{PREFIX}instance:{uid}")
                                   for uid in acknowledged), 10, "the index entries")
        for uid in sorted(acknowledged):
            ae, sample = by_uid[uid]
            check_stored(self, root, client, sample, ae)

        expected = {expected_path(root, x) for _, x in by_uid.values()}
        present = set(dcm_files(root))
        self.assertEqual(present - expected, set(), "files outside the layout")
        incomplete = []
        for uid in set(by_uid) - acknowledged:
            _, sample = by_uid[uid]
            path = expected_path(root, sample)
            if os.path.exists(path):
                from pydicom import dcmread

                dcmread(path)                               # reads back whole
                if corpus.data_set_bytes(path) != corpus.data_set_bytes(sample.path):
                    incomplete.append(path)
        self.assertEqual(incomplete, [], "half-written files")
        result = await in_thread(pynetdicom_echo, port, "AFTERCRASH")
        self.assertEqual((result["established"], result.get("status")), (True, 0),
                         restarted.log()[-3000:])
        self.assertEqual(temp_files(root), [])
        unanswered = [uid for uid, st in statuses.items() if st is None]
        log.msg(f"kill -9 after {killed_after:.2f} s and {acked_at_kill} acknowledged; "
              f"{len(acknowledged)} acknowledged in all, {len(unanswered)} sent without "
              f"an answer, {parts_left} .part files left by the crash, {len(present)} "
              f"files after the restart")
