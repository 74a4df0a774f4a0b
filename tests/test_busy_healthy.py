"""No false alarms: every built-in detector over busy but healthy traffic gives no warning,
error or critical finding, except what the deliberate brick kill of `busy-healthy` explains.

Allowed, and only these: a finding whose wire evidence concerns the killed brick's port (and
glusterd's, which names that port) and whose time is from 1 s before to KILL_WINDOW_NS after
the kill as the wire shows it (the brick's side
closing its client connections: `tcp.close` by the server). A client that reconnects before
the brick is back may find the port closed (brick-unreachable) or calls cut off. Anything
else, on any brick or at any other time, fails the test.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.detector import load_detectors
from correlate.plugin_manager import get_plugin_manager

CAPTURES = Path(__file__).parent / "captures"
HEALTHY = ["busy-healthy.pcap.gz", "healthy.pcap"]
SERIOUS = ("warning", "error", "critical")
KILL_WINDOW_NS = 30_000_000_000


def builtin_detector_ids() -> set[str]:
    detectors, _ = load_detectors(get_plugin_manager(), {})
    return {d.id for d in detectors if type(d).__module__.startswith("correlate.plugins.")}


def events_of(path: Path, command: str = "analyze") -> list[dict]:
    """`analyze` prints the findings, `decode` the events."""
    res = subprocess.run([sys.executable, "-m", "correlate", command, "--json", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def brick_kills(events: list[dict]) -> list[tuple[str, int]]:
    """(brick endpoint, time) of each brick that closed its client connections itself."""
    return [(e["dst"], e["time_ns"]) for e in events if e.get("kind") == "tcp.close"
            and e.get("by") == "server" and not e["dst"].endswith(":24007")]


def _ports(ev: dict) -> set[str]:
    return {(ev.get(k) or "").rsplit(":", 1)[-1] for k in ("src", "dst")}


def explained_by_kill(finding: dict, kills: list[tuple[str, int]]) -> bool:
    """The finding is about the killed brick (some wire evidence on its port, the rest on
    it or on glusterd's 24007, e.g. the PORTBYBRICK that named it) and comes at the kill."""
    wire = [e for e in finding.get("evidence", []) if e.get("layer") == "wire"]
    for brick, t in kills:
        port = brick.rsplit(":", 1)[1]
        on_brick = [port in _ports(e) for e in wire]
        if (any(on_brick) and all(hit or "24007" in _ports(e) for hit, e in zip(on_brick, wire))
                and -1e9 <= finding["time_ns"] - t <= KILL_WINDOW_NS):
            return True
    return False


@pytest.mark.parametrize("capture", HEALTHY)
def test_no_warning_on_healthy_traffic(capture):
    ours = builtin_detector_ids()
    assert {"rpc-unanswered", "brick-not-responding", "no-space"} <= ours
    events = events_of(CAPTURES / capture)
    kills = brick_kills(events_of(CAPTURES / capture, "decode")) if capture.startswith("busy") else []
    serious = [f for f in events if f.get("kind") == "finding" and f.get("detector") in ours
               and f.get("severity") in SERIOUS]
    unexplained = [f for f in serious if not explained_by_kill(f, kills)]
    assert not unexplained, "\n".join(f"{f['detector']}: {f['title']}" for f in unexplained)
    if capture.startswith("busy"):
        assert len(kills) >= 1          # the capture holds the kill it allows for
        print(f"\n{len(serious)} finding(s) allowed by the brick kill at {kills[0]}")


def test_busy_healthy_capture_holds_the_workload():
    """The capture is what the scenario says: both volumes, the fops, the kill, qemu-img."""
    events = events_of(CAPTURES / "busy-healthy.pcap.gz", "decode")
    procedures = {e.get("procedure") for e in events if e.get("kind") == "rpc.call"}
    assert {"CREATE", "WRITE", "READ", "FSYNC", "LK", "SETXATTR", "GETXATTR", "REMOVEXATTR",
            "RENAME", "LINK", "SYMLINK", "READLINK", "MKNOD", "RMDIR", "READDIRP", "STATFS",
            "FALLOCATE", "DISCARD", "ZEROFILL", "SEEK", "FTRUNCATE", "TRUNCATE"} <= procedures
    volumes = {(e.get("args") or {}).get("key") for e in events if e.get("procedure") == "GETSPEC"
               and e.get("kind") == "rpc.call"}
    assert {"busyrep3", "busydisp"} <= volumes


def test_the_kill_allowance_is_narrow():
    """Only findings on the killed brick (with glusterd naming it), at the kill, pass."""
    s = 1_000_000_000
    kills = [("127.0.0.2:49212", 100 * s)]

    def finding(t, *pairs):
        return {"time_ns": t, "evidence": [{"layer": "wire", "src": a, "dst": b} for a, b in pairs]}
    killed, other, glusterd = "127.0.0.2:49212", "127.0.0.2:49213", "127.0.0.2:24007"
    assert explained_by_kill(finding(101 * s, (glusterd, "127.0.0.1:5"), ("127.0.0.1:6", killed)), kills)
    assert not explained_by_kill(finding(101 * s, ("127.0.0.1:6", other)), kills)
    assert not explained_by_kill(finding(90 * s, ("127.0.0.1:6", killed)), kills)       # before it
    assert not explained_by_kill(finding(140 * s, ("127.0.0.1:6", killed)), kills)      # long after
    assert not explained_by_kill(finding(101 * s, (glusterd, "127.0.0.1:5")), kills)
    assert not explained_by_kill(finding(101 * s, ("127.0.0.1:6", killed), ("127.0.0.1:6", other)), kills)
