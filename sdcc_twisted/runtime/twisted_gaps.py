"""What Twisted has no public API for, in one place.

Each function names the API it stands in for.  ``tests/test_twisted_gaps.py``
checks, against the installed Twisted, every attribute used here, so a
Twisted upgrade that changes one fails a test instead of sdcc silently.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def send_now(transport: Any) -> None:
    """Hand what was just written to the socket now, not on the reactor's
    next turn.

    Missing API: ``ITransport`` has no "write now" (flush); a write waits
    for the reactor's next poll.  The peer of a C-STORE waits for each
    response before it sends the next instance (DCMTK storescu, pynetdicom
    and most modalities work one message at a time), so the response's
    latency is the throughput: sending it at once, before the index write
    and whatever else this turn still does, took the small-file benchmark
    from 1.25 s to 1.05 s (bench/RESULTS.md).  Done through the transport's
    own ``doWrite`` (``IWriteDescriptor``), only on a plain TCP transport,
    not while it closes, and not while a producer (our streaming
    MessageSender) is paused, which doWrite would resume here; what the
    socket does not take, and any error, stay with the reactor, which goes
    on watching the socket as before.
    """
    # Only the TCP connection itself: a TLS wrapper forwards doWrite to the
    # connection under it, whose state (closing after close_notify) the
    # wrapper does not show.
    if not isinstance(transport, tcp.Connection) or transport.disconnecting:
        return
    if transport.producer is not None and (
            not transport.streamingProducer or transport.producerPaused):
        return    # doWrite would resume the producer from inside this call
    if transport.doWrite() is not None:
        # The connection is done for: let the reactor see it as it would have.
        transport.startWriting()


def server_tls_options(endpoint: Any) -> Any:
    """The ``CertificateOptions`` an ``ssl:`` server endpoint string
    produced, or ``None`` for any other endpoint.

    Missing API: ``SSL4ServerEndpoint`` does not show its context factory,
    and ``ssl:`` server endpoint strings take no CA option (only client
    strings have ``caCertsDir``), so client certificates can only be asked
    for by replacing the options Twisted built from the string.
    """
    from twisted.internet import ssl

    options = getattr(endpoint, "_sslContextFactory", None)
    return options if isinstance(options, ssl.CertificateOptions) else None


def replace_server_tls_options(endpoint: Any, options: Any) -> None:
    """Listen with ``options`` instead (see :func:`server_tls_options`)."""
    if server_tls_options(endpoint) is None:
        raise TypeError(f"{endpoint!r} is not an ssl: server endpoint")
    endpoint._sslContextFactory = options


__all__ = ["replace_server_tls_options", "send_now", "server_tls_options"]
