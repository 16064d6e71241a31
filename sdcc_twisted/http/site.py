"""The HTTP site: resources, access rules and request bounds.

- ``/healthz``: 200 while the reactor runs (a liveness probe).
- ``/readyz``: 200 when the DICOM listener is up and storing is possible
  (no volume below ``[storage] min_free_space``), 503 otherwise; a JSON body
  names each check.  An index outage is reported but leaves the server
  ready: stores are journaled.
- ``/metrics``: Prometheus text exposition of the monitor's registry.
- ``/api/status``: the status page's JSON.
- ``/``: the status page (HTML and JS served from here; nothing from elsewhere).

With ``[http] token_file`` every path except ``/healthz``, ``/readyz`` and
the page itself (which holds no data) needs ``Authorization: Bearer TOKEN``.
Every request is bounded: headers by Twisted (16 KiB), a body by
:data:`MAX_BODY` bytes (413), the whole request by :data:`REQUEST_TIMEOUT`
seconds from its first byte (408), an idle connection by :data:`IDLE_TIMEOUT`.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from sdcc_twisted.config import ConfigError
from sdcc_twisted.logs import get_logger
from sdcc_twisted.monitor import ISpaceReport, Monitor

log = get_logger("sdcc.http")

#: Largest request body accepted (every resource is read-only: GET/HEAD).
MAX_BODY: Final = 1024
#: Seconds from a request's first byte to its last (slow senders get 408).
REQUEST_TIMEOUT: Final = 10.0
#: Seconds a kept-alive connection may stay idle.
IDLE_TIMEOUT: Final = 30.0
#: Seconds /readyz waits for the disk check before reporting it failed.
READY_TIMEOUT: Final = 5.0
#: Paths open without the bearer token (probes; the page holds no data).
OPEN_PATHS: Final = frozenset({b"healthz", b"readyz", b""})

_PAGE: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "status.html")


def read_token(path: str, source: str = "<config>") -> bytes:
    """The bearer token in ``[http] token_file`` (surrounding space removed).

    Raises:
        ConfigError: the file cannot be read, or holds no token.
    """
    try:
        with open(path, "rb") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"{source}: [http] token_file: cannot read {path}: "
                          f"{exc.strerror}") from None
    if len(token) < 16 or any(c <= 32 or c > 126 for c in token):
        raise ConfigError(f"{source}: [http] token_file: {path} must hold one token "
                          "of at least 16 printable characters")
    return token


def _raw_answer(channel: http.HTTPChannel, status: bytes) -> None:
    """Answer with ``status`` and close, before a request is complete."""
    transport = channel.transport
    assert transport is not None
    transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n")
    channel.loseConnection()


class BoundedRequest(server.Request):
    """A request whose body may not exceed :data:`MAX_BODY` bytes (413)."""

    refused = False
    body_bytes = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.refused or self.body_bytes > MAX_BODY:
            self.refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.refused:
            super().requestReceived(command, path, version)

    def refuse(self) -> None:
        """413: the body is too large; the connection closes."""
        if not self.refused:
            self.refused = True
            _raw_answer(self.channel, b"413 Content Too Large")


class BoundedChannel(http.HTTPChannel):
    """A channel that answers 408 when a request takes more than
    :data:`REQUEST_TIMEOUT` seconds to arrive (slow-sender defence)."""

    request_deadline: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.request_deadline is None:
            self.request_deadline = self.callLater(REQUEST_TIMEOUT, self.too_slow)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self) -> None:
        if self.request_deadline is not None and self.request_deadline.active():
            self.request_deadline.cancel()
        self.request_deadline = None

    def too_slow(self) -> None:
        """The request did not arrive in time: 408 and close."""
        self.request_deadline = None
        _raw_answer(self, b"408 Request Timeout")


class OperationsSite(server.Site):
    """The site; no access log line per request (probes and the page poll
    every few seconds)."""

    protocol = BoundedChannel  # type: ignore[assignment]  # Twisted's documented way
    requestFactory = BoundedRequest
    noisy = False

    def log(self, request: Any) -> None:
        """No access log."""


def _json(request: server.Request, body: dict[str, Any], code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


class Leaf(resource.Resource):
    """A read-only resource without children: anything but GET/HEAD is 405."""

    isLeaf = True

    def render(self, request: server.Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _json(request, {"error": "only GET and HEAD"}, 405)
        return super().render(request)


class Health(Leaf):
    """``/healthz``: the reactor runs."""

    def render_GET(self, request: server.Request) -> bytes:
        return _json(request, {"status": "ok"})


class Ready(Leaf):
    """``/readyz``: listener up and every volume above its floor."""

    def __init__(self, monitor: Monitor, space: ISpaceReport | None,
                 run_blocking: Any, clock: IReactorTime) -> None:
        super().__init__()
        self.monitor = monitor
        self.space = space
        self.run_blocking = run_blocking
        self.clock = clock

    def render_GET(self, request: server.Request) -> Any:
        if self.space is None:
            d: defer.Deferred[Any] = defer.succeed(None)
        else:
            d = self.run_blocking(lambda: (self.space.below_floor(), self.space.free_bytes()))
            d.addTimeout(READY_TIMEOUT, self.clock)
        d.addBoth(self._answer, request)
        return server.NOT_DONE_YET

    def _answer(self, result: Any, request: server.Request) -> None:
        if request.finished or request.channel is None:
            return
        listener = self.monitor.listening
        checks: dict[str, Any] = {
            "listener": {"ok": listener,
                         "detail": "DICOM listener up" if listener else "DICOM listener down"},
        }
        if result is None:
            checks["disk"] = {"ok": True, "detail": "no free-space floor configured"}
        elif isinstance(result, tuple):
            below, free = result
            checks["disk"] = {"ok": not below, "below_floor": below, "free_bytes": free,
                              "detail": ("below the free-space floor: " + ", ".join(below))
                              if below else "above the free-space floor"}
        else:
            checks["disk"] = {"ok": False, "detail": "the free-space check did not "
                              f"answer within {READY_TIMEOUT:g} s ({result.getErrorMessage()})"}
        redis_up = self.monitor.redis_up
        checks["index"] = {"ok": bool(redis_up), "affects_readiness": False,
                           "backlog": self.monitor.backlog(),
                           "detail": "Redis answers" if redis_up else
                           "Redis does not answer; stores are journaled"}
        ready = checks["listener"]["ok"] and checks["disk"]["ok"]
        request.write(_json(request, {"ready": ready, "checks": checks},
                            200 if ready else 503))
        request.finish()


class Metrics(Leaf):
    """``/metrics``: Prometheus text exposition (no patient data)."""

    def __init__(self, monitor: Monitor) -> None:
        super().__init__()
        self.monitor = monitor

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.monitor.registry)


class Status(Leaf):
    """``/api/status``: what the status page shows, as JSON."""

    def __init__(self, monitor: Monitor) -> None:
        super().__init__()
        self.monitor = monitor

    def render_GET(self, request: server.Request) -> bytes:
        return _json(request, self.monitor.status())


class Page(Leaf):
    """``/``: the status page (self-contained HTML and JS)."""

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self.html = html

    def render_GET(self, request: server.Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return resource.NoResource().render(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy",
                          b"default-src 'none'; connect-src 'self'; "
                          b"script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                          b"img-src 'self' data:; frame-ancestors 'none'")
        return self.html


class Unauthorized(resource.Resource):
    """401 with a Bearer challenge."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setHeader(b"www-authenticate", b'Bearer realm="sdcc"')
        return _json(request, {"error": "a bearer token is needed "
                               "(Authorization: Bearer ...)"}, 401)


class Root(resource.Resource):
    """Routes the paths; checks the bearer token where one is configured."""

    def __init__(self, token: bytes | None) -> None:
        super().__init__()
        self.token = token

    def getChildWithDefault(self, path: bytes, request: server.Request) -> Any:
        if self.token is not None and path not in OPEN_PATHS:
            scheme, _, given = (request.getHeader(b"authorization") or b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(),
                                                                      self.token):
                return Unauthorized()
        return super().getChildWithDefault(path, request)


def build_site(monitor: Monitor, clock: IReactorTime, run_blocking: Any,
               space: ISpaceReport | None = None, token: bytes | None = None) -> server.Site:
    """The operations site.

    Args:
        monitor: the numbers.
        clock: the reactor (request deadlines, /readyz timeout).
        run_blocking: runs the free-space check off the reactor thread.
        space: free space and the floor; None: no floor is checked.
        token: the bearer token for everything but the probes and the page.
    """
    with open(_PAGE, "rb") as handle:
        html = handle.read()
    root = Root(token)
    root.putChild(b"", Page(html))
    root.putChild(b"healthz", Health())
    root.putChild(b"readyz", Ready(monitor, space, run_blocking, clock))
    root.putChild(b"metrics", Metrics(monitor))
    api = resource.Resource()
    api.putChild(b"status", Status(monitor))
    root.putChild(b"api", api)
    site = OperationsSite(root, timeout=IDLE_TIMEOUT, reactor=clock)
    site.displayTracebacks = False
    return site
