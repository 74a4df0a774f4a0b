"""What attaching the gfapi probes costs a libgfapi client: the lab's small-file workload
(create+write, stat, utimens, open+read, unlink per file) timed without and with the bcc
uprobes in the same run, alternating rounds so drift hits both sides alike.

    python bench/probe_overhead.py [--files 500] [--rounds 5]

The client runs in a child process (as a real client would), so the collector polling the
perf buffer here does not compete with it for the interpreter; the uprobes are attached by
library path and so fire in the child.

Prints each round, then the slowdown ratio (median with probes / median without); the target
is <= 1.05. Then the cost of a single probe hit, measured on a cheap libgfapi function in a
tight loop, which is steadier than the workload ratio on a busy machine. Needs root, bcc and the lab; otherwise it says why and exits 0.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from correlate.probe import catalog  # noqa: E402
from correlate.probe.errors import ProbeError  # noqa: E402


def child(files: int) -> int:
    """The measured client: mount, warm up, time the workload, print the seconds."""
    from tests.lab import gfapi
    fs = gfapi.Client(log_file="/var/log/correlate-lab/bench-probe-overhead.log").init()
    gfapi.workload(fs, max(10, files // 10), 4096, "/bench-probe-overhead")
    t0 = time.perf_counter()
    gfapi.workload(fs, files, 4096, "/bench-probe-overhead")
    print(f"{time.perf_counter() - t0:.6f}", flush=True)
    os._exit(0)   # skip glfs_fini's long wait


def run_child(files: int, session=None) -> float:
    """Run the client in its own process (so the collector never competes with it for the
    interpreter) while this process drains the probes."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", "--files", str(files)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    while proc.poll() is None:
        if session is not None:
            session.poll(50)
        else:
            time.sleep(0.05)
    out = proc.stdout.read().strip()
    if proc.returncode != 0 or not out:
        raise SystemExit(f"probe_overhead: workload child failed (exit {proc.returncode})")
    return float(out.splitlines()[-1])


HIT_CHILD = """
import ctypes, sys, time
f = ctypes.CDLL("libgfapi.so.0").glfs_setfsuid
n = int(sys.argv[1])
t0 = time.perf_counter()
for _ in range(n):
    f(0)
print(time.perf_counter() - t0)
"""


def per_hit_ns(calls: int = 200_000, emit: str = "all") -> tuple[float, int]:
    """Cost of one probe hit (uprobe trap + BPF program + perf output): a cheap libgfapi
    function (glfs_setfsuid) called in a loop, timed with and without a probe on it.
    With emit="failures" the probe is an entry and a return that send nothing (the call
    succeeds), which is what the fop probes cost on a healthy workload."""
    from correlate.probe.catalog import Arg, ProbeSpec
    from correlate.probe.session import ProbeSession

    def run(session=None) -> float:
        proc = subprocess.Popen([sys.executable, "-c", HIT_CHILD, str(calls)], stdout=subprocess.PIPE,
                                text=True)
        while proc.poll() is None:
            if session is not None:
                session.poll(20)
            else:
                time.sleep(0.02)
        return float(proc.stdout.read())

    spec = ProbeSpec("bench.glfs_setfsuid", "bench", "libgfapi.so.0", "glfs_setfsuid",
                     (Arg("uid", 1, "int"),), retprobe=emit != "all", emit=emit)
    plain = min(run() for _ in range(3))
    session = ProbeSession([spec], backend="bcc").start()
    probed = min(run(session) for _ in range(3))
    session.stop()
    return (probed - plain) / calls * 1e9, session.lost


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        return child(opts.files)
    if os.geteuid() != 0:
        print("probe_overhead: skipped (needs root for uprobes)")
        return 0
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        print(f"probe_overhead: skipped ({exc})")
        return 0
    from correlate.probe.session import ProbeSession
    from tests.lab import lab

    plain, probed = [], []
    with lab.exclusive():
        lab.up()
        for r in range(opts.rounds):
            plain.append(run_child(opts.files))
            session = ProbeSession(catalog.select("gfapi"), backend="bcc").start()
            probed.append(run_child(opts.files, session))
            session.stop()
            summary = session.summary()
            print(f"round {r + 1}: without probes {plain[-1]:.3f} s, with probes {probed[-1]:.3f} s "
                  f"({summary['events']} events, {summary['lost']} lost)", flush=True)
            # per file: glfs_utimens + glfs_setattr, call and return each; the fops
            # (creat, write, close, stat, open, read) succeed and so send nothing
            expected = 4 * (opts.files + max(10, opts.files // 10))
            if summary["events"] < expected:
                print(f"probe_overhead: expected at least {expected} events, saw {summary['events']}")
                return 1
        hit_ns, hit_lost = per_hit_ns()
        quiet_ns, _ = per_hit_ns(emit="failures")
    ratio = statistics.median(probed) / statistics.median(plain)
    best = min(probed) / min(plain)
    per_file_us = (statistics.median(probed) - statistics.median(plain)) / opts.files * 1e6
    print(f"probe overhead: {ratio:.3f}x ({(ratio - 1) * 100:+.1f}%, {per_file_us:+.1f} us per file "
          f"of 5 fops) over {opts.rounds} rounds of {opts.files} files; best round against best "
          f"round {best:.3f}x; target <= 1.05x")
    per_file_ns = statistics.median(plain) / opts.files * 1e9
    # Per file: glfs_utimens and glfs_setattr send call and return (4 hits); glfs_creat,
    # glfs_write, glfs_close, glfs_stat, glfs_open, glfs_read, glfs_close succeed and send
    # nothing (7 calls, each an entry and a return that stay in the kernel).
    sent, quiet = 4, 7
    estimate = (sent * hit_ns + quiet * quiet_ns) / per_file_ns * 100
    print(f"cost of one probe hit that sends its event: {hit_ns:.0f} ns ({hit_lost} events lost); "
          f"of a call and return that send nothing: {quiet_ns:.0f} ns (glfs_setfsuid loop, best "
          f"of 3); {sent} x {hit_ns / 1000:.1f} us + {quiet} x {quiet_ns / 1000:.1f} us per file over "
          f"{per_file_ns / 1000:.0f} us per file = {estimate:.1f}% estimated overhead")
    return 0


if __name__ == "__main__":
    sys.exit(main())
