"""``[server] workers = N``: N reactor processes share the DICOM port.

One reactor uses one core.  With ``workers`` above 1, ``twistd sdcc`` becomes
a parent that

- opens the ``tcp:`` listener itself and never accepts on it: each worker
  inherits the listening socket (file descriptor 3) and adopts it with
  ``IReactorSocket.adoptStreamPort``, so the kernel spreads connections over
  the workers;
- starts the embedded Redis once (``[index] redis = embedded``) and hands
  its URL to the workers, whose per-AE lock is then the Redis one, shared by
  all of them;
- restarts a worker that ends while the parent runs, with a back-off.

Each worker is a whole sdcc (:func:`~sdcc_twisted.service.build_service`)
whose ``node_id`` is ``{node_id}-w{K}``: its own temp folder, write-ahead log
and journal.  A restarted worker K recovers what worker K left.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import socket
import sys
from typing import Any, Final

from twisted.application import service
from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.address import IPv6Address
from twisted.logger import (
    FileLogObserver,
    eventAsText,
    globalLogBeginner,
)

from sdcc_twisted.config import ConfigError, Settings, load_settings
from sdcc_twisted.logs import get_logger
from sdcc_twisted.service import build_service
from sdcc_twisted.storage.datalock import DataDirLock
from sdcc_twisted.storage.redisproc import EmbeddedRedis, RedisNotFound

__all__ = ["WORKER_FD", "WorkerPool", "build_workers", "main", "worker_settings"]

log = get_logger("sdcc.workers")

#: The descriptor number under which a worker inherits the listening socket.
WORKER_FD: Final = 3
#: Seconds before a worker that ended is started again (doubling, up to
#: :data:`MAX_RESTART_DELAY`, while it keeps ending soon after its start).
RESTART_DELAY: Final = 1.0
MAX_RESTART_DELAY: Final = 30.0
#: A worker that ran this long counts as healthy: its next restart is quick.
HEALTHY_AFTER: Final = 10.0
#: Seconds a stopping worker gets between SIGTERM and SIGKILL.
STOP_TIMEOUT: Final = 15.0


def worker_node_id(node_id: str, number: int) -> str:
    """The node id of worker ``number`` of node ``node_id``."""
    return f"{node_id}-w{number}"


def worker_settings(settings: Settings, number: int, redis_url: str) -> Settings:
    """The settings of worker ``number``: its own node id, one process, the
    Redis the parent names, and the Redis per-AE lock."""
    server = dataclasses.replace(settings.server, workers=1,
                                 node_id=worker_node_id(settings.server.node_id, number))
    index = dataclasses.replace(settings.index, redis=redis_url,
                                lock="redis" if settings.index.lock == "auto"
                                else settings.index.lock)
    return dataclasses.replace(settings, server=server, index=index)


class _Unused(protocol.Factory):
    """The parent's listener never accepts; were it to, it would close."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:
        return None


class _Worker(protocol.ProcessProtocol):
    """One worker child: relays its output lines to the parent's log."""

    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.started = 0.0
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            log.info("w{n}: {line}", n=self.number,
                     line=line.decode("utf-8", "replace").rstrip())

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerPool(service.Service):
    """Opens the listener and keeps ``count`` workers running on it.

    Args:
        settings: the node's settings (``[server] listen`` is a ``tcp:``
            endpoint; config checked it).
        reactor: provides TCP listening, process spawning and time.
        embedded: the embedded Redis, started first and stopped once every
            worker ended; without it the workers use ``[index] redis``.
    """

    def __init__(self, settings: Settings, reactor: Any,
                 embedded: EmbeddedRedis | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.embedded = embedded
        self.count = settings.server.workers
        self.port: Any = None
        self.workers: dict[int, _Worker] = {}
        self._url = ""
        self._delays: dict[int, float] = {}
        self._calls: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        if self.embedded is not None:
            self.embedded.startService()
        listen = self.settings.server.listen
        endpoint = endpoints.serverFromString(self.reactor, listen)
        # TCP endpoints listen synchronously: the port stops reading before
        # the reactor could accept anything on it
        endpoint.listen(_Unused()).addCallbacks(self._listening, self._cannot_listen)

    def _listening(self, port: Any) -> None:
        port.stopReading()
        self.port = port
        log.info("{n} workers share {listen}", n=self.count,
                 listen=self.settings.server.listen)
        url = (self.embedded.ready if self.embedded is not None
               else defer.succeed(self.settings.index.redis))
        url.addCallbacks(self._start_all, self._no_redis)

    def _cannot_listen(self, failure: Any) -> None:
        log.failure("cannot listen on [server] listen = {listen}", failure,
                    listen=self.settings.server.listen)
        self.reactor.stop()

    def _no_redis(self, failure: Any) -> None:
        log.failure("the embedded redis-server did not start; no worker started. "
                    "Fix [index] redis or [index] redis_server", failure)

    def _start_all(self, url: str) -> None:
        self._url = url
        for number in range(self.count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._calls.pop(number, None)
        if not self.running:
            return
        worker = _Worker(self, number)
        family = "INET6" if isinstance(self.port.getHost(), IPv6Address) else "INET"
        argv = [sys.executable, "-m", "sdcc_twisted.workers", self.settings.source,
                str(number), self._url, family]
        self.reactor.spawnProcess(worker, sys.executable, argv, env=dict(os.environ),
                                  path=os.getcwd(),
                                  childFDs={0: "w", 1: "r", 2: "r",
                                            WORKER_FD: self.port.fileno()})
        worker.started = self.reactor.seconds()
        self.workers[number] = worker
        log.info("worker {n} started (pid {pid}, node_id {node})", n=number,
                 pid=worker.transport.pid if worker.transport is not None else "?",
                 node=worker_node_id(self.settings.server.node_id, number))

    def worker_ended(self, worker: _Worker, reason: Any) -> None:
        """A worker process ended (its process protocol says so): restart it
        unless the pool is stopping."""
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if not self.running:
            return
        lived = self.reactor.seconds() - worker.started
        delay = (RESTART_DELAY if lived >= HEALTHY_AFTER
                 else min(self._delays.get(worker.number, RESTART_DELAY / 2) * 2,
                          MAX_RESTART_DELAY))
        self._delays[worker.number] = delay
        log.warn("worker {n} ended ({why}) after {lived:.1f} s; starting it again in "
                 "{delay:g} s, it recovers its own log and journal",
                 n=worker.number, why=reason.getErrorMessage(), lived=lived, delay=delay)
        self._calls[worker.number] = self.reactor.callLater(delay, self._spawn,
                                                            worker.number)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        for call in self._calls.values():
            call.cancel()
        self._calls.clear()
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, "TERM")
        def kill_all() -> None:
            for w in workers:
                _signal(w, "KILL")
        kill = self.reactor.callLater(STOP_TIMEOUT, kill_all)
        d = defer.gatherResults([w.ended for w in workers])

        def stopped(_: Any) -> Any:
            if kill.active():
                kill.cancel()
            done = []
            if self.port is not None:
                port, self.port = self.port, None
                done.append(defer.maybeDeferred(port.stopListening))
            if self.embedded is not None:
                # after the workers: they release their locks on it
                done.append(defer.maybeDeferred(self.embedded.stopService))
            return defer.gatherResults(done)

        return d.addCallback(stopped)


def _signal(worker: _Worker, name: str) -> None:
    if worker.transport is None:
        return
    try:
        worker.transport.signalProcess(name)
    except error.ProcessExitedAlready:
        pass


def build_workers(settings: Settings, reactor: Any) -> service.MultiService:
    """The parent of ``[server] workers`` processes (see the module docstring).

    Raises:
        ConfigError: for an embedded Redis that cannot be found.
    """
    top = service.MultiService()
    top.setName("sdcc-workers")
    embedded = None
    if settings.index.redis == "embedded":
        # the parent's embedded Redis lives in data_dir: one server per data_dir
        DataDirLock(settings.server.data_dir, settings.source).setServiceParent(top)
        try:
            embedded = EmbeddedRedis(settings.server.data_dir, reactor,
                                     executable=settings.index.redis_server or None,
                                     fsync=settings.storage.fsync)
        except RedisNotFound as exc:
            raise ConfigError(f"{settings.source}: [index] redis = embedded: {exc}") from None
    pool = WorkerPool(settings, reactor, embedded)
    pool.setServiceParent(top)
    top.pool = pool  # type: ignore[attr-defined]
    return top


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    """A worker: ``python -m sdcc_twisted.workers CONFIG NUMBER REDIS_URL FAMILY``."""
    config, number, redis_url, family = argv
    _die_with_parent()
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stdout, lambda event: (eventAsText(
            event, includeTimestamp=False) or "") + "\n")],
        redirectStandardIO=False)
    try:
        settings = worker_settings(load_settings(config), int(number), redis_url)
        endpoint = endpoints.AdoptedStreamServerEndpoint(
            reactor, WORKER_FD, getattr(socket, "AF_" + family))
        top = build_service(settings, reactor, endpoint=endpoint)
    except ConfigError as exc:
        print(exc, flush=True)
        return 2
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
