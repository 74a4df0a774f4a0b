"""Every command against tshark, on the same capture in the same run.

For each of two capture sizes (half and all of the workload capture): tshark `-T fields`,
then `decode --fields`, `decode --json`, `analyze` and `profile` (when the command exists),
each at `--jobs 1` and `--jobs 2`, with the compiled modules and with plain Python (when a
compiled build is installed: `correlate --version` says so; CORRELATE_NO_EXTENSIONS=1 forces
plain Python). Printed: wall seconds, the ratio tshark / correlate (above 1: faster than
tshark), CPU seconds of all processes, and the peak RSS of the largest process. Last, the
packets per second `correlate run --pcap -` sustains reading the capture from a pipe.
correlate starts as an installed package does, its modules byte-compiled once
(decode_vs_tshark.installed_env).

    python bench/analyze_vs_tshark.py [--capture FILE] [--files N] [--repeat N]
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_vs_tshark import bench_inputs, installed_env, packet_count  # noqa: E402

# (with --jobs 2, in one process)
TARGETS = {"analyze": (5, 3), "decode --fields": (None, 10), "profile": (None, 5)}
PIPE_TARGET = 3.5       # run --pcap -: packets/s against tshark's on the same capture
MAX_RSS_MIB = 100
FIELDS = "time_ns,xid,program_num,procedure_num"


def measure(cmd: list[str], env: dict, stdin=None) -> tuple[float, float, int]:
    """Wall s, CPU s (the process and its children) and the peak RSS (KiB) of the largest."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])} failed: {err.strip()[:400]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def best(cmd, env, repeat) -> tuple[float, float, int]:
    """Median wall and CPU seconds of `repeat` runs (a shared machine disturbs single runs
    both ways), and the largest peak RSS."""
    runs = [measure(cmd, env) for _ in range(repeat)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            max(r[2] for r in runs))


def builds() -> list[tuple[str, dict]]:
    """("compiled", env) when a compiled build is installed, and ("plain", env) always."""
    env = installed_env()
    plain = dict(env, CORRELATE_NO_EXTENSIONS="1")
    version = subprocess.run([sys.executable, "-m", "correlate", "--version"],
                             capture_output=True, text=True).stdout.lower()
    compiled = "compiled" in version and "not compiled" not in version
    if "pure python for the rest" in version:
        # a module edited since the build runs from source: "compiled" would be half true
        sys.exit(f"bench: {version.strip().splitlines()[-1]}; rebuild first "
                 "(pip install -e . or make venv after touching setup.py)")
    return ([("compiled", env)] if compiled else []) + [("plain", plain)]


def help_of(command: str) -> str | None:
    """`correlate COMMAND --help`, or None when the command does not exist."""
    res = subprocess.run([sys.executable, "-m", "correlate", command, "--help"],
                         capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


def pipe_rate(path: Path, env: dict) -> float:
    """Packets per second `correlate run --pcap -` takes from a pipe (cat FILE | correlate)."""
    count = packet_count(path)
    start = time.perf_counter()
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    measure([sys.executable, "-m", "correlate", "run", "--pcap", "-"], env, stdin=cat.stdout)
    cat.stdout.close()
    cat.wait()
    return count / (time.perf_counter() - start)


def tshark_cmd(path: Path) -> list[str]:
    return ["tshark", "-n", "-r", str(path), "-Y", "rpc", "-T", "fields", "-e", "frame.time_epoch",
            "-e", "rpc.xid", "-e", "rpc.program", "-e", "rpc.procedure"]


def main() -> int:
    inputs = bench_inputs(__doc__, repeat=2)
    if inputs is None:
        return 2
    opts, full, half, n = inputs
    py = [sys.executable, "-m", "correlate"]
    commands = [("decode --fields", py + ["decode", "--fields", FIELDS]),
                ("decode --json", py + ["decode", "--json"]),
                ("analyze", py + ["analyze"])]
    profile_help = help_of("profile")
    if profile_help is not None:
        commands.append(("profile", py + ["profile"]))
    takes_jobs = {name: "--jobs" in (help_of(cmd[3]) or "") for name, cmd in commands}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start "
          "(other work on the machine slows every column alike; CPU s is less disturbed)")
    print(f"{'capture':<24}{'packets':>9}  {'command':<17}{'build':<10}{'jobs':>5}{'wall s':>8}"
          f"{'vs tshark':>10}{'CPU s':>8}{'RSS MiB':>9}")
    results = {}
    for path in (half, full):
        count = packet_count(path)
        tshark = tshark_cmd(path)
        t_wall, t_cpu, t_rss = best(tshark, dict(os.environ), opts.repeat)
        print(f"{path.name:<24}{count:>9}  {'tshark':<17}{'':<10}{'':>5}{t_wall:>8.2f}{1:>9.2f}x"
              f"{t_cpu:>8.2f}{t_rss / 1024:>9.1f}", flush=True)
        for name, cmd in commands:
            for build, env in builds():
                for jobs in (1, 2) if takes_jobs[name] else (1,):
                    jobs_args = ["--jobs", str(jobs)] if takes_jobs[name] else []
                    wall, cpu, rss = best(cmd + jobs_args + [str(path)], env, opts.repeat)
                    results[(path, name, build, jobs)] = (t_wall / wall, rss / 1024)
                    print(f"{'':<24}{'':>9}  {name:<17}{build:<10}{jobs:>5}{wall:>8.2f}"
                          f"{t_wall / wall:>9.2f}x{cpu:>8.2f}{rss / 1024:>9.1f}", flush=True)
    t_rate = packet_count(full) / best(tshark_cmd(full), dict(os.environ), opts.repeat)[0]
    for build, env in builds():
        rate = statistics.median(pipe_rate(full, env) for _ in range(opts.repeat))
        print(f"correlate run --pcap - from a pipe ({build}): {rate:,.0f} packets/s, "
              f"{rate / t_rate:.2f}x tshark's {t_rate:,.0f} packets/s (target {PIPE_TARGET}x; "
              f"{n} packets)")
    top = builds()[0][0]
    for name, (with_two, alone) in TARGETS.items():
        if (full, name, top, 1) not in results:
            continue
        r1 = results[(full, name, top, 1)][0]
        said = f"{name} ({top}): {r1:.2f}x tshark in one process" + (f" (target {alone}x)" if alone else "")
        if (full, name, top, 2) in results:
            said += f", {results[(full, name, top, 2)][0]:.2f}x with --jobs 2"
            said += f" (target {with_two}x)" if with_two else ""
        print(said)
    rss_half = max(v[1] for k, v in results.items() if k[0] == half)
    rss_full = max(v[1] for k, v in results.items() if k[0] == full)
    print(f"peak RSS of the largest process: {rss_half:.1f} MiB at half, {rss_full:.1f} MiB at full "
          f"size (limit {MAX_RSS_MIB} MiB: {'ok' if rss_full < MAX_RSS_MIB else 'over'}; "
          f"{'grows with the capture' if rss_full > rss_half * 1.1 else 'flat'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
