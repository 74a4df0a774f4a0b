"""Size and peak RSS of `correlate timeline --html`, against `correlate timeline --json` (the
same reading, merging and detectors, no report) on the same input in the same run.

Inputs: the committed captures of the shapes users reported (a busy healthy workload, a lock
wait, a slow brick with queueing, a hung brick), and two made by repetition of their saved
timelines, re-timed one after the other (connections renumbered, findings kept): the busy
workload x10 (about 42,000 events, like the 41k-packet report) and the lock wait x160 (about
19,000 events, like the 19k-event lock-contention report).

Targets: every page at most 5 MB, every run under 100 MiB peak RSS.

    python bench/html_report.py [--keep DIR] [--busy-copies 10] [--lock-copies 160]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_vs_tshark import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "tests" / "captures"
MAX_MB = 5.0
MAX_RSS_MIB = 100
TIME_KEYS = ("time_ns", "call_time_ns", "since_ns", "back_ns", "answered_ns", "first_time_ns",
             "last_time_ns", "granted_ns", "released_ns")


def saved_timeline(capture: Path, out: Path) -> Path:
    """The capture's timeline (detectors run) as `timeline --json` writes it. Written straight
    to the file: this process stays small, as a child's peak RSS counts from its fork."""
    with out.open("w") as f:
        subprocess.run([sys.executable, "-m", "correlate", "timeline", "--json", str(capture)],
                       stdout=f, stderr=subprocess.DEVNULL, check=True, timeout=600)
    return out


def _shift(value, dt: int, dconn: int, copy: int):
    if isinstance(value, list):
        return [_shift(v, dt, dconn, copy) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if k in TIME_KEYS and isinstance(v, int):
            v = v + dt
        elif k == "conn" and isinstance(v, int):
            v = v + dconn
        elif k == "id" and isinstance(v, str):
            v = f"{v}@{copy}"
        else:
            v = _shift(v, dt, dconn, copy)
        out[k] = v
    return out


def repeated(saved: Path, copies: int, out: Path) -> tuple[int, int]:
    """`copies` copies of a saved timeline one after the other (1 s apart), read line by line;
    (events written, events in one copy)."""
    with saved.open() as f:
        header = f.readline()
        times = [t for t in (json.loads(line).get("time_ns") for line in f) if isinstance(t, int) and t > 0]
    span = max(times) - min(times) + 1_000_000_000
    n = 0
    with out.open("w") as f:
        f.write(header)
        for k in range(copies):
            with saved.open() as src:
                src.readline()
                for line in src:
                    f.write(json.dumps(_shift(json.loads(line), k * span, k * 10_000, k)) + "\n")
                    n += 1
    return n, n // max(copies, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="keep the inputs and pages in this directory")
    ap.add_argument("--busy-copies", type=int, default=10)
    ap.add_argument("--lock-copies", type=int, default=160)
    opts = ap.parse_args()
    work = opts.keep or Path(tempfile.mkdtemp(prefix="correlate-html-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = [CAPTURES / n for n in ("busy-healthy.pcap.gz", "lock-wait.pcap", "slow-brick-queue.pcap.gz",
                                     "brick-hang.pcap")]
    busy = saved_timeline(CAPTURES / "busy-healthy.pcap.gz", work / "busy.jsonl")
    lock = saved_timeline(CAPTURES / "lock-wait.pcap", work / "lock.jsonl")
    for name, saved, copies in (("busy", busy, opts.busy_copies), ("lock", lock, opts.lock_copies)):
        path = work / f"{name}-x{copies}.jsonl"
        n, one = repeated(saved, copies, path)
        print(f"{path.name}: {n} events ({copies} copies of {one})")
        inputs.append(path)
    tool = [sys.executable, "-m", "correlate", "timeline"]
    status = 0
    print(f"{'input':34} {'page MB':>8} {'html RSS MiB':>13} {'json RSS MiB':>13} {'ratio':>6}")
    for path in inputs:
        page = work / (path.name + ".html")
        _, _, html_rss = measure([*tool, str(path), "--html", str(page)])
        _, _, json_rss = measure([*tool, str(path), "--json"])
        size = page.stat().st_size / 1e6
        ok = size <= MAX_MB and html_rss / 1024 < MAX_RSS_MIB
        status |= not ok
        print(f"{path.name:34} {size:8.2f} {html_rss / 1024:13.1f} {json_rss / 1024:13.1f} "
              f"{html_rss / json_rss:6.2f}{'' if ok else '  OVER'}")
        if not opts.keep:
            page.unlink()
    print(f"targets: page <= {MAX_MB} MB, peak RSS < {MAX_RSS_MIB} MiB: {'ok' if not status else 'missed'}")
    if not opts.keep:
        for p in work.iterdir():
            p.unlink()
        os.rmdir(work)
    return status


if __name__ == "__main__":
    sys.exit(main())
