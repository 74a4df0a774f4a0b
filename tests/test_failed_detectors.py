"""A detector that did not run is said so in every rendering, and never moves the time axis.

A plugin registered in-process stands for a third-party one whose `correlate_detectors` hook
raises; the inputs are the lab's real captures."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from correlate import hookimpl
from correlate.cli import main
from correlate.plugin_manager import get_plugin_manager

AUTH = Path(__file__).parent / "captures" / "auth-rejected.pcap"


class _BrokenHook:
    @hookimpl
    def correlate_detectors(self):
        raise RuntimeError("cannot read my rules file")


@pytest.fixture
def broken_plugin():
    pm = get_plugin_manager()
    pm.register(_BrokenHook(), name="broken_hook")
    yield
    pm.unregister(name="broken_hook")


def invoke(*args, code=0):
    """`code` 4 where a plugin failed: reported, and the rest ran (correlate.exit_codes)."""
    res = CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)
    assert res.exit_code == code, (res.stdout, res.stderr)
    return res


def test_load_error_takes_the_first_event_time_and_shows_its_reason(broken_plugin, tmp_path):
    html, trace = tmp_path / "r.html", tmp_path / "t.json"
    res = invoke("timeline", AUTH, "--html", html, "--perfetto", trace, code=4)
    page = html.read_text()
    years = re.search(r'<div class="meta">(\d{4})-\d\d-\d\d [^&]* &ndash; (\d{4})', page)
    assert years and years.group(1) == years.group(2) != "1970", page[:2000]
    assert "DETECTOR DID NOT RUN" in page and "cannot read my rules file" in page

    events = json.loads(trace.read_text())["traceEvents"]
    stamps = [e["ts"] for e in events if "ts" in e]
    assert min(stamps) >= 0 and max(stamps) < 60e6, (min(stamps), max(stamps))   # µs

    text = invoke("timeline", AUTH, "--layer", "finding", code=4).stdout
    line = next(line for line in text.splitlines() if "detector.error" in line)
    assert "cannot read my rules file" in line and not line.startswith("00:00:00")

    out = invoke("analyze", "--json", AUTH, code=4).stdout
    for ev in map(json.loads, out.splitlines()):
        if ev.get("kind") == "detector.error":
            assert ev["time_ns"] > 10**18
            break


def test_saved_timeline_with_an_untimed_error_keeps_its_range(tmp_path):
    """Timelines written before errors were stamped hold a detector.error at time 0."""
    saved = tmp_path / "old.jsonl"
    res = invoke("timeline", "--json", AUTH)
    lines = res.stdout.splitlines()
    error = {"time_ns": 0, "layer": "finding", "kind": "detector.error", "source": "plugin:x",
             "detector": "x", "severity": "error", "title": "plugin x failed to load its detectors",
             "explanation": "RuntimeError: boom", "remedy": "report it"}
    saved.write_text("\n".join([lines[0], json.dumps(error), *lines[1:]]) + "\n")
    html, trace = tmp_path / "r.html", tmp_path / "t.json"
    invoke("timeline", saved, "--html", html, "--perfetto", trace)
    assert "1970" not in html.read_text().split("</header>")[0]
    assert "RuntimeError: boom" in html.read_text()
    stamps = [e["ts"] for e in json.loads(trace.read_text())["traceEvents"] if "ts" in e]
    assert min(stamps) >= 0 and max(stamps) < 60e6


class _Collecting:
    def __init__(self):
        self.findings = []

    @hookimpl
    def correlate_finding(self, finding):
        self.findings.append(finding)


def test_timeline_calls_correlate_finding_and_writes_plugin_outputs(tmp_path):
    """Like run and analyze: every new finding goes to the correlate_finding hook, and
    --output FORMAT=PATH writes a plugin's format (the built-in perfetto one here)."""
    collector = _Collecting()
    pm = get_plugin_manager()
    pm.register(collector, name="collecting")
    try:
        trace = tmp_path / "t.json"
        res = invoke("timeline", AUTH, "--output", f"perfetto={trace}", "-o", "rpc-unanswered.after_s=30")
    finally:
        pm.unregister(name="collecting")
    assert [f["detector"] for f in collector.findings].count("auth-rejected") >= 1
    assert "perfetto output written" in res.stderr
    assert any(e.get("ph") == "X" for e in json.loads(trace.read_text())["traceEvents"])
    bad = CliRunner().invoke(main, ["timeline", str(AUTH), "-o", "rpc-unanswered.nope=1"])
    assert bad.exit_code == 2 and "its options: after_s" in bad.stderr
