"""Test objects for the interop tests, built at test time (nothing committed).

* :func:`sop_class_corpus`: one small, valid instance of every storage SOP
  class of :data:`sdcc_twisted.core.conformance.STORAGE_SOP_CLASSES`.
* :func:`transfer_syntax_corpus`: for each of the nine transfer syntaxes of
  :data:`sdcc_twisted.core.conformance.TRANSFER_SYNTAXES` an instance with real
  encoded pixel data: one of pydicom's bundled test files, re-stamped with
  fresh Study/Series/SOP Instance UIDs and written again in its own transfer
  syntax (the pixel data bytes are kept as they are), in the encoding DCMTK
  sends (:func:`dcmtk_canonical`), so storescu sends the file's bytes.
* :func:`write_large_multiframe`: a large multi-frame object, written in
  pieces so that the test process never holds its pixel data in memory.
* :func:`split_part10` / :func:`data_set_bytes` / :func:`data_set_digest`:
  what follows the File Meta Information of a Part 10 file, to compare what
  was sent with what was stored.

Each builder returns :class:`Sample` records that say which UIDs and which
transfer syntax a file carries, so the tests can check the server's file and
its index entry against them.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from sdcc_twisted.core import conformance as c
from sdcc_twisted.core.part10 import read_file_meta

#: Our implementation, as written into every stored file's meta.
OUR_IMPLEMENTATION_CLASS_UID: Final = c.IMPLEMENTATION_CLASS_UID

#: Per transfer syntax, the pydicom bundled test file used for it.  Each was
#: checked to be cleanly encoded (no odd-length value, explicit when it says
#: so) and to carry Pixel Data in that syntax.
BUNDLED_FILES: Final[dict[str, str]] = {
    c.IMPLICIT_VR_LITTLE_ENDIAN: "MR_small_implicit.dcm",
    c.EXPLICIT_VR_LITTLE_ENDIAN: "CT_small.dcm",
    c.EXPLICIT_VR_BIG_ENDIAN: "MR_small_bigendian.dcm",
    c.JPEG_BASELINE: "SC_rgb_jpeg_dcmtk.dcm",
    c.JPEG_EXTENDED: "JPEG-lossy.dcm",
    c.JPEG_LOSSLESS_SV1: "SC_rgb_jpeg_gdcm.dcm",
    c.JPEG_2000_LOSSLESS: "MR_small_jp2klossless.dcm",
    c.JPEG_2000: "JPEG2000.dcm",
    c.RLE_LOSSLESS: "MR_small_RLE.dcm",
}

#: Modality written into the SOP class corpus, by SOP class.
_MODALITY: Final[dict[str, str]] = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "MG",
    "1.2.840.10008.5.1.4.1.1.1.3": "IO",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "IO",
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.3": "US",
    "1.2.840.10008.5.1.4.1.1.3.1": "US",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR",
    "1.2.840.10008.5.1.4.1.1.4.3": "MR",
    "1.2.840.10008.5.1.4.1.1.5": "NM",
    "1.2.840.10008.5.1.4.1.1.6": "US",
    "1.2.840.10008.5.1.4.1.1.6.1": "US",
    "1.2.840.10008.5.1.4.1.1.7": "OT",
    "1.2.840.10008.5.1.4.1.1.12.1": "XA",
    "1.2.840.10008.5.1.4.1.1.12.2": "RF",
    "1.2.840.10008.5.1.4.1.1.12.3": "XA",
    "1.2.840.10008.5.1.4.1.1.20": "NM",
    "1.2.840.10008.5.1.4.1.1.77.1": "ES",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "ES",
    "1.2.840.10008.5.1.4.1.1.77.1.2": "GM",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "SM",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "XC",
    "1.2.840.10008.5.1.4.1.1.77.2": "ES",
    "1.2.840.10008.5.1.4.1.1.128": "PT",
    "1.2.840.10008.5.1.4.1.1.481.1": "RTIMAGE",
}


@dataclass(frozen=True)
class Sample:
    """One test object on disk and what it is."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    patient_name: str
    transfer_syntax: str


def new_uid() -> str:
    """A fresh UID (pydicom's generate_uid)."""
    from pydicom.uid import generate_uid

    return generate_uid()


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> Any:
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    meta.ImplementationVersionName = "SDCC_TESTS"
    return meta


def sample_of(path: str, ds: Any) -> Sample:
    """The :class:`Sample` of ``ds`` written at ``path``."""
    return Sample(path=path, sop_class_uid=str(ds.SOPClassUID),
                  sop_instance_uid=str(ds.SOPInstanceUID),
                  study_uid=str(ds.StudyInstanceUID),
                  series_uid=str(ds.SeriesInstanceUID),
                  patient_id=str(ds.PatientID), patient_name=str(ds.PatientName),
                  transfer_syntax=str(ds.file_meta.TransferSyntaxUID))


def small_dataset(sop_class: str, *, study: str | None = None, series: str | None = None,
                  sop_instance: str | None = None, patient_id: str = "PID-CORPUS",
                  patient_name: str = "Corpus^Patient",
                  transfer_syntax: str = c.EXPLICIT_VR_LITTLE_ENDIAN,
                  rows: int = 8, columns: int = 8, number: int = 1) -> Any:
    """A small valid image instance of ``sop_class`` (8x8, 16-bit, mono).

    The file meta is set for ``transfer_syntax`` (an uncompressed one).
    """
    import numpy as np
    from pydicom.dataset import Dataset

    sop_instance = sop_instance or new_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_instance, transfer_syntax)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = "20240102"
    ds.ContentDate = "20240102"
    ds.StudyTime = "101112"
    ds.AccessionNumber = "ACC" + str(number)
    ds.Modality = _MODALITY.get(sop_class, "OT")
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = "sdcc interop corpus"
    ds.SeriesDescription = c.sop_class_name(sop_class)[:64]
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study or new_uid()
    ds.SeriesInstanceUID = series or new_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = (np.arange(rows * columns, dtype="<u2") * 37 + number) & 0x0FFF
    if transfer_syntax == c.EXPLICIT_VR_BIG_ENDIAN:
        pixels = pixels.astype(">u2")
    ds.PixelData = pixels.tobytes()
    return ds


def write_dataset_file(ds: Any, path: str) -> None:
    """dcmwrite with the transfer syntax of ``ds.file_meta``, unchanged."""
    from pydicom import dcmwrite

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


def write_small(path: str, sop_class: str, **kwargs: Any) -> Sample:
    """Write :func:`small_dataset` (same arguments) to ``path``."""
    ds = small_dataset(sop_class, **kwargs)
    write_dataset_file(ds, path)
    return sample_of(path, ds)


def sop_class_corpus(directory: str, patient_id: str = "PID-CORPUS",
                     patient_name: str = "Corpus^Patient") -> list[Sample]:
    """One small instance of every storage SOP class of the statement.

    All in one study, one series per SOP class, Explicit VR Little Endian.
    """
    study = new_uid()
    samples = []
    for n, sop_class in enumerate(sorted(c.STORAGE_SOP_CLASSES), 1):
        ds = small_dataset(sop_class, study=study, patient_id=patient_id,
                           patient_name=patient_name, number=n)
        path = os.path.join(directory, f"sop{n:02d}.dcm")
        write_dataset_file(ds, path)
        samples.append(sample_of(path, ds))
    return samples


def dcmtk_canonical(ds: Any) -> None:
    """Give ``ds`` the encoding that DCMTK's storescu sends.

    DCMTK re-encodes a data set when it sends it: sequences and items get
    defined lengths, encapsulated Pixel Data is OB and Data Set Trailing
    Padding is dropped.  A file already encoded that way goes over the wire
    byte for byte, so the stored data set can be compared with the file's.
    """
    from pydicom.uid import UID

    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if syntax.is_encapsulated and "PixelData" in ds:
        ds["PixelData"].VR = "OB"

    def walk(dataset: Any) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                elem.is_undefined_length = False
                for item in elem.value:
                    item.is_undefined_length_sequence_item = False
                    walk(item)

    walk(ds)


def bundled_path(name: str) -> str:
    """The path of one of pydicom's bundled test files."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:  # pragma: no cover - pydicom ships these
        raise FileNotFoundError(f"pydicom test file {name} is missing")
    return str(path)


def restamped(name: str, path: str, *, study: str | None = None,
              series: str | None = None, sop_instance: str | None = None,
              patient_id: str | None = None, patient_name: str | None = None) -> Sample:
    """Copy pydicom's bundled ``name`` to ``path`` with fresh UIDs.

    The encoding (transfer syntax, pixel data bytes) stays as it is.
    """
    from pydicom import dcmread

    ds = dcmread(bundled_path(name))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    ds.StudyInstanceUID = study or new_uid()
    ds.SeriesInstanceUID = series or new_uid()
    ds.SOPInstanceUID = sop_instance or new_uid()
    if patient_id is not None:
        ds.PatientID = patient_id
    elif "PatientID" not in ds:
        ds.PatientID = ""
    if patient_name is not None:
        ds.PatientName = patient_name
    elif "PatientName" not in ds:
        ds.PatientName = ""
    dcmtk_canonical(ds)
    ds.file_meta = _file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)
    write_dataset_file(ds, path)
    return sample_of(path, ds)


def transfer_syntax_corpus(directory: str, **stamp: Any) -> dict[str, Sample]:
    """Transfer syntax -> an instance with real pixel data encoded in it."""
    out = {}
    for n, (syntax, name) in enumerate(BUNDLED_FILES.items(), 1):
        sample = restamped(name, os.path.join(directory, f"ts{n:02d}.dcm"), **stamp)
        if sample.transfer_syntax != syntax:  # pragma: no cover - guards the table
            raise AssertionError(f"{name} is {sample.transfer_syntax}, not {syntax}")
        out[syntax] = sample
    return out


# -- Part 10 files: where the data set starts ----------------------------------

def _meta_end(handle: BinaryIO) -> int:
    """Offset of the first byte after the File Meta Information."""
    handle.seek(0)
    return read_file_meta(handle.read).data_set_offset


def split_part10(path: str) -> tuple[bytes, bytes]:
    """(preamble + DICM + meta group, data set bytes) of a small file."""
    with open(path, "rb") as handle:
        end = _meta_end(handle)
        handle.seek(0)
        return handle.read(end), handle.read()


def data_set_bytes(path: str) -> bytes:
    """The raw data set bytes of a Part 10 file (everything after its meta)."""
    return split_part10(path)[1]


def data_set_digest(path: str, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size, SHA-256) of the data set bytes of a Part 10 file, streamed."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        handle.seek(_meta_end(handle))
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


# -- a large multi-frame object, streamed ------------------------------------

@dataclass(frozen=True)
class LargeSample:
    """A large multi-frame file and the digest of its data set bytes."""

    sample: Sample
    frames: int
    data_set_size: int
    data_set_sha256: str


def write_large_multiframe(path: str, target_bytes: int = 300 * 1024 * 1024,
                           rows: int = 512, columns: int = 512,
                           sop_class: str = "1.2.840.10008.5.1.4.1.1.12.1",
                           patient_id: str = "PID-LARGE") -> LargeSample:
    """Write a multi-frame 16-bit object of about ``target_bytes`` of pixels.

    The header is encoded by pydicom (Explicit VR Little Endian); the Pixel
    Data element header and the frames are written by hand, one frame at a
    time, so the test process holds one frame (``rows*columns*2`` bytes) at
    most.  The SHA-256 of the data set bytes is computed while writing.
    """
    import numpy as np
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    frame_bytes = rows * columns * 2
    frames = max(1, target_bytes // frame_bytes)
    ds = small_dataset(sop_class, patient_id=patient_id,
                       patient_name="Large^Multiframe", rows=rows, columns=columns)
    del ds.PixelData
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = "33.3"

    meta = DicomBytesIO()
    meta.is_little_endian = True
    meta.is_implicit_VR = False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = False
    write_dataset(body, ds)
    head = body.getvalue()
    pixel_header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, frame_bytes * frames)

    digest = hashlib.sha256()
    size = 0
    base = np.arange(rows * columns, dtype=np.uint32)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as out:
        out.write(b"\x00" * 128 + b"DICM" + meta.getvalue())
        for piece in (head, pixel_header):
            out.write(piece)
            digest.update(piece)
            size += len(piece)
        for n in range(frames):
            frame = ((base * 7 + n * 131) & 0x0FFF).astype("<u2").tobytes()
            out.write(frame)
            digest.update(frame)
            size += len(frame)
    return LargeSample(sample_of(path, ds), frames, size, digest.hexdigest())


# -- a decoded instance against its original ------------------------------------

#: Attributes decoding may change (PS3.5 8.2; PS3.3 C.7.6.3, C.7.6.1.1.5).
DECODING_CHANGES: Final = frozenset({
    "PixelData", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"})


def decoding_differences(original: str, decoded: str) -> list[str]:
    """What is wrong with ``decoded`` as the uncompressed copy of
    ``original``: an uncompressed syntax, the same SOP Instance UID, pixels
    equal to pydicom's decoding of the original, every other attribute the
    same (public ones by value, private ones by presence), and a lossy
    original recorded as such.  Empty when all is well."""
    import numpy
    from pydicom import dcmread

    before, after = dcmread(original), dcmread(decoded)
    problems = []
    syntax = str(after.file_meta.TransferSyntaxUID)
    if syntax not in (c.EXPLICIT_VR_LITTLE_ENDIAN, c.IMPLICIT_VR_LITTLE_ENDIAN):
        problems.append(f"arrived in {syntax}")
    if not numpy.array_equal(before.pixel_array, after.pixel_array):
        problems.append("pixels differ from pydicom's decoding of the original")
    kept = [{e.tag for e in ds if e.keyword not in DECODING_CHANGES} for ds in (before, after)]
    if kept[0] != kept[1]:
        problems.append(f"elements differ: {sorted(kept[0] ^ kept[1])}")
    for element in before:
        if element.tag.is_private or element.keyword in DECODING_CHANGES:
            continue
        if element.tag in after and after[element.tag].value != element.value:
            problems.append(f"{element.keyword or element.tag} changed")
    lossy = c.LOSSY_COMPRESSION_METHODS.get(str(before.file_meta.TransferSyntaxUID))
    if lossy and (after.get("LossyImageCompression") != "01"
                  or lossy not in str(after.get("LossyImageCompressionMethod", ""))):
        problems.append("a lossy original is not recorded as lossy")
    return problems
