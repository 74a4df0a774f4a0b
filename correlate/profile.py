"""A volume profile from the wire: per brick and procedure, what `gluster volume profile`
shows and more (calls, errors by errno, latency percentiles, bytes, calls in flight), and per
client on request.

Latencies go into DDSketch sketches (correlate.sketch, on the `ddsketch` package's mapping):
every quantile is within RELATIVE_ACCURACY of the true value, and a sketch holds at most
BIN_LIMIT buckets however many calls it sees, so memory does not grow with the capture. Max
and the sum are kept exactly.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from .events import with_details
from .gluster.programs import lookup
from .sketch import RELATIVE_ACCURACY, LatencyRow
from .state.topology import Topology
from .state.clients import UNKNOWN, Clients, special_actor

TOPOLOGY = Topology.PROCEDURES     # SETVOLUME among them: all the clients table reads

QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
# Up to this many latencies a row lists them instead of percentiles: with so few, p90 and p99
# are the max and p50 is one of them, so the percentiles pretend a distribution that is not
# there, while the latencies themselves fit in the four columns p50..max would take.
FEW = 4
MAX_KEYS = 100_000             # (server, client, procedure) rows; more are counted as dropped
GLUSTERD_PORTS = ("24007", "24008")


class ProcedureStats(LatencyRow):
    """A profile row: calls, replies by outcome, bytes, calls in flight, and the latencies
    (LatencyRow)."""
    __slots__ = ("calls", "errors", "total_ns", "bytes_read", "bytes_written", "in_flight",
                 "max_in_flight", "few")

    def __init__(self):
        super().__init__()
        self.calls = self.total_ns = 0
        self.bytes_read = self.bytes_written = self.in_flight = self.max_in_flight = 0
        self.errors: Counter = Counter()
        self.few: list[int] | None = []      # the latencies while there are at most FEW

    def call(self) -> None:
        self.calls += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def reply(self, ev: dict, matched: bool) -> None:
        if matched and self.in_flight > 0:
            self.in_flight -= 1
        latency = ev.get("latency_ns")
        if self.add(latency):
            if self.few is not None:
                self.few.append(latency)
                if len(self.few) > FEW:
                    self.few = None
            self.total_ns += latency
        error = reply_error(ev)
        if error:
            self.errors[error] += 1
            return
        op_ret = ev.get("op_ret")
        if isinstance(op_ret, int) and op_ret > 0:
            if ev.get("procedure") == "READ":
                self.bytes_read += op_ret
            elif ev.get("procedure") == "WRITE":
                self.bytes_written += op_ret

    def summary(self) -> dict:
        out = {"calls": self.calls, "replies": self.replies, "errors": dict(self.errors.most_common()),
               "max_ns": self.max_ns if self.sketch.count else None, "total_ns": self.total_ns,
               "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
               "max_in_flight": self.max_in_flight}
        for name, q in QUANTILES:
            out[f"{name}_ns"] = self.quantile(q)
        if self.few:
            out["latencies_ns"] = sorted(self.few)
        return out


def reply_error(ev: dict) -> str | None:
    """How a reply failed: errno name, a denial, or a non-SUCCESS accept status."""
    if ev.get("reply_status") == "denied":
        return f"DENIED {ev.get('reject_status') or ''}".strip()
    status = ev.get("accept_status")
    if status not in (None, "SUCCESS"):
        return str(status)
    if ev.get("op_ret") == -1:
        return ev.get("errno_name") or f"errno {ev.get('op_errno')}"
    return None


class Profile:
    """Feed it every event (`observe`); `snapshot()` is the profile so far as plain data.

    It reads the decoded arguments of DETAILS only (and a call's credential, decoded when
    its connection names no client): a capture decoded for it leaves the rest for later."""

    DETAILS = Topology.PROCEDURES | Clients.PROCEDURES

    def __init__(self, per_client: bool = False, topology: Topology | None = None):
        self.per_client = per_client
        self.topology = topology or Topology()
        self.clients = Clients()
        self._labels: OrderedDict[tuple, str] = OrderedDict()   # connection -> client name
        self.stats: dict[tuple[str, str, str], ProcedureStats] = {}
        self.pending: dict[tuple, Counter] = {}    # (source, conn) -> procedure -> calls out
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.dropped = 0

    def _row(self, server: str, client: str, proc: str) -> ProcedureStats | None:
        key = (server, client if self.per_client else "", proc)
        row = self.stats.get(key)
        if row is None:
            if len(self.stats) >= MAX_KEYS:
                self.dropped += 1
                return None
            row = self.stats[key] = ProcedureStats()
        return row

    def observe(self, ev: dict) -> None:
        kind = ev.get("kind")
        t = ev.get("time_ns")
        if isinstance(t, int) and ev.get("layer") == "wire":
            self.first_ns = t if self.first_ns is None else min(self.first_ns, t)
            self.last_ns = t if self.last_ns is None else max(self.last_ns, t)
        if kind == "rpc.call":
            if ev.get("procedure") in TOPOLOGY:
                self.topology.observe(ev)
                if ev.get("procedure") == "SETVOLUME":
                    self.clients.observe_setvolume(ev)
            if not _expects_reply(ev):
                return
            proc = _proc_name(ev)
            row = self._row(ev.get("dst") or "?", self._client(ev), proc)
            if row is not None:
                row.call()
                conn = self.pending.setdefault((ev.get("source"), ev.get("conn")), Counter())
                conn[proc] += 1
        elif kind == "rpc.reply":
            if ev.get("procedure") in TOPOLOGY:
                self.topology.observe(ev)
            proc = _proc_name(ev)
            row = self._row(ev.get("src") or "?", self._client(ev), proc)
            if row is None:
                return
            matched = ev.get("call_time_ns") is not None
            if matched:
                conn = self.pending.get((ev.get("source"), ev.get("conn")))
                if conn and conn[proc] > 0:
                    conn[proc] -= 1
                else:
                    matched = False
            row.reply(ev, matched)
        elif kind == "tcp.close":
            self._closed(ev)

    def _closed(self, ev: dict) -> None:
        """Calls still out on a closed connection will not be answered: not in flight now."""
        conn = self.pending.pop((ev.get("source"), ev.get("conn")), None)
        if not conn:
            return
        server = ev.get("dst") or "?"
        client = self._client({**ev, "kind": "rpc.call"})
        for proc, n in conn.items():
            row = self.stats.get((server, client if self.per_client else "", proc))
            if row is not None:
                row.in_flight = max(0, row.in_flight - n)

    def _client(self, ev: dict) -> str:
        """The client process of a call or reply's connection, named by role (`the self-heal
        daemon`, `gfapi qemu-img pid 7 on host`); without its SETVOLUME, a call's special
        credential pid names Gluster's daemons, and the connection keeps the name for its
        replies."""
        if not self.per_client:
            return ""
        key = (ev.get("source"), ev.get("conn"))
        if key in self._labels:
            return self._labels[key]
        process = self.clients.process(ev)
        actor = process.actor() if process is not None else None
        if actor is not None and actor.role != UNKNOWN:
            return actor.name
        # no SETVOLUME, or one without a process-name (Gluster's auxiliary FUSE mounts)
        if actor is None or ev.get("kind") == "rpc.call":
            ev = with_details(ev)       # the credential's pid names it
        special = special_actor((ev.get("cred") or {}).get("pid")) if ev.get("kind") == "rpc.call" else None
        if special is None:
            return actor.name if actor else self.topology.client_of(ev)
        self._labels[key] = special.name
        if len(self._labels) > MAX_KEYS:
            self._labels.popitem(last=False)
        return special.name

    def snapshot(self) -> dict:
        """The profile as JSON-able data: glusterd, then bricks by path, each with its
        procedures (and clients when per_client), slowest total latency first."""
        servers: dict[str, dict] = {}
        for (server, client, proc), row in self.stats.items():
            s = servers.setdefault(server, {"server": server, "brick": self._brick_name(server),
                                            "volume": self.topology.volume_of.get(server),
                                            "procedures": {}, "clients": {}})
            target = s["clients"].setdefault(client, {}) if self.per_client else s["procedures"]
            target[proc] = row.summary()
        out = []
        # glusterd first, then bricks by path (b1, b2, b3 as the volume lists them)
        for server in sorted(servers, key=lambda e: (servers[e]["brick"] != "glusterd",
                                                     servers[e]["brick"] or "\uffff",
                                                     _endpoint_order(e))):
            s = servers[server]
            if self.per_client:
                s["clients"] = [{"client": c, "procedures": _ordered(p)}
                                for c, p in sorted(s["clients"].items())]
                s["procedures"] = []
            else:
                s["procedures"] = _ordered(s["procedures"])
                del s["clients"]
            rows = s["procedures"] or [p for c in s.get("clients", []) for p in c["procedures"]]
            s["bytes_read"] = sum(p["bytes_read"] for p in rows)
            s["bytes_written"] = sum(p["bytes_written"] for p in rows)
            out.append(s)
        return {"kind": "profile", "from_ns": self.first_ns, "to_ns": self.last_ns,
                "relative_accuracy": RELATIVE_ACCURACY, "per_client": self.per_client,
                "dropped_rows": self.dropped, "bricks": out}

    def _brick_name(self, server: str) -> str | None:
        path = self.topology.brick(server)
        if path is None and server.rsplit(":", 1)[-1] in GLUSTERD_PORTS:
            return "glusterd"
        return path


def _proc_name(ev: dict) -> str:
    proc = ev.get("procedure")
    if proc:
        return str(proc)
    return f"{ev.get('program') or ev.get('program_num')}:{ev.get('procedure_num')}"


def _expects_reply(call: dict) -> bool:
    if not isinstance(call.get("program_num"), int):
        return True
    return lookup(call["program_num"], call.get("version") or 0,
                  call.get("procedure_num") or 0).expects_reply


def _ordered(procs: dict[str, dict]) -> list[dict]:
    """Procedures by share of the brick's total latency, like `gluster volume profile`."""
    total = sum(p["total_ns"] for p in procs.values()) or 1
    rows = [{"procedure": name, "latency_share": round(100.0 * p["total_ns"] / total, 2), **p}
            for name, p in procs.items()]
    return sorted(rows, key=lambda r: (-r["total_ns"], -r["calls"], r["procedure"]))


def _endpoint_order(endpoint: str):
    host, _, port = endpoint.rpartition(":")
    # isascii: str.isdigit() accepts "²", which int() refuses
    return (host, int(port) if port.isascii() and port.isdigit() else 0, endpoint)
