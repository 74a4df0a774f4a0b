"""app-latency: where a slow libgfapi call spent its time, across layers.

With probes on (`--probe io`, the libgfapi I/O calls below, each with its return), a glfs_*
call that took longer than a threshold is split into:
  - client before: from the call until its process sent the first RPC,
  - wire and brick: the union of the call-to-reply intervals of the RPCs that process sent
    while the call ran (the slowest named with its brick),
  - client between: time in the client between those RPCs,
  - client after: from the last reply until the call returned.
So a finding says "the brick took 200 ms of the 202 ms the application waited".

The io probes send a call and its return only when the call took at least the threshold
(or failed): a fast call costs the client no perf-buffer send. Their threshold follows
this detector's `after_s` (-o app-latency.after_s=...), capped at IO_SLOW_MAX_NS so a call
still running is sent live within the merge's reorder window (see bcc_backend).

RPCs are tied to the process by the pid in their credentials (Gluster puts the caller's
pid there); if threads of one process overlap in slow calls, each call is given the RPCs sent
while it ran.

FUSE callers (`--probe fuse`): a slow FUSE request the probes sent (`fuse.reply`, one that
took fuse-errors.slow_s or more) is split the same way, with the RPCs the shared state joins
to it (state.fuse: the FUSE client puts the requesting thread's id in the credentials): the
kernel and the FUSE client before the first RPC, between RPCs and after the last reply, and
the wire and the bricks. A failed request is fuse-errors' to report.
"""
from __future__ import annotations

from correlate import hookimpl
from correlate.detector import Detector, Option, Wants
from correlate.events import with_details
from correlate.outputs.profile_text import duration
from correlate.probe.catalog import Arg, ProbeSpec
from correlate.state import GlusterState

from .gluster_facts import GLUSTERFS_PROGRAM

DEFAULT_AFTER_NS = 100_000_000
# The io probes' slow_ns is the threshold, at most this: a slow call in progress is sent after
# slow_ns plus the collector's scan interval (50 ms), which must stay inside the live merge's
# reorder window (0.5 s) so the call comes before the RPCs it sent.
IO_SLOW_MAX_NS = 200_000_000
MAX_OPEN = 4096           # glfs calls in progress tracked
MAX_RPCS = 256            # RPCs kept per call in progress
GFAPI = "libgfapi.so.0"

# (function, arguments): the common data and metadata calls of libgfapi.
IO_FUNCTIONS = (
    ("glfs_pwrite", (Arg("fd", 1, "ptr"), Arg("count", 3, "int"))),
    ("glfs_write", (Arg("fd", 1, "ptr"), Arg("count", 3, "int"))),
    ("glfs_pread", (Arg("fd", 1, "ptr"), Arg("count", 3, "int"))),
    ("glfs_read", (Arg("fd", 1, "ptr"), Arg("count", 3, "int"))),
    ("glfs_fsync", (Arg("fd", 1, "ptr"),)),
    ("glfs_ftruncate", (Arg("fd", 1, "ptr"), Arg("length", 2, "int"))),
    ("glfs_creat", (Arg("path", 2, "str"),)),
    ("glfs_open", (Arg("path", 2, "str"),)),
    ("glfs_close", (Arg("fd", 1, "ptr"),)),
    ("glfs_stat", (Arg("path", 2, "str"),)),
    ("glfs_unlink", (Arg("path", 2, "str"),)),
    ("glfs_mkdir", (Arg("path", 2, "str"),)),
    ("glfs_posix_lock", (Arg("fd", 1, "ptr"), Arg("cmd", 2, "int"))),
)
RETVAL = {"glfs_creat": "ptr", "glfs_open": "ptr", "glfs_pwrite": "long", "glfs_write": "long",
          "glfs_pread": "long", "glfs_read": "long"}


def _union(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for lo, hi in sorted(intervals):
        if end is None or lo > end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total


class AppLatency(Detector):
    id = "app-latency"
    needs = frozenset({"probe"})   # the slow glfs call it splits is a probe event
    # The io probes, and the RPCs a process sends while one of its calls runs. A GlusterFS
    # call's credentials (its pid) are read only while some glfs call is in progress:
    # decoded then (with_details), so a run without probes decodes none of them.
    wants = Wants(kinds={"probe.call", "probe.return", "rpc.call", "rpc.reply", "fuse.reply"},
                  details=frozenset())

    options = {"after_s": Option(DEFAULT_AFTER_NS / 1e9, "seconds a glfs call must take to be "
                                                         "split across layers (the io probes "
                                                         "send only calls this slow, or failed)")}

    def __init__(self, after_ns: int = DEFAULT_AFTER_NS, state: GlusterState | None = None):
        self.settings = {"after_s": after_ns / 1e9}
        self.state = state if state is not None else GlusterState()   # brick names
        self.open: dict[tuple, dict] = {}        # (host, pid, tid, function) -> call in progress
        self.by_pid: dict[tuple, list[dict]] = {}   # (host, pid) -> calls in progress
        self.rpcs: dict[tuple, dict] = {}        # (source, conn, xid) -> rpc record

    @property
    def after_ns(self) -> int:
        return int(self.option("after_s") * 1e9)

    def observe(self, ev):
        kind = ev.get("kind")
        if kind == "probe.call" and str(ev.get("probe") or "").startswith("io."):
            self._start(ev)
        elif kind == "probe.return" and str(ev.get("probe") or "").startswith("io."):
            return self._end(ev)
        elif kind == "rpc.call":
            if ev.get("program_num") == GLUSTERFS_PROGRAM:
                self._rpc_call(ev)
        elif kind == "rpc.reply":
            rec = self.rpcs.pop((ev.get("source"), ev.get("conn"), ev.get("xid")), None)
            if rec is not None:
                rec["reply_ns"] = ev["time_ns"]
        elif kind == "fuse.reply" and not ev.get("errno") and isinstance(ev.get("latency_ns"), int) \
                and ev["latency_ns"] >= self.after_ns and isinstance(ev.get("call_time_ns"), int):
            return [self._split_fuse(ev)]
        return ()

    def _split_fuse(self, ev: dict) -> dict:
        """A slow FUSE request, split with the RPCs its thread sent while it ran."""
        join = self.state.fuse.join(ev)
        replies = {(r.get("source"), r.get("conn"), r.get("xid")): r["time_ns"] for r in join.replies}
        rpcs = [{"call": c, "call_ns": c["time_ns"],
                 "reply_ns": replies.get((c.get("source"), c.get("conn"), c.get("xid")))}
                for c in join.calls]
        what = (f"{ev['syscall']}() (FUSE {ev.get('opcode')})" if ev.get("syscall")
                else f"FUSE {ev.get('opcode')}")
        call = {"event": ev, "start_ns": ev["call_time_ns"], "rpcs": rpcs}
        return self._split(call, dict(ev, function=what), ev["latency_ns"],
                           where=f" on {join.path}" if join.path else "", who=join.program,
                           client="the kernel and the FUSE client")

    def _start(self, ev: dict) -> None:
        if len(self.open) >= MAX_OPEN:
            return
        call = {"event": ev, "start_ns": ev["time_ns"], "rpcs": []}
        self.open[(ev.get("host"), ev.get("pid"), ev.get("tid"), ev.get("function"))] = call
        self.by_pid.setdefault((ev.get("host"), ev.get("pid")), []).append(call)

    def _rpc_call(self, ev: dict) -> None:
        if not self.by_pid:
            return
        pid = (with_details(ev).get("cred") or {}).get("pid")
        if not pid:
            return
        calls = [c for (host, p), cs in self.by_pid.items() if p == pid for c in cs]
        if not calls:
            return
        rec = {"call": ev, "call_ns": ev["time_ns"], "reply_ns": None}
        self.rpcs[(ev.get("source"), ev.get("conn"), ev.get("xid"))] = rec
        if len(self.rpcs) > MAX_OPEN * 4:        # calls never answered: forget the oldest
            self.rpcs.pop(next(iter(self.rpcs)))
        for c in calls:
            if len(c["rpcs"]) < MAX_RPCS:
                c["rpcs"].append(rec)

    def _end(self, ret: dict):
        key = (ret.get("host"), ret.get("pid"), ret.get("tid"), ret.get("function"))
        call = self.open.pop(key, None)
        if call is None:
            return ()
        siblings = self.by_pid.get(key[:2], [])
        if call in siblings:
            siblings.remove(call)
        if not siblings:
            self.by_pid.pop(key[:2], None)
        total = ret["time_ns"] - call["start_ns"]
        if total < self.after_ns:
            return ()
        return [self._split(call, ret, total)]

    def _split(self, call: dict, ret: dict, total: int, where: str = "", who: str = "",
               client: str = "the client") -> dict:
        answered = [r for r in call["rpcs"] if r["reply_ns"] is not None and r["reply_ns"] <= ret["time_ns"]]
        fn = ret.get("function")
        who = who or f"{ret.get('comm')} pid {ret.get('pid')}"
        if not answered:
            parts = f"no RPC of this process was answered while it ran: the time was spent in {client}"
            evidence, brick_ns, slowest = [call["event"], ret], 0, None
        else:
            # an RPC seen up to the join's slack before the call began (two clocks: the
            # capture's and the probes') counts from the call's start, never before it
            spans = [(max(r["call_ns"], call["start_ns"]), r["reply_ns"]) for r in answered]
            first = min(start for start, _ in spans)
            last = max(r["reply_ns"] for r in answered)
            brick_ns = _union(spans)
            before, after = first - call["start_ns"], ret["time_ns"] - last
            between = max(0, total - before - after - brick_ns)
            slowest = max(answered, key=lambda r: r["reply_ns"] - r["call_ns"])
            s_call = slowest["call"]
            path = self.state.topology.brick(s_call.get("dst") or "")
            parts = (f"the wire and the bricks took {duration(brick_ns)} of the {duration(total)} "
                     f"({100 * brick_ns / total:.0f}%) over {len(answered)} RPCs, the slowest "
                     f"{s_call.get('procedure')} on {s_call.get('dst')}{' ' + path if path else ''} "
                     f"({duration(slowest['reply_ns'] - slowest['call_ns'])}); {client} took "
                     f"{duration(before)} before the first RPC, {duration(between)} between RPCs "
                     f"and {duration(after)} after the last reply")
            evidence = [call["event"], s_call, ret]
        return self.finding(
            ret["time_ns"], severity="info",
            title=f"{fn}{where} took {duration(total)} in {who}",
            explanation=f"{fn}{where} in {who} took {duration(total)}: {parts}.",
            remedy=("If the bricks took the time, see the slow-brick finding or `correlate "
                    "profile` for which brick and procedure; if the client did, look at its "
                    "translators (write-behind, caches) and its CPU."),
            evidence=evidence, key=f"{fn}:{ret.get('pid')}",
            function=fn, total_ns=total, brick_ns=brick_ns)


def io_slow_ns(options: dict | None) -> int:
    """The io probes' threshold: app-latency's, as configured for this run, at most
    IO_SLOW_MAX_NS (and at least 1 ns: after_s=0 asks for every call)."""
    after_s = ((options or {}).get(AppLatency.id) or {}).get("after_s")
    after_ns = DEFAULT_AFTER_NS if after_s is None else int(after_s * 1e9)
    return max(1, min(after_ns, IO_SLOW_MAX_NS))


@hookimpl
def correlate_probe_specs(options):
    slow_ns = io_slow_ns(options)
    return [ProbeSpec(f"io.{fn}", "io", GFAPI, fn, args, retprobe=True,
                      retval=RETVAL.get(fn, "int"), emit="slow", slow_ns=slow_ns,
                      description=f"{fn}: with its return, sent when it took "
                                  f"{slow_ns / 1e6:g} ms or more or failed, to split a slow "
                                  "call across layers")
            for fn, args in IO_FUNCTIONS]


@hookimpl
def correlate_detectors(config, state):
    return [AppLatency(after_ns=int(config.get("app_latency_after_ns", DEFAULT_AFTER_NS)), state=state)]
