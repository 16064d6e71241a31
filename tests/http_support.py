"""Reading the running server's HTTP surface in the interop tests."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers


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
