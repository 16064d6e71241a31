"""Sending a stored instance as a C-STORE data set, from its file, with flow
control (C-MOVE and C-GET sub-operations; PS3.4 C.4.2, C.4.3).

The data set bytes are read from the Part 10 file in pieces of the peer's
maximum PDV size and written one P-DATA-TF at a time; while the transport's
buffer is full the sender waits (it is the transport's streaming producer),
so an instance of any size never sits in memory whole.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from sdcc_twisted.core.association import Association
from sdcc_twisted.core.conformance import PDV_LAST
from sdcc_twisted.core.events import Event
from sdcc_twisted.core.part10 import read_file_meta

#: Bytes read from a file at a time when the peer allows big PDUs.
MAX_READ = 256 * 1024


@implementer(IPushProducer)
class MessageSender:
    """Writes messages for one association, pausing with the transport.

    Args:
        assoc: the association's core.
        transport: where the bytes go; this object registers as its producer.
        handle_events: the adapter's handler for events the core returns.
    """

    def __init__(self, assoc: Association, transport: Any,
                 handle_events: Callable[[list[Event]], None],
                 clock: Any = None, stall_timeout: float = 60.0) -> None:
        self.assoc = assoc
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
        with open(path, "rb") as handle:
            handle.seek(read_file_meta(handle.read).data_set_offset)
            size = max(1, min(self.assoc.max_pdv_data(), MAX_READ))
            chunk = handle.read(size)
            await self._room()
            self._write(self.assoc.send_message(context_id, command))
            sent = 0
            while True:
                following = handle.read(size) if chunk else b""
                last = not following
                await self._room()
                self._write(self.assoc.send_pdv(context_id, PDV_LAST if last else 0, chunk))
                sent += len(chunk)
                if last:
                    return sent
                chunk = following
