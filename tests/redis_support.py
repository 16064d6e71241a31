"""A real redis-server for the tests, on a unix socket in a temp directory.

``start_redis(self)`` in a trial test starts one (``--port 0 --save ""
--appendonly no``), waits until it answers PING and registers its stop as a
cleanup.  ``server.stop()`` / ``server.start()`` take it down and bring it back
on the same socket, for the "Redis is down" tests.  Without redis-server the
test is skipped, except under CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

#: How long a redis-server may take to answer PING after it was started.
START_TIMEOUT = 10.0


def redis_server_path() -> str | None:
    """The redis-server of PATH, or None."""
    return shutil.which("redis-server")


def ping(socket_path: str, timeout: float = 0.5) -> bool:
    """Whether a Redis on ``socket_path`` answers PING with PONG."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(socket_path)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server child process on a fixed unix socket."""

    def __init__(self, executable: str, directory: str) -> None:
        self.executable = executable
        self.directory = directory
        self.socket_path = os.path.join(directory, "redis.sock")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return "unix://" + self.socket_path

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Start the server (again) and wait until it answers PING."""
        if self.process is not None:
            raise RuntimeError("redis-server is already running")
        log = open(os.path.join(self.directory, "redis.log"), "ab")
        with log:
            self.process = subprocess.Popen(
                [self.executable, "--port", "0",
                 "--unixsocket", self.socket_path, "--unixsocketperm", "700",
                 "--dir", self.directory, "--save", "", "--appendonly", "no",
                 "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see "
                                   f"{self.directory}/redis.log")
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM the server by PID and wait for it (SIGKILL after 5 s)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()

    def client(self) -> Any:
        """A synchronous redis-py client, for assertions."""
        import redis
        return redis.Redis(unix_socket_path=self.socket_path,
                           decode_responses=True, socket_timeout=5)


def require_redis_server(testcase: unittest.TestCase) -> str:
    """The redis-server path; skip (or fail under CI) when there is none."""
    path = redis_server_path()
    if path is None:
        reason = "redis-server is not on PATH (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            testcase.fail(reason + "; under CI=true this is a failure")
        raise unittest.SkipTest(reason)
    return path


def start_redis(testcase: unittest.TestCase) -> RedisServer:
    """A running server, stopped and deleted in the test's cleanup."""
    executable = require_redis_server(testcase)
    directory = tempfile.mkdtemp(prefix="sdcc-test-redis-")
    testcase.addCleanup(shutil.rmtree, directory, True)
    server = RedisServer(executable, directory)
    testcase.addCleanup(server.stop)
    server.start()
    return server


def connect(testcase: unittest.TestCase, server: RedisServer,
            poolsize: int = 2) -> Any:
    """A txredisapi pool on ``server`` that reconnects fast; closed in cleanup."""
    from twisted.internet import reactor

    from sdcc_twisted.storage.index import connect_redis

    handler = connect_redis(server.url, reactor, poolsize=poolsize,
                            connect_timeout=1.0, max_retry_delay=0.1)
    handler.factory.initialDelay = 0.02
    testcase.addCleanup(handler.disconnect)
    return handler


async def wait_connected(handler: Any, timeout: float = 10.0) -> None:
    """Wait until ``handler`` answers PING (after a restart)."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while True:
        d = handler.ping()
        d.addTimeout(0.5, reactor)
        try:
            await d
            return
        except Exception:
            if reactor.seconds() > deadline:
                raise
        await task.deferLater(reactor, 0.02, lambda: None)


def sleep(seconds: float) -> defer.Deferred[None]:
    """A Deferred that fires after ``seconds`` of real time."""
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


async def wait_for(predicate: Any, timeout: float, what: str,
                   interval: float = 0.02) -> float:
    """Poll ``predicate`` on the reactor thread until true; seconds taken."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await sleep(interval)
    return time.monotonic() - started
