"""slow-brick and the profile on a real slow brick (tests/captures/slow-brick.pcap: replica 3,
debug/delay-gen 200 ms on WRITE of brick b2 only; slow-brick-queue.pcap.gz: the same with one
io-thread and a second client's MKDIRs waiting behind the WRITEs), and silence on healthy and
busy traffic."""
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from correlate.testing import run_detector

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


def check_queued(finding, procedures=("LOOKUP", "MKDIR", "RMDIR")):
    """The mkdir client's calls that reached the slow brick behind its WRITEs are named, with
    their count and a delay far above the peers' (the brick runs one io-thread)."""
    named = [q for q in finding["queued"] if q["procedure"] in procedures]
    assert named, finding["explanation"]
    for q in named:
        assert q["calls"] >= 3 and q["p50_ns"] >= 20_000_000 and q["reference_ns"] < 5_000_000, q
        assert f"{q['procedure']} x{q['calls']} a median" in finding["explanation"]


def test_committed_slow_brick_capture():
    check_slow_brick(CAPTURES / "slow-brick.pcap")


def test_committed_capture_with_calls_queued_behind_the_slow_writes():
    check_queued(check_slow_brick(CAPTURES / "slow-brick-queue.pcap.gz"))


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("*.pcap*")
                                           if p.name not in ("slow-brick.pcap", "slow-pwrite.pcap",
                                                             "slow-brick-queue.pcap.gz",
                                                             "lock-wait.pcap")))
def test_no_slow_brick_or_lock_wait_warning_elsewhere(capture):
    assert warnings(CAPTURES / capture) == []


def test_lab_slow_brick(lab, tmp_path):
    from tests.lab import lab as labmod
    out = tmp_path / "slow-brick.pcap"
    result = labmod.record("slow-brick", out, brick=3)
    assert result.reproduced, result.summary
    check_queued(check_slow_brick(out, "/srv/correlate-lab/slowvol/b3"))


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
    det.state.topology.peers = lambda server: ([p for p in ("b1", "b2", "b3") if p != server], "replica set x")
    latency = {"b1": 1_000_000, "b2": 200_000_000, "b3": 1_000_000}
    ping = {"b1": peer_ping_ns, "b2": slow_ping_ns, "b3": peer_ping_ns}
    events, t = [], 1
    for i in range(40):
        for brick in latency:
            for proc, ns in (("WRITE", latency[brick]), ("PING", ping[brick])):
                t += 1_000_000
                events.append({"time_ns": t, "kind": "rpc.reply", "src": brick, "dst": "c",
                               "conn": brick, "xid": i, "procedure": proc, "latency_ns": ns,
                               "program_num": 1298437 if proc == "WRITE" else 123451501})
    events.append({"time_ns": t + CHECK_EVERY_NS + 1, "kind": "rpc.reply", "src": "b1",
                   "dst": "c", "conn": "b1", "xid": 99, "procedure": "PING", "latency_ns": 1,
                   "program_num": 123451501})
    (finding,) = run_detector(det, events)
    assert finding["brick"] == "b2"
    return finding["explanation"]


def test_a_ping_slower_by_the_factor_but_not_by_the_margin_is_a_fast_network():
    # loopback: 0.6 ms against 0.08 ms is 7x, but nothing next to a 200 ms WRITE
    assert "the network is fast" in _ping_verdict(600_000, 80_000)
    assert "PING round trip is slow too" in _ping_verdict(150_000_000, 80_000)


def _queue_run(lookup_alone_ns: int = 300_000, same_connection: bool = False) -> list[dict]:
    """Synthetic replica 3 traffic: a writer whose WRITEs take 200 ms on b2 (0.5 ms on b1, b3)
    and a second client whose LOOKUPs reach b2 50 ms into each WRITE, waiting for it to end;
    its other LOOKUPs, sent with nothing in flight, take `lookup_alone_ns` on b2."""
    from plugins.slow_brick import SlowBrick
    det = SlowBrick()
    det.state.topology.peers = lambda server: ([p for p in ("b1", "b2", "b3") if p != server], "replica set x")
    events, xid = [], 0

    def rpc(brick, client, proc, sent, took):
        nonlocal xid
        xid += 1
        conn = f"{'w' if same_connection else client}-{brick}"
        base = {"kind": "rpc.call", "program_num": 1298437, "procedure": proc, "xid": xid,
                "conn": conn, "source": "t.pcap", "src": client, "dst": brick, "time_ns": sent}
        events.append(base)
        events.append({**base, "kind": "rpc.reply", "src": brick, "dst": client,
                       "time_ns": sent + took, "call_time_ns": sent, "latency_ns": took})

    t = 1_000_000_000
    for _ in range(30):
        for brick in ("b1", "b2", "b3"):
            slow = brick == "b2"
            rpc(brick, "w", "WRITE", t, 200_000_000 if slow else 500_000)
            rpc(brick, "m", "LOOKUP", t + 50_000_000, 150_300_000 if slow else 300_000)
            rpc(brick, "m", "LOOKUP", t + 250_000_000, lookup_alone_ns if slow else 300_000)
        t += 300_000_000
    found = run_detector(det, events)
    assert all(f["count"] == 1 for f in found)     # as many reports as before folding
    return found


def test_calls_of_another_client_waiting_behind_slow_writes_are_named_not_blamed():
    (finding,) = _queue_run()
    assert finding["procedure"] == "WRITE" and finding["brick"] == "b2"
    (queued,) = finding["queued"]
    assert queued["procedure"] == "LOOKUP" and queued["calls"] == 30
    assert abs(queued["p50_ns"] - 150_300_000) < 0.02 * 150_300_000
    assert abs(queued["reference_ns"] - 300_000) < 0.02 * 300_000 and queued["against"] == "peers"
    assert "LOOKUP x30 a median 150" in finding["explanation"]
    assert "queued behind the WRITEs" in finding["explanation"]


def test_calls_behind_slow_writes_on_the_same_connection_are_named():
    (finding,) = _queue_run(same_connection=True)
    assert [q["procedure"] for q in finding["queued"]] == ["LOOKUP"]


def test_a_procedure_slow_on_its_own_too_keeps_its_own_finding():
    found = {f["procedure"]: f for f in _queue_run(lookup_alone_ns=100_000_000)}
    assert set(found) == {"WRITE", "LOOKUP"}
    assert found["LOOKUP"]["brick"] == "b2"


def test_check_every_s_sets_how_soon_a_live_run_judges():
    """Live, the verdict waits for the next check (30 s of capture time by default); the
    option brings it forward."""
    from plugins.slow_brick import SlowBrick

    def first_finding_ns(settings):
        det = SlowBrick()
        det.settings = settings
        det.state.topology.peers = lambda server: ([p for p in ("b1", "b2", "b3") if p != server], "set")
        t = 1_000_000_000
        for i in range(400):                      # 40 s of writes, one round every 100 ms
            for brick, ns in (("b1", 1_000_000), ("b2", 200_000_000), ("b3", 1_000_000)):
                t += 100_000_000 if brick == "b1" else 0
                found = [f for f in det.observe({"time_ns": t, "kind": "rpc.reply", "src": brick,
                                                 "dst": "c", "conn": brick, "xid": i,
                                                 "procedure": "WRITE", "latency_ns": ns,
                                                 "program_num": 1298437})
                         if f.get("kind") == "finding"]
                if found:
                    return t - 1_000_000_000
        return None

    assert 30e9 <= first_finding_ns({}) < 31e9
    assert 2e9 <= first_finding_ns({"check_every_s": 2.0}) < 3e9
