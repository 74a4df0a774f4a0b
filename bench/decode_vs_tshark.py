"""Decode throughput and memory: correlate vs tshark on the same lab workload capture.

Both tools read the same file in the same run; we report the throughput ratio
(tshark seconds / correlate seconds: above 1 means correlate is faster) and correlate's
peak RSS at two capture sizes (half and all of the capture), which must not grow with it.

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


def measure(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child, output discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0,):
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err.strip()[:500]}")
    return elapsed, usage.ru_maxrss


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
    lab.record("workload", path, files=files)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path, help="capture to use (default: record the lab workload)")
    ap.add_argument("--files", type=int, default=6000, help="workload size when recording")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool; the best is kept")
    opts = ap.parse_args()
    if not shutil.which("tshark"):
        print("bench: tshark is not installed (apt-get install tshark)", file=sys.stderr)
        return 2
    full = opts.capture or workload_capture(opts.files)
    n = packet_count(full)
    half = OUT / (full.stem + "-half.pcap")
    subprocess.run(["editcap", "-r", str(full), str(half), f"1-{n // 2}"], check=True)
    correlate = [sys.executable, "-m", "correlate", "decode", "--json"]
    tshark = ["tshark", "-n", "-r", None, "-Y", "rpc", "-T", "fields", "-e", "frame.time_epoch",
              "-e", "rpc.xid", "-e", "rpc.program", "-e", "rpc.procedure"]
    print(f"{'capture':<28}{'packets':>9}{'tshark s':>10}{'correlate s':>13}{'ratio':>8}"
          f"{'correlate RSS MiB':>19}{'tshark RSS MiB':>16}")
    for path in (half, full):
        count = packet_count(path)
        t_best = c_best = float("inf")
        c_rss = t_rss = 0
        for _ in range(opts.repeat):
            t, rss = measure([a if a is not None else str(path) for a in tshark])
            t_best, t_rss = min(t_best, t), max(t_rss, rss)
            c, rss = measure(correlate + [str(path)])
            c_best, c_rss = min(c_best, c), max(c_rss, rss)
        print(f"{path.name:<28}{count:>9}{t_best:>10.2f}{c_best:>13.2f}{t_best / c_best:>7.2f}x"
              f"{c_rss / 1024:>19.1f}{t_rss / 1024:>16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
