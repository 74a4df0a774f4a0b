"""Evidence that says what the capture holds, on the lab's real captures."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CAPTURES = Path(__file__).parent / "captures"
DROP = CAPTURES / "firewall-drop.pcap"
CORRELATE = [sys.executable, "-m", "correlate"]


def syns_per_port(capture: Path) -> dict[int, list[tuple[int, float]]]:
    """What tshark sees: (frame, time) of every SYN to a brick port."""
    out = subprocess.run(["tshark", "-r", str(capture), "-n", "-Y",
                          "tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.dstport >= 49152",
                          "-T", "fields", "-e", "tcp.dstport", "-e", "frame.number",
                          "-e", "frame.time_epoch"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    ports: dict[int, list] = {}
    for line in out.splitlines():
        port, frame, t = line.split("\t")
        ports.setdefault(int(port), []).append((int(frame), float(t)))
    return ports


@pytest.mark.skipif(not shutil.which("tshark"), reason="needs tshark to count the SYNs independently")
def test_drop_finding_counts_every_syn_and_points_at_the_last():
    syns = syns_per_port(DROP)
    assert len(syns) == 2 and all(len(v) == 8 for v in syns.values())     # 8 SYNs over 11.4 s each
    res = subprocess.run(CORRELATE + ["analyze", "--json", str(DROP)], capture_output=True,
                         text=True, timeout=120)
    out = [json.loads(line) for line in res.stdout.splitlines()]
    update = next(e for e in out if e["kind"] == "finding.update")
    for port, seen in syns.items():
        span = seen[-1][1] - seen[0][1]
        assert f"127.0.0.2:{port}: {len(seen)} SYNs in {span:.1f} s" in update["explanation"]
        last = [e for e in update["evidence"] if e["kind"] == "tcp.timeout" and e.get("final")
                and e["dst"].endswith(f":{port}")]
        assert last and last[0]["frame"] == seen[-1][0] and last[0]["attempts"] == len(seen)
    text = subprocess.run(CORRELATE + ["analyze", str(DROP)], capture_output=True, text=True,
                          timeout=120).stdout
    assert "8 SYNs in 11.4 s" in text


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tcpdump") or not shutil.which("glusterd"),
                    reason="needs root, tcpdump and glusterd (the loopback lab)")
def test_auth_rejected_joins_the_client_log_line_written_after_the_reply(tmp_path):
    """auth.reject on the lab; a libgfapi client with its own log file. The client logs the
    SETVOLUME failure in its reply callback, so the line is stamped after the reply: the
    finding must still carry it."""
    from tests.lab import lab
    from tests.lab.capture import Tcpdump
    from tests.lab.scenarios import staged
    capture = tmp_path / "auth.pcap"
    with staged("auth-rejected") as scenario:
        with Tcpdump(capture, lab.DEFAULT_FILTER):
            _result, log = scenario.gfapi("init", timeout=8)
        log_copy = tmp_path / "client.log"
        shutil.copy(log, log_copy)
    res = subprocess.run(CORRELATE + ["analyze", "--json", "--events", str(capture), str(log_copy)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = [json.loads(line) for line in res.stdout.splitlines()]
    finding = next(e for e in out if e["kind"] == "finding" and e["detector"] == "auth-rejected")
    reply = next(e for e in finding["evidence"] if e["kind"] == "rpc.reply")
    updates = [e for e in out if e["kind"] == "finding.update" and e["id"] == finding["id"]]
    evidence = finding["evidence"] + [e for u in updates for e in u["evidence"]]
    joined = {(e["time_ns"], e["message"]) for e in evidence
              if e["layer"] == "log" and "SETVOLUME" in e["message"]}
    logged = [(e["time_ns"], e["message"]) for e in out
              if e.get("layer") == "log" and "SETVOLUME" in e["message"]]
    replies = [e for e in out if e["kind"] == "rpc.reply" and e.get("procedure") == "SETVOLUME"]
    why = f"replies at {[r['time_ns'] for r in replies]}; log lines {logged}; joined {joined}"
    assert logged and all(t >= replies[0]["time_ns"] for t, _m in logged), why   # the real order
    assert joined == set(logged), why
