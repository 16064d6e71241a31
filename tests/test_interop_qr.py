"""Query/Retrieve against real peers: DCMTK findscu, movescu, getscu and
storescp, and pynetdicom, on 127.0.0.1."""

from __future__ import annotations

import glob
import os
import subprocess
import time
from typing import Any

from twisted.trial.unittest import TestCase

from .corpus import data_set_bytes
from .server_support import DCMTK_ENV, dcmtk, free_port, in_thread, start_server
from .support import require_tool

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"


def write_study(directory: str, patient: str, name: str, study: str, series_count: int,
                per_series: int, date: str, modality: str = "CT") -> list[str]:
    """Write a small study as Part 10 files; return their paths."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    paths = []
    for s in range(series_count):
        series = f"{study}.{s + 1}"
        for i in range(per_series):
            ds = Dataset()
            ds.SOPClassUID = CT
            ds.SOPInstanceUID = generate_uid()
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series
            ds.PatientID = patient
            ds.PatientName = name
            ds.StudyDate = date
            ds.StudyTime = "101500"
            ds.AccessionNumber = f"ACC{patient}"
            ds.StudyDescription = f"Study of {patient}"
            ds.Modality = modality
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            ds.Rows, ds.Columns = 16, 16
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.PixelData = bytes(range(256)) * 2
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = CT
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = os.path.join(directory, f"{ds.SOPInstanceUID}.dcm")
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


class StoreSCP:
    """DCMTK storescp as a move destination, on a free port."""

    def __init__(self, testcase: TestCase, ae_title: str = "DEST",
                 accept_all: bool = True, port: int | None = None,
                 unique_names: bool = False) -> None:
        self.path = require_tool(testcase, "storescp")
        self.port = port or free_port()
        self.directory = os.path.abspath(testcase.mktemp())
        os.makedirs(self.directory)
        accept = ["+xa"] if accept_all else []
        if unique_names:
            accept.append("+uf")
        self.process = subprocess.Popen(
            [self.path, "-aet", ae_title, "-od", self.directory, *accept, str(self.port)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        testcase.addCleanup(self.stop)
        deadline = time.monotonic() + 10
        import socket
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.directory, "*")))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class QueryRetrieveTests(TestCase):
    """C-FIND, C-MOVE and C-GET served from the index."""

    timeout = 180

    async def populated(self, big: bool = False,
                        **sections: dict[str, Any]) -> tuple[Any, dict[str, list[str]]]:
        """A server holding two patients' studies (and with ``big`` a third
        of 40 instances), stored by storescu."""
        server = await start_server(self, **sections)
        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        studies = {
            "1.2.826.0.1.3680043.8.498.1": write_study(source, "P1", "Doe^Jane",
                                                       "1.2.826.0.1.3680043.8.498.1", 2, 3,
                                                       "20240105"),
            "1.2.826.0.1.3680043.8.498.2": write_study(source, "P2", "Roe^Rick",
                                                       "1.2.826.0.1.3680043.8.498.2", 1, 2,
                                                       "20231120", "MR"),
        }
        if big:
            studies["1.2.826.0.1.3680043.8.498.3"] = write_study(
                source, "P3", "Big^Study", "1.2.826.0.1.3680043.8.498.3", 1, 40, "20220202")
        files = [p for paths in studies.values() for p in paths]
        out, code = await dcmtk(self, "storescu", "-aet", "LOADER", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *files)
        self.assertEqual(code, 0, out)
        return server, studies

    async def findscu(self, server: Any, model: str, *keys: str) -> list[Any]:
        """Run findscu, extract the responses, read them with pydicom."""
        import pydicom

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        args = [model, "-X", "-od", directory, "-aet", "FINDER", "-aec", "SDCC"]
        for key in keys:
            args += ["-k", key]
        out, code = await dcmtk(self, "findscu", *args, "127.0.0.1", str(server.port))
        self.assertEqual(code, 0, out)
        return [pydicom.dcmread(p) for p in sorted(glob.glob(os.path.join(directory, "rsp*")))]

    async def test_findscu_every_level(self) -> None:
        """findscu finds patients, studies (with a date range and a wildcard),
        series and images, and gets the requested return keys filled."""
        server, studies = await self.populated()
        patients = await self.findscu(server, "-P", "QueryRetrieveLevel=PATIENT",
                                      "PatientID", "PatientName")
        self.assertEqual(sorted((str(r.PatientID), str(r.PatientName)) for r in patients),
                         [("P1", "Doe^Jane"), ("P2", "Roe^Rick")])
        recent = await self.findscu(server, "-S", "QueryRetrieveLevel=STUDY",
                                    "StudyDate=20240101-", "StudyInstanceUID", "PatientName")
        self.assertEqual([r.StudyInstanceUID for r in recent], ["1.2.826.0.1.3680043.8.498.1"])
        self.assertEqual(str(recent[0].PatientName), "Doe^Jane")
        wild = await self.findscu(server, "-S", "QueryRetrieveLevel=STUDY", "PatientName=R*",
                                  "StudyInstanceUID", "AccessionNumber")
        self.assertEqual([(r.StudyInstanceUID, r.AccessionNumber) for r in wild],
                         [("1.2.826.0.1.3680043.8.498.2", "ACCP2")])
        series = await self.findscu(server, "-S", "QueryRetrieveLevel=SERIES",
                                    "StudyInstanceUID=1.2.826.0.1.3680043.8.498.1",
                                    "SeriesInstanceUID", "Modality")
        self.assertEqual(sorted(r.SeriesInstanceUID for r in series),
                         ["1.2.826.0.1.3680043.8.498.1.1", "1.2.826.0.1.3680043.8.498.1.2"])
        images = await self.findscu(server, "-P", "QueryRetrieveLevel=IMAGE", "PatientID=P1",
                                    "StudyInstanceUID=1.2.826.0.1.3680043.8.498.1",
                                    "SeriesInstanceUID=1.2.826.0.1.3680043.8.498.1.2",
                                    "SOPInstanceUID", "InstanceNumber")
        self.assertEqual(sorted(int(r.InstanceNumber) for r in images), [1, 2, 3])
        none = await self.findscu(server, "-P", "QueryRetrieveLevel=PATIENT",
                                  "PatientID=NOBODY")
        self.assertEqual(none, [])

    async def test_findscu_computed_keys(self) -> None:
        """findscu gets Number of Patient/Study/Series Related ... and
        Modalities in Study filled from the index (PS3.4 C.3), and
        ModalitiesInStudy=CT as a matching key leaves the MR study out;
        pynetdicom matches on a count."""
        server, studies = await self.populated()
        ct_study, mr_study = sorted(studies)
        patients = await self.findscu(
            server, "-P", "QueryRetrieveLevel=PATIENT", "PatientID",
            "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances")
        self.assertEqual(sorted((str(r.PatientID), int(r.NumberOfPatientRelatedStudies),
                                 int(r.NumberOfPatientRelatedSeries),
                                 int(r.NumberOfPatientRelatedInstances)) for r in patients),
                         [("P1", 1, 2, 6), ("P2", 1, 1, 2)])
        every = await self.findscu(server, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                   "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                                   "NumberOfStudyRelatedInstances",
                                   "NumberOfPatientRelatedStudies")
        self.assertEqual(sorted((r.StudyInstanceUID, r.ModalitiesInStudy,
                                 int(r.NumberOfStudyRelatedSeries),
                                 int(r.NumberOfStudyRelatedInstances),
                                 int(r.NumberOfPatientRelatedStudies)) for r in every),
                         [(ct_study, "CT", 2, 6, 1), (mr_study, "MR", 1, 2, 1)])
        ct_only = await self.findscu(server, "-S", "QueryRetrieveLevel=STUDY",
                                     "StudyInstanceUID", "ModalitiesInStudy=CT")
        self.assertEqual([(r.StudyInstanceUID, r.ModalitiesInStudy) for r in ct_only],
                         [(ct_study, "CT")])
        series = await self.findscu(server, "-S", "QueryRetrieveLevel=SERIES",
                                    f"StudyInstanceUID={ct_study}", "SeriesInstanceUID",
                                    "NumberOfSeriesRelatedInstances")
        self.assertEqual([int(r.NumberOfSeriesRelatedInstances) for r in series], [3, 3])
        by_count = await in_thread(_find_studies, server.port,
                                   NumberOfStudyRelatedInstances="2", ModalitiesInStudy="")
        self.assertEqual(by_count, [(mr_study, "MR")])

    async def test_query_allow_list(self) -> None:
        """[query] allowed_calling_ae_titles: findscu as an allowed AE finds;
        findscu as another AE gets no Q/R context (result 1, user rejection)
        while its Verification context is accepted, and storing (LOADER, not
        on the list) still works."""
        server, studies = await self.populated(
            query={"allowed_calling_ae_titles": "FINDER"})
        found = await self.findscu(server, "-S", "QueryRetrieveLevel=STUDY",
                                   "StudyInstanceUID")
        self.assertEqual(sorted(r.StudyInstanceUID for r in found), sorted(studies))
        out, code = await dcmtk(self, "findscu", "-S", "-aet", "OTHER", "-aec", "SDCC",
                                "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                                "127.0.0.1", str(server.port))
        self.assertNotEqual(code, 0, out)
        self.assertIn("No Acceptable Presentation Contexts", out)
        answers = await in_thread(_context_results, server.port, "OTHER")
        self.assertEqual(answers, {STUDY_ROOT_FIND: 1, VERIFICATION: 0})

    async def test_query_disabled(self) -> None:
        """[query] enabled = no: Q/R contexts are answered 3 (abstract syntax
        not supported) even for an AE that would be allowed; storing works."""
        server, studies = await self.populated(
            query={"enabled": "no", "allowed_calling_ae_titles": "FINDER"})
        answers = await in_thread(_context_results, server.port, "FINDER")
        self.assertEqual(answers, {STUDY_ROOT_FIND: 3, VERIFICATION: 0})

    async def test_movescu_to_storescp(self) -> None:
        """movescu moves a study to DCMTK storescp; every instance arrives
        with its data set bit for bit."""
        dest = StoreSCP(self)
        server, studies = await self.populated(
            move_destinations={"DEST": f"127.0.0.1:{dest.port}"})
        study = "1.2.826.0.1.3680043.8.498.1"
        out, code = await dcmtk(self, "movescu", "-v", "-S", "-aet", "MOVER", "-aec", "SDCC",
                                "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY",
                                "-k", f"StudyInstanceUID={study}",
                                "127.0.0.1", str(server.port))
        self.assertEqual(code, 0, out)
        received = dest.files()
        self.assertEqual(len(received), len(studies[study]), out)
        sent = sorted(data_set_bytes(p) for p in studies[study])
        self.assertEqual(sorted(data_set_bytes(p) for p in received), sent)

    async def test_getscu(self) -> None:
        """getscu retrieves a series over its own association (C-GET with
        role selection); the data sets arrive bit for bit."""
        server, studies = await self.populated()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        out, code = await dcmtk(self, "getscu", "-v", "-S", "-aet", "GETTER", "-aec", "SDCC",
                                "-od", directory, "-k", "QueryRetrieveLevel=SERIES",
                                "-k", "StudyInstanceUID=1.2.826.0.1.3680043.8.498.1",
                                "-k", "SeriesInstanceUID=1.2.826.0.1.3680043.8.498.1.1",
                                "127.0.0.1", str(server.port))
        self.assertEqual(code, 0, out)
        got = sorted(glob.glob(os.path.join(directory, "*")))
        self.assertEqual(len(got), 3, out)
        expected = sorted(data_set_bytes(p) for p in studies["1.2.826.0.1.3680043.8.498.1"]
                          if ".498.1.1" in _series_of(p))
        self.assertEqual(sorted(data_set_bytes(p) for p in got), expected)

    async def mixed_study(self, **sections: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
        """A server holding one study in each of the nine transfer syntaxes
        (stored with dcmsend, which proposes each file's own syntax), and a
        capture of the sdcc.qr log events."""
        from twisted.logger import formatEvent, globalLogPublisher

        from . import corpus

        server = await start_server(self, **sections)
        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        study = corpus.new_uid()
        samples = corpus.transfer_syntax_corpus(source, study=study, patient_id="MIXED")
        out, code = await dcmtk(self, "dcmsend", "-aet", "LOADER", "-aec", "SDCC", "+sd",
                                "127.0.0.1", str(server.port), source)
        self.assertEqual(code, 0, out)
        self.qr_log: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "sdcc.qr":
                self.qr_log.append(formatEvent(event))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return server, study, samples

    def assert_failures_logged(self, operation: str, samples: dict[str, Any],
                               failed: set[str], reason: str) -> None:
        """One log line per failed sub-operation: its SOP Instance UID, the
        ``reason`` and the name of the instance's transfer syntax."""
        from sdcc_twisted.core.conformance import TRANSFER_SYNTAXES

        lines = [line for line in self.qr_log if "sub-operation for" in line]
        self.assertEqual(len(lines), len(failed), self.qr_log)
        for syntax in failed:
            uid = samples[syntax].sop_instance_uid
            [line] = [line for line in lines if uid in line]
            self.assertIn(f"C-{operation} from", line)
            self.assertIn(reason, line)
            self.assertIn(TRANSFER_SYNTAXES[syntax], line)

    def assert_arrived(self, server: Any, received: list[str], decoded: set[str]) -> None:
        """Every file in ``received`` is an instance the server stored: those
        stored in a ``decoded`` syntax as uncompressed copies (pixels equal to
        pydicom's decoding of the stored file, other attributes unchanged),
        the others bit for bit; every stored instance of a ``decoded`` syntax
        arrived."""
        import pydicom

        from .corpus import decoding_differences

        stored = {}
        for path in glob.glob(os.path.join(server.data_dir, "store", "**", "*.dcm"),
                              recursive=True):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            stored[str(ds.SOPInstanceUID)] = (path, str(ds.file_meta.TransferSyntaxUID))
        arrived = set()
        for path in received:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            original, syntax = stored[uid]
            arrived.add(uid)
            if syntax in decoded:
                self.assertEqual(decoding_differences(original, path), [], syntax)
            else:
                self.assertEqual(data_set_bytes(path), data_set_bytes(original), syntax)
        expected = {uid for uid, (_, syntax) in stored.items() if syntax in decoded}
        self.assertTrue(expected, stored)
        self.assertEqual(expected - arrived, set())

    async def test_getscu_failures_are_explained(self) -> None:
        """getscu with its defaults (uncompressed syntaxes only) on a study
        with compressed instances, with [retrieve] max_decode_bytes too small
        to decode any of them: each failed sub-operation is logged with its
        SOP Instance UID and reason, the final C-GET-RSP (B000) carries an
        Error Comment naming the cause, and the Failed SOP Instance UID List
        goes out as its identifier (PS3.4 C.4.3.1.3.2), which getscu 3.6.7
        does not read; with a preferred syntax matching every instance,
        nothing fails and getscu releases cleanly."""
        from sdcc_twisted.core import conformance as c

        server, study, samples = await self.mixed_study(retrieve={"max_decode_bytes": "1000"})
        uncompressed = {c.IMPLICIT_VR_LITTLE_ENDIAN, c.EXPLICIT_VR_LITTLE_ENDIAN,
                        c.EXPLICIT_VR_BIG_ENDIAN}
        compressed = set(samples) - uncompressed
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        out, code = await dcmtk(self, "getscu", "-d", "-S", "-aet", "GETTER", "-aec", "SDCC",
                                "-od", directory, "-k", "QueryRetrieveLevel=STUDY",
                                "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.port))
        self.assertIn("Completed Suboperations       : 3", out)
        self.assertIn("Failed Suboperations          : 6", out)
        self.assertIn("ErrorComment", out)
        self.assertIn("6 of 9 failed: too large to decode (", out)
        self.assertEqual(len(os.listdir(directory)), 3)
        self.assert_failures_logged("GET", samples, compressed,
                                    "over [retrieve] max_decode_bytes (1000)")

        series = samples[c.EXPLICIT_VR_LITTLE_ENDIAN].series_uid
        out, code = await dcmtk(self, "getscu", "-v", "-S", "-aet", "GETTER", "-aec", "SDCC",
                                "-od", directory, "-k", "QueryRetrieveLevel=SERIES",
                                "-k", f"StudyInstanceUID={study}",
                                "-k", f"SeriesInstanceUID={series}",
                                "127.0.0.1", str(server.port))
        self.assertEqual(code, 0, out)
        self.assertIn("Number of Failed Suboperations    : 0", out)
        self.assertIn("Releasing Association", out)
        self.assertNotIn("Release Failed", out)
        self.assertNotIn("Aborting", out)

    async def test_movescu_decodes_for_an_uncompressed_destination(self) -> None:
        """movescu to a storescp that accepts only uncompressed syntaxes: the
        JPEG Baseline, JPEG Lossless, JPEG 2000 (both) and RLE instances
        arrive decoded (pixels equal to pydicom's decoding, every other
        attribute and the SOP Instance UID unchanged), the uncompressed ones
        bit for bit; the JPEG Extended one, which no plugin decodes, fails
        with its reason logged, movescu gets B000 with an Error Comment and
        the Failed SOP Instance UID List, and ends with a clean release."""
        from sdcc_twisted.core import conformance as c

        dest = StoreSCP(self, accept_all=False)
        server, study, samples = await self.mixed_study(
            move_destinations={"DEST": f"127.0.0.1:{dest.port}"})
        out, code = await dcmtk(self, "movescu", "-d", "-S", "-aet", "MOVER", "-aec", "SDCC",
                                "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY",
                                "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.port))
        self.assertIn(f"1 of 9 failed: cannot decode {c.JPEG_EXTENDED}", out)
        self.assertIn("FailedSOPInstanceUIDList", out)
        self.assertIn("Releasing Association", out)
        self.assertNotIn("Release Failed", out)
        self.assertNotIn("Aborting", out)
        self.assertEqual(len(dest.files()), 8)
        self.assert_arrived(server, dest.files(), c.DECODABLE_SYNTAXES - {c.JPEG_EXTENDED})
        self.assert_failures_logged("MOVE", samples, {c.JPEG_EXTENDED}, "cannot decode")

    async def test_pynetdicom_get_decodes_to_implicit(self) -> None:
        """C-GET through pynetdicom accepting every class in Implicit VR
        Little Endian only: the five decodable compressed instances arrive
        decoded to it (pixels equal to pydicom's decoding, other attributes
        unchanged); the three stored in Explicit VR Little Endian (dcmsend
        sent the uncompressed ones so), which are not converted, and the
        undecodable JPEG Extended one fail."""
        from sdcc_twisted.core import conformance as c

        server, study, samples = await self.mixed_study()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        classes = sorted({sample.sop_class_uid for sample in samples.values()})
        result = await in_thread(_pynetdicom_get_implicit, server.port, study, classes, directory)
        self.assertEqual(result["final"], 0xB000)
        self.assertEqual(result["failed"], 4, self.qr_log)
        received = sorted(glob.glob(os.path.join(directory, "*")))
        self.assertEqual(len(received), 5)
        for path in received:
            self.assertTrue(os.path.basename(path).startswith(f"{c.IMPLICIT_VR_LITTLE_ENDIAN}."))
        self.assert_arrived(server, received, c.DECODABLE_SYNTAXES - {c.JPEG_EXTENDED})

    async def test_pynetdicom_find_move_get(self) -> None:
        """pynetdicom as SCU: C-FIND matches, C-MOVE to an unknown destination
        answers A801, C-MOVE to a pynetdicom store SCP moves every instance,
        and C-GET retrieves a study."""
        received: list[bytes] = []
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import CTImageStorage

        dest_ae = AE(ae_title="PYDEST")
        dest_ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

        def on_store(event: Any) -> int:
            received.append(event.request.AffectedSOPInstanceUID)
            return 0
        dest_port = free_port()
        dest_server = dest_ae.start_server(("127.0.0.1", dest_port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.addCleanup(dest_server.shutdown)
        server, studies = await self.populated(
            move_destinations={"PYDEST": f"127.0.0.1:{dest_port}"})
        result = await in_thread(_pynetdicom_qr, server.port, "1.2.826.0.1.3680043.8.498.2")
        self.assertEqual(result["find"], [("P2", "1.2.826.0.1.3680043.8.498.2")])
        self.assertEqual(result["unknown_move"], 0xA801)
        self.assertEqual(result["move_final"], 0x0000)
        self.assertEqual(result["move_completed"], 2)
        self.assertEqual(sorted(received), sorted(result["expected_uids"]))
        self.assertEqual(result["get_final"], 0x0000)
        self.assertEqual(sorted(result["got"]), sorted(result["expected_uids"]))

    async def test_destination_down(self) -> None:
        """A C-MOVE to a destination that does not answer ends with failed
        counts, and the same association still serves a C-ECHO."""
        closed_port = free_port()
        server, studies = await self.populated(
            move_destinations={"DOWN": f"127.0.0.1:{closed_port}"})
        result = await in_thread(_move_to_down, server.port, "1.2.826.0.1.3680043.8.498.1")
        self.assertIn(result["final"], (0xA702, 0xB000))
        self.assertEqual(result["failed"], 6)
        self.assertEqual(result["completed"], 0)
        self.assertEqual(result["echo_after"], 0)

    async def test_cancel_mid_move(self) -> None:
        """A C-CANCEL after the first pending C-MOVE response stops the move
        with status FE00 before every instance was sent."""
        dest = StoreSCP(self)
        server, studies = await self.populated(
            big=True, move_destinations={"DEST": f"127.0.0.1:{dest.port}"})
        result = await in_thread(_move_and_cancel, server.port, "1.2.826.0.1.3680043.8.498.3")
        self.assertEqual(result["final"], 0xFE00)
        self.assertLess(result["completed"], 40)
        self.assertEqual(len(dest.files()), result["completed"])
        self.assertEqual(result["echo_after"], 0)


def _series_of(path: str) -> str:
    import pydicom
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def _qr_ae(*contexts: str) -> Any:
    from pynetdicom import AE
    ae = AE(ae_title="PYQR")
    for uid in contexts:
        ae.add_requested_context(uid)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def _find_studies(port: int, **keys: str) -> list[tuple[str, str]]:
    """A Study Root STUDY-level C-FIND with pynetdicom; the matches'
    (StudyInstanceUID, ModalitiesInStudy)."""
    from pydicom.dataset import Dataset

    ae = _qr_ae(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        return sorted((str(i.StudyInstanceUID), str(i.get("ModalitiesInStudy", "")))
                      for s, i in assoc.send_c_find(query, STUDY_ROOT_FIND)
                      if s and s.Status in (0xFF00, 0xFF01))
    finally:
        assoc.release()


def _context_results(port: int, calling: str) -> dict[str, int]:
    """Associate as ``calling`` proposing Study Root FIND and Verification;
    the result the A-ASSOCIATE-AC gave each (0 accepted)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
    assert assoc.is_established
    try:
        answers = {cx.abstract_syntax: 0 for cx in assoc.accepted_contexts}
        answers.update({cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts})
        return answers
    finally:
        assoc.release()


def _pynetdicom_qr(port: int, study: str) -> dict[str, Any]:
    from pydicom.dataset import Dataset
    from pynetdicom import build_role
    from pynetdicom.sop_class import CTImageStorage

    out: dict[str, Any] = {}
    ae = _qr_ae(STUDY_ROOT_FIND, STUDY_ROOT_MOVE)
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "P2"
        query.StudyInstanceUID = ""
        out["find"] = [(str(i.PatientID), str(i.StudyInstanceUID))
                       for s, i in assoc.send_c_find(query, STUDY_ROOT_FIND)
                       if s and s.Status in (0xFF00, 0xFF01)]
        move = Dataset()
        move.QueryRetrieveLevel = "STUDY"
        move.StudyInstanceUID = study
        out["unknown_move"] = [s.Status for s, _ in
                               assoc.send_c_move(move, "NOWHERE", STUDY_ROOT_MOVE)][-1]
        responses = [s for s, _ in assoc.send_c_move(move, "PYDEST", STUDY_ROOT_MOVE)]
        out["move_final"] = responses[-1].Status
        out["move_completed"] = int(responses[-1].get("NumberOfCompletedSuboperations", 0))
        image = Dataset()
        image.QueryRetrieveLevel = "IMAGE"
        image.StudyInstanceUID = study
        image.SeriesInstanceUID = f"{study}.1"
        image.SOPInstanceUID = ""
        out["expected_uids"] = [str(i.SOPInstanceUID)
                                for s, i in assoc.send_c_find(image, STUDY_ROOT_FIND)
                                if s and s.Status in (0xFF00, 0xFF01)]
    finally:
        assoc.release()

    got: list[str] = []

    def on_store(event: Any) -> int:
        got.append(event.request.AffectedSOPInstanceUID)
        return 0
    from pynetdicom import evt
    ae = _qr_ae(STUDY_ROOT_GET)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        get = Dataset()
        get.QueryRetrieveLevel = "STUDY"
        get.StudyInstanceUID = study
        out["get_final"] = [s.Status for s, _ in assoc.send_c_get(get, STUDY_ROOT_GET)][-1]
    finally:
        assoc.release()
    out["got"] = got
    return out


def _pynetdicom_get_implicit(port: int, study: str, classes: list[str],
                             directory: str) -> dict[str, Any]:
    """A Study Root C-GET of ``study`` accepting each of ``classes`` in
    Implicit VR Little Endian only; each instance saved in ``directory`` as
    {transfer syntax}.{SOP Instance UID}; the final status and failed count."""
    from pydicom.dataset import Dataset
    from pynetdicom import build_role, evt

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        syntax = str(event.context.transfer_syntax)
        ds.save_as(os.path.join(directory, f"{syntax}.{ds.SOPInstanceUID}"),
                   enforce_file_format=True)
        return 0
    ae = _qr_ae(STUDY_ROOT_GET)
    for uid in classes:
        ae.add_requested_context(uid, ["1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC",
                         ext_neg=[build_role(uid, scp_role=True) for uid in classes],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        get = Dataset()
        get.QueryRetrieveLevel = "STUDY"
        get.StudyInstanceUID = study
        final = [s for s, _ in assoc.send_c_get(get, STUDY_ROOT_GET)][-1]
    finally:
        assoc.release()
    return {"final": final.Status,
            "failed": int(final.get("NumberOfFailedSuboperations", 0))}


def _study_move(port: int, study: str) -> tuple[Any, Any]:
    """A pynetdicom association for Study Root C-MOVE (and C-ECHO), and the
    identifier that moves ``study``."""
    from pydicom.dataset import Dataset
    from sdcc_twisted.core.conformance import VERIFICATION_SOP_CLASS

    ae = _qr_ae(STUDY_ROOT_MOVE, VERIFICATION_SOP_CLASS)
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
    assert assoc.is_established
    move = Dataset()
    move.QueryRetrieveLevel = "STUDY"
    move.StudyInstanceUID = study
    return assoc, move


def _move_to_down(port: int, study: str) -> dict[str, Any]:
    assoc, move = _study_move(port, study)
    try:
        last = [s for s, _ in assoc.send_c_move(move, "DOWN", STUDY_ROOT_MOVE)][-1]
        return {"final": last.Status,
                "failed": int(last.get("NumberOfFailedSuboperations", -1)),
                "completed": int(last.get("NumberOfCompletedSuboperations", -1)),
                "echo_after": assoc.send_c_echo().Status}
    finally:
        assoc.release()


def _move_and_cancel(port: int, study: str) -> dict[str, Any]:
    assoc, move = _study_move(port, study)
    try:
        context_id = next(c.context_id for c in assoc.accepted_contexts
                          if c.abstract_syntax == STUDY_ROOT_MOVE)
        statuses = []
        for status, _ in assoc.send_c_move(move, "DEST", STUDY_ROOT_MOVE, msg_id=7):
            statuses.append(status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, context_id)
        last = statuses[-1]
        return {"final": last.Status,
                "completed": int(last.get("NumberOfCompletedSuboperations", -1)),
                "echo_after": assoc.send_c_echo().Status}
    finally:
        assoc.release()
