"""The INI configuration: read, validate, freeze.

One file, read with :mod:`configparser` without interpolation.  Every error
names the file, the section and the key, so a person can fix it at once.
Relative paths in a file are taken from the file's own folder, so the
server and ``sdcc-admin`` find the same places from any working directory.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import shlex
import socket
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from sdcc_twisted.core.conformance import DEFAULT_MAX_PDU_LENGTH

T = TypeVar("T")

#: Accepted range for the Maximum Length we propose (PS3.8 D.1; never 0).
MIN_PDU_LENGTH: Final = 4096
MAX_PDU_LENGTH: Final = 4 * 1024 * 1024


class ConfigError(Exception):
    """The configuration cannot be used; the message names section and key."""


#: Most ``[server] workers`` (reactor processes on one host).
MAX_WORKERS: Final = 256

#: ``[server] node_id``: one safe path part (it names this node's folders).
_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def valid_node_id(value: str) -> bool:
    """Whether ``value`` can name a node's folders: 1-64 letters, digits,
    ``.``, ``_`` or ``-``, starting with a letter or digit."""
    return bool(_NODE_ID_RE.match(value))


def default_node_id() -> str:
    """The host name, made a safe path part (``[server] node_id`` default)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:64]
    return name or "node"


#: Seconds of the ARTIM timer (PS3.8 9.1.5): waiting for the A-ASSOCIATE-RQ,
#: for the peer to close, and for each step of a C-MOVE sub-association.
DEFAULT_ARTIM_TIMEOUT: Final = 30.0
#: Seconds an established association may stay silent.
DEFAULT_IDLE_TIMEOUT: Final = 300.0


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: the listening AE and its association limits."""

    ae_title: str = "SDCC"
    listen: str = "tcp:11112"
    data_dir: str = "var/sdcc"
    max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH
    max_associations: int = 64
    require_called_ae_title: bool = False
    allowed_calling_ae_titles: frozenset[str] | None = None
    artim_timeout: float = DEFAULT_ARTIM_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_command_length: int = 64 * 1024
    max_connections_per_address: int = 32
    #: Seconds open associations may go on once the server was told to stop.
    stop_grace: float = 30.0
    node_id: str = field(default_factory=default_node_id)
    workers: int = 1
    max_connections: int = 256


@dataclass(frozen=True)
class TLSSettings:
    """``[tls]``: client certificates for an ``ssl:`` listener."""

    ca_certificates: str = ""
    require_client_certificate: bool = True


@dataclass(frozen=True)
class SpaceFloor:
    """``[storage] min_free_space``: bytes, or a percentage of the volume."""

    amount: float = 2.0
    percent: bool = True

    def bytes_of(self, total: int) -> int:
        """The floor in bytes on a volume of ``total`` bytes."""
        return int(total * self.amount / 100) if self.percent else int(self.amount)

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.percent else f"{int(self.amount)} bytes"


@dataclass(frozen=True)
class StorageSettings:
    """``[storage]``: where images go, how durably, and who may read them."""

    root: str = ""
    fsync: bool = True
    max_head_bytes: int = 1 << 20
    retention_days: float = 0.0
    min_free_space: SpaceFloor = field(default_factory=SpaceFloor)
    file_mode: int = 0o600
    dir_mode: int = 0o700


@dataclass(frozen=True)
class IndexSettings:
    """``[index]``: the Redis index."""

    redis: str = "embedded"
    redis_server: str = ""
    key_prefix: str = "sdcc:"
    timeout: float = 2.0
    lock: str = "auto"


@dataclass(frozen=True)
class QuerySettings:
    """``[query]``: who may use Query/Retrieve (C-FIND, C-MOVE, C-GET)."""

    enabled: bool = True
    allowed_calling_ae_titles: frozenset[str] | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class RetrieveSettings:
    """``[retrieve]``: sending instances for C-MOVE and C-GET."""

    #: The largest decoded Pixel Data an instance is decoded to, for a peer
    #: that accepts its class only uncompressed (default 512 MiB).
    max_decode_bytes: int = 512 << 20


@dataclass(frozen=True)
class StudySettings:
    """``[studies]``: when a study counts as complete."""

    #: Seconds without a new instance after which a study is complete
    #: (0: never; no arrivals are noted).
    quiet_seconds: float = 60.0


#: The placeholders of an ``on_instance`` hook (and its JSON document's fields).
INSTANCE_HOOK_FIELDS: Final = ("path", "sop_instance_uid", "sop_class_uid", "transfer_syntax",
                               "study_uid", "series_uid", "calling_ae", "study_folder")
#: The placeholders of an ``on_study_complete`` hook (and its JSON fields).
STUDY_HOOK_FIELDS: Final = ("study_uid", "study_folder", "count")


@dataclass(frozen=True)
class HookSettings:
    """``[hooks]``: commands (argv templates, no shell) and URLs (a JSON POST)
    run after an instance is stored and after a study is complete."""

    on_instance: tuple[str, ...] = ()
    on_study_complete: tuple[str, ...] = ()
    on_instance_url: str = ""
    on_study_complete_url: str = ""
    timeout: float = 300.0
    max_running: int = 2
    url_attempts: int = 5
    url_first_delay: float = 1.0


@dataclass(frozen=True)
class LoggingSettings:
    """``[logging]``: where the log goes and how much of it."""

    level: str = "info"
    file: str = ""
    format: str = "text"


#: ``[http] listen`` by default: the operations surface on loopback only.
DEFAULT_HTTP_LISTEN: Final = "tcp:8080:interface=127.0.0.1"


@dataclass(frozen=True)
class HTTPSettings:
    """``[http]``: metrics, health checks and the status page."""

    listen: str = DEFAULT_HTTP_LISTEN
    token_file: str = ""
    show_patient_data: bool = False


@dataclass(frozen=True)
class MoveDestination:
    """One ``[move_destinations]`` entry: ``AE = host:port`` (``tls`` after)."""

    ae_title: str
    host: str
    port: int
    tls: bool = False


@dataclass(frozen=True)
class ForwardRule:
    """One ``[forward_rules]`` entry: ``name = DEST [per=instance|study]
    [calling=AE,...] [modality=CT,...] [sop_class=UID,...]``; an empty
    filter matches anything."""

    name: str
    destination: str
    per_study: bool = False
    calling_aes: frozenset[str] = frozenset()
    modalities: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()

    def matches(self, calling_ae: str, modality: str, sop_class_uid: str) -> bool:
        """Whether an instance from ``calling_ae`` of that modality and
        class goes to :attr:`destination` by this rule."""
        return ((not self.calling_aes or calling_ae in self.calling_aes)
                and (not self.modalities or modality in self.modalities)
                and (not self.sop_classes or sop_class_uid in self.sop_classes))


@dataclass(frozen=True)
class ForwardSettings:
    """``[forward]``: retries of the forwarding queue."""

    retry_first_delay: float = 10.0
    retry_max_delay: float = 600.0
    max_attempts: int = 50
    batch: int = 100
    check_interval: float = 5.0


@dataclass(frozen=True)
class Settings:
    """The whole configuration."""

    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: str = "<defaults>"
    tls: TLSSettings = field(default_factory=TLSSettings)
    move_destinations: dict[str, MoveDestination] = field(default_factory=dict)
    query: QuerySettings = field(default_factory=QuerySettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    retrieve: RetrieveSettings = field(default_factory=RetrieveSettings)
    studies: StudySettings = field(default_factory=StudySettings)
    hooks: HookSettings = field(default_factory=HookSettings)
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    forward_rules: tuple[ForwardRule, ...] = ()

    @property
    def storage_root(self) -> str:
        """``[storage] root``, defaulting to ``{data_dir}/store``."""
        return self.storage.root or os.path.join(self.server.data_dir, "store")


#: ``[index] redis`` for a Sentinel-monitored primary.
SENTINEL_SCHEME: Final = "redis+sentinel"


@dataclass(frozen=True)
class SentinelTarget:
    """``redis+sentinel://[:password@]host:port[,host:port...]/service?db=N``.

    Attributes:
        sentinels: the Sentinels' (host, port) addresses.
        service: the monitored primary's name (``sentinel monitor NAME``).
        db: the database number.
        password: the primary's (and replicas') password, or None.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Split a ``redis+sentinel://`` URL.

    Raises:
        ValueError: a part is missing or not a number where one is needed.
    """
    scheme, _, rest = url.partition("://")
    if scheme != SENTINEL_SCHEME or not rest:
        raise ValueError(url)
    # urlsplit reads one host:port only: split the list by hand
    authority, _, tail = rest.partition("/")
    password = None
    if "@" in authority:
        credentials, _, authority = authority.rpartition("@")
        password = unquote(credentials.partition(":")[2]) or None
    sentinels = []
    for address in authority.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(url)
        sentinels.append((host.strip("[]"), int(port)))
    parts = urlsplit("x://h/" + tail)
    service = unquote(parts.path.strip("/"))
    db_text = parse_qs(parts.query).get("db", ["0"])[0]
    if not service or "/" in service or not db_text.isdigit():
        raise ValueError(url)
    return SentinelTarget(tuple(sentinels), service, int(db_text), password)


LOG_LEVELS: Final = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS: Final = ("text", "json")
LOCK_KINDS: Final = ("auto", "memory", "redis")

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def valid_ae_title(value: str) -> bool:
    """PS3.5 6.2 (AE): 1-16 characters of the default repertoire, no backslash
    and no control characters, not only spaces."""
    return (0 < len(value) <= 16 and value.strip() != ""
            and all(32 <= ord(c) < 127 and c != "\\" for c in value))


class _Reader:
    """Typed access to one parsed file, with errors that name section and key."""

    def __init__(self, parser: configparser.ConfigParser, source: str) -> None:
        self.parser = parser
        self.source = source

    def fail(self, section: str, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: [{section}] {key}: {message}")

    def get(self, section: str, key: str, default: T,
            convert: Callable[[str], T], expect: str) -> T:
        if not self.parser.has_option(section, key):
            return default
        raw = self.parser.get(section, key).strip()
        try:
            return convert(raw)
        except (ValueError, TypeError):
            raise self.fail(section, key, f"expected {expect}, got {raw!r}") from None

    def boolean(self, section: str, key: str, default: bool) -> bool:
        def convert(raw: str) -> bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError(raw)
        return self.get(section, key, default, convert, "yes or no")

    def integer(self, section: str, key: str, default: int, low: int, high: int) -> int:
        def convert(raw: str) -> int:
            value = int(raw)
            if not low <= value <= high:
                raise ValueError(raw)
            return value
        return self.get(section, key, default, convert,
                        f"a whole number from {low} to {high}")

    def seconds(self, section: str, key: str, default: float, low: float = 0.1) -> float:
        def convert(raw: str) -> float:
            value = float(raw)
            if not low <= value <= 86400 * 7:
                raise ValueError(raw)
            return value
        return self.get(section, key, default, convert,
                        f"a number of seconds from {low} to 604800")

    def choice(self, section: str, key: str, default: str, choices: tuple[str, ...]) -> str:
        def convert(raw: str) -> str:
            if raw.lower() not in choices:
                raise ValueError(raw)
            return raw.lower()
        return self.get(section, key, default, convert, "one of " + ", ".join(choices))

    def text(self, section: str, key: str, default: str) -> str:
        return self.get(section, key, default, str, "text")


_KNOWN: Final[dict[str, frozenset[str]]] = {
    "server": frozenset({
        "ae_title", "listen", "data_dir", "max_pdu_length", "max_associations",
        "require_called_ae_title", "allowed_calling_ae_titles", "artim_timeout",
        "idle_timeout", "max_command_length", "max_connections_per_address",
        "stop_grace", "node_id", "workers", "max_connections"}),
    "storage": frozenset({"root", "fsync", "max_head_bytes", "retention_days",
                          "min_free_space", "file_mode", "dir_mode"}),
    "tls": frozenset({"ca_certificates", "require_client_certificate"}),
    "index": frozenset({"redis", "redis_server", "key_prefix", "timeout", "lock"}),
    "logging": frozenset({"level", "file", "format"}),
    "query": frozenset({"enabled", "allowed_calling_ae_titles", "timeout"}),
    "http": frozenset({"listen", "token_file", "show_patient_data"}),
    "retrieve": frozenset({"max_decode_bytes"}),
    "studies": frozenset({"quiet_seconds"}),
    "forward": frozenset({"retry_first_delay", "retry_max_delay", "max_attempts", "batch",
                          "check_interval"}),
    "hooks": frozenset({"on_instance", "on_study_complete", "on_instance_url",
                        "on_study_complete_url", "timeout", "max_running", "url_attempts",
                        "url_first_delay"}),
}


def endpoint_fields(description: str) -> tuple[list[str], dict[str, str]]:
    """Split a Twisted endpoint string into its positional and keyword
    fields (``:`` separates them, ``\\:`` is a literal colon)."""
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in re.split(r"(?<!\\):", description):
        part = part.replace("\\:", ":")
        name, equals, value = part.partition("=")
        if equals:
            kwargs[name] = value
        else:
            args.append(part)
    return args, kwargs


def endpoint_is_local(description: str) -> bool:
    """Whether a server endpoint string listens on loopback only (a TCP or
    SSL port bound to a loopback ``interface``, or a unix socket)."""
    args, kwargs = endpoint_fields(description)
    kind = args[0].lower() if args else ""
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    try:
        return ipaddress.ip_address(kwargs.get("interface", "")).is_loopback
    except ValueError:
        return False


def parse_settings(text: str, source: str = "<string>",
                   base_dir: str | None = None) -> Settings:
    """Parse INI text into :class:`Settings`.

    Args:
        base_dir: relative paths (``data_dir``, ``root``, ``file``,
            ``ca_certificates``, ``redis_server`` with a slash) are taken
            from this folder: the configuration file's
            (:func:`load_settings`); None leaves them relative to the
            working directory.

    Raises:
        ConfigError: naming the file, section and key at fault.
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # AE titles keep their case
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(f"{source}: {exc}".replace("\n", " ")) from None
    for section in parser.sections():
        if section in ("move_destinations", "forward_rules"):
            continue
        if section not in _KNOWN:
            raise ConfigError(f"{source}: [{section}]: unknown section "
                              f"(known: {', '.join(sorted(_KNOWN))})")
        for key in parser.options(section):
            if key not in _KNOWN[section]:
                raise ConfigError(f"{source}: [{section}] {key}: unknown key "
                                  f"(known: {', '.join(sorted(_KNOWN[section]))})")
    r = _Reader(parser, source)

    def where(path: str) -> str:
        if not path or base_dir is None or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(base_dir, path))

    def program(name: str) -> str:
        """A bare name is looked up on PATH; a relative path is a path."""
        return where(name) if os.sep in name else name

    def ae_title(raw: str) -> str:
        if not valid_ae_title(raw):
            raise ValueError(raw)
        return raw.strip()

    def ae_list(raw: str) -> frozenset[str] | None:
        titles = [t.strip() for t in raw.replace("\n", ",").split(",") if t.strip()]
        if not titles:
            return None
        for entry in titles:
            title, _, address = entry.partition("@")
            if not valid_ae_title(title.strip()) or ("@" in entry and not address.strip()):
                raise ValueError(raw)
        return frozenset(titles)

    def node_id(raw: str) -> str:
        if not valid_node_id(raw):
            raise ValueError(raw)
        return raw

    def workers(raw: str) -> int:
        value = (os.cpu_count() or 1) if raw.lower() == "auto" else int(raw)
        if not 1 <= value <= MAX_WORKERS:
            raise ValueError(raw)
        return value

    def listen(raw: str) -> str:
        if not raw or ":" not in raw:
            raise ValueError(raw)
        return raw

    def days(raw: str) -> float:
        value = float(raw or 0)
        if not 0 <= value <= 36500:
            raise ValueError(raw)
        return value

    def redis_url(raw: str) -> str:
        if raw.lower() == "embedded":
            return "embedded"
        if raw.startswith(SENTINEL_SCHEME + "://"):
            parse_sentinel_url(raw)
            return raw
        if not raw.startswith(("redis://", "unix://")):
            raise ValueError(raw)
        return raw

    # Every default comes from the settings classes (one place).
    ds, dst, di, dl, dq, dt = (ServerSettings(), StorageSettings(), IndexSettings(),
                               LoggingSettings(), QuerySettings(), TLSSettings())
    ae_list_expect = ("a comma-separated list of AE titles, each optionally AE@address "
                      "(empty: any)")
    server = ServerSettings(
        ae_title=r.get("server", "ae_title", ds.ae_title, ae_title,
                       "1 to 16 printable characters without backslash"),
        listen=r.get("server", "listen", ds.listen, listen,
                     "a Twisted endpoint string such as tcp:11112"),
        data_dir=where(r.text("server", "data_dir", ds.data_dir) or ds.data_dir),
        max_pdu_length=r.integer("server", "max_pdu_length", ds.max_pdu_length,
                                 MIN_PDU_LENGTH, MAX_PDU_LENGTH),
        max_associations=r.integer("server", "max_associations", ds.max_associations, 1, 100000),
        require_called_ae_title=r.boolean("server", "require_called_ae_title", ds.require_called_ae_title),
        allowed_calling_ae_titles=r.get(
            "server", "allowed_calling_ae_titles", ds.allowed_calling_ae_titles, ae_list,
            ae_list_expect),
        artim_timeout=r.seconds("server", "artim_timeout", ds.artim_timeout),
        idle_timeout=r.seconds("server", "idle_timeout", ds.idle_timeout),
        max_command_length=r.integer("server", "max_command_length", ds.max_command_length,
                                     1024, 16 * 1024 * 1024),
        max_connections_per_address=r.integer("server", "max_connections_per_address",
                                              ds.max_connections_per_address, 1, 100000),
        stop_grace=r.seconds("server", "stop_grace", ds.stop_grace, low=0.0),
        node_id=r.get("server", "node_id", ds.node_id, node_id,
                      "1 to 64 letters, digits, '.', '_' or '-', starting with a "
                      "letter or digit"),
        workers=r.get("server", "workers", ds.workers, workers,
                      f"a whole number from 1 to {MAX_WORKERS}, or auto (the cores)"),
        max_connections=r.integer("server", "max_connections", ds.max_connections, 1, 100000),
    )
    def space_floor(raw: str) -> SpaceFloor:
        if raw.endswith("%"):
            percent = float(raw[:-1])
            if not 0 <= percent < 100:
                raise ValueError(raw)
            return SpaceFloor(percent, True)
        amount = int(raw)
        if amount < 0:
            raise ValueError(raw)
        return SpaceFloor(amount, False)

    def mode(allowed: int) -> Callable[[str], int]:
        def convert(raw: str) -> int:
            value = int(raw, 8)
            owner = allowed & 0o700
            if value & ~allowed or value & owner != owner:
                raise ValueError(raw)
            return value
        return convert

    storage = StorageSettings(
        root=where(r.text("storage", "root", dst.root)),
        fsync=r.boolean("storage", "fsync", dst.fsync),
        max_head_bytes=r.integer("storage", "max_head_bytes", dst.max_head_bytes, 1024, 64 << 20),
        retention_days=r.get("storage", "retention_days", dst.retention_days, days,
                             "a number of days above 0, or 0 to keep everything"),
        min_free_space=r.get("storage", "min_free_space", dst.min_free_space, space_floor,
                             "a number of bytes or a percentage below 100 (2%)"),
        file_mode=r.get("storage", "file_mode", dst.file_mode, mode(0o660),
                        "an octal mode from 600 to 660 (owner read-write, "
                        "group at most read-write, nothing for others)"),
        dir_mode=r.get("storage", "dir_mode", dst.dir_mode, mode(0o770),
                       "an octal mode from 700 to 770 (owner rwx, group at most "
                       "rwx, nothing for others)"),
    )
    index = IndexSettings(
        redis=r.get("index", "redis", di.redis, redis_url,
                    "'embedded', a redis://host:port/db URL, a unix:///path URL or "
                    "redis+sentinel://host:port[,host:port...]/service?db=0"),
        redis_server=program(r.text("index", "redis_server", di.redis_server)),
        key_prefix=r.text("index", "key_prefix", di.key_prefix),
        timeout=r.seconds("index", "timeout", di.timeout, low=0.01),
        lock=r.choice("index", "lock", di.lock, LOCK_KINDS),
    )
    logging = LoggingSettings(
        level=r.choice("logging", "level", dl.level, LOG_LEVELS),
        file=where(r.text("logging", "file", dl.file)),
        format=r.choice("logging", "format", dl.format, LOG_FORMATS),
    )
    query = QuerySettings(
        enabled=r.boolean("query", "enabled", dq.enabled),
        allowed_calling_ae_titles=r.get(
            "query", "allowed_calling_ae_titles", dq.allowed_calling_ae_titles, ae_list,
            ae_list_expect),
        timeout=r.seconds("query", "timeout", dq.timeout),
    )
    if logging.format == "json" and not logging.file:
        raise r.fail("logging", "format", "json needs [logging] file (the file "
                     "the JSON lines go to)")
    tls = TLSSettings(
        ca_certificates=where(r.text("tls", "ca_certificates", dt.ca_certificates)),
        require_client_certificate=r.boolean("tls", "require_client_certificate",
                                             dt.require_client_certificate),
    )
    if server.workers > 1 and not server.listen.startswith("tcp:"):
        raise r.fail("server", "workers", "several workers share a tcp: listener; "
                     f"[server] listen is {server.listen!r}")
    if server.workers > 1 and index.lock == "memory":
        raise r.fail("index", "lock", "memory holds one association per AE in one "
                     "process only; with [server] workers > 1 use redis or auto")
    if tls.ca_certificates and not server.listen.startswith("ssl:"):
        raise r.fail("tls", "ca_certificates",
                     "client certificates need an ssl: endpoint in [server] listen")
    dh = HTTPSettings()
    http = HTTPSettings(
        listen=r.text("http", "listen", dh.listen),
        token_file=where(r.text("http", "token_file", dh.token_file)),
        show_patient_data=r.boolean("http", "show_patient_data", dh.show_patient_data),
    )
    if http.listen and ":" not in http.listen:
        raise r.fail("http", "listen", f"expected a Twisted endpoint string such as "
                     f"{DEFAULT_HTTP_LISTEN}, or nothing to turn it off; got {http.listen!r}")
    client_certificates = (endpoint_fields(http.listen)[0][:1] == ["ssl"]
                           and bool(tls.ca_certificates) and tls.require_client_certificate)
    if (http.listen and not endpoint_is_local(http.listen) and not http.token_file
            and not client_certificates):
        raise r.fail("http", "listen", f"{http.listen!r} is not loopback-only: set "
                     "[http] token_file (a bearer token), or listen on ssl: with "
                     "[tls] ca_certificates so that clients need a certificate")
    destinations: dict[str, MoveDestination] = {}
    if parser.has_section("move_destinations"):
        for title in parser.options("move_destinations"):
            raw = parser.get("move_destinations", title).strip()
            words = raw.split()
            host, _, port_text = (words[0] if words else "").rpartition(":")
            tls_flag = words[1:] == ["tls"]
            if (not valid_ae_title(title) or not host or not port_text.isdigit()
                    or not 0 < int(port_text) < 65536 or (len(words) > 1 and not tls_flag)):
                raise r.fail("move_destinations", title,
                             f"expected AE_TITLE = host:port [tls], got {raw!r}")
            destinations[title.strip()] = MoveDestination(title.strip(), host.strip("[]"),
                                                          int(port_text), tls_flag)
    dr = RetrieveSettings()
    retrieve = RetrieveSettings(
        max_decode_bytes=r.integer("retrieve", "max_decode_bytes", dr.max_decode_bytes,
                                   0, 1 << 40),
    )
    quiet = r.get("studies", "quiet_seconds", StudySettings().quiet_seconds, _quiet,
                  "0 (off) or a number of seconds from 0.1 to 604800")
    dk = HookSettings()

    def command(fields: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
        def convert(raw: str) -> tuple[str, ...]:
            argv = tuple(shlex.split(raw))
            names = {name for arg in argv for _, name, _, _ in string.Formatter().parse(arg)
                     if name is not None}
            if not names <= set(fields):
                raise ValueError(raw)
            return (program(argv[0]), *argv[1:]) if argv else ()
        return convert

    def url(raw: str) -> str:
        if raw and not raw.startswith(("http://", "https://")):
            raise ValueError(raw)
        return raw

    hooks = HookSettings(
        on_instance=r.get("hooks", "on_instance", dk.on_instance,
                          command(INSTANCE_HOOK_FIELDS),
                          "a command line (no shell) whose {placeholders} are among "
                          + ", ".join(INSTANCE_HOOK_FIELDS)),
        on_study_complete=r.get("hooks", "on_study_complete", dk.on_study_complete,
                                command(STUDY_HOOK_FIELDS),
                                "a command line (no shell) whose {placeholders} are among "
                                + ", ".join(STUDY_HOOK_FIELDS)),
        on_instance_url=r.get("hooks", "on_instance_url", dk.on_instance_url, url,
                              "an http:// or https:// URL"),
        on_study_complete_url=r.get("hooks", "on_study_complete_url",
                                    dk.on_study_complete_url, url, "an http:// or https:// URL"),
        timeout=r.seconds("hooks", "timeout", dk.timeout),
        max_running=r.integer("hooks", "max_running", dk.max_running, 1, 1000),
        url_attempts=r.integer("hooks", "url_attempts", dk.url_attempts, 1, 100),
        url_first_delay=r.seconds("hooks", "url_first_delay", dk.url_first_delay, low=0.01),
    )
    if (hooks.on_study_complete or hooks.on_study_complete_url) and not quiet:
        raise r.fail("hooks", "on_study_complete" if hooks.on_study_complete
                     else "on_study_complete_url",
                     "needs [studies] quiet_seconds above 0")
    df = ForwardSettings()
    forward = ForwardSettings(
        retry_first_delay=r.seconds("forward", "retry_first_delay", df.retry_first_delay,
                                    low=0.01),
        retry_max_delay=r.seconds("forward", "retry_max_delay", df.retry_max_delay, low=0.01),
        max_attempts=r.integer("forward", "max_attempts", df.max_attempts, 1, 100000),
        batch=r.integer("forward", "batch", df.batch, 1, 10000),
        check_interval=r.seconds("forward", "check_interval", df.check_interval, low=0.01),
    )
    rules = []
    if parser.has_section("forward_rules"):
        for name in parser.options("forward_rules"):
            raw = parser.get("forward_rules", name).strip()
            rule = _forward_rule(name, raw)
            if rule is None:
                raise r.fail("forward_rules", name, "expected DEST_AE [per=instance|study] "
                             f"[calling=AE,...] [modality=CT,...] [sop_class=UID,...], got {raw!r}")
            if rule.destination not in destinations:
                raise r.fail("forward_rules", name, f"{rule.destination} is not in "
                             "[move_destinations] (where its host and port are)")
            if rule.per_study and not quiet:
                raise r.fail("forward_rules", name, "per=study needs [studies] "
                             "quiet_seconds above 0")
            rules.append(rule)
    return Settings(server, storage, index, logging, source, tls, destinations, query, http,
                    retrieve, StudySettings(quiet), hooks, forward, tuple(rules))


def _forward_rule(name: str, raw: str) -> ForwardRule | None:
    """A ``[forward_rules]`` value, or None when it is not one."""
    words = raw.split()
    if not words or not valid_ae_title(words[0]) or "=" in words[0]:
        return None
    filters: dict[str, str] = {}
    for word in words[1:]:
        key, equals, value = word.partition("=")
        if not equals or key not in ("per", "calling", "modality", "sop_class") \
                or key in filters or not value:
            return None
        filters[key] = value
    if filters.get("per", "instance") not in ("instance", "study"):
        return None

    def listed(key: str) -> frozenset[str]:
        return frozenset(v for v in filters.get(key, "").split(",") if v)
    return ForwardRule(name, words[0], filters.get("per") == "study", listed("calling"),
                       listed("modality"), listed("sop_class"))


def _quiet(raw: str) -> float:
    value = float(raw)
    if value != 0 and not 0.1 <= value <= 86400 * 7:
        raise ValueError(raw)
    return value


def load_settings(path: str) -> Settings:
    """Read and validate the INI file at ``path``.

    Raises:
        ConfigError: the file cannot be read, or a value is wrong.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: "
                          f"{exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return parse_settings(text, path, os.path.dirname(os.path.abspath(path)))


def settings_summary(settings: Settings) -> dict[str, Any]:
    """The settings as a flat dict, for the startup log line."""
    s = settings.server
    return {
        "ae_title": s.ae_title, "listen": s.listen, "max_pdu_length": s.max_pdu_length,
        "max_associations": s.max_associations, "storage_root": settings.storage_root,
        "fsync": settings.storage.fsync, "redis": settings.index.redis,
        "query_retrieve": ("off" if not settings.query.enabled
                           else ",".join(sorted(settings.query.allowed_calling_ae_titles))
                           if settings.query.allowed_calling_ae_titles else "any AE"),
        "node_id": s.node_id, "workers": s.workers,
    }
