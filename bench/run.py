"""`make bench`: every benchmark, each reporting ratios against its anchor in the same run."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = [["analyze_vs_tshark.py"], ["decode_vs_tshark.py"], ["probe_overhead.py"],
           ["tls_overhead.py", "--keys"], ["tls_overhead.py"], ["profile_memory.py"],
           ["detector_state.py"], ["html_report.py"]]

status = 0
for name, *args in BENCHES:
    script = HERE / name
    if not script.exists():
        continue
    print(f"\n== {' '.join([name, *args])}", flush=True)
    status |= subprocess.call([sys.executable, str(script), *args])
sys.exit(status)
