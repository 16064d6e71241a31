"""One server per data folder: an exclusive lock held while the server runs.

Start-up clean-up, log recovery and the embedded Redis all assume that this
process is the only one using ``[server] data_dir``.  A second server on the
same folder would delete the first one's open write-ahead segment and its
in-flight temp files, so it must stop before it touches anything.
"""

from __future__ import annotations

import fcntl
import os
from typing import IO, Final

from twisted.application import service

from sdcc_twisted.storage.files import make_private_dirs
from sdcc_twisted.config import ConfigError

#: The lock file in ``data_dir``; it holds the holder's pid, for the message.
LOCK_NAME: Final = "sdcc.lock"


class DataDirInUse(ConfigError):
    """Another running server holds the data folder's lock."""


class DataDirLock(service.Service):
    """Holds ``{data_dir}/sdcc.lock`` (``flock``, exclusive) from the first
    start step to the stop; the kernel frees it if the process dies.

    It is taken in :meth:`privilegedStartService`, before anything else in
    the service tree binds a port or touches the folder (put it first).
    """

    def __init__(self, data_dir: str, source: str = "") -> None:
        self.path = os.path.join(os.path.abspath(data_dir), LOCK_NAME)
        self.source = source
        self._handle: IO[str] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.acquire()

    def startService(self) -> None:
        super().startService()
        self.acquire()

    def stopService(self) -> None:
        super().stopService()
        self.release()

    def acquire(self) -> None:
        """Take the lock (once); raise :class:`DataDirInUse` naming the folder
        and the holder's pid, or :class:`ConfigError` if the file cannot be
        opened."""
        if self._handle is not None:
            return
        prefix = f"{self.source}: " if self.source else ""
        folder = os.path.dirname(self.path)
        try:
            make_private_dirs(folder)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"{prefix}[server] data_dir: cannot open the lock file "
                              f"{self.path}: {exc.strerror}") from None
        handle = os.fdopen(fd, "r+", encoding="ascii")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DataDirInUse(
                f"{prefix}[server] data_dir: {folder} is in use by another sdcc server "
                f"(pid {holder}); stop it, or give this one another data_dir") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Let the lock go (the file stays: deleting it would race a new holder)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
