"""One association at a time per calling AE title: the lock interface.

The statement ("Number of Associations") allows one association at a time per
remote AE.  The lock is keyed on the calling AE title.  This module holds the
interface and the in-process implementation; the Redis-backed one, shared by
several sdcc processes, lives in :mod:`sdcc_twisted.storage.index`.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from zope.interface import Interface, implementer


class IAssociationLock(Interface):
    """Grants at most one live association per calling AE title."""

    def acquire(calling_ae: str) -> "defer.Deferred[object | None]":
        """Try to take the slot of ``calling_ae``.

        Returns:
            A Deferred that fires with an opaque token when the slot was free
            (and is now held), or with ``None`` when another association of
            that AE holds it.  It fails only on an internal error.
        """

    def release(calling_ae: str, token: object) -> "defer.Deferred[None]":
        """Free the slot taken with ``token``; never fails."""


@implementer(IAssociationLock)
class InProcessAssociationLock:
    """The per-AE lock for a single sdcc process."""

    def __init__(self) -> None:
        self._held: dict[str, object] = {}

    def acquire(self, calling_ae: str) -> "defer.Deferred[object | None]":
        """Take the slot if nobody holds it (see :class:`IAssociationLock`)."""
        if calling_ae in self._held:
            return defer.succeed(None)
        token = object()
        self._held[calling_ae] = token
        return defer.succeed(token)

    def release(self, calling_ae: str, token: object) -> "defer.Deferred[None]":
        """Free the slot if ``token`` still holds it."""
        if self._held.get(calling_ae) is token:
            del self._held[calling_ae]
        return defer.succeed(None)

    def held(self) -> frozenset[str]:
        """The calling AE titles that hold a slot now."""
        return frozenset(self._held)


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
        self._local: dict[str, object] = {}

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

    def release(self, calling_ae: str, token: object) -> "defer.Deferred[None]":
        """Release through whichever lock granted ``token``."""
        if self._local.get(calling_ae) is token:
            del self._local[calling_ae]
            return self.fallback.release(calling_ae, token)
        d = self.primary.release(calling_ae, token)
        return d.addErrback(lambda _: None)
