"""Server-assigned sequence numbers: monotonic, across restarts, not a clock.

Versions of one SOP Instance UID are ordered by the sequence their C-STORE
got when it arrived (issue 11, finding 2): the index keeps the entry with the
highest, whatever the wall clock did.  :class:`SequenceSource` hands numbers
out from memory in blocks; the end of the current block is kept durably in
``{data_dir}/sequence`` before any number of it is used, so a restart (or a
crash) continues above every number handed out before.

Several nodes share one index but each has its own sequence file, so a
number alone would let the node that stored more win.  Given a clock, the
source is a hybrid logical clock: a number is never below the wall clock in
microseconds (copies of one UID arriving on different nodes rank by arrival,
as far as the nodes' clocks agree) and never below the previous number (a
clock stepping back cannot reorder the copies one node received).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Final

from sdcc_twisted.storage.files import fsync_directory

#: The file under ``[server] data_dir``.
SEQUENCE_FILE: Final = "sequence"


class SequenceSource:
    """Monotonic numbers from ``path`` (see the module).

    Construction only reads the file (a server that finds ``data_dir`` held
    by another must leave it untouched); reserving a block writes and fsyncs
    a few bytes, at the first number and once per ``block`` numbers after
    that.

    Raises:
        ValueError: the file holds something else than a number.
        OSError: the file cannot be read or written.
    """

    BLOCK = 1 << 20

    #: With a clock, a block reaches this far (microseconds) beyond now, so
    #: that the file is written about every ten minutes, not every second.
    AHEAD = 600_000_000

    def __init__(self, path: str, block: int = BLOCK,
                 now: Callable[[], float] | None = None) -> None:
        self.path = path
        self.block = block
        self.now = now
        self._next = self._read() + 1
        self._limit = 0     # nothing reserved yet: the first next() reserves
        self._lock = threading.Lock()   # numbers go out on disk workers

    @classmethod
    def in_data_dir(cls, data_dir: str,
                    now: Callable[[], float] | None = None) -> SequenceSource:
        """The source kept in ``{data_dir}/sequence``."""
        return cls(os.path.join(data_dir, SEQUENCE_FILE), now=now)

    def _read(self) -> int:
        try:
            with open(self.path, encoding="ascii") as handle:
                text = handle.read().strip()
        except FileNotFoundError:
            return 0
        value = int(text)
        if value < 0:
            raise ValueError(f"negative sequence {value}")
        return value

    def _reserve(self) -> None:
        """Make ``_next .. _next + block - 1`` usable, durably."""
        limit = self._next + self.block - 1
        if self.now is not None:
            limit = max(limit, int(self.now() * 1_000_000) + self.AHEAD)
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{limit}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        self._limit = limit

    def start(self) -> None:
        """Reserve the first block now (at start-up, once ``data_dir`` is
        this server's), so that the first C-STORE writes nothing here."""
        if self._next > self._limit:
            self._reserve()

    def next(self) -> int:
        """The next number (on a disk worker, any thread; blocks for one
        small fsync once per block)."""
        with self._lock:
            if self.now is not None:
                # a hybrid logical clock: never below the wall clock (in
                # microseconds), so that nodes sharing one index order the
                # copies of one UID by arrival; never below the last number,
                # so that a clock stepping back cannot reorder this node's copies
                self._next = max(self._next, int(self.now() * 1_000_000))
            if self._next > self._limit:
                self._reserve()
            value = self._next
            self._next += 1
            return value
