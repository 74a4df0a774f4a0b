"""slow-brick: a brick whose latency for a procedure is far above its replica or disperse
peers' for the same procedure.

Peers come from the volfile in the GETSPEC reply (the replicate/disperse set the brick is in);
without it (capture started after the mount) the bricks of the same volume (SETVOLUME's
volfile-key) are compared. Without peers, the brick is compared with its own start: its first
BASELINE_CALLS calls of the procedure against the rest.

Latency is call to reply on the wire, kept in the profile's bounded sketches. The PING round
trip of the same brick tells a slow network (PING slow too) from a slow brick (PING fast).
Calls sent on a connection while a slow call was outstanding are named as queued behind it.
Lock procedures wait for other clients by design: they are not latency evidence (lock-wait
judges them).
"""
from __future__ import annotations

import statistics
from collections import Counter

from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.gluster.topology import Topology
from correlate.outputs.profile_text import duration
from correlate.profile import ProcedureStats

from .gluster_facts import GLUSTERFS_PROGRAM

LOCK_PROCEDURES = {"LK", "INODELK", "FINODELK", "ENTRYLK", "FENTRYLK"}
MIN_CALLS = 10                  # replies on the brick (and on each peer) before judging
FACTOR = 5.0                    # p50 at least this many times the peers' median p50
MIN_EXTRA_NS = 20_000_000       # ... and at least this much slower (sub-ms noise is not it)
BASELINE_CALLS = 20
CHECK_EVERY_NS = 30_000_000_000  # re-judge this often in capture time (live runs)
MAX_ROWS = 20_000
MAX_OUTSTANDING = 256           # calls remembered per connection for queueing


class SlowBrick(Detector):
    id = "slow-brick"
    # Latency, procedure and op_ret are there without details; the bricks' names and
    # replica sets (Topology) need them.
    wants = Wants(kinds={"rpc.call", "rpc.reply", "tcp.close"}, details=Topology.PROCEDURES)

    def __init__(self, factor: float = FACTOR, min_extra_ns: int = MIN_EXTRA_NS,
                 min_calls: int = MIN_CALLS):
        self.factor, self.min_extra_ns, self.min_calls = factor, min_extra_ns, min_calls
        self.topology = Topology()
        self.stats: dict[tuple[str, str], ProcedureStats] = {}     # (server, proc)
        self.baseline: dict[tuple[str, str], ProcedureStats] = {}  # first calls only
        self.pings: dict[str, ProcedureStats] = {}
        self.outstanding: dict[tuple, dict] = {}   # (source, conn) -> xid -> (proc, time)
        self.queued: dict[tuple[str, str], Counter] = {}   # (server, proc) -> procs behind it
        self.examples: dict[tuple[str, str], dict] = {}    # slowest reply seen
        self.next_check: int | None = None

    def observe(self, ev):
        kind = ev.get("kind")
        if kind not in ("rpc.call", "rpc.reply"):
            if kind == "tcp.close":
                self.outstanding.pop((ev.get("source"), ev.get("conn")), None)
            return ()
        self.topology.observe(ev)
        proc = ev.get("procedure")
        if kind == "rpc.call":
            if ev.get("program_num") == GLUSTERFS_PROGRAM and proc not in LOCK_PROCEDURES:
                self._queue(ev)
            return ()
        if proc == "PING":
            self._row(self.pings, ev.get("src"), ev)
        elif ev.get("program_num") == GLUSTERFS_PROGRAM and proc not in LOCK_PROCEDURES:
            self._reply(ev)
        t = ev["time_ns"]
        if self.next_check is None:
            self.next_check = t + CHECK_EVERY_NS
        elif t >= self.next_check:
            self.next_check = t + CHECK_EVERY_NS
            return self._judge(t)
        return ()

    def _row(self, table: dict, key, ev: dict) -> ProcedureStats | None:
        row = table.get(key)
        if row is None:
            if len(table) >= MAX_ROWS:
                return None
            row = table[key] = ProcedureStats()
        row.reply(ev, matched=False)
        return row

    def _queue(self, call: dict) -> None:
        """Note which earlier calls of the same connection were still outstanding."""
        conn = self.outstanding.setdefault((call.get("source"), call.get("conn")), {})
        server = call.get("dst")
        for proc in {proc for proc, _t in conn.values()}:
            self.queued.setdefault((server, proc), Counter())[call.get("procedure")] += 1
        if len(conn) < MAX_OUTSTANDING:
            conn[call.get("xid")] = (call.get("procedure"), call["time_ns"])

    def _reply(self, reply: dict) -> None:
        conn = self.outstanding.get((reply.get("source"), reply.get("conn")))
        if conn:
            conn.pop(reply.get("xid"), None)
        if reply.get("latency_ns") is None:
            return
        key = (reply.get("src"), reply.get("procedure"))
        base = self.baseline.get(key)
        if base is None or base.replies < BASELINE_CALLS:
            self._row(self.baseline, key, reply)
        row = self._row(self.stats, key, reply)
        if row is not None:
            best = self.examples.get(key)
            if best is None or reply["latency_ns"] > best["latency_ns"]:
                self.examples[key] = reply

    # -- judging -------------------------------------------------------------------------
    def _judge(self, now: int) -> list[dict]:
        found = []
        for (server, proc), row in list(self.stats.items()):
            if row.replies < self.min_calls:
                continue
            p50 = row.quantile(0.5)
            peers, how = self.topology.peers(server)
            peer_rows = [(p, self.stats.get((p, proc))) for p in peers]
            peer_rows = [(p, r) for p, r in peer_rows if r is not None and r.replies >= self.min_calls]
            if peer_rows:
                reference = statistics.median(r.quantile(0.5) for _p, r in peer_rows)
                against = "peers"
            else:
                base = self.baseline.get((server, proc))
                if base is None or row.replies < 2 * BASELINE_CALLS:
                    continue
                reference, against, how = base.quantile(0.5), "start", ""
            if self._slower(p50, reference):
                found.append(self._finding(now, server, proc, row, reference, against, how,
                                           peer_rows))
        return found

    def _slower(self, value: float, reference: float) -> bool:
        """Slower by the factor and by min_extra_ns: on loopback a PING of 0.5 ms against
        peers' 0.08 ms is the factor but says nothing of a 200 ms WRITE."""
        return value >= self.factor * max(reference, 1) and value - reference >= self.min_extra_ns

    def _finding(self, now, server, proc, row, reference, against, how, peer_rows) -> dict:
        p50 = row.quantile(0.5)
        path = self.topology.brick(server)
        brick = f"{server}" + (f" {path}" if path else "")
        base = self.baseline.get((server, proc))
        if against == "peers":
            peers_text = ", ".join(f"{p} {duration(r.quantile(0.5))}" for p, r in peer_rows)
            compared = (f"its peers in {how} ({peers_text}) take a median "
                        f"{duration(int(reference))}")
            if base is not None and base.replies >= BASELINE_CALLS:
                b50 = base.quantile(0.5)
                compared += ("; it was this slow from its first calls" if b50 >= reference * self.factor
                             else f"; its first {base.replies} calls took {duration(b50)}: it slowed down since")
        else:
            compared = f"its own first {BASELINE_CALLS} calls took a median {duration(int(reference))}"
        ping = self.pings.get(server)
        peer_pings = [self.pings[p].quantile(0.5) for p, _r in peer_rows if p in self.pings]
        if ping is None:
            network = "No PING to this brick in the capture to tell network from brick."
        elif peer_pings and self._slower(ping.quantile(0.5), statistics.median(peer_pings)):
            network = (f"Its PING round trip is slow too ({duration(ping.quantile(0.5))}): the "
                       "network path to it, not only the brick, is slow.")
        else:
            network = (f"Its PING round trip is {duration(ping.quantile(0.5))}"
                       + (f" (peers {', '.join(duration(v) for v in peer_pings)})" if peer_pings else "")
                       + ": the network is fast, the time is spent in the brick.")
        queued = self.queued.get((server, proc), Counter())
        behind = (f" {sum(queued.values())} calls ("
                  + ", ".join(f"{p} x{n}" for p, n in queued.most_common(5))
                  + f") were sent on the same connections while a slow {proc} was outstanding: "
                    "they queued behind it (head-of-line).") if queued else ""
        evidence = [self.examples[(server, proc)]] if (server, proc) in self.examples else []
        return self.finding(
            now, severity="warning",
            title=f"slow brick {brick}: {proc} median {duration(p50)}",
            explanation=(f"{proc} on brick {brick} takes a median {duration(p50)} (p90 "
                         f"{duration(row.quantile(0.9))}, max {duration(row.max_ns)}, "
                         f"{row.replies} replies) while {compared}. {network}{behind} In a "
                         "replicated volume every write waits for the slowest brick of its set."),
            remedy=("Look at that brick's host: its disk (`iostat -x`, a failing or busy "
                    "device), its load, debug translators left in its volfile (`gluster volume "
                    "info` for debug.delay-gen), and `gluster volume profile VOL info` on it."),
            evidence=evidence, key=f"{server}:{proc}", brick=brick, procedure=proc,
            p50_ns=p50, reference_ns=int(reference))

    def finish(self):
        if not self.stats:
            return ()
        return self._judge(max(e["time_ns"] for e in self.examples.values()) if self.examples else 0)


@hookimpl
def correlate_detectors(config):
    return [SlowBrick()]
