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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from sdcc_twisted.core.conformance import DEFAULT_MAX_PDU_LENGTH

T = TypeVar("T")

#: Accepted range for the Maximum Length we propose (PS3.8 D.1; never 0).
MIN_PDU_LENGTH: Final = 4096
MAX_PDU_LENGTH: Final = 4 * 1024 * 1024


class ConfigError(Exception):
    """The configuration cannot be used; the message names section and key."""


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
    max_connections: int = 256


@dataclass(frozen=True)
class TLSSettings:
    """``[tls]``: client certificates for an ``ssl:`` listener."""

    ca_certificates: str = ""
    require_client_certificate: bool = True


@dataclass(frozen=True)
class StorageSettings:
    """``[storage]``: where images go and how durably."""

    root: str = ""
    fsync: bool = True
    max_head_bytes: int = 1 << 20
    retention_days: float = 0.0


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

    @property
    def storage_root(self) -> str:
        """``[storage] root``, defaulting to ``{data_dir}/store``."""
        return self.storage.root or os.path.join(self.server.data_dir, "store")


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
        "max_connections"}),
    "storage": frozenset({"root", "fsync", "max_head_bytes", "retention_days"}),
    "tls": frozenset({"ca_certificates", "require_client_certificate"}),
    "index": frozenset({"redis", "redis_server", "key_prefix", "timeout", "lock"}),
    "logging": frozenset({"level", "file", "format"}),
    "query": frozenset({"enabled", "allowed_calling_ae_titles", "timeout"}),
    "http": frozenset({"listen", "token_file", "show_patient_data"}),
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
        if section == "move_destinations":
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
        max_connections=r.integer("server", "max_connections", ds.max_connections, 1, 100000),
    )
    storage = StorageSettings(
        root=where(r.text("storage", "root", dst.root)),
        fsync=r.boolean("storage", "fsync", dst.fsync),
        max_head_bytes=r.integer("storage", "max_head_bytes", dst.max_head_bytes, 1024, 64 << 20),
        retention_days=r.get("storage", "retention_days", dst.retention_days, days,
                             "a number of days above 0, or 0 to keep everything"),
    )
    index = IndexSettings(
        redis=r.get("index", "redis", di.redis, redis_url,
                    "'embedded', a redis://host:port/db URL or a unix:///path URL"),
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
    return Settings(server, storage, index, logging, source, tls, destinations, query, http)


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
    }
