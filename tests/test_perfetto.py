"""Perfetto / Chrome trace-event output, checked against the trace-event format's structure."""
from __future__ import annotations

import json
import numbers

import pytest

from correlate.outputs.perfetto import write_perfetto

T0 = 1_700_000_000_000_000_000
HOSTILE = "<script>alert(1)</script>\u2028\x1b[31m"


def rpc(kind, t, conn, xid, proc, **kw):
    ev = {"time_ns": t, "layer": "wire", "kind": kind, "source": "c.pcap", "conn": conn, "xid": xid,
          "program": "GlusterFS", "procedure": proc, "src": "127.0.0.1:1000", "dst": "127.0.0.2:49152",
          "frame": xid}
    ev.update(kw)
    return ev


def sample_events():
    return [
        rpc("rpc.call", T0, 1, 1, "LOOKUP"),
        {"time_ns": T0 + 500, "layer": "probe", "kind": "probe.call", "source": "bcc", "function": "glfs_utimens",
         "library": "libgfapi.so.0", "pid": 4242, "tid": 4243, "comm": "smbd",
         "args": {"atime": -1, "atime_nsec": 0, "mtime": 5, "mtime_nsec": 0, "path": HOSTILE}},
        rpc("rpc.reply", T0 + 2_000, 1, 1, "LOOKUP", op_ret=0, call_time_ns=T0, latency_ns=2_000),
        rpc("rpc.call", T0 + 3_000, 2, 7, "SETATTR", args={"atime": -1}),
        rpc("rpc.call", T0 + 3_500, 1, 9, "STATFS"),   # never answered
        rpc("rpc.reply", T0 + 9_000, 2, 7, "SETATTR", op_ret=0, call_time_ns=T0 + 3_000, latency_ns=6_000),
        {"time_ns": T0 + 9_500, "layer": "wire", "kind": "tcp.refused", "source": "c.pcap", "conn": 3,
         "src": "127.0.0.1:1001", "dst": "127.0.0.2:49153", "host": "client1"},
        {"time_ns": T0 + 10_000, "layer": "log", "kind": "log.message", "source": "brick.log", "level": "E",
         "domain": "0-vol-server", "message": HOSTILE, "fields": {}},
        {"time_ns": T0 + 11_000, "layer": "finding", "kind": "finding", "source": "detector:atime-minus-one",
         "detector": "atime-minus-one", "severity": "error", "title": "atime -1 sent to the bricks " + HOSTILE,
         "explanation": "x", "remedy": "y", "evidence": [], "count": 1},
    ]


def check_trace_event_format(doc: dict) -> list[dict]:
    """The structure the trace-event format requires (JSON Object Format)."""
    assert isinstance(doc, dict) and isinstance(doc.get("traceEvents"), list)
    assert doc.get("displayTimeUnit") in (None, "ms", "ns")
    named_pids, named_threads = set(), set()
    for te in doc["traceEvents"]:
        assert isinstance(te, dict)
        ph = te.get("ph")
        assert ph in ("X", "i", "M"), te
        assert isinstance(te.get("name"), str) and te["name"], te
        assert isinstance(te.get("pid"), int) and isinstance(te.get("tid"), int), te
        if "args" in te:
            assert isinstance(te["args"], dict)
        if ph == "M":
            assert te["name"] in ("process_name", "thread_name", "process_sort_index", "thread_sort_index")
            if te["name"] == "process_name":
                named_pids.add(te["pid"])
                assert isinstance(te["args"]["name"], str)
            elif te["name"] == "thread_name":
                named_threads.add((te["pid"], te["tid"]))
                assert isinstance(te["args"]["name"], str)
            else:
                assert isinstance(te["args"]["sort_index"], int)
            continue
        assert isinstance(te.get("ts"), numbers.Real) and not isinstance(te["ts"], bool), te
        assert isinstance(te.get("cat", ""), str)
        if ph == "X":
            assert isinstance(te.get("dur"), numbers.Real) and te["dur"] >= 0, te
        if ph == "i":
            assert te.get("s", "t") in ("g", "p", "t"), te
    for te in doc["traceEvents"]:
        if te["ph"] != "M":
            assert te["pid"] in named_pids, te
            if te.get("s", "t") == "t":
                assert (te["pid"], te["tid"]) in named_threads, te
    return [te for te in doc["traceEvents"] if te["ph"] != "M"]


def test_structure_and_tracks(tmp_path):
    out = tmp_path / "trace.json"
    n = write_perfetto(sample_events(), str(out))
    raw = out.read_text()
    doc = json.loads(raw)
    assert len(doc["traceEvents"]) == n
    events = check_trace_event_format(doc)
    assert doc["otherData"]["start_time_ns"] == T0

    slices = [te for te in events if te["ph"] == "X"]
    assert sorted((s["name"], s["ts"], s["dur"]) for s in slices) == [
        ("GlusterFS LOOKUP", 0.0, 2.0), ("GlusterFS SETATTR", 3.0, 6.0)]
    lookup, setattr_ = sorted(slices, key=lambda s: s["ts"])
    # Same host, two connections: one process, two threads.
    assert lookup["pid"] == setattr_["pid"] and lookup["tid"] != setattr_["tid"]
    assert setattr_["args"]["call"]["args"] == {"atime": -1}
    assert setattr_["args"]["reply"]["op_ret"] == 0

    instants = {te["name"]: te for te in events if te["ph"] == "i"}
    assert "GlusterFS STATFS (no reply)" in instants
    assert instants["GlusterFS STATFS (no reply)"]["tid"] == lookup["tid"]   # conn 1's track
    probe = instants["glfs_utimens call"]
    assert probe["cat"] == "probe" and probe["args"]["args"]["path"] == HOSTILE
    assert probe["ts"] == 0.5
    refused = instants["tcp.refused"]
    assert refused["pid"] != lookup["pid"]    # another host: its own process
    finding = next(te for te in events if te["cat"] == "finding")
    assert finding["s"] == "p" and HOSTILE in finding["name"]
    log = next(te for te in events if te["cat"] == "log")
    pids = {te["pid"] for te in (probe, log, finding, lookup)}
    assert len(pids) == 4
    # Names of processes say what they are.
    names = {te["args"]["name"] for te in doc["traceEvents"] if te["name"] == "process_name"}
    assert {"findings", "wire c.pcap", "wire client1", "smbd pid 4242", "log brick.log"} <= names
    # Raw JSON never carries a literal line separator or an escape byte.
    assert "\u2028" not in raw and "\x1b" not in raw


def test_reply_without_its_call_and_empty_input(tmp_path):
    out = tmp_path / "t.json"
    write_perfetto([rpc("rpc.reply", T0, 1, 5, "STAT", op_ret=-1)], str(out))
    events = check_trace_event_format(json.loads(out.read_text()))
    assert [te["name"] for te in events] == ["GlusterFS STAT (reply only)"]
    write_perfetto([], str(out))
    assert check_trace_event_format(json.loads(out.read_text())) == []


def test_pending_calls_are_bounded(tmp_path, monkeypatch):
    import correlate.outputs.perfetto as perfetto
    monkeypatch.setattr(perfetto, "MAX_PENDING_CALLS", 10)
    calls = [rpc("rpc.call", T0 + i, 1, i, "LOOKUP") for i in range(50)]
    out = tmp_path / "t.json"
    write_perfetto(calls, str(out))
    events = check_trace_event_format(json.loads(out.read_text()))
    assert len(events) == 50 and all(te["name"].endswith("(no reply)") for te in events)


def test_huge_arguments_are_cut(tmp_path):
    ev = rpc("rpc.call", T0, 1, 1, "GETSPEC", args={"spec": "v" * 100_000})
    out = tmp_path / "t.json"
    write_perfetto([ev], str(out))
    assert out.stat().st_size < 10_000


@pytest.mark.parametrize("bad", [{"layer": "wire"}, {"time_ns": "x", "layer": "log"}])
def test_events_without_a_time_are_ignored(tmp_path, bad):
    out = tmp_path / "t.json"
    write_perfetto([bad], str(out))
    assert check_trace_event_format(json.loads(out.read_text())) == []


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=50), st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=20), st.integers(),
                                                                                 st.binary(max_size=10)), max_size=5))
def test_any_values_give_a_valid_trace(tmp_path_factory, text, args):
    out = tmp_path_factory.mktemp("p") / "t.json"
    events = [rpc("rpc.call", T0, 1, 1, text, args=args), rpc("rpc.reply", T0 + 5, 1, 1, text, call_time_ns=T0),
              {"time_ns": T0 + 6, "layer": "log", "kind": "log.message", "source": text, "domain": text,
               "message": text}]
    write_perfetto(events, str(out))
    check_trace_event_format(json.loads(out.read_text(encoding="utf-8")))


def _overlapping_slices(events: list[dict]) -> list[tuple]:
    """Complete slices on one thread that overlap without nesting: Perfetto drops those
    (slice_drop_overlapping_complete_event)."""
    bad, tracks = [], {}
    for te in events:
        if te["ph"] == "X":
            tracks.setdefault((te["pid"], te["tid"]), []).append((te["ts"], te["ts"] + te["dur"], te["name"]))
    for slices in tracks.values():
        open_ends: list[float] = []
        for start, end, name in sorted(slices, key=lambda s: (s[0], -s[1])):
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            if open_ends and end > open_ends[-1]:
                bad.append((start, end, name))
            open_ends.append(end)
    return bad


def test_overlapping_calls_all_show(tmp_path):
    """auth-rejected.pcap (real): the client sends calls before earlier replies come back;
    every answered call must be a slice Perfetto keeps."""
    from pathlib import Path
    from correlate.sources import open_input
    capture = Path(__file__).parent / "captures" / "auth-rejected.pcap"
    events = list(open_input(str(capture)).events)
    replies = [e for e in events if e["kind"] == "rpc.reply"]
    calls = {(e["conn"], e["xid"]) for e in events if e["kind"] == "rpc.call"}
    out = tmp_path / "t.json"
    write_perfetto(events, str(out))
    traced = check_trace_event_format(json.loads(out.read_text()))
    slices = [te for te in traced if te["ph"] == "X"]
    assert len(slices) == sum((r["conn"], r["xid"]) in calls for r in replies) >= 13
    assert _overlapping_slices(traced) == []
    # the capture does hold calls outstanding at once on one connection
    assert any("(lane 2)" in te["args"]["name"] for te in json.loads(out.read_text())["traceEvents"]
               if te["ph"] == "M" and te["name"] == "thread_name")
