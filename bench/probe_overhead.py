"""What attaching probes costs a libgfapi client: the lab's small-file workload (create+write,
stat, utimens, open+read, unlink per file) in blocks, with and without the bcc probes of a
group, in one run.

    python bench/probe_overhead.py [--group gfapi] [--group all] [--group none]
                                   [--files 100] [--pairs 40] [--verbose] [--no-hits] [--at-entry]
                                   [--attach-with links|perf|both]

Why this shape: one round of a Gluster workload varies by +-15% on its own (brick
scheduling, the host stealing CPU from this VM), more than what is measured, and detaching
uprobes waits ~0.1 s per probe point. So two identical clients mount once and run short
blocks on command, in turn (ABBA, so drift hits both sides alike); the second loads a
byte-identical copy of libgfapi, so probes attached to one library file fire in one client
only, and they move to the other file halfway, so a difference between the two processes
cancels out. `--group` takes groups or comma-separated probe names. The collector is
polled during every block, as `correlate run` polls it. `--group none` runs the same with
nothing attached: what the method itself reads into noise (should be 1.00x). Per group:

  * wall: mean with / mean without, a 95% bootstrap interval over the block pairs, and the
    median of the pairs' own ratios; the target is <= 1.05;
  * the client's user+sys CPU per file with and without, and the CPU the host stole per
    block on each side.

`--attach-with both` measures each group attached through perf-event uprobes and through
uprobe_multi links (the default where the kernel has them; correlate/probe/uprobe_links.py),
in turn. `--at-entry` measures each group a second time with every trap at its function's entry
(CORRELATE_TRAP_AT_ENTRY=1): what moving traps off single-stepped instructions saves
(correlate/probe/trap_sites.py).

Then the cost of single probe hits on cheap libgfapi functions in a tight loop: one that
sends its event, and a call and return that send nothing, by the probed function's first
instruction (the kernel emulates `push`, it single-steps `sub` out of line), and for a
`sub`-first function whose traps moved to two emulated branches, alone and with an
emit="slow" probe beside it (as `--probe all` has), and with a program that does nothing
at the same sites, in a loop that keeps the caches warm and in one that reads 32 MB between
calls. The plain and probed loops take turns, the plain one on a copy of libgfapi. Inside
the workload a probe costs several times what the warm loop says (see docs/probes.md,
Overhead).

Needs root, bcc and the lab; otherwise it says why and exits 0.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 1.05


def child() -> int:
    """A measured client: mount, warm up, then one block of N files per line read from
    stdin; print each block's wall seconds and this process's user and system CPU seconds."""
    from tests.lab import gfapi
    fs = gfapi.Client(log_file="/var/log/correlate-lab/bench-probe-overhead.log").init()
    gfapi.workload(fs, 50, 4096, "/bench-probe-overhead")
    print("ready", flush=True)
    for line in sys.stdin:
        files = int(line)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        gfapi.workload(fs, files, 4096, "/bench-probe-overhead")
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        print(f"{t1 - t0:.6f} {r1.ru_utime - r0.ru_utime:.6f} {r1.ru_stime - r0.ru_stime:.6f}",
              flush=True)
    os._exit(0)   # skip glfs_fini's long wait


class Client:
    """The child process, driven block by block; `library_dir` makes it load libgfapi.so.0
    from there (a copy: another file, so probes on the original do not fire in it)."""

    def __init__(self, library_dir: str | None = None):
        env = dict(os.environ)
        if library_dir:
            env["LD_LIBRARY_PATH"] = library_dir
        self.proc = subprocess.Popen([sys.executable, __file__, "--child"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"probe_overhead: the client did not mount (exit {self.proc.wait()})")

    def library(self) -> str:
        """The libgfapi file this client mapped."""
        with open(f"/proc/{self.proc.pid}/maps") as maps:
            return next(line.split()[-1] for line in maps if "libgfapi.so" in line)

    def block(self, files: int, session=None) -> tuple[float, float]:
        """Run one block while draining the probes; (wall seconds, CPU seconds)."""
        self.proc.stdin.write(f"{files}\n")
        self.proc.stdin.flush()
        while not select.select([self.proc.stdout], [], [], 0)[0]:
            if self.proc.poll() is not None:
                raise SystemExit(f"probe_overhead: the client died (exit {self.proc.returncode})")
            if session is not None:
                session.poll(100)   # as the engine polls (ProbeSession.__iter__)
            else:
                select.select([self.proc.stdout], [], [], 0.02)
        line = self.proc.stdout.readline()
        wall, user, system = map(float, line.split())
        return wall, user + system

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _machine_times() -> tuple[float, float, float]:
    """Idle and steal seconds of the whole machine (all CPUs), and this process's CPU."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    tick = os.sysconf("SC_CLK_TCK")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int(fields[3]) / tick, int(fields[7]) / tick, usage.ru_utime + usage.ru_stime


def bootstrap_ratio(pairs: list[tuple[float, float]], rounds: int = 4000) -> tuple[float, float]:
    """95% interval of mean(with) / mean(without), resampling the block pairs."""
    rng = random.Random(1)
    ratios = []
    for _ in range(rounds):
        sample = [rng.choice(pairs) for _ in pairs]
        ratios.append(sum(w for _, w in sample) / sum(p for p, _ in sample))
    ratios.sort()
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


def measure_group(group: str, files: int, pairs: int, verbose: bool = False,
                  pid_filter: bool = False) -> dict:
    """Two identical clients run blocks in turn (ABBA); the probes fire in one of them only,
    so nothing is attached or detached between blocks (detaching waits ~0.1 s per probe
    point). The second client loads a byte-identical copy of libgfapi, and the probes attach
    to the library file the way `correlate run` attaches them (every process that maps it);
    halfway they move to the copy, so a difference between the two processes cancels out.
    With `pid_filter` they are for the probed client's pid only (as `--pid` asks). The
    collector is polled the same way during every block."""
    import dataclasses
    import shutil
    import tempfile

    from correlate.probe.bcc_backend import BccCollector
    from correlate.probe.resolve import find_library
    from correlate.probe.session import ProbeSession
    from correlate.sources.probes import select_specs
    original = os.path.realpath(find_library("libgfapi.so.0"))
    with tempfile.TemporaryDirectory(prefix="correlate-bench-") as copy_dir:
        copy = os.path.join(copy_dir, "libgfapi.so.0")
        shutil.copy2(original, copy)
        clients = [Client(), Client(copy_dir)]
        libraries = [os.path.realpath(c.library()) for c in clients]
        if libraries != [original, copy]:
            raise SystemExit(f"probe_overhead: the clients mapped {libraries}, not {[original, copy]}")
        # "none": the same alternation with nothing attached, to see what the bench calls noise
        specs = select_specs(["gfapi"] if group == "none" else group.split(","))
        session = ProbeSession(specs, pid=clients[0].proc.pid if pid_filter else None,
                               backend="bcc").start()
        if group == "none":
            session.collector.detach()
        plain, probed = [], []           # (wall, cpu) per block
        steal = {False: 0.0, True: 0.0}  # the machine's stolen CPU seconds, by side
        half = pairs + pairs % 2         # blocks before the probes move to the other client
        stray = 0                        # events during blocks of the unprobed client: none
        try:
            for client in clients:
                client.block(files, session)   # settle after the mount
            last = _machine_times()
            for i in range(2 * pairs):
                if i == half and group != "none":
                    collector = session.collector
                    probes = [dataclasses.replace(rp, path=copy)
                              if os.path.realpath(rp.path) == original else rp
                              for rp in collector.probes]
                    if pid_filter:     # the pid is compiled into the program
                        collector.stop()
                        session.collector = BccCollector(probes, pid=clients[1].proc.pid)
                        session.collector.start()
                    else:
                        collector.detach()
                        collector.probes = probes
                        collector.attach()
                    last = _machine_times()
                probed_client = clients[0] if i < half else clients[1]
                with_probes = (i % 4) in (1, 2)       # ABBA ABBA ...
                client = probed_client if with_probes else clients[clients[0] is probed_client]
                seen = session.events_seen
                (probed if with_probes else plain).append(client.block(files, session))
                stray += 0 if with_probes else session.events_seen - seen
                now = _machine_times()
                steal[with_probes] += now[1] - last[1]
                if verbose:
                    wall, cpu = (probed if with_probes else plain)[-1]
                    print(f"  block {i + 1:3d} {'with   ' if with_probes else 'without'} {wall:.3f} s "
                          f"wall, {cpu:.3f} s CPU; machine idle {now[0] - last[0]:.2f} s, stolen "
                          f"{now[1] - last[1]:.2f} s, this process {now[2] - last[2]:.3f} s", flush=True)
                last = now
        finally:
            for client in clients:
                client.close()
            session.stop()
    walls = list(zip((p[0] for p in plain), (w[0] for w in probed)))
    mean_plain = statistics.fmean(p for p, _ in walls)
    mean_probed = statistics.fmean(w for _, w in walls)
    cpu_plain = statistics.fmean(c for _, c in plain) / files
    cpu_probed = statistics.fmean(c for _, c in probed) / files
    return {
        "group": group + (" --pid" if pid_filter else ""), "probes": session.attached,
        "attach_with": None if group == "none" else session.collector.attach_with,
        "addresses": session.collector.trap_addresses,
        "events": session.events_seen, "lost": session.lost, "files": files, "pairs": pairs,
        "wall_ratio": mean_probed / mean_plain, "wall_interval": bootstrap_ratio(walls),
        "pair_median": statistics.median(w / p for p, w in walls),
        "wall_per_file": mean_plain / files,
        "cpu_per_file": (cpu_plain, cpu_probed),
        "cpu_overhead": (cpu_probed - cpu_plain) / (mean_plain / files),
        "steal": (steal[False] / pairs, steal[True] / pairs), "stray_events": stray,
    }


def report(r: dict) -> None:
    lo, hi = r["wall_interval"]
    cpu_plain, cpu_probed = r["cpu_per_file"]
    verdict = "within" if r["wall_ratio"] <= TARGET else "ABOVE"
    print(f"--probe {r['group']} ({r['probes']} probes at {r['addresses']} addresses, attached "
          f"through {r['attach_with'] or 'nothing'}, {r['events']} events, "
          f"{r['lost']} lost), "
          f"{r['pairs']} block pairs of {r['files']} files:")
    print(f"  wall: {r['wall_ratio']:.3f}x ({(r['wall_ratio'] - 1) * 100:+.1f}%; 95% interval "
          f"{lo:.3f}-{hi:.3f}; median of pairs {r['pair_median']:.3f}x) {verdict} the {TARGET}x target")
    print(f"  client CPU per file: {cpu_plain * 1e6:.0f} us without, {cpu_probed * 1e6:.0f} us with "
          f"({(cpu_probed - cpu_plain) * 1e6:+.1f} us) = {r['cpu_overhead'] * 100:+.1f}% of the "
          f"{r['wall_per_file'] * 1e6:.0f} us a file takes")
    # The hypervisor's stolen time is what makes single blocks vary; a side that was robbed
    # more than the other is slower for that reason alone.
    print(f"  CPU stolen by the host per block: {r['steal'][0]:.2f} s without, {r['steal'][1]:.2f} s "
          f"with", flush=True)


HIT_CHILD = """
import ctypes, sys, time
lib = ctypes.CDLL("libgfapi.so.0")
f, arg, n = getattr(lib, sys.argv[1]), None if sys.argv[2] == "null" else 0, int(sys.argv[3])
pages = bytearray(int(sys.argv[4]) * 4096)   # one byte of each read between calls: cold caches
t0 = time.perf_counter()
for i in range(n):
    if pages:
        pages[i % 64 * 64::4096]
    f(arg)
print(time.perf_counter() - t0)
"""
COLD_PAGES = 8192   # 32 MB: the TLB and the caches lose what the trap path had in them
# Cheap functions that are safe to call in a loop, by their first instruction.
HIT_FUNCTIONS = {"sub": ("glfs_setfsuid", "0"),       # sub $0x18,%rsp: single-stepped
                 "push": ("glfs_setfsleaseid", "null"),  # push %rbx: emulated
                 # sub first too, but its probe traps at its NULL check's je and its stack
                 # check's jne (trap_sites.py): NULL fails with EBADF at once
                 "branches": ("glfs_read", "null")}


class EmptyPrograms:
    """Programs that return at once, attached by the collector's own attach() where the
    probes of `specs` would trap (trap_sites.py): what the trap costs without any probe
    work. Polled and stopped like a ProbeSession."""

    def __init__(self, specs, backend: str = "bcc"):
        from correlate.probe.bcc_backend import BccCollector
        from correlate.probe.resolve import resolve
        self.collector = BccCollector([resolve(spec) for spec in specs])
        self.lost = 0

    def start(self) -> "EmptyPrograms":
        from bcc import BPF
        from correlate.probe.bcc_backend import attach_kinds
        names = [name for name, *_ in self.collector.attach_sites()]
        self.collector.bpf = BPF(text=("#include <uapi/linux/ptrace.h>\n" + "".join(
            f"int {name}(struct pt_regs *ctx) {{ return 0; }}\n" for name in names)).encode())
        self.collector.attach_with = attach_kinds()[0]
        self.collector.attach()
        return self

    def poll(self, timeout_ms: int) -> list:
        time.sleep(timeout_ms / 1000)
        return []

    def stop(self) -> None:
        self.collector.detach()


def per_hit_ns(first: str, emit: str, calls: int = 200_000, cold: bool = False,
               empty: bool = False) -> tuple[float, int]:
    """Cost of one probe hit: a cheap libgfapi function called in a loop, timed with and
    without a probe on it. emit="all" is an entry probe that sends its event; "failures" is an
    entry and a return that send nothing (the call succeeds), what a fop probe costs on a
    healthy workload; "failures+slow" adds an emit="slow" probe on the same function, as
    `--probe all` puts app-latency's io probes beside the gfapi ones. `cold`: the loop reads
    a byte of each of 32 MB between calls, as a workload's own work evicts what the trap path
    keeps in the caches and TLB. `empty`: a program that does nothing at the probe's sites,
    to tell the trap's cost from the program's."""
    from correlate.probe.catalog import Arg, ProbeSpec
    from correlate.probe.session import ProbeSession
    function, arg = HIT_FUNCTIONS[first]
    rounds = 3
    if cold:   # each call waits behind ~0.1 ms of reads: fewer calls, more rounds
        calls, rounds = min(calls, 20_000), 5

    def run(session, library_dir: str | None = None) -> float:
        env = dict(os.environ, **({"LD_LIBRARY_PATH": library_dir} if library_dir else {}))
        proc = subprocess.Popen([sys.executable, "-c", HIT_CHILD, function, arg, str(calls),
                                 str(COLD_PAGES if cold else 0)],
                                stdout=subprocess.PIPE, text=True, env=env)
        while proc.poll() is None:
            session.poll(100)   # as the engine polls (ProbeSession.__iter__)
        return float(proc.stdout.read())

    # glfs_read(NULL) returns -1: read as a pointer that is not a failure, so nothing is sent
    retval = "ptr" if first == "branches" else "int"
    specs = [ProbeSpec(f"bench.{function}", "bench", "libgfapi.so.0", function,
                       (Arg("arg", 1, "ptr"),), retprobe=emit != "all", emit=emit.split("+")[0],
                       retval=retval)]
    if emit.endswith("+slow"):
        specs.append(ProbeSpec(f"bench.slow.{function}", "bench", "libgfapi.so.0", function,
                               (Arg("arg", 1, "ptr"),), retprobe=True, emit="slow",
                               slow_ns=100_000_000, retval=retval))
    # in turn, the plain loop on a copy of libgfapi (another file: the probes do not fire
    # there), so that the machine's drift hits both alike; the best round of each
    import shutil
    import tempfile
    from correlate.probe.resolve import find_library
    session = (EmptyPrograms if empty else ProbeSession)(specs, backend="bcc").start()
    with tempfile.TemporaryDirectory(prefix="correlate-bench-") as copy_dir:
        shutil.copy2(os.path.realpath(find_library("libgfapi.so.0")), os.path.join(copy_dir, "libgfapi.so.0"))
        plain, probed = [], []
        for _ in range(rounds):
            plain.append(run(session, copy_dir))
            probed.append(run(session))
    session.stop()
    return (min(probed) - min(plain)) / calls * 1e9, session.lost


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", action="append", help="probe group(s) to measure, each a group or comma-separated groups and probe names (default: gfapi and all)")
    ap.add_argument("--files", type=int, default=100, help="files per block")
    ap.add_argument("--pairs", type=int, default=40, help="block pairs (one without, one with probes)")
    ap.add_argument("--pid-filter", action="store_true",
                    help="attach to the probed client's pid (as --pid does) instead of the library")
    ap.add_argument("--verbose", action="store_true", help="print every block")
    ap.add_argument("--no-hits", action="store_true", help="skip the single-hit costs")
    ap.add_argument("--at-entry", action="store_true",
                    help="measure each group a second time with every trap at its function's "
                         "entry (CORRELATE_TRAP_AT_ENTRY=1), to see what trap_sites.py saves")
    ap.add_argument("--attach-with", choices=("links", "perf", "both"), default="links",
                    help="attach through uprobe_multi links (default), perf-event uprobes, or "
                         "measure each group both ways in turn")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        return child()
    if os.geteuid() != 0:
        print("probe_overhead: skipped (needs root for uprobes)")
        return 0
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    from correlate.probe.errors import ProbeError
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        print(f"probe_overhead: skipped ({exc})")
        return 0
    from tests.lab import lab

    failed = False
    with lab.exclusive():
        lab.up()
        kinds = ("perf", "links") if opts.attach_with == "both" else (opts.attach_with,)
        runs = [(g, False, kind) for g in opts.group or ["gfapi", "all"] for kind in kinds]
        if opts.at_entry:
            runs = [(g, at, kind) for g, _, kind in runs for at in (False, True)]
        for group, at_entry, kind in runs:
            if at_entry:
                os.environ["CORRELATE_TRAP_AT_ENTRY"] = "1"
                print("(every trap at its function's entry)")
            os.environ["CORRELATE_UPROBE_LINKS"] = "1" if kind == "links" else "0"
            r = measure_group(group, opts.files, opts.pairs, opts.verbose, opts.pid_filter)
            os.environ.pop("CORRELATE_TRAP_AT_ENTRY", None)
            report(r)
            # glfs_utimens sends its call per file (emit="calls"; seen in the glfs_setattr it calls)
            expected = opts.files * opts.pairs if group in ("gfapi", "all") else 0
            if r["events"] < expected:
                print(f"probe_overhead: expected at least {expected} events, saw {r['events']}")
                failed = True
            if r["stray_events"]:
                print(f"probe_overhead: {r['stray_events']} events came while the unprobed client ran")
                failed = True
        if not opts.no_hits:
            sent, _ = per_hit_ns("push", "all")
            for first in ("push", "sub", "branches"):
                quiet, _ = per_hit_ns(first, "failures")
                how = {"branches": "sub, trapping at two emulated branches"}.get(first, first)
                print(f"a call and return that send nothing, first instruction {how}: "
                      f"{quiet / 1000:.1f} us", flush=True)
            print(f"a probe hit that sends its event: {sent / 1000:.1f} us (glfs_setfsleaseid loop, "
                  f"best of 3)")
            both, _ = per_hit_ns("branches", "failures+slow")
            print(f"the same glfs_read call and return with an emit=\"slow\" probe beside the "
                  f"failures one (--probe all): {both / 1000:.1f} us", flush=True)
            for empty in (False, True):
                hot, _ = per_hit_ns("branches", "failures", empty=empty)
                cold, _ = per_hit_ns("branches", "failures", cold=True, empty=empty)
                print(f"the same glfs_read call and return, {'a program that does nothing' if empty else 'the probe'}"
                      f": {hot / 1000:.1f} us; with 32 MB read between calls (cold caches and TLB): "
                      f"{cold / 1000:.1f} us", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
