"""``[server] workers``: several reactor processes on one port.

The interop tests run ``twistd sdcc`` with ``workers = 2`` and the embedded
Redis (started once, by the parent), and drive it with DCMTK and pynetdicom.
"""

from __future__ import annotations

import os
import re
import signal

import redis

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sdcc_twisted.admin import embedded_url
from sdcc_twisted.config import ConfigError, parse_settings
from sdcc_twisted.workers import worker_settings

from . import corpus
from .redis_support import wait_for
from .server_support import TwistdServer, dcmtk, free_port, in_thread, ini_text
from .test_interop_faults import CT
from .test_interop_store import (
    PREFIX,
    check_stored,
    dcm_files,
    storescu_successes,
    temp_files,
)
from .test_sentinel import hold_association


class WorkerSettingsTests(SynchronousTestCase):
    """``[server] workers`` and what each worker runs with."""

    def test_values(self) -> None:
        """A number, or auto for the number of cores; 1 by default."""
        self.assertEqual(parse_settings("").server.workers, 1)
        self.assertEqual(parse_settings("[server]\nworkers = 3\n").server.workers, 3)
        self.assertEqual(parse_settings("[server]\nworkers = auto\n").server.workers,
                         os.cpu_count() or 1)

    def test_refused_names_section_and_key(self) -> None:
        """0, words, a listener other than tcp:, or the in-process lock with
        several workers stop start-up naming the section and key."""
        cases = {
            "[server]\nworkers = 0\n": "[server] workers",
            "[server]\nworkers = many\n": "[server] workers",
            "[server]\nworkers = 2\nlisten = unix:/run/sdcc.sock\n": "[server] workers",
            "[server]\nworkers = 2\n[index]\nlock = memory\n": "[index] lock",
        }
        for text, where in cases.items():
            with self.subTest(text=text):
                with self.assertRaises(ConfigError) as caught:
                    parse_settings(text, "w.ini")
                self.assertIn(f"w.ini: {where}", str(caught.exception))

    def test_worker_settings(self) -> None:
        """Worker K is node {node_id}-wK, one process, on the parent's Redis,
        with the Redis per-AE lock."""
        settings = parse_settings("[server]\nworkers = 4\nnode_id = pacs1\n")
        worker = worker_settings(settings, 2, "unix:///d/redis.sock")
        self.assertEqual((worker.server.node_id, worker.server.workers, worker.index.redis,
                          worker.index.lock),
                         ("pacs1-w2", 1, "unix:///d/redis.sock", "redis"))
        self.assertEqual(worker.server.listen, settings.server.listen)


def worker_pids(log_text: str) -> dict[int, list[int]]:
    """Worker number -> the PIDs it was started with, from the parent's log."""
    pids: dict[int, list[int]] = {}
    for number, pid in re.findall(r"worker (\d+) started \(pid (\d+)", log_text):
        pids.setdefault(int(number), []).append(int(pid))
    return pids


class WorkersInteropTests(TestCase):
    """``twistd sdcc`` with two workers and the embedded Redis."""

    timeout = 180

    def start(self) -> tuple[TwistdServer, int, str]:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        port = free_port()
        data_dir = os.path.join(base, "data")
        ini = os.path.join(base, "sdcc.ini")
        with open(ini, "w", encoding="utf-8") as handle:
            handle.write(ini_text(data_dir, "embedded", port=port,
                                  server={"workers": "2", "node_id": "host"}))
        server = TwistdServer(self, ini)
        server.start(port)
        self.base = base
        return server, port, data_dir

    async def test_per_ae_rule_and_kill_9_of_a_worker(self) -> None:
        """HOLDER keeps an association open; every further association from
        HOLDER is refused, whichever worker takes it.  Four AEs store with
        storescu, both workers serve; one worker is killed with SIGKILL
        mid-ingest.  The parent starts it again, every instance storescu
        got Success for is on disk and indexed (in the one embedded Redis),
        no temp file is left, and the port serves all along."""
        server, port, data_dir = self.start()
        await wait_for(lambda: len(worker_pids(server.log())) == 2, 20, "two workers")
        holder = await in_thread(hold_association, port, "HOLDER")
        for _ in range(6):
            out, code = await dcmtk(self, "echoscu", "-v", "-aet", "HOLDER", "-aec", "SDCC",
                                    "127.0.0.1", str(port), timeout=30)
            self.assertNotIn("Received Echo Response (Success)", out)
            self.assertIn("Association Rejected", out)
        self.assertEqual(await in_thread(holder.send_c_echo), 0x0000)
        await in_thread(holder.release)

        study = corpus.new_uid()
        acknowledged: list[corpus.Sample] = []
        state = {"killed": False, "batches_after": 0}

        async def sender(ae: str) -> None:
            for batch in range(30):
                if state["batches_after"] >= 8:
                    return
                series = corpus.new_uid()
                samples = [corpus.write_small(os.path.join(self.base, "in", ae,
                                                           f"{batch}-{k}.dcm"),
                                              CT, study=study, series=series, number=k)
                           for k in range(15)]
                out, code = await dcmtk(self, "storescu", "-v", "-aet", ae, "-aec", "SDCC",
                                        "127.0.0.1", str(port), *[s.path for s in samples],
                                        timeout=60)
                # storescu sends in order and stops when its association
                # goes: a batch cut by the kill counts what was acknowledged
                acknowledged.extend(samples[:storescu_successes(out)])
                if state["killed"]:
                    state["batches_after"] += 1

        async def killer() -> None:
            await wait_for(lambda: len(acknowledged) >= 60, 60, "60 acknowledged")
            victim = worker_pids(server.log())[0][-1]
            os.kill(victim, signal.SIGKILL)
            state["killed"] = True
            await wait_for(lambda: len(worker_pids(server.log()).get(0, [])) == 2, 30,
                           "worker 0 to be started again")

        await defer.gatherResults(
            [defer.Deferred.fromCoroutine(sender(f"CT{n}")) for n in range(4)]
            + [defer.Deferred.fromCoroutine(killer())], consumeErrors=True)
        log_text = server.log()
        self.assertIn("worker 0 ended", log_text)
        served = {w for w in ("w0", "w1")
                  if re.search(rf"{w}: \[sdcc.association#info\] association accepted",
                               log_text)}
        self.assertEqual(served, {"w0", "w1"})
        root = os.path.join(data_dir, "store")
        client = redis.Redis.from_url(embedded_url(data_dir), decode_responses=True,
                                      socket_timeout=5)
        await wait_for(lambda: all(client.exists(f"{PREFIX}instance:{s.sop_instance_uid}")
                                   for s in acknowledged), 30,
                       "every acknowledged instance indexed")
        for sample in acknowledged:
            calling = client.hget(f"{PREFIX}instance:{sample.sop_instance_uid}", "calling_ae")
            check_stored(self, root, client, sample, calling)
        await wait_for(lambda: not temp_files(root), 10, "no temp file left")
        self.assertGreaterEqual(len(dcm_files(root)), len(acknowledged))
        out, code = await dcmtk(self, "echoscu", "-aet", "AFTER", "-aec", "SDCC",
                                "127.0.0.1", str(port), timeout=30)
        self.assertEqual(code, 0, out)
        print(f"\n[workers] {len(acknowledged)} instances acknowledged and indexed around "
              f"a kill -9 of worker 0")
