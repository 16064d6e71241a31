"""Leaves beside the core: the streaming Part 10 file store, the Redis index and
its read side, the write-ahead log and pending journal, the embedded Redis,
and the per-AE association locks.
"""
