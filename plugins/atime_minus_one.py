"""atime-minus-one: an access time of -1 travelling from Samba or an application, through
libgfapi, to the bricks (which store it: the file's atime becomes 1969-12-31 23:59:59).

Old Samba's vfs_glusterfs passed tv_sec = -1 for "leave the access time unchanged";
libgfapi takes it literally. The finding shows each layer's view of the times and names the
first layer where -1 appears.
"""
from __future__ import annotations

from collections import deque

from correlate import hookimpl
from correlate.detector import Detector, Wants

from .gluster_facts import (GF_SET_ATTR_ATIME, GFAPI_TIME_FUNCTIONS, SAMBA_TIME_FUNCTIONS,
                            time_is_minus_one)

PROBE_WINDOW_NS = 5_000_000_000   # a process call and the SETATTR it causes: same moment
REPLY_WAIT_NS = 2_000_000_000     # how long a wire call waits for its reply before reporting

REMEDY_SAMBA = (
    "Old Samba's vfs_glusterfs passes tv_sec = -1 for a time it should leave unchanged: "
    "upgrade Samba (current vfs_glusterfs uses tv_nsec = UTIME_OMIT). With a current Samba, "
    "the SMB client itself asked for 1969-12-31 23:59:59: look at the client that set the "
    "times. Repair affected files' access time with `touch -a` (the brick copy shows the "
    "damage: `stat` on the brick path).")
REMEDY_APP = (
    "Fix the application calling libgfapi: to leave a time unchanged pass tv_nsec = "
    "UTIME_OMIT, never tv_sec = -1. Repair affected files' access time with `touch -a`.")
REMEDY_BELOW = (
    "The process passed a valid time but the wire carried -1: the client stack below the "
    "libgfapi API (xlators) changed it. Capture the client's volfile (GETSPEC) and report it "
    "with this timeline to the Gluster developers.")
REMEDY_WIRE_ONLY = (
    "Run again with process probes (`correlate run --probe all --pcap -`) to see which "
    "process passed -1; the RPC credentials name its pid. If it is smbd, upgrade Samba "
    "(UTIME_OMIT); otherwise fix the libgfapi caller.")


def _is_time_call(ev: dict, names) -> bool:
    return ev.get("kind") == "probe.call" and ev.get("function") in names


class AtimeMinusOne(Detector):
    id = "atime-minus-one"
    wants = Wants(kinds={"probe.call", "rpc.call", "rpc.reply"},
                  procedures={"SETATTR", "FSETATTR"}, details={"SETATTR", "FSETATTR"})

    def __init__(self):
        self.recent_probes: deque[dict] = deque(maxlen=1024)   # time-setting probe calls
        self.pending: dict[tuple, tuple[dict, list[dict]]] = {}  # (conn, xid) -> call, probes
        self.unmatched_probes: deque[dict] = deque(maxlen=256)   # -1 seen only in a process

    def observe(self, ev):
        now = ev["time_ns"]
        kind = ev.get("kind")
        found = []
        if kind == "probe.call" and ev.get("function") in SAMBA_TIME_FUNCTIONS + GFAPI_TIME_FUNCTIONS:
            self.recent_probes.append(ev)
            args = ev.get("args") or {}
            if time_is_minus_one(args.get("atime"), args.get("atime_nsec")):
                self.unmatched_probes.append(ev)
        elif kind == "rpc.call" and ev.get("procedure") in ("SETATTR", "FSETATTR"):
            args = ev.get("args") or {}
            valid = args.get("valid") or 0
            if valid & GF_SET_ATTR_ATIME and time_is_minus_one(args.get("atime"), args.get("atime_nsec")):
                self.pending[(ev.get("conn"), ev.get("src"), ev.get("xid"))] = (ev, self._probes_before(ev))
        elif kind == "rpc.reply" and ev.get("procedure") in ("SETATTR", "FSETATTR"):
            entry = self.pending.pop((ev.get("conn"), ev.get("dst"), ev.get("xid")), None)
            if entry:
                found.append(self._report(now, entry[0], entry[1], ev))
        found.extend(self._expire(now))
        return found

    def finish(self):
        found = [self._report(call["time_ns"], call, probes, None)
                 for call, probes in self.pending.values()]
        self.pending.clear()
        found.extend(self._expire(None))
        return found

    def due(self) -> int | None:
        """When `_expire` next has work: a call's reply wait or a probe's window runs out."""
        times = [call["time_ns"] + REPLY_WAIT_NS + 1 for call, _ in self.pending.values()]
        if self.unmatched_probes:
            times.append(self.unmatched_probes[0]["time_ns"] + PROBE_WINDOW_NS + 1)
        return min(times, default=None)

    def tick(self, now: int):
        return self._expire(now)

    # -- helpers --------------------------------------------------------------------------

    def _probes_before(self, call: dict) -> list[dict]:
        """Process-layer calls that can have caused this SETATTR: within the window before it,
        the caller's pid preferred when the RPC credentials carry one."""
        t = call["time_ns"]
        near = [p for p in self.recent_probes if 0 <= t - p["time_ns"] <= PROBE_WINDOW_NS]
        pid = (call.get("cred") or {}).get("pid")
        same_pid = [p for p in near if p.get("pid") == pid]
        chosen = same_pid or near
        # Keep the last call of each function: the chain Samba -> libgfapi.
        by_function = {}
        for p in chosen:
            by_function[p.get("function")] = p
        used = set(map(id, by_function.values()))
        self.unmatched_probes = deque((p for p in self.unmatched_probes if id(p) not in used),
                                      maxlen=self.unmatched_probes.maxlen)
        return sorted(by_function.values(), key=lambda p: p["time_ns"])

    def _expire(self, now: int | None) -> list[dict]:
        found = []
        # Wire calls whose reply never came within the wait: report without it.
        if now is not None:
            for key, (call, probes) in list(self.pending.items()):
                if now - call["time_ns"] > REPLY_WAIT_NS:
                    del self.pending[key]
                    found.append(self._report(now, call, probes, None))
        # -1 seen in a process, no SETATTR followed (no capture, or it never reached a brick).
        # The calls of one process in the window are one chain (smbd -> libgfapi): one report.
        while self.unmatched_probes and (now is None or now - self.unmatched_probes[0]["time_ns"] > PROBE_WINDOW_NS):
            first = self.unmatched_probes.popleft()
            chain = [first] + [p for p in self.unmatched_probes if p.get("pid") == first.get("pid")
                               and p["time_ns"] - first["time_ns"] <= PROBE_WINDOW_NS]
            taken = set(map(id, chain))
            self.unmatched_probes = deque((p for p in self.unmatched_probes if id(p) not in taken),
                                          maxlen=self.unmatched_probes.maxlen)
            found.append(self._report(chain[-1]["time_ns"], None, chain, None))
        return found

    def _report(self, now: int, call: dict | None, probes: list[dict], reply: dict | None) -> dict:
        samba = [p for p in probes if p.get("function") in SAMBA_TIME_FUNCTIONS]
        gfapi = [p for p in probes if p.get("function") in GFAPI_TIME_FUNCTIONS]

        def minus_one(p):
            a = p.get("args") or {}
            return time_is_minus_one(a.get("atime"), a.get("atime_nsec"))

        chain = []
        for label, group in (("Samba vfs_glusterfs", samba), ("libgfapi", gfapi)):
            for p in group:
                a = p.get("args") or {}
                chain.append(f"{label}: {p.get('function')}(atime={a.get('atime')}, "
                             f"atime_nsec={a.get('atime_nsec')}) in {p.get('comm')} pid {p.get('pid')}")
        if call is not None:
            a = call.get("args") or {}
            chain.append(f"wire: {call.get('procedure')} {call.get('src')} -> {call.get('dst')} "
                         f"gfid {a.get('gfid')} atime={a.get('atime')}")
        if reply is not None:
            ok = reply.get("op_ret") == 0
            chain.append("brick: " + ("accepted (op_ret 0): the file's atime is now "
                                      "1969-12-31 23:59:59 UTC" if ok else
                                      f"refused (op_ret {reply.get('op_ret')}, {reply.get('errno_name')})"))

        if any(minus_one(p) for p in samba):
            layer, remedy = "samba", REMEDY_SAMBA
            origin = f"Samba's vfs_glusterfs ({samba[0].get('comm')} pid {samba[0].get('pid')}) passed atime -1 to libgfapi"
        elif any(minus_one(p) for p in gfapi):
            p = next(p for p in gfapi if minus_one(p))
            layer, remedy = "application", REMEDY_APP
            origin = f"{p.get('comm')} (pid {p.get('pid')}) called {p.get('function')} with atime -1"
        elif probes:
            layer, remedy = "libgfapi", REMEDY_BELOW
            origin = "the process passed a valid atime; -1 appeared below the libgfapi API"
        else:
            layer, remedy = "unknown", REMEDY_WIRE_ONLY
            pid = (call.get("cred") or {}).get("pid") if call else None
            origin = ("The process layer was not observed (no probes ran or none matched); "
                      f"the RPC came from {call.get('src') if call else '?'}"
                      + (f", credentials pid {pid}" if pid is not None else ""))
        if call is None:
            title = "atime -1 passed to a time-setting call (not seen on the wire)"
            explanation = (f"{origin}. No SETATTR with atime -1 followed on the captured wire: "
                           "no capture ran, or the call did not reach a brick.")
        else:
            title = "atime -1 sent to the bricks in " + str(call.get("procedure"))
            explanation = (f"{origin}. A tv_sec of -1 is not 'leave unchanged' (that is "
                           "tv_nsec = UTIME_OMIT): the bricks store it as the access time.")
        evidence = list(probes) + [e for e in (call, reply) if e is not None]
        return self.finding(now, severity="error", title=title, explanation=explanation,
                            remedy=remedy, evidence=evidence,
                            key=f"{layer}:{(probes[0].get('function') if probes else call.get('procedure'))}",
                            introduced_by=layer, chain=chain)


@hookimpl
def correlate_detectors(config):
    return [AtimeMinusOne()]
