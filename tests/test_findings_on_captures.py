"""Each real lab capture gives its own finding and no other scenario's (`correlate analyze`)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

CAPTURES = Path(__file__).parent / "captures"
BUILTIN = {"atime-minus-one", "brick-unreachable", "auth-rejected", "rpc-unanswered",
           "brick-not-responding", "no-space", "slow-brick", "lock-wait", "tls-failure"}

EXPECTED = {
    "healthy.pcap": {},
    "atime-minus-one.pcap": {"atime-minus-one": 1},
    "auth-rejected.pcap": {"auth-rejected": 1},
    "insecure-port.pcap": {"auth-rejected": 1},
    "firewall-reject.pcap": {"brick-unreachable": 1},
    "firewall-drop.pcap": {"brick-unreachable": 1},
    # the hang, then (info) the brick answering again
    "brick-hang.pcap": {"brick-not-responding": 2},
    # (rpc-unanswered's info summary of error replies lists the ENOSPC replies too)
    "reserve-full.pcap": {"no-space": 1, "rpc-unanswered": 1},
    # a 12 s wait for a held lock: lock-wait, not rpc-unanswered's hang
    "lock-wait.pcap": {"lock-wait": 1},
    "slow-brick.pcap": {"slow-brick": 1},
    "slow-pwrite.pcap": {"slow-brick": 1},
    # TLS volumes (one finding per cause and server host: both bricks fold into it)
    # (info: encrypted connections whose RPC the capture cannot show)
    "tls-healthy.pcap": {"tls-failure": 1},
    "tls-healthy12.pcap": {"tls-failure": 1},
    "tls-ca-mismatch.pcap": {"tls-failure": 1},
    "tls-expired12.pcap": {"tls-failure": 1},
    "tls-client-only.pcap": {"tls-failure": 1},
    # a reset without TLS on the wire: only the brick's log says why (test_tls_failure.py)
    "tls-server-only.pcap": {},
}


def analyze(*paths):
    res = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--json", *map(str, paths)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    # Only the built-in detectors: a third-party plugin installed in this venv adds its own.
    return [e for e in map(json.loads, res.stdout.splitlines()) if e.get("detector") in BUILTIN]


@pytest.mark.parametrize("capture", sorted(EXPECTED))
def test_capture_gives_its_finding_only(capture):
    out = analyze(CAPTURES / capture)
    findings = [f for f in out if f["kind"] == "finding"]
    by_detector = {}
    for f in findings:
        assert f["layer"] == "finding" and f["remedy"] and f["evidence"]
        by_detector[f["detector"]] = by_detector.get(f["detector"], 0) + 1
    assert by_detector == EXPECTED[capture]


def test_atime_finding_holds_the_wire_setattr_with_minus_one():
    (f,) = [f for f in analyze(CAPTURES / "atime-minus-one.pcap") if f["kind"] == "finding"]
    call = next(e for e in f["evidence"] if e["kind"] == "rpc.call")
    assert call["procedure"] == "SETATTR" and call["args"]["atime"] == -1
    assert "GF_SET_ATTR_ATIME" in call["args"]["valid_flags"]
    assert f["introduced_by"] == "unknown" and "not observed" in f["explanation"]
    reply = next(e for e in f["evidence"] if e["kind"] == "rpc.reply")
    assert reply["op_ret"] == 0


def test_firewall_findings_name_the_action_and_the_learned_brick_port():
    for capture, action, kind in (("firewall-reject.pcap", "REJECT", "tcp.refused"),
                                  ("firewall-drop.pcap", "DROP", "tcp.timeout")):
        out = analyze(CAPTURES / capture)
        (f,) = [f for f in out if f["kind"] == "finding"]
        assert f["action"] == action
        kinds = [e["kind"] for e in f["evidence"]]
        assert kinds[-1] == kind and "rpc.reply" in kinds   # GETSPEC / PORTBYBRICK replies
        port = next(e["result"]["port"] for e in f["evidence"] if e.get("procedure") == "PORTBYBRICK"
                    and e["kind"] == "rpc.reply")
        assert f["evidence"][-1]["dst"].endswith(f":{port}")
        (update,) = [u for u in out if u["kind"] == "finding.update"]
        assert update["count"] == 2   # both bricks: one cause, folded


def test_auth_rejected_carries_the_server_error_text():
    (f,) = [f for f in analyze(CAPTURES / "auth-rejected.pcap") if f["kind"] == "finding"]
    assert f["error_text"] == "Authentication failed"
    reply = next(e for e in f["evidence"] if e["kind"] == "rpc.reply")
    assert reply["procedure"] == "SETVOLUME" and reply["op_errno"] == 13


def test_saved_timeline_reopens_with_the_same_findings(tmp_path):
    timeline = tmp_path / "t.jsonl"
    subprocess.run([sys.executable, "-m", "correlate", "analyze", "--timeline", str(timeline),
                    str(CAPTURES / "firewall-drop.pcap")], check=True, capture_output=True, timeout=120)
    header = json.loads(timeline.read_text().splitlines()[0])
    assert header["schema"] == "correlate/1"
    again = [f for f in analyze(timeline) if f["kind"] == "finding"]
    direct = [f for f in analyze(CAPTURES / "firewall-drop.pcap") if f["kind"] == "finding"]
    assert [(f["detector"], f["title"]) for f in again] == [(f["detector"], f["title"]) for f in direct]
