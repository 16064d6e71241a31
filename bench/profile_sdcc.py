#!/usr/bin/env python
"""Profile sdcc while it receives one workload; print the top functions.

    python bench/profile_sdcc.py                       # py-spy, CT set, fsync=no, 16k PDU
    python bench/profile_sdcc.py --tool cprofile --fsync yes
    python bench/profile_sdcc.py --tool py-spy --svg /tmp/sdcc.svg --workload small

``py-spy`` (pip install py-spy) samples the running ``twistd`` from outside
(``--gil``-free, all threads, idle excluded) and writes collapsed stacks;
``cprofile`` runs ``twistd --profile FILE --profiler cprofile --savestats``
(main thread only: the fsync thread pool is not seen).  Both summaries give
self time (the function itself) and cumulative time (with its callees).
Uses the same receiver, corpus and senders as bench/run.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corpus  # noqa: E402
import run  # noqa: E402


class ProfiledSdcc(run.SdccReceiver):
    name = "sdcc-profiled"
    stats_file = ""

    def command(self) -> list[str]:
        cmd = super().command()
        if self.stats_file:
            i = cmd.index("sdcc")
            cmd[i:i] = [f"--profile={self.stats_file}", "--profiler=cprofile", "--savestats"]
        return cmd


_LINE = re.compile(r":\d+\)$")


def summarize_collapsed(path: str, top: int) -> str:
    """Self and inclusive sample counts per function from py-spy's raw format
    (``frame;frame;...;leaf count``, outermost first)."""
    self_c: collections.Counter[str] = collections.Counter()
    cum_c: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack or not n.isdigit():
                continue
            count = int(n)
            total += count
            # "func (file:line)" -> "func (file)": one entry per function
            frames = [_LINE.sub(")", fr.strip()) for fr in stack.split(";")]
            frames = [fr for fr in frames if not fr.startswith("thread ")
                      and not fr.startswith("process ")]
            if not frames:
                continue
            self_c[frames[-1]] += count
            for fr in set(frames):
                cum_c[fr] += count
    lines = [f"{total} samples", "", "top by self time:"]
    for fr, c in self_c.most_common(top):
        lines.append(f"  {100 * c / total:5.1f}%  {fr}")
    lines += ["", "top by cumulative time:"]
    for fr, c in cum_c.most_common(top):
        lines.append(f"  {100 * c / total:5.1f}%  {fr}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tool", choices=("py-spy", "cprofile"), default="py-spy")
    p.add_argument("--workload", choices=run.ALL_WORKLOADS, default="ct")
    p.add_argument("--pdu", type=int, default=16384)
    p.add_argument("--fsync", choices=("yes", "no"), default="no")
    p.add_argument("--count", type=int, help="first N files of the set")
    p.add_argument("--repeat", type=int, default=1, help="send the workload N times")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--gil", action="store_true",
                   help="py-spy: sample only while the GIL is held (Python CPU; "
                        "blocking syscalls such as open/send/write drop out)")
    p.add_argument("--svg", help="also write a py-spy flame graph here")
    p.add_argument("--out", help="keep the raw profile (collapsed stacks / pstats) here")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--sdcc-path", help="as in run.py (default: a snapshot of the checkout)")
    p.add_argument("--sdcc-log-level", default="info")
    p.add_argument("--dcmtk-bin")
    opts = p.parse_args(argv)

    tools = {t: run.find_dcmtk(t, opts.dcmtk_bin) for t in ("storescu", "storescp", "echoscu")}
    wl = run.WORKLOADS[opts.workload]
    files = corpus.ensure_set(wl.set_name, opts.count or corpus.FULL_COUNTS[wl.set_name],
                              progress=run.log)
    tmp = tempfile.mkdtemp(prefix="sdcc-profile-")
    if opts.sdcc_path is None:
        opts.sdcc_path = os.path.join(tmp, "sdcc-src")
        run.log("sdcc snapshot " + run.snapshot_sdcc(opts.sdcc_path))
    workdir = os.path.join(tmp, "run")
    os.makedirs(workdir)
    ProfiledSdcc.fsync = opts.fsync == "yes"
    stats = os.path.join(tmp, "sdcc.pstats")
    if opts.tool == "cprofile":
        ProfiledSdcc.stats_file = stats
    rec = ProfiledSdcc(workdir, run.free_port(), opts.pdu, tools, opts)
    spy = None
    raw = os.path.join(tmp, "pyspy.txt")
    passes = [("raw", raw)]
    if opts.tool == "py-spy" and opts.svg:
        passes.append(("flamegraph", os.path.abspath(opts.svg)))
    try:
        rec.start()
        rec.wait_ready()
        assert rec.proc is not None
        for n, (fmt, out) in enumerate(passes):
            if opts.tool == "py-spy":
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(rec.proc.pid),
                                        "--rate", str(opts.rate), "--format", fmt, "-o", out,
                                        *(["--gil"] if opts.gil else [])],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)   # let it attach
            cpu0 = rec.cpu()
            walls = []
            for i in range(opts.repeat):
                if i or n:   # the same instances again: move the stored files aside
                    # (not delete: see run_one in run.py on ext4 inode reuse)
                    aside = os.path.join(workdir, f"sent-{n}-{i}")
                    os.makedirs(aside)
                    for entry in os.listdir(rec.out_dir):
                        if entry not in rec.skip_dirs:
                            os.rename(os.path.join(rec.out_dir, entry),
                                      os.path.join(aside, entry))
                wall, _, errors = run.run_senders(run.split(files, wl.senders), rec.port,
                                                  opts.pdu, tools, workdir)
                if errors:
                    raise SystemExit("; ".join(errors))
                walls.append(wall)
            run.quiesce(rec)
            cpu = rec.cpu() - cpu0
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
                spy = None
            total = sum(f.size for f in files)
            print(f"pass {n + 1} ({fmt}): sdcc fsync={opts.fsync} {opts.workload} pdu {opts.pdu}: "
                  f"wall {', '.join(f'{w:.2f}' for w in walls)} s for {len(files)} files "
                  f"{total / 1e6:.0f} MB each; receiver CPU {cpu:.2f} s")
        rec.stop()
        if opts.tool == "py-spy":
            print(summarize_collapsed(raw, opts.top))
            if opts.out:
                shutil.copy(raw, opts.out)
            if opts.svg:
                print(f"flame graph: {passes[-1][1]}")
        else:
            st = pstats.Stats(stats)
            st.sort_stats("cumulative").print_stats(opts.top)
            st.sort_stats("tottime").print_stats(opts.top)
            if opts.out:
                shutil.copy(stats, opts.out)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        rec.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
