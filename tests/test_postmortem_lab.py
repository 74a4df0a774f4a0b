"""Post-mortem on a real atime-minus-one lab run: a capture and the probe output, merged by
`correlate timeline`, rendered as an annotated pcapng (read back by tshark) and an HTML report
(rendered by headless Chromium)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.lab import lab as lab_module
from tests.lab.capture import record_with_probes
from tests.test_html import CHROMIUM, chromium

CORRELATE = [sys.executable, "-m", "correlate"]


@pytest.fixture(scope="module")
def atime_run(lab, tmp_path_factory):
    """One real run: tcpdump to a file and `correlate probe --json` to another."""
    if os.geteuid() != 0 or importlib.util.find_spec("bcc") is None:
        pytest.skip("needs root and bcc for the probes")
    out = tmp_path_factory.mktemp("postmortem")
    capture, probes = out / "atime.pcap", out / "probes.jsonl"
    with lab_module.staged("atime-minus-one") as scenario:
        assert record_with_probes(scenario, "gfapi", capture, probes,
                                  lab_module.DEFAULT_FILTER).reproduced
    return capture, probes, out


def render(atime_run, *rendering):
    """`correlate timeline CAPTURE PROBES --detect <rendering>` must succeed."""
    capture, probes, _out = atime_run
    res = subprocess.run(CORRELATE + ["timeline", str(capture), str(probes), "--detect", *rendering],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_annotated_pcapng_names_the_finding_and_the_probe_event(atime_run):
    capture, probes, out = atime_run
    annotated = out / "annotated.pcapng"
    render(atime_run, "--pcapng", str(annotated))
    fields = subprocess.run(["tshark", "-n", "-r", str(annotated), "-Y", "frame.comment",
                             "-T", "fields", "-e", "frame.number", "-e", "frame.comment"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    commented = dict(line.split("\t", 1) for line in fields.splitlines())
    # Which frame is the SETATTR call? Our decoder names it; tshark 4.0 calls it malformed.
    decoded = subprocess.run(CORRELATE + ["decode", "--json", str(capture)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    setattr_frames = [str(e["frame"]) for e in map(json.loads, decoded.splitlines())
                      if e.get("procedure") == "SETATTR" and e["kind"] == "rpc.call"
                      and e["args"].get("atime") == -1]
    assert setattr_frames and setattr_frames[0] in commented, commented
    comment = commented[setattr_frames[0]]
    assert "atime-minus-one" in comment and "glfs_utimens" in comment


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_html_report_shows_the_finding_and_its_evidence(atime_run):
    out = atime_run[2]
    report = out / "report.html"
    render(atime_run, "--html", str(report))
    page = chromium(["--dump-dom", report.as_uri()], out)
    assert page.returncode == 0, page.stderr[-2000:]
    dom = page.stdout
    assert "atime -1 sent to the bricks in SETATTR" in dom
    finding = dom[dom.index('class="finding'):dom.index('id="timeline"')]
    assert "glfs_utimens" in finding and "SETATTR" in finding
    shot = out / "report.png"
    assert chromium([f"--screenshot={shot}", report.as_uri()], out).returncode == 0
    assert shot.stat().st_size > 10_000
