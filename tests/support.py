"""Builders shared by the tests: requests, command sets, data sets."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import Any

from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.dimse import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    MESSAGE_ID,
    PRIORITY,
    encode_command,
)
from sdcc_twisted.core.pdu import (
    PDV,
    AAssociateRQ,
    PDataTF,
    PresentationContextRQ,
    UserInformation,
    encode,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def associate_rq(calling: str = "PEER", called: str = "SDCC",
                 contexts: tuple[tuple[int, str, tuple[str, ...]], ...] | None = None,
                 max_length: int = 16384, async_ops: tuple[int, int] | None = None,
                 application_context: str = c.APPLICATION_CONTEXT_NAME,
                 protocol_version: int = 1) -> AAssociateRQ:
    """An A-ASSOCIATE-RQ as a typical SCU sends it."""
    if contexts is None:
        contexts = ((1, c.VERIFICATION_SOP_CLASS, (c.IMPLICIT_VR_LITTLE_ENDIAN,)),
                    (3, CT, (c.EXPLICIT_VR_LITTLE_ENDIAN, c.IMPLICIT_VR_LITTLE_ENDIAN)))
    return AAssociateRQ(
        called_ae=called, calling_ae=calling,
        application_context=application_context,
        presentation_contexts=tuple(PresentationContextRQ(i, a, t) for i, a, t in contexts),
        user_information=UserInformation(
            max_length=max_length, implementation_class_uid="1.2.3.4",
            implementation_version_name="TEST", async_ops=async_ops),
        protocol_version=protocol_version,
    )


def echo_command(message_id: int = 1) -> bytes:
    """An encoded C-ECHO-RQ command set."""
    return encode_command({
        AFFECTED_SOP_CLASS_UID: c.VERIFICATION_SOP_CLASS,
        COMMAND_FIELD: c.C_ECHO_RQ, MESSAGE_ID: message_id,
        COMMAND_DATA_SET_TYPE: c.NO_DATA_SET})


def store_command(sop_instance: str, sop_class: str = CT, message_id: int = 1,
                  drop: tuple[int, ...] = ()) -> bytes:
    """An encoded C-STORE-RQ command set, optionally without some elements."""
    elements = {
        AFFECTED_SOP_CLASS_UID: sop_class, COMMAND_FIELD: c.C_STORE_RQ,
        MESSAGE_ID: message_id, PRIORITY: 0, COMMAND_DATA_SET_TYPE: 0x0001,
        AFFECTED_SOP_INSTANCE_UID: sop_instance}
    for element in drop:
        elements.pop(element, None)
    return encode_command(elements)


def pdata(context_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU with one PDV."""
    return encode(PDataTF((PDV(context_id, control, data),)))


def message_pdus(context_id: int, command: bytes, data_set: bytes | None = None,
                 fragment: int = 16000) -> bytes:
    """A whole DIMSE message as P-DATA-TF PDUs, data set in ``fragment`` pieces."""
    out = pdata(context_id, 0x03, command)
    if data_set is not None:
        pieces = [data_set[i:i + fragment] for i in range(0, len(data_set), fragment)] or [b""]
        for n, piece in enumerate(pieces):
            out += pdata(context_id, 0x02 if n == len(pieces) - 1 else 0x00, piece)
    return out


def dataset_bytes(sop_instance: str, sop_class: str = CT, implicit: bool = False,
                  study: str = "1.2.3.100", series: str = "1.2.3.100.1",
                  pixels: bytes = b"\x00\x01" * 64, **extra: Any) -> bytes:
    """A small encoded data set (no file meta) with the given UIDs."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = extra.pop("PatientID", "PID1")
    ds.PatientName = extra.pop("PatientName", "Test^Patient")
    ds.Modality = extra.pop("Modality", "CT")
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.Rows = 8
    ds.Columns = len(pixels) // 16 or 1
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def in_ci() -> bool:
    """True under CI, where a missing peer is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true"


@functools.lru_cache(maxsize=None)
def dcmtk_tool(name: str) -> str | None:
    """The path of a DCMTK command-line tool, skipping same-named scripts
    that other packages (pynetdicom) put earlier on PATH.  Looked up once
    per run: probing the other scripts takes about a second each."""
    candidates = []
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK) and path not in candidates:
            candidates.append(path)
    for path in candidates:
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    return None


def require_tool(testcase: Any, name: str) -> str:
    """Return a DCMTK tool's path; skip without it (fail under CI)."""
    path = dcmtk_tool(name)
    if path is None:
        message = f"DCMTK {name} is not installed (apt-get install dcmtk)"
        if in_ci():
            testcase.fail(message + " -- required under CI")
        from twisted.trial.unittest import SkipTest
        raise SkipTest(message)
    return path


def which(name: str) -> str | None:
    """shutil.which, for symmetry in the tests."""
    return shutil.which(name)
