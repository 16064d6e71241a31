"""Tests for sdcc_twisted.admin (sdcc-admin) against a real redis-server."""

from __future__ import annotations

import io
import os
import textwrap

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet import reactor
from twisted.trial import unittest

from sdcc_twisted import admin
from sdcc_twisted.storage.index import RedisIndex
from sdcc_twisted.core.index_keys import KeyLayout

from .redis_support import connect, start_redis

CT = "1.2.840.10008.5.1.4.1.1.2"

#: (sop, series, study, patient id, patient name, modality)
FILES = [
    ("1.9.1.1.1", "1.9.1.1", "1.9.1", "PAT-1", "Doe^Jane", "CT"),
    ("1.9.1.1.2", "1.9.1.1", "1.9.1", "PAT-1", "Doe^Jane", "CT"),
    ("1.9.1.2.1", "1.9.1.2", "1.9.1", "PAT-1", "Doe^Jane", "MR"),
    ("1.9.2.1.1", "1.9.2.1", "1.9.2", "PAT-2", "Roe^Rick", "CT"),
    ("1.9.3.1.1", "1.9.3.1", "1.9.3", "", "", "OT"),
]


def write_dicom(path: str, sop: str, series: str, study: str, patient: str,
                name: str, modality: str, source_ae: str = "STORESCU") -> None:
    """A small Part 10 file as sdcc would have stored it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = source_ae
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = patient
    ds.PatientName = name
    ds.Modality = modality
    ds.StudyDate = "20240315"
    ds.StudyDescription = "Chest"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 12
    ds.PixelData = b"\0" * 16
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


class FileTreeCase(unittest.TestCase):
    """A real redis-server and a temp tree of pydicom-written files."""

    def setUp(self) -> None:
        self.server = start_redis(self)
        self.client = self.server.client()
        self.addCleanup(self.client.close)
        self.root = os.path.abspath(self.mktemp())
        for sop, series, study, pid, name, modality in FILES:
            write_dicom(os.path.join(self.root, study, series, sop + ".dcm"),
                        sop, series, study, pid, name, modality)


class AdminTests(FileTreeCase):
    """rebuild, list and show over a temp tree of pydicom-written files."""

    def run_admin(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = admin.main(list(argv), out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def dump(self, prefix: str) -> dict[str, object]:
        """Every key under ``prefix`` (without it) -> its value."""
        result: dict[str, object] = {}
        for key in self.client.scan_iter(match=prefix + "*"):
            kind = self.client.type(key)
            value = (self.client.hgetall(key) if kind == "hash"
                     else self.client.smembers(key))
            result[key[len(prefix):]] = value
        return result

    async def test_rebuild_reproduces_the_index(self) -> None:
        """rebuild writes exactly what RedisIndex.record writes for the same
        files, and deletes stale keys but not locks."""
        index = RedisIndex(connect(self, self.server), reactor, key_prefix="live:")
        for path in admin.dicom_files(self.root):
            await index.record(admin.read_record(path))
        self.client.set("re:stale", "x")
        self.client.set("re:lock:ae:CT1", "token")

        code, out, err = self.run_admin("--redis", self.server.url, "--root",
                                        self.root, "--key-prefix", "re:",
                                        "rebuild")
        self.assertEqual(code, 0, err)
        self.assertIn("5 instances indexed from 5 files", out)
        self.assertIn("\r[", err)
        self.assertIn("] 5/5", err)
        self.assertEqual(self.client.get("re:lock:ae:CT1"), "token")
        self.client.delete("re:lock:ae:CT1")
        self.assertEqual(self.dump("re:"), self.dump("live:"))

    def test_record_from_file(self) -> None:
        """read_record takes identity from the file meta and the C-FIND
        attributes from the data set, as text."""
        path = os.path.join(self.root, "1.9.1", "1.9.1.1", "1.9.1.1.1.dcm")
        rec = admin.read_record(path)
        self.assertEqual(rec.sop_instance_uid, "1.9.1.1.1")
        self.assertEqual(rec.sop_class_uid, CT)
        self.assertEqual(rec.transfer_syntax, ExplicitVRLittleEndian)
        self.assertEqual(rec.calling_ae, "STORESCU")
        self.assertEqual(rec.path, path)
        self.assertEqual(rec.size, os.path.getsize(path))
        self.assertEqual(rec.attributes["PatientName"], "Doe^Jane")
        self.assertEqual(rec.attributes["SeriesNumber"], "3")
        self.assertEqual(rec.attributes["StudyDate"], "20240315")

    def test_list_and_show(self) -> None:
        """list prints the patient/study/series tree with instance counts;
        show prints what the index holds for each kind of id."""
        self.assertEqual(self.run_admin("--redis", self.server.url, "--root",
                                        self.root, "rebuild")[0], 0)
        code, out, _ = self.run_admin("--redis", self.server.url, "list")
        self.assertEqual(code, 0)
        self.assertIn(textwrap.dedent("""\
            Patient PAT-1  Doe^Jane
              Study 1.9.1  20240315  Chest
                Series 1.9.1.1  CT  (2 instances)
                Series 1.9.1.2  MR  (1 instance)
            Patient PAT-2  Roe^Rick
            """), out)
        self.assertIn("Patient (none)\n", out)
        self.assertIn("3 patients, 3 studies, 4 series, 5 instances", out)

        code, out, _ = self.run_admin("--redis", self.server.url, "show", "1.9.1.1")
        self.assertEqual(code, 0)
        self.assertIn("Series 1.9.1.1  (sdcc:series:1.9.1.1)", out)
        self.assertIn("2 instances:\n    1.9.1.1.1\n    1.9.1.1.2\n", out)
        code, out, _ = self.run_admin("--redis", self.server.url, "show",
                                      "1.9.1.1.2")
        self.assertIn("Instance 1.9.1.1.2", out)
        self.assertIn("calling_ae", out)
        code, out, _ = self.run_admin("--redis", self.server.url, "show", "PAT-2")
        self.assertIn("Patient PAT-2", out)
        self.assertIn("1 studies:\n    1.9.2\n", out)
        code, _, err = self.run_admin("--redis", self.server.url, "show", "7.7")
        self.assertEqual(code, admin.EXIT_NOT_FOUND)
        self.assertIn("No patient, study, series or instance '7.7'", err)

    def test_empty_list(self) -> None:
        """list on an empty index says so."""
        code, out, _ = self.run_admin("--redis", self.server.url, "list")
        self.assertEqual(code, 0)
        self.assertIn("is empty", out)

    def test_duplicate_newest_wins(self) -> None:
        """Two files with one SOP Instance UID: the newer file is indexed,
        once."""
        older = os.path.join(self.root, "1.9.1", "1.9.1.1", "1.9.1.1.1.dcm")
        newer = os.path.join(self.root, "0.other", "1.9.7.1", "copy.dcm")
        write_dicom(newer, "1.9.1.1.1", "1.9.7.1", "1.9.1", "PAT-1", "Doe^Jane", "CT")
        os.utime(older, (1000, 1000))
        code, out, _ = self.run_admin("--redis", self.server.url, "--root",
                                      self.root, "rebuild")
        self.assertEqual(code, 0)
        self.assertIn("1 duplicate", out)
        self.assertEqual(self.client.hget("sdcc:instance:1.9.1.1.1", "path"), newer)
        self.assertEqual(self.client.smembers("sdcc:series_instances:1.9.1.1"),
                         {"1.9.1.1.2"})

    def test_unreadable_file_skipped(self) -> None:
        """A .dcm that is not DICOM is reported and skipped."""
        with open(os.path.join(self.root, "junk.dcm"), "wb") as handle:
            handle.write(b"not dicom")
        code, out, err = self.run_admin("--redis", self.server.url, "--root",
                                        self.root, "rebuild")
        self.assertEqual(code, 0)
        self.assertIn("1 unreadable", out)
        self.assertIn("skipped " + os.path.join(self.root, "junk.dcm"), err)

    def test_config_file(self) -> None:
        """--config takes [storage] root, [index] redis and key_prefix."""
        config = self.mktemp()
        with open(config, "w") as handle:
            handle.write(f"[storage]\nroot = {self.root}\n"
                         f"[index]\nredis = {self.server.url}\nkey_prefix = cfg:\n")
        code, out, err = self.run_admin("--config", config, "rebuild")
        self.assertEqual(code, 0, err)
        self.assertTrue(self.client.exists("cfg:instance:1.9.2.1.1"))

    def test_config_relative_paths(self) -> None:
        """Relative paths in --config are taken from the file's folder, as
        the server takes them, whatever the working directory."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "etc"))
        os.symlink(self.root, os.path.join(folder, "store"))
        config = os.path.join(folder, "etc", "sdcc.ini")
        with open(config, "w") as handle:
            handle.write(f"[storage]\nroot = ../store\n"
                         f"[index]\nredis = {self.server.url}\nkey_prefix = rel:\n")
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        cwd = os.getcwd()
        os.chdir(elsewhere)
        self.addCleanup(os.chdir, cwd)
        code, out, err = self.run_admin("--config", config, "rebuild")
        self.assertEqual(code, 0, err)
        self.assertIn("5 instances indexed from 5 files", out)

    def test_config_embedded(self) -> None:
        """redis = embedded reaches the server's socket in [server] data_dir,
        or says clearly that the server is not running."""
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        config = self.mktemp()
        with open(config, "w") as handle:
            handle.write(f"[server]\ndata_dir = {data_dir}\n"
                         f"[storage]\nroot = {self.root}\n"
                         "[index]\nredis = embedded\n")
        code, _, err = self.run_admin("--config", config, "list")
        self.assertEqual(code, admin.EXIT_USAGE)
        self.assertIn("is not running", err)
        self.assertIn(os.path.join(data_dir, "redis.sock"), err)
        with open(os.path.join(data_dir, "redis.url"), "w") as handle:
            handle.write(self.server.url + "\n")
        code, out, err = self.run_admin("--config", config, "rebuild")
        self.assertEqual(code, 0, err)

    def test_config_read_by_the_server_parser(self) -> None:
        """--config goes through the server's own parser: a value the server
        would refuse stops sdcc-admin too, naming section and key."""
        config = self.mktemp()
        with open(config, "w") as handle:
            handle.write(f"[storage]\nroot = {self.root}\n"
                         f"[index]\nredis = {self.server.url}\ntimeout = soon\n")
        code, _, err = self.run_admin("--config", config, "list")
        self.assertEqual(code, admin.EXIT_USAGE)
        self.assertIn("[index] timeout", err)

    def test_no_target(self) -> None:
        """Without --config or --redis the tool says what it needs."""
        code, _, err = self.run_admin("list")
        self.assertEqual(code, admin.EXIT_USAGE)
        self.assertIn("--config FILE or --redis URL", err)

    def test_unreachable_redis(self) -> None:
        """A Redis that does not answer is a clear error, not a traceback."""
        code, _, err = self.run_admin("--redis", "unix:///nonexistent/r.sock",
                                      "--timeout", "1", "list")
        self.assertEqual(code, admin.EXIT_USAGE)
        self.assertIn("cannot reach Redis at unix:///nonexistent/r.sock", err)

    def test_layout_is_shared(self) -> None:
        """admin builds its keys with the same KeyLayout as the server."""
        self.assertIs(admin.KeyLayout, KeyLayout)


class AdminOperationsTests(FileTreeCase):
    """delete, dates and a closed pipe."""

    def setUp(self) -> None:
        super().setUp()
        code, _, err = self.run_admin("rebuild")
        self.assertEqual(code, 0, err)
        self.layout = KeyLayout("sdcc:")

    def run_admin(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = admin.main(["--redis", self.server.url, "--root", self.root, *argv],
                          out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def test_show_dates_in_iso_8601(self) -> None:
        """show prints received_at as an ISO 8601 local time with its offset."""
        code, out, _ = self.run_admin("show", "1.9.1.1.1")
        self.assertEqual(code, 0)
        self.assertRegex(out, r"received_at\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}"
                              r"[+-]\d\d:\d\d\n")

    def test_delete_series_then_study(self) -> None:
        """delete series removes its files, its index entries and its empty
        folder, and leaves the rest of the study; delete study removes the
        rest and the study folder; an unknown UID is exit status 1."""
        code, out, err = self.run_admin("delete", "series", "1.9.1.1")
        self.assertEqual(code, 0, err)
        self.assertIn("Deleted series 1.9.1.1: 2 instance(s)", out)
        self.assertFalse(os.path.exists(os.path.join(self.root, "1.9.1", "1.9.1.1")))
        self.assertTrue(os.path.exists(os.path.join(self.root, "1.9.1", "1.9.1.2",
                                                    "1.9.1.2.1.dcm")))
        self.assertFalse(self.client.exists(self.layout.instance("1.9.1.1.1")))
        self.assertFalse(self.client.exists(self.layout.series("1.9.1.1")))
        self.assertEqual(self.client.smembers(self.layout.study_series("1.9.1")), {"1.9.1.2"})
        code, out, err = self.run_admin("delete", "study", "1.9.1")
        self.assertEqual(code, 0, err)
        self.assertFalse(os.path.exists(os.path.join(self.root, "1.9.1")))
        self.assertFalse(self.client.exists(self.layout.study("1.9.1")))
        self.assertNotIn("PAT-1", self.client.smembers(self.layout.patients()))
        self.assertIn("PAT-2", self.client.smembers(self.layout.patients()))
        code, _, err = self.run_admin("delete", "study", "1.9.1")
        self.assertEqual(code, admin.EXIT_NOT_FOUND)
        self.assertIn("No study '1.9.1'", err)

    def test_delete_keeps_a_copy_stored_meanwhile(self) -> None:
        """The two races with a store of the same instance, caused: an index
        entry that changed after it was read is kept (and its file); a file
        that was replaced after its identity was taken is put back."""
        from sdcc_twisted.storage import deletion

        key = self.layout.instance("1.9.2.1.1")
        read = self.client.hgetall(key)
        self.client.hset(key, "received_at", "9999999999.0")      # stored again
        self.assertFalse(deletion.remove_instance(self.client, self.layout, "1.9.2.1.1",
                                                  read))
        self.assertTrue(self.client.exists(key))
        path = read["path"]
        identity = deletion.file_identity(path)
        replacement = path + ".new"
        with open(replacement, "wb") as handle:
            handle.write(b"a newer copy")
        os.replace(replacement, path)                               # renamed into place
        deletion.delete_if_unchanged(path, self.root, identity)
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), b"a newer copy")
        deletion.delete_if_unchanged(path, self.root, deletion.file_identity(path))
        self.assertFalse(os.path.exists(path))
        self.assertEqual(os.listdir(os.path.join(self.root, deletion.TRASH_DIR)), [])

    def test_closed_pipe_is_quiet(self) -> None:
        """``sdcc-admin list | head -1`` on a long listing: no traceback, no
        BrokenPipe message, exit status 0."""
        import subprocess
        import sys

        from .server_support import REPO

        with self.client.pipeline() as pipe:
            for n in range(4000):
                pipe.sadd(self.layout.patients(), f"P{n:05d}")
            pipe.execute()
        script = (f"{sys.executable} -m sdcc_twisted.admin --redis {self.server.url} list"
                  " | head -1; echo status=${PIPESTATUS[0]} >&2")
        done = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": REPO})
        self.assertEqual(done.stdout.count("\n"), 1, done.stdout)
        self.assertEqual(done.stderr.strip(), "status=0")
