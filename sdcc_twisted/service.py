"""``build_service(settings, reactor)``: the whole server as a MultiService.

Mount it in your own Twisted application with
``build_service(settings, reactor).setServiceParent(application)``; twistd's
plugin does the same.  Children start in order: the data folder's lock,
logging, Redis (embedded or external), the storage clean-up, the journal
replayer, the free-space guard, the graceful stop, the DICOM listener, the
health probe and the HTTP listener; they stop one at a time in reverse order.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
import signal
import threading
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.application import service
from twisted.internet import defer, endpoints, threads
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from sdcc_twisted.storage.catalog import RedisCatalog
from sdcc_twisted.storage.datalock import DataDirLock
from sdcc_twisted.storage.deletion import RetentionService
from sdcc_twisted.config import (
    SENTINEL_SCHEME,
    ConfigError,
    HookSettings,
    Settings,
    parse_sentinel_url,
    settings_summary,
)
from sdcc_twisted.storage.index import RedisAssociationLock, RedisIndex, connect_redis
from sdcc_twisted.storage.journal import IndexLog, JournalReplayer, PendingJournal
from sdcc_twisted.storage.locks import FallbackAssociationLock, IAssociationLock, InProcessAssociationLock
from sdcc_twisted.storage.nodes import NodePaths, adopt_legacy_files
from sdcc_twisted.storage.sentinel import ReplicatedIndex, ReplicatedLock, SentinelRedis
from sdcc_twisted import __version__, logs
from sdcc_twisted.http import HealthProbe, build_site, read_token
from sdcc_twisted.monitor import ISpaceReport, Monitor
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.negotiation import AcceptorPolicy
from sdcc_twisted.runtime.admission import Admission, with_backlog
from sdcc_twisted.runtime.descriptors import check_descriptors
from sdcc_twisted.runtime.dispatch import service_table
from sdcc_twisted.runtime.protocol import DicomServerFactory, Timeouts
from sdcc_twisted.runtime.twisted_gaps import replace_server_tls_options, server_tls_options
from sdcc_twisted.runtime.shutdown import GracefulStop, OrderedMultiService
from sdcc_twisted.services.qr import QueryRetrieveSCP
from sdcc_twisted.services.after_receipt import ReceiptListener, StudyWatch
from sdcc_twisted.services.forwarding import Forwarder
from sdcc_twisted.services.hooks import Hooks
from sdcc_twisted.storage.forward_queue import ForwardQueue
from sdcc_twisted.runtime.client import open_store_association
from sdcc_twisted.services.transcode import Transcoder
from sdcc_twisted.storage.studies import StudyArrivals
from sdcc_twisted.storage.redisproc import EmbeddedRedis, RedisNotFound
from sdcc_twisted.storage.sequence import SequenceSource
from sdcc_twisted.storage.serial import DiskWorkers, ThreadWorkers
from sdcc_twisted.storage.space import SpaceGuard
from sdcc_twisted.services.scp import StorageSCP
from sdcc_twisted.storage.files import FileStore, make_private_dirs, uid_path_part

log = get_logger("sdcc.service")


class LateRedis:
    """Stands for the Redis connection until it exists.

    The embedded server's socket only exists once it runs, so the connection
    is made at start; until then every call fails fast as a connection error
    (and the instance is journaled, not lost).
    """

    handler: Any = None

    def __getattr__(self, name: str) -> Any:
        if self.handler is None:
            raise txredisapi.ConnectionError("Redis is not connected yet")
        return getattr(self.handler, name)


class RedisConnectionService(service.Service):
    """Connects to Redis at start (after the embedded server is up) and
    disconnects at stop."""

    def __init__(self, late: LateRedis, reactor: Any, url: str | None = None,
                 embedded: EmbeddedRedis | None = None, key_prefix: str = "sdcc:") -> None:
        self.late = late
        self.reactor = reactor
        self.url = url
        self.embedded = embedded
        self.key_prefix = key_prefix
        self.connected: defer.Deferred[Any] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        if self.embedded is not None:
            self.embedded.ready.addCallbacks(self._connect, self._embedded_failed)
        else:
            self._connect(self.url)

    def _connect(self, url: Any) -> None:
        if str(url).startswith(SENTINEL_SCHEME + "://"):
            target = parse_sentinel_url(str(url))
            self.late.handler = SentinelRedis(target, self.reactor,
                                              key_prefix=self.key_prefix)
            url = (f"the primary {target.service!r} of the Sentinels "
                   + ",".join(f"{host}:{port}" for host, port in target.sentinels))
        else:
            self.late.handler = connect_redis(str(url), self.reactor)
        log.info("index: Redis at {url}", url=url)
        self.connected.callback(self.late.handler)

    def _embedded_failed(self, failure: Any) -> None:
        log.failure("the embedded redis-server did not start; images are still "
                    "stored and journaled for indexing. Fix [index] redis or "
                    "[index] redis_server", failure)

    def stopService(self) -> Any:
        super().stopService()
        handler, self.late.handler = self.late.handler, None
        if handler is not None:
            return defer.maybeDeferred(handler.disconnect).addErrback(lambda _: None)
        return None


class StorageCleanupService(service.Service):
    """Before the listener starts (and once ``data_dir`` is this server's):
    adopts the files of an older layout, removes the temp files a crash left,
    moves the records a crash left in the index log to the journal, and
    reserves the first block of sequence numbers."""

    def __init__(self, store: FileStore, index_log: IndexLog, journal: PendingJournal,
                 sequence: SequenceSource | None = None,
                 adopt: Callable[[], int] | None = None) -> None:
        self.store = store
        self.index_log = index_log
        self.journal = journal
        self.sequence = sequence
        self.adopt = adopt

    def startService(self) -> None:
        super().startService()
        adopted = self.adopt() if self.adopt is not None else 0
        if adopted:
            log.warn("moved {n} index log segment(s) and journal entries of an older "
                     "layout into this node's folder; they are indexed again", n=adopted)
        removed = self.store.remove_stale_temp_files()
        if removed:
            log.warn("removed {n} partial file(s) left by an earlier crash in {tmp}",
                     n=removed, tmp=self.store.tmp_dir)
        moved = self.index_log.recover(self.journal)
        if moved:
            log.warn("{n} stored instance(s) were on their way to the index at the "
                     "last stop; indexing them again from the journal", n=moved)
        if self.sequence is not None:
            self.sequence.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.index_log.close()


class LogFileService(service.Service):
    """``[logging] file``: a filtered log file (text, or JSON lines with
    ``[logging] format = json``) beside twistd's log.

    SIGHUP reopens it (after logrotate moved it away); the handler only
    schedules the reopen on the reactor thread.
    """

    def __init__(self, path: str, level: str, reactor: Any = None,
                 format: str = "text") -> None:
        self.path = path
        self.level = LogLevel.levelWithName(level)
        self.reactor = reactor
        self.format = format
        self._observer: Any = None
        self._handle: Any = None
        self._previous_handler: Any = None
        self._installed = False

    def startService(self) -> None:
        super().startService()
        self.reopen()
        if self.reactor is not None and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(
                signal.SIGHUP,
                lambda signum, frame: self.reactor.callFromThread(self._reopen_on_signal))
            self._installed = True

    def _reopen_on_signal(self) -> None:
        try:
            self.reopen()
        except ConfigError as exc:
            log.error("SIGHUP: {why}; still logging to the file opened before", why=exc)
        else:
            log.info("SIGHUP: reopened the log file {path}", path=self.path)

    def reopen(self) -> None:
        """Open ``path`` (again) and log to it; then close the old file."""
        try:
            handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"[logging] file: cannot open {self.path}: "
                              f"{exc.strerror}") from None
        predicate = LogLevelFilterPredicate(defaultLogLevel=self.level)
        writer = (logs.json_lines_observer(handle) if self.format == "json"
                  else textFileLogObserver(handle))
        observer = FilteringLogObserver(writer, [predicate])
        globalLogPublisher.addObserver(observer)
        self._close()
        self._observer, self._handle = observer, handle

    def _close(self) -> None:
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def stopService(self) -> Any:
        super().stopService()
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous_handler or signal.SIG_DFL)
            self._installed = False
        self._close()


class ListenerService(service.Service):
    """Listens on the ``[server] listen`` endpoint while the service runs.

    Twisted's ``StreamServerEndpointService`` raises a failure to listen at
    start only through a private flag; here it is raised from
    :meth:`privilegedStartService` (or :meth:`startService`), so twistd
    exits with one line naming it (a :class:`ConfigError` built from
    ``describe``) instead of running without a listener.  A failure that
    comes later is logged.
    """

    def __init__(self, endpoint: Any, factory: Any, describe: str = "listen") -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.describe = describe
        self._listening: defer.Deferred[Any] | None = None
        self._port: Any = None
        self._waiters: list[defer.Deferred[Any]] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self._listen()

    def when_listening(self) -> "defer.Deferred[Any]":
        """Fires with the ``IListeningPort`` once the endpoint listens."""
        if self._port is not None:
            return defer.succeed(self._port)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append(d)
        return d

    def _listen(self) -> None:
        now: list[Failure] = []
        starting = True

        def listened(port: Any) -> None:
            self._port = port
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(port)

        def not_listening(failure: Failure) -> None:
            if starting:
                now.append(failure)
            elif not failure.check(defer.CancelledError):
                log.failure("cannot listen on {endpoint}", failure, endpoint=self.endpoint)
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.errback(failure)

        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(listened, not_listening)
        starting = False
        if now:
            reason = now[0].value
            reason = getattr(reason, "socketError", None) or reason
            raise ConfigError(f"{self.describe}: cannot listen: {reason}")

    def stopService(self) -> Any:
        super().stopService()
        listening, self._listening = self._listening, None
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        if listening is not None:
            listening.cancel()
        return None


class SdccService(OrderedMultiService):
    """The whole server (see :func:`build_service`), with the parts a host
    application or a test may want to reach."""

    def __init__(self, factory: DicomServerFactory, store: FileStore, index: RedisIndex,
                 journal: PendingJournal, connection: RedisConnectionService,
                 embedded: EmbeddedRedis | None, listener: ListenerService,
                 monitor: Monitor, space: ISpaceReport) -> None:
        super().__init__()
        self.monitor = monitor
        self.space = space
        self.factory = factory
        self.store = store
        self.index = index
        self.journal = journal
        self.connection = connection
        self.embedded = embedded
        self.listener = listener


def _after_receipt(settings: Settings, reactor: Any, late: Any, store: FileStore,
                   storage: StorageSCP, transcoder: Transcoder,
                   monitor: Monitor, run_blocking: Any,
                   forward_dir: str, disk: DiskWorkers) -> list[service.Service]:
    """The services after receipt (README "After receipt"): forwarding by
    the rules (its queue in ``forward_dir``, the node's own), hooks, and the
    study-complete watch that feeds both."""
    children: list[service.Service] = []
    listeners: list[ReceiptListener] = []
    arrivals = StudyArrivals(late, reactor, key_prefix=settings.index.key_prefix,
                             timeout=settings.index.timeout)
    if settings.forward_rules:
        server = settings.server

        def open_association(destination: Any, contexts: list[tuple[str, str]]) -> Any:
            return defer.Deferred.fromCoroutine(open_store_association(
                reactor, destination, server.ae_title, contexts, server.artim_timeout, disk))
        forwarder = Forwarder(
            ForwardQueue(forward_dir, fsync=settings.storage.fsync),
            settings.forward_rules, dict(settings.move_destinations), settings.forward,
            open_association, reactor, run_blocking, arrivals, settings.studies.quiet_seconds,
            transcoder, monitor)
        forwarder.setName("forwarder")
        storage.before_answer.append(forwarder.queue_instance)
        listeners.append(forwarder)
        children.append(forwarder)
    if settings.hooks != HookSettings():
        hooks = Hooks(_resolved_hooks(settings), reactor)
        hooks.setName("hooks")
        listeners.append(hooks)
        children.append(hooks)
    if settings.studies.quiet_seconds:
        watch = StudyWatch(
            arrivals, reactor, settings.studies.quiet_seconds,
            lambda study: os.path.join(store.root, uid_path_part(study)), listeners)
        storage.receipt_listeners.append(watch.instance_stored)
        children.append(watch)
    else:
        storage.receipt_listeners.extend(listener.instance_stored for listener in listeners)
    return children


def _resolved_hooks(settings: Settings) -> HookSettings:
    """``[hooks]`` with each command's program found (PATH for a bare name).

    Raises:
        ConfigError: a program that is not there or not executable.
    """
    hooks = settings.hooks

    def resolved(key: str, argv: tuple[str, ...]) -> tuple[str, ...]:
        if not argv:
            return argv
        program = shutil.which(argv[0])
        if program is None:
            raise ConfigError(f"{settings.source}: [hooks] {key}: {argv[0]!r} is not an "
                              "executable file (nor a program on PATH)")
        return (os.path.abspath(program), *argv[1:])
    return replace(hooks, on_instance=resolved("on_instance", hooks.on_instance),
                   on_study_complete=resolved("on_study_complete", hooks.on_study_complete))


def _lock_fallback(calling_ae: str, failure: Any) -> None:
    log.warn("Redis association lock unavailable for {calling} ({why}); "
             "enforcing one association per AE in this process only",
             calling=calling_ae, why=failure.getErrorMessage())


def require_client_certificates(endpoint: Any, settings: Settings,
                                listen_key: str = "[server] listen") -> None:
    """``[tls] ca_certificates``: make an ``ssl:`` listener verify client
    certificates against those CAs (PS3.15 B.1, the TLS secure transport
    connection profile: both ends authenticate)."""
    from OpenSSL import crypto
    from twisted.internet import ssl

    path = settings.tls.ca_certificates
    try:
        with open(path, "rb") as handle:
            pem = handle.read()
    except OSError as exc:
        raise ConfigError(f"{settings.source}: [tls] ca_certificates: cannot read "
                          f"{path}: {exc.strerror}") from None
    blocks = [b"-----BEGIN CERTIFICATE-----" + part
              for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    try:
        authorities = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as exc:
        raise ConfigError(f"{settings.source}: [tls] ca_certificates: {path} holds an "
                          f"unreadable certificate ({exc})") from None
    if not authorities:
        raise ConfigError(f"{settings.source}: [tls] ca_certificates: {path} holds "
                          "no PEM certificate")
    original = server_tls_options(endpoint)
    if original is None:
        raise ConfigError(f"{settings.source}: [tls] ca_certificates: {listen_key} "
                          "is not an ssl: endpoint")
    replace_server_tls_options(endpoint, ssl.CertificateOptions(
        privateKey=original.privateKey,
        certificate=original.certificate,
        extraCertChain=getattr(original, "extraCertChain", None),
        verify=True,
        caCerts=authorities,
        requireCertificate=settings.tls.require_client_certificate,
    ))


def build_service(settings: Settings, reactor: Any,
                  space_report: ISpaceReport | None = None,
                  endpoint: Any = None) -> SdccService:
    """Build the server's service tree from validated settings.

    ``space_report`` replaces the server's own :class:`SpaceGuard`
    (``[storage] min_free_space``) as the source of free space and the disk
    floor for C-STORE, ``/readyz`` and ``sdcc_disk_free_bytes``.
    ``endpoint`` (an ``IStreamServerEndpoint``), when given, listens instead
    of ``[server] listen``: a worker's inherited socket
    (:mod:`sdcc_twisted.workers`).

    Raises:
        ConfigError: naming the section and key, for what can only be checked
            here (the endpoint string, the redis-server binary, directories,
            caps above the file descriptor limit).
    """
    check_descriptors(settings)
    data_dir = settings.server.data_dir
    node = NodePaths.for_node(data_dir, settings.storage_root, settings.server.node_id)
    children: list[service.Service] = []  # in start order
    if settings.index.redis == "embedded":
        # the embedded Redis lives in data_dir itself: one server per data_dir
        children.append(DataDirLock(data_dir, settings.source))
    # this node's WAL, journal, sequence and temp files: one server per node
    children.append(DataDirLock(node.node_dir, settings.source))
    logs.set_level(settings.logging.level)
    if settings.logging.file:
        children.append(LogFileService(settings.logging.file, settings.logging.level, reactor,
                                       settings.logging.format))

    try:
        make_private_dirs(data_dir)     # 0700 before the embedded Redis writes there
        store = FileStore(settings.storage_root, fsync=settings.storage.fsync,
                          max_head_bytes=settings.storage.max_head_bytes,
                          file_mode=settings.storage.file_mode,
                          dir_mode=settings.storage.dir_mode,
                          tmp_dir=node.temp_dir)
    except OSError as exc:
        raise ConfigError(f"{settings.source}: [server] data_dir / [storage] root: "
                          f"cannot create {exc.filename}: {exc.strerror}") from None

    late = LateRedis()
    if settings.index.redis == "embedded":
        try:
            embedded = EmbeddedRedis(data_dir, reactor,
                                     executable=settings.index.redis_server or None,
                                     fsync=settings.storage.fsync)
        except RedisNotFound as exc:
            raise ConfigError(f"{settings.source}: [index] redis = embedded: {exc}") from None
        children.append(embedded)
        connection = RedisConnectionService(late, reactor, embedded=embedded)
    else:
        embedded = None
        connection = RedisConnectionService(late, reactor, url=settings.index.redis,
                                            key_prefix=settings.index.key_prefix)
    children.append(connection)

    index: Any = RedisIndex(late, reactor, key_prefix=settings.index.key_prefix,
                            timeout=settings.index.timeout)
    sentinel = settings.index.redis.startswith(SENTINEL_SCHEME + "://")
    if sentinel:
        index = ReplicatedIndex(index, late, timeout=settings.index.timeout)
    journal = PendingJournal(node.journal_dir)
    try:
        index_log = IndexLog(node.node_dir, fsync=settings.storage.fsync, clock=reactor)
    except OSError as exc:
        raise ConfigError(f"{settings.source}: [server] data_dir: cannot open the index "
                          f"log in {node.node_dir}: {exc.strerror}") from None
    try:
        sequence = SequenceSource.in_data_dir(node.node_dir, now=reactor.seconds)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{settings.source}: [server] data_dir: cannot use the "
                          f"sequence file in {node.node_dir}: {exc}") from None
    children.append(StorageCleanupService(store, index_log, journal, sequence,
                                          adopt=lambda: adopt_legacy_files(data_dir, node)))
    # stops after GracefulStop drained the stores (children stop in reverse)
    disk_threads = ThreadWorkers()
    children.append(disk_threads)
    disk = DiskWorkers(disk_threads, lambda *call: reactor.callFromThread(*call))

    def run_blocking(fn: Any, *args: Any) -> "defer.Deferred[Any]":
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    children.append(JournalReplayer(journal, index, reactor, run_blocking=run_blocking))

    lock_kind = settings.index.lock
    if lock_kind == "auto":
        lock_kind = "memory" if embedded is not None else "redis"
    lock: IAssociationLock
    if lock_kind == "redis" and sentinel:
        lock = InProcessAssociationLock(ReplicatedLock(
            RedisAssociationLock(late, reactor, key_prefix=settings.index.key_prefix,
                                 timeout=settings.index.timeout),
            late, timeout=settings.index.timeout))
    elif lock_kind == "redis":
        lock = InProcessAssociationLock(FallbackAssociationLock(
            RedisAssociationLock(late, reactor, key_prefix=settings.index.key_prefix,
                                 timeout=settings.index.timeout),
            InProcessAssociationLock(), _lock_fallback))
    else:
        lock = InProcessAssociationLock()

    if settings.storage.retention_days:
        url = settings.index.redis
        children.append(RetentionService(settings.storage.retention_days, store.root,
                         (lambda: embedded.url) if embedded is not None else (lambda: url),
                         settings.index.key_prefix, settings.index.timeout, reactor,
                         run_blocking))

    server = settings.server
    monitor = Monitor(reactor, __version__, server.allowed_calling_ae_titles,
                      settings.http.show_patient_data)
    space: ISpaceReport
    if space_report is None:
        guard = SpaceGuard({"storage_root": store.root, "data_dir": data_dir},
                           settings.storage.min_free_space, reactor, run_blocking)
        children.append(guard)
        space = guard
    else:
        space = space_report
    storage = StorageSCP(store, index, journal, run_blocking, reactor, index_log,
                         durable_index=embedded is None, space=space, sequence=sequence)
    catalog = RedisCatalog(late, reactor, key_prefix=settings.index.key_prefix,
                           timeout=settings.index.timeout)
    transcoder = Transcoder(store, settings.retrieve.max_decode_bytes, run_blocking)
    children.extend(_after_receipt(settings, reactor, late, store, storage, transcoder,
                                   monitor, run_blocking, os.path.join(node.node_dir, "forward"),
                                   disk))
    query_retrieve = QueryRetrieveSCP(catalog, dict(settings.move_destinations), reactor,
                                      settings.query.timeout, transcoder)
    policy = AcceptorPolicy(
        ae_title=server.ae_title,
        require_called_ae=server.require_called_ae_title,
        allowed_calling_aes=server.allowed_calling_ae_titles,
        max_pdu_length=server.max_pdu_length,
        query_retrieve=settings.query.enabled,
        allowed_query_aes=settings.query.allowed_calling_ae_titles,
    )
    admission = Admission(policy, lock, max_associations=server.max_associations,
                          max_connections_per_address=server.max_connections_per_address,
                          max_connections=server.max_connections)
    factory = DicomServerFactory(
        admission, service_table(storage, query_retrieve), reactor,
        timeouts=Timeouts(artim=server.artim_timeout, idle=server.idle_timeout),
        max_command_length=server.max_command_length,
        monitor=monitor, disk=disk,
    )
    try:
        endpoint = endpoint or endpoints.serverFromString(reactor, with_backlog(server.listen))
    except (ValueError, TypeError, KeyError, OSError, ImportError) as exc:
        raise ConfigError(f"{settings.source}: [server] listen: cannot use "
                          f"{server.listen!r} as a Twisted endpoint ({exc})") from None
    if settings.tls.ca_certificates:
        require_client_certificates(endpoint, settings)
    children.append(GracefulStop(factory, storage, reactor, server.stop_grace))
    listener = ListenerService(endpoint, factory,
                               f"{settings.source}: [server] listen = {server.listen}")
    listener.setName("dicom")
    children.append(listener)
    if settings.http.listen:
        children.extend(_http_services(settings, reactor, monitor, late, journal, space,
                                       run_blocking))
    top = SdccService(factory, store, index, journal, connection, embedded, listener, monitor,
                      space)
    top.setName("sdcc")
    for child in children:
        child.setServiceParent(top)
    log.info("sdcc {summary}", summary=" ".join(
        f"{k}={v}" for k, v in settings_summary(settings).items()))
    return top


def _http_services(settings: Settings, reactor: Any, monitor: Monitor,
                   late: LateRedis, journal: PendingJournal, space: ISpaceReport | None,
                   run_blocking: Any) -> list[service.Service]:
    """``[http] listen``: the probe that feeds the operations site, and its listener."""
    http = settings.http
    token = read_token(http.token_file, settings.source) if http.token_file else None

    def measure() -> "defer.Deferred[tuple[int, dict[str, int]]]":
        return run_blocking(lambda: (journal.count(), space.free_bytes() if space else {}))

    probe = HealthProbe(monitor, reactor, lambda: late.ping(), measure,
                        timeout=settings.index.timeout)
    site = build_site(monitor, reactor, run_blocking, space, token)
    try:
        endpoint = endpoints.serverFromString(reactor, http.listen)
    except (ValueError, TypeError, KeyError, OSError, ImportError) as exc:
        raise ConfigError(f"{settings.source}: [http] listen: cannot use "
                          f"{http.listen!r} as a Twisted endpoint ({exc})") from None
    if settings.tls.ca_certificates and http.listen.startswith("ssl:"):
        require_client_certificates(endpoint, settings, "[http] listen")
    listener = ListenerService(endpoint, site,
                               f"{settings.source}: [http] listen = {http.listen}")
    listener.setName("http")
    return [probe, listener]
