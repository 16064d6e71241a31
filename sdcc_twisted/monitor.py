"""What the server is doing now: the numbers behind ``/metrics`` and the
status page.

The runtime and the services report into one :class:`Monitor` (a line per
hook); the HTTP surface (:mod:`sdcc_twisted.http`) reads it.  The metrics
live in the monitor's own prometheus-client ``CollectorRegistry``, never the
global one, so two servers in one process do not mix.  Nothing here carries
patient data except the status page's list of recent instances, and only
with ``[http] show_patient_data = yes``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final
from typing import Protocol as TypingProtocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

from sdcc_twisted.core import conformance
from sdcc_twisted.core.conformance import (
    C_FIND_RQ,
    C_GET_RQ,
    C_MOVE_RQ,
    C_STORE_RQ,
    RejectReason,
    sop_class_name,
)

__all__ = ["OTHER_AE", "QUERY_OPERATIONS", "ISpaceReport", "Monitor"]

#: The ``calling_ae`` label once :attr:`Monitor.max_ae_labels` titles were seen.
OTHER_AE: Final = "other"

#: ``sdcc_query_duration_seconds{operation}`` by request command field.
QUERY_OPERATIONS: Final = {C_FIND_RQ: "find", C_MOVE_RQ: "move", C_GET_RQ: "get"}

#: The words of each reject triple the conformance tables name.
REJECT_WORDS: Final = {(r.result, r.source, r.reason): r.text
                       for r in vars(conformance).values() if isinstance(r, RejectReason)}

#: Seconds over which an association's bytes/s is measured.
RATE_WINDOW: Final = 2.0

#: Store latency buckets (seconds): a small file without fsync takes about a
#: millisecond, a large one with fsync on a slow disk several seconds; fine
#: below 3 ms so that the benchmark's p50/p99 per small instance mean something.
STORE_BUCKETS: Final = (0.0002, 0.0004, 0.0006, 0.0008, 0.001, 0.0015, 0.002, 0.003,
                        0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5, 5.0, 10.0)


class ISpaceReport(Interface):
    """Free space on the volumes sdcc writes to, and the configured floor
    (``[storage] min_free_space``)."""

    def free_bytes() -> dict[str, int]:
        """Free bytes per volume: ``storage_root`` and ``data_dir`` (blocking)."""

    def below_floor() -> list[str]:
        """The volumes below the floor (empty: storing is possible; blocking)."""


class Operation(TypingProtocol):
    """What the monitor reads of a C-STORE reception or a Q/R operation."""

    command: Any


@dataclass
class LiveAssociation:
    """One established association, as the status page shows it."""

    peer: str
    calling_ae: str
    since: float
    instances: int = 0
    failed: int = 0
    bytes: int = 0
    window_start: float = 0.0
    window_bytes: int = 0
    rate: float = 0.0

    def count(self, size: int, now: float) -> None:
        """``size`` bytes arrived at ``now``."""
        self.bytes += size
        self.rate_at(now)
        self.window_bytes += size

    def rate_at(self, now: float) -> float:
        """Bytes per second over the last completed window; 0 once the peer
        went quiet for a whole window."""
        elapsed = now - self.window_start
        if elapsed >= RATE_WINDOW:
            self.rate = self.window_bytes / elapsed if elapsed < 2 * RATE_WINDOW else 0.0
            self.window_start, self.window_bytes = now, 0
        return self.rate


@dataclass
class AEDay:
    """One calling AE's counts for the current UTC day."""

    stored: int = 0
    failed: int = 0
    bytes: int = 0


@dataclass
class RecentInstance:
    """One answered C-STORE, newest first on the page."""

    time: float
    calling_ae: str
    sop_class: str
    size: int
    status: int
    patient_name: str | None = None


@dataclass
class _Day:
    date: str = ""
    per_ae: dict[str, AEDay] = field(default_factory=dict)


class Monitor:
    """Counts what the server does; reports it to Prometheus and the page.

    Args:
        clock: an ``IReactorTime`` (durations, uptime, "since").
        version: the server version shown on the page.
        allowed_aes: the allow-listed calling AE titles (``AE`` or
            ``AE@address``); when given they are the only ``calling_ae``
            labels besides :data:`OTHER_AE`.
        show_patient_data: keep the Patient's Name of recent instances.
        recent: how many recent instances the page lists.
        max_ae_labels: distinct calling AE labels before :data:`OTHER_AE`.
    """

    def __init__(self, clock: IReactorTime, version: str = "",
                 allowed_aes: frozenset[str] | None = None,
                 show_patient_data: bool = False, recent: int = 20,
                 max_ae_labels: int = 100) -> None:
        self.clock = clock
        self.version = version
        self.started = clock.seconds()
        self.show_patient_data = show_patient_data
        self.max_ae_labels = max_ae_labels
        self.allowed_aes = (frozenset(t.partition("@")[0].strip() for t in allowed_aes)
                            if allowed_aes else None)
        self.listening = False
        self.redis_up: bool | None = None
        self.journal_pending = 0
        self.in_flight = 0
        self.disk_free: dict[str, int] = {}
        self.live: dict[object, LiveAssociation] = {}
        self.recent: deque[RecentInstance] = deque(maxlen=recent)
        self._labels: set[str] = set()
        self._last_fragment: dict[int, float] = {}
        self._day = _Day()

        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.associations_active = Gauge(
            "sdcc_associations_active", "Associations established now.",
            registry=registry)
        self.associations_active.set_function(lambda: len(self.live))
        self.associations_total = Counter(
            "sdcc_associations", "Associations ended, by outcome.", ["outcome"],
            registry=registry)
        self.association_rejects = Counter(
            "sdcc_association_rejects", "A-ASSOCIATE-RJ sent, by reason "
            "(result/source/reason and its name, or the limit reached).", ["reason"],
            registry=registry)
        self.connections_refused = Counter(
            "sdcc_connections_refused", "Connections refused at accept time, by "
            "the cap reached (max_connections or max_connections_per_address).",
            ["limit"], registry=registry)
        self.instances_stored = Counter(
            "sdcc_instances_stored", "Instances stored (C-STORE answered 0x0000).",
            ["calling_ae"], registry=registry)
        self.instances_failed = Counter(
            "sdcc_instances_failed", "C-STORE answered with a failure or warning "
            "status, by status.", ["status"], registry=registry)
        self.bytes_received = Counter(
            "sdcc_bytes_received", "Bytes read from DICOM connections.",
            registry=registry)
        self.store_duration = Histogram(
            "sdcc_store_duration_seconds", "C-STORE: last data fragment in to "
            "the response out.", buckets=STORE_BUCKETS, registry=registry)
        self.query_duration = Histogram(
            "sdcc_query_duration_seconds", "C-FIND/C-MOVE/C-GET: identifier in "
            "to the final response out.", ["operation"], registry=registry)
        backlog = Gauge(
            "sdcc_index_backlog", "Stored instances not yet in the index (on "
            "their way from the write-ahead log, or in the pending journal).",
            registry=registry)
        backlog.set_function(self.backlog)
        self.forward_queued = Gauge(
            "sdcc_forward_queue_depth", "Instances waiting to be forwarded, by "
            "destination and state (queued, parked).", ["destination", "state"],
            registry=registry)
        self.forward_outcomes = Counter(
            "sdcc_forward_outcomes", "Forwarding steps by destination and outcome "
            "(queued, sent, failed, parked).", ["destination", "outcome"], registry=registry)
        redis_up = Gauge("sdcc_redis_up", "1 when the index's Redis answered "
                         "the last probe.", registry=registry)
        redis_up.set_function(lambda: 1.0 if self.redis_up else 0.0)
        self.disk_free_bytes = Gauge(
            "sdcc_disk_free_bytes", "Free bytes on the volumes sdcc writes to.",
            ["volume"], registry=registry)
        uptime = Gauge("sdcc_uptime_seconds", "Seconds since the server started.",
                       registry=registry)
        uptime.set_function(self.uptime)

    # -- hooks the runtime calls --------------------------------------------
    def set_listening(self, listening: bool) -> None:
        """The DICOM listener started (True) or stopped (False)."""
        self.listening = listening

    def received(self, key: object, size: int) -> None:
        """``size`` bytes came in on connection ``key``."""
        self.bytes_received.inc(size)
        live = self.live.get(key)
        if live is not None:
            live.count(size, self.clock.seconds())

    def connection_refused(self, limit: str) -> None:
        """A connection was refused at accept time; ``limit`` names the cap."""
        self.connections_refused.labels(limit.partition("=")[0]).inc()

    def association_accepted(self, key: object, peer: str, calling_ae: str) -> None:
        """An association was accepted on connection ``key``."""
        now = self.clock.seconds()
        self.live[key] = LiveAssociation(peer, calling_ae, now, window_start=now)

    def association_rejected(self, reason: RejectReason, limit: str = "") -> None:
        """An A-ASSOCIATE-RJ went out; ``limit`` names the cap reached, if any."""
        triple = (reason.result, reason.source, reason.reason)
        words = (limit.partition("=")[0] if limit
                 else reason.text or REJECT_WORDS.get(triple, "unnamed"))
        self.association_rejects.labels(
            f"{reason.result}/{reason.source}/{reason.reason} {words}").inc()

    def association_closed(self, key: object, outcome: str) -> None:
        """Connection ``key`` closed; ``outcome`` as the association line logs it."""
        live = self.live.pop(key, None)
        if live is not None:
            self.associations_total.labels(
                "released" if outcome == "released" else "aborted").inc()
        elif outcome.startswith("rejected"):
            self.associations_total.labels("rejected").inc()

    def last_fragment(self, operation: Operation) -> None:
        """The request's data set is complete; its work starts now."""
        self._last_fragment[id(operation)] = self.clock.seconds()

    def answered(self, key: object, operation: Operation, outcome: Any) -> None:
        """A C-STORE or Q/R operation on connection ``key`` has its final
        ``outcome`` (its response goes out now)."""
        now = self.clock.seconds()
        started = self._last_fragment.pop(id(operation), now)
        command = operation.command
        field_ = command.command_field
        if field_ in QUERY_OPERATIONS:
            self.query_duration.labels(QUERY_OPERATIONS[field_]).observe(now - started)
            return
        if field_ != C_STORE_RQ:
            return
        self.store_duration.observe(now - started)
        live = self.live.get(key)
        calling_ae = getattr(operation, "calling_ae", "") or (
            live.calling_ae if live is not None else "")
        ae = self.ae_label(calling_ae)
        size = getattr(operation, "size", 0)
        today = self._today(now)
        counts = today.per_ae.setdefault(ae, AEDay())
        if outcome.success:
            self.instances_stored.labels(ae).inc()
            counts.stored += 1
            counts.bytes += size
            if live is not None:
                live.instances += 1
            settled = getattr(operation, "settled", None)
            if settled is not None and not settled.called:
                self.in_flight += 1
                settled.addBoth(self._indexed)
        else:
            self.instances_failed.labels(f"0x{outcome.status:04X}").inc()
            counts.failed += 1
            if live is not None:
                live.failed += 1
        record = getattr(operation, "record", None)
        patient = None
        if self.show_patient_data and record is not None:
            patient = str(record.attributes.get("PatientName", ""))
        self.recent.appendleft(RecentInstance(
            now, calling_ae, sop_class_name(command.affected_sop_class_uid or ""),
            size, outcome.status, patient))

    def _indexed(self, result: Any) -> Any:
        self.in_flight -= 1
        return result

    # -- reading -------------------------------------------------------------
    def forward_outcome(self, destination: str, outcome: str) -> None:
        """One forwarding step for ``destination``: queued, sent, failed, parked."""
        self.forward_outcomes.labels(destination, outcome).inc()

    def forward_depth(self, destination: str, queued: int, parked: int) -> None:
        """The size of ``destination``'s forwarding queue."""
        self.forward_queued.labels(destination, "queued").set(queued)
        self.forward_queued.labels(destination, "parked").set(parked)

    def ae_label(self, calling_ae: str) -> str:
        """The bounded ``calling_ae`` label: an allow-listed title, or one of
        the first :attr:`max_ae_labels` seen, else :data:`OTHER_AE`."""
        if self.allowed_aes is not None:
            return calling_ae if calling_ae in self.allowed_aes else OTHER_AE
        if calling_ae in self._labels:
            return calling_ae
        if len(self._labels) < self.max_ae_labels:
            self._labels.add(calling_ae)
            return calling_ae
        return OTHER_AE

    def backlog(self) -> int:
        """Instances logged or journaled but not yet in the index."""
        return self.in_flight + self.journal_pending

    def uptime(self) -> float:
        """Seconds since the monitor (the server) started."""
        return self.clock.seconds() - self.started

    def set_disk_free(self, free: dict[str, int]) -> None:
        """The latest free-space figures per volume."""
        self.disk_free = dict(free)
        for volume, value in free.items():
            self.disk_free_bytes.labels(volume).set(value)

    def _today(self, now: float) -> _Day:
        date = time.strftime("%Y-%m-%d", time.gmtime(now))
        if self._day.date != date:
            self._day = _Day(date)
        return self._day

    def status(self) -> dict[str, Any]:
        """The status page's JSON (``/api/status``)."""
        now = self.clock.seconds()
        today = self._today(now)
        return {
            "version": self.version,
            "now": now,
            "uptime_seconds": round(self.uptime(), 1),
            "listening": self.listening,
            "associations": [
                {"peer": a.peer, "calling_ae": a.calling_ae, "since": a.since,
                 "instances": a.instances, "failed": a.failed, "bytes": a.bytes,
                 "bytes_per_second": round(a.rate_at(now))}
                for a in sorted(self.live.values(), key=lambda a: a.since)],
            "recent": [
                {"time": r.time, "calling_ae": r.calling_ae, "sop_class": r.sop_class,
                 "size": r.size, "status": f"0x{r.status:04X}",
                 **({"patient_name": r.patient_name} if r.patient_name is not None else {})}
                for r in self.recent],
            "today": {"date": today.date, "per_ae": [
                {"calling_ae": ae, "stored": c.stored, "failed": c.failed, "bytes": c.bytes}
                for ae, c in sorted(today.per_ae.items())]},
            "index": {"redis_up": self.redis_up, "backlog": self.backlog(),
                      "in_flight": self.in_flight, "journal_pending": self.journal_pending},
            "disk_free_bytes": self.disk_free,
            "show_patient_data": self.show_patient_data,
        }
