"""``twistd sdcc``: command-line options and the service they make."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from sdcc_twisted.config import ConfigError, Settings, load_settings


class Options(usage.Options):
    """Options of ``twistd sdcc``."""

    synopsis = "[--config FILE]"
    longdesc = ("Run the SDCC DICOM receiver: Verification and Storage SCP, "
                "Part 10 files on disk, a Redis index.  All settings are in the "
                "INI file; see README.md for its keys.")
    optParameters = [
        ["config", "c", "etc/sdcc.ini", "Path to the INI configuration file."],
    ]

    def postOptions(self) -> None:
        """Load and validate the configuration; a bad file stops startup."""
        try:
            self["settings"] = load_settings(self["config"])
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the service tree from parsed options (twistd calls this)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor
    settings: Settings = options["settings"]
    if settings.server.workers > 1:
        from sdcc_twisted.workers import build_workers
        return build_workers(settings, reactor)
    from sdcc_twisted.service import build_service
    return build_service(settings, reactor)
