"""sdcc's loggers and the one level that filters them (``[logging] level``).

Every sdcc module logs through :func:`get_logger`.  Its events pass a level
gate (Twisted's ``FilteringLogObserver`` with a ``LogLevelFilterPredicate``
on the ``sdcc`` namespace) before they reach ``globalLogPublisher`` (and so twistd's log and any
observer of the embedding application): an event below the configured
level costs one comparison, not a formatted and written line.  That matters
on the receive path, where a formatted line per stored instance cost about
a sixth of the server's CPU time (bench/RESULTS.md); the line per stored
instance is therefore a ``debug`` event, and the per-association line at
``info`` carries the counts.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)

__all__ = ["enabled", "get_logger", "iso_time", "set_level"]

_NAMESPACE = "sdcc"
_levels = LogLevelFilterPredicate()
_gate = FilteringLogObserver(globalLogPublisher, [_levels])


def set_level(name: str) -> None:
    """Log sdcc events at ``name`` (debug, info, warn, error, critical) and up."""
    _levels.setLogLevelForNamespace(_NAMESPACE, LogLevel.levelWithName(name))


def enabled(level: LogLevel) -> bool:
    """Whether an event at ``level`` would be logged (check before building
    an expensive one)."""
    return level >= _levels.logLevelForNamespace(_NAMESPACE)


def get_logger(namespace: str) -> Logger:
    """A logger for ``sdcc.*`` whose events pass the level gate."""
    if namespace != _NAMESPACE and not namespace.startswith(_NAMESPACE + "."):
        raise ValueError(f"sdcc loggers live under {_NAMESPACE!r}, not {namespace!r}")
    return Logger(namespace=namespace, observer=_gate)


def iso_time(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 local time with its UTC offset."""
    from datetime import datetime, timezone

    return (datetime.fromtimestamp(seconds, tz=timezone.utc).astimezone()
            .isoformat(timespec="milliseconds"))
