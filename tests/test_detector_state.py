"""State bounds past the decoder: the reorder buffer, the decoder's waiting calls over all
connections, and rpc-unanswered, which keeps the oldest waiting calls and says what it left
unchecked. The load shapes come from bench/detector_state.py (synthetic: they are loads, not
protocol corners); bench/detector_state.py measures time and memory at full size."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.engine import merge
from correlate.engine.detector_runner import DetectorRunner
from correlate.diagnostics import Diagnostics
from correlate.wire import rpc
from correlate.wire.decode import decode_capture
from correlate.state import GlusterState
from plugins import brick_not_responding, gluster_files, lost_write, rpc_unanswered

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("detector_state", ROOT / "bench" / "detector_state.py")
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)


def test_reorder_holds_a_dense_burst_only_up_to_its_bound():
    held = []

    def burst():
        for i in range(50_000):        # all within one window: nothing is late enough to leave
            held.append(i)
            yield {"time_ns": 1_000 + i}

    out = merge.reorder(burst(), window_ns=10**9, max_held=1000)
    first = next(out)
    assert first["time_ns"] == 1_000 and len(held) == 1001
    rest = [e["time_ns"] for e in out]
    assert rest == sorted(rest) and len(rest) == 49_999


def test_decoder_waiting_calls_are_bounded_over_all_connections(tmp_path, monkeypatch):
    cap = tmp_path / "calls.pcap"
    shapes.unanswered_calls(cap, n=6_000, conns=60)       # 100 calls waiting per connection
    cost = rpc.PENDING_COST + len(shapes._dump_call(1)) - 4     # a lean call holds its record
    budget = 1_000 * cost
    monkeypatch.setattr(rpc, "MAX_PENDING_BYTES", budget)
    diag = Diagnostics("calls.pcap")
    sinks = []
    real_sink = rpc.RpcSink

    def keep(*a, **kw):
        sinks.append(real_sink(*a, **kw))
        return sinks[-1]

    monkeypatch.setattr("correlate.wire.decode.RpcSink", keep)
    calls, waiting = 0, []
    for ev in decode_capture(str(cap), diag=diag, details=False, details_later=True):
        calls += ev["kind"] == "rpc.call"
        if calls == 6_000 and not waiting:      # the last call, before the end closes all
            waiting = [c for st in sinks[0]._conns.values() for c in st.pending.values()]
    assert calls == 6_000
    (sink,) = sinks
    assert sink._pending_bytes == 0            # every connection closed at the end
    assert {c.cost for c in waiting} == {cost}
    assert sum(c.cost for c in waiting) <= budget
    assert len(waiting) == 1_000      # the table stays at its limit
    assert diag.counts["rpc: unanswered call forgotten (pending table full)"] == 5_000


def test_rpc_unanswered_keeps_the_oldest_and_reports_the_rest(tmp_path, monkeypatch):
    cap = tmp_path / "calls.pcap"
    shapes.unanswered_calls(cap, n=3_000, conns=10, gap_ns=10_000_000)    # 30 s of calls
    monkeypatch.setattr(rpc_unanswered, "MAX_PENDING", 500)
    det = rpc_unanswered.RpcUnanswered()
    runner = DetectorRunner([det])
    found = []
    for ev in decode_capture(str(cap)):
        found += runner.observe(ev)
    found += runner.finish()
    # The first calls are kept, so the hang shows 10 s after the first of them.
    (first,) = [f for f in found if f["kind"] == "finding"]
    assert first["evidence"][0]["xid"] == 1
    assert "cred" in first["evidence"][0]     # kept: evidence is found by pid
    assert runner.drops == {"rpc-unanswered": {
        "calls not checked for a reply (500 were waiting already)": det.dropped}}
    assert det.dropped > 0


def test_analyze_says_what_detectors_dropped(tmp_path):
    cap = tmp_path / "calls.pcap"
    n = rpc_unanswered.MAX_PENDING + 5_000
    shapes.unanswered_calls(cap, n=n, conns=100, gap_ns=1_000)
    res = subprocess.run([sys.executable, "-m", "correlate", "analyze", str(cap)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert (f"correlate: detector rpc-unanswered: dropped 5000 x calls not checked for a reply "
            f"({rpc_unanswered.MAX_PENDING:,} were waiting already)") in res.stderr


def test_rpc_unanswered_forgets_a_closed_connections_calls_without_scanning_the_others():
    """20,000 calls wait on one connection while 20,000 others each send a call and close:
    each close forgets its own call (lost, not hung) and costs nothing per waiting call."""
    import time
    det = rpc_unanswered.RpcUnanswered()

    def call(t, conn, xid):
        return {"time_ns": t, "kind": "rpc.call", "conn": conn, "src": f"c{conn}", "dst": "b",
                "xid": xid, "program": "GlusterFS", "procedure": "WRITE"}

    for xid in range(rpc_unanswered.MAX_PENDING - 1):
        det.observe(call(1_000 + xid, "hung", xid))
    started = time.process_time()
    for conn in range(20_000):
        det.observe(call(2_000_000 + conn, conn, 1))
        det.observe({"time_ns": 2_000_001 + conn, "kind": "tcp.close", "conn": conn})
    spent = time.process_time() - started
    assert len(det.pending) == rpc_unanswered.MAX_PENDING - 1 and set(det.by_conn) == {"hung"}
    assert spent < 2.0, spent        # a scan of the waiting calls per close took minutes
    det.observe({"time_ns": 3_000_000, "kind": "rpc.reply", "conn": "hung", "dst": "chung", "xid": 5})
    det.observe({"time_ns": 3_000_001, "kind": "tcp.close", "conn": "hung"})
    assert not det.pending and not det.by_conn


def _lookup(t, conn, xid, bname="f"):
    return {"time_ns": t, "kind": "rpc.call", "conn": conn, "src": f"c{conn}", "dst": "127.0.0.2:49152",
            "xid": xid, "program": "GlusterFS", "program_num": 1298437, "version": 400,
            "procedure": "LOOKUP", "procedure_num": 27, "cred": {"pid": 7},
            "args": {"pargfid": gluster_files.ROOT_GFID, "bname": bname}}


def test_state_names_files_from_the_reply_and_forgets_the_answered_call():
    state = GlusterState()
    state.observe({**_lookup(1, 1, 5, "a"), "source": "s"})
    assert len(state.calls) == 1
    reply = {"time_ns": 2, "kind": "rpc.reply", "source": "s", "conn": 1, "xid": 5,
             "procedure": "LOOKUP", "op_ret": 0,
             "args": {"pargfid": gluster_files.ROOT_GFID, "bname": "a"},
             "result": {"prestat": {"ia_gfid": "g-a"}}}
    state.observe(reply)
    assert state.files.path("g-a") == "/a"
    assert not len(state.calls) and state.calls.call_of(reply)["xid"] == 5   # while handled


def test_state_calls_stay_at_their_limit_and_a_close_forgets_its_own(monkeypatch):
    state = GlusterState()
    state.calls.limit = 100
    for xid in range(250):
        state.observe({**_lookup(xid, xid % 2, xid), "source": "s", "procedure": "WRITE",
                       "procedure_num": 13})
    assert len(state.calls) == 100 and state.calls.dropped == 150
    assert [c["xid"] for c in state.calls.pending({"source": "s", "conn": 1})][:2] == [151, 153]
    close = {"time_ns": 300, "kind": "tcp.close", "source": "s", "conn": 1}
    state.observe(close)
    assert len(state.calls) == 50
    assert state.calls._by_conn.keys() == {("s", 0)}     # the index forgets the closed one
    # while the close is handled, what it left unanswered, in the order sent
    assert [c["xid"] for c in state.calls.pending(close)] == list(range(151, 250, 2))
    state.observe({**_lookup(301, 0, 999), "source": "s"})
    assert not state.calls.pending(close)
    runner = DetectorRunner([lost_write.LostWrite(state)])
    runner.finish()
    assert "shared state: dropped 150 x calls forgotten before their reply (table full)" \
        in runner.drop_lines()


def test_brick_connection_keeps_its_newest_calls_and_counts_the_rest():
    det = brick_not_responding.BrickNotResponding()
    limit = brick_not_responding.MAX_PENDING_PER_CONN
    for xid in range(limit + 30):
        det.observe(_lookup(1_000 + xid, 1, xid))
    (st,) = det.conns.values()
    assert len(st.pending) == limit and next(iter(st.pending)) == 30
    assert det.drops() == {f"calls forgotten on a busy connection ({limit} per connection were kept)": 30}
