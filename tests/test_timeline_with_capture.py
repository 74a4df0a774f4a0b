"""The quickstart's after-the-fact flow on a real capture: a live run saved a timeline while
reading the capture from stdin; the timeline is rendered later, with the capture named too."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CORRELATE = [sys.executable, "-m", "correlate"]
DROP = Path(__file__).parent / "captures" / "firewall-drop.pcap"


@pytest.fixture(scope="module")
def incident(tmp_path_factory):
    """`tcpdump ... | tee incident.pcap | correlate run --pcap - --timeline incident.jsonl`"""
    d = tmp_path_factory.mktemp("incident")
    shutil.copy(DROP, d / "incident.pcap")
    with open(DROP, "rb") as stdin:
        subprocess.run(CORRELATE + ["run", "--pcap", "-", "--timeline", str(d / "incident.jsonl")],
                       stdin=stdin, capture_output=True, check=True, timeout=120)
    return d


def timeline(d, *args):
    return subprocess.run(CORRELATE + ["timeline", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=d)


def test_missing_capture_does_not_cancel_the_html(incident):
    """--pcapng without a capture among the inputs is the user's to fix (2, as any usage
    error), not an output that failed to be written (3); the other outputs are written."""
    res = timeline(incident, "incident.jsonl", "--html", "r.html", "--pcapng", "a.pcapng")
    assert res.returncode == 2 and "name the capture as well" in res.stderr, res.stderr
    assert "brick unreachable" in (incident / "r.html").read_text()
    assert not (incident / "a.pcapng").exists()


def test_timeline_and_its_capture_merge_without_duplicates(incident):
    alone = timeline(incident, "incident.jsonl", "--json")
    both = timeline(incident, "incident.jsonl", "incident.pcap", "--json", "--html", "r2.html",
                    "--pcapng", "a.pcapng")
    assert both.returncode == 0, both.stderr
    events = [json.loads(line) for line in both.stdout.splitlines()[1:]]
    assert len(events) == len(alone.stdout.splitlines()[1:])
    wire = [(e["kind"], e.get("conn"), e.get("xid"), e.get("frame")) for e in events if e["layer"] == "wire"]
    assert len(wire) == len(set(wire))
    assert "1 findings" in both.stderr or "findings)" in both.stderr
    if shutil.which("tshark"):
        out = subprocess.run(["tshark", "-r", str(incident / "a.pcapng"), "-n", "-Y", "frame.comment",
                              "-T", "fields", "-e", "frame.number"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
        finding = next(e for e in events if e["kind"] == "finding")
        assert {e["frame"] for e in finding["evidence"]} <= {int(n) for n in out}


def test_one_failing_output_does_not_cancel_the_others(incident):
    res = timeline(incident, "incident.pcap", "--perfetto", "no/such/dir/t.json", "--html", "r3.html",
                   "--pcapng", "a3.pcapng")
    assert res.returncode == 3 and "Perfetto trace" in res.stderr and "Traceback" not in res.stderr
    assert (incident / "r3.html").exists() and (incident / "a3.pcapng").exists()
