"""HTML report: rendered in headless Chromium, findings linked to evidence, hostile text inert."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from correlate.outputs.html import script_json, write_html

T0 = 1_700_000_000_000_000_000
HOSTILE = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags from the machine notes: no sandbox as root, no background network traffic.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")


def scenario() -> list[dict]:
    """An auth failure as the three layers show it, with a hostile volume name in each."""
    vol = f"vol{HOSTILE}"
    call = {"time_ns": T0, "layer": "wire", "kind": "rpc.call", "source": "client.pcap", "host": "client1",
            "conn": 1, "xid": 2, "frame": 14, "program": "GF-HNDSK", "version": 2, "procedure": "SETVOLUME",
            "src": "127.0.0.1:1021", "dst": "127.0.0.2:49152", "args": {"remote-subvolume": vol}}
    reply = {"time_ns": T0 + 800_000, "layer": "wire", "kind": "rpc.reply", "source": "client.pcap",
             "host": "client1", "conn": 1, "xid": 2, "frame": 15, "program": "GF-HNDSK", "version": 2,
             "procedure": "SETVOLUME", "src": "127.0.0.2:49152", "dst": "127.0.0.1:1021", "op_ret": -1,
             "op_errno": 13, "errno_name": "EACCES", "call_time_ns": T0, "latency_ns": 800_000}
    log = {"time_ns": T0 + 900_000, "layer": "log", "kind": "log.message", "source": "client.log",
           "host": "client1", "level": "E", "msgid": 114044, "domain": f"0-{vol}-client-0",
           "message": "SETVOLUME on remote-host failed\u2028", "fields": {"remote-error": "Authentication failed"}}
    other = [{"time_ns": T0 + 1_000 * i, "layer": "probe", "kind": "probe.call", "source": "bcc", "host": "client1",
              "function": "glfs_init", "pid": 77, "tid": 77, "comm": "qemu-img", "args": {}} for i in range(3)]
    finding = {"time_ns": T0 + 1_000_000, "layer": "finding", "kind": "finding", "source": "detector:auth-rejected",
               "detector": "auth-rejected", "severity": "error", "id": "auth-rejected#1",
               "title": f"Brick refused the client for volume {vol}",
               "explanation": f"SETVOLUME answered op_errno 13 (EACCES) for {vol}.\nSecond line.",
               "remedy": "Check auth.allow / auth.reject on the volume.", "evidence": [call, reply, log],
               "count": 1}
    return sorted(other + [call, reply, log], key=lambda e: e["time_ns"]) + [finding]


def chromium(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_script_json_cannot_break_out():
    value = {"a": "</script><script>alert(1)</script>", "b": "x\u2028y\u2029z", "c": "<!-- &amp;"}
    text = script_json(value)
    assert "</" not in text and "<" not in text and ">" not in text and "&" not in text
    assert "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == value


def test_page_is_self_contained_and_escaped(tmp_path):
    out = tmp_path / "r.html"
    counts = write_html(scenario(), str(out), title=f"report {HOSTILE}")
    page = out.read_text()
    assert counts == {"events": 7, "left_out": 0, "findings": 1}
    # No script element but our two; nothing loaded from anywhere.
    assert len(re.findall(r"<script\b", page)) == 2
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "\u2028" not in page


def test_event_cap_says_what_was_left_out(tmp_path):
    events = [{"time_ns": T0 + i, "layer": "wire", "kind": "tcp.connect", "source": "c.pcap", "conn": i}
              for i in range(20)]
    out = tmp_path / "r.html"
    counts = write_html(events, str(out), max_events=5)
    assert counts["events"] == 5 and counts["left_out"] == 15
    assert re.search(r"15 events between \S+ \S+ UTC and \S+ \S+ UTC were left out", out.read_text())


@needs_chromium
def test_rendered_in_chromium(tmp_path):
    out = tmp_path / "report.html"
    write_html(scenario(), str(out), title=f"auth failure {HOSTILE}")
    result = chromium(["--dump-dom", out.as_uri()], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    # The page's script ran and rendered every timeline row (7 events).
    rows = re.findall(r'<tr id="(e\d+)" class="(\w+)"', dom)
    assert len(rows) == 7, rows
    assert "7 of 7 events shown" in dom
    # The finding is at the top, before the timeline, and links to each evidence row.
    assert dom.index("Brick refused the client") < dom.index('id="timeline"')
    finding = dom[dom.index('class="finding sev-error"'):dom.index('id="timeline"')]
    targets = re.findall(r'href="#(e\d+)"', finding)
    assert len(targets) == 3
    row_html = {rid: m for rid, m in re.findall(r'<tr id="(e\d+)"[^>]*>(.*?)</tr>', dom)}
    assert "SETVOLUME" in row_html[targets[0]] and "rpc.call" in row_html[targets[0]]
    assert "EACCES" in row_html[targets[1]]
    assert "SETVOLUME on remote-host failed" in row_html[targets[2]] and "log.message" in row_html[targets[2]]
    # Hostile text is text: escaped in the DOM, never an element.
    assert "<script>alert(1)" not in dom
    assert dom.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5
    assert len(re.findall(r"<script\b", dom)) == 2
    assert "\\u2028" in dom        # the line separator from the log is shown as an escape

    shot = tmp_path / "report.png"
    result = chromium([f"--screenshot={shot}", out.as_uri()], tmp_path)
    assert result.returncode == 0 and shot.stat().st_size > 10_000
    keep = os.environ.get("CORRELATE_SCREENSHOT_DIR")
    if keep:   # for looking at the page: CORRELATE_SCREENSHOT_DIR=/tmp pytest tests/test_html.py
        shutil.copy(shot, os.path.join(keep, "correlate-report.png"))


def visible_rows(dom: str) -> list[str]:
    """Ids of the timeline rows in the page (rows that do not match the filters are left out)."""
    return re.findall(r'<tr id="(e\d+)" class="[\w ]+"', dom)


@needs_chromium
def test_filters_and_zoom_from_the_address(tmp_path):
    """The page's own filtering code, driven through the address (#q=..., #layers=..., #from/to)."""
    out = tmp_path / "report.html"
    events = scenario()
    write_html(events, str(out))
    rows = [e for e in events]

    def dom(fragment: str) -> str:
        result = chromium(["--dump-dom", out.as_uri() + "#" + fragment], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    by_text = dom("q=eacces")
    assert visible_rows(by_text) == ["e5"] and "1 of 7 events shown" in by_text
    assert rows[4]["kind"] == "rpc.reply"
    by_layer = dom("layers=log,finding")
    assert visible_rows(by_layer) == ["e6", "e7"]
    # Zoom: 1 us .. 900 us after the first event holds two probe calls, the reply and the log.
    zoomed = dom("from=1000&to=900000")
    assert visible_rows(zoomed) == ["e3", "e4", "e5", "e6"]
    assert "zoomed" in zoomed
    # An evidence link target is highlighted.
    assert re.search(r'<tr id="e5" class="wire hl"', dom("e5"))


@needs_chromium
def test_large_report_pages_its_rows(tmp_path):
    """At most 2,000 rows are in the table at once; an evidence link still reaches row 2,400."""
    events = [{"time_ns": T0 + i * 1000, "layer": "wire", "kind": "tcp.connect", "source": "c.pcap",
               "conn": i, "src": "127.0.0.1:1", "dst": "127.0.0.2:2"} for i in range(2500)]
    events.append({"time_ns": T0 + 3_000_000, "layer": "finding", "kind": "finding", "source": "d",
                   "detector": "x", "severity": "warning", "title": "late one", "evidence": [events[2399]]})
    out = tmp_path / "big.html"
    write_html(events, str(out))
    result = chromium(["--dump-dom", out.as_uri()], tmp_path)
    assert len(visible_rows(result.stdout)) == 2000
    assert "2501 of 2501 events shown (first 2000 in the table)" in result.stdout
    assert "Show 501 more of 501 not shown" in result.stdout
    target = re.search(r'href="#(e\d+)"', result.stdout).group(1)
    assert target == "e2400"
    result = chromium(["--dump-dom", out.as_uri() + "#" + target], tmp_path)
    assert re.search(r'<tr id="e2400" class="wire hl"', result.stdout)


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_any_text_stays_inert(tmp_path_factory, message, title):
    out = tmp_path_factory.mktemp("h") / "r.html"
    log = {"time_ns": T0, "layer": "log", "kind": "log.message", "source": "l", "level": "E",
           "domain": "0-x", "message": message, "fields": {}}
    finding = {"time_ns": T0 + 1, "layer": "finding", "kind": "finding", "source": "d", "detector": "x",
               "severity": "error", "title": title, "explanation": message, "remedy": "", "evidence": [log]}
    write_html([log, finding], str(out), title=title)
    page = out.read_text()
    assert len(re.findall(r"<script\b", page, re.I)) == 2
    assert len(re.findall(r"</script", page, re.I)) == 2
    data = re.search(r'<script type="application/json" id="timeline-data">(.*?)</script>', page, re.S).group(1)
    rows = json.loads(data)["rows"]
    assert [r["kind"] for r in rows] == ["log.message", "finding"]
