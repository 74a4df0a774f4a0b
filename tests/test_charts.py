"""The report's size bound and its charts, on the lab's real captures, in headless Chromium:
the page loads without a console message, every chart is drawn with its series, a hung
brick's chart carries the finding markers and the band for the time it did not answer, a
lock wait is drawn per client, and text from the input stays text inside the charts too."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from correlate.cli import main
from correlate.outputs import charts_html
from correlate.outputs.chart_series import Clock, Series
from correlate.outputs.html import write_html
from tests.test_html import CHROMIUM, CHROMIUM_FLAGS, HOSTILE, T0, needs_chromium

CAPTURES = Path(__file__).parent / "captures"
VENDOR = Path(charts_html.__file__).parent / "vendor"
MAX_BYTES = 5_000_000


def timeline_events(*args) -> list[dict]:
    res = CliRunner().invoke(main, ["timeline", "--json", *map(str, args)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()[1:]]


def html_report(tmp_path, capture: str) -> Path:
    out = tmp_path / f"{capture}.html"
    res = CliRunner().invoke(main, ["timeline", str(CAPTURES / capture), "--html", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return out


def load(page: Path, tmp_path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and every console message it logged."""
    res = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout, [line for line in res.stderr.splitlines() if ":CONSOLE" in line]


def charts_in(dom: str) -> list[dict]:
    """Each chart box with its data-* attributes (set by the page's script as it draws)."""
    out = []
    for m in re.finditer(r'<div class="chart (\w+)"([^>]*)>', dom):
        attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', m.group(2)))
        out.append({"kind": m.group(1), **attrs})
    return out


def test_vendored_uplot_is_what_the_readme_says_and_safe_inline():
    readme = (VENDOR / "README.md").read_text()
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        data = (VENDOR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() in readme, name
        text = data.decode("ascii")
        assert "</script" not in text.lower() and "<!--" not in text
        assert not re.search(r"[^\x09\x0a\x0d\x20-\x7e]", text)
    assert "MIT" in (VENDOR / "uPlot.LICENSE").read_text()
    assert "Permission is hereby granted" in charts_html.JS      # the licence travels with it


def test_series_stay_bounded_and_exact():
    """An hour of replies, one every 10 ms: buckets stay within twice the target, and merging
    them keeps count, min and max exact."""
    clock = Clock(200)
    series = Series(clock, keep=5)
    lat = [1_000 + (i * 7919) % 50_000_000 for i in range(360_000)]
    for i, v in enumerate(lat):
        series.add(T0 + i * 10_000_000, v, "WRITE")
    points = series.points()
    assert 200 <= len(points) <= 400
    assert sum(p[1] for p in points) == len(lat) == series.calls
    assert min(p[2] for p in points) == min(lat) and max(p[4] for p in points) == max(lat)
    assert sorted(s[0] for s in series.slowest) == sorted(lat)[-5:]
    assert all(p[2] <= p[3] <= p[4] for p in points)


def test_report_of_the_biggest_capture_stays_small(tmp_path):
    """busy-healthy (4,251 events) made a 6.1 MB page before the bound."""
    page = html_report(tmp_path, "busy-healthy.pcap.gz")
    assert page.stat().st_size <= MAX_BYTES


def test_report_of_ten_busy_captures_in_a_row_stays_small(tmp_path):
    """42,500 events (busy-healthy ten times over, re-timed): 60 MB before the bound. Every
    event is still counted in the folded table and the page says where the rest is."""
    events = [e for e in timeline_events(CAPTURES / "busy-healthy.pcap.gz") if e["kind"] != "finding"]
    span = events[-1]["time_ns"] - events[0]["time_ns"] + 1_000_000_000

    def copies():
        for k in range(10):
            for e in events:
                yield {**e, "time_ns": e["time_ns"] + k * span, "conn": (e.get("conn") or 0) + 1000 * k}

    out = tmp_path / "big.html"
    counts = write_html(copies(), str(out))
    page = out.read_text()
    assert out.stat().st_size <= MAX_BYTES
    assert counts["left_out"] > 30_000
    assert "correlate timeline INPUT --json" in page
    fold = page[page.index('<h2 id="fold">'):page.index('<h2 id="timeline">')]
    assert sum(int(n) for n in re.findall(r'<td class="n">(\d+)</td>', fold)) == 10 * len(events)
    data = json.loads(re.search(r'id="timeline-data">(.*?)</script>', page, re.S).group(1))
    brick = max(data["charts"]["bricks"], key=lambda b: b["calls"])
    assert len(brick["x"]) <= 1000        # buckets and points, not one per reply


@needs_chromium
def test_console_messages_are_caught(tmp_path):
    """The harness itself: a page that throws shows up in the console lines."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>null.x;</script></body></html>")
    _dom, console = load(bad, tmp_path)
    assert any("Uncaught TypeError" in line for line in console)


@needs_chromium
def test_hung_brick_chart_has_markers_and_the_silent_band(tmp_path):
    events = timeline_events(CAPTURES / "brick-hang.pcap")
    hung = next(e for e in events if e["kind"] == "finding" and e["detector"] == "brick-not-responding")
    dom, console = load(html_report(tmp_path, "brick-hang.pcap"), tmp_path)
    assert console == []
    charts = charts_in(dom)
    latency = {c["server"]: c for c in charts if c["kind"] == "latency"}
    assert set(latency) == {"127.0.0.2:24007", "127.0.0.2:49204", "127.0.0.2:49226", "127.0.0.2:49169"}
    assert all(c["ready"] == "1" and c["series"] == "5" for c in latency.values())
    silent = latency[hung["server"]]
    assert int(silent["marks-drawn"]) == 2 and int(silent["bands-drawn"]) == 1   # hang, recovery
    assert all(c["marks-drawn"] == "0" and c["bands-drawn"] == "0"
               for s, c in latency.items() if s != hung["server"])
    # Drawn on a canvas of real size, inside the chart
    canvases = re.findall(r'<canvas width="(\d+)" height="(\d+)"', dom)
    assert len(canvases) >= len(charts) and all(int(w) > 300 and int(h) > 100 for w, h in canvases[:4])
    assert "not answering: 21:31:19.715 .. 21:31:29.630 UTC" in dom
    peers = [c for c in charts if c["kind"] == "peers"]
    assert len(peers) == 1 and peers[0]["series"] == "3"       # replica 3, from the volfile
    assert "volfile hangvol-replicate-0" in dom
    assert dom.count('data-charts="') == 1 and re.search(r'data-charts="(\d+)"', dom).group(1) == str(len(charts))


@needs_chromium
def test_lock_wait_drawn_per_client(tmp_path):
    events = timeline_events(CAPTURES / "lock-wait.pcap")
    finding = next(e for e in events if e["kind"] == "finding" and e["detector"] == "lock-wait")
    dom, console = load(html_report(tmp_path, "lock-wait.pcap"), tmp_path)
    assert console == []
    locks = [c for c in charts_in(dom) if c["kind"] == "locks"]
    assert len(locks) == 1
    lock = locks[0]
    assert lock["lanes"] == "2" and int(lock["spans-drawn"]) >= 2 and lock["marks-drawn"] == "1"
    # the waiter and the holder the finding names are the two lanes
    section = dom[dom.index('class="chart locks"'):]
    data = json.loads(re.search(r'id="timeline-data">(.*?)</script>', html_report(tmp_path, "lock-wait.pcap")
                                .read_text(), re.S).group(1))["charts"]["locks"]
    waits = [s for s in data["spans"] if s[3] == "wait" and s[2] - s[1] > 11]
    assert len(waits) == 1 and data["lanes"][waits[0][0]] in finding["waiter"]
    holds = [s for s in data["spans"] if s[3] == "hold" and s[2] - s[1] > 11]
    assert holds and data["lanes"][holds[0][0]] in finding["holder"]
    assert "lock wait: LK" in section


@needs_chromium
def test_chart_labels_from_the_input_are_text(tmp_path):
    """A brick path and a procedure name that are markup end up as text in titles, legends
    and marker lists: the DOM gains no element from them."""
    server, client = "127.0.0.2:49152", "127.0.0.1:1021"
    evil = f"/b{HOSTILE}<img src=x onerror=alert(2)>"
    events = [{"time_ns": T0, "layer": "wire", "kind": "rpc.call", "source": "c.pcap", "conn": 1, "xid": 1,
               "program": "GF-HNDSK", "procedure": "SETVOLUME", "src": client, "dst": server,
               "args": {"dict": {"remote-subvolume": evil, "volfile-key": "v"}}}]
    for i in range(50):
        t = T0 + (i + 1) * 20_000_000
        common = {"layer": "wire", "source": "c.pcap", "conn": 1, "xid": 10 + i, "procedure": f"W{HOSTILE}"}
        events += [{**common, "time_ns": t, "kind": "rpc.call", "src": client, "dst": server},
                   {**common, "time_ns": t + 500_000 + i * 10_000, "kind": "rpc.reply", "src": server,
                    "dst": client, "op_ret": 0, "call_time_ns": t, "latency_ns": 500_000 + i * 10_000}]
    events.append({"time_ns": T0 + 2_000_000_000, "layer": "finding", "kind": "finding", "source": "d",
                   "detector": "x", "severity": "warning", "title": f"slow {HOSTILE}", "server": server,
                   "evidence": [events[-1]]})
    out = tmp_path / "evil.html"
    write_html(events, str(out))
    dom, console = load(out, tmp_path)
    assert console == []
    assert "<img" not in dom and "<script>alert" not in dom
    assert len(re.findall(r"<script\b", dom)) == 2
    chart = [c for c in charts_in(dom) if c.get("server") == server][0]
    assert chart["series"] == "5" and chart["marks-drawn"] == "1"
    assert f"&lt;img src=x onerror=alert(2)&gt;" in dom


@needs_chromium
def test_profile_page_has_the_charts(tmp_path):
    out = tmp_path / "profile.html"
    res = subprocess.run([sys.executable, "-m", "correlate", "profile", str(CAPTURES / "slow-brick.pcap"),
                          "--html", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    dom, console = load(out, tmp_path)
    assert console == []
    charts = charts_in(dom)
    latency = [c for c in charts if c["kind"] == "latency"]
    assert len(latency) == 4 and all(c["series"] == "5" for c in latency)     # glusterd, 3 bricks
    assert [c["series"] for c in charts if c["kind"] == "peers"] == ["3"]
    assert dom.count('<svg class="latency"') == 4          # the percentile strips stay


@needs_chromium
def test_timeline_zoom_moves_every_chart(tmp_path):
    """One time axis: a range given to the timeline (here through the address) is the x range
    of every chart."""
    page = html_report(tmp_path, "brick-hang.pcap")
    t0_s = json.loads(re.search(r'id="timeline-data">(.*?)</script>', page.read_text(), re.S)
                      .group(1))["charts"]["t0_s"]
    whole, _ = load(page, tmp_path)
    ranges = {c["x-range"] for c in charts_in(whole) if c["kind"] == "latency"}
    assert len(ranges) == 1
    res = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", page.as_uri() + "#from=2000000000&to=4500000000"],
                         capture_output=True, text=True, timeout=120)
    zoomed = {c["x-range"] for c in charts_in(res.stdout) if c["kind"] == "latency"}
    assert zoomed == {f"{t0_s + 2:.6f}..{t0_s + 4.5:.6f}"} and zoomed != ranges


def test_brick_down_band_spans_the_finding(tmp_path):
    """brick-down: the band runs from the finding's since_ns to its back_ns, on that brick's
    chart only; the brick's new port after the restart gets the marker, not the band."""
    events = timeline_events(CAPTURES / "brick-down.pcap")
    down = next(e for e in events if e["kind"] == "finding" and e["detector"] == "brick-down")
    page = html_report(tmp_path, "brick-down.pcap").read_text()
    bricks = json.loads(re.search(r'id="timeline-data">(.*?)</script>', page, re.S).group(1))["charts"]["bricks"]
    banded = [b for b in bricks if b["bands"]]
    assert [b["server"] for b in banded] == [down["server"]]
    assert banded[0]["bands"] == [[round(down["since_ns"] / 1e9, 6), round(down["back_ns"] / 1e9, 6), "brick down"]]
    assert any(m[2] == down["title"] for m in banded[0]["marks"])
