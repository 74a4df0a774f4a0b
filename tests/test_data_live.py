"""Live: `tcpdump ... -w - | correlate run --probe all --pcap -` while the split-brain and
stale-handle scenarios run on the lab; the right findings arrive, and no other detector
raises a warning or worse."""
from __future__ import annotations

import pytest

from tests.lab import lab as lab_module
from tests.lab.live import LivePipeline
from tests.test_run_live import need_probes

SERIOUS = ("warning", "error", "critical")


def _live(scenario_name: str, wanted: set[str], tmp_path) -> tuple[list[dict], object]:
    need_probes()
    with lab_module.staged(scenario_name) as scenario:
        pipe = LivePipeline(["--probe", "all"], tmp_path / "timeline.jsonl")
        try:
            pipe.wait_ready()
            result = scenario.trigger()
            assert result.reproduced, result.summary
            for detector in sorted(wanted):
                assert pipe.wait_for(lambda ev: ev.get("detector") == detector, timeout=30), \
                    f"no {detector} finding; stderr:\n" + "".join(pipe.stderr)
        finally:
            pipe.stop()
    findings = [ev for _, ev in pipe.lines if ev.get("kind") == "finding"]
    serious = {f["detector"] for f in findings if f.get("severity") in SERIOUS}
    assert serious == wanted, [(f["detector"], f["title"]) for f in findings]
    return findings, result


@pytest.mark.lab
def test_live_split_brain_with_the_applications_eio(lab, tmp_path):
    findings, result = _live("split-brain", {"split-brain"}, tmp_path)
    f = next(f for f in findings if f["detector"] == "split-brain")
    assert f["path"] == result.details["path"] and f["volume"] == "sbvol"
    ret = next(e for e in f["evidence"] if e["kind"] == "probe.return")
    assert ret["pid"] == result.details["reader_pid"] and ret["errno_name"] == "EIO"
    assert "gluster volume heal sbvol split-brain" in f["remedy"]


@pytest.mark.lab
def test_live_stale_handle_and_the_lost_write(lab, tmp_path):
    findings, result = _live("stale-handle", {"stale-handle", "lost-write"}, tmp_path)
    pids = result.details["pids"]
    lost = next(f for f in findings if f["detector"] == "lost-write")
    assert lost["pid"] == pids["a"] and lost["path"] == "/stale-file" and lost["severity"] == "critical"
    stale = next(f for f in findings if f["detector"] == "stale-handle")
    assert f"pid {pids['a']}" in stale["title"] and f"pid {pids['b']}" in stale["explanation"]
