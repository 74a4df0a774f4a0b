"""Peak RSS of `correlate profile` against `correlate decode --json` on the same lab workload
capture, in the same run: the profile keeps sketches, not latencies, so it must stay within
10% of decode (which holds nothing across packets).

    python bench/profile_memory.py [--capture FILE] [--files N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_vs_tshark import measure, workload_capture  # noqa: E402

LIMIT = 1.10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path, help="capture to use (default: record the lab workload)")
    ap.add_argument("--files", type=int, default=6000, help="workload size when recording")
    opts = ap.parse_args()
    capture = opts.capture or workload_capture(opts.files)
    tool = [sys.executable, "-m", "correlate"]
    _, d_cpu, d_rss = measure([*tool, "decode", "--json", str(capture)])
    _, p_cpu, p_rss = measure([*tool, "profile", str(capture)])
    ratio = p_rss / d_rss
    print(f"{capture.name}: decode --json {d_rss / 1024:.1f} MiB ({d_cpu:.1f} s CPU), "
          f"profile {p_rss / 1024:.1f} MiB ({p_cpu:.1f} s CPU): RSS ratio {ratio:.3f} "
          f"({'ok' if ratio <= LIMIT else 'over'} the {LIMIT:.2f} limit)")
    return 0 if ratio <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
