"""The Twisted shell of one association, for both roles.

:class:`AssociationShell` feeds received bytes to the sans-I/O
:class:`~sdcc_twisted.core.association.Association` and acts on the events it
returns: it writes what the core has to send (one ``transport.write`` per
batch, TCP_NODELAY on, handed to the socket in the same turn), runs ARTIM
(PS3.8 9.1.5) and the idle timer on the injected clock, closes (by force after
a grace period), and sends C-STORE requests from files, matching their
responses by Message ID.  Each role handles the other events in its
:meth:`AssociationShell.handlers`: :class:`~.protocol.DicomProtocol` (acceptor)
and :class:`~.client.StoreClient` (requestor).  An exception from our own
code becomes an A-ABORT and a log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from sdcc_twisted.core.association import Association
from sdcc_twisted.core.conformance import ABORT_REASON_NOT_SPECIFIED
from sdcc_twisted.core.dimse import store_request
from sdcc_twisted.core.events import CloseTransport, CommandReceived, Event, StartARTIM, StopARTIM
from sdcc_twisted.logs import get_logger
from sdcc_twisted.runtime.sending import MessageSender, StoreRequests
from sdcc_twisted.storage.serial import DiskWorkers
from sdcc_twisted.runtime.twisted_gaps import send_now

log = get_logger("sdcc.association")

#: Bytes taken off the socket per read: several PDUs per reactor turn
#: (Twisted's default is 64 KiB).
READ_SIZE = 256 * 1024

Handler = Callable[[Any], None]


def _cancel(call: IDelayedCall | None) -> None:
    """Cancel a timer that may have fired or never started."""
    if call is not None and call.active():
        call.cancel()


class IdleTimer:
    """Calls ``expired(idle_for)`` once nothing happened for ``limit``
    seconds on ``clock``; while ``working()`` it waits (our own work is not
    the peer's silence)."""

    def __init__(self, clock: IReactorTime, limit: float, working: Callable[[], bool],
                 expired: Callable[[float], None]) -> None:
        self.clock = clock
        self.limit = limit
        self.working = working
        self.expired = expired
        self.last_activity = clock.seconds()
        self._call: IDelayedCall | None = None

    def touch(self) -> None:
        """Something happened now."""
        self.last_activity = self.clock.seconds()

    def start(self) -> None:
        """Watch from now on."""
        self.touch()
        self._call = self.clock.callLater(self.limit, self._check)

    def cancel(self) -> None:
        """Stop watching (release, abort, close)."""
        _cancel(self._call)
        self._call = None

    def _check(self) -> None:
        idle_for = self.clock.seconds() - self.last_activity
        if self.working():
            self._call = self.clock.callLater(self.limit, self._check)
        elif idle_for < self.limit:
            self._call = self.clock.callLater(self.limit - idle_for, self._check)
        else:
            self._call = None
            self.expired(idle_for)


class AssociationShell(Protocol):
    """Transport, timers, flush and close of one association (either role).

    Args:
        clock: the injected ``IReactorTime`` for every timer.
        artim: ARTIM seconds; also the grace period of a close and the time
            a peer has to answer a C-STORE-RQ we sent.
        idle: seconds the peer may stay silent once ``idle.start()`` ran.
    """

    #: An ITCPTransport, or a TLS wrapper of one (set by makeConnection).
    transport: Any

    def __init__(self, clock: IReactorTime, artim: float, idle: float,
                 disk: DiskWorkers | None = None) -> None:
        self.clock = clock
        #: this association's disk work, in order, off the reactor thread
        #: (inline without ``disk``: tests driven by ``task.Clock``)
        self.disk = (disk or DiskWorkers.inline()).queue()
        self._disk_paused = False
        self.artim_timeout = artim
        self.assoc: Association | None = None
        self.peer = "?"
        self.peer_host: str | None = None
        self.started = 0.0
        self.closed = False
        self.idle = IdleTimer(clock, idle, self.working, self.idle_expired)
        self._artim: IDelayedCall | None = None
        self._force: IDelayedCall | None = None
        self._sender: MessageSender | None = None
        self._requests = StoreRequests(clock, artim)
        self._handlers: dict[type, Handler] = {
            StartARTIM: lambda _: self.start_artim(), StopARTIM: lambda _: self.cancel_artim(),
            CloseTransport: self._close_transport, CommandReceived: self._on_command,
            **self.handlers()}

    # -- what a role provides ---------------------------------------------------
    def new_association(self) -> Association:
        """The core for this connection (its role, limits, first request)."""
        raise NotImplementedError

    def handlers(self) -> dict[type, Handler]:
        """The role's handler per core event type (commands: :meth:`on_command`)."""
        return {}

    def on_command(self, event: CommandReceived) -> None:
        """A command other than the C-STORE-RSP the shell matches itself."""

    def working(self) -> bool:
        """Our own work is in progress (the idle timer waits for it)."""
        return False

    def idle_expired(self, idle_for: float) -> None:
        """The peer stayed silent for the idle timeout."""

    def lost(self) -> None:
        """The transport closed (called once, before waiting answers fail)."""

    def lost_error(self) -> Exception:
        """What a C-STORE waiting for its response fails with on close."""
        return ConnectionError("association closed before the C-STORE-RSP")

    # -- Twisted callbacks ---------------------------------------------------------
    def connectionMade(self) -> None:
        """Evt2/Evt5: the transport is open; TCP_NODELAY, then the core."""
        self.started = self.clock.seconds()
        peer = self.transport.getPeer()
        self.peer_host = getattr(peer, "host", None)
        self.peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        try:
            self.transport.setTcpNoDelay(True)  # TLS wrappers pass it on
        except (AttributeError, NotImplementedError, OSError):
            pass
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE
        self.assoc = self.new_association()
        self._sender = MessageSender(self.assoc, self.transport, self.handle,
                                     self.clock, self.idle.limit, self.disk)
        self.guard(self.assoc.connection_made)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the peer: feed the core and act on what it says."""
        self.idle.touch()
        if self.assoc is not None:
            self.guard(self.assoc.receive_data, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Evt17: however the transport closed, free everything it held."""
        if self.closed:
            return
        self.closed = True
        assoc = self.assoc
        if assoc is not None and assoc.state != "Sta1":
            try:
                self.handle(assoc.connection_lost())
            except Exception:  # noqa: BLE001
                log.failure("error while closing the association with {peer}", peer=self.peer)
        _cancel(self._artim)
        _cancel(self._force)
        self._artim = self._force = None
        self.idle.cancel()
        self.lost()
        self._requests.fail_all(self.lost_error())

    # -- core effects ----------------------------------------------------------------
    def guard(self, fn: Callable[..., list[Event]], *args: Any) -> None:
        """Run a core call and its effects; our own exceptions become an A-ABORT."""
        try:
            self.handle(fn(*args))
        except Exception:  # noqa: BLE001 - the boundary of our own code
            self.internal_error(Failure())

    def internal_error(self, failure: Failure) -> None:
        """Log our own bug, abort the association and close."""
        log.failure("internal error on the association with {peer}; aborting it",
                    failure, peer=self.peer)
        if self.assoc is not None:
            try:
                self.assoc.abort(ABORT_REASON_NOT_SPECIFIED, "internal error")
            except Exception:  # noqa: BLE001
                pass
            self.flush()
        self.close()

    def handle(self, events: list[Event]) -> None:
        """Act on the core's events, then write what it has to send."""
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        self.flush()

    def flush(self) -> None:
        """Write what the core has to send, and hand it to the socket now."""
        assoc = self.assoc
        if assoc is not None:
            data = assoc.data_to_send()
            if data and not self.closed:
                self.transport.write(data)
                send_now(self.transport)

    def close(self) -> None:
        """Close after what is queued has left; a peer that stops reading
        must not keep the connection: after ARTIM it is dropped."""
        if self._sender is not None and not self.closed:
            # A TLS transport does not send its close_notify and close while
            # a producer is registered (tls.TLSMemoryBIOProtocol).
            self._sender.stopProducing()
            self.transport.unregisterProducer()
            self._sender = None
        self.transport.loseConnection()
        if not self.closed and self._force is None:
            self._force = self.clock.callLater(self.artim_timeout, self._force_close)

    def _force_close(self) -> None:
        self._force = None
        if not self.closed:
            self.transport.abortConnection()

    def _close_transport(self, _: CloseTransport) -> None:
        self.flush()    # what the core queued before it asked to close
        self.close()

    def pace_disk(self) -> None:
        """Stop reading from the peer while too much of its data waits for
        the disk; read again once the disk caught up (producer/consumer)."""
        if self._disk_paused or self.closed or not self.disk.backlogged:
            return
        self._disk_paused = True
        self.transport.pauseProducing()
        self.disk.room().addCallback(self._disk_caught_up)

    def _disk_caught_up(self, _: None) -> None:
        self._disk_paused = False
        if not self.closed:
            self.transport.resumeProducing()

    # -- timers ------------------------------------------------------------------------
    def start_artim(self, expired: Callable[[], None] | None = None) -> None:
        """(Re)start ARTIM; on expiry the core's Evt18, or ``expired``."""
        self.cancel_artim()
        self._artim = self.clock.callLater(self.artim_timeout, expired or self._artim_expired)

    def cancel_artim(self) -> None:
        """Stop ARTIM."""
        _cancel(self._artim)
        self._artim = None

    def _artim_expired(self) -> None:
        self._artim = None
        if self.assoc is None:
            return
        if self.assoc.state == "Sta2":
            log.info("no A-ASSOCIATE-RQ from {peer} within {t}s (ARTIM); closing",
                     peer=self.peer, t=self.artim_timeout)
        self.guard(self.assoc.timer_expired)

    # -- C-STORE requests we send (C-GET, C-MOVE sub-operations) ---------------------
    def send_store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str,
                   path: str, originator_ae: str = "",
                   originator_id: int | None = None) -> "defer.Deferred[int]":
        """Send one C-STORE-RQ from the file at ``path``; its response status."""
        if self._sender is None:
            return defer.fail(ConnectionError("association closed before the C-STORE-RQ"))
        return self._requests.send(self._sender, context_id, store_request(
            self._requests.next_message_id(), sop_class_uid, sop_instance_uid,
            originator_ae or None, originator_id), path)

    async def room(self) -> None:
        """Wait until the peer reads what we sent (flow control)."""
        if self._sender is not None:
            await self._sender.room()

    def _on_command(self, event: CommandReceived) -> None:
        if not self._requests.answer(event.command):
            self.on_command(event)


__all__ = ["AssociationShell", "READ_SIZE"]
