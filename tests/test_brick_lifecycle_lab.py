"""On the lab: a brick killed under a gfapi client and under a FUSE mount (brick-down), and a
brick stopped under a client with a 5 s ping-timeout (brick-not-responding), each captured
and analysed with the client's log (and the brick's), checked against the scenario's own
clock."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import lab as lab_module

S = 1_000_000_000


def analyze(*paths) -> list[dict]:
    res = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--json", *map(str, paths)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    found = {f["id"]: f for f in events if f.get("kind") == "finding"}
    for u in events:        # what a finding learnt later (a log line after the FIN)
        if u.get("kind") == "finding.update" and u.get("id") in found:
            f = found[u["id"]]
            f["explanation"] = u.get("explanation", f["explanation"])
            f["evidence"] = f["evidence"] + u.get("evidence", [])
    return list(found.values())


def brick_log_since(result, tmp_path: Path) -> Path:
    """The brick's log from the kill on (what this run added)."""
    d = result.details
    out = tmp_path / Path(d["brick_log"]).name
    with open(d["brick_log"], "rb") as f:
        f.seek(d["brick_log_from"])
        out.write_bytes(f.read())
    return out


@pytest.mark.parametrize("scenario, client", [("brick-down", "gfapi"), ("brick-down-fuse", "FUSE mount")])
def test_killed_brick_is_down_with_what_the_client_got(lab, tmp_path, scenario, client):
    capture = tmp_path / "down.pcap"
    result = lab_module.record(scenario, capture)
    assert result.reproduced, result.summary
    d = result.details
    client_log = tmp_path / "client.log"
    client_log.write_bytes(Path(d["client_log"]).read_bytes())
    out = analyze(capture, client_log, brick_log_since(result, tmp_path))
    (f,) = [f for f in out if f["detector"] == "brick-down"]
    assert f["severity"] == "error"
    assert f["brick"] == d["brick"] and f["volume"] == d["volume"] == "downvol"
    assert f["enotconn"] and "ENOTCONN" in f["explanation"] and f["log_enotconn"] > 0
    assert client in f["explanation"]                     # who was cut off, by role
    # down from the kill to the restart, as the scenario's own clock says
    assert abs(f["since_ns"] - d["killed_at"] * S) < S
    assert d["start_at"] * S - S < f["back_ns"] < d["restarted_at"] * S + S
    assert f"port {d['new_port']}" in f["explanation"]
    assert f["answered_ns"] is not None
    logs = [e for e in f["evidence"] if e["layer"] == "log"]
    assert any("keep trying to connect" in e["message"] for e in logs)
    assert any("Started running" in e["message"] for e in logs)
    assert not [g for g in out if g["detector"] in ("brick-not-responding", "brick-unreachable")]


def test_hung_brick_says_its_ping_timeout_and_when_it_answered(lab, tmp_path):
    capture = tmp_path / "hang.pcap"
    result = lab_module.record("brick-hang", capture)
    assert result.reproduced, result.summary
    d = result.details
    client_log = tmp_path / "client.log"
    client_log.write_bytes(Path(d["client_log"]).read_bytes())
    out = [f for f in analyze(capture, client_log) if f["detector"] == "brick-not-responding"]
    hung = next(f for f in out if f["severity"] == "error")
    assert hung["brick"] == d["brick"] and hung["ping_timeout_s"] == 5
    assert "ping-timeout 5 s" in hung["explanation"] and "ping-timeout 42" not in hung["explanation"]
    assert "has not responded in the last 5 seconds" in hung["explanation"]
    assert any(e["layer"] == "log" for e in hung["evidence"])
    back = next(f for f in out if f["title"].startswith("brick answering again"))
    answer = back["evidence"][-1]
    assert answer["kind"] == "rpc.reply"                  # a real reply, not a handshake
    assert back["time_ns"] == back["answered_ns"] == answer["time_ns"]
    assert back["time_ns"] > d["resumed_at"] * S - 0.1 * S   # only after SIGCONT
