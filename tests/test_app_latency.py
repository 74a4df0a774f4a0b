"""app-latency on a real run: the slow-brick scenario with the `io` probes (bcc uprobes on
libgfapi) and tcpdump at once; each slow glfs_pwrite is split across the layers."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import lab as lab_module
from tests.lab.capture import record_with_probes

CORRELATE = [sys.executable, "-m", "correlate"]
CAPTURES = Path(__file__).parent / "captures"


def app_findings(*inputs):
    res = subprocess.run(CORRELATE + ["analyze", "--json", *map(str, inputs)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return [e for e in map(json.loads, res.stdout.splitlines())
            if e.get("kind") == "finding" and e.get("detector") == "app-latency"]


def check_split(found, pid):
    writes = [f for f in found if f["function"] == "glfs_pwrite"]
    assert writes, [f["title"] for f in found]
    f = writes[0]
    # The brick's 200 ms delay is most of what the application waited.
    assert 195_000_000 <= f["brick_ns"] <= f["total_ns"]
    assert f["total_ns"] - f["brick_ns"] < 20_000_000, f["explanation"]
    assert "WRITE on 127.0.0.2:" in f["explanation"] and "slowvol/b2" in f["explanation"]
    assert f"pid {pid}" in f["title"]
    assert {x["function"] for x in found} == {"glfs_pwrite"}   # fsync, creat: not slow


def test_committed_capture_and_probes():
    """tests/captures/slow-pwrite.pcap and .probes.jsonl: one real run, wire and probes."""
    found = app_findings(CAPTURES / "slow-pwrite.pcap", CAPTURES / "slow-pwrite.probes.jsonl")
    pid = json.loads((CAPTURES / "slow-pwrite.probes.jsonl").read_text().splitlines()[0])["pid"]
    check_split(found, pid)


def test_no_finding_without_probes():
    assert app_findings(CAPTURES / "slow-pwrite.pcap") == []


def test_slow_pwrite_is_split_across_layers(lab, tmp_path):
    if os.geteuid() != 0 or importlib.util.find_spec("bcc") is None:
        pytest.skip("needs root and bcc for the probes")
    capture, probes = tmp_path / "slow.pcap", tmp_path / "probes.jsonl"
    with lab_module.staged("slow-brick", seconds=3, mkdir_client=0) as scenario:
        result = record_with_probes(scenario, "io", capture, probes, lab_module.DEFAULT_FILTER)
    assert result.reproduced, result.summary
    check_split(app_findings(capture, probes), result.details["client"]["pid"])


def test_live_io_probes_send_only_slow_calls_and_split_one_longer_than_the_window(lab, tmp_path):
    """`tcpdump | correlate run --probe io --pcap -` while every WRITE waits 1 s on one brick:
    longer than the live merge's 0.5 s reorder window, so the pwrite's call must be sent
    while it runs (a call sent at its return would come after its WRITE and the split would
    find no RPC). The fast calls of the same client (creat, fsync, close) send nothing."""
    from tests.test_run_live import LivePipeline, need_probes
    need_probes()
    timeline = tmp_path / "t.jsonl"
    with lab_module.staged("slow-brick", seconds=3, delay_us=1_000_000, mkdir_client=0) as scenario:
        pipe = LivePipeline(["--probe", "io"], timeline)
        try:
            pipe.wait_ready()
            result = scenario.trigger()
            hit = pipe.wait_for(lambda ev: ev.get("detector") == "app-latency", timeout=20)
        finally:
            code = pipe.stop()
    assert result.reproduced, result.summary
    assert hit, "no app-latency finding; stderr:\n" + "".join(pipe.stderr)
    pid = result.details["client"]["pid"]
    found = [ev for _, ev in pipe.lines if ev.get("detector") == "app-latency"
             and ev.get("kind") == "finding"]
    assert {f["function"] for f in found} == {"glfs_pwrite"}
    f = found[0]
    assert 950_000_000 <= f["brick_ns"] <= f["total_ns"], f["explanation"]
    assert f["total_ns"] - f["brick_ns"] < 50_000_000, f["explanation"]
    assert "WRITE on 127.0.0.2:" in f["explanation"] and "slowvol/b2" in f["explanation"]
    assert f"pid {pid}" in f["title"]
    assert code == 0, "".join(pipe.stderr)
    saved = [json.loads(line) for line in timeline.read_text().splitlines()]
    io = [e for e in saved if str(e.get("probe", "")).startswith("io.") and e.get("pid") == pid]
    calls = [e for e in io if e["kind"] == "probe.call"]
    rets = [e for e in io if e["kind"] == "probe.return"]
    # only the slow pwrites, each call sent once and answered by its return
    assert {e["function"] for e in io} == {"glfs_pwrite"}, sorted({e["function"] for e in io})
    assert len(calls) == len(rets) == result.details["client"]["calls"] - result.details["client"]["calls"] // 5
    assert len({(c["tid"], c["time_ns"]) for c in calls}) == len(calls)
    assert all(r["duration_ns"] >= 950_000_000 for r in rets)
    for c, r in zip(calls, rets):
        assert r["time_ns"] - c["time_ns"] == r["duration_ns"]
