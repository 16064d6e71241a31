"""A large journal backlog does not stall the server (issue 11, finding 5).

A generated backlog of pending journal entries (``SDCC_BACKLOG_ENTRIES``,
100,000 by default; ``bench/RESULTS.md`` has the 1,000,000 run) is replayed
by the running server against a real redis-server while a raw peer sends
C-ECHOs on one association: each is answered within 100 ms, and the
process's memory does not grow with the backlog, because the replay reads
it in bounded batches off the reactor thread.
"""

from __future__ import annotations

import json
import os
import resource
import time

from twisted.python import log
from twisted.trial.unittest import TestCase

from sdcc_twisted.config import default_node_id
from sdcc_twisted.storage.nodes import NodePaths

from .redis_support import start_redis, wait_for
from .server_support import in_thread, start_server
from .support import echo_command, pdata
from .test_hostile import RawPeer

ENTRIES = int(os.environ.get("SDCC_BACKLOG_ENTRIES", "100000"))
ECHOES = 1000


def rss_kib() -> int:
    """This process's resident set size (KiB)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def generate(pending: str, image: str, count: int) -> None:
    """``count`` journal entries, each a distinct instance of ``image``."""
    os.makedirs(pending, mode=0o700)
    for n in range(count):
        body = json.dumps({"format": 1, "record": {
            "sop_instance_uid": f"1.2.826.0.1.3680043.9.7.{n}", "sop_class_uid":
            "1.2.840.10008.5.1.4.1.1.2", "transfer_syntax": "1.2.840.10008.1.2.1",
            "path": image, "size": 10, "received_at": 1.0, "calling_ae": "BACKLOG",
            "attributes": {"PatientID": f"P{n % 100}", "StudyInstanceUID": "1.2.3",
                           "SeriesInstanceUID": "1.2.3.4"}}},
            sort_keys=True).encode("ascii")
        fd = os.open(os.path.join(pending, f"{n:020d}-1-{n:08d}.json"),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)


def echo_times(port: int, count: int) -> list[float]:
    """Seconds from each C-ECHO-RQ to its C-ECHO-RSP, on one association."""
    peer = RawPeer(port, timeout=10)
    try:
        peer.associate("BACKLOG")
        times = []
        for n in range(1, count + 1):
            started = time.monotonic()
            peer.send(pdata(1, 0x03, echo_command(n)))
            peer.read_command()
            times.append(time.monotonic() - started)
            time.sleep(0.01)
        peer.release()
        return times
    finally:
        peer.close()


class BacklogTests(TestCase):
    """The running server with a generated backlog while Redis is down: each
    replay round (every 5 s) stops at the first index call, which is when a
    round that reads the whole backlog first hurts most."""

    timeout = 600

    async def test_echo_answered_and_memory_flat_during_replay(self) -> None:
        """For 11 s (two replay rounds and more) C-ECHOs on one association
        are each answered within 100 ms and the resident memory grows by
        less than 64 MiB; once Redis is back the backlog is indexed and
        leaves the journal."""
        redis = start_redis(self)
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir, mode=0o700)
        image = os.path.join(data_dir, "image.dcm")
        with open(image, "wb") as handle:
            handle.write(b"\0" * 10)
        started = time.monotonic()
        # the journal of this node (``[server] node_id``'s default)
        pending = NodePaths.for_node(data_dir, "", default_node_id()).journal_dir
        generate(pending, image, ENTRIES)
        generated = time.monotonic() - started
        redis.stop()
        before = rss_kib()
        server = await start_server(self, redis, server={"data_dir": data_dir},
                                    index={"lock": "memory", "timeout": "0.5"})
        times = await in_thread(echo_times, server.port, ECHOES)
        grown = rss_kib() - before
        worst = max(times)
        log.msg(f"backlog {ENTRIES} entries (generated in {generated:.1f} s), Redis "
                f"down: {ECHOES} C-ECHOs over {sum(times) + ECHOES * 0.01:.1f} s, median "
                f"{sorted(times)[len(times) // 2] * 1000:.1f} ms, worst {worst * 1000:.1f} ms; "
                f"RSS grew {grown / 1024:.1f} MiB; peak RSS "
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        self.assertLess(worst, 0.1, sorted(times)[-5:])
        self.assertLess(grown, 64 * 1024)
        redis.start()
        client = redis.client()
        await wait_for(lambda: client.dbsize() > 0, 30, "the replay to index")
