"""Lock waits and holds per client, for the report's lock chart, in bounded memory.

A wait is a lock request's call to its reply (INODELK, FINODELK, ENTRYLK, FENTRYLK, LK); a
hold runs from the reply granting a lock to the unlock call of the same owner (connection and
lk_owner) on the same brick, gfid and domain, or to the connection's close. Only the
`MAX_SPANS` longest waits and holds are kept (heaps), plus every wait a finding points at;
calls and locks in flight are bounded tables, oldest dropped first.

The lock commands are read here from the decoded args (glusterfs.h `glusterfs_lk_cmds_t`,
`entrylk_cmd`): this is rendering, not diagnosis, and the lock-wait detector keeps its own.
"""
from __future__ import annotations

import heapq

LOCK_PROCEDURES = frozenset({"LK", "INODELK", "FINODELK", "ENTRYLK", "FENTRYLK"})
_ENTRY = ("ENTRYLK", "FENTRYLK")
_GF_LK_UNLCK = 2            # flock type F_UNLCK
_ENTRYLK_UNLOCK = 1
_TAKES = (1, 2, 4)          # GF_LK_SETLK, GF_LK_SETLKW, GF_LK_RESLK_LCKW
_ENTRY_TAKES = (0, 2)       # ENTRYLK_LOCK, ENTRYLK_LOCK_NB
MAX_SPANS = 400             # longest waits, and longest holds, kept for the chart
MAX_PENDING = 20_000        # calls awaiting a reply, locks held


def _args(call: dict) -> dict:
    a = call.get("args")
    return a if isinstance(a, dict) else {}


def _unlock(call: dict) -> bool:
    if call.get("procedure") in _ENTRY:
        return _args(call).get("cmd") == _ENTRYLK_UNLOCK
    return _args(call).get("type") == _GF_LK_UNLCK


def _takes(call: dict) -> bool:
    cmd = _args(call).get("cmd")
    if call.get("procedure") in _ENTRY:
        return cmd in _ENTRY_TAKES
    return cmd in _TAKES and not _unlock(call)


def _owner(call: dict) -> tuple:
    flock = _args(call).get("flock")
    flock = flock if isinstance(flock, dict) else {}
    cred = call.get("cred") if isinstance(call.get("cred"), dict) else {}
    return (str(call.get("source")), str(call.get("conn")),
            str(flock.get("lk_owner") or cred.get("lk_owner") or ""))


def _resource(call: dict) -> tuple:
    a = _args(call)
    return (str(call.get("dst")), str(a.get("gfid")), str(a.get("volume") or ""),
            str(a.get("name") or "") if call.get("procedure") in _ENTRY else "")


def _key(ev: dict) -> tuple:
    """A call's identity as text: input values are not trusted to be hashable."""
    return (str(ev.get("source")), str(ev.get("conn")), str(ev.get("xid")))


def _put(table: dict, key, value) -> None:
    table.pop(key, None)
    table[key] = value
    if len(table) > MAX_PENDING:
        table.pop(next(iter(table)))


class LockSpans:
    def __init__(self, client_of):
        self.client_of = client_of            # call -> client label (Topology.client_of)
        self.calls: dict[tuple, dict] = {}    # (source, conn, xid) -> lock call
        self.held: dict[tuple, tuple] = {}    # (resource, owner) -> (grant ns, call)
        self.waits: list[tuple] = []          # min-heaps of (duration, start, end, n, span)
        self.holds: list[tuple] = []
        self.pinned: list[dict] = []          # waits a finding points at
        self.n = 0                            # tie-breaker: spans never compare as dicts
        self.last_ns = 0

    def observe(self, ev: dict) -> None:
        t = ev.get("time_ns")
        if not isinstance(t, int):
            return
        self.last_ns = max(self.last_ns, t)
        kind = ev.get("kind")
        if kind == "tcp.close":
            self._closed(ev, t)
            return
        if ev.get("procedure") not in LOCK_PROCEDURES:
            return
        key = _key(ev)
        if kind == "rpc.call":
            _put(self.calls, key, ev)
            if _unlock(ev):
                self._released(ev, t)
        elif kind == "rpc.reply":
            call = self.calls.pop(key, None)
            if call is None or not isinstance(call.get("time_ns"), int):
                return
            if not _unlock(call):
                self._keep(self.waits, self._span("wait", call, call["time_ns"], t, ev))
            if ev.get("op_ret") == 0 and _takes(call):
                _put(self.held, (_resource(call), _owner(call)), (t, call))

    def _span(self, what: str, call: dict, start: int, end: int, reply: dict | None = None) -> dict:
        a = _args(call)
        result = "" if reply is None else ("granted" if reply.get("op_ret") == 0 else
                                           str(reply.get("errno_name") or reply.get("op_errno")))
        return {"what": what, "client": self.client_of(call), "start": start, "end": end,
                "procedure": str(call.get("procedure")), "gfid": str(a.get("gfid") or ""),
                "brick": str(call.get("dst") or ""), "result": result,
                "key": _key(call)}

    def _keep(self, heap: list, span: dict) -> None:
        self.n += 1
        item = (span["end"] - span["start"], span["start"], self.n, span)
        if len(heap) < MAX_SPANS:
            heapq.heappush(heap, item)
        elif item[:3] > heap[0][:3]:
            heapq.heapreplace(heap, item)

    def _released(self, unlock: dict, t: int) -> None:
        res, owner = _resource(unlock), _owner(unlock)
        got = self.held.pop((res, owner), None)
        if got is not None:
            self._keep(self.holds, self._span("hold", got[1], got[0], t))

    def _closed(self, ev: dict, t: int) -> None:
        conn = (str(ev.get("source")), str(ev.get("conn")))
        for k in [k for k in self.held if k[1][:2] == conn]:
            grant, call = self.held.pop(k)
            self._keep(self.holds, self._span("hold", call, grant, t))

    def pin(self, evidence: list) -> None:
        """A finding's lock call and reply: its wait is drawn even if not among the longest."""
        calls = {_key(e): e for e in evidence
                 if isinstance(e, dict) and e.get("kind") == "rpc.call"
                 and e.get("procedure") in LOCK_PROCEDURES and isinstance(e.get("time_ns"), int)}
        for e in evidence:
            if not (isinstance(e, dict) and e.get("kind") == "rpc.reply"):
                continue
            call = calls.get(_key(e))
            if call is not None and isinstance(e.get("time_ns"), int) and len(self.pinned) < MAX_SPANS:
                self.pinned.append(self._span("wait", call, call["time_ns"], e["time_ns"], e))

    def spans(self, end_ns: int) -> list[dict]:
        """Kept waits and holds, plus waits still pending and locks still held at the end."""
        end_ns = max(end_ns, self.last_ns)
        out = [s for _d, _t, _n, s in self.waits + self.holds]
        for call in self.calls.values():
            if not _unlock(call) and isinstance(call.get("time_ns"), int) and len(out) < 3 * MAX_SPANS:
                out.append(dict(self._span("wait", call, call["time_ns"], end_ns), result="still waiting"))
        for grant, call in self.held.values():
            if len(out) < 4 * MAX_SPANS:
                out.append(dict(self._span("hold", call, grant, end_ns), result="still held"))
        seen = {(s["what"], s["key"]) for s in out}
        out += [s for s in self.pinned if ("wait", s["key"]) not in seen]
        return out
