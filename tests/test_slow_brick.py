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
