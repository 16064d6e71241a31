"""``twistd sdcc``: command-line options and the service they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from sdcc_twisted.config import ConfigError, Settings, load_settings
from sdcc_twisted.logs import get_logger

log = get_logger("sdcc.tap")


class Options(usage.Options):
    """Options of ``twistd sdcc``."""

    synopsis = "[--config FILE]"
    longdesc = ("Run the SDCC DICOM server: Verification, Storage and "
                "Query/Retrieve (C-FIND, C-MOVE, C-GET) SCP, Part 10 files on "
                "disk, a Redis index.  All settings are in the INI file; see "
                "README.md for its keys.")
    optParameters = [
        ["config", "c", "etc/sdcc.ini", "Path to the INI configuration file."],
    ]

    def postOptions(self) -> None:
        """Load and validate the configuration; a bad file stops startup
        with its one-line message (not after the usage text)."""
        try:
            self["settings"] = load_settings(self["config"])
        except ConfigError as exc:
            raise SystemExit(f"sdcc: cannot start: {exc}") from None


class TwistdRoot(MultiService):
    """What twistd runs: a start-up error (a port that cannot be bound, the
    data folder in use, a log file that cannot be opened) ends the process
    with one log line naming the key or path, and exit status 1."""

    def privilegedStartService(self) -> None:
        self._or_exit(super().privilegedStartService)

    def startService(self) -> None:
        self._or_exit(super().startService)

    @staticmethod
    def _or_exit(start: Callable[[], None]) -> None:
        try:
            start()
        except ConfigError as exc:
            log.critical("cannot start: {why}", why=str(exc))
            raise SystemExit(1) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the service tree from parsed options (twistd calls this); what
    cannot be built ends the process with one line."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor
    settings: Settings = options["settings"]
    from sdcc_twisted.service import build_service
    try:
        if settings.server.workers > 1:
            from sdcc_twisted.workers import build_workers
            built = build_workers(settings, reactor)
        else:
            built = build_service(settings, reactor)
    except ConfigError as exc:
        raise SystemExit(f"sdcc: cannot start: {exc}") from None
    root = TwistdRoot()
    built.setServiceParent(root)
    return root
