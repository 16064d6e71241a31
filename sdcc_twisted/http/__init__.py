"""The operations surface: one HTTP listener on the server's reactor.

``/metrics`` (Prometheus text from the monitor's own registry), ``/healthz``,
``/readyz``, the status page ``/`` and its JSON ``/api/status``; see
:func:`sdcc_twisted.http.site.build_site`.  twisted.web resources, no WSGI and
no thread pool for scrapes.
"""

from sdcc_twisted.http.probe import HealthProbe
from sdcc_twisted.http.site import build_site, read_token

__all__ = ["HealthProbe", "build_site", "read_token"]
