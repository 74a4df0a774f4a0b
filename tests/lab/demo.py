"""`make run`: the three user problems of the talk, diagnosed live.

Brings up the loopback lab, starts `tcpdump ... -w - | correlate run --probe all --pcap -`,
triggers the atime -1 (from a libgfapi application, then through a real smbd with
vfs_glusterfs), the SETVOLUME authentication failure (qemu-img over gluster://) and the
firewall REJECT / DROP mount failures, then stops the capture; correlate prints the findings
as they happen and says where the merged timeline went.

Without root, glusterd, tcpdump or bcc, it says what is missing and analyzes the real
captures shipped in tests/captures/ instead.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "tests" / "captures"
SCENARIOS = ("atime-minus-one", "auth-rejected", "firewall-reject", "firewall-drop")
CORRELATE = [sys.executable, "-m", "correlate"]


def missing_capabilities() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("glusterd", "tcpdump", "qemu-img", "iptables"):
        if not shutil.which(tool):
            missing.append(tool)
    if importlib.util.find_spec("bcc") is None:
        missing.append("bcc (apt-get install python3-bpfcc; venv with --system-site-packages)")
    return missing


def offline(reason: str) -> int:
    print(f"demo: cannot run the live lab here ({reason}); analyzing the shipped captures instead.\n",
          flush=True)
    status = 0
    for capture in sorted(CAPTURES.glob("*.pcap*")):
        print(f"\n### {capture.name}", flush=True)
        status |= subprocess.call(CORRELATE + ["analyze", str(capture)])
    return status


def echo_until(stream, marker: str, ready: threading.Event, prefix: str) -> None:
    """Copy a child's stderr to ours, and signal when a line containing `marker` appears."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        if marker in line:
            ready.set()
        print(f"{prefix}{line}", file=sys.stderr, flush=True)
    ready.set()


def live() -> int:
    sys.path.insert(0, str(ROOT))
    from tests.lab import lab

    print("demo: bringing up the loopback Gluster lab (127.0.0.2) ...", flush=True)
    info = lab.up()
    out = ROOT / "out" / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    timeline = out / "timeline.jsonl"
    tcpdump = subprocess.Popen(["tcpdump", "-i", "any", "-s", "0", "-U", "--immediate-mode",
                                "-B", "262144", "-w", "-", lab.DEFAULT_FILTER],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = subprocess.Popen(CORRELATE + ["run", "--probe", "all", "--pcap", "-",
                                        "--timeline", str(timeline)],
                           stdin=tcpdump.stdout, stderr=subprocess.PIPE)
    tcpdump.stdout.close()   # the pipe now belongs to correlate
    capturing, attached = threading.Event(), threading.Event()
    threading.Thread(target=echo_until, args=(tcpdump.stderr, "listening on", capturing, "tcpdump: "),
                     daemon=True).start()
    threading.Thread(target=echo_until, args=(run.stderr, "probes attached", attached, ""),
                     daemon=True).start()
    if not (capturing.wait(30) and attached.wait(120)) or run.poll() is not None:
        tcpdump.terminate()
        print("demo: tcpdump or correlate did not start (see above)", file=sys.stderr)
        return 1
    print(f"demo: volume {info.volume}, bricks on ports {info.brick_ports}; capture and probes "
          "running. Triggering the problems:", flush=True)
    try:
        for name in SCENARIOS:
            print(f"\ndemo: -> scenario {name}", flush=True)
            result = lab.scenario(name)
            print(f"demo:    {getattr(result, 'summary', result)}", flush=True)
        samba_atime()
    finally:
        time.sleep(1.0)   # let the last packets reach correlate
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(30)
        status = run.wait(120)
        lab.up()   # leave the lab healthy
    print(f"\ndemo: merged timeline (events and findings): {timeline}")
    print(f"demo: reopen it with: correlate analyze {timeline}   or   correlate timeline {timeline} --html {out}/report.html")
    return status


def samba_atime() -> None:
    """The talk's case: an access time of -1 through Samba's vfs_glusterfs to the bricks."""
    if not (shutil.which("smbd") and shutil.which("smbclient")):
        print("\ndemo: (no smbd/smbclient: skipping the Samba case; apt-get install samba smbclient)")
        return
    from tests.lab import samba
    print("\ndemo: -> Samba: smbclient sets an access time of 1969-12-31 23:59:59 over a "
          "vfs_glusterfs share", flush=True)
    with samba.Smbd() as smbd:
        smbd.client("put /etc/hostname samba-demo.txt")
        result = smbd.utimes("samba-demo.txt", access="1969:12:31-23:59:59")
        print(f"demo:    smbclient utimes exit {result.returncode}", flush=True)
        time.sleep(1.0)
        smbd.client("del samba-demo.txt")


def main() -> int:
    missing = missing_capabilities()
    if missing:
        return offline("missing: " + ", ".join(missing))
    return live()


if __name__ == "__main__":
    sys.exit(main())
