"""Dispatch: each DIMSE request to its service, by Command Field.

:func:`service_table` is the one table (adding a DIMSE service is a module
in :mod:`sdcc_twisted.services` and a line there).  A :class:`Dispatcher`
serves one association: it starts the operation a request names, feeds it the
data set, answers with its Outcome, routes C-CANCEL, and is the
:class:`~sdcc_twisted.services.channel.Channel` its operations answer and send
sub-operations through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from twisted.internet import defer

from sdcc_twisted.config import MoveDestination
from sdcc_twisted.core.conformance import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_FIND_RQ,
    C_GET_RQ,
    C_MOVE_RQ,
    C_STORE_RQ,
    COMMAND_NAMES,
    STATUS_PROCESSING_FAILURE,
    STATUS_UNRECOGNIZED_OPERATION,
)
from sdcc_twisted.core.dimse import COMMAND_DATA_SET_TYPE, MESSAGE_ID_BEING_RESPONDED_TO, Command, response
from sdcc_twisted.core.events import CommandReceived, DataFragment
from sdcc_twisted.monitor import Monitor
from sdcc_twisted.logs import get_logger
from sdcc_twisted.services.channel import DimseService, Operation, Outcome, Request, SubAssociation
from sdcc_twisted.services.qr import QueryRetrieveSCP
from sdcc_twisted.services.scp import StorageSCP, VerificationSCP, describe_missing
from sdcc_twisted.storage.serial import SerialQueue

if TYPE_CHECKING:
    from sdcc_twisted.runtime.protocol import DicomProtocol

log = get_logger("sdcc.association")


def service_table(storage: StorageSCP,
                  query_retrieve: QueryRetrieveSCP | None = None) -> dict[int, DimseService]:
    """The DIMSE services of this AE by request Command Field (PS3.7 E.1)."""
    table: dict[int, DimseService] = {C_ECHO_RQ: VerificationSCP(), C_STORE_RQ: storage}
    if query_retrieve is not None:
        table.update({C_FIND_RQ: query_retrieve, C_MOVE_RQ: query_retrieve,
                      C_GET_RQ: query_retrieve})
    return table


class Dispatcher:
    """The operations in flight on one association (the acceptor's channel).

    Attributes:
        pending: operations whose data set is whole and that still run.
        stored, failed: C-STORE outcomes, for the association's summary.
    """

    def __init__(self, connection: "DicomProtocol",
                 services: Mapping[int, DimseService], monitor: Monitor) -> None:
        self.connection = connection
        self.services = services
        self.monitor = monitor
        self.pending = 0
        self.stored = 0
        self.failed = 0
        self._receiving: Operation | None = None
        self._receiving_context = 0
        self._operations: dict[int, Operation] = {}
        self._settling: list[defer.Deferred[None]] = []

    # -- requests ----------------------------------------------------------------------
    def on_command(self, event: CommandReceived) -> None:
        """A request: start its operation, or answer it at once."""
        connection = self.connection
        assoc = connection.assoc
        assert assoc is not None
        command: Command = event.command
        context = assoc.contexts.get(event.context_id)
        if context is None:
            connection.protocol_abort(f"message on presentation context {event.context_id}, "
                                      "which was not accepted")
            return
        field = command.command_field or 0
        missing = describe_missing(command)
        if missing and not command.has_data_set:
            self.respond(event.context_id, command, field | 0x8000,
                         Outcome(STATUS_PROCESSING_FAILURE, missing))
            return
        if field == C_CANCEL_RQ:
            self._cancel(command)
            return
        service = self.services.get(field)
        if (service is None or (service.needs_data_set and not command.has_data_set)
                or not service.accepts(context.abstract_syntax)):
            name = COMMAND_NAMES.get(field, f"0x{field:04X}")
            log.warn("unsupported {name} from {calling}; answering 0x0211",
                     name=name, calling=connection.calling_ae)
            self.respond(event.context_id, command, field | 0x8000,
                         Outcome(STATUS_UNRECOGNIZED_OPERATION,
                                 f"{name} is not supported here"[:64]))
            return
        operation = service.begin(Request(command, event.context_id, context.abstract_syntax,
                                          context.transfer_syntax), self)
        self._operations[command.message_id or 0] = operation
        if service.needs_data_set:
            self._receiving, self._receiving_context = operation, event.context_id
        else:
            self._run(operation, event.context_id)

    def on_fragment(self, event: DataFragment) -> None:
        """A fragment of the data set of the request being received."""
        operation = self._receiving
        if operation is None:
            return  # the data set of a request already answered with a failure
        operation.write(event.data)
        self.connection.pace_disk()
        if event.last:
            self._receiving = None
            self._run(operation, self._receiving_context)

    def _cancel(self, command: Command) -> None:
        operation = self._operations.get(command.get(MESSAGE_ID_BEING_RESPONDED_TO))
        if operation is not None:
            log.info("C-CANCEL from {calling} for message {mid}",
                     calling=self.connection.calling_ae,
                     mid=command.get(MESSAGE_ID_BEING_RESPONDED_TO))
            operation.cancel()

    def _run(self, operation: Operation, context_id: int) -> None:
        self.pending += 1
        self.monitor.last_fragment(operation)
        d = operation.complete()
        d.addCallback(self._done, operation, context_id)
        d.addErrback(self.connection.internal_error)

    def _done(self, outcome: Outcome, operation: Operation, context_id: int) -> None:
        self.pending -= 1
        connection = self.connection
        self.monitor.answered(connection, operation, outcome)
        connection.idle.touch()
        self._operations.pop(operation.command.message_id or 0, None)
        if operation.counted:
            if outcome.success:
                self.stored += 1
            else:
                self.failed += 1
        if not operation.settled.called:
            self._settling.append(operation.settled)
        if connection.closed:
            if outcome.success and operation.counted:
                log.info("{uid} stored, but the association closed before the "
                         "response could be sent",
                         uid=operation.command.affected_sop_instance_uid)
            return
        self.respond(context_id, operation.command, operation.response_field, outcome)
        if not self.pending:
            connection.operations_done()

    def respond(self, context_id: int, command: Command, field: int, outcome: Outcome) -> None:
        """Send a response to ``command`` (PS3.7 9.3) unless the association ended."""
        connection = self.connection
        assoc = connection.assoc
        if assoc is None or not assoc.established or connection.closed:
            return
        elements = response(command, field, outcome.status, outcome.comment, outcome.elements)
        if outcome.data_set is not None:
            elements[COMMAND_DATA_SET_TYPE] = 0x0001
        connection.guard(assoc.send_message, context_id, elements, outcome.data_set)

    def settled(self) -> "defer.Deferred[None]":
        """Fires when what every finished operation did is durable."""
        waiting = [d for d in self._settling if not d.called]
        self._settling = []
        if not waiting:
            return defer.succeed(None)
        return defer.gatherResults(waiting, consumeErrors=True).addCallback(lambda _: None)

    def abort(self) -> bool:
        """The association ended: stop every operation; True if a data set
        was still arriving."""
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            receiving.abort()
        for operation in list(self._operations.values()):
            operation.abort()
        return receiving is not None

    # -- the Channel (sdcc_twisted.services.channel) ------------------------------------
    @property
    def calling_ae(self) -> str:
        """The calling AE title of this association."""
        return self.connection.calling_ae

    @property
    def disk(self) -> SerialQueue:
        """This association's disk work queue."""
        return self.connection.disk

    def send_pending(self, context_id: int, command: Command, field: int,
                     outcome: Outcome) -> None:
        """Send an intermediate (pending) response of a C-FIND/MOVE/GET."""
        self.respond(context_id, command, field, outcome)

    async def room(self) -> None:
        """Wait until the peer reads what we sent (flow control)."""
        await self.connection.room()

    def store_context(self, sop_class_uid: str, transfer_syntax: str) -> int | None:
        """A context for C-GET's C-STORE sub-operations: that class, that
        syntax, and the requestor accepted the SCP role (PS3.7 D.3.3.4)."""
        decision, assoc = self.connection.accepted, self.connection.assoc
        if assoc is None or decision is None or not decision.requestor_is_scp(sop_class_uid):
            return None
        for context_id, context in sorted(assoc.contexts.items()):
            if (context.abstract_syntax == sop_class_uid
                    and context.transfer_syntax == transfer_syntax):
                return context_id
        return None

    def send_store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str,
                   path: str, originator_ae: str = "",
                   originator_id: int | None = None) -> "defer.Deferred[int]":
        """C-GET: send one C-STORE-RQ on this association from ``path``."""
        return self.connection.send_store(context_id, sop_class_uid, sop_instance_uid,
                                          path, originator_ae, originator_id)

    def open_sub_association(self, destination: MoveDestination,
                             contexts: list[tuple[str, str]]) -> "defer.Deferred[SubAssociation]":
        """C-MOVE: an association to ``destination`` (see runtime.client)."""
        return self.connection.factory.open_sub_association(destination, contexts)


__all__ = ["Dispatcher", "service_table"]
