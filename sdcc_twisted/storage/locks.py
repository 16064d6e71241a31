"""One association at a time per calling AE title: the lock interface.

The statement ("Number of Associations") allows one association at a time per
remote AE.  The lock is keyed on the calling AE title.  This module holds the
interface and the in-process table of granted slots, which every process
consults first whichever lock backs it: within a process the rule always
holds.  The Redis-backed lock, shared by several sdcc processes, lives in
:mod:`sdcc_twisted.storage.index`; it holds the rule across processes while
Redis answers, and :class:`FallbackAssociationLock` keeps granting (per
process, logged) while it does not.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

#: Called with (calling AE, token) when a granted slot is found taken by
#: another holder (another node took it while Redis did not answer).
LostCallback = Callable[[str, object], None]


class IAssociationLock(Interface):
    """Grants at most one live association per calling AE title."""

    on_lost = Attribute(
        "None, or a LostCallback the user of the lock sets: called when a slot "
        "this lock granted turns out to be held by another holder.")

    def acquire(calling_ae: str) -> "defer.Deferred[object | None]":
        """Try to take the slot of ``calling_ae``.

        Returns:
            A Deferred that fires with an opaque token when the slot was free
            (and is now held), or with ``None`` when another association of
            that AE holds it.  It fails only on an internal error.
        """

    def release(calling_ae: str, token: object) -> "defer.Deferred[None]":
        """Free the slot taken with ``token``; never fails."""


#: Marks a slot whose backing lock has not answered yet.
_ASKING = object()


@implementer(IAssociationLock)
class InProcessAssociationLock:
    """The table of per-AE slots granted in this process.

    Alone it is the lock of a single sdcc process.  With ``backing`` (the
    Redis lock, or its fallback), it is consulted first: a calling AE that
    holds a slot here, or is being asked for, is refused without asking the
    backing lock, whichever lock granted that slot; a free one is granted
    only when the backing lock grants it, with the backing lock's token.
    """

    def __init__(self, backing: IAssociationLock | None = None) -> None:
        self.backing = backing
        self.on_lost: LostCallback | None = None
        self._held: dict[str, object] = {}
        if backing is not None:
            backing.on_lost = self.lost

    def acquire(self, calling_ae: str) -> "defer.Deferred[object | None]":
        """Take the slot if nobody in this process holds it (see :class:`IAssociationLock`)."""
        if calling_ae in self._held:
            return defer.succeed(None)
        if self.backing is None:
            token = object()
            self._held[calling_ae] = token
            return defer.succeed(token)
        self._held[calling_ae] = _ASKING

        def granted(token: object | None) -> object | None:
            if token is None:
                del self._held[calling_ae]
            else:
                self._held[calling_ae] = token
            return token

        def failed(failure: Failure) -> Failure:
            del self._held[calling_ae]
            return failure
        return self.backing.acquire(calling_ae).addCallbacks(granted, failed)

    def release(self, calling_ae: str, token: object) -> "defer.Deferred[None]":
        """Free the slot if ``token`` still holds it; the backing lock's too."""
        if self._held.get(calling_ae) is token:
            del self._held[calling_ae]
        if self.backing is not None:
            return self.backing.release(calling_ae, token)
        return defer.succeed(None)

    def lost(self, calling_ae: str, token: object) -> None:
        """The backing lock found the slot of ``token`` taken by another
        holder: it is no longer granted here; :attr:`on_lost` ends its
        association."""
        if self._held.get(calling_ae) is token:
            del self._held[calling_ae]
            if self.on_lost is not None:
                self.on_lost(calling_ae, token)

    def held(self) -> frozenset[str]:
        """The calling AE titles that hold a slot now."""
        return frozenset(ae for ae, token in self._held.items() if token is not _ASKING)


@implementer(IAssociationLock)
class FallbackAssociationLock:
    """A shared lock that falls back to a local one when it fails.

    When the shared (Redis) lock cannot answer, receiving images matters more
    than the fleet-wide rule: the local lock still enforces the rule within
    this process, and the failure is logged by the caller's logger.
    """

    def __init__(self, primary: IAssociationLock, fallback: IAssociationLock,
                 on_fallback: "Callable[[str, object], None] | None" = None) -> None:
        self.primary = primary
        self.fallback = fallback
        self.on_fallback = on_fallback
        self.on_lost: LostCallback | None = None
        self._local: dict[str, object] = {}
        primary.on_lost = self._lost

    def acquire(self, calling_ae: str) -> "defer.Deferred[object | None]":
        """Ask the primary lock; on its failure, the fallback one."""
        d = self.primary.acquire(calling_ae)

        def failed(failure: object) -> "defer.Deferred[object | None]":
            if self.on_fallback is not None:
                self.on_fallback(calling_ae, failure)
            local = self.fallback.acquire(calling_ae)

            def mark(token: object | None) -> object | None:
                if token is not None:
                    self._local[calling_ae] = token
                return token
            return local.addCallback(mark)
        return d.addErrback(failed)

    def _lost(self, calling_ae: str, token: object) -> None:
        if self.on_lost is not None:
            self.on_lost(calling_ae, token)

    def release(self, calling_ae: str, token: object) -> "defer.Deferred[None]":
        """Release through whichever lock granted ``token``."""
        if self._local.get(calling_ae) is token:
            del self._local[calling_ae]
            return self.fallback.release(calling_ae, token)
        d = self.primary.release(calling_ae, token)
        return d.addErrback(lambda _: None)
