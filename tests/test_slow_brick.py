"""slow-brick and the profile on a real slow brick (tests/captures/slow-brick.pcap: replica 3,
debug/delay-gen 200 ms on WRITE of brick b2 only), and silence on healthy and busy traffic."""
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

CAPTURES = Path(__file__).parent / "captures"
DELAY_NS = 200_000_000
SLOW_BRICK = "/srv/correlate-lab/slowvol/b2"
WATCHED = {"slow-brick", "lock-wait"}


def correlate(*args):
    res = subprocess.run([sys.executable, "-m", "correlate", *map(str, args)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return res.stdout


def warnings(path):
    return [e for e in map(json.loads, correlate("analyze", "--json", path).splitlines())
            if e.get("kind") == "finding" and e.get("detector") in WATCHED
            and e.get("severity") != "info"]


def check_slow_brick(path, slow_brick=SLOW_BRICK, delay_ns=DELAY_NS):
    snap = json.loads(correlate("profile", "--json", path))
    writes = {b["brick"]: next(p for p in b["procedures"] if p["procedure"] == "WRITE")
              for b in snap["bricks"] if any(p["procedure"] == "WRITE" for p in b["procedures"])}
    assert len(writes) == 3
    slow = writes.pop(slow_brick)
    assert abs(slow["p50_ns"] - delay_ns) <= 0.05 * delay_ns, slow
    for peer in writes.values():          # peers near their real latency: sub-ms to a few ms
        assert peer["p50_ns"] < 5_000_000, peer
    found = [f for f in warnings(path) if f["detector"] == "slow-brick"]
    assert len(found) == 1, [f["title"] for f in found]
    f = found[0]
    assert f["procedure"] == "WRITE" and f["brick"].endswith(slow_brick)
    assert "network is fast" in f["explanation"] and "volfile slowvol-replicate-0" in f["explanation"]
    return f


def test_committed_slow_brick_capture():
    check_slow_brick(CAPTURES / "slow-brick.pcap")


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("*.pcap*")
                                           if p.name not in ("slow-brick.pcap", "slow-pwrite.pcap",
                                                             "lock-wait.pcap")))
def test_no_slow_brick_or_lock_wait_warning_elsewhere(capture):
    assert warnings(CAPTURES / capture) == []


def test_lab_slow_brick(lab, tmp_path):
    from tests.lab import lab as labmod
    out = tmp_path / "slow-brick.pcap"
    result = labmod.record("slow-brick", out, brick=3)
    assert result.reproduced, result.summary
    check_slow_brick(out, "/srv/correlate-lab/slowvol/b3")


def test_lab_busy_replicated_workload_is_quiet(lab, tmp_path):
    """Three clients at once on a replica 3 volume: every fop, small files, and two writers on
    one file (lock contention, EAGAIN on non-blocking locks): no warning."""
    from tests.lab import gfapi, volumes
    from tests.lab import lab as labmod
    from tests.lab.capture import Tcpdump
    spec = volumes.VolumeSpec("busyvol", "replica", 3)
    out = tmp_path / "busy.pcap"
    with labmod.exclusive():
        volumes.ensure(spec)
        runs = [["fops", "--dir", "/busy"], ["workload", "--files", "300", "--dir", "/small"],
                ["write-loop", "--path", "/shared", "--seconds", "8", "--interval", "0"],
                ["write-loop", "--path", "/shared", "--seconds", "8", "--interval", "0",
                 "--existing"]]
        results = [None] * len(runs)

        def client(i):
            results[i] = gfapi.run([*runs[i], "--volume", spec.name], timeout=180)

        with Tcpdump(out, labmod.DEFAULT_FILTER):
            gfapi.run(["create", "--path", "/shared", "--volume", spec.name], timeout=60)
            threads = [threading.Thread(target=client, args=(i,)) for i in range(len(runs))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert all(r["status"] == "ok" for r in results), results
    assert warnings(out) == []


def _ping_verdict(slow_ping_ns: int, peer_ping_ns: int) -> str:
    """The slow-brick explanation's network sentence for a brick whose WRITEs take 200 ms
    against its replica peers' 1 ms, with the given PING round trips (synthetic replies)."""
    from plugins.slow_brick import CHECK_EVERY_NS, SlowBrick
    det = SlowBrick()
    det.topology.peers = lambda server: ([p for p in ("b1", "b2", "b3") if p != server], "replica set x")
    latency = {"b1": 1_000_000, "b2": 200_000_000, "b3": 1_000_000}
    ping = {"b1": peer_ping_ns, "b2": slow_ping_ns, "b3": peer_ping_ns}
    found, t = [], 1
    for i in range(40):
        for brick in latency:
            for proc, ns in (("WRITE", latency[brick]), ("PING", ping[brick])):
                t += 1_000_000
                found += det.observe({"time_ns": t, "kind": "rpc.reply", "src": brick, "dst": "c",
                                      "conn": brick, "xid": i, "procedure": proc, "latency_ns": ns,
                                      "program_num": 1298437 if proc == "WRITE" else 123451501})
    found += det.observe({"time_ns": t + CHECK_EVERY_NS + 1, "kind": "rpc.reply", "src": "b1",
                          "dst": "c", "conn": "b1", "xid": 99, "procedure": "PING", "latency_ns": 1,
                          "program_num": 123451501})
    (finding,) = [f for f in found if f.get("kind") == "finding"]
    assert finding["brick"] == "b2"
    return finding["explanation"]


def test_a_ping_slower_by_the_factor_but_not_by_the_margin_is_a_fast_network():
    # loopback: 0.6 ms against 0.08 ms is 7x, but nothing next to a 200 ms WRITE
    assert "the network is fast" in _ping_verdict(600_000, 80_000)
    assert "PING round trip is slow too" in _ping_verdict(150_000_000, 80_000)
