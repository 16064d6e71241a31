"""``build_service(settings, reactor)``: the whole server as a MultiService.

Mount it in your own Twisted application with
``build_service(settings, reactor).setServiceParent(application)``; twistd's
plugin does the same.  Children start in order: logging, the storage
clean-up, Redis (embedded or external), the journal replayer, the listener.
"""

from __future__ import annotations

import os
from typing import Any

import txredisapi
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints, threads
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)

from sdcc_twisted.storage.catalog import RedisCatalog
from sdcc_twisted.runtime.client import Destination
from sdcc_twisted.config import (
    SENTINEL_SCHEME,
    ConfigError,
    Settings,
    parse_sentinel_url,
    settings_summary,
)
from sdcc_twisted.storage.index import RedisAssociationLock, RedisIndex, connect_redis
from sdcc_twisted.storage.journal import IndexLog, JournalReplayer, PendingJournal
from sdcc_twisted.storage.locks import FallbackAssociationLock, IAssociationLock, InProcessAssociationLock
from sdcc_twisted.storage.nodes import NodePaths, adopt_legacy_files
from sdcc_twisted.storage.sentinel import ReplicatedIndex, ReplicatedLock, SentinelRedis
from sdcc_twisted import logs
from sdcc_twisted.logs import get_logger
from sdcc_twisted.core.negotiation import AcceptorPolicy
from sdcc_twisted.runtime.protocol import DicomServerFactory, Timeouts
from sdcc_twisted.services.qr import QueryRetrieveSCP
from sdcc_twisted.storage.redisproc import EmbeddedRedis, RedisNotFound
from sdcc_twisted.services.scp import StorageSCP
from sdcc_twisted.storage.files import FileStore

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
    """Before the listener starts: removes the temp files a crash left, and
    moves the records a crash left in the index log to the journal."""

    def __init__(self, store: FileStore, index_log: IndexLog, journal: PendingJournal) -> None:
        self.store = store
        self.index_log = index_log
        self.journal = journal

    def startService(self) -> None:
        super().startService()
        removed = self.store.remove_stale_temp_files()
        if removed:
            log.warn("removed {n} partial file(s) left by an earlier crash in {tmp}",
                     n=removed, tmp=self.store.tmp_dir)
        moved = self.index_log.recover(self.journal)
        if moved:
            log.warn("{n} stored instance(s) were on their way to the index at the "
                     "last stop; indexing them again from the journal", n=moved)

    def stopService(self) -> Any:
        super().stopService()
        self.index_log.close()


class LogFileService(service.Service):
    """``[logging] file``: a filtered text log file beside twistd's log."""

    def __init__(self, path: str, level: str) -> None:
        self.path = path
        self.level = LogLevel.levelWithName(level)
        self._observer: Any = None
        self._handle: Any = None

    def startService(self) -> None:
        super().startService()
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        predicate = LogLevelFilterPredicate(defaultLogLevel=self.level)
        self._observer = FilteringLogObserver(textFileLogObserver(self._handle), [predicate])
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> Any:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _lock_fallback(calling_ae: str, failure: Any) -> None:
    log.warn("Redis association lock unavailable for {calling} ({why}); "
             "enforcing one association per AE in this process only",
             calling=calling_ae, why=failure.getErrorMessage())


def require_client_certificates(endpoint: Any, settings: Settings) -> None:
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
    original = getattr(endpoint, "_sslContextFactory", None)
    if original is None:
        raise ConfigError(f"{settings.source}: [tls] ca_certificates: [server] listen "
                          "is not an ssl: endpoint")
    endpoint._sslContextFactory = ssl.CertificateOptions(
        privateKey=original.privateKey,
        certificate=original.certificate,
        extraCertChain=getattr(original, "extraCertChain", None),
        verify=True,
        caCerts=authorities,
        requireCertificate=settings.tls.require_client_certificate,
    )


def build_service(settings: Settings, reactor: Any,
                  endpoint: Any = None) -> service.MultiService:
    """Build the server's service tree from validated settings.

    ``endpoint`` (an ``IStreamServerEndpoint``), when given, listens instead
    of ``[server] listen``: a worker's inherited socket
    (:mod:`sdcc_twisted.workers`).

    Raises:
        ConfigError: naming the section and key, for what can only be checked
            here (the endpoint string, the redis-server binary, directories).
    """
    top = service.MultiService()
    top.setName("sdcc")
    logs.set_level(settings.logging.level)
    if settings.logging.file:
        LogFileService(settings.logging.file, settings.logging.level).setServiceParent(top)

    data_dir = settings.server.data_dir
    node = NodePaths.for_node(data_dir, settings.storage_root, settings.server.node_id)
    try:
        os.makedirs(data_dir, exist_ok=True)
        store = FileStore(settings.storage_root, fsync=settings.storage.fsync,
                          tmp_dir=node.temp_dir,
                          max_head_bytes=settings.storage.max_head_bytes)
        adopted = adopt_legacy_files(data_dir, node)
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
        embedded.setServiceParent(top)
        connection = RedisConnectionService(late, reactor, embedded=embedded)
    else:
        embedded = None
        connection = RedisConnectionService(late, reactor, url=settings.index.redis,
                                            key_prefix=settings.index.key_prefix)
    connection.setServiceParent(top)

    index: Any = RedisIndex(late, reactor, key_prefix=settings.index.key_prefix,
                            timeout=settings.index.timeout)
    sentinel = settings.index.redis.startswith(SENTINEL_SCHEME + "://")
    if sentinel:
        index = ReplicatedIndex(index, late, timeout=settings.index.timeout)
    if adopted:
        log.warn("moved {n} index log segment(s) and journal entries left in {data_dir} "
                 "into this node's folder {node_dir}; they are indexed again",
                 n=adopted, data_dir=data_dir, node_dir=node.node_dir)
    journal = PendingJournal(node.journal_dir)
    try:
        index_log = IndexLog(node.node_dir, fsync=settings.storage.fsync)
    except OSError as exc:
        raise ConfigError(f"{settings.source}: [server] data_dir: cannot open the index "
                          f"log in {node.node_dir}: {exc.strerror}") from None
    StorageCleanupService(store, index_log, journal).setServiceParent(top)
    JournalReplayer(journal, index, reactor).setServiceParent(top)

    lock_kind = settings.index.lock
    if lock_kind == "auto":
        lock_kind = "memory" if embedded is not None else "redis"
    lock: IAssociationLock
    if lock_kind == "redis" and sentinel:
        lock = ReplicatedLock(
            RedisAssociationLock(late, reactor, key_prefix=settings.index.key_prefix,
                                 timeout=settings.index.timeout),
            late, timeout=settings.index.timeout)
    elif lock_kind == "redis":
        lock = FallbackAssociationLock(
            RedisAssociationLock(late, reactor, key_prefix=settings.index.key_prefix,
                                 timeout=settings.index.timeout),
            InProcessAssociationLock(), _lock_fallback)
    else:
        lock = InProcessAssociationLock()

    def run_blocking(fn: Any, *args: Any) -> "defer.Deferred[Any]":
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    server = settings.server
    storage = StorageSCP(store, index, journal, run_blocking, reactor, index_log)
    catalog = RedisCatalog(late, reactor, key_prefix=settings.index.key_prefix,
                           timeout=settings.index.timeout)
    destinations = {title: Destination(d.ae_title, d.host, d.port, d.tls)
                    for title, d in settings.move_destinations.items()}
    query_retrieve = QueryRetrieveSCP(catalog, destinations, reactor, server.ae_title,
                                      timeout=server.artim_timeout)
    policy = AcceptorPolicy(
        ae_title=server.ae_title,
        require_called_ae=server.require_called_ae_title,
        allowed_calling_aes=server.allowed_calling_ae_titles,
        max_pdu_length=server.max_pdu_length,
    )
    factory = DicomServerFactory(
        policy, storage, lock, reactor,
        timeouts=Timeouts(artim=server.artim_timeout, idle=server.idle_timeout),
        max_associations=server.max_associations,
        max_command_length=server.max_command_length,
        max_connections_per_address=server.max_connections_per_address,
        query_retrieve=query_retrieve,
    )
    try:
        endpoint = endpoint or endpoints.serverFromString(reactor, server.listen)
    except (ValueError, TypeError, KeyError, OSError, ImportError) as exc:
        raise ConfigError(f"{settings.source}: [server] listen: cannot use "
                          f"{server.listen!r} as a Twisted endpoint ({exc})") from None
    if settings.tls.ca_certificates:
        require_client_certificates(endpoint, settings)
    listener = StreamServerEndpointService(endpoint, factory)
    listener.setName("dicom")
    listener._raiseSynchronously = True
    listener.setServiceParent(top)
    top.factory = factory  # type: ignore[attr-defined]
    top.store = store  # type: ignore[attr-defined]
    top.index = index  # type: ignore[attr-defined]
    top.journal = journal  # type: ignore[attr-defined]
    top.connection = connection  # type: ignore[attr-defined]
    top.embedded = embedded  # type: ignore[attr-defined]
    log.info("sdcc {summary}", summary=" ".join(
        f"{k}={v}" for k, v in settings_summary(settings).items()))
    return top
