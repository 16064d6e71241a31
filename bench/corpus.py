"""The benchmark corpus: synthetic DICOM files made with pydicom and numpy.

Nothing here is committed: files are generated on first use and cached under
``bench/corpus/<set>/`` (gitignored) with a ``manifest.json`` that records,
for every file, its SOP Instance UID, its size and the SHA-1 of its *data
set bytes* (everything after the File Meta Information).  A receiver may
rewrite the File Meta Information, but it must keep the data set bytes
(same transfer syntax, Explicit VR Little Endian), so the hash is how
:func:`verify_received` proves a file arrived intact.

Sets (all Explicit VR Little Endian, deterministic UIDs and pixels):

``ct``     CT Image Storage, 512x512, 16-bit (12 stored), about 0.5 MB each;
           100 images per study, 2 series per study.
``small``  Secondary Capture, 64x64, 8-bit, about 5 KB each; 50 per study.
``large``  two Digital Mammography (For Presentation) 4096x3328 16-bit
           (27 MB each) and one X-Ray Angiographic cine of 200 frames
           512x512 16-bit (100 MB).  (XA, not Multi-frame Grayscale Word
           Secondary Capture: sdcc does not accept that SOP Class.)

Sets grow incrementally: asking for the first N files of a set makes only
the ones missing, so ``--quick`` and a full run share one cache.

Run ``python bench/corpus.py`` to (re)generate the full corpus by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))   # the repository: sdcc's Part 10 parser
from sdcc_twisted.core.part10 import FileMeta, read_file_meta  # noqa: E402

#: Bump when the generated content changes: the cache is then rebuilt.
GENERATOR_VERSION = "sdcc-bench-corpus-2"

DEFAULT_ROOT = os.path.join(HERE, "corpus")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MAMMO_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
XA_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.1"

#: Full size of every set (what a default run uses).
FULL_COUNTS = {"ct": 500, "small": 2000, "large": 3}

_IMPL_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's root, "bench" suffix
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class CorpusFile:
    """One generated file and what a receiver must reproduce."""

    path: str
    sop_instance_uid: str
    size: int              # whole file, as generated
    dataset_length: int    # bytes after the File Meta Information
    dataset_sha1: str      # SHA-1 of those bytes


# -- Part 10 helpers (shared with the verifier) ---------------------------------
def read_meta(f) -> FileMeta:
    """The File Meta Information of an open Part 10 file (sdcc's own parser,
    :mod:`sdcc_twisted.core.part10`); leaves ``f`` at the data set.  Raises
    ``ValueError`` if the file is not Part 10."""
    meta = read_file_meta(f.read)
    f.seek(meta.data_set_offset)
    return meta


def dataset_digest(path: str, drop_cache: bool = False) -> tuple[str, str, str, int]:
    """Return (SOP Instance UID, transfer syntax, SHA-1, length) of the data
    set bytes of a Part 10 file; ``drop_cache`` then evicts the file from the
    page cache (clean pages only: sync first)."""
    with open(path, "rb") as f:
        meta = read_meta(f)
        h = hashlib.sha1()
        n = 0
        while True:
            chunk = f.read(_HASH_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        if drop_cache:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return (meta.sop_instance_uid, meta.transfer_syntax,
            h.hexdigest(), n)


# -- generation -----------------------------------------------------------------
def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[GENERATOR_VERSION, *map(str, parts)])


def _base(sop_class: str, sop_uid: str, study: int, series: int, instance: int,
          modality: str, kind: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPL_UID
    meta.ImplementationVersionName = "SDCC_BENCH"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240101"
    ds.SeriesDate = "20240101"
    ds.ContentDate = "20240101"
    ds.StudyTime = "080000"
    ds.ContentTime = f"08{instance // 60 % 60:02d}{instance % 60:02d}"
    ds.AccessionNumber = f"ACC{kind[:3].upper()}{study:05d}"
    ds.Modality = modality
    ds.Manufacturer = "SDCC BENCH"
    ds.InstitutionName = "Loopback General Hospital"
    ds.ReferringPhysicianName = "Referrer^Ray"
    ds.StationName = "BENCH01"
    ds.StudyDescription = f"Bench {kind} study {study}"
    ds.SeriesDescription = f"Bench {kind} series {series}"
    ds.PatientName = f"Bench^{kind.capitalize()}{study:04d}"
    ds.PatientID = f"BENCH-{kind.upper()}-{study:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = _uid(kind, "study", study)
    ds.SeriesInstanceUID = _uid(kind, "series", study, series)
    ds.StudyID = str(study)
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = instance + 1
    code = Dataset()
    code.CodeValue = "BENCH"
    code.CodingSchemeDesignator = "99SDCC"
    code.CodeMeaning = "Benchmark procedure"
    ds.ProcedureCodeSequence = Sequence([code])
    return ds


def _mono(ds: Dataset, rows: int, cols: int, bits: int, stored: int, frames: int = 0) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames:
        ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 0


def _make_ct(i: int) -> Dataset:
    study, within = divmod(i, 100)
    series, _ = divmod(within, 50)
    ds = _base(CT_IMAGE_STORAGE, _uid("ct", i), study, series, within, "CT", "ct")
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-within * 1.0:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = _uid("ct", "for", study)
    ds.SliceLocation = f"{-within * 1.0:.1f}"
    _mono(ds, 512, 512, 16, 12)
    ds.PixelSpacing = ["0.9765625", "0.9765625"]
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    rng = np.random.default_rng(10_000_000 + i)
    ds.PixelData = rng.integers(0, 4096, size=(512, 512), dtype=np.uint16).tobytes()
    return ds


def _make_small(i: int) -> Dataset:
    study, within = divmod(i, 50)
    ds = _base(SECONDARY_CAPTURE, _uid("small", i), study, 0, within, "OT", "small")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    _mono(ds, 64, 64, 8, 8)
    rng = np.random.default_rng(20_000_000 + i)
    ds.PixelData = rng.integers(0, 256, size=(64, 64), dtype=np.uint8).tobytes()
    return ds


def _make_large(i: int) -> Dataset:
    if i < 2:   # two mammography views, 27 MB each
        ds = _base(MAMMO_FOR_PRESENTATION, _uid("large", i), 0, 0, i, "MG", "large")
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "L"
        ds.ViewPosition = "CC" if i == 0 else "MLO"
        _mono(ds, 4096, 3328, 16, 14)
        ds.ImagerPixelSpacing = ["0.07", "0.07"]
        rng = np.random.default_rng(30_000_000 + i)
        ds.PixelData = rng.integers(0, 1 << 14, size=(4096, 3328), dtype=np.uint16).tobytes()
        return ds
    # an X-ray angiography cine run of 200 frames: 100 MiB
    ds = _base(XA_IMAGE_STORAGE, _uid("large", i), 0, 1, i, "XA", "large")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = "0"
    ds.PositionerSecondaryAngle = "0"
    _mono(ds, 512, 512, 16, 12, frames=200)
    ds.FrameIncrementPointer = 0x00181063   # Frame Time
    ds.FrameTime = "33.3"
    ds.CineRate = 30
    rng = np.random.default_rng(30_000_000 + i)
    ds.PixelData = rng.integers(0, 4096, size=(200, 512, 512), dtype=np.uint16).tobytes()
    return ds


_MAKERS = {"ct": _make_ct, "small": _make_small, "large": _make_large}


def _manifest_path(root: str, name: str) -> str:
    return os.path.join(root, name, "manifest.json")


def _load_manifest(root: str, name: str) -> dict[str, dict]:
    try:
        with open(_manifest_path(root, name), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if data.get("version") != GENERATOR_VERSION:
        return {}
    return data.get("files", {})


def _save_manifest(root: str, name: str, files: dict[str, dict]) -> None:
    path = _manifest_path(root, name)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version": GENERATOR_VERSION, "files": files}, f)
    os.replace(tmp, path)


def ensure_set(name: str, count: int, root: str = DEFAULT_ROOT,
               progress=None) -> list[CorpusFile]:
    """Return the first ``count`` files of set ``name``, generating the
    missing ones (and any whose cached copy no longer matches its size)."""
    if name not in _MAKERS:
        raise KeyError(name)
    count = min(count, FULL_COUNTS[name])
    directory = os.path.join(root, name)
    os.makedirs(directory, exist_ok=True)
    files = _load_manifest(root, name)
    made = 0
    result = []
    for i in range(count):
        fname = f"{name}{i:05d}.dcm"
        path = os.path.join(directory, fname)
        entry = files.get(fname)
        if entry is None or not os.path.isfile(path) or os.path.getsize(path) != entry["size"]:
            ds = _MAKERS[name](i)
            ds.save_as(path, enforce_file_format=True)
            uid, _ts, digest, length = dataset_digest(path)
            entry = {"uid": uid, "size": os.path.getsize(path),
                     "dataset_length": length, "dataset_sha1": digest}
            files[fname] = entry
            made += 1
            if made % 200 == 0:
                _save_manifest(root, name, files)
            if progress is not None and (made % 100 == 0 or name == "large"):
                progress(f"corpus: {name} {i + 1}/{count}")
        result.append(CorpusFile(path, entry["uid"], entry["size"],
                                 entry["dataset_length"], entry["dataset_sha1"]))
    if made:
        _save_manifest(root, name, files)
    return result


# -- verification -----------------------------------------------------------------
def _walk_files(directory: str, skip_dirs: frozenset[str]) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs]
        for fn in filenames:
            yield os.path.join(dirpath, fn)


def verify_received(expected: list[CorpusFile], directory: str,
                    skip_dirs: frozenset[str] = frozenset(),
                    sample: int = 0, drop_cache: bool = False) -> tuple[bool, str]:
    """Check that every expected instance is in ``directory`` intact.

    Every Part 10 file below ``directory`` (``skip_dirs`` names are not
    entered) is matched by its Media Storage SOP Instance UID.  It passes
    when the count equals, every expected UID is there, the transfer syntax
    is Explicit VR Little Endian, and the data set bytes have the same length
    and, for all files (``sample=0``) or the first ``sample`` of them, the same
    SHA-1 as the corpus file.  Returns ``(ok, message)``.

    ``drop_cache`` syncs, then evicts each checked file from the page cache,
    so that received data does not pile up in memory over a long benchmark
    (page reclaim would then be charged to later runs).
    """
    if drop_cache:
        os.sync()
    want = {c.sop_instance_uid: c for c in expected}
    seen: dict[str, str] = {}
    problems: list[str] = []
    hash_uids = set(list(want)[:sample]) if sample else set(want)
    for path in _walk_files(directory, skip_dirs):
        try:
            with open(path, "rb") as f:
                meta = read_meta(f)
        except (OSError, ValueError):
            continue   # not a Part 10 file (an index, a log ...)
        uid = meta.sop_instance_uid
        ts = meta.transfer_syntax
        offset = meta.data_set_offset
        if uid in seen:
            problems.append(f"duplicate {uid}")
            continue
        seen[uid] = path
        c = want.get(uid)
        if c is None:
            problems.append(f"unexpected {uid}")
            continue
        if ts != ExplicitVRLittleEndian:
            problems.append(f"{uid}: transfer syntax {ts}")
            continue
        length = os.path.getsize(path) - offset
        if length != c.dataset_length:
            problems.append(f"{uid}: data set {length} bytes, expected {c.dataset_length}")
            continue
        if uid in hash_uids:
            _, _, digest, _ = dataset_digest(path, drop_cache)
            if digest != c.dataset_sha1:
                problems.append(f"{uid}: data set SHA-1 differs")
    missing = len(set(want) - set(seen))
    if missing:
        problems.append(f"{missing} of {len(want)} instances missing")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return False, "; ".join(problems[:3]) + more
    return True, f"{len(want)} files intact ({len(hash_uids)} hashed)"


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="Generate the benchmark corpus.")
    parser.add_argument("--root", default=DEFAULT_ROOT)
    args = parser.parse_args(argv)
    for name, count in FULL_COUNTS.items():
        files = ensure_set(name, count, args.root, progress=print)
        total = sum(f.size for f in files)
        print(f"{name}: {len(files)} files, {total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
