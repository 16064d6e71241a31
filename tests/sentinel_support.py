"""A real Sentinel-monitored Redis on loopback for the tests: one primary,
replicas and Sentinels (``redis-sentinel`` from Debian), each a child process
on a free 127.0.0.1 port, stopped by PID in the test's cleanup.

Failover is fast on purpose: ``down-after-milliseconds`` 1000 and a quorum
of 2, so a killed primary is replaced within a few seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

from twisted.trial import unittest

from .redis_support import require_redis_server
from .server_support import free_port
from .support import in_ci

SERVICE = "sdcc-primary"
#: Sentinel's down-after-milliseconds: how soon a silent primary counts as down.
DOWN_AFTER_MS = 1000


def sentinel_command() -> list[str] | None:
    """``redis-sentinel``, or None without it."""
    path = shutil.which("redis-sentinel")
    return [path] if path else None


class Node:
    """One redis-server or redis-sentinel child process on a TCP port."""

    def __init__(self, argv: list[str], port: int, directory: str, name: str) -> None:
        self.argv = argv
        self.port = port
        self.name = name
        self.directory = directory
        self.log_path = os.path.join(directory, name + ".log")
        self.restart()

    def restart(self) -> None:
        """Start the process (again), with the same arguments and port."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.directory)

    def client(self) -> Any:
        """A synchronous redis-py client, for setup and assertions."""
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                           socket_timeout=5)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` by PID and reap the process."""
        if self.alive():
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


class SentinelSet:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels."""

    def __init__(self, testcase: unittest.TestCase, replicas: int = 1,
                 sentinels: int = 3) -> None:
        server = require_redis_server(testcase)
        command = sentinel_command()
        if command is None:
            reason = "redis-sentinel is not on PATH (apt-get install redis-sentinel)"
            if in_ci():
                testcase.fail(reason + "; under CI=true this is a failure")
            raise unittest.SkipTest(reason)
        self.directory = tempfile.mkdtemp(prefix="sdcc-test-sentinel-")
        testcase.addCleanup(shutil.rmtree, self.directory, True)
        self.nodes: list[Node] = []
        testcase.addCleanup(self.stop)
        base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", self.directory]
        self._server, self._base = server, base
        port = free_port()
        self.primary = self._start([server, "--port", str(port), *base,
                                    "--dbfilename", f"{port}.rdb"], port, "primary")
        self.replicas = []
        for n in range(replicas):
            rport = free_port()
            self.replicas.append(self._start(
                [server, "--port", str(rport), *base, "--dbfilename", f"{rport}.rdb",
                 "--replicaof", "127.0.0.1", str(port)], rport, f"replica{n}"))
        self.sentinels = []
        for n in range(sentinels):
            sport = free_port()
            conf = os.path.join(self.directory, f"sentinel{n}.conf")
            with open(conf, "w", encoding="utf-8") as handle:
                handle.write(
                    f"port {sport}\nbind 127.0.0.1\ndir {self.directory}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {port} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {SERVICE} 10000\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n")
            self.sentinels.append(self._start([*command, conf], sport, f"sentinel{n}"))
        self._wait_ready(replicas, sentinels)

    def add_replica(self) -> Node:
        """Start one more replica of the current primary."""
        port = free_port()
        replica = self._start([self._server, "--port", str(port), *self._base,
                               "--dbfilename", f"{port}.rdb", "--replicaof", "127.0.0.1",
                               str(self.primary_port())], port, f"replica{len(self.replicas)}")
        self.replicas.append(replica)
        return replica

    def _start(self, argv: list[str], port: int, name: str) -> Node:
        node = Node(argv, port, self.directory, name)
        self.nodes.append(node)
        return node

    def _wait_ready(self, replicas: int, sentinels: int, timeout: float = 30) -> None:
        """Until every Sentinel knows the primary, its replicas and the other
        Sentinels, and the replicas are in sync."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready = all(
                    int(s.client().sentinel_master(SERVICE)["num-slaves"]) >= replicas
                    and int(s.client().sentinel_master(SERVICE)["num-other-sentinels"])
                    >= sentinels - 1 for s in self.sentinels)
                ready = ready and all(r.client().info("replication")
                                      .get("master_link_status") == "up"
                                      for r in self.replicas)
            except Exception:  # noqa: BLE001 - not up yet
                ready = False
            if ready:
                return
            if time.monotonic() > deadline or not all(n.alive() for n in self.nodes):
                raise AssertionError("the Sentinel set did not come up; logs in "
                                     + self.directory + "\n" + self.logs())
            time.sleep(0.1)

    @property
    def url(self) -> str:
        """The ``[index] redis`` value for it."""
        return ("redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
                + f"/{SERVICE}?db=0")

    def primary_port(self) -> int | None:
        """The port the Sentinels name as primary now (the first that answers)."""
        for sentinel in self.sentinels:
            try:
                host, port = sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
                return int(port)
            except Exception:  # noqa: BLE001 - ask the next
                continue
        return None

    def node_on(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def logs(self) -> str:
        """The tails of every node's log."""
        parts = []
        for node in self.nodes:
            try:
                with open(node.log_path, encoding="utf-8", errors="replace") as handle:
                    parts.append(f"--- {node.name}\n" + handle.read()[-1500:])
            except OSError:
                pass
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM every process by PID (SIGKILL if it lingers)."""
        for node in reversed(self.nodes):
            node.kill(signal.SIGTERM)
