"""How much Redis memory the index takes per instance.

    python bench/index_memory.py                 # 100000 instances
    python bench/index_memory.py --instances 1000000 --per-series 200

Starts a private redis-server (no persistence) on a unix socket in a temp
folder, records generated instances through sdcc's own ``RedisIndex`` (the
same Lua script and keys a running server writes: realistic UIDs, paths and
the C-FIND attributes), then reports ``used_memory`` growth per instance and
``MEMORY USAGE`` of a sample of each key kind.  Stops the server by its PID.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from sdcc_twisted.core.records import InstanceRecord  # noqa: E402
from sdcc_twisted.storage.index import RedisIndex, connect_redis  # noqa: E402

ROOT = "/srv/dicom/store"
CT = "1.2.840.10008.5.1.4.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def uid(rng: random.Random) -> str:
    """A UID as long as the ones modalities send (about 55 characters)."""
    return UID_ROOT + ".".join(str(rng.randrange(10 ** 9, 10 ** 10)) for _ in range(3))


def records(n: int, per_series: int, series_per_study: int, seed: int = 1) -> Any:
    """``n`` CT instance records in studies of series of ``per_series``."""
    rng = random.Random(seed)
    made = 0
    while made < n:
        patient = f"PID{rng.randrange(10 ** 7):07d}"
        study = uid(rng)
        for s in range(series_per_study):
            series = uid(rng)
            for k in range(per_series):
                if made == n:
                    return
                sop = uid(rng)
                attributes = {
                    "PatientName": "Doe^Jane", "PatientID": patient,
                    "PatientBirthDate": "19700101", "PatientSex": "F",
                    "StudyInstanceUID": study, "StudyDate": "20261204",
                    "StudyTime": "101112", "AccessionNumber": f"ACC{made // 1000}",
                    "StudyID": "1", "StudyDescription": "CT CHEST",
                    "ReferringPhysicianName": "Ref^Doctor",
                    "SeriesInstanceUID": series, "Modality": "CT",
                    "SeriesNumber": str(s + 1), "SeriesDescription": "AXIAL 1.0",
                    "SeriesDate": "20261204", "SeriesTime": "101112",
                    "SOPInstanceUID": sop, "SOPClassUID": CT,
                    "InstanceNumber": str(k + 1), "ContentDate": "20261204",
                    "ContentTime": "101113",
                }
                yield InstanceRecord(
                    sop_instance_uid=sop, sop_class_uid=CT,
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path=f"{ROOT}/{study}/{series}/{sop}.dcm", size=526_000,
                    received_at=time.time(), calling_ae="CT1", attributes=attributes)
                made += 1


def redis_cli(sock: str, *args: str) -> str:
    return subprocess.run(["redis-cli", "-s", sock, *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def sample_keys(sock: str, pattern: str, n: int) -> list[str]:
    """Up to ``n`` keys matching ``pattern`` (SCAN, stopping early)."""
    found: list[str] = []
    cursor = "0"
    while len(found) < n:
        cursor, *keys = redis_cli(sock, "scan", cursor, "match", pattern,
                                  "count", "10000").split()
        found += keys
        if cursor == "0":
            break
    return found[:n]


async def fill(reactor: Any, sock: str, opts: argparse.Namespace) -> None:
    redis = connect_redis("unix://" + sock, reactor, poolsize=4)
    index = RedisIndex(redis, reactor, timeout=30.0)
    base = int(dict(line.split(":", 1) for line in redis_cli(sock, "info", "memory")
                    .splitlines() if ":" in line)["used_memory"])
    started = time.monotonic()
    window: list[defer.Deferred[Any]] = []
    for rec in records(opts.instances, opts.per_series, opts.series_per_study):
        window.append(index.record(rec))
        if len(window) >= 256:
            await defer.gatherResults(window)
            window = []
    await defer.gatherResults(window)
    took = time.monotonic() - started
    info = dict(line.split(":", 1) for line in redis_cli(sock, "info", "memory").splitlines()
                if ":" in line)
    used = int(info["used_memory"]) - base
    print(f"{opts.instances} instances ({opts.per_series} per series, "
          f"{opts.series_per_study} series per study) recorded in {took:.1f} s")
    print(f"used_memory grew by {used / 2 ** 20:.1f} MiB: {used / opts.instances:.0f} bytes "
          f"per instance (all keys); keys: {redis_cli(sock, 'dbsize')}")
    for pattern in ("sdcc:instance:*", "sdcc:series_instances:*", "sdcc:series:*",
                    "sdcc:study:*", "sdcc:study_series:*", "sdcc:patient:*"):
        keys = sample_keys(sock, pattern, 50)
        sizes = [int(redis_cli(sock, "memory", "usage", k)) for k in keys]
        if sizes:
            print(f"MEMORY USAGE {pattern:28} mean {sum(sizes) / len(sizes):8.0f} bytes "
                  f"({len(sizes)} sampled)")
    await redis.disconnect()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=100_000)
    p.add_argument("--per-series", type=int, default=100)
    p.add_argument("--series-per-study", type=int, default=3)
    p.add_argument("--hash-max-listpack-value", type=int, default=64,
                   help="redis-server's setting (its default 64; a stored path is "
                        "longer, which makes every instance hash a hashtable)")
    opts = p.parse_args()
    directory = tempfile.mkdtemp(prefix="sdcc-index-memory-")
    sock = os.path.join(directory, "redis.sock")
    server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock,
                               "--save", "", "--appendonly", "no", "--dir", directory,
                               "--hash-max-listpack-value",
                               str(opts.hash_max_listpack_value)],
                              stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        while not os.path.exists(sock):
            time.sleep(0.05)
        task.react(lambda reactor: defer.Deferred.fromCoroutine(fill(reactor, sock, opts)))
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
