"""sdcc's loggers and the one level that filters them (``[logging] level``).

Every sdcc module logs through :func:`get_logger`.  Its events pass a level
gate before they reach ``globalLogPublisher`` (and so twistd's log and any
observer of the embedding application): an event below the configured
level costs one comparison, not a formatted and written line.  That matters
on the receive path, where a formatted line per stored instance cost about
a sixth of the server's CPU time (bench/RESULTS.md); the line per stored
instance is therefore a ``debug`` event, and the per-association line at
``info`` carries the counts.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, LogLevel, Logger, globalLogPublisher
from zope.interface import implementer

__all__ = ["enabled", "get_logger", "set_level"]


@implementer(ILogObserver)
class _LevelGate:
    """Forwards events at or above ``threshold`` to the global publisher."""

    def __init__(self) -> None:
        self.threshold = LogLevel.info

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        if level >= self.threshold:
            globalLogPublisher(event)


_gate = _LevelGate()


def set_level(name: str) -> None:
    """Log sdcc events at ``name`` (debug, info, warn, error, critical) and up."""
    _gate.threshold = LogLevel.levelWithName(name)


def enabled(level: LogLevel) -> bool:
    """Whether an event at ``level`` would be logged (check before building
    an expensive one)."""
    return level >= _gate.threshold


def get_logger(namespace: str) -> Logger:
    """A logger whose events pass the level gate."""
    return Logger(namespace=namespace, observer=_gate)
