"""Query/Retrieve SCP: C-FIND, C-MOVE and C-GET from the index (PS3.4 Annex C).

The identifier arrives as the request's data set (small, bounded); the
operation then walks the index level by level (:class:`RedisCatalog`), sends
a pending response per match or per sub-operation as it goes, honours
C-CANCEL between them, and ends with the final status.  Matching rules live
in the sans-I/O :mod:`sdcc_twisted.core.query`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from sdcc_twisted.storage.catalog import RedisCatalog
from sdcc_twisted.config import MoveDestination, QuerySettings
from sdcc_twisted.core.conformance import (
    C_FIND_RSP,
    C_GET_RSP,
    C_MOVE_RSP,
    QUERY_RETRIEVE_MODELS,
    STATUS_CANCEL,
    STATUS_MOVE_DESTINATION_UNKNOWN,
    STATUS_PENDING,
    STATUS_QR_OUT_OF_RESOURCES,
    STATUS_QR_SUBOPS_OUT_OF_RESOURCES,
    STATUS_SUBOPS_WARNING,
    STATUS_SUCCESS,
    STATUS_UNABLE_TO_PROCESS,
    contexts_with_decoded,
)
from sdcc_twisted.core.dimse import (
    MOVE_DESTINATION,
    NUMBER_OF_COMPLETED,
    NUMBER_OF_FAILED,
    NUMBER_OF_REMAINING,
    NUMBER_OF_WARNING,
    Command,
)
from sdcc_twisted.storage.index import IndexUnavailable
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.query import (
    COUNT_KEYS,
    LEVELS,
    MODALITIES_IN_STUDY,
    Query,
    QueryError,
    parse_identifier,
    response_identifier,
    retrieve_keys,
)
from sdcc_twisted.services.channel import (
    Channel,
    Outcome,
    Request,
    StoreSender,
    SubAssociationError,
)
from sdcc_twisted.services.scp import describe_missing
from sdcc_twisted.services.delivery import SubOperationRefused, send_instance
from sdcc_twisted.services.transcode import Transcoder

log = get_logger("sdcc.qr")

#: The largest identifier data set we buffer.
MAX_IDENTIFIER_LENGTH = 1 << 20



class QueryTimeout(Exception):
    """The request's index work took longer than ``[query] timeout``."""


async def _each(values: list[str]) -> AsyncIterator[str]:
    for value in values:
        yield value


class QueryRetrieveSCP:
    """Serves C-FIND, C-MOVE and C-GET (PS3.4 C.4).

    Args:
        catalog: the index, read side.
        destinations: C-MOVE destinations by AE title.
        clock: the ``IReactorTime`` the deadline is measured on.
        timeout: seconds of index work a request may take (``[query]
            timeout``); beyond it, A700 with an Error Comment.
        transcoder: decodes an instance for a peer that accepted its class
            only uncompressed; None sends every instance as stored or not at all.
    """

    needs_data_set = True

    def __init__(self, catalog: RedisCatalog,
                 destinations: dict[str, MoveDestination], clock: IReactorTime,
                 timeout: float = QuerySettings.timeout,
                 transcoder: Transcoder | None = None) -> None:
        self.catalog = catalog
        self.clock = clock
        self.timeout = timeout
        self.destinations = destinations
        self.transcoder = transcoder

    async def send_instance(self, sender: StoreSender, attributes: dict[str, str], whose: str,
                            originator_ae: str = "", originator_id: int | None = None) -> int:
        """One C-STORE sub-operation (see :func:`~.delivery.send_instance`)."""
        return await send_instance(sender, attributes, whose, self.transcoder,
                                   originator_ae, originator_id)

    def accepts(self, abstract_syntax: str) -> bool:
        """Only on the contexts of the Q/R information models."""
        return abstract_syntax in QUERY_RETRIEVE_MODELS

    def begin(self, request: Request, channel: Channel) -> "QueryOperation":
        """Start receiving the identifier of a C-FIND/C-MOVE/C-GET request."""
        model, operation = QUERY_RETRIEVE_MODELS[request.abstract_syntax]
        return QueryOperation(self, request.command, request.context_id, model, operation,
                              request.transfer_syntax, channel)

    # -- walking the index -------------------------------------------------------
    async def walk(self, query: Query, state: "QueryOperation") -> AsyncIterator[dict[str, str]]:
        """Yield the merged attributes of every entry at ``query.level`` that
        matches, level by level from the model's root (PS3.4 C.4.1.3.1)."""
        from sdcc_twisted.core.query import matches

        target = LEVELS.index(query.level)
        start = 0 if query.model == "PATIENT" else 1
        catalog = self.catalog

        async def candidates(depth: int, parent: str | None,
                             wanted: list[str] | None) -> AsyncIterator[tuple[str, str | None]]:
            if depth == 1 and parent is None and wanted is not None:
                # Study Root by Study Instance UID: straight to those studies.
                for study in wanted:
                    found = await catalog.attributes("STUDY", study)
                    if found is not None:
                        yield study, found.get("patient_id", "")
            elif depth == 1 and parent is None:
                # Study Root: studies of every patient (or of the one asked).
                asked = query.unique_values("PATIENT")
                patients = _each(asked) if asked else catalog.members("PATIENT", None)
                async for patient in patients:
                    async for study in catalog.members("STUDY", patient):
                        yield study, patient
            else:
                allowed = set(wanted) if wanted is not None else None
                async for child in catalog.members(LEVELS[depth], parent):
                    if allowed is None or child in allowed:
                        yield child, parent

        async def descend(depth: int, parent: str | None,
                          merged: dict[str, str]) -> AsyncIterator[dict[str, str]]:
            level = LEVELS[depth]
            async for ident, owner in candidates(depth, parent, query.unique_values(level)):
                if state.cancelled:
                    return
                state.check_deadline()
                attributes = await catalog.attributes(level, ident)
                if attributes is None:
                    continue
                here = dict(merged)
                attributes.update(await self.computed(query, level, ident))
                if depth == 1 and parent is None and owner is not None:
                    patient_attributes = await catalog.attributes("PATIENT", owner) or {}
                    patient_attributes.update(await self.computed(query, "PATIENT", owner))
                    if not matches(query, "PATIENT", patient_attributes):
                        continue
                    here.update(patient_attributes)
                here.update(attributes)
                if not matches(query, level, here):
                    continue
                if depth == target:
                    yield here
                else:
                    async for found in descend(depth + 1, ident, here):
                        yield found

        async for found in descend(start, None, {}):
            yield found


    async def computed(self, query: Query, level: str, ident: str) -> dict[str, str]:
        """The computed keys (PS3.4 C.3) the query holds for this entity:
        counts of related studies, series and instances from the relation
        sets' sizes, and the distinct Modality of a study's series.  Nothing
        is read when the query holds none of them."""
        wanted = query.computed_keys(level)
        if not wanted:
            return {}
        catalog = self.catalog
        listed = {"SERIES"} if MODALITIES_IN_STUDY in wanted else set()
        counted = {COUNT_KEYS[k][1] for k in wanted if k in COUNT_KEYS} | listed
        deepest = max(LEVELS.index(c) for c in counted)
        ids = [ident]
        members: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        for child in LEVELS[LEVELS.index(level) + 1:deepest + 1]:
            if child == LEVELS[deepest] and child not in listed:
                counts[child] = sum([await catalog.count(child, p) for p in ids])
                break
            ids = [m for p in ids async for m in catalog.members(child, p)]
            members[child], counts[child] = ids, len(ids)
        values = {k: str(counts[COUNT_KEYS[k][1]]) for k in wanted if k in COUNT_KEYS}
        if MODALITIES_IN_STUDY in wanted:
            modalities = []
            for series in members.get("SERIES", []):
                modality = ((await catalog.attributes("SERIES", series)) or {}).get("Modality")
                if modality and modality not in modalities:
                    modalities.append(modality)
            values[MODALITIES_IN_STUDY] = "\\".join(sorted(modalities))
        return values


class QueryOperation:
    """One C-FIND, C-MOVE or C-GET: collect the identifier, then run."""

    counted = False

    def __init__(self, scp: QueryRetrieveSCP, command: Command, context_id: int,
                 model: str, operation: str, transfer_syntax: str, channel: Channel) -> None:
        self.scp = scp
        self.command = command
        self.context_id = context_id
        self.model = model
        self.operation = operation
        self.transfer_syntax = transfer_syntax
        self.channel = channel
        self.response_field = {"FIND": C_FIND_RSP, "MOVE": C_MOVE_RSP, "GET": C_GET_RSP}[operation]
        self.cancelled = False
        self.settled: defer.Deferred[None] = defer.succeed(None)
        self._started = 0.0
        #: Seconds spent waiting for the peer (not index work).
        self._waiting = 0.0
        self._identifier = bytearray()
        self._too_long = False
        self.size = 0

    def write(self, data: Any) -> None:
        """Collect the identifier, bounded."""
        if len(self._identifier) + len(data) > MAX_IDENTIFIER_LENGTH:
            self._too_long = True
            return
        self._identifier += data
        self.size = len(self._identifier)

    def abort(self) -> None:
        """The association ended: stop between two steps."""
        self.cancelled = True

    def cancel(self) -> None:
        """C-CANCEL-RQ (PS3.4 C.4.1.2.3, C.4.2.2.3, C.4.3.2.3)."""
        self.cancelled = True

    def check_deadline(self) -> None:
        """Raise :class:`QueryTimeout` once the index work of this request
        (time not spent waiting for the peer) passed ``[query] timeout``."""
        clock = self.scp.clock
        if clock.seconds() - self._started - self._waiting > self.scp.timeout:
            raise QueryTimeout(f"index work took more than {self.scp.timeout:g} s")

    async def _peer(self, work: Any) -> Any:
        """Await ``work`` (the peer's flow control or answer), off the deadline."""
        started = self.scp.clock.seconds()
        try:
            return await work
        finally:
            self._waiting += self.scp.clock.seconds() - started

    def complete(self) -> "defer.Deferred[Outcome]":
        """The identifier is whole: run the operation; fires with the final Outcome."""
        d = defer.Deferred.fromCoroutine(self._run())
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Any) -> Outcome:
        if failure.check(QueryTimeout):
            log.warn("C-{op} from {ae} stopped: {why} ([query] timeout)", op=self.operation,
                     ae=self.channel.calling_ae, why=failure.getErrorMessage())
            return Outcome(STATUS_QR_OUT_OF_RESOURCES,
                           f"Query timed out after {self.scp.timeout:g} s")
        if failure.check(IndexUnavailable):
            log.warn("{op} failed: {why}", op=self.operation, why=failure.getErrorMessage())
            return Outcome(STATUS_QR_OUT_OF_RESOURCES, "Index unavailable")
        if failure.check(ConnectionError):
            log.warn("{op} for {ae} stopped: {why}", op=self.operation,
                     ae=self.channel.calling_ae, why=failure.getErrorMessage())
            return Outcome(STATUS_UNABLE_TO_PROCESS, "Connection lost")
        log.failure("{op} failed", failure, op=self.operation)
        return Outcome(STATUS_UNABLE_TO_PROCESS, "Internal error")

    async def _run(self) -> Outcome:
        self._started = self.scp.clock.seconds()
        missing = describe_missing(self.command)
        if missing:
            return Outcome(STATUS_UNABLE_TO_PROCESS, missing)
        if self._too_long:
            return Outcome(STATUS_UNABLE_TO_PROCESS, "Identifier too long")
        try:
            if self.operation == "FIND":
                query = parse_identifier(bytes(self._identifier), self.transfer_syntax, self.model)
            else:
                query = retrieve_keys(bytes(self._identifier), self.transfer_syntax, self.model)
        except QueryError as exc:
            return Outcome(exc.status, exc.comment)
        if self.operation == "FIND":
            return await self._find(query)
        return await self._retrieve(query)

    async def _find(self, query: Query) -> Outcome:
        matched = 0
        async for attributes in self.scp.walk(query, self):
            if self.cancelled:
                break
            await self._peer(self.channel.room())
            identifier = response_identifier(query, query.level, attributes,
                                             self.transfer_syntax)
            self.channel.send_pending(self.context_id, self.command, self.response_field,
                                      Outcome(STATUS_PENDING, data_set=identifier))
            matched += 1
        if self.cancelled:
            return Outcome(STATUS_CANCEL)
        log.info("C-FIND {model}/{qlevel} from {ae}: {n} match(es)", model=self.model,
                 qlevel=query.level, ae=self.channel.calling_ae, n=matched)
        return Outcome(STATUS_SUCCESS)

    # -- C-MOVE and C-GET ----------------------------------------------------------
    async def _retrieve(self, query: Query) -> Outcome:
        if self.operation == "MOVE":
            destination_ae = str(self.command.get(MOVE_DESTINATION, "")).strip()
            destination = self.scp.destinations.get(destination_ae)
            if destination is None:
                log.warn("C-MOVE from {ae} to unknown destination {dest!r}",
                         ae=self.channel.calling_ae, dest=destination_ae)
                return Outcome(STATUS_MOVE_DESTINATION_UNKNOWN,
                               f"Unknown move destination {destination_ae}"[:64])
            return await self._move(query, destination)
        return await self._get(query)

    def _instances(self, query: Query) -> AsyncIterator[dict[str, str]]:
        """Every instance under the entries the retrieve keys name, as the
        walk finds them."""
        return self.scp.walk(replace(query, level="IMAGE"), self)

    async def _survey(self, query: Query, pairs: bool) -> tuple[int, set[tuple[str, str]]]:
        """How many instances the retrieve keys name (from the series sets'
        SCARD) and, if ``pairs``, their distinct (SOP class, transfer syntax)
        pairs (a page at a time, deduplicated in Redis): bounded memory."""
        catalog = self.scp.catalog
        found: set[tuple[str, str]] = set()
        if query.level == "IMAGE":      # a list of UIDs from the identifier: bounded
            total = 0
            async for a in self._instances(query):
                total += 1
                found.add((a.get("sop_class_uid", ""), a.get("transfer_syntax", "")))
            return total, found
        total = 0
        async for series in self.scp.walk(replace(query, level="SERIES"), self):
            uid = series.get("SeriesInstanceUID", "")
            total += await catalog.count("IMAGE", uid)
            cursor = -1
            while pairs and cursor:
                self.check_deadline()
                cursor, ids = await catalog.page("IMAGE", uid, max(cursor, 0))
                if ids:
                    found.update(await catalog.syntaxes(ids))
        return total, found

    def _counts(self, remaining: int, done: "SubOperations") -> dict[int, Any]:
        return {NUMBER_OF_REMAINING: remaining, NUMBER_OF_COMPLETED: done.completed,
                NUMBER_OF_FAILED: done.failed, NUMBER_OF_WARNING: done.warning}

    async def _send_all(self, instances: AsyncIterator[dict[str, str]], total: int,
                        send: Callable[[dict[str, str]], "defer.Deferred[int] | Any"],
                        done: "SubOperations | None" = None) -> "SubOperations":
        done = done if done is not None else SubOperations()
        async for attributes in instances:
            if self.cancelled:
                break
            uid = attributes.get("SOPInstanceUID") or attributes.get("sop_uid", "")
            done.current = uid
            reason = short = None
            try:
                status = await self._peer(send(attributes))
                if status != STATUS_SUCCESS and status & 0xF000 != STATUS_SUBOPS_WARNING:
                    short = f"C-STORE-RSP status 0x{status:04X}"
                    reason = f"the {short}"
            except SubAssociationError:
                raise
            except SubOperationRefused as exc:
                status, reason, short = STATUS_QR_SUBOPS_OUT_OF_RESOURCES, exc.reason, exc.short
            except Exception as exc:  # noqa: BLE001 - one sub-operation, not the whole move
                status = STATUS_QR_SUBOPS_OUT_OF_RESOURCES
                reason, short = f"{type(exc).__name__}: {exc}", type(exc).__name__
            if reason is not None:
                self._log_failed(uid, reason)
            done.add(uid, status, short)
            remaining = max(total - done.total, 0)
            if remaining:
                self.channel.send_pending(self.context_id, self.command, self.response_field,
                                          Outcome(STATUS_PENDING,
                                                  elements=self._counts(remaining, done)))
        done.remaining = max(total - done.total, 0) if self.cancelled else 0
        return done

    def _log_failed(self, uid: str, reason: str) -> None:
        log.warn("C-{op} from {ae}: sub-operation for {uid} failed: {why}", op=self.operation,
                 ae=self.channel.calling_ae, uid=uid, why=reason)

    def _final(self, done: "SubOperations") -> Outcome:
        counts = self._counts(done.remaining, done)
        if self.cancelled:
            return Outcome(STATUS_CANCEL, elements=counts,
                           data_set=self._failed_list(done))
        del counts[NUMBER_OF_REMAINING]
        if done.failed or done.warning:
            comment = (f"{done.failed} of {done.total} failed: {done.first_reason}"
                       if done.first_reason else "One or more sub-operations had warnings")
            return Outcome(STATUS_SUBOPS_WARNING, comment[:64],
                           elements=counts, data_set=self._failed_list(done))
        return Outcome(STATUS_SUCCESS, elements=counts)

    def _failed_list(self, done: "SubOperations") -> bytes | None:
        if not done.failed_uids:
            return None
        return failed_uid_list(done.failed_uids, self.transfer_syntax)

    async def _move(self, query: Query, destination: MoveDestination) -> Outcome:
        total, pairs = await self._survey(query, pairs=True)
        if not total:
            return self._final(SubOperations())
        wanted = sorted(pairs)
        if self.scp.transcoder is not None:
            wanted = contexts_with_decoded(wanted)
        try:
            client = await self.channel.open_sub_association(destination, wanted)
        except SubAssociationError as exc:
            log.warn("C-MOVE to {dest}: {why}", dest=destination.ae_title, why=exc)
            done = SubOperations()
            reason = f"cannot reach {destination.ae_title}: {exc}"
            async for a in self._instances(query):
                self._log_failed(a.get("SOPInstanceUID", ""), reason)
                done.add(a.get("SOPInstanceUID", ""), STATUS_QR_SUBOPS_OUT_OF_RESOURCES)
            counts = self._counts(0, done)
            del counts[NUMBER_OF_REMAINING]
            return Outcome(STATUS_QR_SUBOPS_OUT_OF_RESOURCES,
                           f"Cannot reach {destination.ae_title}"[:64], elements=counts,
                           data_set=self._failed_list(done))
        originator = self.channel.calling_ae
        message_id = self.command.message_id or 0

        async def send(attributes: dict[str, str]) -> int:
            return await self.scp.send_instance(client, attributes, destination.ae_title,
                                                originator, message_id)
        done = SubOperations()
        instances = self._instances(query)
        try:
            await self._send_all(instances, total, send, done)
        except SubAssociationError as exc:
            log.warn("C-MOVE to {dest} lost: {why}", dest=destination.ae_title, why=exc)
            reason = f"the association to {destination.ae_title} was lost: {exc}"
            # the one being sent, then the rest of the same walk
            lost = [done.current] + [a.get("SOPInstanceUID", "") async for a in instances]
            for uid in lost:
                self._log_failed(uid, reason)
                done.add(uid, STATUS_QR_SUBOPS_OUT_OF_RESOURCES,
                         f"association to {destination.ae_title} lost")
            done.remaining = 0
        finally:
            await client.release()
        log.info("C-MOVE from {ae} to {dest}: completed={c} failed={f} warning={w}",
                 ae=originator, dest=destination.ae_title, c=done.completed,
                 f=done.failed, w=done.warning)
        return self._final(done)

    async def _get(self, query: Query) -> Outcome:
        channel = self.channel

        async def send(attributes: dict[str, str]) -> int:
            return await self.scp.send_instance(channel, attributes,
                                                f"{channel.calling_ae} (as storage SCP)")
        total, _ = await self._survey(query, pairs=False)
        done = await self._send_all(self._instances(query), total, send)
        log.info("C-GET from {ae}: completed={c} failed={f} warning={w}", ae=channel.calling_ae,
                 c=done.completed, f=done.failed, w=done.warning)
        return self._final(done)


class SubOperations:
    """Counts of C-STORE sub-operations (PS3.4 C.4.2.1.4)."""

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.warning = 0
        self.remaining = 0
        self.failed_uids: list[str] = []
        self.first_reason: str | None = None
        #: The instance whose sub-operation runs now.
        self.current = ""

    @property
    def total(self) -> int:
        """Sub-operations done so far."""
        return self.completed + self.failed + self.warning

    def add(self, uid: str, status: int, reason: str | None = None) -> None:
        """Count one sub-operation by its C-STORE-RSP status; keep the first
        failure's (short) reason for the final response's Error Comment."""
        if reason is not None and self.first_reason is None:
            self.first_reason = reason
        if status == STATUS_SUCCESS:
            self.completed += 1
        elif status & 0xF000 == STATUS_SUBOPS_WARNING:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(uid)


def failed_uid_list(uids: list[str], transfer_syntax: str) -> bytes:
    """The final response's identifier: (0008,0058) Failed SOP Instance UID
    List (PS3.4 C.4.2.1.5), encoded in the context's transfer syntax."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from sdcc_twisted.core.conformance import IMPLICIT_VR_SYNTAXES

    ds = Dataset()
    ds.FailedSOPInstanceUIDList = uids
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = transfer_syntax in IMPLICIT_VR_SYNTAXES
    write_dataset(out, ds)
    return out.getvalue()
