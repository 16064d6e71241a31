"""The operations site (sdcc_twisted.http) over StringTransport and task.Clock:
routes, /readyz checks, the bearer token and the request bounds."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sdcc_twisted.http import HealthProbe, build_site
from sdcc_twisted.http.site import (
    IDLE_TIMEOUT,
    MAX_BODY,
    READY_TIMEOUT,
    REQUEST_TIMEOUT,
)
from sdcc_twisted.monitor import ISpaceReport, Monitor

TOKEN = b"s3cret-token-0123456789"


@implementer(ISpaceReport)
class Volumes:
    """Free space and a floor, set by the test (the shape of storage/space.py's
    SpaceGuard)."""

    def __init__(self) -> None:
        self.free = {"storage_root": 10 << 30, "data_dir": 10 << 30}
        self.floor = 1 << 30

    def free_bytes(self) -> dict[str, int]:
        return dict(self.free)

    def below_floor(self) -> list[str]:
        return sorted(v for v, free in self.free.items() if free < self.floor)


def answer(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status code, headers (lower-case names) and body of one HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        chunks, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            chunks.append(rest[:size])
            rest = rest[size + 2:]
        body = b"".join(chunks)
    return int(lines[0].split()[1]), headers, body


class SiteTests(SynchronousTestCase):
    """One site on a StringTransport; time is a task.Clock."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.monitor = Monitor(self.clock, "9.9")
        self.volumes = Volumes()
        self.blocking: list[Any] = []

    def site(self, token: bytes | None = None, space: Any = "volumes") -> Any:
        def run_blocking(fn: Any, *args: Any) -> defer.Deferred[Any]:
            self.blocking.append(fn)
            return defer.maybeDeferred(fn, *args)
        return build_site(self.monitor, self.clock, run_blocking,
                          self.volumes if space == "volumes" else space, token)

    def connect(self, site: Any) -> tuple[Any, StringTransport]:
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def get(self, path: str, site: Any = None, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
        channel, transport = self.connect(site or self.site())
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        channel.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}"
                             "Connection: close\r\n\r\n".encode())
        return answer(transport.value())

    def test_healthz(self) -> None:
        """/healthz answers 200 with a JSON body while the reactor runs."""
        code, headers, body = self.get("/healthz")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(json.loads(body), {"status": "ok"})

    def test_readyz_follows_listener_and_disk_floor(self) -> None:
        """/readyz is 503 while the DICOM listener is down, 200 once it is up,
        503 naming the volume when it crosses the disk floor, and 200 again
        when space is back; the disk check runs off the reactor thread."""
        verifyObject(ISpaceReport, self.volumes)
        code, _, body = self.get("/readyz")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["checks"]["listener"]["ok"], False)
        self.monitor.set_listening(True)
        code, _, body = self.get("/readyz")
        self.assertEqual((code, json.loads(body)["ready"]), (200, True))
        self.volumes.free["storage_root"] = 1000
        code, _, body = self.get("/readyz")
        report = json.loads(body)
        self.assertEqual((code, report["ready"]), (503, False))
        self.assertEqual(report["checks"]["disk"]["below_floor"], ["storage_root"])
        self.assertIn("storage_root", report["checks"]["disk"]["detail"])
        self.volumes.free["storage_root"] = 5 << 30
        code, _, body = self.get("/readyz")
        self.assertEqual((code, json.loads(body)["checks"]["disk"]["ok"]), (200, True))
        self.assertEqual(len(self.blocking), 4)

    def test_readyz_index_outage_does_not_make_unready(self) -> None:
        """Redis down is reported under "index" but /readyz stays 200: stores
        are journaled."""
        self.monitor.set_listening(True)
        self.monitor.redis_up = False
        self.monitor.journal_pending = 4
        code, _, body = self.get("/readyz")
        index = json.loads(body)["checks"]["index"]
        self.assertEqual(code, 200)
        self.assertEqual((index["ok"], index["affects_readiness"], index["backlog"]),
                         (False, False, 4))

    def test_readyz_stalled_disk_check_is_unready(self) -> None:
        """A free-space check that does not answer within READY_TIMEOUT makes
        /readyz answer 503 saying so, instead of hanging."""
        self.monitor.set_listening(True)
        site = build_site(self.monitor, self.clock, lambda fn, *a: defer.Deferred(),
                          self.volumes)
        channel, transport = self.connect(site)
        channel.dataReceived(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(READY_TIMEOUT)
        code, _, body = answer(transport.value())
        self.assertEqual(code, 503)
        self.assertIn("did not answer", json.loads(body)["checks"]["disk"]["detail"])

    def test_metrics_parse(self) -> None:
        """/metrics is Prometheus text that prometheus-client's parser reads,
        with every metric the issue names."""
        self.monitor.set_disk_free({"storage_root": 123, "data_dir": 456})
        code, headers, body = self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"content-type"].startswith(b"text/plain"))
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        for name in ("sdcc_associations_active", "sdcc_associations",
                     "sdcc_association_rejects", "sdcc_instances_stored",
                     "sdcc_instances_failed", "sdcc_bytes_received",
                     "sdcc_store_duration_seconds", "sdcc_query_duration_seconds",
                     "sdcc_index_backlog", "sdcc_redis_up", "sdcc_disk_free_bytes"):
            self.assertIn(name, names)
        self.assertIn(b'sdcc_disk_free_bytes{volume="data_dir"} 456.0', body)

    def test_status_page_and_json(self) -> None:
        """/ serves the self-contained page (nothing fetched from elsewhere);
        /api/status serves its JSON; an unknown path is 404."""
        code, headers, page = self.get("/")
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"content-type"].startswith(b"text/html"))
        self.assertIn(b"api/status", page)
        self.assertNotIn(b"http://", page)
        self.assertNotIn(b"https://", page)
        self.assertIn(b"default-src 'none'", headers[b"content-security-policy"])
        code, _, body = self.get("/api/status")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["version"], "9.9")
        self.assertEqual(self.get("/nothing/here")[0], 404)
        self.assertEqual(self.get("/api/other")[0], 404)

    def test_bearer_token(self) -> None:
        """With a token, /metrics and /api/status answer 401 with a Bearer
        challenge unless the header carries it; the probes and the page
        (which holds no data) stay open."""
        site = self.site(token=TOKEN)
        self.monitor.set_listening(True)
        for path in ("/metrics", "/api/status"):
            code, headers, _ = self.get(path, site)
            self.assertEqual(code, 401, path)
            self.assertEqual(headers[b"www-authenticate"], b'Bearer realm="sdcc"')
            self.assertEqual(self.get(path, site, {"Authorization": "Bearer wrong"})[0], 401)
            self.assertEqual(self.get(path, site, {"Authorization": "Basic " + TOKEN.decode()})[0],
                             401)
            self.assertEqual(self.get(path, site,
                                      {"Authorization": "Bearer " + TOKEN.decode()})[0], 200)
        for path in ("/healthz", "/readyz", "/"):
            self.assertEqual(self.get(path, site)[0], 200, path)

    def test_only_reads(self) -> None:
        """Anything but GET/HEAD is 405."""
        for method in ("POST", "PUT", "DELETE"):
            self.assertEqual(self.get("/metrics", method=method)[0], 405, method)

    def test_oversized_body_is_413(self) -> None:
        """A declared body over MAX_BODY is answered 413 and the connection
        closes before the body is read."""
        channel, transport = self.connect(self.site())
        channel.dataReceived(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: "
                             + str(MAX_BODY + 1).encode() + b"\r\n\r\n" + b"x" * 100)
        self.assertEqual(answer(transport.value())[0], 413)
        self.assertTrue(transport.disconnecting)

    def test_oversized_chunked_body_is_413(self) -> None:
        """A chunked body growing past MAX_BODY is answered 413."""
        channel, transport = self.connect(self.site())
        channel.dataReceived(b"POST /metrics HTTP/1.1\r\nHost: x\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 512
        for _ in range(3):
            if transport.disconnecting:
                break
            channel.dataReceived(b"200\r\n" + chunk + b"\r\n")
        self.assertEqual(answer(transport.value())[0], 413)
        self.assertTrue(transport.disconnecting)

    def test_oversized_headers_are_400(self) -> None:
        """Headers over Twisted's 16 KiB limit are answered 400."""
        channel, transport = self.connect(self.site())
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                             + b"X-Filler: " + b"a" * 8000 + b"\r\n"
                             + b"X-More: " + b"b" * 9000 + b"\r\n\r\n")
        self.assertEqual(answer(transport.value())[0], 400)

    def test_slow_request_is_408(self) -> None:
        """A request still incomplete REQUEST_TIMEOUT seconds after its first
        byte is answered 408 and closed, however it trickles in."""
        channel, transport = self.connect(self.site())
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
            channel.dataReceived(bytes([byte]))
            self.clock.advance(REQUEST_TIMEOUT / 100)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(REQUEST_TIMEOUT)
        self.assertEqual(answer(transport.value())[0], 408)
        self.assertTrue(transport.disconnecting)

    def test_keep_alive_requests_each_get_the_deadline(self) -> None:
        """On a kept-alive connection each complete request cancels its
        deadline: two quick requests far apart both get 200, and an idle
        connection is closed after IDLE_TIMEOUT."""
        channel, transport = self.connect(self.site())
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(REQUEST_TIMEOUT * 2)
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(REQUEST_TIMEOUT * 2)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertNotIn(b"408", transport.value())
        self.clock.advance(IDLE_TIMEOUT)
        self.assertTrue(transport.disconnecting)


class ProbeTests(SynchronousTestCase):
    """HealthProbe keeps Redis state, journal backlog and free space fresh."""

    def test_probe_updates_monitor_and_bounds_each_check(self) -> None:
        """Each interval it pings Redis and measures; a ping that does not
        answer within the timeout marks Redis down, an answer marks it up."""
        clock = task.Clock()
        monitor = Monitor(clock)
        pings: list[defer.Deferred[Any]] = []

        def ping() -> defer.Deferred[Any]:
            pings.append(defer.Deferred())
            return pings[-1]
        probe = HealthProbe(monitor, clock, ping,
                            lambda: defer.succeed((3, {"storage_root": 99})),
                            interval=5, timeout=2)
        probe.startService()
        self.addCleanup(probe.stopService)
        self.assertEqual((monitor.journal_pending, monitor.disk_free), (3, {"storage_root": 99}))
        self.assertIsNone(monitor.redis_up)
        pings[0].callback("PONG")
        self.assertTrue(monitor.redis_up)
        clock.advance(5)
        clock.advance(2)          # the second ping never answers
        self.assertFalse(monitor.redis_up)
        self.assertEqual(monitor.backlog(), 3)


class ShippedConfigurationTests(SynchronousTestCase):
    """etc/grafana-dashboard.json and etc/prometheus.yml match what /metrics serves."""

    def test_dashboard_queries_metrics_that_exist(self) -> None:
        """Every sdcc_* series the dashboard queries is one /metrics exposes,
        and the scrape configuration points at the default listener's /metrics."""
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(repo, "etc", "grafana-dashboard.json")) as handle:
            dashboard = json.load(handle)
        queried = {name for panel in dashboard["panels"] for target in panel["targets"]
                   for name in re.findall(r"sdcc_[a-z_]+", target["expr"])}
        suffixes = {"counter": ("_total",), "gauge": ("",),
                    "histogram": ("_bucket", "_count", "_sum")}
        exposed = {family.name + suffix
                   for family in Monitor(task.Clock()).registry.collect()
                   for suffix in suffixes[family.type]}
        self.assertGreater(len(queried), 10)
        self.assertEqual(queried - exposed, set())
        with open(os.path.join(repo, "etc", "prometheus.yml")) as handle:
            scrape = handle.read()
        self.assertIn('targets: ["127.0.0.1:8080"]', scrape)
        self.assertIn("metrics_path: /metrics", scrape)
