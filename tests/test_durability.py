"""Nothing acknowledged is lost: faults CAUSED on real volumes and peers.

Each test makes the fault happen for real (a tmpfs filled to ENOSPC, a
read-only bind mount, a stopped redis-server) while a real peer (pynetdicom)
stores, then checks the Deliver rule of issue 11: 0x0000 only when a complete
synced record of the instance exists (index log line, journal entry or index
entry); otherwise A700/A702 with an Error Comment and no file left.  The
free-space floor (tests.test_space) is off here (``min_free_space = 0``), so
that the stores reach the holes behind it.
"""

from __future__ import annotations

import os
from typing import Any

import redis as redis_py
from twisted.trial.unittest import TestCase

from sdcc_twisted.core import conformance as c
from sdcc_twisted.storage.journal import IndexLog

from . import corpus
from .redis_support import sleep, start_redis, wait_for
from .server_support import in_thread, start_server
from .test_interop_store import PREFIX, check_stored, dcm_files, pynetdicom_store
from .volume_support import fill, free, read_only, small_volume, unmount

CT = "1.2.840.10008.5.1.4.1.1.2"
CONTEXTS = [(CT, [c.EXPLICIT_VR_LITTLE_ENDIAN])]
DISK_STATUSES = {c.STATUS_DISK_FULL, c.STATUS_OUT_OF_RESOURCES}


def samples(testcase: TestCase, count: int) -> list[corpus.Sample]:
    """``count`` small CT instances of one study, in a temp directory."""
    base = testcase.mktemp()
    study = corpus.new_uid()
    return [corpus.write_small(os.path.join(base, f"{n}.dcm"), CT, study=study,
                               number=n + 1) for n in range(count)]


def record_kinds(data_dir: str, client: Any, uid: str) -> list[str]:
    """Where a record of ``uid`` exists: index, log, journal (the log and
    the journal are in the node's folder under ``data_dir``)."""
    kinds = []
    if client is not None and client.exists(f"{PREFIX}instance:{uid}"):
        kinds.append("index")
    for directory, _, names in sorted(os.walk(data_dir)):
        for name in sorted(names):
            in_journal = os.path.basename(directory) == "pending"
            if not (name.startswith("index.wal.") or in_journal):
                continue
            with open(os.path.join(directory, name), "rb") as handle:
                if uid.encode() in handle.read():
                    kinds.append("journal" if in_journal else "log")
    return kinds


class FullVolumeTests(TestCase):
    """``data_dir`` on a small tmpfs filled to ENOSPC (finding 1)."""

    timeout = 120

    async def test_no_success_without_a_record(self) -> None:
        """Redis is down and data_dir is full: the index log line, the index
        and the journal all fail, so no store is answered 0x0000; each gets
        A702 with an Error Comment and its file is removed.  Once space and
        Redis are back, the same instances are stored and indexed."""
        redis = start_redis(self)
        data_dir = small_volume(self, 256 * 1024)
        root = os.path.abspath(self.mktemp())
        server = await start_server(self, redis, server={"data_dir": data_dir},
                                    storage={"root": root, "fsync": "yes",
                                             "min_free_space": "0"},
                                    index={"timeout": "0.3"})
        redis.stop()
        fill(data_dir)
        items = samples(self, 5)
        result = await in_thread(pynetdicom_store, server.port,
                                 [x.path for x in items], CONTEXTS, "FULLVOL")
        statuses = result["statuses"]
        self.assertEqual([s[0] for s in statuses], [c.STATUS_DISK_FULL] * 5, statuses)
        self.assertTrue(all(comment for _, comment in statuses), statuses)
        self.assertEqual(dcm_files(root), [], "files of failed stores were left")

        free(data_dir)
        redis.start()
        result = await in_thread(pynetdicom_store, server.port,
                                 [x.path for x in items], CONTEXTS, "FULLVOL")
        self.assertEqual([s[0] for s in result["statuses"]], [0] * 5, result)
        client = redis.client()
        await wait_for(lambda: all(client.exists(f"{PREFIX}instance:{x.sop_instance_uid}")
                                   for x in items), 10, "the index entries")
        for sample in items:
            check_stored(self, root, client, sample, "FULLVOL")

    async def test_embedded_redis_on_the_full_volume(self) -> None:
        """The reported case: the embedded Redis keeps its append-only file
        on the full data_dir.  Of 20 stores, every one answered 0x0000 has a
        record somewhere, and after space comes back and a restart every one
        of them is indexed; every other one left no file."""
        data_dir = small_volume(self, 1024 * 1024)
        root = os.path.abspath(self.mktemp())
        sections = dict(server={"data_dir": data_dir}, index={"timeout": "0.5"},
                        storage={"root": root, "fsync": "yes", "min_free_space": "0"})
        server = await start_server(self, embedded=True, **sections)
        fill(data_dir)
        items = samples(self, 20)
        result = await in_thread(pynetdicom_store, server.port,
                                 [x.path for x in items], CONTEXTS, "FULLVOL")
        statuses = [s[0] for s in result["statuses"]]
        acknowledged = [x for x, s in zip(items, statuses) if s == 0]
        refused = [x for x, s in zip(items, statuses) if s != 0]
        self.assertTrue(set(statuses) <= {0} | DISK_STATUSES, result)
        self.assertTrue(all(comment for s, comment in result["statuses"] if s), result)
        for sample in refused:
            self.assertFalse(os.path.exists(os.path.join(
                root, sample.study_uid, sample.series_uid, sample.sop_instance_uid + ".dcm")))

        await server.service.stopService()
        free(data_dir)
        again = await start_server(self, embedded=True, **sections)
        client = redis_py.Redis(unix_socket_path=again.service.embedded.socket_path,
                                decode_responses=True, socket_timeout=5)
        self.addCleanup(client.close)
        await wait_for(lambda: all(client.exists(f"{PREFIX}instance:{x.sop_instance_uid}")
                                   for x in acknowledged), 20, "the acknowledged instances")
        for sample in acknowledged:
            check_stored(self, root, client, sample, "FULLVOL")
        self.assertEqual(len(dcm_files(root)), len(acknowledged))


class JournalFailureTests(TestCase):
    """The index log line is the only copy: it is never retired."""

    timeout = 60

    async def test_logged_record_kept_when_journal_fails(self) -> None:
        """Redis is down and the journal directory is read-only (EROFS):
        the stores are answered 0x0000 from their index log lines, and those
        lines are not retired although a segment turns over per record; after
        a restart with Redis and the journal back, all 3 are indexed."""
        self.patch(IndexLog, "SEGMENT_RECORDS", 1)
        redis = start_redis(self)
        data_dir = os.path.abspath(self.mktemp())
        root = os.path.join(data_dir, "store")
        sections = dict(server={"data_dir": data_dir}, index={"timeout": "0.3"},
                        storage={"fsync": "yes"})
        server = await start_server(self, redis, **sections)
        pending = server.service.journal.directory
        os.makedirs(pending, exist_ok=True)
        read_only(self, pending)
        redis.stop()
        items = samples(self, 3)
        result = await in_thread(pynetdicom_store, server.port,
                                 [x.path for x in items], CONTEXTS, "EROFS")
        self.assertEqual([s[0] for s in result["statuses"]], [0] * 3, result)
        for sample in items:
            self.assertEqual(record_kinds(data_dir, None, sample.sop_instance_uid), ["log"])
        await sleep(0.5)             # the last Redis batch's own deadline passes
        await server.service.stopService()
        unmount(pending)
        redis.start()
        await start_server(self, redis, **sections)
        client = redis.client()
        await wait_for(lambda: all(client.exists(f"{PREFIX}instance:{x.sop_instance_uid}")
                                   for x in items), 20, "the acknowledged instances")
        for sample in items:
            check_stored(self, root, client, sample, "EROFS")
