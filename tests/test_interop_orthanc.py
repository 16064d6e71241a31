"""Orthanc, a real PACS, retrieves a study from sdcc by C-MOVE (its REST API)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from .server_support import dcmtk, free_port, in_thread, start_server
from .support import in_ci
from .corpus import data_set_bytes
from .test_interop_qr import write_study


class Orthanc:
    """An Orthanc server on free ports with its data in a temp directory."""

    def __init__(self, testcase: TestCase, sdcc_port: int, dicom_port: int) -> None:
        binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc"
                                            if os.path.exists("/usr/sbin/Orthanc") else None)
        if binary is None:
            message = "Orthanc is not installed (apt-get install orthanc)"
            if in_ci():
                testcase.fail(message + " -- required under CI")
            raise SkipTest(message)
        self.directory = os.path.abspath(testcase.mktemp())
        os.makedirs(self.directory)
        self.dicom_port, self.http_port = dicom_port, free_port()
        config = {
            "Name": "sdcc-test", "DicomAet": "ORTHANC", "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "StorageDirectory": os.path.join(self.directory, "storage"),
            "IndexDirectory": os.path.join(self.directory, "index"),
            "DicomModalities": {"sdcc": ["SDCC", "127.0.0.1", sdcc_port]},
            "Plugins": [], "DicomScuTimeout": 10, "DicomScpTimeout": 10,
        }
        path = os.path.join(self.directory, "orthanc.json")
        with open(path, "w") as handle:
            json.dump(config, handle)
        self.log = open(os.path.join(self.directory, "orthanc.log"), "wb")
        self.process = subprocess.Popen([binary, path], stdout=self.log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        testcase.addCleanup(self.stop)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.http_port), 0.2).close()
                socket.create_connection(("127.0.0.1", self.dicom_port), 0.2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("Orthanc did not start")
                time.sleep(0.1)

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         data=data, method=method)
        with urllib.request.urlopen(request, timeout=60) as reply:
            text = reply.read()
        return json.loads(text) if text else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class OrthancRetrieveTests(TestCase):
    """Orthanc as the retrieving PACS."""

    timeout = 180

    async def test_orthanc_moves_a_study_from_sdcc(self) -> None:
        """Orthanc asks sdcc (C-FIND, then C-MOVE to itself) for a study over
        its REST API; every instance arrives in Orthanc bit for bit."""
        study = "1.2.826.0.1.3680043.8.498.77"
        source = os.path.abspath(self.mktemp())
        os.makedirs(source)
        files = write_study(source, "ORTH1", "Pacs^Test", study, 2, 3, "20240301")
        dicom_port = free_port()  # sdcc must know Orthanc's port before either starts
        server = await start_server(self, move_destinations={"ORTHANC": f"127.0.0.1:{dicom_port}"})
        out, code = await dcmtk(self, "storescu", "-aet", "LOADER", "-aec", "SDCC",
                                "127.0.0.1", str(server.port), *files)
        self.assertEqual(code, 0, out)
        orthanc = await in_thread(Orthanc, self, server.port, dicom_port)
        found = await in_thread(orthanc.rest, "POST", "/modalities/sdcc/query",
                                {"Level": "Study", "Query": {"StudyInstanceUID": study}})
        answers = await in_thread(orthanc.rest, "GET", f"/queries/{found['ID']}/answers")
        self.assertEqual(len(answers), 1)
        await in_thread(orthanc.rest, "POST", f"/queries/{found['ID']}/retrieve",
                        {"TargetAet": "ORTHANC", "Synchronous": True})
        instances = await in_thread(orthanc.rest, "GET", "/instances")
        self.assertEqual(len(instances), len(files))
        received = []
        for identifier in instances:
            raw = await in_thread(_download, orthanc, identifier)
            path = os.path.join(source, f"from-orthanc-{identifier}.dcm")
            with open(path, "wb") as handle:
                handle.write(raw)
            received.append(data_set_bytes(path))
        self.assertEqual(sorted(received), sorted(data_set_bytes(p) for p in files))


def _download(orthanc: Orthanc, identifier: str) -> bytes:
    request = urllib.request.Request(
        f"http://127.0.0.1:{orthanc.http_port}/instances/{identifier}/file")
    with urllib.request.urlopen(request, timeout=60) as reply:
        return reply.read()
