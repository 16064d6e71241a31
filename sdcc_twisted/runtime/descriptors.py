"""File descriptors: the soft RLIMIT_NOFILE raised to the hard limit at
startup, and the connection caps checked against what it allows.

Every admitted connection holds a socket; an association may hold more (the
file it writes, a C-MOVE sub-association and the file it sends); refused
connections hold one each for at most their grace period.  A cap the
descriptors cannot carry is a configuration error, not an EMFILE later.
"""

from __future__ import annotations

import resource

from sdcc_twisted.config import ConfigError, Settings
from sdcc_twisted.runtime.admission import REFUSED_WAITING

#: Descriptors an association may hold besides its socket.
PER_ASSOCIATION = 2
#: Descriptors besides the connections: listeners, Redis, logs, WAL, journal.
RESERVE = 64


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def descriptors_needed(settings: Settings) -> int:
    """Descriptors the ``[server]`` caps may use at once."""
    server = settings.server
    return (server.max_connections + min(REFUSED_WAITING, server.max_connections)
            + server.max_associations * PER_ASSOCIATION + RESERVE)


def check_descriptors(settings: Settings) -> int:
    """Raise the limit, then refuse caps above it.

    Raises:
        ConfigError: naming ``[server] max_connections`` when the caps need
            more descriptors than RLIMIT_NOFILE allows.
    """
    limit = raise_nofile_limit()
    needed = descriptors_needed(settings)
    if limit != resource.RLIM_INFINITY and needed > limit:
        server = settings.server
        raise ConfigError(
            f"{settings.source}: [server] max_connections = {server.max_connections} "
            f"(with max_associations = {server.max_associations}) needs up to {needed} "
            f"file descriptors, but RLIMIT_NOFILE allows {limit}: lower max_connections "
            f"or raise the hard limit (ulimit -Hn)")
    return limit


__all__ = ["PER_ASSOCIATION", "RESERVE", "check_descriptors", "descriptors_needed",
           "raise_nofile_limit"]
