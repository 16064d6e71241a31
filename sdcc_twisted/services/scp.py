"""The DIMSE services this AE provides: Verification and Storage (PS3.4 A, B).

These classes sit beside the protocol adapter: the protocol hands them a
decoded request and the data set fragments; they answer with a status.  The
Storage SCP streams the data set into a :class:`~sdcc_twisted.storage.files.Sink`
on the association's disk queue (never on the reactor thread), commits it
there, indexes it, and only then reports success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from sdcc_twisted.core.conformance import (
    C_ECHO_RSP,
    C_STORE_RSP,
    STATUS_DISK_FULL,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    STATUS_SUCCESS,
    STORAGE_SOP_CLASSES,
    sop_class_name,
)
from sdcc_twisted.core.dimse import ELEMENT_NAMES, Command
from sdcc_twisted.services.channel import Channel, Outcome, Request
from sdcc_twisted.storage.index import IInstanceIndex
from sdcc_twisted.storage.journal import IndexLog, PendingJournal
from sdcc_twisted.storage.sequence import SequenceSource
from sdcc_twisted.storage.serial import SerialQueue
from sdcc_twisted.monitor import ISpaceReport
from sdcc_twisted import logs
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.storage.files import (
    FileStore,
    Sink,
    StorageError,
    StoredFile,
    disk_error,
    remove_quietly,
)

log = get_logger("sdcc.storage")

#: ``run_blocking(fn, *args) -> Deferred``: how blocking work leaves the
#: reactor thread (``deferToThreadPool`` in production).
RunBlocking = Callable[..., "defer.Deferred[Any]"]


_SUCCESS: Final = Outcome(STATUS_SUCCESS)


def describe_missing(command: Command) -> str | None:
    """An Error Comment naming the required elements a request lacks."""
    missing = command.missing()
    if not missing:
        return None
    names = ", ".join(f"(0000,{e:04X}) {ELEMENT_NAMES.get(e, '')}".strip() for e in missing)
    return f"Missing {names}"[:64]


class VerificationSCP:
    """PS3.4 Annex A: C-ECHO always answers Success (PS3.7 9.3.5.2)."""

    response_field = C_ECHO_RSP
    needs_data_set = False

    def accepts(self, abstract_syntax: str) -> bool:
        """Any context (the peer chose it for a C-ECHO)."""
        return True

    def begin(self, request: Request, channel: Channel) -> "Echo":
        """A C-ECHO-RQ: answered as soon as it is complete."""
        return Echo(self, request.command)

    def echo(self, command: Command) -> Outcome:
        """Answer a C-ECHO-RQ."""
        return Outcome(STATUS_SUCCESS)


class Echo:
    """One C-ECHO in flight (it has no data set)."""

    response_field = C_ECHO_RSP
    counted = False

    def __init__(self, scp: VerificationSCP, command: Command) -> None:
        self.scp = scp
        self.command = command
        self.settled: defer.Deferred[None] = defer.succeed(None)

    def write(self, data: bytes | memoryview) -> None:
        """A C-ECHO has no data set: nothing to keep."""

    def complete(self) -> "defer.Deferred[Outcome]":
        """The answer."""
        return defer.succeed(self.scp.echo(self.command))

    def cancel(self) -> None:
        """Nothing to stop."""

    def abort(self) -> None:
        """Nothing to undo."""


class StorageSCP:
    """PS3.4 Annex B: receive C-STORE data sets into files and index them.

    Args:
        store: where the files go.
        index: the instance index; its failures never fail a store.
        journal: where instances wait when the index does not answer.
        run_blocking: runs a blocking callable off the reactor thread.
        clock: for the per-instance duration in the log.
        index_log: the write-ahead log that lets the answer go before the
            index write.
        durable_index: whether an entry the index accepted survives a crash
            of it (an external Redis, as configured there).  The embedded
            one shares ``data_dir`` with the log: when the log cannot be
            written its entries are not trusted, and the journal must hold
            the record before a Success.
        space: the free-space floor; below it a C-STORE is refused (A702)
            before anything is written.
        sequence: numbers each C-STORE as it arrives; the index orders the
            versions of an instance by it (without one, every record has 0).
    """

    response_field = C_STORE_RSP
    needs_data_set = True

    def __init__(self, store: FileStore, index: IInstanceIndex,
                 journal: PendingJournal, run_blocking: RunBlocking,
                 clock: Any, index_log: IndexLog | None = None,
                 durable_index: bool = True, space: ISpaceReport | None = None,
                 sequence: SequenceSource | None = None) -> None:
        self.store = store
        self.sequence = sequence
        self.space = space
        self._in_flight = 0
        self._quiet: list[defer.Deferred[None]] = []
        self.durable_index = durable_index
        self.index = index
        self.journal = journal
        self.run_blocking = run_blocking
        self.clock = clock
        self.index_log = index_log
        #: Called with each record once its file is durable (after receipt:
        #: study-complete detection, hooks, forwarding); never fail a store.
        self.receipt_listeners: list[Callable[[InstanceRecord], object]] = []
        #: Durable steps the answer waits for (queueing for forwarding);
        #: a failing one is logged by itself and never fails the store.
        self.before_answer: list[Callable[[InstanceRecord], "defer.Deferred[None]"]] = []

    def accepts(self, abstract_syntax: str) -> bool:
        """Any context: a SOP class that is not ours is answered in the status."""
        return True

    def begin(self, request: Request, channel: Channel) -> "Reception":
        """Start receiving the data set announced by a C-STORE-RQ."""
        command, abstract_syntax = request.command, request.abstract_syntax
        transfer_syntax, calling_ae = request.transfer_syntax, channel.calling_ae
        started = self.clock.seconds()
        comment = describe_missing(command)
        if comment:
            return Reception(self, command, calling_ae, started, None,
                             Outcome(STATUS_PROCESSING_FAILURE, comment))
        sop_class = command.affected_sop_class_uid
        if sop_class not in STORAGE_SOP_CLASSES or sop_class != abstract_syntax:
            return Reception(self, command, calling_ae, started, None, Outcome(
                STATUS_SOP_CLASS_NOT_SUPPORTED,
                f"SOP class {sop_class} not negotiated on this context"[:64]))
        low = self.space.below_floor() if self.space is not None else None
        if low:
            return Reception(self, command, calling_ae, started, None, Outcome(
                STATUS_DISK_FULL,
                f"Out of resources: {', '.join(low)} below min_free_space"[:64]))
        try:
            sink = self.store.new_sink(sop_class, command.affected_sop_instance_uid,
                                       transfer_syntax, calling_ae)
        except StorageError as exc:
            return Reception(self, command, calling_ae, started, None,
                             Outcome(exc.status, exc.comment))
        reception = Reception(self, command, calling_ae, started, channel.disk, None, sink)
        channel.disk.post(reception.open)
        return reception

    def commit(self, reception: "Reception") -> "defer.Deferred[Outcome]":
        """Make the file durable and its index record safe; the Outcome.

        The commit (checks, fsync, rename, log line) runs on the
        association's disk queue, behind the data set's writes.

        With the write-ahead log the record is logged before the answer and
        written to Redis behind it (see :meth:`settled`); without one, the
        index write (or the journal) comes before the answer.  Plain
        callbacks, not a coroutine: this runs once per instance.
        """
        assert reception.disk is not None
        self._in_flight += 1
        reception.settled.addBoth(self._landed)
        segment = self.index_log.reserve() if self.index_log is not None else None
        d = reception.disk.call(self._finish_and_log, reception, segment)
        d.addCallbacks(self._committed, self._not_committed,
                       callbackArgs=(reception, segment), errbackArgs=(reception, segment))
        return d

    def _committed(self, result: tuple[InstanceRecord, bool], reception: "Reception",
                   segment: int | None) -> "Outcome | defer.Deferred[Outcome]":
        record, logged = result
        reception.record = record
        if self.before_answer:
            waited = defer.DeferredList([defer.maybeDeferred(step, record)
                                         for step in self.before_answer], consumeErrors=True)
            return waited.addCallback(lambda _: self._index(record, reception, logged, segment))
        return self._index(record, reception, logged, segment)

    def _received(self, outcome: Outcome, record: InstanceRecord) -> Outcome:
        """A stored instance was answered Success: the after-receipt steps
        run on a later reactor turn, after the answer is on its way."""
        if outcome.success and self.receipt_listeners:
            self.clock.callLater(0, self._after_receipt, record)
        return outcome

    def _after_receipt(self, record: InstanceRecord) -> None:
        for listener in self.receipt_listeners:
            try:
                listener(record)
            except Exception:  # noqa: BLE001 - after receipt never fails the store
                log.failure("after-receipt step failed for {uid}", uid=record.sop_instance_uid)

    def _index(self, record: InstanceRecord, reception: "Reception", logged: bool,
               segment: int | None) -> "Outcome | defer.Deferred[Outcome]":
        if not logged and not self.durable_index:
            # an entry it accepts may not survive a Redis crash
            d = self.journal_record(record)
            return d.addBoth(  # type: ignore[call-overload]
                self._answer_unlogged, reception, segment, record
            ).addCallback(self._received, record)
        d = self.register(record)
        if logged:
            # answered now; the index write finishes behind the answer
            d.addCallback(self._settle_if_kept, segment, record).chainDeferred(reception.settled)
            return self._received(_SUCCESS, record)
        # no log line: the answer waits for the index or the journal
        return d.addBoth(  # type: ignore[call-overload]
            self._answer_unlogged, reception, segment, record
        ).addCallback(self._received, record)

    def _landed(self, passthrough: Any) -> Any:
        """One committed instance is in the index or the journal, or failed."""
        self._in_flight -= 1
        if not self._in_flight:
            waiting, self._quiet = self._quiet, []
            for d in waiting:
                d.callback(None)
        return passthrough

    def quiet(self) -> "defer.Deferred[None]":
        """Fires once no commit or index write behind an answer is on its
        way (at once if none is): for a clean stop, before the index log
        closes."""
        if not self._in_flight:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._quiet.append(d)
        return d

    def _settle_if_kept(self, problem: StorageError | None, segment: int | None,
                        record: InstanceRecord) -> None:
        """Behind a Success: settle the log line once the record is in the
        index or the journal; otherwise the line is its only copy, and its
        segment stays for the recovery at the next start."""
        if problem is None:
            self._settle(None, segment)
            return
        log.error("{uid} is neither indexed nor journaled ({why}); its record "
                  "stays in the index log and is indexed at the next start",
                  uid=record.sop_instance_uid, why=problem.comment)

    def _answer_unlogged(self, problem: StorageError | Failure | None,
                         reception: "Reception", segment: int | None,
                         record: InstanceRecord) -> "Outcome | Failure | defer.Deferred[Outcome]":
        """The log line could not be written: Success only if the index or
        the journal holds the record; else the file goes and the peer gets
        the failure, so that it sends the instance again."""
        self._settle(None, segment)
        reception.settled.callback(None)    # the release must not wait forever
        if problem is None:
            return _SUCCESS
        if isinstance(problem, Failure):
            return problem
        log.error("{uid} not stored: no durable record of it could be made "
                  "({why}); its file is removed", uid=record.sop_instance_uid,
                  why=problem.comment)
        d = self.run_blocking(remove_quietly, record.path)
        return d.addCallback(lambda _: Outcome(problem.status, problem.comment))

    def _not_committed(self, failure: Failure, reception: "Reception",
                       segment: int | None) -> "Outcome | Failure":
        self._settle(None, segment)
        reception.settled.callback(None)
        if failure.check(StorageError):
            exc = cast(StorageError, failure.value)
            return Outcome(exc.status, exc.comment)
        return failure

    def _finish_and_log(self, reception: "Reception",
                        segment: int | None) -> tuple[InstanceRecord, bool]:
        """Commit the file, then log its record (blocking: on the
        association's disk queue, after its writes)."""
        calling_ae = reception.calling_ae
        sink = reception.sink
        assert sink is not None
        if reception.disk_failure is not None:
            sink.abort()
            raise reception.disk_failure
        stored = sink.finish()
        if stored.warnings:
            log.warn("{uid} from {ae} stored as received despite: {what}",
                     uid=stored.sop_instance_uid, ae=calling_ae,
                     what="; ".join(stored.warnings))
        record = self.record_for(stored, calling_ae, reception.sequence)
        if self.index_log is None or segment is None:
            return record, False
        try:
            self.index_log.append(record, segment)
        except OSError as exc:
            log.warn("cannot write the index log ({why}); indexing {uid} before "
                     "answering", why=exc, uid=record.sop_instance_uid)
            return record, False
        return record, True

    def _settle(self, passthrough: Any, segment: int | None) -> Any:
        """One record reached the index or the journal (or was never made)."""
        if segment is not None and self.index_log is not None:
            self.index_log.settle(segment)
        return passthrough

    def record_for(self, stored: StoredFile, calling_ae: str,
                   sequence: int = 0) -> InstanceRecord:
        """The index record of a file just committed."""
        return InstanceRecord(
            sop_instance_uid=stored.sop_instance_uid,
            sop_class_uid=stored.sop_class_uid,
            transfer_syntax=stored.transfer_syntax,
            path=stored.path,
            size=stored.size,
            received_at=self.clock.seconds(),
            calling_ae=calling_ae,
            attributes=dict(stored.attributes),
            sequence=sequence,
        )

    def register(self, record: InstanceRecord) -> "defer.Deferred[StorageError | None]":
        """Index ``record``; on any index failure, journal it.

        Fires with None once the index or the journal holds the record, or
        with the StorageError (A7xx) saying why neither could; never fails.
        """
        d = self.index.record(record)
        return d.addCallbacks(self._registered, self._not_registered,
                              callbackArgs=(record,), errbackArgs=(record,))

    def _registered(self, superseded: str | None,
                    record: InstanceRecord) -> "defer.Deferred[StorageError | None] | None":
        if superseded:
            return self.run_blocking(remove_quietly, superseded)
        return None

    def _not_registered(self, failure: Failure,
                        record: InstanceRecord) -> "defer.Deferred[StorageError | None]":
        # any index failure is journaled
        log.warn("index unavailable ({error}); {uid} journaled for later indexing",
                 error=failure.value, uid=record.sop_instance_uid)
        return self.journal_record(record)

    def journal_record(self, record: InstanceRecord) -> "defer.Deferred[StorageError | None]":
        """Append ``record`` to the pending journal: fires with None once it
        is there, or with the StorageError (A7xx) saying why not."""
        d = self.run_blocking(self.journal.append, record)

        def not_journaled(failure: Failure) -> StorageError:
            if failure.check(OSError):
                log.error("cannot journal {uid} in {where}: {why}",
                          uid=record.sop_instance_uid, where=self.journal.directory,
                          why=failure.getErrorMessage())
                return disk_error(cast(OSError, failure.value))
            log.failure("cannot journal {uid}", failure, uid=record.sop_instance_uid)
            return StorageError(STATUS_OUT_OF_RESOURCES,
                                "Out of resources: cannot record the instance")
        d.addCallbacks(lambda _: None, not_journaled)
        return d


class Reception:
    """One C-STORE data set on its way to disk.

    The file work (temp-file open, sequence number, writes, commit) runs on
    the association's disk queue, in order; :attr:`sink`,
    :attr:`disk_failure` and :attr:`sequence` are that queue's.
    """

    response_field = C_STORE_RSP
    counted = True

    def __init__(self, scp: StorageSCP, command: Command, calling_ae: str,
                 started: float, disk: SerialQueue | None, failed: Outcome | None,
                 sink: Sink | None = None) -> None:
        #: Fires once this instance's record is in the index or the journal
        #: (at once if nothing was stored).
        self.settled: defer.Deferred[None] = defer.Deferred()
        self.scp = scp
        self.command = command
        self.calling_ae = calling_ae
        self.started = started
        self.disk = disk
        self.failed = failed
        self.completing = False
        self.received = 0
        #: walked on the reactor thread (CPU only), written on the disk queue
        self.sink = sink
        #: why the data set could not be written (the answer's status)
        self.disk_failure: StorageError | None = None
        #: The index record once the file is committed (the status page's).
        self.record: InstanceRecord | None = None
        #: the server's number for this C-STORE (see :class:`SequenceSource`)
        self.sequence = 0

    def open(self) -> None:
        """Create the temp file and number the instance (on the disk queue)."""
        assert self.sink is not None
        sequence = self.scp.sequence
        try:
            self.sink.open()
            if sequence is not None:
                self.sequence = sequence.next()
        except StorageError as exc:
            self.disk_failure = exc
        except OSError as exc:  # a new block of numbers could not be reserved
            self.disk_failure = disk_error(exc)

    def write(self, data: Any) -> None:
        """Walk a data set fragment here, and queue it for the disk."""
        if self.sink is None or self.failed is not None:
            return
        assert self.disk is not None
        self.received += len(data)
        self.sink.inspect(data)
        self.disk.post(self._write, data, size=len(data))

    def _write(self, data: Any) -> None:
        assert self.sink is not None
        if self.disk_failure is not None:
            return
        try:
            self.sink.store(data)
        except StorageError as exc:     # kept for the answer; the sink discarded itself
            self.disk_failure = exc

    def _discard(self) -> None:
        if self.sink is not None:
            self.sink.abort()

    def complete(self) -> "defer.Deferred[Outcome]":
        """The last fragment arrived: commit, index, and report the Outcome."""
        self.completing = True
        if self.failed is not None:
            self.settled.callback(None)
            return defer.succeed(self._log(self.failed))
        d = self.scp.commit(self)
        d.addErrback(self._unexpected)
        d.addCallback(self._log)
        return d

    def cancel(self) -> None:
        """C-CANCEL applies to C-FIND, C-MOVE and C-GET only (PS3.7 9.3.2.3)."""

    def abort(self) -> None:
        """The association ended before the last fragment: leave nothing
        behind (once complete, the commit goes on)."""
        if self.disk is not None and not self.completing:
            self.disk.post(self._discard)

    @property
    def size(self) -> int:
        """Data set bytes received so far."""
        return self.received

    def _unexpected(self, failure: Any) -> Outcome:
        log.failure("storing {uid} failed", failure, uid=self.command.affected_sop_instance_uid)
        if self.disk is not None:
            self.disk.post(self._discard)
        return Outcome(STATUS_PROCESSING_FAILURE, "Internal error while storing")

    def _log(self, outcome: Outcome) -> Outcome:
        """A line per instance: a warning when it was refused, a debug line
        when it was stored (the association's line counts them)."""
        if outcome.success:
            if not logs.enabled(LogLevel.debug):
                return outcome
            emit = log.debug
            what = "stored"
        else:
            emit = log.warn
            what = "not stored"
        elapsed_ms = (self.scp.clock.seconds() - self.started) * 1000.0
        emit("{what} calling_ae={calling_ae} sop_class={sop_class!r} "
             "sop_instance={uid} bytes={size} ms={ms:.1f} status=0x{status:04X}"
             "{comment}", what=what,
             calling_ae=self.calling_ae,
             sop_class=sop_class_name(self.command.affected_sop_class_uid),
             uid=self.command.affected_sop_instance_uid, size=self.size,
             ms=elapsed_ms, status=outcome.status,
             comment=f" comment={outcome.comment!r}" if outcome.comment else "")
        return outcome
