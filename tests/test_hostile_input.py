"""Hostile input past the capture decoder: saved timelines, Gluster logs, renderers and the
detector runtime, driven through the real commands on the lab's real captures and logs."""
from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.detector import Detector
from correlate.engine.detector_runner import DetectorRunner
from correlate.diagnostics import Diagnostics
from correlate.sources.logs import parse_timestamp, read_gluster_log
from correlate.outputs.pcapng_annotate import interface_block, section_header
from correlate.sources import open_input
from correlate.validate import MAX_TIME_NS, clean_event

CAPTURES = Path(__file__).parent / "captures"
LOGS = Path(__file__).parent / "logs"
AUTH = CAPTURES / "auth-rejected.pcap"
HEALTHY = CAPTURES / "healthy.pcap"
ESC = "\x1b]0;owned\x07\x1b[2J\x9b31m"
# What must never reach a terminal: C0/C1 controls but newline and tab.
RAW_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


def correlate(*args, stdin=subprocess.DEVNULL, timeout=180):
    return subprocess.run([sys.executable, "-m", "correlate", *map(str, args)], stdin=stdin,
                          capture_output=True, timeout=timeout)


def assert_clean(res, code=0):
    """Ran to its end: the exit code asked for, no traceback, nothing raw on the terminal."""
    err = res.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "Aborted!" not in err, err[-3000:]
    assert res.returncode == code, err[-3000:]
    for stream in (res.stdout, res.stderr):
        m = RAW_CONTROL.search(stream)
        assert m is None, stream[max(0, m.start() - 200):m.end() + 50]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A real timeline: the auth-rejected capture analyzed, findings included."""
    path = tmp_path_factory.mktemp("saved") / "auth.jsonl"
    res = correlate("analyze", AUTH, "--timeline", path)
    assert res.returncode == 0, res.stderr
    return path


def hostile_timeline(saved: Path, out: Path) -> Path:
    """The saved timeline with one hostile value per copied event, as the issue found them."""
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    values = [("kind", 5), ("layer", {"an": "object"}), ("latency_ns", "12"), ("severity", ["x"]),
              ("time_ns", 1e30), ("time_ns", 10 ** 30), ("src", "\ud800" + ESC), ("kind", ESC + "rpc.reply"),
              ("layer", ESC), ("level", ESC), ("dst", ESC), ("reject_status", ESC), ("auth_status", ESC),
              ("pid", ESC), ("detector", ESC), ("severity", ESC), ("message", "lone \udfff")]
    out_lines = [json.dumps(lines[0])]
    for i, ev in enumerate(lines[1:]):
        out_lines.append(json.dumps(ev))
        key, value = values[i % len(values)]
        out_lines.append(json.dumps({**ev, key: value}))
        if ev.get("layer") == "finding" and ev.get("evidence"):
            f = json.loads(json.dumps(ev))
            f["evidence"][0].update(kind=ESC, src={"x": 1}, level=ESC)
            f.update(detector=ESC, title=ESC + "\ud800", severity="error")
            out_lines.append(json.dumps(f))
    out_lines.append("[" * 2000 + "]" * 2000)
    out_lines.append('{"a":' * 2000 + "1" + "}" * 2000)
    out.write_text("\n".join(out_lines) + "\n")
    return out


RENDERINGS = [("timeline",), ("timeline", "--ladder"), ("timeline", "--json"), ("timeline", "--detect"),
              ("analyze",), ("analyze", "--events"), ("analyze", "--json", "--events")]


@pytest.mark.parametrize("command", RENDERINGS, ids=" ".join)
def test_hostile_timeline_values_render_everywhere(saved, tmp_path, command):
    hostile = hostile_timeline(saved, tmp_path / "hostile.jsonl")
    res = correlate(*command, hostile)
    assert_clean(res)
    err = res.stderr.decode()
    assert "line nested too deep to read" in err or "nested more than" in err
    assert "of the wrong type" in err and "lone surrogates" in err
    if command == ("timeline",):     # the untouched events are all kept
        originals = sum(1 for line in saved.read_text().splitlines()[1:])
        assert len(res.stdout.splitlines()) >= originals


def test_hostile_timeline_html_and_perfetto(saved, tmp_path):
    hostile = hostile_timeline(saved, tmp_path / "hostile.jsonl")
    page, trace = tmp_path / "r.html", tmp_path / "t.json"
    res = correlate("timeline", hostile, "--html", page, "--perfetto", trace)
    assert_clean(res)
    text = page.read_text(encoding="utf-8")          # written: no lone surrogate reached it
    assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text
    json.loads(trace.read_text(encoding="utf-8"))


def test_validation_clamps_and_skips():
    diag = Diagnostics("t")
    base = {"time_ns": 1, "layer": "wire", "kind": "rpc.reply", "source": "s"}
    assert clean_event({**base, "kind": 5}, diag) is None
    assert clean_event({**base, "time_ns": True}, diag) is None
    assert clean_event({**base, "time_ns": 10 ** 30}, diag)["time_ns"] == MAX_TIME_NS
    assert clean_event({**base, "time_ns": -5}, diag)["time_ns"] == 0
    ev = clean_event({**base, "latency_ns": "12", "xid": 2 ** 80, "args": {"p": "a\ud800"},
                      "x": float("nan"), "severity": ["x"]}, diag)
    assert "latency_ns" not in ev and ev["xid"] == 2 ** 64 - 1 and ev["args"]["p"] == "a\ufffd"
    assert ev["x"] is None and "severity" not in ev
    deep = base
    for _ in range(100):
        deep = {**base, "args": deep}
    assert clean_event(deep, diag) is None
    assert diag.counts["'latency_ns' of the wrong type (dropped)"] == 1


def test_deep_line_does_not_end_the_timeline(saved, tmp_path):
    lines = saved.read_text().splitlines()
    damaged = tmp_path / "deep.jsonl"
    damaged.write_text("\n".join([lines[0], "[" * 5000 + "]" * 5000, *lines[1:]]) + "\n")
    inp = open_input(str(damaged))
    assert len(list(inp.events)) == len(lines) - 1
    assert inp.diag.counts["line nested too deep to read"] == 1


def test_log_numbers_and_times_beyond_range(tmp_path):
    real = (LOGS / "glusterd.log").read_text().splitlines()
    entry = next(line for line in real if "[MSGID:" in line)
    ts = entry[1:entry.index("]")]
    huge = "9" * 5000
    bad = [entry.replace("[MSGID: ", f"[MSGID: {huge}", 1),
           re.sub(r"\.c:\d+:", f".c:{huge}:", entry, count=1),
           f'The message "{entry[len(ts) + 3:]}" repeated {huge} times between [{ts}] and [{ts}]',
           entry.replace(ts, "9999-12-31 23:59:59.000000 -2359", 1)]
    path = tmp_path / "damaged.log"
    path.write_text("\n".join([real[0], *bad, *real[1:]]) + "\n")
    diag = Diagnostics("damaged.log")
    events = list(read_gluster_log(str(path), "damaged.log", diag=diag))
    real_events = list(read_gluster_log(str(LOGS / "glusterd.log"), "glusterd.log"))
    # The repeat line and the year-10000 line are skipped and counted; the two others keep
    # their text as a level-less entry (as cmd_history.log lines are), numbers unparsed.
    assert diag.counts["unparseable log entry"] == 2
    assert len(events) == len(real_events) + 2
    kept = [e for e in events if huge in e["message"]]
    assert len(kept) == 2 and all(e["msgid"] is None and e["line"] is None for e in kept)
    assert parse_timestamp("9999-12-31 23:59:59 -2359") is None
    assert parse_timestamp("2262-01-01 00:00:00 +0000") is not None
    assert_clean(correlate("timeline", path))


class _ObjectIdentity(Detector):
    """Evidence whose identity fields hold objects (a third-party detector may do that)."""
    id = "object-identity"

    def observe(self, event):
        odd = {"time_ns": event["time_ns"], "layer": "wire", "kind": "rpc.call", "source": "s",
               "src": {"ip": "127.0.0.1"}, "xid": [event["time_ns"]]}
        return [self.finding(event["time_ns"], severity="info", title="t", explanation="e",
                             remedy="r", evidence=[odd], key="same")]


def test_unhashable_evidence_identity_is_folded():
    runner = DetectorRunner([_ObjectIdentity()])
    events = list(open_input(str(HEALTHY)).events)[:5]
    for ev in events:
        runner.observe(ev)
    (update,) = runner.finish()
    assert update["count"] == len(events) and len(update["evidence"]) == len(events) - 1
    assert not runner.disabled


def _pcapng_far_in_time(out: Path, seconds: int) -> Path:
    """healthy.pcap's packets as pcapng whose interface counts whole seconds (if_tsresol 0),
    stamped `seconds` after the epoch: year 292020 and beyond what 64 bits of ns hold."""
    from correlate.wire.capture import open_capture
    frames = list(open_capture(str(HEALTHY), Diagnostics("h")))
    idb = interface_block(frames[0].linktype)
    blocks = [section_header(), idb.replace(struct.pack("<HHB", 9, 1, 9), struct.pack("<HHB", 9, 1, 0))]
    for i, frame in enumerate(frames):
        t = seconds + i
        body = struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(frame.data), len(frame.data))
        body += frame.data + b"\0" * (-len(frame.data) % 4)
        blocks.append(struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body)))
    out.write_bytes(b"".join(blocks))
    return out


@pytest.mark.parametrize("seconds", [9_214_000_000_000, 2 ** 40 * 1000])
def test_far_timestamps_render(tmp_path, seconds):
    cap = _pcapng_far_in_time(tmp_path / "far.pcapng", seconds)
    decoded = correlate("decode", cap)
    assert_clean(decoded)
    assert len(decoded.stdout.splitlines()) == len(correlate("decode", HEALTHY).stdout.splitlines())
    assert_clean(correlate("timeline", cap, "--ladder"))
    res = correlate("timeline", cap, "--html", tmp_path / "r.html", "--pcapng", tmp_path / "a.pcapng",
                    "--perfetto", tmp_path / "t.json")
    assert_clean(res)
    assert b"packet times outside 1970..2262 (clamped)" in res.stderr
    assert len(list(open_input(str(tmp_path / "a.pcapng")).events)) > 0


def test_escape_sequences_never_reach_the_terminal(saved, tmp_path):
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    keys = ("kind", "layer", "level", "src", "dst", "reject_status", "auth_status", "severity",
            "detector", "title")
    out = [json.dumps(lines[0])]
    for ev in lines[1:]:
        out.append(json.dumps({**ev, **{k: ESC + k for k in keys if k in ev or ev["layer"] == "finding"},
                               "pid": 7 if "pid" not in ev else ev["pid"]}))
        if ev.get("evidence"):
            out.append(json.dumps({**ev, "evidence": [{**e, **{k: ESC for k in keys}} for e in ev["evidence"]]}))
    path = tmp_path / "esc.jsonl"
    path.write_text("\n".join(out) + "\n")
    for command in (("timeline",), ("timeline", "--ladder"), ("analyze",), ("analyze", "--events")):
        res = correlate(*command, path)
        assert_clean(res)


def test_gzip_cut_short_keeps_events_and_says_where(tmp_path):
    """Exit 2 (input cut), the events before the cut kept, the same words in every command,
    and an offset that exists (decompressed bytes: the capture's own size bounds it)."""
    data = gzip.compress(HEALTHY.read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(data[: len(data) // 2])
    decoded = correlate("decode", cut)
    assert_clean(decoded, code=2)
    kept = len(decoded.stdout.splitlines())
    assert kept > 0
    lines = set()
    for command in (("decode",), ("analyze", "--events"), ("timeline",), ("profile",)):
        res = correlate(*command, cut)
        assert_clean(res, code=2)
        line = re.search(rb"correlate: cut.pcap.gz: the gzip data is cut short or corrupt "
                         rb"\(after (\d+) bytes of decompressed data\)", res.stderr)
        assert line, res.stderr
        assert 0 < int(line.group(1)) < len(HEALTHY.read_bytes())
        lines.add(line.group(0))
        if command[0] != "profile":
            assert len(res.stdout.splitlines()) >= kept
    assert len(lines) == 1, lines


@pytest.mark.parametrize("command", ["decode", "analyze", "timeline"])
def test_closed_stdin(command):
    res = subprocess.run([sys.executable, "-m", "correlate", command, "-"], capture_output=True,
                         timeout=60, preexec_fn=lambda: os.close(0))     # as `<&-` in a shell
    assert_clean(res, code=2)
    assert b"stdin: standard input is closed" in res.stderr


def test_kuznetzov_pcap_is_a_capture_everywhere(tmp_path):
    """healthy.pcap rewritten in Kuznetzov's modified pcap (8 more bytes per record header)."""
    raw = HEALTHY.read_bytes()
    out = bytearray(struct.pack("<I", 0xA1B2CD34) + raw[4:24])
    pos = 24
    while pos + 16 <= len(raw):
        caplen = struct.unpack_from("<I", raw, pos + 8)[0]
        out += raw[pos:pos + 16] + struct.pack("<IHBB", 1, 0x0800, 0, 0) + raw[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
    kuz = tmp_path / "k.pcap"
    kuz.write_bytes(bytes(out))
    plain = correlate("decode", HEALTHY).stdout
    assert correlate("decode", kuz).stdout == plain
    res = correlate("analyze", "--events", kuz)
    assert_clean(res)
    assert len(res.stdout.splitlines()) == len(plain.splitlines())


def test_hostile_file_name_is_escaped(tmp_path):
    name = tmp_path / "evil\x1b]0;owned\x07.jsonl"
    name.write_bytes(b'{"time_ns": 1, "layer": "wire"}\n' + b"not json\n")
    res = correlate("analyze", name)
    assert_clean(res)
    assert b"\\x1b]0;owned\\x07.jsonl: skipped" in res.stderr
    bad = tmp_path / "evil\x1b[2J.bin"
    bad.write_bytes(b"\x00\x01 neither capture nor log")
    assert_clean(correlate("decode", bad), code=2)
