"""slow-brick: a brick whose latency for a procedure is far above its replica or disperse
peers' for the same procedure.

Peers come from the volfile in the GETSPEC reply (the replicate/disperse set the brick is in);
without it (capture started after the mount) the bricks of the same volume (SETVOLUME's
volfile-key) are compared. Without peers, the brick is compared with its own start: its first
BASELINE_CALLS calls of the procedure against the rest.

Latency is call to reply on the wire, kept in bounded sketches (correlate.sketch). The PING round
trip of the same brick tells a slow network (PING slow too) from a slow brick (PING fast).

A slow call holds a brick thread (io-threads) or the connection, so other calls to the same
brick, from any client, wait behind it. Each call notes which procedures had calls in flight
on its brick when it was sent; the finding names the other procedures whose calls sent behind
the slow ones took longer than on the peers, with their count and delay. Such a procedure is
not reported as slow itself when its calls sent with nothing else in flight are fast.
Lock procedures wait for other clients by design: they are not latency evidence (lock-wait
judges them).
"""
from __future__ import annotations

import statistics

from correlate import hookimpl
from correlate.detector import Detector, Option, Wants
from correlate.outputs.profile_text import duration
from correlate.sketch import LatencyRow
from correlate.state import GlusterState

from .gluster_facts import GLUSTERFS_PROGRAM

LOCK_PROCEDURES = {"LK", "INODELK", "FINODELK", "ENTRYLK", "FENTRYLK"}
MIN_CALLS = 10                  # replies on the brick (and on each peer) before judging
FACTOR = 5.0                    # p50 at least this many times the peers' median p50
MIN_EXTRA_NS = 20_000_000       # ... and at least this much slower (sub-ms noise is not it)
BASELINE_CALLS = 20
CHECK_EVERY_NS = 30_000_000_000  # re-judge this often in capture time (live runs)
MAX_ROWS = 20_000
MAX_OUTSTANDING = 256           # calls remembered per connection for queueing
MAX_CONNECTIONS = 4096          # connections whose calls in flight are followed
MIN_QUEUED = 3                  # calls sent behind a slow procedure before naming them


class SlowBrick(Detector):
    id = "slow-brick"
    # Latency, procedure and op_ret are there without details; the bricks' names and
    # replica sets come from the shared state (state.topology).
    wants = Wants(kinds={"rpc.call", "rpc.reply", "tcp.close"}, details=frozenset())
    # A live run judges on this cadence; a short incident (or a demo) may want it sooner.
    options = {"check_every_s": Option(CHECK_EVERY_NS / 1e9, "seconds of capture time between "
                                                             "two judgements in a live run")}

    def __init__(self, factor: float = FACTOR, min_extra_ns: int = MIN_EXTRA_NS,
                 min_calls: int = MIN_CALLS, state: GlusterState | None = None):
        self.factor, self.min_extra_ns, self.min_calls = factor, min_extra_ns, min_calls
        self.state = state if state is not None else GlusterState()
        self.stats: dict[tuple[str, str], LatencyRow] = {}     # (server, proc)
        self.baseline: dict[tuple[str, str], LatencyRow] = {}  # first calls only
        self.pings: dict[str, LatencyRow] = {}
        # (source, conn) -> xid -> (server, proc, the procedures in flight when it was sent)
        self.outstanding: dict[tuple, dict] = {}
        # server -> procedure -> calls (a plain dict: Counter's own methods run as Python)
        self.in_flight: dict[str, dict[str, int]] = {}
        self.behind: dict[tuple[str, str, str], LatencyRow] = {}  # (server, ahead, proc)
        self.alone: dict[tuple[str, str], LatencyRow] = {}  # sent with nothing else in flight
        self.examples: dict[tuple[str, str], dict] = {}    # slowest reply seen
        self.next_check: int | None = None

    @property
    def check_every_ns(self) -> int:
        return int(self.option("check_every_s") * 1e9)

    def observe(self, ev):
        kind = ev.get("kind")
        if kind not in ("rpc.call", "rpc.reply"):
            if kind == "tcp.close":
                for server, proc, _ahead in self.outstanding.pop(
                        (ev.get("source"), ev.get("conn")), {}).values():
                    self._landed(server, proc)
            return ()
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
            self.next_check = t + self.check_every_ns
        elif t >= self.next_check:
            self.next_check = t + self.check_every_ns
            return self._judge(t)
        return ()

    def _row(self, table: dict, key, ev: dict) -> LatencyRow | None:
        row = table.get(key)
        if row is None:
            if len(table) >= MAX_ROWS:
                return None
            row = table[key] = LatencyRow()
        row.add(ev.get("latency_ns"))
        return row

    def _queue(self, call: dict) -> None:
        """Remember the call with the procedures in flight on its brick (any connection)."""
        key = (call.get("source"), call.get("conn"))
        conn = self.outstanding.get(key)
        if conn is None:
            if len(self.outstanding) >= MAX_CONNECTIONS:
                return
            conn = self.outstanding[key] = {}
        if len(conn) >= MAX_OUTSTANDING or call.get("xid") in conn:
            return
        server, proc = call.get("dst"), call.get("procedure")
        flying = self.in_flight.get(server)
        if flying is None:
            flying = self.in_flight[server] = {}
        conn[call.get("xid")] = (server, proc, tuple([p for p in flying if p != proc])
                                 if proc in flying else tuple(flying))
        flying[proc] = flying.get(proc, 0) + 1

    def _landed(self, server, proc) -> None:
        flying = self.in_flight.get(server)
        if flying is not None:
            left = flying.get(proc, 0) - 1
            if left <= 0:
                flying.pop(proc, None)
            else:
                flying[proc] = left

    def _reply(self, reply: dict) -> None:
        conn = self.outstanding.get((reply.get("source"), reply.get("conn")))
        sent = conn.pop(reply.get("xid"), None) if conn else None
        if sent is not None:
            self._landed(sent[0], sent[1])
        if reply.get("latency_ns") is None:
            return
        key = (reply.get("src"), reply.get("procedure"))
        if sent is not None and sent[:2] == key:
            if sent[2]:
                for ahead in sent[2]:
                    self._row(self.behind, (key[0], ahead, key[1]), reply)
            else:
                self._row(self.alone, key, reply)
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
        slow = {}       # (server, proc) -> (reference, against, how, peer_rows)
        for (server, proc), row in list(self.stats.items()):
            if row.replies < self.min_calls:
                continue
            p50 = row.quantile(0.5)
            if p50 is not None and p50 < self.min_extra_ns:
                continue    # not min_extra_ns above any reference (>= 0): skip the peers' median
            ref = self._reference(server, proc, self.min_calls)
            if ref is not None and self._slower(p50, ref[0]):
                slow[(server, proc)] = ref
        queued = {key: self._queued(*key) for key in slow}
        found = []
        for (server, proc), ref in slow.items():
            if not self._only_queued(server, proc, ref[0], slow, queued):
                found.append(self._finding(now, server, proc, self.stats[(server, proc)], *ref,
                                           queued[(server, proc)]))
        return found

    def _reference(self, server: str, proc: str, min_calls: int):
        """What the brick's `proc` latency is compared with: (median, 'peers' or 'start',
        how the peers are known, the peers' rows), or None when there is nothing to compare."""
        peers, how = self.state.topology.peers(server)
        peer_rows = [(p, self.stats.get((p, proc))) for p in peers]
        peer_rows = [(p, r) for p, r in peer_rows if r is not None and r.replies >= min_calls]
        if peer_rows:
            return statistics.median(r.quantile(0.5) for _p, r in peer_rows), "peers", how, peer_rows
        row, base = self.stats.get((server, proc)), self.baseline.get((server, proc))
        if row is None or base is None or row.replies < 2 * BASELINE_CALLS:
            return None
        return base.quantile(0.5), "start", "", []

    def _queued(self, server: str, ahead: str) -> list[dict]:
        """The other procedures whose calls sent while `ahead` calls were in flight on the
        brick took longer than on its peers (or than its own calls sent alone)."""
        out = []
        for (srv, first, proc), row in list(self.behind.items()):
            if srv != server or first != ahead or row.replies < MIN_QUEUED:
                continue
            ref = self._reference(server, proc, MIN_QUEUED)
            alone = self.alone.get((server, proc))
            if ref is None and alone is not None and alone.replies >= MIN_QUEUED:
                ref = (alone.quantile(0.5), "alone")
            if ref is not None and self._slower(row.quantile(0.5), ref[0]):
                out.append({"procedure": proc, "calls": row.replies, "p50_ns": row.quantile(0.5),
                            "max_ns": row.max_ns, "reference_ns": int(ref[0]),
                            "against": ref[1]})
        return sorted(out, key=lambda q: -q["calls"])

    def _only_queued(self, server, proc, reference, slow, queued) -> bool:
        """`proc` is slow only behind a slower procedure's calls: named in that finding
        instead of its own, unless its calls sent with nothing else in flight are slow too."""
        alone = self.alone.get((server, proc))
        if alone is not None and alone.replies >= MIN_QUEUED \
                and self._slower(alone.quantile(0.5), reference):
            return False
        p50 = self.stats[(server, proc)].quantile(0.5)
        return any(s == server and other != proc and self.stats[(s, other)].quantile(0.5) > p50
                   and any(q["procedure"] == proc for q in queued[(s, other)])
                   for s, other in slow)

    def _slower(self, value: float, reference: float) -> bool:
        """Slower by the factor and by min_extra_ns: on loopback a PING of 0.5 ms against
        peers' 0.08 ms is the factor but says nothing of a 200 ms WRITE."""
        return value >= self.factor * max(reference, 1) and value - reference >= self.min_extra_ns

    def _finding(self, now, server, proc, row, reference, against, how, peer_rows,
                 queued) -> dict:
        p50 = row.quantile(0.5)
        path = self.state.topology.brick(server)
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
        behind = ""
        if queued:
            named = ", ".join(
                f"{q['procedure']} x{q['calls']} a median {duration(q['p50_ns'])} (max "
                f"{duration(q['max_ns'])}; {'peers' if q['against'] == 'peers' else 'own start' if q['against'] == 'start' else 'sent alone'} "
                f"{duration(q['reference_ns'])})" for q in queued[:5])
            behind = (f" Calls of other procedures sent to this brick (by any client) while its "
                      f"slow {proc}s were in flight waited longer than elsewhere: {named}. They "
                      f"queued behind the {proc}s (the brick's io-threads or the connection): "
                      "every call to this brick is slowed, not only "
                      f"{proc}.")
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
            p50_ns=p50, reference_ns=int(reference), queued=queued)

    def finish(self):
        if not self.stats:
            return ()
        return self._judge(max(e["time_ns"] for e in self.examples.values()) if self.examples else 0)


@hookimpl
def correlate_detectors(state):
    return [SlowBrick(state=state)]
