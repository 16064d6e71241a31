"""The real server for interop tests: in-process on the trial reactor, or as a
``twistd sdcc`` child process; both on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, reactor, threads, utils
from twisted.trial import unittest

from sdcc_twisted.config import parse_settings
from sdcc_twisted.service import build_service

from .redis_support import RedisServer, start_redis
from .support import require_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: DCMTK 3.6.7 leaves Nagle on unless this is set (architecture.md, Testing).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ini_text(data_dir: str, redis_url: str, port: int = 0, **sections: dict[str, Any]) -> str:
    """An INI file for a test server; ``sections`` override keys."""
    values: dict[str, dict[str, Any]] = {
        "server": {"listen": f"tcp:{port}:interface=127.0.0.1", "data_dir": data_dir,
                   "ae_title": "SDCC"},
        "storage": {"fsync": "no"},
        "index": {"redis": redis_url, "timeout": "1"},
        "http": {"listen": ""},
    }
    for name, keys in sections.items():
        values.setdefault(name, {}).update(keys)
    return "\n".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                     for name, keys in values.items())


class InProcessServer:
    """``build_service`` on the trial reactor, listening on a free port."""

    def __init__(self, service: Any, data_dir: str, redis: RedisServer | None) -> None:
        self.service = service
        self.data_dir = data_dir
        self.redis = redis
        self.port = 0

    @property
    def root(self) -> str:
        """The storage root."""
        return self.service.store.root


async def start_server(testcase: unittest.TestCase, redis: RedisServer | None = None,
                       embedded: bool = False, space_report: Any = None,
                       **sections: dict[str, Any]) -> InProcessServer:
    """Start a server in this process; stopped in the test's cleanup."""
    data_dir = os.path.abspath(testcase.mktemp())
    if embedded:
        url = "embedded"
    else:
        redis = redis or start_redis(testcase)
        url = redis.url
    settings = parse_settings(ini_text(data_dir, url, **sections), "test.ini")
    top = build_service(settings, reactor, space_report=space_report)
    server = InProcessServer(top, data_dir, redis)
    top.startService()
    testcase.addCleanup(top.stopService)
    listening = await top.listener.when_listening()
    server.port = listening.getHost().port
    if embedded:
        await top.embedded.ready
    await top.connection.connected
    return server


async def dcmtk(testcase: unittest.TestCase, tool: str, *args: str,
                timeout: float = 120) -> tuple[str, int]:
    """Run a DCMTK tool without blocking the reactor; return (output, exit code)."""
    path = require_tool(testcase, tool)
    d = utils.getProcessOutputAndValue(path, list(args), env=DCMTK_ENV)
    d.addTimeout(timeout, reactor)
    out, err, code = await d
    return (out + err).decode("utf-8", "replace"), code


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> "defer.Deferred[Any]":
    """Run a blocking peer (pynetdicom) off the reactor thread."""
    return threads.deferToThread(fn, *args, **kwargs)


def twistd_command(ini: str) -> list[str]:
    """``twistd -n sdcc --config ini`` with this interpreter (run it with
    ``cwd=REPO`` and :func:`twistd_env`)."""
    return [sys.executable, "-c",
            "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
            "-n", "--pidfile=", "sdcc", "--config", ini]


def twistd_env() -> dict[str, str]:
    """The environment for :func:`twistd_command`: the working tree first."""
    return {**os.environ, "PYTHONPATH": REPO}


def limit_descriptors(nofile: int) -> Any:
    """A ``preexec_fn`` that sets the child's RLIMIT_NOFILE, soft and hard,
    to ``nofile`` (``ulimit -n nofile`` in a shell)."""
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return preexec


class TwistdServer:
    """``twistd -n sdcc --config FILE`` as a child (``nofile``: its RLIMIT_NOFILE)."""

    def __init__(self, testcase: unittest.TestCase, ini: str,
                 nofile: int | None = None) -> None:
        self.testcase = testcase
        self.ini = ini
        self.nofile = nofile
        self.log_path = ini + ".log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int, timeout: float = 20) -> None:
        """Start it and wait until ``port`` accepts connections."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                twistd_command(self.ini), cwd=REPO, env=twistd_env(), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=limit_descriptors(self.nofile) if self.nofile else None)
        self.testcase.addCleanup(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"twistd did not start; log:\n{self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        """What the server logged so far."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the server (by its PID) and wait for it to end."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(15)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
