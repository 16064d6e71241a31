"""The Monitor: what the runtime reports, as metrics and as the page's JSON."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from sdcc_twisted.core.conformance import (
    C_FIND_RQ,
    C_STORE_RQ,
    REJECT_APPLICATION_CONTEXT,
    REJECT_CALLING_AE,
    REJECT_TOO_MANY,
)
from sdcc_twisted.core.pdu import AAbort, AReleaseRQ, encode
from sdcc_twisted.monitor import OTHER_AE, Monitor

from .support import associate_rq, dataset_bytes, message_pdus, store_command
from .test_protocol import ProtocolTestBase

CT = "1.2.840.10008.5.1.4.1.1.2"


def value(monitor: Monitor, name: str, **labels: str) -> float:
    """A sample's value from the monitor's own registry (0 when absent)."""
    return monitor.registry.get_sample_value(name, labels or None) or 0.0


def store(size: int = 100, patient: str = "Doe^Jane") -> Any:
    """A C-STORE reception as the runtime hands it to the monitor."""
    return SimpleNamespace(
        command=SimpleNamespace(command_field=C_STORE_RQ, affected_sop_class_uid=CT),
        size=size, settled=defer.Deferred(),
        record=SimpleNamespace(attributes={"PatientName": patient}))


def status(code: int) -> Any:
    return SimpleNamespace(status=code, success=code == 0)


class MonitorTests(SynchronousTestCase):
    """Counts, durations, labels and the status JSON."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)

    def test_association_outcomes_and_gauge(self) -> None:
        """Accepted associations count in the gauge while open; closing counts
        released or aborted by the logged outcome; a rejected one counts as
        rejected and its reason (triple and words, or the limit) separately."""
        monitor = Monitor(self.clock)
        a, b, c = object(), object(), object()
        monitor.association_accepted(a, "127.0.0.1:1", "CT1")
        monitor.association_accepted(b, "127.0.0.1:2", "MR1")
        self.assertEqual(value(monitor, "sdcc_associations_active"), 2)
        monitor.association_closed(a, "released")
        monitor.association_closed(b, "aborted by peer")
        monitor.association_rejected(REJECT_CALLING_AE)
        monitor.association_closed(c, "rejected 1/1/3")
        monitor.association_rejected(REJECT_TOO_MANY, "max_associations=64")
        monitor.association_closed(object(), "closed before association")
        self.assertEqual(value(monitor, "sdcc_associations_active"), 0)
        self.assertEqual(value(monitor, "sdcc_associations_total", outcome="released"), 1)
        self.assertEqual(value(monitor, "sdcc_associations_total", outcome="aborted"), 1)
        self.assertEqual(value(monitor, "sdcc_associations_total", outcome="rejected"), 1)
        self.assertEqual(value(monitor, "sdcc_association_rejects_total",
                               reason="1/1/3 calling-AE-title-not-recognized"), 1)
        self.assertEqual(value(monitor, "sdcc_association_rejects_total",
                               reason="2/3/2 max_associations"), 1)

    def test_store_counts_duration_and_backlog(self) -> None:
        """A C-STORE answered counts per calling AE (or per status when it
        failed), observes last fragment to answer in the histogram, and stays
        in the index backlog until its record is indexed."""
        monitor = Monitor(self.clock)
        conn = object()
        monitor.association_accepted(conn, "127.0.0.1:1", "CT1")
        monitor.received(conn, 5000)
        ok, bad = store(4000), store(10)
        monitor.last_fragment(ok)
        self.clock.advance(0.02)
        monitor.answered(conn, ok, status(0))
        monitor.last_fragment(bad)
        monitor.answered(conn, bad, status(0xA700))
        self.assertEqual(value(monitor, "sdcc_instances_stored_total", calling_ae="CT1"), 1)
        self.assertEqual(value(monitor, "sdcc_instances_failed_total", status="0xA700"), 1)
        self.assertEqual(value(monitor, "sdcc_store_duration_seconds_count"), 2)
        self.assertAlmostEqual(value(monitor, "sdcc_store_duration_seconds_sum"), 0.02, 3)
        self.assertEqual(value(monitor, "sdcc_bytes_received_total"), 5000)
        self.assertEqual(value(monitor, "sdcc_index_backlog"), 1)
        ok.settled.callback(None)
        self.assertEqual(value(monitor, "sdcc_index_backlog"), 0)
        live = monitor.status()["associations"][0]
        self.assertEqual((live["instances"], live["failed"], live["bytes"]), (1, 1, 5000))

    def test_bytes_per_second_follows_the_peer(self) -> None:
        """An association's bytes/s is what arrived over the last window, and
        drops to 0 when the peer stops sending."""
        monitor = Monitor(self.clock)
        conn = object()
        monitor.association_accepted(conn, "127.0.0.1:1", "CT1")
        for _ in range(4):
            monitor.received(conn, 1000)
            self.clock.advance(0.5)
        monitor.received(conn, 1000)
        self.assertEqual(monitor.status()["associations"][0]["bytes_per_second"], 2000)
        self.clock.advance(10)
        self.assertEqual(monitor.status()["associations"][0]["bytes_per_second"], 0)
        self.assertEqual(monitor.status()["associations"][0]["bytes"], 5000)

    def test_query_duration_by_operation(self) -> None:
        """A C-FIND's identifier-to-final-response time goes to
        sdcc_query_duration_seconds{operation="find"}, not to the store counts."""
        monitor = Monitor(self.clock)
        find = SimpleNamespace(command=SimpleNamespace(command_field=C_FIND_RQ))
        monitor.last_fragment(find)
        self.clock.advance(0.5)
        monitor.answered(object(), find, status(0))
        self.assertEqual(value(monitor, "sdcc_query_duration_seconds_count",
                               operation="find"), 1)
        self.assertEqual(value(monitor, "sdcc_query_duration_seconds_sum",
                               operation="find"), 0.5)
        self.assertEqual(value(monitor, "sdcc_store_duration_seconds_count"), 0)

    def test_calling_ae_label_is_bounded(self) -> None:
        """Without an allow-list the first max_ae_labels titles are labels and
        the rest are "other"; with one, only allow-listed titles are labels."""
        monitor = Monitor(self.clock, max_ae_labels=3)
        labels = [monitor.ae_label(f"AE{n}") for n in range(5)]
        self.assertEqual(labels, ["AE0", "AE1", "AE2", OTHER_AE, OTHER_AE])
        self.assertEqual(monitor.ae_label("AE1"), "AE1")
        listed = Monitor(self.clock, allowed_aes=frozenset({"CT1", "MR1@10.0.0.5"}))
        self.assertEqual([listed.ae_label(t) for t in ("CT1", "MR1", "EVIL")],
                         ["CT1", "MR1", OTHER_AE])

    def test_status_hides_patient_names_unless_configured(self) -> None:
        """The recent instances carry no patient name unless
        show_patient_data; then they do."""
        for show in (False, True):
            monitor = Monitor(self.clock, show_patient_data=show)
            conn = object()
            monitor.association_accepted(conn, "127.0.0.1:1", "CT1")
            monitor.answered(conn, store(), status(0))
            recent = monitor.status()["recent"][0]
            self.assertEqual((recent["calling_ae"], recent["sop_class"], recent["size"]),
                             ("CT1", "CT Image Storage", 100))
            self.assertEqual(recent.get("patient_name"), "Doe^Jane" if show else None)

    def test_today_resets_at_utc_midnight(self) -> None:
        """The per-AE table counts the current UTC day only."""
        monitor = Monitor(self.clock)
        conn = object()
        monitor.association_accepted(conn, "127.0.0.1:1", "CT1")
        monitor.answered(conn, store(), status(0))
        self.assertEqual(monitor.status()["today"]["per_ae"][0]["stored"], 1)
        self.clock.advance(86400)
        self.assertEqual(monitor.status()["today"]["per_ae"], [])


class RuntimeReportsTests(ProtocolTestBase):
    """The association runtime (StringTransport, task.Clock) reports into the
    factory's monitor."""

    def test_runtime_hooks(self) -> None:
        """A stored instance, fed one byte at a time, counts for its AE with
        its duration; a release, an abort, a cap reject, a policy reject and
        the state machine's protocol-version reject each count under their
        outcome and reason (in words); bytes read are counted."""
        monitor = self.factory.monitor
        proto, transport = self.associate("CT1", 1)
        self.sent(transport)
        self.assertEqual(value(monitor, "sdcc_associations_active"), 1)
        data = dataset_bytes("1.2.3.4.5", pixels=b"\x01\x02" * 500)
        stream = message_pdus(3, store_command("1.2.3.4.5"), data, 4000)
        for n in range(len(stream)):
            proto.dataReceived(stream[n:n + 1])
        self.assertEqual(value(monitor, "sdcc_instances_stored_total", calling_ae="CT1"), 1)
        self.assertEqual(value(monitor, "sdcc_store_duration_seconds_count"), 1)
        self.assertGreater(value(monitor, "sdcc_bytes_received_total"), len(data))
        proto.dataReceived(encode(AReleaseRQ()))
        self.close(proto, transport)
        aborted, t2 = self.associate("MR1", 2)
        aborted.dataReceived(encode(AAbort(0, 0)))
        self.close(aborted, t2)
        for n in range(3):
            self.associate(f"AE{n}", 10 + n)
        capped, t3 = self.associate("AE9", 19)
        self.close(capped, t3)
        wrong, t4 = self.connect(20)
        wrong.dataReceived(encode(associate_rq(application_context="1.2.3")))
        self.close(wrong, t4)
        old, t5 = self.connect(21)
        old.dataReceived(encode(associate_rq(protocol_version=2)))
        self.close(old, t5)
        self.assertEqual(value(monitor, "sdcc_associations_total", outcome="released"), 1)
        self.assertEqual(value(monitor, "sdcc_associations_total", outcome="aborted"), 1)
        self.assertEqual(value(monitor, "sdcc_associations_total", outcome="rejected"), 3)
        self.assertEqual(value(monitor, "sdcc_association_rejects_total",
                               reason="2/3/2 max_associations"), 1)
        self.assertEqual(value(monitor, "sdcc_association_rejects_total",
                               reason=f"1/1/2 {REJECT_APPLICATION_CONTEXT.text}"), 1)
        self.assertEqual(value(monitor, "sdcc_association_rejects_total",
                               reason="1/2/2 protocol-version-not-supported"), 1)
        self.assertEqual(value(monitor, "sdcc_associations_active"), 3)
