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

import json
from datetime import datetime, timezone
from typing import IO, Any, Final

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import provider

__all__ = ["enabled", "get_logger", "iso_time", "json_lines_observer", "set_level"]

#: JSON field names for the short keys sdcc's log lines format with.
JSON_FIELD_NAMES: Final = {"calling": "calling_ae", "called": "called_ae",
                           "uid": "sop_instance_uid"}

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


def json_lines_observer(stream: IO[str]) -> ILogObserver:
    """An observer writing each event as one JSON object per line, for log
    shippers (``[logging] format = json``): ``time`` (ISO 8601, UTC),
    ``level``, ``namespace``, ``message`` and the event's own fields
    (``peer``, ``calling_ae``, ``sop_instance_uid``, ``status``...)."""

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc)
                            .isoformat(timespec="milliseconds"),
            "level": level.name if level is not None else "info",
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if key.startswith("log_") or key in ("format", "isError", "message"):
                continue
            if not isinstance(value, (str, int, float, bool, type(None))):
                value = str(value)
            record.setdefault(JSON_FIELD_NAMES.get(key, key), value)
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        stream.flush()
    return observe
