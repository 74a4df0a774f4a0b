"""What the report's charts draw, gathered while events stream past, in bounded memory.

- Latency over time per brick: every reply with a latency, folded into time buckets
  (chart_series), lock procedures left out (a lock's reply waits for the holder: that is
  the lock chart's subject, and it would hide the brick's own latency).
- Per brick and procedure, coarser, for the replica-peer chart: the same procedure on each
  brick of a replica set (GETSPEC's volfile, through the profile's Topology).
- Lock waits and holds per client (chart_locks).
- From the findings, at the end: a marker per finding on the charts of the bricks it
  concerns (its `server` field or its evidence's endpoints), a band for the time a brick did
  not answer (brick-down, brick-not-responding, rpc-unanswered), and the replies its evidence
  holds drawn as points even when they are not among a brick's slowest.

Times in the output are Unix seconds (floats, microsecond precision): the charts' x axis.
"""
from __future__ import annotations

from ..state.topology import Topology
from .chart_locks import LOCK_PROCEDURES, LockSpans
from .chart_series import Clock, Series

BRICK_BUCKETS = 200          # per brick: 200-400 time buckets
PROC_BUCKETS = 100           # per brick and procedure (replica-peer chart)
SLOWEST = 40                 # slowest replies kept as points, per brick
MAX_BRICKS = 24              # brick charts (the first servers seen)
MAX_PROC_SERIES = 256
MAX_EVIDENCE_POINTS = 200    # per brick
MAX_MARKS = 200              # finding markers per chart
MAX_SETS = 8                 # replica-peer charts
PEER_PROCEDURES = 3          # procedures offered per replica set
SILENCE_NS = 1_000_000_000   # no reply for longer breaks a latency line
# finding -> the brick did not answer from its field `since_ns` (or its first evidence call)
# to `back_ns`/`answered_ns` (or a later finding's, or the end of the input)
SILENT = {"brick-down", "brick-not-responding", "rpc-unanswered"}


def _list(value) -> list:
    """A finding's evidence, as a list whatever the input held."""
    return value if isinstance(value, list) else []


def _sec(ns: int) -> float:
    return round(ns / 1e9, 6)


def _ms(ns: int) -> float:
    return round(ns / 1e6, 4)


def _silences(mids: list[int], width: int) -> list[int]:
    """Where a line must break: after a bucket followed by no reply for over a second (and
    five buckets), so no line is drawn across the time a brick was silent."""
    gap = max(SILENCE_NS, 5 * width)
    return [a + width for a, b in zip(mids, mids[1:]) if b - a > gap]


class ChartData:
    def __init__(self, topology: Topology | None = None):
        self.topology = topology or Topology()
        self.clock = Clock(BRICK_BUCKETS)
        self.proc_clock = Clock(PROC_BUCKETS)
        self.bricks: dict[str, Series] = {}
        self.procs: dict[tuple[str, str], Series] = {}
        self.evidence: dict[str, list] = {}
        self.locks = LockSpans(self._client)
        self.dropped = 0

    def _client(self, call: dict) -> str:
        try:
            return self.topology.client_of(call)
        except TypeError:          # unhashable values from a hostile saved timeline
            return str(call.get("src"))

    def observe(self, ev: dict) -> None:
        """Every event; the profile's Topology has seen it already."""
        self.locks.observe(ev)
        if ev.get("kind") != "rpc.reply":
            return
        latency, t, server = ev.get("latency_ns"), ev.get("time_ns"), ev.get("src")
        proc = str(ev.get("procedure") or "?")
        if not (isinstance(latency, int) and latency >= 0 and isinstance(t, int) and isinstance(server, str)):
            return
        if proc in LOCK_PROCEDURES:
            return
        series = self.bricks.get(server)
        if series is None:
            if len(self.bricks) >= MAX_BRICKS:
                self.dropped += 1
                return
            series = self.bricks[server] = Series(self.clock, keep=SLOWEST)
        series.add(t, latency, proc)
        ps = self.procs.get((server, proc))
        if ps is None and len(self.procs) < MAX_PROC_SERIES:
            ps = self.procs[(server, proc)] = Series(self.proc_clock)
        if ps is not None:
            ps.add(t, latency)

    def finding(self, f: dict) -> None:
        """A finding (or its update) as it passes: its evidence replies become points."""
        evidence = [e for e in _list(f.get("evidence")) if isinstance(e, dict)]
        self.locks.pin(evidence)
        for e in evidence:
            lat, t, server = e.get("latency_ns"), e.get("time_ns"), e.get("src")
            if (e.get("kind") == "rpc.reply" and isinstance(lat, int) and lat >= 0 and isinstance(t, int)
                    and isinstance(server, str) and e.get("procedure") not in LOCK_PROCEDURES):
                points = self.evidence.setdefault(server, [])
                if len(points) < MAX_EVIDENCE_POINTS:
                    points.append((t, lat, f"{e.get('procedure')} (evidence of {f.get('detector')})"))

    # -- the page's data -------------------------------------------------------------------
    def data(self, findings: list[dict], updates: dict, end_ns: int) -> dict:
        order = sorted(self.bricks, key=lambda s: (self._name(s) != "glusterd", self._name(s), s))
        bands = self._bands(findings, updates, end_ns)
        return {"bricks": [self._brick(s, findings, bands.get(s, [])) for s in order],
                "peers": self._peers(findings),
                "locks": self._locks(findings, end_ns),
                "dropped_bricks": self.dropped}

    def _name(self, server: str) -> str:
        path = self.topology.brick(server)
        if path is None and server.rsplit(":", 1)[-1] in ("24007", "24008"):
            return "glusterd"
        return path or ""

    def _label(self, server: str) -> str:
        return f"{server} {self._name(server) or '(brick path not in the capture)'}"

    def _brick(self, server: str, findings: list[dict], bands: list) -> dict:
        rows: dict[float, dict] = {}
        points = self.bricks[server].points()
        for mid, n, lo, typ, hi in points:
            rows.setdefault(_sec(mid), {}).update(min=_ms(lo), typ=_ms(typ), max=_ms(hi), n=n)
        for mid in _silences([p[0] for p in points], self.clock.width):
            rows.setdefault(_sec(mid), {})["gap"] = True
        for lat, t, proc in self.bricks[server].slowest:
            rows.setdefault(_sec(t), {}).update(slow=_ms(lat), label=proc)
        for t, lat, label in self.evidence.get(server, []):
            rows.setdefault(_sec(t), {}).update(ev=_ms(lat), label=label)
        xs = sorted(rows)
        col = lambda k: [rows[x].get(k) for x in xs]      # noqa: E731
        # lines: 0 where a row holds only a point (the page skips it), null across a silence
        line = lambda k: [rows[x].get(k, None if rows[x].get("gap") else 0) for x in xs]  # noqa: E731
        return {"server": server, "name": self._label(server), "calls": self.bricks[server].calls,
                "x": xs, "min": line("min"), "typ": line("typ"), "max": line("max"), "n": col("n"),
                "slow": col("slow"), "ev": col("ev"), "label": [rows[x].get("label") or "" for x in xs],
                "bands": bands, "marks": self._marks(findings, server)}

    @staticmethod
    def _concerns(f: dict, server: str | None) -> bool:
        """Whether a finding is about this brick: its fields or its evidence's endpoints."""
        if server is None:
            return True
        if server in (f.get("server"), f.get("brick")):
            return True
        return any(isinstance(e, dict) and server in (e.get("src"), e.get("dst"))
                   for e in _list(f.get("evidence"))[:50])

    def _marks(self, findings: list[dict], server: str | None, detector: str | None = None) -> list:
        out = []
        for f in findings:
            if detector and f.get("detector") != detector:
                continue
            if isinstance(f.get("time_ns"), int) and self._concerns(f, server) and len(out) < MAX_MARKS:
                out.append([_sec(f["time_ns"]), str(f.get("severity") or "info"), str(f.get("title") or "")[:300]])
        return out

    def _bands(self, findings: list[dict], updates: dict, end_ns: int) -> dict[str, list]:
        out: dict[str, list] = {}
        recovered = {str(f.get("key") or "")[len("recovered:"):]: f.get("answered_ns") for f in findings
                     if str(f.get("key") or "").startswith("recovered:")}
        for f in findings:
            det, server = f.get("detector"), f.get("server")
            if det not in SILENT or not isinstance(server, str) or not isinstance(f.get("time_ns"), int):
                continue
            repeats = _list((updates.get(str(f.get("id"))) or {}).get("evidence"))
            calls = [e for e in [*_list(f.get("evidence")), *repeats] if isinstance(e, dict)
                     and e.get("kind") == "rpc.call" and isinstance(e.get("time_ns"), int)]
            since = f.get("since_ns")
            if not isinstance(since, int):
                since = calls[0]["time_ns"] if calls else None
            if since is None:
                continue
            until = next((v for v in (f.get("back_ns"), f.get("answered_ns"), recovered.get(server))
                          if isinstance(v, int) and v >= since), None)
            if until is None:
                until = f["time_ns"] if det == "rpc-unanswered" else end_ns
            what = {"brick-down": "brick down", "brick-not-responding": "not answering",
                    "rpc-unanswered": "call unanswered"}[det]
            band = out.setdefault(server, [])
            if len(band) < MAX_MARKS:
                band.append([_sec(since), _sec(max(until, since)), what])
            if det == "rpc-unanswered":      # each repeat's call waited as long at least
                for c in calls[1:MAX_MARKS]:
                    band.append([_sec(c["time_ns"]), _sec(c["time_ns"] + until - since), what])
        return out

    def _peers(self, findings: list[dict]) -> list[dict]:
        groups: dict[str, set] = {}      # how the set is known -> its endpoints with replies
        for server in sorted(self.bricks):
            peers, how = self.topology.peers(server)
            if how:   # a restarted brick's old and new ports both join its set
                groups.setdefault(how, set()).update([server, *[p for p in peers if p in self.bricks]])
        sets = []
        for how, group in list(groups.items())[:MAX_SETS]:
            members = sorted(group)
            if len(members) < 2:
                continue
            calls: dict[str, int] = {}
            for (s, proc), series in self.procs.items():
                if s in group:
                    calls[proc] = calls.get(proc, 0) + series.calls
            named = [f.get("procedure") for f in findings
                     if f.get("detector") == "slow-brick" and any(self._concerns(f, m) for m in members)]
            procs = [p for p in dict.fromkeys([*named, *sorted(calls, key=lambda p: -calls[p])])
                     if p in calls][:PEER_PROCEDURES]
            sets.append({"title": how if how.startswith("volfile") else
                         f"{how} (no volfile in the capture: its bricks, replicas or not)",
                         "procedures": procs, "charts": {p: self._peer_chart(members, p) for p in procs},
                         "marks": [m for mm in members for m in self._marks(findings, mm, "slow-brick")]})
        return sets

    def _peer_chart(self, members: list[str], proc: str) -> dict:
        rows: dict[float, dict] = {}
        for i, m in enumerate(members):
            s = self.procs.get((m, proc))
            points = s.points() if s else []
            for mid, _n, _lo, typ, _hi in points:
                rows.setdefault(_sec(mid), {})[i] = _ms(typ)
            for mid in _silences([p[0] for p in points], self.proc_clock.width):
                rows.setdefault(_sec(mid), {})[i] = None
        xs = sorted(rows)
        return {"x": xs, "series": [{"name": self._label(m), "typ": [rows[x].get(i, 0) for x in xs]}
                                    for i, m in enumerate(members)]}

    def _locks(self, findings: list[dict], end_ns: int) -> dict:
        spans = self.locks.spans(end_ns)
        wait_by_client: dict[str, int] = {}
        for s in spans:
            wait_by_client[s["client"]] = wait_by_client.get(s["client"], 0) + s["end"] - s["start"]
        lanes = sorted(wait_by_client, key=lambda c: -wait_by_client[c])[:30]
        lane = {c: i for i, c in enumerate(lanes)}
        return {"lanes": lanes,
                "spans": [[lane[s["client"]], _sec(s["start"]), _sec(s["end"]), s["what"],
                           f"{s['what']} {s['procedure']} gfid {s['gfid']} on {s['brick']}"
                           f"{' (' + s['result'] + ')' if s['result'] else ''}: "
                           f"{(s['end'] - s['start']) / 1e6:.3f} ms"]
                          for s in sorted(spans, key=lambda s: s["start"]) if s["client"] in lane],
                "marks": self._marks(findings, None, "lock-wait")}
