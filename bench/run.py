#!/usr/bin/env python
"""Side-by-side Storage SCP benchmark: sdcc vs DCMTK storescp vs pynetdicom.

One command::

    python bench/run.py            # full run (about 10 minutes on 2 cores)
    python bench/run.py --quick    # smoke check: small sets, 1 run (under a minute)

Every run starts the receiver afresh on loopback with an empty output folder,
waits until it answers a C-ECHO, sends a workload with DCMTK ``storescu``,
measures the wall time from the first ``storescu`` start to the last one's
exit, samples the receiver's CPU time and peak RSS, stops the receiver by its
PID, and checks that every instance arrived intact (count, transfer syntax,
data set length and SHA-1 of the data set bytes of every file).  A run whose
check fails does not count.  Receivers are interleaved within each round so
that drift on the machine hits all of them alike.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import corpus  # noqa: E402  (bench/corpus.py, beside this file)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CALLED_AE = "SDCC"
HOST = "127.0.0.1"
DEFAULT_PDUS = (16384, 131072)
DEFAULT_RECEIVERS = ("sdcc-fsync", "sdcc-nofsync", "dcmtk", "pynetdicom")
OPTIONAL_RECEIVERS = ("dcmtk-fork", "dcmtk-bp", "orthanc", "sdcc-fsync-w2", "sdcc-nofsync-w2")
ALL_WORKLOADS = ("ct", "small", "large", "ct8")
QUICK_COUNTS = {"ct": 40, "small": 200, "large": 1}
SENDER_TIMEOUT = 900.0      # seconds one workload may take before it is killed
READY_TIMEOUT = 60.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- DCMTK tools -------------------------------------------------------------------
def find_dcmtk(tool: str, hint: str | None) -> str:
    """Locate a DCMTK binary (not pynetdicom's console script of the same
    name): ``--dcmtk-bin``, then /usr/bin, then PATH; ``--version`` must say
    dcmtk."""
    dirs = ([hint] if hint else []) + ["/usr/bin", "/usr/local/bin"] + \
        os.environ.get("PATH", "").split(os.pathsep)
    for d in dirs:
        path = os.path.join(d, tool)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in out.lower():
            return path
    raise SystemExit(f"DCMTK {tool} not found (apt-get install dcmtk, or --dcmtk-bin DIR)")


def dcmtk_env() -> dict[str, str]:
    # DCMTK 3.6.7 leaves Nagle's algorithm on unless TCP_NODELAY is set.
    return {**os.environ, "TCP_NODELAY": "1"}


# -- /proc sampling ----------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: split after its ')'
    return raw[raw.rindex(")") + 2:].split()


def children_of(pid: int) -> list[int]:
    """All descendants of ``pid`` (by scanning /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def proc_cpu(pid: int, with_reaped: bool = True) -> float:
    """utime+stime (+cutime+cstime: children it has reaped) in seconds."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    # fields[0] is field 3 (state); utime is field 14 -> index 11
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (plus reaped ones)."""
    return proc_cpu(pid) + sum(proc_cpu(c) for c in children_of(pid))


def proc_status(pid: int, key: str) -> int:
    """A kB value of /proc/PID/status (e.g. VmHWM), 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


# -- receivers ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Receiver:
    """A Storage SCP under test; one instance per run."""

    name = "?"
    description = ""

    def __init__(self, workdir: str, port: int, pdu: int, tools: dict[str, str],
                 opts: argparse.Namespace) -> None:
        self.workdir = workdir
        self.port = port
        self.pdu = pdu
        self.tools = tools
        self.opts = opts
        self.out_dir = os.path.join(workdir, "out")
        os.makedirs(self.out_dir)
        self.log_path = os.path.join(workdir, "receiver.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.skip_dirs: frozenset[str] = frozenset()

    # subclasses
    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def extra_ready(self) -> bool:
        return True

    def start(self) -> None:
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=self.env(),
                                         stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_ready(self) -> None:
        """Port accepts, the receiver-specific condition holds, C-ECHO works."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        stage = "port"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.log_text()[-800:]}")
            if stage == "port" and port_open(self.port):
                stage = "extra"
            if stage == "extra" and self.extra_ready():
                stage = "echo"
            if stage == "echo":
                r = subprocess.run([self.tools["echoscu"], "-aet", "BENCH", "-aec", CALLED_AE,
                                    "-to", "5", HOST, str(self.port)],
                                   env=dcmtk_env(), capture_output=True, timeout=30)
                if r.returncode == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT}s (stage {stage}): "
                           f"{self.log_text()[-800:]}")

    def cpu(self) -> float:
        assert self.proc is not None
        return tree_cpu(self.proc.pid)

    def memory(self) -> tuple[int, dict[str, int]]:
        """Peak RSS (VmHWM, kB) of the receiver and of each live child."""
        assert self.proc is not None
        kids = {}
        for c in children_of(self.proc.pid):
            hwm = proc_status(c, "VmHWM")
            if hwm:   # 0: a zombie or a process that just exited
                kids[f"{proc_name(c)}[{c}]"] = hwm
        return proc_status(self.proc.pid, "VmHWM"), kids

    def stop(self) -> None:
        """SIGTERM the receiver, then SIGKILL it and any child left, by PID."""
        if self.proc is None:
            return
        pid = self.proc.pid
        kids = children_of(pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM; killing pid {pid}")
                self.proc.kill()
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        for k in kids:
            while os.path.exists(f"/proc/{k}") and time.monotonic() < deadline:
                fields = _stat_fields(k)
                if not fields or fields[0] == "Z":
                    break
                time.sleep(0.05)
            if os.path.exists(f"/proc/{k}"):
                fields = _stat_fields(k)
                if fields and fields[0] != "Z" and int(fields[1]) in (pid, 1):
                    log(f"{self.name}: child {k} still alive; killing it")
                    try:
                        os.kill(k, signal.SIGKILL)
                    except OSError:
                        pass


class SdccReceiver(Receiver):
    name = "sdcc"
    fsync = True
    workers = 1

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.data_dir = os.path.join(self.workdir, "data")
        self.out_dir = os.path.join(self.data_dir, "store")   # the [storage] root
        self.skip_dirs = frozenset({".tmp"})
        self.config = os.path.join(self.workdir, "sdcc.ini")
        self.http_port = free_port()
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(f"""[server]
ae_title = {CALLED_AE}
listen = tcp:{self.port}:interface={HOST}
data_dir = {self.data_dir}
max_pdu_length = {self.pdu}
max_associations = 64
workers = {self.workers}

[storage]
fsync = {"yes" if self.fsync else "no"}

[index]
redis = embedded

[http]
listen = tcp:{self.http_port}:interface={HOST}

[logging]
level = {self.opts.sdcc_log_level}
""")

    def store_latency(self) -> tuple[float, float] | None:
        """C-STORE response latency (last data fragment in to response out)
        p50 and p99 in ms, from sdcc's ``sdcc_store_duration_seconds``
        histogram on ``/metrics`` (linear within a bucket)."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/metrics",
                                        timeout=5) as answer:
                text = answer.read().decode("utf-8", "replace")
        except OSError:
            return None
        buckets: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith("sdcc_store_duration_seconds_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        return histogram_quantile(buckets, 0.50), histogram_quantile(buckets, 0.99)

    def command(self) -> list[str]:
        twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or \
            shutil.which("twistd") or "twistd"
        return [twistd, "-n", "--pidfile=", "sdcc", "--config", self.config]

    def env(self) -> dict[str, str]:
        pp = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": self.opts.sdcc_path + (os.pathsep + pp if pp else "")}

    def extra_ready(self) -> bool:
        # the listener may open before the embedded Redis is connected
        # (each worker connects its own)
        return (self.log_text().count("index: Redis at") >= self.workers
                or self.opts.sdcc_log_level != "info")


def histogram_quantile(buckets: dict[float, float], q: float) -> float:
    """The ``q`` quantile in ms of cumulative Prometheus buckets (upper
    bound -> count), linear inside the bucket it falls in (NaN if empty)."""
    bounds = sorted(buckets)
    if not bounds or not buckets[bounds[-1]]:
        return float("nan")
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower * 1000
            inside = count - below
            return (lower + (bound - lower) * ((rank - below) / inside if inside else 1)) * 1000
        lower, below = bound, count
    return float("nan")


class SdccFsync(SdccReceiver):
    name = "sdcc-fsync"
    description = "sdcc, [storage] fsync = yes, embedded Redis"
    fsync = True


class SdccNoFsync(SdccReceiver):
    name = "sdcc-nofsync"
    description = "sdcc, [storage] fsync = no, embedded Redis"
    fsync = False


class SdccFsyncWorkers(SdccReceiver):
    name = "sdcc-fsync-w2"
    description = "sdcc, [server] workers = 2, [storage] fsync = yes, embedded Redis"
    fsync = True
    workers = 2


class SdccNoFsyncWorkers(SdccReceiver):
    name = "sdcc-nofsync-w2"
    description = "sdcc, [server] workers = 2, [storage] fsync = no, embedded Redis"
    fsync = False
    workers = 2


class DcmtkReceiver(Receiver):
    name = "dcmtk"
    description = "DCMTK storescp +xa (single process, default normal mode)"
    extra: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [self.tools["storescp"], "-aet", CALLED_AE, "+xa", "-pdu", str(self.pdu),
                *self.extra, "-od", self.out_dir, str(self.port)]

    def env(self) -> dict[str, str]:
        return dcmtk_env()


class DcmtkFork(DcmtkReceiver):
    name = "dcmtk-fork"
    description = "DCMTK storescp +xa --fork (a process per association)"
    extra = ("--fork",)


class DcmtkBitPreserving(DcmtkReceiver):
    name = "dcmtk-bp"
    description = "DCMTK storescp +xa +B (bit preserving: streams to the file)"
    extra = ("+B",)


class PynetdicomReceiver(Receiver):
    name = "pynetdicom"
    description = "python -m pynetdicom storescp (writes files; no --ignore)"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pynetdicom", "storescp", str(self.port),
                "-aet", CALLED_AE, "-pdu", str(self.pdu), "-ba", HOST, "-od", self.out_dir]


class OrthancReceiver(Receiver):
    name = "orthanc"
    description = "Orthanc (Debian package), SQLite index, defaults (SyncStorageArea on)"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.http_port = free_port()
        self.config = os.path.join(self.workdir, "orthanc.json")
        cfg = {
            "Name": "sdcc-bench",
            "StorageDirectory": self.out_dir,
            "IndexDirectory": os.path.join(self.workdir, "index"),
            "Plugins": [],
            "DicomServerEnabled": True,
            "DicomAet": CALLED_AE,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "MaximumPduLength": self.pdu,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "ConcurrentJobs": 1,
        }
        with open(self.config, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=1)

    def command(self) -> list[str]:
        exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        return [exe, self.config]

    def env(self) -> dict[str, str]:
        return dcmtk_env()   # Orthanc's DICOM layer is DCMTK


RECEIVERS: dict[str, type[Receiver]] = {cls.name: cls for cls in (
    SdccFsync, SdccNoFsync, SdccFsyncWorkers, SdccNoFsyncWorkers, DcmtkReceiver,
    PynetdicomReceiver,
    DcmtkFork, DcmtkBitPreserving, OrthancReceiver)}


# -- workloads ---------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    set_name: str
    senders: int
    description: str


WORKLOADS = {
    "ct": Workload("ct", "ct", 1, "CT 512x512 set, one association"),
    "small": Workload("small", "small", 1, "64x64 secondary captures, one association"),
    "large": Workload("large", "large", 1, "mammograms + 100 MB multi-frame, one association"),
    "ct8": Workload("ct8", "ct", 8, "CT set split over 8 concurrent calling AEs"),
}


def split(files: list[Any], n: int) -> list[list[Any]]:
    """Contiguous, near-equal chunks (each AE sends whole studies' worth)."""
    k, r = divmod(len(files), n)
    out, start = [], 0
    for i in range(n):
        end = start + k + (1 if i < r else 0)
        out.append(files[start:end])
        start = end
    return [c for c in out if c]


@dataclass
class RunResult:
    workload: str
    pdu: int
    receiver: str
    round: int
    ok: bool
    message: str
    files: int
    bytes: int
    wall_s: float = 0.0
    receiver_cpu_s: float = 0.0
    sender_cpu_s: float = 0.0
    peak_rss_kb: int = 0
    child_rss_kb: dict[str, int] = field(default_factory=dict)
    startup_s: float = 0.0
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")


def run_senders(chunks: list[list[corpus.CorpusFile]], port: int, pdu: int,
                tools: dict[str, str], workdir: str) -> tuple[float, float, list[str]]:
    """Start one storescu per chunk at once; return (wall, sender CPU, errors)."""
    procs = []
    t0 = time.perf_counter()
    for i, chunk in enumerate(chunks):
        aet = "BENCH" if len(chunks) == 1 else f"BENCH{i + 1}"
        cmd = [tools["storescu"], "-aet", aet, "-aec", CALLED_AE,
               "-pdu", str(pdu), "--max-send-pdu", str(pdu), "-ta", "120",
               HOST, str(port), *[c.path for c in chunk]]
        logf = open(os.path.join(workdir, f"storescu{i + 1}.log"), "wb")  # noqa: SIM115
        p = subprocess.Popen(cmd, env=dcmtk_env(), stdin=subprocess.DEVNULL,
                             stdout=logf, stderr=subprocess.STDOUT)
        procs.append((p, logf, aet))
    errors: list[str] = []
    cpu = 0.0
    pending = {p.pid: (p, logf, aet) for p, logf, aet in procs}
    deadline = time.monotonic() + SENDER_TIMEOUT
    while pending:
        if time.monotonic() > deadline:
            for pid, (p, _, aet) in pending.items():
                errors.append(f"storescu {aet} timed out; killed")
                p.kill()
                p.wait()
            break
        reaped = None
        for pid in pending:
            got, status, ru = os.wait4(pid, os.WNOHANG)
            if got == pid:
                reaped = pid
                break
        if reaped is None:
            time.sleep(0.005)
            continue
        p, logf, aet = pending.pop(reaped)
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu += ru.ru_utime + ru.ru_stime
        if p.returncode != 0:
            with open(logf.name, encoding="utf-8", errors="replace") as f:
                errors.append(f"storescu {aet} exit {p.returncode}: {f.read()[-400:].strip()}")
    wall = time.perf_counter() - t0
    for _, logf, _ in procs:
        logf.close()
    return wall, cpu, errors


def quiesce(rec: Receiver, limit: float = 5.0) -> None:
    """Wait until the receiver stops burning CPU (late indexing, flushes)."""
    deadline = time.monotonic() + limit
    last = rec.cpu()
    still = 0
    while time.monotonic() < deadline and still < 2:
        time.sleep(0.2)
        now = rec.cpu()
        still = still + 1 if now - last < 0.01 else 0
        last = now


def run_one(rec_name: str, wl: Workload, pdu: int, files: list[corpus.CorpusFile],
            rnd: int, tools: dict[str, str], opts: argparse.Namespace) -> RunResult:
    workdir = tempfile.mkdtemp(prefix=f"{rec_name}-{wl.name}-{pdu}-r{rnd}-", dir=opts.tmp)
    total = sum(f.size for f in files)
    res = RunResult(wl.name, pdu, rec_name, rnd, False, "", len(files), total)
    rec = RECEIVERS[rec_name](workdir, free_port(), pdu, tools, opts)
    try:
        os.sync()   # flush earlier runs' dirty pages before this one starts
        t_start = time.perf_counter()
        rec.start()
        rec.wait_ready()
        res.startup_s = time.perf_counter() - t_start
        cpu0 = rec.cpu()
        chunks = split(files, wl.senders)
        wall, sender_cpu, errors = run_senders(chunks, rec.port, pdu, tools, workdir)
        quiesce(rec)
        res.receiver_cpu_s = rec.cpu() - cpu0
        latency = rec.store_latency() if isinstance(rec, SdccReceiver) else None
        if latency is not None:
            res.latency_p50_ms, res.latency_p99_ms = latency
        res.peak_rss_kb, res.child_rss_kb = rec.memory()
        res.wall_s, res.sender_cpu_s = wall, sender_cpu
        if rec.proc is not None and rec.proc.poll() is not None:
            errors.append(f"receiver exited with {rec.proc.returncode}")
        rec.stop()
        if errors:
            res.message = "; ".join(errors)
        else:
            res.ok, res.message = corpus.verify_received(files, rec.out_dir, rec.skip_dirs,
                                                         drop_cache=True)
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
        res.ok, res.message = False, f"{type(exc).__name__}: {exc}"
    finally:
        rec.stop()
        if not res.ok:
            tail = rec.log_text()[-600:].strip()
            if tail:
                res.message += f" | receiver log: {tail}"
        if opts.keep or (not res.ok and opts.keep_failed):
            log(f"kept {workdir}")
        elif opts.trash:
            # Deleting thousands of files makes the next runs' file creation
            # slow on ext4 without a journal (the inode allocator skips
            # inodes deleted in the last 60-360 s, reading each one's inode
            # table block): move the folder aside and delete all at the end.
            os.rename(workdir, os.path.join(opts.trash, os.path.basename(workdir)))
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return res


# -- report ------------------------------------------------------------------------
def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(results: list[RunResult]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.workload, r.pdu, r.receiver), []).append(r)
    rows = []
    for (wl, pdu, rec), rs in groups.items():
        good = [r for r in rs if r.ok]
        walls = [r.wall_s for r in good]
        row: dict[str, Any] = {"workload": wl, "pdu": pdu, "receiver": rec,
                               "runs": len(good), "failed": len(rs) - len(good),
                               "files": rs[0].files, "bytes": rs[0].bytes}
        if good:
            med = _med(walls)
            kids: dict[str, list[int]] = {}
            for r in good:
                for k, v in r.child_rss_kb.items():
                    kids.setdefault(k.split("[")[0], []).append(v)
            row.update({
                "wall_median_s": med, "wall_min_s": min(walls), "wall_max_s": max(walls),
                "files_per_s": rs[0].files / med, "mb_per_s": rs[0].bytes / 1e6 / med,
                "receiver_cpu_s": _med([r.receiver_cpu_s for r in good]),
                "sender_cpu_s": _med([r.sender_cpu_s for r in good]),
                "peak_rss_mb": max(r.peak_rss_kb for r in good) / 1024,
                "latency_p50_ms": _med([r.latency_p50_ms for r in good
                                        if not math.isnan(r.latency_p50_ms)]),
                "latency_p99_ms": _med([r.latency_p99_ms for r in good
                                        if not math.isnan(r.latency_p99_ms)]),
                "child_peak_rss_mb": {k: max(v) / 1024 for k, v in kids.items()},
            })
        row["errors"] = sorted({r.message for r in rs if not r.ok})
        rows.append(row)
    return rows


def latency_cell(row: dict[str, Any]) -> str:
    p50, p99 = row.get("latency_p50_ms", float("nan")), row.get("latency_p99_ms", float("nan"))
    return "-" if math.isnan(p50) else f"{p50:.2f} / {p99:.2f}"


def pdu_label(pdu: int) -> str:
    return f"{pdu // 1024}k" if pdu % 1024 == 0 else str(pdu)


def format_tables(rows: list[dict[str, Any]], receivers: list[str]) -> str:
    order = {n: i for i, n in enumerate(receivers)}
    rows = sorted(rows, key=lambda r: (ALL_WORKLOADS.index(r["workload"]), r["pdu"],
                                       order.get(r["receiver"], 99)))
    out = ["| workload | pdu | receiver | runs | wall s median (min-max) | files/s | MB/s "
           "| receiver CPU s | sender CPU s | peak RSS MB | C-STORE-RSP latency p50/p99 ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['workload']} ({r['files']} files, {r['bytes'] / 1e6:.0f} MB) " \
               f"| {pdu_label(r['pdu'])} | {r['receiver']} | {r['runs']}" + \
               (f" ({r['failed']} failed)" if r["failed"] else "")
        if not r["runs"]:
            first = r["errors"][0].split(" | receiver log")[0] if r["errors"] else "?"
            first = " ".join(first.split()).replace("|", "/")[:160]
            out.append(head + f" | FAILED: {first} | | | | | | |")
            continue
        rss = f"{r['peak_rss_mb']:.0f}"
        for k, v in r["child_peak_rss_mb"].items():
            rss += f" (+{k} {v:.0f})"
        out.append(head + f" | {r['wall_median_s']:.2f} ({r['wall_min_s']:.2f}-"
                   f"{r['wall_max_s']:.2f}) | {r['files_per_s']:.0f} | {r['mb_per_s']:.1f} "
                   f"| {r['receiver_cpu_s']:.2f} | {r['sender_cpu_s']:.2f} | {rss} "
                   f"| {latency_cell(r)} |")
    # ratios
    by = {(r["workload"], r["pdu"], r["receiver"]): r for r in rows if r["runs"]}
    sdccs = [n for n in receivers if n.startswith("sdcc")]
    peers = [n for n in receivers if not n.startswith("sdcc")]
    if sdccs and peers:
        cols = [(s, p) for s in sdccs for p in peers]
        out += ["", "Ratios sdcc/peer of the medians above: wall time (>1: sdcc slower) "
                "and receiver CPU seconds (>1: sdcc uses more).", "",
                "| workload | pdu | " + " | ".join(f"{s}/{p} wall, CPU" for s, p in cols) + " |",
                "|---|---|" + "---|" * len(cols)]
        seen = []
        for r in rows:
            key = (r["workload"], r["pdu"])
            if key in seen:
                continue
            seen.append(key)
            cells = []
            for s, p in cols:
                a, b = by.get((*key, s)), by.get((*key, p))
                if a and b and b["wall_median_s"] > 0:
                    cpu = (f"{a['receiver_cpu_s'] / b['receiver_cpu_s']:.2f}"
                           if b["receiver_cpu_s"] > 0 else "-")
                    cells.append(f"{a['wall_median_s'] / b['wall_median_s']:.2f}, {cpu}")
                else:
                    cells.append("-")
            out.append(f"| {key[0]} | {pdu_label(key[1])} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = proc_status_total()
    info = {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version()}
    for mod in ("twisted", "pydicom", "pynetdicom", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    return info


def proc_status_total() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- main --------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark sdcc against DCMTK storescp and pynetdicom storescp.",
        epilog=f"Receivers: {', '.join(DEFAULT_RECEIVERS)} (default); optional: "
               f"{', '.join(OPTIONAL_RECEIVERS)}.  Workloads: {', '.join(ALL_WORKLOADS)}.")
    p.add_argument("--quick", action="store_true",
                   help="smoke check: the first " + ", ".join(
                       f"{v} {k}" for k, v in QUICK_COUNTS.items()) + " files, 1 run")
    p.add_argument("--runs", type=int,
                   help="runs per workload x pdu x receiver (default 5; 1 with --quick)")
    p.add_argument("--workloads", help="comma-separated subset of " + ",".join(ALL_WORKLOADS))
    p.add_argument("--receivers", help="comma-separated receivers (see below)")
    p.add_argument("--pdus", help="comma-separated PDU sizes (default 16384,131072)")
    p.add_argument("--count", action="append", default=[], metavar="SET=N",
                   help="use only the first N files of a set, e.g. ct=100")
    p.add_argument("--json", metavar="OUT", help="save every run and the summary as JSON")
    p.add_argument("--markdown", metavar="OUT", help="save the tables as Markdown")
    p.add_argument("--tmp", help="where receivers write (default: a new dir in $TMPDIR)")
    p.add_argument("--corpus", default=corpus.DEFAULT_ROOT, help="corpus cache directory")
    p.add_argument("--dcmtk-bin", help="directory of the DCMTK binaries")
    p.add_argument("--sdcc-path",
                   help="PYTHONPATH for sdcc as it is (default: a snapshot of this "
                        "checkout's sdcc_twisted/ and twisted/plugins/sdcc.py taken at "
                        "start, so that every run measures the same code)")
    p.add_argument("--sdcc-log-level", default="info",
                   help="sdcc [logging] level (default info, sdcc's own default)")
    p.add_argument("--keep", action="store_true", help="keep every output folder")
    p.add_argument("--delete-between-runs", action="store_true",
                   help="delete each run's output at once (default: keep all until the end "
                        "when the disk has room; see README)")
    p.add_argument("--keep-failed", action="store_true", help="keep failed runs' folders")
    opts = p.parse_args(argv)
    opts.runs = opts.runs or (1 if opts.quick else 5)
    opts.workload_list = (opts.workloads.split(",") if opts.workloads else list(ALL_WORKLOADS))
    opts.receiver_list = (opts.receivers.split(",") if opts.receivers
                          else list(DEFAULT_RECEIVERS))
    opts.pdu_list = ([int(x) for x in opts.pdus.split(",")] if opts.pdus
                     else list(DEFAULT_PDUS))
    for w in opts.workload_list:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; known: {', '.join(ALL_WORKLOADS)}")
    for r in opts.receiver_list:
        if r not in RECEIVERS:
            p.error(f"unknown receiver {r!r}; known: {', '.join(RECEIVERS)}")
    for pdu in opts.pdu_list:
        if not 4096 <= pdu <= 131072:
            p.error("DCMTK takes PDU sizes from 4096 to 131072")
    counts = dict(QUICK_COUNTS if opts.quick else corpus.FULL_COUNTS)
    for spec in opts.count:
        k, _, v = spec.partition("=")
        if k not in counts or not v.isdigit():
            p.error(f"bad --count {spec!r}")
        counts[k] = int(v)
    opts.counts = counts
    return opts


def fs_probe(directory: str, n: int = 200) -> float:
    """Mean microseconds to create an empty file in ``directory``.

    On ext4 without a journal this jumps from tens of microseconds to most of
    a millisecond for a minute or more after many files were deleted on the
    same disk (see README): a benchmark started then measures the disk's
    inode allocator more than the receivers.  The files are left in place
    (the caller removes the folder at the end, with everything else).
    """
    os.makedirs(directory, exist_ok=True)
    t = time.perf_counter()
    for i in range(n):
        os.close(os.open(os.path.join(directory, f"p{i}"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return (time.perf_counter() - t) / n * 1e6


def fsync_loop_rate(directory: str, n: int = 500, size: int = 5300) -> float:
    """Files per second for creating, writing ``size`` bytes to and fsyncing
    files one after another in ``directory``: what the disk allows a
    receiver that syncs every small instance (the ``small`` set's 5.3 KB)."""
    os.makedirs(directory, exist_ok=True)
    data = os.urandom(size)
    t = time.perf_counter()
    for i in range(n):
        fd = os.open(os.path.join(directory, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    return n / (time.perf_counter() - t)


def snapshot_sdcc(dest: str, attempts: int = 12, pause: float = 10.0) -> str:
    """Copy sdcc's code into ``dest`` and check that it imports.

    The checkout may be edited while the benchmark runs; a snapshot keeps
    every run on the same code.  A snapshot that does not import (taken in
    the middle of someone's edit) is retaken, ``attempts`` times at most.
    Returns a short fingerprint (SHA-1 of the copied files).
    """
    import hashlib
    last = ""
    for attempt in range(attempts):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(os.path.join(REPO, "sdcc_twisted"), os.path.join(dest, "sdcc_twisted"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        os.makedirs(os.path.join(dest, "twisted", "plugins"))
        shutil.copy2(os.path.join(REPO, "twisted", "plugins", "sdcc.py"),
                     os.path.join(dest, "twisted", "plugins", "sdcc.py"))
        r = subprocess.run([sys.executable, "-c",
                            "import sdcc_twisted.tap, sdcc_twisted.service"],
                           env={**os.environ, "PYTHONPATH": dest}, cwd=dest,
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            h = hashlib.sha1()
            for root, dirs, names in sorted(os.walk(dest)):
                dirs.sort()
                for n in sorted(names):
                    if n.endswith(".py"):
                        with open(os.path.join(root, n), "rb") as f:
                            h.update(n.encode() + b"\0" + f.read())
            return h.hexdigest()[:12]
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "?"
        log(f"sdcc snapshot does not import ({last}); retrying in {pause:.0f}s "
            f"({attempt + 1}/{attempts})")
        time.sleep(pause)
    raise SystemExit(f"sdcc in {REPO} does not import: {last}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.time()
    tools = {t: find_dcmtk(t, opts.dcmtk_bin) for t in ("storescu", "storescp", "echoscu")}
    if "orthanc" in opts.receiver_list and not (shutil.which("Orthanc") or
                                                os.path.exists("/usr/sbin/Orthanc")):
        raise SystemExit("receiver orthanc needs Orthanc (apt-get install orthanc)")
    opts.tmp = tempfile.mkdtemp(prefix="sdcc-bench-", dir=opts.tmp)
    own_tmp = True     # the folder made here, also inside a given --tmp
    opts.sdcc_code = "live tree"
    if any(r.startswith("sdcc") for r in opts.receiver_list):
        if opts.sdcc_path is None:
            opts.sdcc_path = os.path.join(opts.tmp, "sdcc-src")
            opts.sdcc_code = "snapshot " + snapshot_sdcc(opts.sdcc_path)
        else:
            opts.sdcc_code = opts.sdcc_path
        log(f"sdcc code: {opts.sdcc_code}")
    sets: dict[str, list[corpus.CorpusFile]] = {}
    for wl in opts.workload_list:
        s = WORKLOADS[wl].set_name
        if s not in sets:
            sets[s] = corpus.ensure_set(s, opts.counts[s], opts.corpus, progress=log)
    log(f"corpus ready in {time.time() - started:.0f}s: " + ", ".join(
        f"{k} {len(v)} files {sum(f.size for f in v) / 1e6:.0f} MB" for k, v in sets.items()))

    results: list[RunResult] = []
    combos = [(WORKLOADS[w], pdu) for w in opts.workload_list for pdu in opts.pdu_list]
    n_total = len(combos) * opts.runs * len(opts.receiver_list)
    # keep every run's output until the end (see run_one) if the disk has room
    need = sum(sum(f.size for f in sets[wl.set_name]) for wl, _ in combos) * \
        opts.runs * len(opts.receiver_list)
    st = os.statvfs(opts.tmp)
    free = st.f_bavail * st.f_frsize
    waited = 0
    while True:
        opts.fs_probe_us = fs_probe(os.path.join(opts.tmp, f"fs-probe{waited}"))
        log(f"file creation in {opts.tmp}: {opts.fs_probe_us:.0f} us per file")
        if opts.fs_probe_us <= 150:
            break
        if waited >= (60 if opts.quick else 240):
            log("WARNING: creating a file is still slow here; the results will include "
                "it (see README)")
            break
        log("creating a file is slow: many files were deleted on this disk lately? "
            "waiting 30 s (see README)")
        time.sleep(30)
        waited += 30
    opts.trash = None
    if opts.delete_between_runs:
        pass
    elif need < free * 0.6:
        opts.trash = os.path.join(opts.tmp, "done")
        os.makedirs(opts.trash)
        log(f"output folders are kept until the end ({need / 1e9:.1f} GB of "
            f"{free / 1e9:.0f} GB free)")
    else:
        log(f"not enough room to keep outputs ({need / 1e9:.1f} GB, {free / 1e9:.0f} GB "
            f"free): deleting after each run, which can slow later runs' file creation")
    n = 0
    fsync_loop: list[float] = []
    syncing = any(r in ("sdcc-fsync", "orthanc") for r in opts.receiver_list)
    try:
        for wl, pdu in combos:
            for rnd in range(opts.runs):
                if wl.name == "small" and syncing:
                    fsync_loop.append(fsync_loop_rate(
                        os.path.join(opts.tmp, f"fsync-loop{len(fsync_loop)}")))
                    log(f"create+fsync loop of 5.3 KB files: {fsync_loop[-1]:.0f} files/s")
                # rotate the order each round: no receiver always goes first
                k = rnd % len(opts.receiver_list)
                order = opts.receiver_list[k:] + opts.receiver_list[:k]
                for rec_name in order:
                    n += 1
                    r = run_one(rec_name, wl, pdu, sets[wl.set_name], rnd, tools, opts)
                    results.append(r)
                    status = (f"{r.wall_s:.2f}s cpu {r.receiver_cpu_s:.2f}s "
                              f"start {r.startup_s:.1f}s" if r.ok else "FAILED " + r.message)
                    log(f"[{n}/{n_total}] {wl.name} pdu {pdu} {rec_name} run {rnd + 1}: {status}")
    except KeyboardInterrupt:
        log("interrupted; reporting the runs so far")
    finally:
        if opts.trash:
            t = time.time()
            shutil.rmtree(opts.trash, ignore_errors=True)
            log(f"removed the runs' output in {time.time() - t:.0f}s")
        if own_tmp and not (opts.keep or opts.keep_failed):
            shutil.rmtree(opts.tmp, ignore_errors=True)
        elif own_tmp:
            log(f"left {opts.tmp} (--keep/--keep-failed); remove it when done")

    rows = summarize(results)
    tables = format_tables(rows, opts.receiver_list)
    info = machine_info()
    header = (f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; {info['cores']} cores "
              f"({info['cpu']}), {info['memory_gb']} GB; Linux {info['kernel']}; "
              f"Python {info['python']}; sdcc {opts.sdcc_code}; runs per cell: {opts.runs}; "
              f"file creation {getattr(opts, 'fs_probe_us', 0):.0f} us; "
              + (f"create+fsync loop of 5.3 KB files {_med(fsync_loop):.0f} files/s "
                 f"(median of {len(fsync_loop)}); " if fsync_loop else "")
              + f"took {(time.time() - started) / 60:.1f} min")
    print()
    print(header)
    print()
    print(tables)
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"\n{len(failed)} run(s) failed:")
        for r in failed:
            msg = " ".join(r.message.split())[:500]
            print(f"  {r.workload} pdu {r.pdu} {r.receiver} run {r.round + 1}: {msg}")
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump({"header": header, "machine": info, "options": {
                "runs": opts.runs, "workloads": opts.workload_list,
                "receivers": opts.receiver_list, "pdus": opts.pdu_list,
                "counts": opts.counts, "quick": opts.quick},
                "receivers": {n: RECEIVERS[n].description for n in opts.receiver_list},
                "summary": rows, "runs": [asdict(r) for r in results]}, f, indent=1)
    if opts.markdown:
        with open(opts.markdown, "w", encoding="utf-8") as f:
            f.write(f"{header}\n\n{tables}\n")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
