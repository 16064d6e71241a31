"""Sending a stored instance as a C-STORE data set, from its file, with flow
control (C-MOVE and C-GET sub-operations; PS3.4 C.4.2, C.4.3), and matching
the responses to those requests.

The data set bytes are read from the Part 10 file on the association's disk
queue (never on the reactor thread), in blocks of whole PDVs of the peer's
maximum size, and written one P-DATA-TF at a time; while the transport's
buffer is full the sender waits (it is the transport's streaming producer),
so an instance of any size never sits in memory whole.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from sdcc_twisted.core.association import Association
from sdcc_twisted.core.conformance import C_STORE_RSP, PDV_LAST
from sdcc_twisted.core.dimse import MESSAGE_ID, MESSAGE_ID_BEING_RESPONDED_TO, STATUS, Command
from sdcc_twisted.core.events import Event
from sdcc_twisted.core.part10 import read_file_meta
from sdcc_twisted.storage.serial import DiskWorkers, SerialQueue

#: Bytes read from a file at a time when the peer allows big PDUs.
MAX_READ = 256 * 1024


@implementer(IPushProducer)
class MessageSender:
    """Writes messages for one association, pausing with the transport.

    Args:
        assoc: the association's core.
        transport: where the bytes go; this object registers as its producer.
        handle_events: the adapter's handler for events the core returns.
        disk: the association's disk queue, where files are opened and read
            (inline without one: tests driven by ``task.Clock``).
    """

    def __init__(self, assoc: Association, transport: Any,
                 handle_events: Callable[[list[Event]], None],
                 clock: Any = None, stall_timeout: float = 60.0,
                 disk: SerialQueue | None = None) -> None:
        self.assoc = assoc
        self.disk = disk if disk is not None else DiskWorkers.inline().queue()
        self.transport = transport
        self.handle_events = handle_events
        self.clock = clock
        self.stall_timeout = stall_timeout
        self._paused = False
        self._stopped = False
        self._waiters: list[defer.Deferred[None]] = []
        transport.registerProducer(self, True)

    # IPushProducer
    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport drained its buffer."""
        self._paused = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        """The connection is gone; every pending send fails."""
        self._stopped = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(ConnectionError("connection closed while sending"))

    async def room(self) -> None:
        """Wait while the transport's buffer is full (bounded by the stall
        timeout); raise ConnectionError if the connection is gone."""
        await self._room()

    async def _room(self) -> None:
        if self._stopped:
            raise ConnectionError("connection closed while sending")
        if self._paused:
            d: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(d)
            if self.clock is not None:
                d.addTimeout(self.stall_timeout, self.clock)
            try:
                await d
            except defer.TimeoutError:
                raise ConnectionError(f"the peer read nothing for {self.stall_timeout:g} s") from None

    def _write(self, events: list[Event]) -> None:
        self.handle_events(events)
        data = self.assoc.data_to_send()
        if data:
            self.transport.write(data)

    async def send_file(self, context_id: int, command: dict[int, Any], path: str) -> int:
        """Send ``command`` and the data set of the file at ``path``.

        Returns:
            the number of data set bytes sent.

        Raises:
            OSError, Part10Error: the file cannot be read (nothing sent).
            ConnectionError: the connection closed while sending.
        """
        pdv = max(1, min(self.assoc.max_pdv_data(), MAX_READ))
        block = max(pdv, MAX_READ - MAX_READ % pdv)   # whole PDVs per disk read
        handle, data, at_end = await self.disk.call(_open_data_set, path, block)
        try:
            await self._room()
            self._write(self.assoc.send_message(context_id, command))
            sent = 0
            while True:
                # the next block is read while this one goes out
                reading = None if at_end else self.disk.call(_read_block, handle, block)
                view = memoryview(data)
                starts = range(0, max(1, len(data)), pdv)
                for start in starts[:-1]:
                    await self._room()
                    self._write(self.assoc.send_pdv(context_id, 0, view[start:start + pdv]))
                following, at_end = await reading if reading is not None else (b"", True)
                await self._room()
                self._write(self.assoc.send_pdv(context_id, 0 if following else PDV_LAST,
                                                view[starts[-1]:starts[-1] + pdv]))
                sent += len(data)
                if not following:
                    return sent
                data = following
        finally:
            self.disk.post(handle.close)


def _open_data_set(path: str, size: int) -> tuple[BinaryIO, bytes, bool]:
    """Open a Part 10 file and read its File Meta and at least ``size``
    bytes of its data set (blocking: on a disk worker).  Reads only forward
    (no seek), so a pipe or FIFO serves too.  Returns the open file, the
    data set bytes read and whether the file ended."""
    handle = open(path, "rb")
    try:
        seen = bytearray()

        def read(count: int) -> bytes:
            chunk = handle.read(count)
            seen.extend(chunk)
            return chunk
        offset = read_file_meta(read).data_set_offset
        data = bytes(seen[offset:])
        if len(data) >= size:
            return handle, data, False
        rest, at_end = _read_block(handle, size - len(data))
        return handle, data + rest, at_end
    except BaseException:
        handle.close()
        raise


def _read_block(handle: BinaryIO, size: int) -> tuple[bytes, bool]:
    """Up to ``size`` bytes; and whether the file ended (a short read)."""
    data = handle.read(size)
    return data, len(data) < size


class StoreRequests:
    """The C-STORE requests an association sent, matched to their responses
    by Message ID (PS3.7 9.3.1).

    Args:
        clock: for the answer's timeout.
        timeout: seconds the peer has to answer once it has the data set.
    """

    def __init__(self, clock: Any, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self._waiting: dict[int, defer.Deferred[int]] = {}
        self._next = 1

    def next_message_id(self) -> int:
        """A Message ID for our next request (1..65535, then again)."""
        message_id = self._next
        self._next = (message_id % 0xFFFF) + 1
        return message_id

    def send(self, sender: MessageSender, context_id: int, command: dict[int, Any],
             path: str) -> "defer.Deferred[int]":
        """Send ``command`` with the data set of ``path``; fires with the
        response's status, or fails (not sent, no answer in time, closed)."""
        message_id = command[MESSAGE_ID]
        answer: defer.Deferred[int] = defer.Deferred()
        self._waiting[message_id] = answer

        def forget(result: Any) -> Any:
            self._waiting.pop(message_id, None)
            return result

        def sent(_: Any) -> "defer.Deferred[int]":
            # The peer has the whole data set: now its answer is due.
            answer.addTimeout(self.timeout, self.clock)
            return answer.addBoth(forget)
        sending = defer.Deferred.fromCoroutine(sender.send_file(context_id, command, path))
        return sending.addCallbacks(sent, forget)

    def answer(self, command: Command) -> bool:
        """A C-STORE-RSP: give its status to the request; False for any
        other command."""
        if command.command_field != C_STORE_RSP:
            return False
        waiting = self._waiting.pop(command.get(MESSAGE_ID_BEING_RESPONDED_TO), None)
        if waiting is not None:
            waiting.callback(command.get(STATUS, 0xFFFF))
        return True

    def fail_all(self, error: Exception) -> None:
        """The association closed: every request still waiting fails."""
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            if not d.called:
                d.errback(error)
