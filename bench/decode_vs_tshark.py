"""Decode throughput and memory: correlate vs tshark on the same lab workload capture.

Both tools read the same file in the same run; we report the throughput ratio
(tshark seconds / correlate seconds: above 1 means correlate is faster) and correlate's
peak RSS at two capture sizes (half and all of the capture), which must not grow with it.

correlate runs twice: `decode --fields` printing what tshark is asked for (time, xid,
program, procedure), and `decode --json` printing every event with its decoded arguments
and results. bench/python_floor.py runs too: the cost of merely walking the packets in a
Python loop, the floor under any pure-Python decoder on this interpreter.

    python bench/decode_vs_tshark.py [--capture FILE] [--files N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench"
MIN_PACKETS = 100_000
TARGET_RATIO = 5
MAX_RSS_MIB = 100


def installed_env(env: dict | None = None) -> dict:
    """The environment of a correlate started as an installed package starts: its modules
    byte-compiled once (pip compiles them at install), not at every start. Where
    PYTHONDONTWRITEBYTECODE is set (as on the lab VM) an editable install compiles every
    module at each start, about 0.15 s here; the benches keep the bytecode in out/bench."""
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(OUT / "pycache")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "correlate"),
                    str(ROOT / "plugins")], env=env, check=True)
    return env


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (KiB) of one child, output
    discarded. CPU time is less disturbed than wall time by other work on the machine."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0,):
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err.strip()[:500]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def packet_count(path: Path) -> int:
    out = subprocess.run(["capinfos", "-c", "-M", str(path)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "Number of packets" in line:
            return int(line.split(":")[1].strip())
    return 0


def workload_capture(files: int) -> Path:
    path = OUT / f"workload-{files}.pcap"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from tests.lab import lab
    lab.up()
    partial = path.with_suffix(".recording.pcap")     # renamed only once complete
    lab.record("workload", partial, files=files)
    partial.rename(path)
    return path


def bench_inputs(description: str, repeat: int):
    """The options every tshark comparison takes, and its two captures: (opts, full, half,
    packets of full), or None when tshark is missing (said on stderr)."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path, help="capture to use (default: record the lab workload)")
    ap.add_argument("--files", type=int, default=6000, help="workload size when recording")
    ap.add_argument("--repeat", type=int, default=repeat, help="runs per command; the median is kept")
    opts = ap.parse_args()
    if not shutil.which("tshark"):
        print("bench: tshark is not installed (apt-get install tshark)", file=sys.stderr)
        return None
    full = opts.capture or workload_capture(opts.files)
    n = packet_count(full)
    OUT.mkdir(parents=True, exist_ok=True)
    half = OUT / (full.stem + "-half.pcap")
    subprocess.run(["editcap", "-F", "pcap", "-r", str(full), str(half), f"1-{n // 2}"], check=True)
    return opts, full, half, n


def main() -> int:
    inputs = bench_inputs(__doc__, repeat=3)
    if inputs is None:
        return 2
    opts, full, half, n = inputs
    correlate = [sys.executable, "-m", "correlate", "decode", "--fields",
                 "time_ns,xid,program_num,procedure_num"]
    correlate_json = [sys.executable, "-m", "correlate", "decode", "--json"]
    floor = [sys.executable, str(ROOT / "bench" / "python_floor.py")]
    tshark = ["tshark", "-n", "-r", None, "-Y", "rpc", "-T", "fields", "-e", "frame.time_epoch",
              "-e", "rpc.xid", "-e", "rpc.program", "-e", "rpc.procedure"]
    if n < MIN_PACKETS:
        print(f"bench: {full} has only {n} packets (want {MIN_PACKETS}+; use a larger --files)",
              file=sys.stderr)
    print(f"{'capture':<30}{'packets':>9}{'tshark s':>10}{'fields s':>10}{'ratio':>8}"
          f"{'CPU ratio':>11}{'json s':>8}{'ratio':>8}{'floor s':>9}{'ratio':>8}"
          f"{'RSS MiB':>9}{'tshark RSS':>12}")
    ratios, json_ratios, floor_ratios, rss = [], [], [], []
    env = installed_env()
    for path in (half, full):
        count = packet_count(path)
        best = {}
        for _ in range(opts.repeat):
            for name, cmd in (("tshark", tshark), ("fields", correlate), ("json", correlate_json),
                              ("floor", floor)):
                wall, cpu, peak = measure([a if a is not None else str(path) for a in cmd]
                                          if cmd is tshark else cmd + [str(path)], env)
                w, c, r = best.get(name, (float("inf"), float("inf"), 0))
                best[name] = (min(w, wall), min(c, cpu), max(r, peak))
        t_wall, t_cpu, t_rss = best["tshark"]
        c_wall, c_cpu, _ = best["fields"]
        j_wall, _, j_rss = best["json"]
        f_wall = best["floor"][0]
        c_rss = max(best["fields"][2], j_rss)
        ratios.append(t_wall / c_wall)
        json_ratios.append(t_wall / j_wall)
        floor_ratios.append(t_wall / f_wall)
        rss.append(c_rss / 1024)
        print(f"{path.name:<30}{count:>9}{t_wall:>10.2f}{c_wall:>10.2f}{t_wall / c_wall:>7.2f}x"
              f"{t_cpu / c_cpu:>10.2f}x{j_wall:>8.2f}{t_wall / j_wall:>7.2f}x{f_wall:>9.2f}"
              f"{t_wall / f_wall:>7.2f}x{c_rss / 1024:>9.1f}{t_rss / 1024:>12.1f}", flush=True)
    print(f"throughput vs tshark: {ratios[-1]:.2f}x with --fields, {json_ratios[-1]:.2f}x with "
          f"--json (target {TARGET_RATIO:.0f}x: {'met' if ratios[-1] >= TARGET_RATIO else 'not met'});"
          f" a bare Python packet loop: {floor_ratios[-1]:.2f}x")
    grows = rss[-1] > rss[0] * 1.1
    print(f"correlate peak RSS: {rss[0]:.1f} MiB at half, {rss[-1]:.1f} MiB at full size "
          f"(limit {MAX_RSS_MIB} MiB: {'ok' if rss[-1] < MAX_RSS_MIB else 'over'}; "
          f"{'grows with the capture' if grows else 'flat'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
