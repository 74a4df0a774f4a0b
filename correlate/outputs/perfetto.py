"""A timeline as a Chrome trace-event JSON file, for ui.perfetto.dev or chrome://tracing.

Tracks:
  - one process per host (or input, when no host is known) for wire traffic, one thread per
    TCP connection; each RPC call with its reply is a complete slice ("X") from the call to
    the reply, calls never answered are instants marked "no reply", TCP events are instants.
    Complete slices on one thread must nest (Perfetto drops the others), so a call sent while
    earlier ones are outstanding goes on the connection's next free lane: a thread
    "conn N ... (lane K)" of its own;
  - one process per probed process (host, pid), one thread per tid; probe events are instants;
  - one process per log input, one thread per log domain; log entries are instants;
  - one "findings" process; each finding is an instant.

Timestamps are microseconds (float) since the first event; the absolute start is in
`otherData.start_time_ns`. Events are written as they come (only unanswered calls are held).
"""
from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable

MAX_PENDING_CALLS = 100_000     # calls waiting for their reply; the oldest become instants
MAX_ARG_CHARS = 2000            # a string argument longer than this is cut (volfiles...)
_SKIP_ARGS = {"time_ns", "layer", "kind", "evidence", "cred"}


def _bounded(value, depth: int = 0):
    """JSON-safe, bounded copy of an argument value."""
    if isinstance(value, str):
        return value if len(value) <= MAX_ARG_CHARS else value[:MAX_ARG_CHARS] + "..."
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, (bytes, bytearray)):
        return _bounded(bytes(value).hex())
    if depth > 3:
        return _bounded(str(value))
    if isinstance(value, dict):
        return {str(k): _bounded(v, depth + 1) for k, v in list(value.items())[:100]}
    if isinstance(value, (list, tuple, set)):
        return [_bounded(v, depth + 1) for v in list(value)[:100]]
    return _bounded(str(value))


def _args(ev: dict) -> dict:
    return {k: _bounded(v) for k, v in ev.items() if k not in _SKIP_ARGS}


class _Tracks:
    """Stable integer pid/tid for each named track, and the metadata events naming them."""

    def __init__(self):
        self.pids: dict[tuple, int] = {}
        self.tids: dict[tuple, int] = {}
        self.meta: list[dict] = []

    def pid(self, key: tuple, name: str, sort_index: int) -> int:
        if key not in self.pids:
            pid = self.pids[key] = len(self.pids) + 1
            self.meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                              "args": {"name": name}})
            self.meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                              "args": {"sort_index": sort_index}})
        return self.pids[key]

    def tid(self, pid: int, key: tuple, name: str) -> int:
        full = (pid,) + key
        if full not in self.tids:
            tid = self.tids[full] = sum(1 for k in self.tids if k[0] == pid) + 1
            self.meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                              "args": {"name": name}})
        return self.tids[full]


def _rpc_name(ev: dict) -> str:
    return f"{ev.get('program') or ev.get('program_num', '?')} {ev.get('procedure') or ev.get('procedure_num', '?')}"


class PerfettoWriter:
    """Streams trace events into an open text file."""

    def __init__(self, out):
        self.out = out
        self.tracks = _Tracks()
        self.base_ns: int | None = None
        self.pending: OrderedDict[tuple, dict] = OrderedDict()
        self.lanes: dict[tuple, set[int]] = {}    # connection -> lanes held by outstanding calls
        self.lane_of: dict[tuple, int] = {}       # call key -> its lane
        self.untimed: list[dict] = []   # time_ns 0: not from an input; shown at the start
        self.count = 0
        out.write('{"displayTimeUnit":"ns","traceEvents":[\n')

    def _us(self, time_ns: int) -> float:
        if self.base_ns is None:
            self.base_ns = time_ns
        return (time_ns - self.base_ns) / 1000.0

    def _emit(self, trace_event: dict) -> None:
        if self.count:
            self.out.write(",\n")
        self.out.write(json.dumps(trace_event, separators=(",", ":"), default=str))
        self.count += 1

    def _instant(self, ev: dict, pid: int, tid: int, name: str, cat: str, scope: str = "t") -> None:
        self._emit({"name": name, "cat": cat, "ph": "i", "s": scope, "ts": self._us(ev["time_ns"]),
                    "pid": pid, "tid": tid, "args": _args(ev)})

    def _conn_track(self, ev: dict, lane: int = 0) -> tuple[int, int]:
        who = ev.get("host") or ev.get("source", "?")
        pid = self.tracks.pid(("wire", who), f"wire {who}", 1)
        conn = ev.get("conn", 0)
        client, server = ev.get("src", ""), ev.get("dst", "")
        if ev.get("kind") == "rpc.reply":   # the track is named client <-> server either way
            client, server = server, client
        name = f"conn {conn} {client} <-> {server}" + (f" (lane {lane + 1})" if lane else "")
        tid = self.tracks.tid(pid, (ev.get("source"), conn, lane), name)
        return pid, tid

    def _take_lane(self, key: tuple) -> int:
        held = self.lanes.setdefault(key[:2], set())
        lane = next(i for i in range(len(held) + 1) if i not in held)
        held.add(lane)
        self.lane_of[key] = lane
        return lane

    def _free_lane(self, key: tuple) -> int:
        lane = self.lane_of.pop(key, 0)
        held = self.lanes.get(key[:2])
        if held is not None:
            held.discard(lane)
            if not held:
                del self.lanes[key[:2]]
        return lane

    def add(self, ev: dict) -> None:
        layer, kind = ev.get("layer"), str(ev.get("kind", ""))
        if not isinstance(ev.get("time_ns"), int):
            return
        if ev["time_ns"] <= 0:     # must not stretch the trace back to 1970
            if len(self.untimed) < 1000:
                self.untimed.append(ev)
            return
        self._us(min(ev["time_ns"], ev.get("call_time_ns") or ev["time_ns"]))  # fix the base early
        if layer == "wire":
            pid, tid = self._conn_track(ev)
            key = (ev.get("source"), ev.get("conn"), ev.get("xid"))
            if kind == "rpc.call":
                if key in self.pending:          # xid reused before its reply: the old one never got one
                    self._unanswered(self.pending.pop(key), key)
                self.pending[key] = ev
                self._take_lane(key)
                while len(self.pending) > MAX_PENDING_CALLS:
                    old_key, old = self.pending.popitem(last=False)
                    self._unanswered(old, old_key)
            elif kind == "rpc.reply":
                call = self.pending.pop(key, None)
                if call is not None:
                    pid, tid = self._conn_track(ev, self._free_lane(key))
                start = ev.get("call_time_ns") or (call or {}).get("time_ns")
                if start is None:
                    self._instant(ev, pid, tid, _rpc_name(ev) + " (reply only)", "rpc")
                    return
                args = {"call": _args(call) if call else None, "reply": _args(ev)}
                self._emit({"name": _rpc_name(ev), "cat": "rpc", "ph": "X", "ts": self._us(start),
                            "dur": max(0, ev["time_ns"] - start) / 1000.0,
                            "pid": pid, "tid": tid, "args": args})
            else:
                self._instant(ev, pid, tid, kind, "tcp" if kind.startswith("tcp.") else "wire")
        elif layer == "probe":
            host = ev.get("host") or ""
            pid = self.tracks.pid(("probe", host, ev.get("pid")),
                                  f"{ev.get('comm', '?')} pid {ev.get('pid')}" + (f" on {host}" if host else ""), 2)
            tid = self.tracks.tid(pid, (ev.get("tid"),), f"{ev.get('comm', '?')} tid {ev.get('tid')}")
            self._instant(ev, pid, tid, f"{ev.get('function', '?')} {kind.removeprefix('probe.')}", "probe")
        elif layer == "log":
            pid = self.tracks.pid(("log", ev.get("host"), ev.get("source")),
                                  f"log {ev.get('source')}" + (f" on {ev['host']}" if ev.get("host") else ""), 3)
            tid = self.tracks.tid(pid, (ev.get("domain"),), ev.get("domain") or "log")
            name = f"{ev.get('level') or '-'} {ev.get('message', '')}"
            self._instant(ev, pid, tid, name[:120], "log")
        elif layer == "finding":
            pid = self.tracks.pid(("finding",), "findings", 0)
            tid = self.tracks.tid(pid, (ev.get("detector"),), ev.get("detector") or "findings")
            if kind == "finding.update":    # a folded finding's final count
                name = f"{ev.get('title', kind)} (seen {ev.get('count')} times)"
            else:
                name = f"[{ev.get('severity', '?')}] {ev.get('title', kind)}"
            self._instant(ev, pid, tid, name[:200], "finding", scope="p")

    def _unanswered(self, call: dict, key: tuple) -> None:
        pid, tid = self._conn_track(call, self._free_lane(key))
        self._instant(call, pid, tid, _rpc_name(call) + " (no reply)", "rpc")

    def close(self) -> None:
        for key, call in list(self.pending.items()):
            self._unanswered(call, key)
        self.pending.clear()
        start = self.base_ns if self.base_ns is not None else 0
        for ev in self.untimed:
            self.add({**ev, "time_ns": max(start, 1)})
        self.untimed.clear()
        for meta in self.tracks.meta:
            self._emit(meta)
        other = {"start_time_ns": self.base_ns, "generator": "correlate"}
        self.out.write("\n],\"otherData\":" + json.dumps(other) + "}\n")


def write_perfetto(events: Iterable[dict], out_path: str) -> int:
    """Write the events as a Chrome trace-event JSON file; returns the number written."""
    with open(out_path, "w", encoding="utf-8") as out:
        writer = PerfettoWriter(out)
        for ev in events:
            writer.add(ev)
        writer.close()
        return writer.count
