"""Query/Retrieve at scale: a large index generated straight into Redis.

    python bench/qr_scale.py                    # 1,000,000 instances (a few minutes)
    python bench/qr_scale.py --instances 200000 # smaller

Generates the index with the commands ``RedisIndex`` runs for a record
(:func:`sdcc_twisted.core.index_keys.record_commands`, pipelined): one study
of 10,000 instances (10 series of 1,000) whose paths point at one real small
CT file, and the rest as studies of 100 instances (1 series) under patients
of 10 studies.  Then it starts ``twistd sdcc`` on that Redis and measures,
with pynetdicom as the peer:

* a Study Root C-FIND at STUDY level with no key: seconds to the first
  pending response, to the final one, and the server's memory growth (VmHWM
  during the query minus VmRSS before it, from /proc);
* a Study Root C-MOVE of the 10,000-instance study to a pynetdicom storage
  SCP: seconds to the first C-STORE at the destination and to the first
  pending C-MOVE-RSP; ``--full-move`` waits for all 10,000.

Linux only (/proc); needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))   # the repository

from sdcc_twisted.core.index_keys import KeyLayout, record_commands  # noqa: E402
from sdcc_twisted.core.records import InstanceRecord  # noqa: E402
from tests import corpus  # noqa: E402
from tests.server_support import free_port, ini_text, twistd_command, twistd_env  # noqa: E402

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
MOVE_STUDY = "1.2.999.1"
MOVE_SERIES, MOVE_PER_SERIES = 10, 1000
PER_STUDY, STUDIES_PER_PATIENT = 100, 10


def record(sop: str, series: str, study: str, patient: str, path: str,
           transfer_syntax: str) -> InstanceRecord:
    """An index record as RedisIndex would get it from a C-STORE."""
    return InstanceRecord(
        sop_instance_uid=sop, sop_class_uid=CT, transfer_syntax=transfer_syntax, path=path,
        size=1000, received_at=1000.0, calling_ae="BENCH",
        attributes={"SOPInstanceUID": sop, "SOPClassUID": CT, "StudyInstanceUID": study,
                    "SeriesInstanceUID": series, "PatientID": patient,
                    "PatientName": f"Bench^{patient}", "StudyDate": "20240102",
                    "Modality": "CT", "InstanceNumber": sop.rsplit(".", 1)[-1]})


def generate(client: object, instances: int, sample: corpus.Sample) -> None:
    """Write ``instances`` index entries, pipelined in batches."""
    layout = KeyLayout("sdcc:")
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    queued = 0

    def add(rec: InstanceRecord) -> None:
        nonlocal queued
        for command in record_commands(layout, rec):
            pipe.execute_command(*command)
        queued += 1
        if queued % 5000 == 0:
            pipe.execute()

    for s in range(MOVE_SERIES):
        for i in range(MOVE_PER_SERIES):
            add(record(f"{MOVE_STUDY}.{s}.{i}", f"{MOVE_STUDY}.{s}", MOVE_STUDY, "PMOVE",
                       sample.path, sample.transfer_syntax))
    rest = max(instances - MOVE_SERIES * MOVE_PER_SERIES, 0)
    for n in range(rest // PER_STUDY):
        study = f"1.2.{n}"
        patient = f"P{n // STUDIES_PER_PATIENT}"
        for i in range(PER_STUDY):
            add(record(f"{study}.1.{i}", f"{study}.1", study, patient,
                       f"/nonexistent/{study}/{i}.dcm", sample.transfer_syntax))
    pipe.execute()


def memory_kb(pid: int, field: str) -> int:
    """VmRSS or VmHWM of ``pid`` in kB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux 4.0+: write 5 to clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")


def measure_find(port: int, pid: int, key: str = "") -> dict[str, float]:
    """Study Root C-FIND, STUDY level, with ``key`` as Study Instance UID
    (none: every study)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE

    ae = AE(ae_title="BENCHFIND")
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
    assert assoc.is_established
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = key
    rss_before = memory_kb(pid, "VmRSS")
    reset_peak(pid)
    started = time.monotonic()
    first = None
    count = 0
    final = -1
    for status, _identifier in assoc.send_c_find(ds, STUDY_ROOT_FIND):
        if status and status.Status in (0xFF00, 0xFF01):
            count += 1
            if first is None:
                first = time.monotonic() - started
        elif status is not None and "Status" in status:
            final = status.Status
    total = time.monotonic() - started
    peak = memory_kb(pid, "VmHWM")
    assoc.release()
    return {"first": first or -1.0, "total": total, "matches": count,
            "final": final, "rss_before_mb": rss_before / 1024,
            "growth_mb": (peak - rss_before) / 1024}


def measure_move(port: int, dest_port: int, full: bool,
                 study: str = MOVE_STUDY) -> dict[str, float]:
    """Study Root C-MOVE of ``study`` to a pynetdicom SCP."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    received: list[float] = []

    def on_store(event: object) -> int:
        received.append(time.monotonic())
        return 0x0000

    dest = AE(ae_title="DEST")
    dest.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    server = dest.start_server(("127.0.0.1", dest_port), block=False,
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        ae = AE(ae_title="BENCHMOVE")
        ae.add_requested_context(STUDY_ROOT_MOVE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
        assoc = ae.associate("127.0.0.1", port, ae_title="SDCC")
        assert assoc.is_established
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study
        started = time.monotonic()
        first_pending = None
        responses = assoc.send_c_move(ds, "DEST", STUDY_ROOT_MOVE)
        for status, _identifier in responses:
            if status and status.Status == 0xFF00 and first_pending is None:
                first_pending = time.monotonic() - started
                if not full:
                    break
        total = time.monotonic() - started
        assoc.abort() if not full else assoc.release()
        return {"first_store": (received[0] - started) if received else -1.0,
                "first_pending": first_pending or -1.0,
                "stores": len(received), "total": total}
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--full-move", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sdcc-qr-scale-")
    redis_sock = os.path.join(work, "redis.sock")
    redis = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", redis_sock,
                              "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                              "--dir", work], stdout=subprocess.DEVNULL)
    sdcc = None
    try:
        import redis as redis_py
        for _ in range(200):
            if os.path.exists(redis_sock):
                break
            time.sleep(0.05)
        client = redis_py.Redis(unix_socket_path=redis_sock)
        sample = corpus.write_small(os.path.join(work, "one.dcm"), CT)
        started = time.monotonic()
        generate(client, args.instances, sample)
        info = client.info("memory")
        print(f"index: {client.dbsize()} keys for {args.instances} instances in "
              f"{time.monotonic() - started:.1f} s; redis used_memory "
              f"{info['used_memory'] / 2**20:.0f} MB", flush=True)

        port, dest_port = free_port(), free_port()
        ini = os.path.join(work, "sdcc.ini")
        with open(ini, "w") as handle:
            handle.write(ini_text(os.path.join(work, "data"), f"unix://{redis_sock}",
                                  port=port, index={"timeout": "5"},
                                  move_destinations={"DEST": f"127.0.0.1:{dest_port}"}))
        log = open(ini + ".log", "wb")
        sdcc = subprocess.Popen(twistd_command(ini), cwd=os.path.dirname(HERE),
                                env=twistd_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or sdcc.poll() is not None:
                    raise SystemExit(f"sdcc did not start; see {ini}.log")
                time.sleep(0.1)
        # Warm-up (the server imports some modules on its first query and
        # first C-MOVE): one study by its UID, a C-MOVE of a 100-instance
        # study whose files are absent (its sub-operations fail).
        measure_find(port, sdcc.pid, MOVE_STUDY)
        measure_move(port, dest_port, True, "1.2.0")
        find = measure_find(port, sdcc.pid)
        print(f"C-FIND STUDY, no key: first pending {find['first']:.3f} s, "
              f"{find['matches']} matches in {find['total']:.1f} s, final "
              f"0x{int(find['final']):04X}; server RSS before {find['rss_before_mb']:.0f} MB, "
              f"growth {find['growth_mb']:.1f} MB", flush=True)
        move = measure_move(port, dest_port, args.full_move)
        print(f"C-MOVE of {MOVE_SERIES * MOVE_PER_SERIES} instances: first C-STORE at the "
              f"destination {move['first_store']:.3f} s, first pending "
              f"{move['first_pending']:.3f} s; {move['stores']} stored in "
              f"{move['total']:.1f} s", flush=True)
    finally:
        if sdcc is not None and sdcc.poll() is None:
            sdcc.terminate()
            sdcc.wait(30)
        redis.terminate()
        redis.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
