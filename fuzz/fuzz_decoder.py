#!/usr/bin/env python
"""Fuzz the sans-I/O decoders: the Association facade and the DatasetWalker.

    python fuzz/fuzz_decoder.py --seconds 60
    python fuzz/fuzz_decoder.py --seconds 600 --engine simple --seed 7
    python fuzz/fuzz_decoder.py --replay fuzz/crashes/crash-<sha1>

Three targets, chosen by the first byte of each input:

* ``sta2``: an acceptor that waits for its A-ASSOCIATE-RQ gets the bytes;
* ``sta6``: an acceptor that has accepted the standard request (contexts 1
  Verification, 3 CT) gets the bytes; the data set of each C-STORE is walked
  by a DatasetWalker as the storage sink does;
* ``walker``: a DatasetWalker in one of four transfer syntaxes gets the bytes.

The second byte seeds the split points: each input is fed in several reads.
The service side is played as the protocol adapter plays it (negotiate and
accept, answer C-ECHO, answer a release, close on CloseTransport, then an
ARTIM expiry and the transport close).

What counts as a finding: any exception out of ``receive_data``,
``timer_expired`` or ``connection_lost``; bytes we send that do not decode
as PDUs; a framer holding more than one PDU; a walker raising anything but
DatasetError, or giving another outcome when the same bytes come whole; a
data set that the walker accepts but pydicom cannot read (``--differential``).

Engines: ``atheris`` (coverage-guided libFuzzer, ``pip install atheris``), or
``simple``, a coverage-less mutational loop over seeds made from valid PDUs
and data sets.  ``auto`` (the default) takes atheris when it imports.
Findings go to ``fuzz/crashes/`` (the input, and a ``.txt`` with the
traceback); replay one with ``--replay``.  The summary line at the end says
which engine ran, how many inputs, for how long, and how many findings.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

TARGETS = ("sta2", "sta6", "walker")
MAX_LEN = 16384


def _import_core(instrument: bool) -> None:
    """Import the code under test, with atheris coverage when asked."""
    global Association, AcceptorPolicy, Accepted, negotiate, response
    global PDUFramer, decode, encode, DatasetWalker, DatasetError, c
    global Aborted, AssociationRequested, CloseTransport, CommandReceived
    global DataFragment, ReleaseRequested, AAbort, AAssociateRQ
    if instrument:
        import atheris
        ctx: Any = atheris.instrument_imports(include=["sdcc_twisted"])
    else:
        import contextlib
        ctx = contextlib.nullcontext()
    with ctx:
        from sdcc_twisted.core import conformance as c
        from sdcc_twisted.core.association import Association
        from sdcc_twisted.core.dataset_head import DatasetWalker
        from sdcc_twisted.core.dimse import response
        from sdcc_twisted.core.errors import DatasetError
        from sdcc_twisted.core.events import (
            Aborted,
            AssociationRequested,
            CloseTransport,
            CommandReceived,
            DataFragment,
            ReleaseRequested,
        )
        from sdcc_twisted.core.framing import PDUFramer
        from sdcc_twisted.core.negotiation import AcceptorPolicy, Accepted, negotiate
        from sdcc_twisted.core.pdu import AAbort, AAssociateRQ, decode, encode


class Finding(AssertionError):
    """An invariant of the decoders does not hold."""


# -- the harness ----------------------------------------------------------------

def _splits(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut into 1..8 reads at points drawn from ``seed``."""
    if not data:
        return []
    rng = random.Random(seed)
    mode = seed % 4
    if mode == 0:
        return [data]
    if mode == 1 and len(data) <= 512:
        return [data[i:i + 1] for i in range(len(data))]
    points = sorted({rng.randrange(1, len(data) + 1) for _ in range(rng.randrange(1, 8))})
    bounds = [0, *points]
    if bounds[-1] != len(data):
        bounds.append(len(data))
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class Driver:
    """An acceptor answered as the protocol adapter answers it."""

    MAX_PDU = 4096
    MAX_OTHER = 8192

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.assoc = Association(self.MAX_PDU, max_command_length=2048,
                                 max_other_pdu_length=self.MAX_OTHER)
        self.policy = AcceptorPolicy()
        self.sent = bytearray()
        self.walker: Any = None
        self.handle(self.assoc.connection_made())

    def feed(self, data: bytes) -> None:
        self.handle(self.assoc.receive_data(data))
        buffered = self.assoc._framer.buffered
        if buffered > max(self.MAX_PDU, self.MAX_OTHER) + 6:
            raise Finding(f"the framer holds {buffered} bytes")

    def handle(self, events: list[Any]) -> None:
        assoc = self.assoc
        for event in events:
            kind = type(event)
            if kind is AssociationRequested:
                # Without --strict-answers, answer only where the state still
                # takes an answer (a later PDU of the same read may have aborted).
                if not self.strict and assoc.state != "Sta3":
                    continue
                decision = negotiate(event.request, self.policy, "127.0.0.1")
                if isinstance(decision, Accepted):
                    self.handle(assoc.accept(decision))
                else:
                    self.handle(assoc.reject(decision.rj))
            elif kind is CommandReceived:
                command = event.command
                context = assoc.contexts.get(event.context_id)
                if command.command_field == c.C_STORE_RQ and command.has_data_set and context:
                    self.walker = DatasetWalker(context.transfer_syntax)
                elif command.command_field == c.C_ECHO_RQ and assoc.established:
                    self.handle(assoc.send_message(
                        event.context_id, response(command, c.C_ECHO_RSP, 0)))
            elif kind is DataFragment:
                walker = self.walker
                if walker is not None:
                    try:
                        walker.feed(event.data)
                        if event.last:
                            walker.finish()
                    except DatasetError:
                        pass
                    if event.last:
                        self.walker = None
            elif kind is ReleaseRequested:
                if self.strict or assoc.state in ("Sta8", "Sta9", "Sta12"):
                    self.handle(assoc.release_response())
            elif kind is CloseTransport:
                self.handle(assoc.connection_lost())
        self.sent += assoc.data_to_send()

    def check_output(self) -> None:
        frames = PDUFramer(1 << 24, 1 << 24).feed(bytes(self.sent))
        if sum(6 + len(body) for _, body in frames) != len(self.sent):
            raise Finding("a partial PDU was sent")
        for pdu_type, body in frames:
            pdu = decode(pdu_type, body)
            if isinstance(pdu, AAssociateRQ):
                raise Finding("the acceptor sent an A-ASSOCIATE-RQ")
            if isinstance(pdu, AAbort) and pdu.source not in (0, 2):
                raise Finding(f"A-ABORT with source {pdu.source}")


_STANDARD_RQ: bytes = b""


def run_association(payload: bytes, split_seed: int, established: bool,
                    strict: bool) -> None:
    driver = Driver(strict)
    if established:
        driver.feed(_STANDARD_RQ)
        if driver.assoc.state != "Sta6":
            raise Finding("the standard request was not accepted")
    for chunk in _splits(payload, split_seed):
        driver.feed(chunk)
    driver.handle(driver.assoc.timer_expired())
    driver.handle(driver.assoc.connection_lost())
    driver.feed(b"\x01\x00\x00\x00\x00\x00")     # after the close: nothing happens
    driver.check_output()


_WALKER_SYNTAXES: list[str] = []


def run_walker(payload: bytes, selector: int, differential: bool) -> None:
    syntax = _WALKER_SYNTAXES[selector % len(_WALKER_SYNTAXES)]

    def outcome(chunks: list[bytes]) -> tuple[str, dict[str, str]]:
        walker = DatasetWalker(syntax)
        try:
            for chunk in chunks:
                walker.feed(chunk)
            walker.finish()
        except DatasetError:
            return "error", {}
        return "ok", dict(walker.values)

    whole = outcome([payload])
    split = outcome(_splits(payload, selector >> 2) or [b""])
    if whole != split:
        raise Finding(f"walker outcome differs whole {whole!r} / split {split!r}")
    if differential and whole[0] == "ok":
        _pydicom_reads(payload, syntax)


def _pydicom_reads(payload: bytes, syntax: str) -> None:
    """A data set the walker accepts (and the server would store) must be
    readable by pydicom."""
    from pydicom import config
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    # Values are not the walker's business (it checks structure only):
    # let pydicom keep wrong-sized or invalid values instead of raising.
    config.convert_wrong_length_to_UN = True
    config.settings.reading_validation_mode = config.IGNORE
    implicit = syntax == c.IMPLICIT_VR_LITTLE_ENDIAN
    little = syntax != c.EXPLICIT_VR_BIG_ENDIAN
    try:
        ds = read_dataset(DicomBytesIO(payload), implicit, little)
        for elem in ds.iterall():
            _ = elem.value
    except Exception as exc:  # noqa: BLE001 - pydicom's failure is the finding
        raise Finding(f"walker accepted a data set pydicom cannot read: "
                      f"{type(exc).__name__}: {exc}") from exc


def one_input(data: bytes, strict: bool = False, differential: bool = False) -> None:
    """Run one fuzz input (target byte, split byte, payload)."""
    if len(data) < 2:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    payload = data[2:]
    if target == "walker":
        run_walker(payload, data[1], differential)
    else:
        run_association(payload, data[1], target == "sta6", strict)


# -- seeds ------------------------------------------------------------------------

def seeds() -> list[bytes]:
    """Valid inputs for each target, with their target and split bytes."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from tests.support import (
        associate_rq,
        dataset_bytes,
        echo_command,
        message_pdus,
        pdata,
        store_command,
    )
    from sdcc_twisted.core.pdu import AReleaseRQ, PDataTF, PDV, RoleSelection, UserInformation

    CT = "1.2.840.10008.5.1.4.1.1.2"
    out: list[bytes] = []
    data_sets: list[tuple[str, bytes]] = []
    for implicit in (False, True):
        syntax = c.IMPLICIT_VR_LITTLE_ENDIAN if implicit else c.EXPLICIT_VR_LITTLE_ENDIAN
        data_sets.append((syntax, dataset_bytes("1.2.3.4", implicit=implicit)))
    data_sets += _bundled_data_sets()
    data_sets += _generated_data_sets(Dataset, Sequence)

    rq = encode(associate_rq())
    store = message_pdus(3, store_command("1.2.3.4"), data_sets[0][1], 200)
    echo = message_pdus(1, echo_command(5))
    release = encode(AReleaseRQ())
    roles_rq = encode(AAssociateRQ(
        called_ae="SDCC", calling_ae="FUZZ", application_context=c.APPLICATION_CONTEXT_NAME,
        presentation_contexts=associate_rq().presentation_contexts,
        user_information=UserInformation(
            max_length=0, implementation_class_uid="1.2.3", async_ops=(3, 3),
            role_selections=(RoleSelection(CT, 1, 1),),
            extended=((0x58, b"\x01\x00\x00\x04user\x00\x00"),))))
    conversations = [rq + echo + store + release, rq + echo + release, roles_rq + echo,
                     rq + encode(AAbort(0, 0)), rq + rq, b"\x04\x00\xff\xff\xff\xf0"]
    for n, conversation in enumerate(conversations):
        out.append(bytes([0, n]) + conversation)
    established = [echo + store + release, echo, store, release,
                   encode(PDataTF((PDV(1, 3, echo_command(1)), PDV(3, 3, echo_command(2))))),
                   pdata(3, 0x03, store_command("1.2.3.4")) + pdata(1, 0x02, b"ab")]
    for syntax, body in data_sets[:6]:
        context = 3 if syntax in (c.EXPLICIT_VR_LITTLE_ENDIAN,
                                  c.IMPLICIT_VR_LITTLE_ENDIAN) else 3
        established.append(message_pdus(context, store_command("1.2.3.4"), body[:3000], 500))
    for n, conversation in enumerate(established):
        out.append(bytes([1, n]) + conversation)
    for n, (syntax, body) in enumerate(data_sets):
        selector = _WALKER_SYNTAXES.index(syntax) if syntax in _WALKER_SYNTAXES else 1
        out.append(bytes([2, (n << 2 | selector) & 0xFF]) + body[:MAX_LEN - 2])
    return out


def _bundled_data_sets() -> list[tuple[str, bytes]]:
    """Data sets of pydicom's small bundled test files."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    folder = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    found = []
    for name in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtplan.dcm",
                 "nested_priv_SQ.dcm", "priv_SQ.dcm", "UN_sequence.dcm", "reportsi.dcm",
                 "test-SR.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "ExplVR_BigEnd.dcm",
                 "empty_charset_LEI.dcm", "SC_rgb_small_odd.dcm", "rtstruct.dcm"):
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as handle:
                read_preamble(handle, False)
                meta = _read_file_meta_info(handle)
                body = handle.read()
        except Exception:  # noqa: BLE001 - a missing or odd file is no seed
            continue
        syntax = str(getattr(meta, "TransferSyntaxUID", c.EXPLICIT_VR_LITTLE_ENDIAN))
        if len(body) <= MAX_LEN:
            found.append((syntax, body))
    return found


def _generated_data_sets(Dataset: Any, Sequence: Any) -> list[tuple[str, bytes]]:
    """Sequences (defined and undefined length) and encapsulated pixel data."""
    from pydicom.encaps import encapsulate
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    def build() -> Any:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = "1.2.3.4"
        ds.PatientName = "Ünïcode^Näme"
        item = Dataset()
        item.CodeValue = "121"
        item.CodeMeaning = "meaning"
        inner = Dataset()
        inner.CodeValue = "7"
        item.ConceptCodeSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([item, Dataset()])
        ds.StudyInstanceUID = "1.2.3"
        ds.SeriesInstanceUID = "1.2.3.1"
        return ds

    out = []
    for syntax, implicit, little in ((c.EXPLICIT_VR_LITTLE_ENDIAN, False, True),
                                     (c.IMPLICIT_VR_LITTLE_ENDIAN, True, True),
                                     (c.EXPLICIT_VR_BIG_ENDIAN, False, False)):
        ds = build()
        if syntax == c.EXPLICIT_VR_LITTLE_ENDIAN:
            ds.PixelData = encapsulate([b"\xff\xd8frame1\xff\xd9", b"\xff\xd8frame2"])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            syntax = c.JPEG_BASELINE
        for undefined in (False, True):
            for seq in (ds.ReferencedImageSequence,):
                ds["ReferencedImageSequence"].is_undefined_length = undefined
                for item in seq:
                    item.is_undefined_length_sequence_item = undefined
            buf = DicomBytesIO()
            buf.is_little_endian, buf.is_implicit_VR = little, implicit
            try:
                write_dataset(buf, ds)
            except Exception:  # noqa: BLE001
                continue
            out.append((syntax, buf.getvalue()))
    return out


# -- engines -------------------------------------------------------------------------

def save_finding(directory: str, data: bytes, text: str, prefix: str) -> str:
    os.makedirs(directory, exist_ok=True)
    name = f"{prefix}-{hashlib.sha1(data).hexdigest()}"
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        handle.write(data)
    with open(path + ".txt", "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _signature(exc: BaseException) -> str:
    """Where an exception was raised, to tell findings apart."""
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    where = f"{os.path.basename(last.filename)}:{last.lineno}" if last else "?"
    return f"{type(exc).__name__} at {where}"


MUTATION_VALUES = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x7F, 0x80, 0xFE, 0xFF)


def mutate(data: bytearray, rng: random.Random, pool: list[bytes]) -> bytearray:
    """Apply 1..6 random edits: bit flips, interesting bytes, inserts,
    deletes, duplicated ranges, splices and big-endian length rewrites."""
    for _ in range(rng.randint(1, 6)):
        size = len(data)
        choice = rng.randrange(9)
        at = rng.randrange(2, size) if size > 2 else 2
        if choice == 0 and size > 2:
            data[at] ^= 1 << rng.randrange(8)
        elif choice == 1 and size > 2:
            data[at] = rng.choice(MUTATION_VALUES)
        elif choice == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif choice == 3 and size > 3:
            del data[at:at + rng.randint(1, 64)]
        elif choice == 4 and size > 3:
            end = min(size, at + rng.randint(1, 128))
            data[at:at] = data[at:end]
        elif choice == 5 and pool:
            other = rng.choice(pool)
            start = rng.randrange(2, max(3, len(other)))
            data[at:] = other[start:start + rng.randint(1, 2048)]
        elif choice == 6 and size > 6:
            value = rng.choice([0, 1, 2, 4, 6, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                                rng.randrange(1 << 32)])
            data[at:at + 4] = struct.pack(rng.choice(["!L", "<L"]), value)
        elif choice == 7 and size > 6:
            value = rng.choice([0, 1, 2, 0xFFFF, rng.randrange(1 << 16)])
            data[at:at + 2] = struct.pack(rng.choice(["!H", "<H"]), value)
        elif choice == 8 and size > 3:
            del data[rng.randrange(2, size):]
    if len(data) >= 2 and rng.random() < 0.1:
        data[0] = rng.randrange(256)
    if len(data) >= 2 and rng.random() < 0.3:
        data[1] = rng.randrange(256)
    return data[:MAX_LEN]


def simple_engine(args: argparse.Namespace) -> int:
    """The coverage-less mutational loop; returns the number of findings."""
    _import_core(instrument=False)
    _prepare()
    pool = seeds()
    rng = random.Random(args.seed)
    counts = {t: 0 for t in TARGETS}
    signatures: dict[str, str] = {}
    started = time.monotonic()
    deadline = started + args.seconds
    iterations = 0
    recent: list[bytes] = []
    for seed in pool:                              # the seeds themselves must pass
        _run_checked(seed, args, counts, signatures, "seed")
    while time.monotonic() < deadline:
        for _ in range(200):
            base = rng.choice(pool) if not recent or rng.random() < 0.7 else rng.choice(recent)
            data = bytes(mutate(bytearray(base), rng, pool))
            _run_checked(data, args, counts, signatures, "simple")
            iterations += 1
            if rng.random() < 0.01:
                recent.append(data)
                if len(recent) > 256:
                    recent.pop(0)
    elapsed = time.monotonic() - started
    print(f"engine=simple seed={args.seed} iterations={iterations} seconds={elapsed:.1f} "
          f"rate={iterations / max(elapsed, 1e-9):.0f}/s per_target="
          + ",".join(f"{k}:{v}" for k, v in counts.items())
          + f" findings={len(signatures)}")
    for signature, path in signatures.items():
        print(f"  finding: {signature} -> {path}")
    return len(signatures)


def _run_checked(data: bytes, args: argparse.Namespace, counts: dict[str, int],
                 signatures: dict[str, str], prefix: str) -> None:
    if len(data) >= 2:
        counts[TARGETS[data[0] % len(TARGETS)]] += 1
    try:
        one_input(data, args.strict_answers, args.differential)
    except Exception as exc:  # noqa: BLE001 - every exception is a finding
        signature = _signature(exc)
        if signature not in signatures:
            text = "".join(traceback.format_exception(exc))
            signatures[signature] = save_finding(args.crashes, data, text, prefix)
            print(f"FINDING {signature}: {text.strip().splitlines()[-1]}", flush=True)


def _prepare() -> None:
    global _STANDARD_RQ
    from tests.support import associate_rq

    _STANDARD_RQ = encode(associate_rq())
    _WALKER_SYNTAXES[:] = [c.EXPLICIT_VR_LITTLE_ENDIAN, c.IMPLICIT_VR_LITTLE_ENDIAN,
                           c.EXPLICIT_VR_BIG_ENDIAN, c.JPEG_BASELINE]


def atheris_child(args: argparse.Namespace, libfuzzer_args: list[str]) -> None:
    """Run libFuzzer in this process (never returns)."""
    import atheris

    _import_core(instrument=True)
    _prepare()

    def test_one_input(data: bytes) -> None:
        one_input(data, args.strict_answers, args.differential)

    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()


def atheris_engine(args: argparse.Namespace) -> int:
    """Run libFuzzer children until the time is up, restarting after each
    finding (libFuzzer stops at the first); returns the number of findings."""
    _import_core(instrument=False)
    _prepare()
    corpus = args.corpus or tempfile.mkdtemp(prefix="sdcc-fuzz-corpus-")
    os.makedirs(corpus, exist_ok=True)
    for data in seeds():
        with open(os.path.join(corpus, "seed-" + hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)
    # libFuzzer writes its artifacts here; findings are moved to args.crashes
    # (created only when there is one).
    artifacts = tempfile.mkdtemp(prefix="sdcc-fuzz-artifacts-")
    started = time.monotonic()
    runs = 0
    findings: dict[str, str] = {}
    restarts = 0
    while True:
        left = int(args.seconds - (time.monotonic() - started))
        if left < 2 or restarts > 20:
            break
        before = set(os.listdir(artifacts))
        command = [sys.executable, os.path.abspath(__file__), "--atheris-child",
                   *(["--strict-answers"] if args.strict_answers else []),
                   *(["--differential"] if args.differential else []), "--",
                   corpus, f"-max_total_time={left}", f"-max_len={MAX_LEN}",
                   f"-artifact_prefix={os.path.join(artifacts, '')}", "-timeout=20",
                   "-rss_limit_mb=4096", "-print_final_stats=1", f"-seed={args.seed + restarts}"]
        child = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        output = child.stdout + child.stderr
        done = re.findall(r"Done (\d+) runs in (\d+) second", output)
        executed = re.findall(r"stat::number_of_executed_units:\s*(\d+)", output)
        runs += int(done[-1][0]) if done else int(executed[-1]) if executed else 0
        new = sorted(set(os.listdir(artifacts)) - before)
        if not new:
            if child.returncode not in (0,):
                print(output[-4000:])
                print(f"libFuzzer ended with code {child.returncode} and no artifact")
            break
        restarts += 1
        for name in new:
            with open(os.path.join(artifacts, name), "rb") as handle:
                data = handle.read()
            match = re.search(r"=== Uncaught Python exception: ===\n(.*?)\n\n", output, re.S)
            text = match.group(1) if match else output[-6000:]
            path = save_finding(args.crashes, data, text, name.split("-")[0])
            os.unlink(os.path.join(artifacts, name))
            lines = [ln for ln in text.splitlines() if ln.strip()]
            where = [ln for ln in lines if ln.strip().startswith("File ")]
            signature = (lines[-1] if lines else "?") + " @ " + (where[-1].strip() if where else "?")
            print(f"FINDING {signature} -> {path}", flush=True)
            findings.setdefault(signature, path)
        if args.stop_on_finding:
            break
    elapsed = time.monotonic() - started
    if args.corpus is None:
        shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(artifacts, ignore_errors=True)
    print(f"engine=atheris seed={args.seed} iterations={runs} seconds={elapsed:.1f} "
          f"rate={runs / max(elapsed, 1e-9):.0f}/s restarts={restarts} "
          f"findings={len(findings)}")
    for signature, path in findings.items():
        print(f"  finding: {signature} -> {path}")
    return len(findings)


def replay(args: argparse.Namespace) -> int:
    _import_core(instrument=False)
    _prepare()
    status = 0
    for path in args.replay:
        with open(path, "rb") as handle:
            data = handle.read()
        target = TARGETS[data[0] % len(TARGETS)] if data else "-"
        try:
            one_input(data, args.strict_answers, args.differential)
            print(f"{path}: {target}: no finding")
        except Exception:  # noqa: BLE001
            status = 1
            print(f"{path}: {target}:")
            traceback.print_exc()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget")
    parser.add_argument("--engine", choices=("auto", "atheris", "simple"), default="auto")
    parser.add_argument("--seed", type=int, default=int(time.time()) & 0xFFFF)
    parser.add_argument("--crashes", default=os.path.join(HERE, "crashes"),
                        help="where findings are saved (default fuzz/crashes)")
    parser.add_argument("--corpus", default=None,
                        help="atheris working corpus (default: a temp directory)")
    parser.add_argument("--strict-answers", action="store_true",
                        help="answer AssociationRequested/ReleaseRequested whatever the "
                             "state (finds the pipelined-read LocalProtocolError)")
    parser.add_argument("--differential", action="store_true",
                        help="also require pydicom to read every data set the walker accepts")
    parser.add_argument("--stop-on-finding", action="store_true")
    parser.add_argument("--replay", nargs="+", metavar="FILE")
    parser.add_argument("--atheris-child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    # pydicom warns about every unknown Specific Character Set it meets.
    warnings.simplefilter("ignore")
    if args.atheris_child:
        atheris_child(args, [a for a in rest if a != "--"])
        return 0
    if args.replay:
        return replay(args)
    engine = args.engine
    if engine == "auto":
        import importlib.util

        engine = "atheris" if importlib.util.find_spec("atheris") else "simple"
    print(f"fuzzing sta2, sta6 and walker for {args.seconds:.0f} s with {engine}", flush=True)
    found = atheris_engine(args) if engine == "atheris" else simple_engine(args)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
