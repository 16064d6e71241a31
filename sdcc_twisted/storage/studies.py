"""Which studies have gone quiet: the Redis side of "study complete".

Every stored instance moves its study's entry in a sorted set to the time
it arrived and adds one to the study's counter of new instances
(:meth:`StudyArrivals.note`).  :meth:`StudyArrivals.claim` takes, in one Lua
script, every study whose latest arrival is older than the quiet period:
it removes the entry and reads and deletes the counter.  The script runs
atomically, so however many sdcc processes share the Redis, each quiet
period of a study is claimed exactly once, and a restart loses nothing
that was noted.  An instance arriving after the claim starts the next burst.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from sdcc_twisted.core.index_keys import KeyLayout
from sdcc_twisted.storage.index import Bounded

#: KEYS[1] arrivals, KEYS[2] the study's counter; ARGV[1] now, ARGV[2] study.
NOTE_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""

#: KEYS[1] arrivals; ARGV[1] latest arrival time that counts as quiet,
#: ARGV[2] how many at most, ARGV[3] the counters' key prefix.
#: Returns study, count, study, count, ...
CLAIM_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, study in ipairs(due) do
  redis.call('ZREM', KEYS[1], study)
  local key = ARGV[3] .. study
  local count = redis.call('GET', key)
  redis.call('DEL', key)
  out[#out + 1] = study
  out[#out + 1] = count or '0'
end
return out
"""


class StudyArrivals:
    """Arrival times and counts of studies, in Redis, each call bounded.

    Args:
        redis: a txredisapi handler.
        clock: for the timeouts.
        key_prefix: the index's key prefix.
        timeout: seconds per call.
    """

    def __init__(self, redis: Any, clock: IReactorTime, key_prefix: str = "sdcc:",
                 timeout: float = 2.0) -> None:
        self._redis = redis
        self._bounded = Bounded(clock, timeout)
        self.layout = KeyLayout(key_prefix)

    def note(self, study_uid: str, at: float) -> "defer.Deferred[int]":
        """One more instance of ``study_uid`` arrived at ``at``; fires with
        the study's count of new instances."""
        keys = [self.layout.study_arrivals(), self.layout.study_new_instances(study_uid)]
        return self._bounded.run(defer.maybeDeferred(
            self._redis.eval, NOTE_SCRIPT, keys, [repr(at), study_uid]), f"note {study_uid}")

    def claim(self, quiet_before: float, limit: int = 100) -> "defer.Deferred[list[tuple[str, int]]]":
        """Take the studies whose latest arrival is at or before
        ``quiet_before``: [(Study Instance UID, new instances)]."""
        d = defer.maybeDeferred(self._redis.eval, CLAIM_SCRIPT, [self.layout.study_arrivals()],
                                [repr(quiet_before), str(limit),
                                 self.layout.study_new_instances()])
        d.addCallback(_pairs)
        return self._bounded.run(d, "claim quiet studies")

    def is_waiting(self, study_uid: str) -> "defer.Deferred[bool]":
        """Whether ``study_uid`` has arrivals not yet claimed."""
        d = defer.maybeDeferred(self._redis.zscore, self.layout.study_arrivals(), study_uid)
        d.addCallback(lambda score: score is not None)
        return self._bounded.run(d, f"is {study_uid} waiting")

    def waiting(self) -> "defer.Deferred[int]":
        """How many studies wait for their quiet period to end."""
        return self._bounded.run(defer.maybeDeferred(
            self._redis.zcard, self.layout.study_arrivals()), "count waiting studies")


def _pairs(reply: Any) -> list[tuple[str, int]]:
    items = [v.decode() if isinstance(v, bytes) else str(v) for v in (reply or [])]
    return [(items[n], int(items[n + 1])) for n in range(0, len(items) - 1, 2)]
