"""Read side of the Redis index, for Query/Retrieve (PS3.4 Annex C).

Every look-up follows the relation sets of :mod:`sdcc_twisted.core.index_keys`
level by level (patients -> studies -> series -> instances) or goes straight
to a hash by its unique key; nothing scans the key space.  A relation set is
read a page at a time (SSCAN), never whole and never sorted, so memory per
request stays bounded however large the index; sizes come from SCARD.  Each
call is bounded by the index timeout and fails with
:class:`~sdcc_twisted.storage.index.IndexUnavailable`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from sdcc_twisted.storage.index import Bounded
from sdcc_twisted.core.index_keys import KeyLayout, key_id, raw_id

#: Ids asked per SSCAN page.
PAGE_SIZE = 500


#: KEYS: instance hashes; the answer: their distinct
#: "sop_class_uid\ntransfer_syntax" pairs.
_PAIRS_SCRIPT = """
local seen, out = {}, {}
for _, key in ipairs(KEYS) do
  local row = redis.call('HMGET', key, 'sop_class_uid', 'transfer_syntax')
  local pair = (row[1] or '') .. '\\n' .. (row[2] or '')
  if not seen[pair] then seen[pair] = true; out[#out + 1] = pair end
end
return out
"""


class RedisCatalog:
    """Hashes and relation sets of the index, read with timeouts.

    Args:
        redis: the txredisapi handler the index writes through.
        clock: for the timeouts.
        key_prefix: the index's key prefix.
        timeout: seconds per call.
    """

    def __init__(self, redis: Any, clock: IReactorTime, key_prefix: str = "sdcc:",
                 timeout: float = 2.0) -> None:
        self._redis = redis
        self._bounded = Bounded(clock, timeout)
        self.layout = KeyLayout(key_prefix)

    def _hash_key(self, level: str, ident: str) -> str:
        layout = self.layout
        if level == "PATIENT":
            return layout.patient(key_id(ident))
        if level == "STUDY":
            return layout.study(key_id(ident))
        if level == "SERIES":
            return layout.series(key_id(ident))
        return layout.instance(ident)

    def attributes(self, level: str, ident: str) -> "defer.Deferred[dict[str, str] | None]":
        """The hash of one entry at ``level`` (PATIENT, STUDY, SERIES, IMAGE)."""
        return self._bounded.run(self._attributes(self._hash_key(level, ident)),
                                 f"read {level} {ident}")

    async def _attributes(self, key: str) -> dict[str, str] | None:
        fields = await self._redis.hgetall(key)
        return dict(fields) if fields else None

    def _set_key(self, level: str, parent: str | None) -> str:
        layout = self.layout
        if level == "PATIENT":
            return layout.patients()
        if level == "STUDY":
            return layout.patient_studies(key_id(parent or ""))
        if level == "SERIES":
            return layout.study_series(key_id(parent or ""))
        return layout.series_instances(key_id(parent or ""))

    def page(self, level: str, parent: str | None,
             cursor: int = 0) -> "defer.Deferred[tuple[int, list[str]]]":
        """One SSCAN page of the values at ``level`` under ``parent`` (Patient
        IDs and UIDs as received, empty included; every
        patient for PATIENT with parent None, the studies of a patient, the
        series of a study, the instances of a series): the next cursor (0 at
        the end) and the ids.  An id may come twice if the set is rehashed
        meanwhile (Redis SSCAN guarantee)."""
        key = self._set_key(level, parent)
        return self._bounded.run(self._page(key, cursor, level != "IMAGE"), f"members {key}")

    async def _page(self, key: str, cursor: int, ids: bool) -> tuple[int, list[str]]:
        reply = await self._redis.sscan(key, cursor, count=PAGE_SIZE)
        next_cursor, found = reply
        # patients, studies and series are held as key ids; instances raw
        return int(next_cursor), [raw_id(str(m)) if ids else str(m) for m in (found or ())]

    async def members(self, level: str, parent: str | None) -> AsyncIterator[str]:
        """The ids at ``level`` under ``parent``, page by page (see :meth:`page`)."""
        cursor = 0
        while True:
            cursor, ids = await self.page(level, parent, cursor)
            for ident in ids:
                yield ident
            if not cursor:
                return

    def syntaxes(self, sop_uids: list[str]) -> "defer.Deferred[set[tuple[str, str]]]":
        """The distinct (SOP class, transfer syntax) pairs of these instances:
        one script call, a small answer."""
        keys = [self.layout.instance(uid) for uid in sop_uids]
        d = self._bounded.run(self._redis.eval(_PAIRS_SCRIPT, keys, []),
                              f"read {len(keys)} instances")
        d.addCallback(lambda found: {tuple(str(p).split("\n", 1)) for p in found or ()})
        return d

    def count(self, level: str, parent: str | None) -> "defer.Deferred[int]":
        """How many values :meth:`members` would give (the set's SCARD)."""
        key = self._set_key(level, parent)
        return self._bounded.run(self._count(key), f"count {key}")

    async def _count(self, key: str) -> int:
        return int(await self._redis.scard(key) or 0)
