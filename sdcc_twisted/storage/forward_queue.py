"""The durable forwarding queue: one small file per instance to send.

``{data_dir}/forward/{destination}/{sequence}.json`` holds what is needed to
send one stored instance (its path, SOP class and instance UID, stored
syntax) and its retry state.  A ticket is written to a temp name, fsynced,
renamed into place and the folder fsynced before the store is answered, so
an acknowledged C-STORE here is never lost to a crash; it is removed (and
the folder fsynced) as soon as the destination acknowledged it, so nothing
acknowledged is sent again, but for a crash between that response and the
removal.  After ``max_attempts`` failures a ticket moves to ``parked/``,
where ``sdcc-admin forward retry`` finds it.  Every method blocks: call them
off the reactor thread.  The disk, not Redis, holds the queue: it shares
the files' fate and durability, needs no Redis to accept an instance, and
each node's queue stays with the files it received.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, replace

PARKED = "parked"
HELD = "held"
_SUFFIX = ".json"


@dataclass(frozen=True)
class Ticket:
    """One instance to send to one destination."""

    name: str
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""
    study_uid: str = ""


class ForwardQueue:
    """Tickets per destination under ``root``.

    Args:
        root: ``{data_dir}/forward``.
        fsync: fsync tickets and folders (off only in tests that do not
            crash the machine).
    """

    def __init__(self, root: str, fsync: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.fsync = fsync
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self._count = itertools.count()

    def folder(self, destination: str, parked: bool = False) -> str:
        """The folder of a destination's tickets (or of its parked ones)."""
        base = os.path.join(self.root, _safe(destination))
        return os.path.join(base, PARKED) if parked else base

    def held_folder(self, destination: str, study_uid: str = "") -> str:
        """Where tickets wait for their study to be complete (per-study rules)."""
        base = os.path.join(self.folder(destination), HELD)
        return os.path.join(base, _safe(study_uid)) if study_uid else base

    def add(self, destination: str, path: str, sop_class_uid: str, sop_instance_uid: str,
            transfer_syntax: str, hold_for_study: str = "") -> Ticket:
        """Queue one instance for ``destination``, durably; with
        ``hold_for_study`` it waits until :meth:`release` of that study."""
        folder = self.folder(destination)
        os.makedirs(os.path.join(folder, PARKED), mode=0o700, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._count)}{_SUFFIX}"
        ticket = Ticket(name, path, sop_class_uid, sop_instance_uid, transfer_syntax,
                        study_uid=hold_for_study)
        self._write(self.held_folder(destination, hold_for_study) if hold_for_study
                    else folder, ticket)
        return ticket

    def held(self, destination: str) -> list[tuple[str, float]]:
        """(Study Instance UID, time its newest ticket was written) of each
        study with tickets held for ``destination``."""
        out = []
        try:
            entries = list(os.scandir(self.held_folder(destination)))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.is_dir():
                continue
            names = sorted(n for n in os.listdir(entry.path) if n.endswith(_SUFFIX))
            if not names:
                continue
            newest = os.path.join(entry.path, names[-1])
            with open(newest, encoding="utf-8") as handle:
                study = Ticket(**json.load(handle)).study_uid
            out.append((study, os.stat(newest).st_mtime))
        return out

    def release(self, destination: str, study_uid: str) -> int:
        """Move the tickets held for ``study_uid`` into the queue; how many."""
        held, folder = self.held_folder(destination, study_uid), self.folder(destination)
        try:
            names = sorted(n for n in os.listdir(held) if n.endswith(_SUFFIX))
        except FileNotFoundError:
            return 0
        moved = 0
        for name in names:
            try:
                os.replace(os.path.join(held, name), os.path.join(folder, name))
            except FileNotFoundError:   # released meanwhile by another thread
                continue
            moved += 1
        self._sync_folder(folder)
        self._sync_folder(held)
        return moved

    def due(self, destination: str, now: float, limit: int) -> list[Ticket]:
        """Up to ``limit`` tickets whose next try is due, oldest first."""
        out: list[Ticket] = []
        for ticket in self.tickets(destination):
            if ticket.next_try <= now:
                out.append(ticket)
                if len(out) >= limit:
                    break
        return out

    def tickets(self, destination: str, parked: bool = False) -> list[Ticket]:
        """Every ticket of ``destination`` (or its parked ones), oldest first."""
        folder = self.folder(destination, parked)
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(_SUFFIX))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    out.append(Ticket(**json.load(handle)))
            except FileNotFoundError:
                continue
        return out

    def depth(self, destination: str) -> tuple[int, int]:
        """(queued, parked) tickets of ``destination``."""
        def count(folder: str) -> int:
            try:
                return sum(1 for n in os.listdir(folder) if n.endswith(_SUFFIX))
            except FileNotFoundError:
                return 0
        return count(self.folder(destination)), count(self.folder(destination, True))

    def done(self, destination: str, ticket: Ticket) -> None:
        """The destination acknowledged it: remove the ticket durably."""
        folder = self.folder(destination)
        try:
            os.unlink(os.path.join(folder, ticket.name))
        except FileNotFoundError:
            return
        self._sync_folder(folder)

    def failed(self, destination: str, ticket: Ticket, error: str, next_try: float,
               max_attempts: int) -> bool:
        """Count a failed try; park the ticket after ``max_attempts``.
        Returns whether it was parked."""
        folder = self.folder(destination)
        later = replace(ticket, attempts=ticket.attempts + 1, next_try=next_try,
                        last_error=error[:500])
        if later.attempts >= max_attempts:
            self._write(self.folder(destination, True), later)
            os.unlink(os.path.join(folder, ticket.name))
            self._sync_folder(folder)
            return True
        self._write(folder, later)
        return False

    def retry_parked(self, destination: str) -> int:
        """Move every parked ticket of ``destination`` back into its queue,
        due now, with its attempts reset; how many."""
        moved = 0
        folder, parked = self.folder(destination), self.folder(destination, True)
        for ticket in self.tickets(destination, parked=True):
            self._write(folder, replace(ticket, attempts=0, next_try=0.0))
            os.unlink(os.path.join(parked, ticket.name))
            moved += 1
        if moved:
            self._sync_folder(parked)
        return moved

    def _write(self, folder: str, ticket: Ticket) -> None:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        final = os.path.join(folder, ticket.name)
        temp = final + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(asdict(ticket)).encode())
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
        self._sync_folder(folder)

    def _sync_folder(self, folder: str) -> None:
        if not self.fsync:
            return
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _safe(destination: str) -> str:
    """A folder name for an AE title (printable, no backslash, may hold
    spaces or slashes): kept when plain, else hex."""
    if all(c.isalnum() or c in "-_." for c in destination) and destination not in (".", ".."):
        return destination
    return "x" + destination.encode().hex()
