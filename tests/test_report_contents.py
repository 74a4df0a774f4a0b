"""What a support engineer reads in a report, on the lab's real captures: a folded finding
shows the evidence of every repeat (the second brick of firewall-drop), the header counts
findings as the Findings section does and lists inputs only, remedies show commands as code,
and a report past its event cap keeps what the findings point at and the end of the incident."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from correlate.cli import main
from correlate.outputs.html import write_html

DROP = Path(__file__).parent / "captures" / "firewall-drop.pcap"


def timeline_events(*args) -> list[dict]:
    res = CliRunner().invoke(main, ["timeline", "--json", *map(str, args)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()[1:]]


def brick_ports(events) -> set[int]:
    return {e["result"]["port"] for e in events
            if e["kind"] == "rpc.reply" and e.get("procedure") == "PORTBYBRICK"}


def test_folded_finding_shows_every_brick_in_html(tmp_path):
    events = timeline_events(DROP)
    ports = brick_ports(events)
    assert len(ports) == 2
    out = tmp_path / "r.html"
    write_html(events, str(out))
    page = out.read_text()
    card = page[page.index('<h2 id="findings">'):page.index('<h2 id="timeline">')]
    for port in ports:
        assert f"127.0.0.2:{port}" in card, port
    assert "seen 2 times" in card
    header = page[page.index("<header>"):page.index("</header>")]
    findings_shown = int(re.search(r"Findings \((\d+)\)", page).group(1))
    assert f"findings: {findings_shown}" in header and findings_shown == 1
    assert "detector:" not in header and "firewall-drop.pcap" in header
    assert "<code>iptables -S | grep -E &#x27;DROP&#x27;</code>" in card
    assert "`" not in card.split("Remedy:")[1].split("</p>")[0]


@pytest.mark.skipif(not shutil.which("tshark"), reason="needs tshark to read the comments back")
def test_folded_finding_annotates_every_brick_in_pcapng(tmp_path):
    out = tmp_path / "a.pcapng"
    res = CliRunner().invoke(main, ["timeline", str(DROP), "--pcapng", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    rows = subprocess.run(["tshark", "-r", str(out), "-n", "-Y", "frame.comment", "-T", "fields",
                           "-e", "tcp.dstport", "-e", "frame.comment"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    commented_ports = {int(r.split("\t")[0]) for r in rows if r.split("\t")[0]}
    assert brick_ports(timeline_events(DROP)) <= commented_ports
    assert all("seen 2 times" in r for r in rows if "finding brick-unreachable" in r)


def test_capped_report_keeps_the_evidence_and_the_end(tmp_path):
    events = timeline_events(DROP)
    finding = next(e for e in events if e["kind"] == "finding")
    out = tmp_path / "r.html"
    counts = write_html(events, str(out), max_events=8)
    page = out.read_text()
    assert counts["left_out"] > 0
    assert re.search(r"\d+ events between .* were left out", page)
    card = page[page.index('<h2 id="findings">'):page.index('<h2 id="timeline">')]
    assert "not in the timeline below" not in card
    data = json.loads(re.search(r'id="timeline-data">(.*?)</script>', page).group(1))
    kinds = [r["kind"] for r in data["rows"]]
    last = max(events, key=lambda e: e["time_ns"])
    at_end = {r["kind"] for r in data["rows"] if r["t"] == data["t1"]}
    assert data["rows"][-1]["t"] == data["t1"] and last["kind"] in at_end    # the end is there
    timeouts = sum(e["kind"] == "tcp.timeout" for e in events)
    assert timeouts == 4 and sum(k == "tcp.timeout" for k in kinds) == timeouts   # both bricks
    assert len(finding["evidence"]) >= 4
