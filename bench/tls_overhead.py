"""What `--probe tls` costs a libgfapi client on a TLS volume: the small-file workload in
blocks, with and without the plaintext copy, in one run. `--keys`: what `--probe tls-keys`
costs instead, each block then a fresh client process (glfs_init, its TLS handshakes to the
bricks, the workload, exit), since that probe traps only in handshakes.

    python bench/tls_overhead.py [--files 100] [--pairs 20] [--volume tlsvol] [--pid-filter]
                                 [--keys] [--verbose]

The method of probe_overhead.py (read its docstring): two identical clients mounted once run
blocks in turn (ABBA); the second loads a byte-identical copy of libssl.so.3 (its directory in
LD_LIBRARY_PATH: Gluster's socket transport is dlopen'd and links libssl), so the uprobes on
one file fire in one client only; halfway they move to the copy. The collector is polled
during every block, as `correlate run` polls it, and its RPC decoding counted in: the reader's
own CPU is reported apart (it is not the client's), decoding what `correlate run` decodes
for the built-in detectors. Target: wall <= 1.05x.

Needs root, bcc and the lab with the TLS volume (`python -m tests.lab.tls up`); otherwise it
says why and exits 0.
"""
from __future__ import annotations

import argparse
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.probe_overhead import TARGET, bootstrap_ratio  # noqa: E402


def child(volume: str, reconnect: bool) -> int:
    from tests.lab import gfapi
    log = "/var/log/correlate-lab/bench-tls-overhead.log"
    if not reconnect:
        fs = gfapi.Client(volume=volume, log_file=log).init()
        gfapi.workload(fs, 50, 4096, "/bench-tls-overhead")
    print("ready", flush=True)
    for line in sys.stdin:
        files = int(line)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if reconnect:         # a program that connects, works and leaves (qemu-img, smbd's)
            fs = gfapi.Client(volume=volume, log_file=log).init()
        gfapi.workload(fs, files, 4096, "/bench-tls-overhead")
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        # the client's own CPU: the uprobes' traps and copies are charged to it as system time
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(f"{t1 - t0:.6f} {cpu:.6f}", flush=True)
        if reconnect:         # it leaves as such a program does (glfs_fini would wait 10 s)
            break
    os._exit(0)


class Client:
    """The measured client: one process for every block, or with `reconnect` a fresh one
    started (untimed) before each block, which connects inside the block and then exits."""

    def __init__(self, volume: str, library_dir: str | None = None, reconnect: bool = False):
        self.env = dict(os.environ)
        if library_dir:
            self.env["LD_LIBRARY_PATH"] = library_dir
        self.args = [sys.executable, __file__, "--child", "--volume", volume,
                     *(["--reconnect"] if reconnect else [])]
        self.reconnect = reconnect
        self._start()
        self.poll_cpu = 0.0     # this thread's CPU inside collector.poll during the blocks

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT, env=self.env)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"tls_overhead: the client did not mount (exit {self.proc.wait()})")

    def libssl(self) -> str:
        with open(f"/proc/{self.proc.pid}/maps") as maps:
            return next((line.split()[-1] for line in maps if "libssl.so" in line), "")

    def block(self, files: int, collector) -> tuple[float, int]:
        self.proc.stdin.write(f"{files}\n")
        self.proc.stdin.flush()
        events = 0
        while not select.select([self.proc.stdout], [], [], 0)[0]:
            if self.proc.poll() is not None:
                raise SystemExit(f"tls_overhead: the client died (exit {self.proc.returncode})")
            cpu = time.thread_time()
            events += len(collector.poll(50))
            self.poll_cpu += time.thread_time() - cpu
        wall, cpu = map(float, self.proc.stdout.readline().split())
        if self.reconnect:
            self.proc.wait()
            self._start()
        return wall, cpu, events

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def run_decoding() -> dict:
    """What `correlate run` (findings only) has the RPC decoder decode: the details the
    built-in detectors read, the rest kept for evidence."""
    from correlate.detector import details_needed, load_detectors
    from correlate.plugin_manager import get_plugin_manager
    needed = details_needed(load_detectors(get_plugin_manager())[0])
    return {"details": True} if needed is None else {"details": needed, "details_later": True}


def collector_for(keys: str | None, library: str, pid: int | None):
    """--probe tls's collector, or with `keys` (a key log path) --probe tls-keys'."""
    if keys:
        from correlate.probe.tls_keys import TlsKeyCollector
        return TlsKeyCollector(keys, library=library, pid=pid).start()
    from correlate.probe.tls_collector import TlsCollector
    return TlsCollector(library=library, pid=pid, **run_decoding()).start()


def measure(volume: str, files: int, pairs: int, verbose: bool, pid_filter: bool,
            keys: bool = False) -> dict:
    from correlate.probe.resolve import find_library
    original = os.path.realpath(find_library("libssl.so.3"))
    with tempfile.TemporaryDirectory(prefix="correlate-bench-") as copy_dir:
        copy = os.path.join(copy_dir, "libssl.so.3")
        keylog = os.path.join(copy_dir, "keys.log") if keys else None
        shutil.copy2(original, copy)
        clients = [Client(volume, reconnect=keys), Client(volume, copy_dir, reconnect=keys)]
        if not keys:         # a reconnecting client maps libssl again at each block
            mapped = [os.path.realpath(c.libssl()) for c in clients]
            if mapped != [original, copy]:
                raise SystemExit(f"tls_overhead: the clients mapped {mapped}, not {[original, copy]}")
        pid = clients[0].proc.pid if pid_filter else None
        collector = collector_for(keylog, original, pid)
        logged = 0
        plain, probed, events, stray = [], [], 0, 0
        half = pairs + pairs % 2
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            for c in clients:
                c.block(files, collector)
            cpus: dict[bool, list[float]] = {True: [], False: []}
            for i in range(2 * pairs):
                if i == half:
                    events += len(collector.stop())
                    logged += getattr(collector, "logged", 0)
                    pid = clients[1].proc.pid if pid_filter else None
                    collector = collector_for(keylog, copy, pid)
                probed_client = clients[0] if i < half else clients[1]
                with_probes = (i % 4) in (1, 2)
                client = probed_client if with_probes else clients[clients[0] is probed_client]
                wall, cpu, n = client.block(files, collector)
                (probed if with_probes else plain).append(wall)
                cpus[with_probes].append(cpu)
                events += n
                stray += 0 if with_probes else n
                if verbose:
                    print(f"  block {i + 1:3d} {'with   ' if with_probes else 'without'} "
                          f"{wall:.3f} s, {n} events", flush=True)
        finally:
            for c in clients:
                c.close()
            events += len(collector.stop())
            logged += getattr(collector, "logged", 0)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    walls = list(zip(plain, probed))
    return {"wall_ratio": statistics.fmean(probed) / statistics.fmean(plain),
            "interval": bootstrap_ratio(walls), "pair_median": statistics.median(w / p for p, w in walls),
            "wall_per_file": statistics.fmean(plain) / files, "events": events, "stray": stray,
            "lost": collector.lost, "truncated": getattr(collector, "truncated_bytes", 0),
            "keys_logged": logged,
            "reader_cpu": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
            "poll_cpu": sum(c.poll_cpu for c in clients),
            "client_cpu": (statistics.fmean(cpus[False]) / files, statistics.fmean(cpus[True]) / files),
            "files": files, "pairs": pairs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--volume", default="tlsvol")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--pid-filter", action="store_true",
                    help="probe the measured client's pid only (as `--pid` does): without it the "
                         "bricks on this host are probed too, copying the same bytes again")
    ap.add_argument("--keys", action="store_true",
                    help="measure --probe tls-keys (a fresh client, so its handshakes, per block)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reconnect", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        return child(opts.volume, opts.reconnect)
    if os.geteuid() != 0:
        print("tls_overhead: skipped (needs root for uprobes)")
        return 0
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    from correlate.probe.errors import ProbeError
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        print(f"tls_overhead: skipped ({exc})")
        return 0
    from tests.lab import lab
    with lab.exclusive():
        r = measure(opts.volume, opts.files, opts.pairs, opts.verbose, opts.pid_filter, opts.keys)
    lo, hi = r["interval"]
    verdict = "within" if r["wall_ratio"] <= TARGET else "ABOVE"
    if opts.keys:
        print(f"--probe tls-keys{' --pid' if opts.pid_filter else ''} on {opts.volume}, "
              f"{r['pairs']} block pairs of a fresh client and {r['files']} files "
              f"({r['keys_logged']} connections' keys logged, {r['lost']} records lost):")
    else:
        print(f"--probe tls{' --pid' if opts.pid_filter else ''} on {opts.volume}, {r['pairs']} block pairs of {r['files']} files "
              f"({r['events']} events, {r['lost']} records lost, {r['truncated']} bytes truncated):")
    print(f"  wall: {r['wall_ratio']:.3f}x (95% interval {lo:.3f}-{hi:.3f}; median of pairs "
          f"{r['pair_median']:.3f}x) {verdict} the {TARGET}x target; "
          f"{r['wall_per_file'] * 1e6:.0f} us per file without")
    plain_cpu, probed_cpu = r["client_cpu"]
    print(f"  the client's CPU per file: {plain_cpu * 1e6:.0f} us without, {probed_cpu * 1e6:.0f} us "
          f"with ({probed_cpu / plain_cpu:.3f}x: the probes' own cost, charged to it)")
    print(f"  the reader (poll + RPC decoding): {r['reader_cpu']:.2f} s CPU for the run (BPF "
          f"compilation included), {r['poll_cpu']:.2f} s of it polling during the blocks "
          f"({r['poll_cpu'] / (r['pairs'] * r['files']) * 1e6:.0f} us per probed file)")
    # events held for ordering (HOLD_NS) may leave during the next, unprobed block; without
    # --pid-filter the bricks on this host map the probed libssl too and copy the unprobed
    # client's traffic in the first half: expected, not a leak
    if opts.keys:
        if r["keys_logged"] < r["pairs"]:        # each probed block's handshakes at least
            print(f"tls_overhead: only {r['keys_logged']} connections' keys for {r['pairs']} "
                  "probed blocks")
            return 1
    elif not opts.pid_filter:
        print(f"  {r['stray']} events while the unprobed client ran (the bricks' copies)")
    elif r["stray"] > r["events"] // 100:
        print(f"tls_overhead: {r['stray']} events came while the unprobed client ran")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
