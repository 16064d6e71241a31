"""Several nodes on one storage root: ``[server] node_id`` and each node's own
folders (temp files, write-ahead log, pending journal).

The interop tests run two real ``twistd sdcc`` processes on one data
directory, one storage root and one real redis-server, with DCMTK storescu
and a raw peer that stops mid-transfer.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sdcc_twisted.config import ConfigError, default_node_id, parse_settings, valid_node_id
from sdcc_twisted.storage.journal import IndexLog, PendingJournal
from sdcc_twisted.storage.nodes import NodePaths, adopt_legacy_files

from . import corpus
from .redis_support import start_redis, wait_for
from .server_support import TwistdServer, dcmtk, free_port, in_thread, ini_text
from .test_interop_faults import CT, PartialStore, big_ct
from .test_interop_store import (
    PREFIX,
    check_indexed,
    check_stored,
    dcm_files,
    expected_path,
    instance_keys,
    storescu_successes,
    temp_files,
)


class NodeIdSettingsTests(SynchronousTestCase):
    """``[server] node_id``: default, accepted and refused values."""

    def test_default_is_the_host_name(self) -> None:
        """Without node_id, the node is named after the host, as a safe
        path part."""
        settings = parse_settings("", "empty.ini")
        self.assertEqual(settings.server.node_id, default_node_id())
        self.assertTrue(valid_node_id(settings.server.node_id))

    def test_accepted(self) -> None:
        """Letters, digits, dots, underscores and dashes are a node id."""
        for value in ("a", "node-1", "pacs.example.org", "N_2", "x" * 64):
            with self.subTest(value=value):
                settings = parse_settings(f"[server]\nnode_id = {value}\n", "n.ini")
                self.assertEqual(settings.server.node_id, value)

    def test_refused_names_section_and_key(self) -> None:
        """A node id that is no safe folder name (path separators, dot
        names, spaces, too long) stops start-up naming [server] node_id."""
        for value in ("../x", "a/b", ".hidden", "..", "two words", "x" * 65, "-dash", "é"):
            with self.subTest(value=value):
                with self.assertRaises(ConfigError) as caught:
                    parse_settings(f"[server]\nnode_id = {value}\n", "n.ini")
                self.assertIn("n.ini: [server] node_id", str(caught.exception))


class NodePathsTests(SynchronousTestCase):
    """Where a node's own files go, and the files an older version left."""

    def test_paths(self) -> None:
        """Temp files under {root}/.tmp/{node_id}; the log and the journal
        under {data_dir}/nodes/{node_id}."""
        paths = NodePaths.for_node("/d", "/r", "n1")
        self.assertEqual(paths, NodePaths("n1", "/r/.tmp/n1", "/d/nodes/n1",
                                          "/d/nodes/n1/pending"))

    def test_adopt_legacy_files(self) -> None:
        """Log segments and journal entries left directly in data_dir by a
        version without node folders move into the node's folders, where
        start-up recovery finds them; other files stay."""
        data_dir = os.path.abspath(self.mktemp())
        legacy_journal = PendingJournal.in_data_dir(data_dir)
        rec = corpus_record("1.2.3.4")
        legacy_journal.append(rec)
        legacy_log = IndexLog.in_data_dir(data_dir, fsync=False)
        legacy_log.append(corpus_record("1.2.3.5"), legacy_log.reserve())
        legacy_log.close()
        with open(os.path.join(data_dir, "redis.aof"), "w") as handle:
            handle.write("kept")
        paths = NodePaths.for_node(data_dir, os.path.join(data_dir, "store"), "n1")
        self.assertEqual(adopt_legacy_files(data_dir, paths), 2)
        self.assertEqual(sorted(os.listdir(data_dir)), ["nodes", "pending", "redis.aof"])
        self.assertEqual(os.listdir(os.path.join(data_dir, "pending")), [])
        journal = PendingJournal(paths.journal_dir)
        index_log = IndexLog(paths.node_dir, fsync=False)
        self.addCleanup(index_log.close)
        self.assertEqual(index_log.recover(journal), 1)
        self.assertEqual(sorted(r.sop_instance_uid for _, r in journal.entries()),
                         ["1.2.3.4", "1.2.3.5"])
        self.assertEqual(adopt_legacy_files(data_dir, paths), 0)


def corpus_record(uid: str) -> object:
    """A minimal instance record for ``uid``."""
    from sdcc_twisted.core.records import InstanceRecord

    return InstanceRecord(sop_instance_uid=uid, sop_class_uid=CT, path=f"/r/{uid}.dcm",
                          size=1, transfer_syntax="1.2.840.10008.1.2.1", calling_ae="AE",
                          received_at=1.0, attributes={})


class TwoNodes:
    """Two ``twistd sdcc`` processes, ``node-a`` and ``node-b``, sharing one
    data directory, one storage root and one redis-server."""

    def __init__(self, testcase: TestCase) -> None:
        self.testcase = testcase
        self.redis = start_redis(testcase)
        self.base = os.path.abspath(testcase.mktemp())
        os.makedirs(self.base)
        self.data_dir = os.path.join(self.base, "data")
        self.root = os.path.join(self.data_dir, "store")
        self.ports = {name: free_port() for name in ("node-a", "node-b")}
        self.inis = {}
        for name, port in self.ports.items():
            ini = os.path.join(self.base, f"{name}.ini")
            with open(ini, "w", encoding="utf-8") as handle:
                handle.write(ini_text(self.data_dir, self.redis.url, port=port,
                                      server={"node_id": name}))
            self.inis[name] = ini
        self.servers: dict[str, TwistdServer] = {}

    def start(self, name: str) -> TwistdServer:
        """Start (or start again) one node and wait until it listens."""
        server = TwistdServer(self.testcase, self.inis[name])
        server.start(self.ports[name])
        self.servers[name] = server
        return server

    def temp_dir(self, name: str) -> str:
        """The node's temp folder."""
        return os.path.join(self.root, ".tmp", name)


class TwoNodeTests(TestCase):
    """Two real nodes on one storage root."""

    timeout = 180

    async def test_restart_keeps_the_other_nodes_temp_files(self) -> None:
        """Both nodes are mid-transfer; node-b is killed with SIGKILL and
        started again.  Its own partial file is removed at start-up, node-a's
        stays and keeps growing while node-a receives, and node-a removes it
        itself when its peer goes away."""
        nodes = TwoNodes(self)
        nodes.start("node-a")
        nodes.start("node-b")
        sample = big_ct(os.path.join(nodes.base, "big.dcm"))
        data_set = corpus.data_set_bytes(sample.path)
        peer_a = PartialStore(nodes.ports["node-a"], "PEERA", sample.sop_instance_uid, data_set)
        peer_b = PartialStore(nodes.ports["node-b"], "PEERB", sample.sop_instance_uid, data_set)
        await in_thread(peer_a.start)
        await in_thread(peer_b.start)
        for name in ("node-a", "node-b"):
            await wait_for(lambda: any(os.path.getsize(p) > 0
                                       for p in temp_files(nodes.root)
                                       if p.startswith(nodes.temp_dir(name) + os.sep)),
                           10, f"a growing .part file of {name}")
        [a_part] = os.listdir(nodes.temp_dir("node-a"))
        a_path = os.path.join(nodes.temp_dir("node-a"), a_part)
        size_before = os.path.getsize(a_path)
        self.assertEqual(len(os.listdir(nodes.temp_dir("node-b"))), 1)

        nodes.servers["node-b"].kill()
        await in_thread(peer_b.end, "fin")
        restarted = nodes.start("node-b")
        self.assertEqual(os.listdir(nodes.temp_dir("node-b")), [])
        self.assertEqual(os.listdir(nodes.temp_dir("node-a")), [a_part],
                         restarted.log()[-2000:])
        # node-a is still receiving into the same file
        await in_thread(peer_a.send_more, 200_000)
        await wait_for(lambda: os.path.getsize(a_path) > size_before, 10,
                       "node-a's temp file to grow")
        await in_thread(peer_a.end, "fin")
        await wait_for(lambda: not temp_files(nodes.root), 10,
                       "node-a to remove its own temp file")
        self.assertEqual(dcm_files(nodes.root), [])
        self.assertEqual(instance_keys(nodes.redis.client()), [])

    async def test_same_instances_on_both_nodes_at_once(self) -> None:
        """Two storescu processes send the same 12 instances, in the same
        order and at the same moment, one to each node: every instance is
        acknowledged by both, and each remains as exactly one file and one
        index entry, with its data set bytes intact; no temp file is left."""
        nodes = TwoNodes(self)
        nodes.start("node-a")
        nodes.start("node-b")
        study, series = corpus.new_uid(), corpus.new_uid()
        samples = [corpus.write_small(os.path.join(nodes.base, "in", f"{n}.dcm"), CT,
                                      study=study, series=series, number=n, rows=256,
                                      columns=256)
                   for n in range(12)]
        paths = [s.path for s in samples]

        def send(name: str, calling: str) -> defer.Deferred:
            return defer.Deferred.fromCoroutine(dcmtk(
                self, "storescu", "-v", "-aet", calling, "-aec", "SDCC", "127.0.0.1",
                str(nodes.ports[name]), *paths, timeout=120))

        results = await defer.gatherResults([send("node-a", "SENDA"),
                                             send("node-b", "SENDB")])
        for out, code in results:
            self.assertEqual((code, storescu_successes(out)), (0, len(samples)), out)
        client = nodes.redis.client()
        self.assertEqual(len(instance_keys(client)), len(samples))
        self.assertEqual(dcm_files(nodes.root), sorted(expected_path(nodes.root, s)
                                                       for s in samples))
        self.assertEqual(temp_files(nodes.root), [])
        for sample in samples:
            path = expected_path(nodes.root, sample)
            # which node's copy is on disk, and which one's record the entry
            # holds, is up to the race (both name the same file)
            fields = check_indexed(self, client, sample, path)
            self.assertIn(fields["calling_ae"], ("SENDA", "SENDB"))
            self.assertEqual(corpus.data_set_bytes(path),
                             corpus.data_set_bytes(sample.path))
        self.assertEqual(client.scard(f"{PREFIX}series_instances:{samples[0].series_uid}"),
                         len(samples))

    async def test_same_instances_in_other_series_on_both_nodes_at_once(self) -> None:
        """The same 12 SOP Instance UIDs reach node-a in one series and
        node-b in another, at the same moment: for each UID exactly one file
        remains, in either series, and the one index entry points to it."""
        nodes = TwoNodes(self)
        nodes.start("node-a")
        nodes.start("node-b")
        study = corpus.new_uid()
        uids = [corpus.new_uid() for _ in range(12)]
        versions = {}
        for name in ("node-a", "node-b"):
            series = corpus.new_uid()
            versions[name] = [corpus.write_small(
                os.path.join(nodes.base, name, f"{n}.dcm"), CT, study=study, series=series,
                sop_instance=uid, number=n, rows=256, columns=256)
                for n, uid in enumerate(uids)]

        def send(name: str) -> defer.Deferred:
            return defer.Deferred.fromCoroutine(dcmtk(
                self, "storescu", "-v", "-aet", name.upper().replace("-", ""), "-aec",
                "SDCC", "127.0.0.1", str(nodes.ports[name]),
                *[s.path for s in versions[name]], timeout=120))

        results = await defer.gatherResults([send("node-a"), send("node-b")])
        for out, code in results:
            self.assertEqual((code, storescu_successes(out)), (0, len(uids)), out)
        client = nodes.redis.client()
        await wait_for(lambda: not temp_files(nodes.root), 10, "no temp file")
        self.assertEqual(len(instance_keys(client)), len(uids))
        files = dcm_files(nodes.root)
        self.assertEqual(len(files), len(uids), files)
        for n, uid in enumerate(uids):
            path = client.hget(f"{PREFIX}instance:{uid}", "path")
            winner = {expected_path(nodes.root, versions[name][n]): name
                      for name in versions}.get(path)
            self.assertIsNotNone(winner, path)
            self.assertIn(path, files)
            check_stored(self, nodes.root, client, versions[winner][n],
                         winner.upper().replace("-", ""))
