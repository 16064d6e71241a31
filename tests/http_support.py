"""Reading the running server's HTTP surface in the interop tests."""

from __future__ import annotations

import json
import signal
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, error, protocol, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from .server_support import DCMTK_ENV
from .support import require_tool


async def fetch(url: str, headers: dict[str, str] | None = None,
                timeout: float = 10) -> tuple[int, bytes]:
    """GET ``url`` on the trial reactor; (status code, body)."""
    agent = Agent(reactor)
    d = agent.request(b"GET", url.encode("ascii"),
                      Headers({k: [v] for k, v in (headers or {}).items()}))
    d.addTimeout(timeout, reactor)
    response = await d
    body = readBody(response)
    body.addTimeout(timeout, reactor)
    return response.code, await body


async def fetch_json(url: str, **kwargs: Any) -> tuple[int, Any]:
    """GET a JSON resource; (status code, decoded body)."""
    code, body = await fetch(url, **kwargs)
    return code, json.loads(body)


async def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed with prometheus-client's own parser:
    {(sample name, sorted labels): value}."""
    code, body = await fetch(base + "/metrics")
    assert code == 200, (code, body)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode("utf-8"))
            for sample in family.samples}


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


class DcmtkProcess(protocol.ProcessProtocol):
    """A DCMTK tool we start ourselves (to SIGSTOP/SIGCONT it by PID)."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode if reason.check(error.ProcessTerminated) else 0
        self.ended.callback(code)


def spawn_dcmtk(testcase: TestCase, tool: str, *args: str) -> tuple[DcmtkProcess, Any]:
    """Start a DCMTK tool; (its protocol, its process transport).  The
    cleanup kills it (by its PID, through the transport) if it still runs."""
    path = require_tool(testcase, tool)
    proto = DcmtkProcess()
    transport = reactor.spawnProcess(proto, path, [path, *args], env=DCMTK_ENV)

    def stop() -> Any:
        if not proto.ended.called:
            transport.signalProcess(signal.SIGCONT)
            transport.signalProcess("KILL")
            return proto.ended
        return None
    testcase.addCleanup(stop)
    return proto, transport


async def held_storescu(testcase: TestCase, port: int, calling_ae: str, samples: list[Any],
                        monitor: Any) -> tuple[DcmtkProcess, Any]:
    """storescu sending ``samples``, held with SIGSTOP (by its PID) while its
    association is open on the server: a transfer that stays live until the
    test sends SIGCONT."""
    proto, process = spawn_dcmtk(testcase, "storescu", "-R", "-aet", calling_ae,
                                 "-aec", "SDCC", "127.0.0.1", str(port),
                                 *[s.path for s in samples])
    process.signalProcess(signal.SIGSTOP)
    for _ in range(500):
        live = monitor.status()["associations"]
        if live and live[0]["instances"] > 0:
            break
        process.signalProcess(signal.SIGCONT)     # let it run a little, then hold it again
        await task.deferLater(reactor, 0.005, lambda: None)
        process.signalProcess(signal.SIGSTOP)
    return proto, process
