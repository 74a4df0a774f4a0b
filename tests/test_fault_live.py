"""Live, on the lab: `tcpdump | correlate run --probe all --pcap -` while a fault scenario
runs, for brick-not-responding and no-space."""

from tests.lab import lab as lab_module
from tests.lab.live import LivePipeline
from tests.test_run_live import need_probes

WARNING_OR_WORSE = ("warning", "error", "critical")


def _others(pipe, detector):
    return [ev for _, ev in pipe.lines if ev.get("kind") == "finding"
            and ev.get("detector") != detector and ev.get("severity") in WARNING_OR_WORSE]


def test_live_brick_not_responding_speaks_while_the_brick_is_still_stopped(lab, tmp_path):
    need_probes()
    with lab_module.staged("brick-hang") as scenario:
        pipe = LivePipeline(["--probe", "all"], tmp_path / "t.jsonl")
        try:
            pipe.wait_ready()
            result = scenario.trigger()
            recovered = pipe.wait_for(lambda ev: ev.get("title", "").startswith("brick answering"),
                                      timeout=20)
        finally:
            code = pipe.stop()
    assert result.reproduced, result.summary
    hung = [(t, ev) for t, ev in pipe.lines if ev.get("detector") == "brick-not-responding"
            and ev.get("severity") == "error"]
    assert len(hung) == 1, "".join(pipe.stderr)
    arrived_ns, finding = hung[0]
    details = result.details
    assert finding["brick"] == details["brick"] and finding["server"].endswith(f":{details['port']}")
    assert finding["tcp_acked"] is True          # SIGSTOP: the kernel still ACKs
    close = finding["evidence"][-1]
    assert close["kind"] == "tcp.close" and close["by"] == "client" and close["half"]
    ping = next(e for e in finding["evidence"] if e.get("procedure") == "PING")
    assert 4.5e9 < close["time_ns"] - ping["time_ns"] < 6e9      # network.ping-timeout 5
    # Spoken while the brick was still stopped, a few seconds after the client gave up.
    resumed_ns = int(details["resumed_at"] * 1e9)
    print(f"\nfinding {(arrived_ns - close['time_ns']) / 1e9:.2f} s after the client's FIN, "
          f"{(resumed_ns - arrived_ns) / 1e9:.2f} s before SIGCONT")
    assert arrived_ns < resumed_ns
    assert arrived_ns - close["time_ns"] < 3e9
    assert recovered, "no 'brick answering again' finding"
    assert not _others(pipe, "brick-not-responding")
    assert code == 0, "".join(pipe.stderr)


def test_live_no_space_names_storage_reserve(lab, tmp_path):
    need_probes()
    with lab_module.staged("reserve-full") as scenario:
        pipe = LivePipeline(["--probe", "all"], tmp_path / "t.jsonl")
        try:
            pipe.wait_ready()
            result = scenario.trigger()
            hit = pipe.wait_for(lambda ev: ev.get("detector") == "no-space", timeout=20)
        finally:
            code = pipe.stop()
    assert result.reproduced, result.summary
    assert hit, "no no-space finding; stderr:\n" + "".join(pipe.stderr)
    finding = hit[1]
    assert finding["cause"] == "storage.reserve refusing writes"
    assert finding["brick"].endswith("/reservevol/b1")
    statfs = [e for e in finding["evidence"] if e.get("procedure") == "STATFS"]
    assert statfs and statfs[0]["result"]["statfs"]["bavail"] == 0
    # Allowed: lost-write, the same cause seen from the application. write-behind
    # acknowledged the pwrites whose WRITEs the brick refused with ENOSPC, and the fsync
    # then failed: that data really was lost.
    others = _others(pipe, "no-space")
    assert all(f["detector"] == "lost-write" and
               {e.get("errno_name") for e in f["evidence"] if e.get("procedure") == "WRITE"
                and e.get("kind") == "rpc.reply"} == {"ENOSPC"} for f in others), others
    assert code == 0, "".join(pipe.stderr)


def test_live_busy_healthy_raises_nothing_but_what_the_brick_kill_explains(lab, tmp_path):
    """The no-false-alarm acceptance, live: every built-in detector, probes on, over the
    busy-healthy workload (see tests/test_busy_healthy.py for what is allowed and why)."""
    import json

    from tests.test_busy_healthy import SERIOUS, brick_kills, builtin_detector_ids, explained_by_kill
    need_probes()
    timeline = tmp_path / "t.jsonl"
    with lab_module.staged("busy-healthy") as scenario:
        pipe = LivePipeline(["--probe", "all"], timeline)
        try:
            pipe.wait_ready()
            result = scenario.trigger()
        finally:
            code = pipe.stop()
    assert result.reproduced, result.summary
    assert code == 0, "".join(pipe.stderr)
    events = [json.loads(line) for line in timeline.read_text().splitlines()]
    kills = brick_kills([e for e in events if e.get("kind") == "tcp.close"])
    assert any(dst.endswith(f":{result.details['killed_port']}") for dst, _ in kills)
    ours = builtin_detector_ids()
    serious = [ev for _, ev in pipe.lines if ev.get("kind") == "finding"
               and ev.get("detector") in ours and ev.get("severity") in SERIOUS]
    unexplained = [f for f in serious if not explained_by_kill(f, kills)]
    assert not unexplained, "\n".join(f"{f['detector']}: {f['title']}" for f in unexplained)
    assert any(e.get("layer") == "probe" for e in events)     # probes were really on
