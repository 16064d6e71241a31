"""Storage against real peers: DCMTK storescu and pynetdicom, on 127.0.0.1.

Every object is built at test time by :mod:`tests.corpus`.  For each stored
instance the checks are the same (:func:`check_stored`): the Part 10 file is
where the layout says, its meta names the transfer syntax that was sent, our
implementation and the calling AE, its data set bytes are the sent file's
byte for byte, and the Redis index holds the instance with its relations.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from typing import Any

from twisted.internet import reactor, task, utils
from twisted.trial.unittest import TestCase

from sdcc_twisted.core import conformance as c

from . import corpus
from .redis_support import start_redis
from .support import CT
from .server_support import (
    REPO,
    TwistdServer,
    dcmtk,
    free_port,
    in_thread,
    ini_text,
    start_server,
)

PREFIX = "sdcc:"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

#: storescu's option that proposes a transfer syntax (with the uncompressed
#: ones as a fallback) so that a file goes out in its own syntax.
STORESCU_SYNTAX_OPTION = {
    c.IMPLICIT_VR_LITTLE_ENDIAN: "-xi",
    c.EXPLICIT_VR_LITTLE_ENDIAN: "-xe",
    c.EXPLICIT_VR_BIG_ENDIAN: "-xb",
    c.JPEG_BASELINE: "-xy",
    c.JPEG_EXTENDED: "-xx",
    c.JPEG_LOSSLESS_SV1: "-xs",
    c.JPEG_2000_LOSSLESS: "-xv",
    c.JPEG_2000: "-xw",
    c.RLE_LOSSLESS: "-xr",
}


# -- checks shared with test_interop_faults -----------------------------------

def expected_path(root: str, sample: corpus.Sample) -> str:
    """``{root}/{Study}/{Series}/{SOPInstance}.dcm`` for plain UIDs."""
    return os.path.join(root, sample.study_uid, sample.series_uid,
                        sample.sop_instance_uid + ".dcm")


def dcm_files(root: str) -> list[str]:
    """Every ``.dcm`` file under ``root``."""
    found = []
    for directory, _dirs, files in os.walk(root):
        found += [os.path.join(directory, f) for f in files if f.endswith(".dcm")]
    return sorted(found)


def temp_files(root: str) -> list[str]:
    """What is left in the storage root's temp folders (one per node), as
    paths."""
    found = []
    for directory, _dirs, files in os.walk(os.path.join(root, ".tmp")):
        found += [os.path.join(directory, f) for f in files]
    return sorted(found)


def check_stored(testcase: TestCase, root: str, client: Any, sample: corpus.Sample,
                 calling_ae: str, path: str | None = None) -> str:
    """Assert that ``sample`` was stored intact and indexed; its path."""
    from pydicom import dcmread

    path = path or expected_path(root, sample)
    testcase.assertTrue(os.path.isfile(path), f"{path} was not stored")
    ds = dcmread(path)
    meta = ds.file_meta
    testcase.assertEqual(meta.TransferSyntaxUID, sample.transfer_syntax, path)
    testcase.assertEqual(meta.MediaStorageSOPClassUID, sample.sop_class_uid)
    testcase.assertEqual(meta.MediaStorageSOPInstanceUID, sample.sop_instance_uid)
    testcase.assertEqual(meta.ImplementationClassUID, corpus.OUR_IMPLEMENTATION_CLASS_UID)
    testcase.assertEqual(str(meta.SourceApplicationEntityTitle).strip(), calling_ae)
    testcase.assertEqual(ds.SOPInstanceUID, sample.sop_instance_uid)
    sent = corpus.data_set_bytes(sample.path)
    stored = corpus.data_set_bytes(path)
    testcase.assertEqual(len(stored), len(sent), f"data set size of {path}")
    testcase.assertTrue(stored == sent, f"data set bytes of {path} differ from "
                                        f"{sample.path}")
    check_indexed(testcase, client, sample, path, calling_ae)
    return path


def check_indexed(testcase: TestCase, client: Any, sample: corpus.Sample, path: str,
                  calling_ae: str | None = None) -> dict[str, str]:
    """Assert the index entry of ``sample`` and its study/series/patient links."""
    uid = sample.sop_instance_uid
    fields = client.hgetall(f"{PREFIX}instance:{uid}")
    testcase.assertTrue(fields, f"instance {uid} is not indexed")
    testcase.assertEqual(fields["path"], path)
    testcase.assertEqual(fields["sop_class_uid"], sample.sop_class_uid)
    testcase.assertEqual(fields["transfer_syntax"], sample.transfer_syntax)
    testcase.assertEqual(fields["study_uid"], sample.study_uid)
    testcase.assertEqual(fields["series_uid"], sample.series_uid)
    testcase.assertEqual(fields["patient_id"], sample.patient_id)
    testcase.assertEqual(int(fields["size"]), os.path.getsize(path))
    if calling_ae is not None:
        testcase.assertEqual(fields["calling_ae"], calling_ae)
    patient = sample.patient_id or "\\none"
    testcase.assertTrue(client.sismember(f"{PREFIX}series_instances:{sample.series_uid}", uid))
    testcase.assertTrue(client.sismember(f"{PREFIX}study_series:{sample.study_uid}",
                                         sample.series_uid))
    testcase.assertTrue(client.sismember(f"{PREFIX}patient_studies:{patient}",
                                         sample.study_uid))
    testcase.assertTrue(client.sismember(f"{PREFIX}patients", patient))
    testcase.assertEqual(client.hget(f"{PREFIX}series:{sample.series_uid}", "study_uid"),
                         sample.study_uid)
    testcase.assertEqual(client.hget(f"{PREFIX}study:{sample.study_uid}", "patient_id"),
                         sample.patient_id)
    return fields


def instance_keys(client: Any) -> list[str]:
    """Every indexed instance key."""
    return sorted(client.scan_iter(match=f"{PREFIX}instance:*"))


# -- pynetdicom as the SCU ---------------------------------------------------

def pynetdicom_store(port: int, items: list[Any], contexts: list[tuple[str, list[str]]],
                     calling: str = "PYNETDICOM", between: Any = None) -> dict:
    """One association: C-STORE each item (a path or a Dataset).

    ``between(n)`` (optional) is called after the n-th store.  Returns the
    statuses (Status, ErrorComment) and the rejected contexts' results.
    """
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
    result: dict[str, Any] = {"established": assoc.is_established, "statuses": []}
    if not assoc.is_established:
        return result
    try:
        result["rejected"] = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
        result["accepted"] = {(cx.abstract_syntax, cx.transfer_syntax[0])
                              for cx in assoc.accepted_contexts}
        for n, item in enumerate(items, 1):
            status = assoc.send_c_store(item)
            result["statuses"].append(
                (status.Status, str(status.get("ErrorComment", ""))) if status else None)
            if between is not None:
                between(n)
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def storescu_successes(out: str) -> int:
    """How many C-STORE-RSP Success storescu -v reported."""
    return out.count("Received Store Response (Success)")


class StorescuStoreTests(TestCase):
    """DCMTK storescu sends; the server stores and indexes."""

    timeout = 180

    async def test_every_sop_class_in_one_association(self) -> None:
        """storescu -R sends one instance of each of the 30 storage SOP classes
        of the statement in one association; each is answered Success, stored
        byte for byte with our meta (transfer syntax, implementation class UID,
        calling AE as Source AE) and indexed with its study/series/patient."""
        server = await start_server(self)
        samples = corpus.sop_class_corpus(os.path.abspath(self.mktemp()))
        self.assertEqual({s.sop_class_uid for s in samples}, set(c.STORAGE_SOP_CLASSES))
        out, code = await dcmtk(self, "storescu", "-v", "-R", "-aet", "ALLCLASSES",
                                "-aec", "SDCC", "127.0.0.1", str(server.port),
                                *[s.path for s in samples])
        self.assertEqual(code, 0, out)
        self.assertEqual(out.count("Requesting Association"), 1, out)
        self.assertEqual(storescu_successes(out), len(samples), out)
        client = server.redis.client()
        for sample in samples:
            check_stored(self, server.root, client, sample, "ALLCLASSES")
        self.assertEqual(len(instance_keys(client)), len(samples))
        self.assertEqual(len(dcm_files(server.root)), len(samples))

    async def test_readme_examples(self) -> None:
        """The README's dcmsend line, run as written (only port and folder
        replaced), stores every file of a folder mixing all nine transfer
        syntaxes in nested folders, each in its own syntax; its storescu line
        stores a folder of uncompressed files."""
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
            lines = {line.split()[0]: line.split() for line in handle
                     if line.startswith(("dcmsend ", "storescu "))}
        dcmsend, storescu = lines["dcmsend"], lines["storescu"]
        server = await start_server(self)
        folder = os.path.abspath(self.mktemp())
        samples = list(corpus.transfer_syntax_corpus(os.path.join(folder, "nested")).values())
        samples.append(corpus.write_small(os.path.join(folder, "top.dcm"), CT))

        def as_written(argv: list[str], path: str) -> list[str]:
            swapped = {"11112": str(server.port), "/path/to/images/": path,
                       "/path/to/uncompressed/": path}
            return [swapped.get(arg, arg) for arg in argv[1:]]
        out, code = await dcmtk(self, "dcmsend", *as_written(dcmsend, folder))
        self.assertEqual(code, 0, out)
        uncompressed = {c.IMPLICIT_VR_LITTLE_ENDIAN, c.EXPLICIT_VR_LITTLE_ENDIAN,
                        c.EXPLICIT_VR_BIG_ENDIAN}
        client = server.redis.client()
        for sample in samples:
            if sample.transfer_syntax in uncompressed:   # dcmsend may convert these
                self.assertTrue(os.path.isfile(expected_path(server.root, sample)))
            else:
                check_stored(self, server.root, client, sample, "CT1")
        plain = os.path.abspath(self.mktemp())
        more = [corpus.write_small(os.path.join(plain, "x", f"{n}.dcm"), CT) for n in range(3)]
        out, code = await dcmtk(self, "storescu", *as_written(storescu, plain))
        self.assertEqual(code, 0, out)
        for sample in more:
            check_stored(self, server.root, client, sample, "CT1")
        self.assertEqual(len(instance_keys(client)), len(samples) + len(more))

    async def test_every_transfer_syntax_with_real_pixel_data(self) -> None:
        """For each of the nine transfer syntaxes, storescu sends an object with
        real encoded pixel data in that syntax (proposed with the matching -x
        option); the stored file's (0002,0010) is that syntax and its data set
        bytes are those of the file storescu read."""
        server = await start_server(self)
        samples = corpus.transfer_syntax_corpus(os.path.abspath(self.mktemp()))
        self.assertEqual(set(samples), set(c.TRANSFER_SYNTAXES))
        client = server.redis.client()
        for syntax, sample in samples.items():
            option = STORESCU_SYNTAX_OPTION[syntax]
            out, code = await dcmtk(self, "storescu", "-v", "-R", option, "-aet", "TSSCU",
                                    "-aec", "SDCC", "127.0.0.1", str(server.port),
                                    sample.path)
            self.assertEqual(code, 0, (syntax, out))
            self.assertEqual(storescu_successes(out), 1, (syntax, out))
            check_stored(self, server.root, client, sample, "TSSCU")

    async def test_pdu_sizes(self) -> None:
        """storescu stores intact with -pdu 4096, 16384 and 131072 (its receive
        size), with --max-send-pdu 4096 (its send size), and against a server
        configured with max_pdu_length 131072 (so it sends 128 KiB PDUs)."""
        base = os.path.abspath(self.mktemp())
        servers = [(await start_server(self), [["-pdu", "4096"], ["-pdu", "16384"],
                                               ["-pdu", "131072"],
                                               ["--max-send-pdu", "4096"]]),
                   (await start_server(self, server={"max_pdu_length": "131072"}),
                    [["-pdu", "131072"]])]
        n = 0
        for server, variants in servers:
            client = server.redis.client()
            for extra in variants:
                n += 1
                ds = corpus.small_dataset("1.2.840.10008.5.1.4.1.1.2", rows=256,
                                          columns=320, number=n)
                path = os.path.join(base, f"pdu{n}.dcm")
                corpus.write_dataset_file(ds, path)
                sample = corpus.sample_of(path, ds)
                out, code = await dcmtk(self, "storescu", "-v", "-R", *extra,
                                        "-aet", "PDUSCU", "-aec", "SDCC", "127.0.0.1",
                                        str(server.port), path)
                self.assertEqual(code, 0, (extra, out))
                self.assertEqual(storescu_successes(out), 1, (extra, out))
                check_stored(self, server.root, client, sample, "PDUSCU")

    async def test_sop_class_outside_statement_refused(self) -> None:
        """A Basic Text SR (not in the statement) proposed by storescu next to a
        CT gets no accepted context (storescu: no presentation context), the
        CT is stored, and nothing of the SR is stored or indexed."""
        server = await start_server(self)
        base = os.path.abspath(self.mktemp())
        sr = corpus.restamped("reportsi.dcm", os.path.join(base, "sr.dcm"))
        self.assertEqual(sr.sop_class_uid, BASIC_TEXT_SR)
        ct = corpus.restamped("CT_small.dcm", os.path.join(base, "ct.dcm"))
        out, code = await dcmtk(self, "storescu", "-v", "+v", "-R", "-nh", "-aet", "SRSCU",
                                "-aec", "SDCC", "127.0.0.1", str(server.port),
                                sr.path, ct.path)
        self.assertEqual(code, 0, out)   # -nh: go on after the SR
        self.assertIn(f"No presentation context for: (SRt) {BASIC_TEXT_SR}", out)
        self.assertRegex(out, r"Context ID: +\d+ \(Abstract Syntax Not Supported\)\n"
                              r"I: +Abstract Syntax: +=BasicTextSRStorage\n")
        self.assertNotRegex(out, r"Context ID: +\d+ \(Accepted\)\n"
                                 r"I: +Abstract Syntax: +=BasicTextSRStorage\n")
        self.assertEqual(storescu_successes(out), 1, out)
        client = server.redis.client()
        check_stored(self, server.root, client, ct, "SRSCU")
        self.assertEqual(dcm_files(server.root), [expected_path(server.root, ct)])
        self.assertFalse(client.exists(f"{PREFIX}instance:{sr.sop_instance_uid}"))


class PynetdicomStoreTests(TestCase):
    """pynetdicom as the Storage SCU."""

    timeout = 120

    async def test_pynetdicom_stores(self) -> None:
        """pynetdicom sends SOP classes (CR, US multi-frame, NM, PET, RT Image)
        and transfer syntaxes (implicit, big endian, JPEG baseline, JPEG 2000,
        RLE) in one association, by file path (raw data set bytes) and one as a
        decoded Dataset; every status is 0x0000 and every instance is stored
        byte for byte and indexed."""
        from pydicom import dcmread

        server = await start_server(self)
        base = os.path.abspath(self.mktemp())
        by_class = {s.sop_class_uid: s for s in corpus.sop_class_corpus(base + "/sop")}
        by_syntax = corpus.transfer_syntax_corpus(base + "/ts")
        samples = [by_class[uid] for uid in (
            "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.3.1",
            "1.2.840.10008.5.1.4.1.1.20", "1.2.840.10008.5.1.4.1.1.128",
            "1.2.840.10008.5.1.4.1.1.481.1")]
        samples += [by_syntax[ts] for ts in (
            c.IMPLICIT_VR_LITTLE_ENDIAN, c.EXPLICIT_VR_BIG_ENDIAN, c.JPEG_BASELINE,
            c.JPEG_2000_LOSSLESS, c.RLE_LOSSLESS)]
        as_dataset = by_syntax[c.EXPLICIT_VR_LITTLE_ENDIAN]
        contexts = [(s.sop_class_uid, [s.transfer_syntax]) for s in samples + [as_dataset]]
        items: list[Any] = [s.path for s in samples] + [dcmread(as_dataset.path)]
        result = await in_thread(pynetdicom_store, server.port, items, contexts)
        self.assertTrue(result["established"])
        self.assertEqual(result["statuses"], [(0, "")] * len(items))
        client = server.redis.client()
        for sample in samples + [as_dataset]:
            check_stored(self, server.root, client, sample, "PYNETDICOM")

    async def test_sop_class_outside_statement_result_3(self) -> None:
        """pynetdicom proposes Basic Text SR and CT: the SR context is answered
        with result 3 (abstract syntax not supported), CT is accepted and
        stored; nothing of the SR reaches the disk or the index."""
        server = await start_server(self)
        base = os.path.abspath(self.mktemp())
        sr = corpus.restamped("reportsi.dcm", os.path.join(base, "sr.dcm"))
        ct = corpus.restamped("CT_small.dcm", os.path.join(base, "ct.dcm"))
        contexts = [(BASIC_TEXT_SR, [c.EXPLICIT_VR_LITTLE_ENDIAN, c.IMPLICIT_VR_LITTLE_ENDIAN]),
                    (ct.sop_class_uid, [c.EXPLICIT_VR_LITTLE_ENDIAN])]
        result = await in_thread(pynetdicom_store, server.port, [ct.path], contexts)
        self.assertTrue(result["established"])
        self.assertEqual(result["rejected"], {BASIC_TEXT_SR: 3})
        self.assertEqual(result["accepted"], {(ct.sop_class_uid, c.EXPLICIT_VR_LITTLE_ENDIAN)})
        self.assertEqual(result["statuses"], [(0, "")])
        client = server.redis.client()
        check_stored(self, server.root, client, ct, "PYNETDICOM")
        self.assertFalse(client.exists(f"{PREFIX}instance:{sr.sop_instance_uid}"))
        self.assertEqual(len(dcm_files(server.root)), 1)

    async def test_same_instance_again_overwrites(self) -> None:
        """The same SOP Instance UID sent twice in the same series leaves one
        file and one index entry (the second copy); sent again in another
        series of the same study, and then in another study, the old file and
        the old series/study relations are gone: exactly one file and one
        index entry remain, under the latest study and series."""
        server = await start_server(self)
        base = os.path.abspath(self.mktemp())
        client = server.redis.client()
        ct = "1.2.840.10008.5.1.4.1.1.2"
        uid = corpus.new_uid()
        study1, series1, series2 = corpus.new_uid(), corpus.new_uid(), corpus.new_uid()
        study2, series3 = corpus.new_uid(), corpus.new_uid()
        steps = [(study1, series1, 1), (study1, series1, 2), (study1, series2, 3),
                 (study2, series3, 4)]
        previous: corpus.Sample | None = None
        for study, series, n in steps:
            ds = corpus.small_dataset(ct, study=study, series=series, sop_instance=uid,
                                      number=n, patient_id="PID-OVERWRITE")
            path = os.path.join(base, f"copy{n}.dcm")
            corpus.write_dataset_file(ds, path)
            sample = corpus.sample_of(path, ds)
            result = await in_thread(pynetdicom_store, server.port, [path],
                                     [(ct, [c.EXPLICIT_VR_LITTLE_ENDIAN])])
            self.assertEqual(result["statuses"], [(0, "")], n)
            stored = check_stored(self, server.root, client, sample, "PYNETDICOM")
            self.assertEqual(dcm_files(server.root), [stored], n)
            self.assertEqual(instance_keys(client), [f"{PREFIX}instance:{uid}"], n)
            self.assertEqual(client.smembers(f"{PREFIX}series_instances:{series}"), {uid})
            self.assertEqual(client.smembers(f"{PREFIX}patient_studies:PID-OVERWRITE"),
                             {study})
            self.assertEqual(client.smembers(f"{PREFIX}study_series:{study}"), {series})
            if previous is not None and previous.series_uid != series:
                self.assertFalse(client.exists(
                    f"{PREFIX}series_instances:{previous.series_uid}"), n)
                self.assertFalse(client.exists(f"{PREFIX}series:{previous.series_uid}"), n)
            if previous is not None and previous.study_uid != study:
                self.assertFalse(client.exists(
                    f"{PREFIX}study_series:{previous.study_uid}"), n)
                self.assertFalse(client.exists(f"{PREFIX}study:{previous.study_uid}"), n)
            self.assertEqual(client.smembers(f"{PREFIX}patients"), {"PID-OVERWRITE"})
            self.assertEqual(temp_files(server.root), [])
            previous = sample


# -- a server in its own process -----------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in kB."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); whether it worked."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def stop_embedded_redis(log_text: str, marker: str) -> None:
    """Stop the embedded redis-server a killed twistd may have left running.

    Only the PID the server logged starting, and only if that process still
    is a redis-server serving a socket under ``marker``.
    """
    for pid in re.findall(r"started \S+ \(pid (\d+)\)", log_text):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        if "redis-server" in cmdline and marker in cmdline:
            os.kill(int(pid), signal.SIGTERM)


class TwistdStoreTests(TestCase):
    """``twistd sdcc`` as a child process."""

    timeout = 240

    async def test_large_multiframe_bounded_memory(self) -> None:
        """A ~300 MB multi-frame object (600 frames of 512x512x16 bit) sent by
        storescu is stored intact (same data set size and SHA-256), and the
        server process's peak RSS grows by less than 50 MB while receiving it
        (VmHWM of the twistd child, reset to its RSS just before the send);
        retrieving it again with getscu (C-GET) comes back bit for bit with
        the same bound on the server's memory."""
        redis = start_redis(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        large = corpus.write_large_multiframe(os.path.join(base, "in", "large.dcm"))
        stored = expected_path(os.path.join(base, "data", "store"), large.sample)
        for path in (large.sample.path, stored):   # 2 x 300 MB: do not keep them
            self.addCleanup(lambda p=path: os.path.exists(p) and os.unlink(p))
        port = free_port()
        ini = os.path.join(base, "sdcc.ini")
        with open(ini, "w", encoding="utf-8") as handle:
            handle.write(ini_text(os.path.join(base, "data"), redis.url, port=port))
        server = TwistdServer(self, ini)
        server.start(port)
        pid = server.process.pid
        # warm up: the store path's code and buffers exist before we measure
        warm = corpus.sop_class_corpus(os.path.join(base, "warm"))[:3]
        out, code = await dcmtk(self, "storescu", "-R", "-aet", "WARM", "-aec", "SDCC",
                                "127.0.0.1", str(port), *[s.path for s in warm])
        self.assertEqual(code, 0, out + server.log())
        reset = reset_peak_rss(pid)
        before = proc_status(pid)
        started = time.monotonic()
        out, code = await dcmtk(self, "storescu", "-v", "-R", "-xe", "-aet", "BIGSCU",
                                "-aec", "SDCC", "127.0.0.1", str(port), large.sample.path,
                                timeout=180)
        elapsed = time.monotonic() - started
        after = proc_status(pid)
        self.assertEqual(code, 0, out + server.log()[-3000:])
        self.assertEqual(storescu_successes(out), 1, out)
        growth_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
        sys.stdout.write(f"\n[large object] {large.data_set_size / 1e6:.0f} MB data set in "
                         f"{elapsed:.1f} s ({large.data_set_size / 1e6 / elapsed:.0f} MB/s); "
                         f"server RSS before {before['VmRSS'] / 1024:.1f} MB, peak after "
                         f"{after['VmHWM'] / 1024:.1f} MB, growth {growth_mb:.1f} MB "
                         f"(peak reset: {reset})\n")
        self.assertEqual(corpus.data_set_digest(stored),
                         (large.data_set_size, large.data_set_sha256))
        fields = redis.client().hgetall(f"{PREFIX}instance:{large.sample.sop_instance_uid}")
        self.assertEqual(fields["path"], stored)
        self.assertEqual(int(fields["size"]), os.path.getsize(stored))
        self.assertLess(growth_mb, 50)

        # Reads stream too: C-GET of the same object, sent from its file in
        # PDU-sized pieces, grows the server's peak RSS by less than 50 MB.
        out_dir = os.path.join(base, "got")
        os.makedirs(out_dir)
        reset_peak_rss(pid)
        before = proc_status(pid)
        sample = large.sample
        out, code = await dcmtk(self, "getscu", "-S", "-aet", "BIGGET", "-aec", "SDCC",
                                "-od", out_dir, "-k", "QueryRetrieveLevel=IMAGE",
                                "-k", f"StudyInstanceUID={sample.study_uid}",
                                "-k", f"SeriesInstanceUID={sample.series_uid}",
                                "-k", f"SOPInstanceUID={sample.sop_instance_uid}",
                                "127.0.0.1", str(port), timeout=180)
        after = proc_status(pid)
        self.assertEqual(code, 0, out + server.log()[-3000:])
        (got,) = [os.path.join(out_dir, name) for name in os.listdir(out_dir)]
        self.addCleanup(lambda: os.path.exists(got) and os.unlink(got))
        self.assertEqual(corpus.data_set_digest(got),
                         (large.data_set_size, large.data_set_sha256))
        read_growth_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
        sys.stdout.write(f"[large object] C-GET: server peak RSS growth {read_growth_mb:.1f} MB\n")
        self.assertLess(read_growth_mb, 50)

    async def test_done_when_defaults_storescu_directory_admin_list(self) -> None:
        """Issue 3's "done when": twistd sdcc with an INI holding only [server]
        listen and data_dir (so the embedded Redis, fsync on, every default)
        receives ``storescu +r +sd <folder of mixed images>``; then
        ``python -m sdcc_twisted.admin --config <ini> list`` lists every
        patient, study and series with its instance count."""
        base = os.path.abspath(self.mktemp())
        folder = os.path.join(base, "images")
        # three patients, four studies, several modalities, implicit/explicit/
        # big endian, in nested folders (for +r)
        study_a1, study_a2, study_b = corpus.new_uid(), corpus.new_uid(), corpus.new_uid()
        samples = [corpus.write_small(os.path.join(folder, "a", f"a{n}.dcm"), sop_class,
                                      study=study, patient_id="PAT-A",
                                      patient_name="Alpha^A", number=n)
                   for n, (sop_class, study) in enumerate((
                       ("1.2.840.10008.5.1.4.1.1.2", study_a1),
                       ("1.2.840.10008.5.1.4.1.1.2", study_a1),
                       ("1.2.840.10008.5.1.4.1.1.1", study_a2),
                       ("1.2.840.10008.5.1.4.1.1.6.1", study_a2)), 1)]
        for n, name in enumerate(("MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                                  "CT_small.dcm"), 1):
            samples.append(corpus.restamped(
                name, os.path.join(folder, "b", "deeper", f"b{n}.dcm"), study=study_b,
                patient_id="PAT-B", patient_name="Beta^B"))
        samples.append(corpus.restamped("MR_small.dcm", os.path.join(folder, "c1.dcm"),
                                        patient_id="PAT-C", patient_name="Gamma^C"))
        port = free_port()
        data_dir = os.path.join(base, "d")
        ini = os.path.join(base, "minimal.ini")
        with open(ini, "w", encoding="utf-8") as handle:
            # (the HTTP listener's default port could be taken on a shared machine)
            handle.write(f"[server]\nlisten = tcp:{port}:interface=127.0.0.1\n"
                         f"data_dir = {data_dir}\n[http]\nlisten = tcp:0:interface=127.0.0.1\n")
        server = TwistdServer(self, ini)
        self.addCleanup(lambda: stop_embedded_redis(server.log(), data_dir))
        server.start(port)
        out, code = await dcmtk(self, "storescu", "-v", "+r", "+sd", "-aet", "FOLDER",
                                "-aec", "SDCC", "127.0.0.1", str(port), folder)
        self.assertEqual(code, 0, out + server.log()[-3000:])
        self.assertEqual(storescu_successes(out), len(samples), out)
        listing = ""
        for _ in range(100):   # the embedded Redis may still be starting: journaled
            listing, err, status = await utils.getProcessOutputAndValue(
                sys.executable, ["-m", "sdcc_twisted.admin", "--config", ini, "list"],
                env={**os.environ, "PYTHONPATH": REPO}, path=REPO)
            listing = listing.decode()
            if status == 0 and f"{len(samples)} instances" in listing:
                break
            await task.deferLater(reactor, 0.2, lambda: None)
        self.assertIn(f"3 patients, 4 studies, {len({s.series_uid for s in samples})} "
                      f"series, {len(samples)} instances", listing, err)
        for sample in samples:
            self.assertRegex(listing, rf"Patient {re.escape(sample.patient_id)}  "
                                      rf"{re.escape(sample.patient_name)}\n")
            self.assertIn(f"  Study {sample.study_uid}", listing)
            self.assertIn(f"    Series {sample.series_uid}", listing)
        self.assertEqual(len(dcm_files(os.path.join(data_dir, "store"))), len(samples))
