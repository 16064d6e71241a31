"""Auto-forwarding to a real DCMTK storescp: a destination that is down and
comes back later gets everything once, bit for bit; a kill -9 of twistd
mid-queue loses nothing; per-study rules wait for the study to be complete
and filter by modality; the disk queue on its own."""

from __future__ import annotations

import collections
import glob
import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from sdcc_twisted.storage.forward_queue import ForwardQueue

from .corpus import data_set_bytes
from .redis_support import sleep, start_redis, wait_for
from .server_support import TwistdServer, dcmtk, free_port, ini_text, start_server
from .test_interop_qr import StoreSCP, write_study

FAST = {"retry_first_delay": "0.2", "retry_max_delay": "0.5", "check_interval": "0.2",
        "max_attempts": "1000"}


def tickets(data_dir: str, destination: str) -> list[dict[str, Any]]:
    """The queued tickets of ``destination`` (in the node folders' queues)."""
    out = []
    for path in glob.glob(os.path.join(data_dir, "nodes", "*", "forward", destination,
                                       "*.json")):
        try:
            with open(path) as handle:
                out.append(json.load(handle))
        except FileNotFoundError:
            continue
    return out


def received_uids(dest: StoreSCP) -> collections.Counter[str]:
    """How many times each SOP Instance UID reached ``dest``."""
    import pydicom
    return collections.Counter(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dest.files())


class ForwardingTests(TestCase):
    """A server forwarding to DCMTK storescp."""

    timeout = 180

    async def test_destination_down_then_up(self) -> None:
        """Instances stored while the destination is down wait and are
        retried with back-off; once a storescp listens there, each arrives
        exactly once with its data set bit for bit, the queue empties, and
        the metrics count them per destination."""
        port = free_port()
        server = await start_server(self, move_destinations={"PACS": f"127.0.0.1:{port}"},
                                    forward_rules={"everything": "PACS"}, forward=FAST)
        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        files = write_study(source, "F1", "Fwd^One", "1.2.826.0.1.3680043.8.498.91", 2, 3,
                            "20240301")
        out, code = await dcmtk(self, "storescu", "-aet", "CT1", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *files)
        self.assertEqual(code, 0, out)
        self.assertEqual(len(tickets(server.data_dir, "PACS")), 6)
        await wait_for(lambda: all(t["attempts"] >= 2 for t in tickets(server.data_dir, "PACS")),
                       20, "two failed attempts each")
        self.assertIn("cannot reach PACS", tickets(server.data_dir, "PACS")[0]["last_error"])

        dest = StoreSCP(self, ae_title="PACS", port=port, unique_names=True)
        await wait_for(lambda: len(dest.files()) >= 6 and not tickets(server.data_dir, "PACS"),
                       30, "every instance at the destination")
        await sleep(1.0)                                      # several more checks
        self.assertEqual(len(dest.files()), 6)
        self.assertEqual(sorted(data_set_bytes(p) for p in dest.files()),
                         sorted(data_set_bytes(p) for p in files))
        monitor = server.service.monitor
        sent = monitor.registry.get_sample_value(
            "sdcc_forward_outcomes_total", {"destination": "PACS", "outcome": "sent"})
        failed = monitor.registry.get_sample_value(
            "sdcc_forward_outcomes_total", {"destination": "PACS", "outcome": "failed"})
        depth = monitor.registry.get_sample_value(
            "sdcc_forward_queue_depth", {"destination": "PACS", "state": "queued"})
        self.assertEqual((sent, depth), (6.0, 0.0))
        self.assertGreaterEqual(failed, 12.0)

    async def test_per_study_rule_with_modality(self) -> None:
        """A per-study rule for CT sends a CT study once it is complete and
        never an MR study; a per-instance rule for MR from one calling AE
        sends only what that AE stored of MR."""
        pacs, lab = StoreSCP(self, ae_title="PACS"), StoreSCP(self, ae_title="LAB")
        server = await start_server(
            self, move_destinations={"PACS": f"127.0.0.1:{pacs.port}",
                                     "LAB": f"127.0.0.1:{lab.port}"},
            forward_rules={"ct": "PACS per=study modality=CT",
                           "mr_from_ct2": "LAB calling=CT2 modality=MR"},
            studies={"quiet_seconds": "0.5"}, forward=FAST)
        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        ct = write_study(source, "F2", "Fwd^Two", "1.2.826.0.1.3680043.8.498.92", 1, 3,
                         "20240302", "CT")
        mr = write_study(source, "F3", "Fwd^Three", "1.2.826.0.1.3680043.8.498.93", 1, 2,
                         "20240303", "MR")
        for calling, files in (("CT1", ct), ("CT2", mr)):
            out, code = await dcmtk(self, "storescu", "-aet", calling, "-aec", "SDCC",
                                    "127.0.0.1", str(server.port), *files)
            self.assertEqual(code, 0, out)
        await wait_for(lambda: len(pacs.files()) >= 3 and len(lab.files()) >= 2, 30,
                       "the CT study at PACS and CT2's instances at LAB")
        await sleep(1.5)                                      # quiet periods and checks
        self.assertEqual(sorted(data_set_bytes(p) for p in pacs.files()),
                         sorted(data_set_bytes(p) for p in ct))
        self.assertEqual(sorted(data_set_bytes(p) for p in lab.files()),
                         sorted(data_set_bytes(p) for p in mr))

    async def test_held_study_released_when_its_event_was_lost(self) -> None:
        """A per-study rule holds a study's instances; when its
        study-complete event is claimed by a process that dies before acting
        on it (here: claimed behind the server's back), the server's check
        releases them once the study has been quiet, and they arrive once."""
        from twisted.internet import reactor

        from sdcc_twisted.storage.studies import StudyArrivals

        from .redis_support import connect, wait_connected

        pacs = StoreSCP(self, ae_title="PACS")
        server = await start_server(
            self, move_destinations={"PACS": f"127.0.0.1:{pacs.port}"},
            forward_rules={"archive": "PACS per=study"},
            studies={"quiet_seconds": "1"}, forward=FAST)
        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        files = write_study(source, "F6", "Lost^Event", "1.2.826.0.1.3680043.8.498.96", 1, 3,
                            "20240306")
        out, code = await dcmtk(self, "storescu", "-aet", "CT1", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *files)
        self.assertEqual(code, 0, out)
        client = server.redis.client()
        await wait_for(lambda: client.zcard("sdcc:arrivals") == 1, 10, "the arrivals noted")
        handler = connect(self, server.redis)
        await wait_connected(handler)
        claimed = await StudyArrivals(handler, reactor).claim(reactor.seconds() + 3600)
        self.assertEqual(claimed, [("1.2.826.0.1.3680043.8.498.96", 3)])
        self.assertEqual(pacs.files(), [])
        await wait_for(lambda: len(pacs.files()) >= 3, 20, "the held instances released")
        await sleep(1.0)
        self.assertEqual(sorted(data_set_bytes(p) for p in pacs.files()),
                         sorted(data_set_bytes(p) for p in files))

    async def test_kill_9_mid_queue(self) -> None:
        """twistd sdcc (fsync on) is SIGKILLed while it drains a queue of 40
        instances and started again: every instance reaches the destination,
        bit for bit, and none twice except at most the one whose response
        was in flight at the kill (its ticket was not yet removed)."""
        redis = start_redis(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        port, dest_port = free_port(), free_port()
        data_dir = os.path.join(base, "data")
        ini = os.path.join(base, "sdcc.ini")
        with open(ini, "w", encoding="utf-8") as handle:
            handle.write(ini_text(data_dir, redis.url, port=port, storage={"fsync": "yes"},
                                  move_destinations={"PACS": f"127.0.0.1:{dest_port}"},
                                  forward_rules={"everything": "PACS"},
                                  forward={**FAST, "batch": "5"}))
        source = os.path.join(base, "in")
        os.makedirs(source)
        files = write_study(source, "K9", "Kill^Nine", "1.2.826.0.1.3680043.8.498.94", 4, 10,
                            "20240304")
        server = TwistdServer(self, ini)
        server.start(port)
        out, code = await dcmtk(self, "storescu", "-aet", "CT1", "-aec", "SDCC",
                                "127.0.0.1", str(port), *files)
        self.assertEqual(code, 0, out)
        self.assertEqual(len(tickets(data_dir, "PACS")), 40)

        dest = StoreSCP(self, ae_title="PACS", port=dest_port, unique_names=True)
        await wait_for(lambda: len(dest.files()) >= 10, 30, "a quarter of the queue sent")
        server.kill()                                         # SIGKILL, by PID
        left = len(tickets(data_dir, "PACS"))
        self.assertGreater(left, 0, "the kill came after the queue was drained")
        server.start(port)
        await wait_for(lambda: not tickets(data_dir, "PACS"), 60, "the queue drained")
        await sleep(1.0)
        counts = received_uids(dest)
        self.assertEqual(len(counts), 40)
        self.assertLessEqual(sum(counts.values()) - 40, 1, counts.most_common(3))
        expected = sorted(data_set_bytes(p) for p in files)
        self.assertEqual(sorted(set(data_set_bytes(p) for p in dest.files())), expected)


class QueueTests(SynchronousTestCase):
    """storage.forward_queue on its own."""

    def test_tickets_retry_park_and_come_back(self) -> None:
        """Tickets come out oldest first when due; a failure sets the next
        try; the max_attempts-th failure parks it; retry_parked brings it
        back due now; done removes it; files are owner-only."""
        queue = ForwardQueue(self.mktemp())
        first = queue.add("PACS", "/a.dcm", "1.2.1", "1.1", "1.2.840.10008.1.2.1")
        second = queue.add("PACS", "/b.dcm", "1.2.1", "1.2", "1.2.840.10008.1.2.1")
        self.assertEqual([t.sop_instance_uid for t in queue.due("PACS", 0, 10)], ["1.1", "1.2"])
        self.assertEqual(oct(os.stat(os.path.join(queue.folder("PACS"), first.name)).st_mode
                             & 0o777), "0o600")
        self.assertFalse(queue.failed("PACS", first, "down", 100.0, 2))
        self.assertEqual([t.sop_instance_uid for t in queue.due("PACS", 50, 10)], ["1.2"])
        [again] = [t for t in queue.due("PACS", 100, 10) if t.name == first.name]
        self.assertEqual((again.attempts, again.last_error), (1, "down"))
        self.assertTrue(queue.failed("PACS", again, "still down", 200.0, 2))
        self.assertEqual(queue.depth("PACS"), (1, 1))
        self.assertEqual(queue.retry_parked("PACS"), 1)
        self.assertEqual([t.attempts for t in queue.due("PACS", 0, 10)], [0, 0])
        queue.done("PACS", second)
        self.assertEqual(queue.depth("PACS"), (1, 0))
        self.assertNotEqual(queue.folder("A/B"), queue.folder("A_B"))


class ParkedTests(TestCase):
    """Parking after max_attempts, and sdcc-admin forward."""

    timeout = 120

    async def test_parked_until_sdcc_admin_retries(self) -> None:
        """With max_attempts 2 and the destination down, the instances are
        parked (listed by sdcc-admin forward and forward parked); a
        destination that comes back gets nothing until sdcc-admin forward
        retry, then everything once."""
        import io

        from sdcc_twisted import admin

        port = free_port()
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        server = await start_server(self, move_destinations={"PACS": f"127.0.0.1:{port}"},
                                    forward_rules={"everything": "PACS"},
                                    forward={**FAST, "max_attempts": "2"})
        ini = os.path.join(base, "sdcc.ini")
        with open(ini, "w") as handle:
            handle.write(ini_text(server.data_dir, "redis://127.0.0.1:1/0",
                                  move_destinations={"PACS": f"127.0.0.1:{port}"},
                                  forward_rules={"everything": "PACS"}))
        files = write_study(base, "F5", "Park^Ed", "1.2.826.0.1.3680043.8.498.95", 1, 3,
                            "20240305")
        out, code = await dcmtk(self, "storescu", "-aet", "CT1", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *files)
        self.assertEqual(code, 0, out)

        def admin_out(*argv: str) -> str:
            buffer = io.StringIO()
            self.assertEqual(admin.main(["--config", ini, "forward", *argv], buffer,
                                        io.StringIO()), 0)
            return buffer.getvalue()
        await wait_for(lambda: admin_out() == "PACS: 0 queued, 3 parked\n", 20,
                       "three parked items")
        parked = admin_out("parked", "PACS").splitlines()
        self.assertEqual(len(parked), 3)
        self.assertIn("2 attempts\tcannot reach PACS", parked[0])

        dest = StoreSCP(self, ae_title="PACS", port=port)
        await sleep(1.0)                                      # several checks
        self.assertEqual(dest.files(), [])
        self.assertEqual(admin_out("retry"), "PACS: 3 parked item(s) queued again\n")
        await wait_for(lambda: len(dest.files()) == 3, 20, "the retried instances")
        self.assertEqual(admin_out(), "PACS: 0 queued, 0 parked\n")
        self.assertEqual(sorted(data_set_bytes(p) for p in dest.files()),
                         sorted(data_set_bytes(p) for p in files))
