"""The DIMSE services this AE provides: Verification and Storage (PS3.4 A, B).

These classes sit beside the protocol adapter: the protocol hands them a
decoded request and the data set fragments; they answer with a status.  The
Storage SCP streams the data set into a :class:`~sdcc_twisted.storage.files.Sink`,
commits it off the reactor thread when it has to fsync, indexes it, and only
then reports success.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final, cast

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from sdcc_twisted.core.conformance import (
    C_ECHO_RSP,
    C_STORE_RSP,
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
from sdcc_twisted import logs
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.records import InstanceRecord
from sdcc_twisted.storage.files import FileStore, Sink, StorageError, StoredFile

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
    """

    response_field = C_STORE_RSP
    needs_data_set = True

    def __init__(self, store: FileStore, index: IInstanceIndex,
                 journal: PendingJournal, run_blocking: RunBlocking,
                 clock: Any, index_log: IndexLog | None = None) -> None:
        self.store = store
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
        try:
            sink = self.store.open_sink(sop_class, command.affected_sop_instance_uid,
                                        transfer_syntax, calling_ae)
        except StorageError as exc:
            return Reception(self, command, calling_ae, started, None,
                             Outcome(exc.status, exc.comment))
        return Reception(self, command, calling_ae, started, sink, None)

    def commit(self, reception: "Reception") -> "defer.Deferred[Outcome]":
        """Make the file durable and its index record safe; the Outcome.

        With the write-ahead log the record is logged before the answer and
        written to Redis behind it (see :meth:`settled`); without one, the
        index write (or the journal) comes before the answer.  Plain
        callbacks, not a coroutine: this runs once per instance.
        """
        sink = reception.sink
        assert sink is not None
        segment = self.index_log.reserve() if self.index_log is not None else None
        if self.store.fsync:
            d = self.run_blocking(self._finish_and_log, sink, reception.calling_ae, segment)
            d.addCallbacks(self._committed, self._not_committed,
                           callbackArgs=(reception, segment),
                           errbackArgs=(reception, segment))
            return d
        try:
            result = self._finish_and_log(sink, reception.calling_ae, segment)
        except BaseException:
            # (Twisted's maybeDeferred overloads take no value-or-Failure/Deferred union)
            return defer.maybeDeferred(  # type: ignore[call-overload]
                self._not_committed, Failure(), reception, segment)
        return defer.maybeDeferred(  # type: ignore[call-overload]
            self._committed, result, reception, segment)

    def _committed(self, result: tuple[InstanceRecord, bool], reception: "Reception",
                   segment: int | None) -> "Outcome | defer.Deferred[Outcome]":
        record, logged = result
        reception.record = record
        if self.receipt_listeners:
            # on a later reactor turn: after the answer is on its way
            self.clock.callLater(0, self._after_receipt, record)
        if self.before_answer:
            waited = defer.DeferredList([defer.maybeDeferred(step, record)
                                         for step in self.before_answer], consumeErrors=True)
            return waited.addCallback(lambda _: self._index(record, reception, logged, segment))
        return self._index(record, reception, logged, segment)

    def _after_receipt(self, record: InstanceRecord) -> None:
        for listener in self.receipt_listeners:
            try:
                listener(record)
            except Exception:  # noqa: BLE001 - after receipt never fails the store
                log.failure("after-receipt step failed for {uid}", uid=record.sop_instance_uid)

    def _index(self, record: InstanceRecord, reception: "Reception", logged: bool,
               segment: int | None) -> "Outcome | defer.Deferred[Outcome]":
        d = self.register(record)
        d.addBoth(self._settle, segment)
        if logged:
            # answered now; the index write finishes behind the answer
            d.chainDeferred(reception.settled)
            return _SUCCESS

        def indexed(result: Any) -> Any:
            reception.settled.callback(None)    # the release must not wait forever
            return _SUCCESS if not isinstance(result, Failure) else result
        return d.addBoth(indexed)

    def _not_committed(self, failure: Failure, reception: "Reception",
                       segment: int | None) -> "Outcome | Failure":
        self._settle(None, segment)
        reception.settled.callback(None)
        if failure.check(StorageError):
            exc = cast(StorageError, failure.value)
            return Outcome(exc.status, exc.comment)
        return failure

    def _finish_and_log(self, sink: Sink, calling_ae: str,
                        segment: int | None) -> tuple[InstanceRecord, bool]:
        """Commit the file, then log its record (blocking when fsync is on)."""
        stored = sink.finish()
        if stored.warnings:
            log.warn("{uid} from {ae} stored as received despite: {what}",
                     uid=stored.sop_instance_uid, ae=calling_ae,
                     what="; ".join(stored.warnings))
        record = self.record_for(stored, calling_ae)
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

    def record_for(self, stored: StoredFile, calling_ae: str) -> InstanceRecord:
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
        )

    def register(self, record: InstanceRecord) -> "defer.Deferred[None]":
        """Index ``record``; on any index failure, journal it (never fails)."""
        d = self.index.record(record)
        return d.addCallbacks(self._registered, self._not_registered,
                              callbackArgs=(record,), errbackArgs=(record,))

    def _registered(self, previous: str | None,
                    record: InstanceRecord) -> "defer.Deferred[None] | None":
        if previous and previous != record.path:
            return self.run_blocking(_remove_quietly, previous)
        return None

    def _not_registered(self, failure: Failure,
                        record: InstanceRecord) -> "defer.Deferred[None]":
        # any index failure is journaled
        log.warn("index unavailable ({error}); {uid} journaled for later indexing",
                 error=failure.value, uid=record.sop_instance_uid)
        d = self.run_blocking(self.journal.append, record)

        def not_journaled(failure: Failure) -> None:
            log.failure("could not journal {uid}; run 'sdcc-admin rebuild' "
                        "to index it from the file", failure, uid=record.sop_instance_uid)
        d.addCallbacks(lambda _: None, not_journaled)
        return d


def _remove_quietly(path: str) -> None:
    """Remove the old copy of an instance that moved to another study/series."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warn("cannot remove the superseded copy {path}: {why}", path=path,
                 why=exc.strerror)


class Reception:
    """One C-STORE data set on its way to disk."""

    response_field = C_STORE_RSP
    counted = True

    def __init__(self, scp: StorageSCP, command: Command, calling_ae: str,
                 started: float, sink: Sink | None, failed: Outcome | None) -> None:
        #: Fires once this instance's record is in the index or the journal
        #: (at once if nothing was stored).
        self.settled: defer.Deferred[None] = defer.Deferred()
        self.scp = scp
        self.command = command
        self.calling_ae = calling_ae
        self.started = started
        self.sink = sink
        self.failed = failed
        self.completing = False
        #: The index record once the file is committed (the status page's).
        self.record: InstanceRecord | None = None

    def write(self, data: Any) -> None:
        """Append a data set fragment; a disk error is kept for the answer."""
        if self.sink is None or self.failed is not None:
            return
        try:
            self.sink.write(data)
        except StorageError as exc:
            self.failed = Outcome(exc.status, exc.comment)
            self.sink.abort()

    def complete(self) -> "defer.Deferred[Outcome]":
        """The last fragment arrived: commit, index, and report the Outcome."""
        self.completing = True
        if self.failed is not None:
            if self.sink is not None:
                self.sink.abort()
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
        if self.sink is not None and not self.completing:
            self.sink.abort()

    @property
    def size(self) -> int:
        """Data set bytes received so far."""
        return self.sink.bytes_written if self.sink is not None else 0

    def _unexpected(self, failure: Any) -> Outcome:
        log.failure("storing {uid} failed", failure, uid=self.command.affected_sop_instance_uid)
        if self.sink is not None:
            self.sink.abort()
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
