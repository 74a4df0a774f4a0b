"""What the `fuse` probes cost an application on a FUSE mount: a small-file workload
(create+write 4 KiB, stat, read, unlink per file, plus a directory listing) in blocks, with
the group's raw tracepoints (the two FUSE ones and, with CORRELATE_FUSE_SYSCALLS=exit,
raw_syscalls sys_enter/sys_exit) attached and detached in turn (ABBA), in one run.

    python bench/fuse_overhead.py [--files 200] [--pairs 20] [--slow-s 1.0] [--mount DIR]
                                  [--other-calls 200000] [--backend tracepoints|uprobes]

`--backend uprobes` measures the fallback instead (uprobes on the FUSE client's readv/writev
of /dev/fuse, attached and detached per block the same way).

The tracepoints fire for every FUSE request of every mount, so the probed and the plain
side cannot be two mounts at once (as bench/probe_overhead.py does with two library
copies): the program stays loaded and only its attachment moves between blocks. The
workload runs in its own process, started once; the collector is polled while a block runs,
as `correlate run` polls it. Prints the wall-time ratio (mean with / mean without) with a
95% bootstrap interval over the pairs, the median of the pairs' own ratios, and the events
the probes sent. Target: <= 1.05.

The wall ratio of a FUSE workload on a shared VM moves by +-20% on its own, far more than
the probes cost, so the bench also reads the kernel's own account of the programs
(kernel.bpf_stats_enabled, switched on for the run: run_cnt and run_time_ns of each
program, from BPF_OBJ_GET_INFO_BY_FD) and prints the probes' time per file against the
file's time without them: the cost the probes add, without the noise. sys_enter/sys_exit run
for every system call of the machine (other processes' too), so their count is printed
apart, and a second phase times an unrelated process's system calls (stat of a file off the
mount, not watched) with them attached and detached: what every other program pays.

Needs root, bcc, the kernel's fuse tracepoints and a mounted Gluster volume (by default
the FUSE tests' /mnt/fz2vol: `python -m tests.lab.fuse` helpers mount it); otherwise it
says why and exits 0.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 1.05

WORKER = r"""
import os, sys, time
base, files = sys.argv[1], int(sys.argv[2])
data = b"x" * 4096
block = 0
for line in sys.stdin:
    block += 1
    d = f"{base}/b{block}"
    start = time.perf_counter()
    os.mkdir(d)
    for i in range(files):
        p = f"{d}/f{i}"
        with open(p, "wb") as fh:
            fh.write(data)
        os.stat(p)
        with open(p, "rb") as fh:
            fh.read()
    os.listdir(d)
    for i in range(files):
        os.unlink(f"{d}/f{i}")
    os.rmdir(d)
    print(time.perf_counter() - start, flush=True)
"""

# an unrelated program: stat of a file off the mount, timed per block
OTHER = r"""
import os, sys, time
path, calls = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    start = time.perf_counter()
    for _ in range(calls):
        os.stat(path)
    print(time.perf_counter() - start, flush=True)
"""


BPF_OBJ_GET_INFO_BY_FD = 15
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of a loaded program (struct bpf_prog_info, uapi: run_time_ns at
    byte 192, run_cnt at 200)."""
    info = ctypes.create_string_buffer(256)
    attr = ctypes.create_string_buffer(16)
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint32(fd)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 4, ctypes.byref(ctypes.c_uint32(256)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 8, ctypes.byref(ctypes.c_uint64(ctypes.addressof(info))), 8)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(321, BPF_OBJ_GET_INFO_BY_FD, attr, 16) != 0:   # SYS_bpf on x86-64
        return 0, 0
    run_time, run_cnt = ctypes.c_uint64.from_buffer_copy(info, 192).value, ctypes.c_uint64.from_buffer_copy(info, 200).value
    return run_cnt, run_time


def bootstrap(with_: list[float], without: list[float], rounds: int = 2000) -> tuple[float, float]:
    rng = random.Random(1)
    n, ratios = len(with_), []
    for _ in range(rounds):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.fmean(with_[i] for i in idx) / statistics.fmean(without[i] for i in idx))
    ratios.sort()
    return ratios[int(rounds * 0.025)], ratios[int(rounds * 0.975)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--slow-s", type=float, default=1.0)
    ap.add_argument("--mount", default="/mnt/fz2vol")
    ap.add_argument("--other-calls", type=int, default=200_000,
                    help="system calls per block of the unrelated program (0: skip that phase)")
    ap.add_argument("--backend", choices=("tracepoints", "uprobes"), default="tracepoints")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("fuse_overhead: needs root (bcc)")
        return 0
    if subprocess.run(["mountpoint", "-q", a.mount]).returncode:
        print(f"fuse_overhead: {a.mount} is not mounted")
        return 0
    from correlate.probe.errors import ProbeError
    from correlate.probe.fuse_backend import FuseCollector
    from correlate.probe.fuse_uprobes import FUNCS, FuseUprobeCollector
    cls = FuseUprobeCollector if a.backend == "uprobes" else FuseCollector
    collector = cls(slow_ns=int(a.slow_s * 1e9))
    try:
        collector.start()
    except ProbeError as exc:
        print(f"fuse_overhead: {exc}")
        return 0
    stats_before = STATS_SYSCTL.read_text().strip() if STATS_SYSCTL.exists() else None
    if stats_before is not None:
        STATS_SYSCTL.write_text("1")
    base = Path(a.mount) / f"fuse-overhead-{os.getpid()}"
    base.mkdir()
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(base), str(a.files)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    from correlate.probe.fuse_backend import SYS_TRACEPOINTS, TRACEPOINTS
    if a.backend == "uprobes":    # (function, pid): each client's three uprobes
        points = tuple((fn, pid) for pid in collector.clients for _sym, fn, _ret in FUNCS)
    else:
        points = TRACEPOINTS + (SYS_TRACEPOINTS if collector.sys_exit else ())
    attached, events = set(points), 0

    def toggle(point, on: bool) -> None:
        bpf = collector.bpf
        if isinstance(point, str):
            if on:
                bpf.attach_raw_tracepoint(tp=point.encode(), fn_name=f"raw_tracepoint__{point}".encode())
            else:
                bpf.detach_raw_tracepoint(tp=point.encode())
            return
        fn, pid = point
        sym, ret = next((s, r) for s, f, r in FUNCS if f == fn)
        libc = collector.clients[pid][2].encode()
        if on:
            (bpf.attach_uretprobe if ret else bpf.attach_uprobe)(name=libc, sym=sym.encode(),
                                                                 fn_name=fn.encode(), pid=pid)
        else:
            (bpf.detach_uretprobe if ret else bpf.detach_uprobe)(name=libc, sym=sym.encode(), pid=pid)

    def attach(on: bool, which=points) -> None:
        for point in which:
            if on != (point in attached):
                toggle(point, on)
                (attached.add if on else attached.discard)(point)

    def block(on: bool, proc=worker, which=points) -> float:
        nonlocal events
        attach(on, which)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = ""
        os.set_blocking(proc.stdout.fileno(), False)
        while not line:
            # fuse.pending here is the bench's own doing: a request read while attached and
            # answered while detached stays in the kernel's table
            events += sum(e["kind"] == "fuse.reply" for e in collector.poll(50))
            line = proc.stdout.readline()
        return float(line)

    fds = {p: collector.bpf.funcs[(p[0] if isinstance(p, tuple) else f"raw_tracepoint__{p}").encode()].fd
           for p in points}
    try:
        block(False)          # warm the caches and the mount
        with_, without = [], []
        for pair in range(a.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            for on in order:
                (with_ if on else without).append(block(on))
        runs = {tp: prog_stats(fd) for tp, fd in fds.items()}
        other = (other_calls(a, block) if a.other_calls and collector.sys_exit else None)
    finally:
        if stats_before is not None:
            STATS_SYSCTL.write_text(stats_before)
        worker.stdin.close()
        worker.wait(60)
        attach(True)
        events += sum(e["kind"] == "fuse.reply" for e in collector.stop())
        base.rmdir()
    ratio = statistics.fmean(with_) / statistics.fmean(without)
    lo, hi = bootstrap(with_, without)
    per_file = statistics.fmean(without) / a.files * 1e6
    pairs = statistics.median(w / wo for w, wo in zip(with_, without))
    print(f"fuse probes (slow {a.slow_s:g} s): {ratio:.3f}x wall (95% {lo:.3f}..{hi:.3f}, "
          f"median of pairs {pairs:.3f}x), {a.pairs} pairs of {a.files} files, "
          f"{per_file:.0f} us per file without probes, {events} fuse.reply events sent; target <= {TARGET}")
    files = a.pairs * a.files
    fuse = [r for p, r in runs.items() if p not in SYS_TRACEPOINTS]
    if a.backend == "uprobes":    # one program serves every client: count it once
        fuse = list({fds[p]: r for p, r in runs.items()}.values())
    count, spent = sum(r[0] for r in fuse), sum(r[1] for r in fuse)
    if count:
        probe_us = spent / files / 1e3
        print(f"  in the kernel, FUSE {a.backend}: {count} program runs ({count / files:.1f} per "
              f"file), {spent / count:.0f} ns each, {probe_us:.2f} us per file = "
              f"{probe_us / per_file * 100:.3f}% of a file's {per_file:.0f} us")
    sys_runs = [runs[tp] for tp in SYS_TRACEPOINTS if tp in runs]
    scount, sspent = sum(r[0] for r in sys_runs), sum(r[1] for r in sys_runs)
    if scount:
        print(f"  in the kernel, sys_enter/sys_exit: {scount} program runs (every process's "
              f"calls while attached), {sspent / scount:.0f} ns each, {sspent / files / 1e3:.2f} us "
              f"per file = {sspent / files / 1e3 / per_file * 100:.3f}% of a file's {per_file:.0f} us")
    if other:
        ratio, lo, hi, ns = other
        print(f"  an unrelated program's stat() calls (not watched): {ratio:.3f}x wall (95% "
              f"{lo:.3f}..{hi:.3f}), {ns:.0f} ns per call without the probes")
    return 0


def other_calls(a, block) -> tuple[float, float, float, float]:
    """The unrelated program's blocks with sys_enter/sys_exit attached and detached."""
    from correlate.probe.fuse_backend import SYS_TRACEPOINTS
    proc = subprocess.Popen([sys.executable, "-c", OTHER, "/etc/hostname", str(a.other_calls)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        block(False, proc, SYS_TRACEPOINTS)
        with_, without = [], []
        for pair in range(a.pairs):
            for on in ((True, False) if pair % 2 == 0 else (False, True)):
                (with_ if on else without).append(block(on, proc, SYS_TRACEPOINTS))
    finally:
        proc.stdin.close()
        proc.wait(60)
    lo, hi = bootstrap(with_, without)
    return (statistics.fmean(with_) / statistics.fmean(without), lo, hi,
            statistics.fmean(without) / a.other_calls * 1e9)


if __name__ == "__main__":
    sys.exit(main())
