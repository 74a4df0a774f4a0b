"""brick-down: a brick process that died (killed, crashed, stopped), told apart from a hung
one, with what its clients got meanwhile and when it was back.

A dead brick leaves marks a hung one does not: its side closes the client connections (the
kernel sends FIN or RST for a process that is gone), its own connection to glusterd closes,
glusterd's PORTBYBRICK answers op_ret -1 / port 0 for it (it signed out or vanished), and
connects to its old port are refused. A hung brick (brick-not-responding) keeps its
connections and its port: there the *client* gives up after network.ping-timeout. One
server-side close alone proves nothing (a brick may drop one client); it takes one of the
other marks to call the brick down. It is back when it signs in to glusterd again (SIGNIN,
or PORTBYBRICK naming a port) and the clients' new connections get their first reply.

What the clients got: the calls pending on a connection when it closed are failed by the
client with ENOTCONN; while the brick is down, a client makes ENOTCONN itself for every call
to it (nothing of that reaches the wire), so whether the *application* failed depends on
redundancy. The volfile (GETSPEC) tells it: a brick in no replica or disperse set holds the
only copy of its files. Probes (a libgfapi call returning ENOTCONN) and Gluster's logs, when
given, show it directly and are cited.

Severity, chosen so that deliberate restarts do not shout:
- error: an application is seen failing (ENOTCONN from a probe or on the wire), or the brick
  held the only copy of its files and calls were lost at the close or it stayed down
  BRIEF_S or longer (clients retry every 3 s: beyond that, I/O to its files failed);
- warning: redundancy unknown (no volfile in the capture) and down BRIEF_S or longer, or a
  replica/disperse member down LONG_S or longer (the set runs degraded, heals pile up);
- info: a brief restart of the only copy with nothing lost, or a redundant brick back soon.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.state import GlusterState

from .brick_logs import BrickLogs, brick_log_name
from .gluster_facts import BRICK_PORTS, clock, find_key, host_of, port_of

BRIEF_S = 5            # a restart within this, with nothing lost, is not an outage
LONG_S = 60            # a redundant brick down this long leaves its set degraded
RECONNECT_WAIT_NS = 10_000_000_000   # after the restart, how long to wait for a client's reply
ENOTCONN = 107
MAX_CONNS = 4096
MAX_BRICKS = 1024
MAX_SHOWN = 6
LOG_BACK_NS = 2_000_000_000          # log lines this much older than the first mark still count
class _Conn:
    __slots__ = ("server",)     # its calls in flight are the shared state's (state.calls)

    def __init__(self, server: str):
        self.server = server


class _Down:
    """One outage of one brick."""
    __slots__ = ("host", "path", "endpoint", "since", "marks", "closes", "lost", "clients",
                 "portmap", "refused", "mgmt_close", "app", "logs", "log_enotconn",
                 "started", "answered", "reported", "cut_conns")

    def __init__(self, host: str, path: str | None, endpoint: str | None, ev: dict):
        self.host, self.path, self.endpoint = host, path, endpoint
        self.since = ev["time_ns"]
        self.marks: set[str] = set()      # which signs of death were seen
        self.closes: list[dict] = []      # server-side closes of client connections
        self.lost: list[dict] = []        # calls pending at those closes
        self.clients: list[str] = []      # who was cut off
        self.portmap: list[dict] = []     # PORTBYBRICK -1 replies
        self.refused: list[dict] = []
        self.mgmt_close: dict | None = None
        self.app: list[dict] = []         # ENOTCONN seen by applications (probe, wire)
        self.logs: list[dict] = []
        self.log_enotconn: list = [0, None]   # client log lines of calls failed: count, first
        self.started: dict | None = None  # SIGNIN / PORTBYBRICK with a port
        self.answered: dict | None = None  # first reply of the restarted brick
        self.reported = False
        self.cut_conns: set = set()


class BrickDown(Detector):
    id = "brick-down"
    wants = Wants(kinds={"rpc.call", "rpc.reply", "tcp.close", "tcp.refused", "probe.return",
                         "log.message"},
                  details=GlusterState.DETAILS | {"SIGNIN", "GETSPEC"})

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.conns: OrderedDict[tuple, _Conn] = OrderedDict()
        self.down: OrderedDict[tuple[str, str], _Down] = OrderedDict()
        self.mgmt: OrderedDict[tuple, tuple[str, str]] = OrderedDict()  # brick's glusterd conn
        self.recent_logs: deque[dict] = deque(maxlen=32)
        self.logs = BrickLogs()     # which brick a log line is about
        self.dropped = 0
        self.wake_ns: int | None = None   # when tick() may next have work (a restart waited out)

    # ---- bookkeeping ---------------------------------------------------------------------

    def _put(self, table: OrderedDict, key, value, limit: int) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > limit:
            table.popitem(last=False)
            self.dropped += 1

    def _brick_key(self, host: str, path: str | None, endpoint: str | None) -> tuple[str, str]:
        return (host, path or f"port {port_of(endpoint)}")

    def _episode(self, host, path, endpoint, ev) -> _Down:
        key = self._brick_key(host, path, endpoint)
        ep = self.down.get(key)
        if ep is None or ep.reported or ep.started is not None:
            ep = _Down(host, path, endpoint, ev)
            for e in self.recent_logs:
                if ev["time_ns"] - e["time_ns"] <= LOG_BACK_NS:
                    self._add_log(ep, e)
            self._put(self.down, key, ep, MAX_BRICKS)
        return ep

    def _open(self, host: str, path: str | None) -> _Down | None:
        ep = self.down.get(self._brick_key(host, path, None)) if path else None
        return ep if ep is not None and not ep.reported else None

    # ---- events --------------------------------------------------------------------------

    def observe(self, ev):
        kind = ev.get("kind")
        found: list[dict] = []
        if kind == "rpc.call":
            self._call(ev)
        elif kind == "rpc.reply":
            found += self._reply(ev)
        elif kind == "tcp.close":
            self._close(ev)
        elif kind == "tcp.refused":
            self._refused(ev)
        elif kind == "probe.return":
            self._probe(ev)
        elif kind == "log.message":
            self._log(ev)
        if self.wake_ns is not None and ev["time_ns"] >= self.wake_ns:
            found += self.tick(ev["time_ns"])
            self.wake_ns = self.due()
        return found

    def _restarted(self, ep: _Down, ev: dict) -> None:
        """The brick of an open episode is back (SIGNIN, or a port from glusterd)."""
        ep.started = ev
        at = ev["time_ns"] + RECONNECT_WAIT_NS
        self.wake_ns = at if self.wake_ns is None else min(self.wake_ns, at)

    def _call(self, ev: dict) -> None:
        proc, key = ev.get("procedure"), (ev.get("source"), ev.get("conn"))
        if proc == "GETSPEC":
            # a brick process fetching its own volfile: this connection is its lifeline to
            # glusterd, and it closes when the process ends
            brick = find_key((ev.get("args") or {}).get("xdata") or {}, "brick_name")
            if isinstance(brick, str):
                self._put(self.mgmt, key, (host_of(ev.get("dst")), brick), MAX_CONNS)
        elif proc == "SETVOLUME":
            self.logs.observe_setvolume(ev)
        elif proc == "SIGNIN":
            args = ev.get("args") or {}
            ep = self._open(host_of(ev.get("dst")), args.get("brick"))
            if ep is not None and ep.started is None:
                self._restarted(ep, ev)
        server = ev.get("dst")
        if port_of(server) in BRICK_PORTS or self.state.topology.brick(server):
            st = self.conns.get(key)
            if st is None or st.server != server:
                st = _Conn(server)
                self._put(self.conns, key, st, MAX_CONNS)

    def _reply(self, ev: dict) -> list[dict]:
        key = (ev.get("source"), ev.get("conn"))
        proc = ev.get("procedure")
        if proc == "PORTBYBRICK":
            brick = ((self.state.calls.call_of(ev) or {}).get("args") or {}).get("brick")
            self._portmap(ev, brick if isinstance(brick, str) else None)
        if ev.get("errno_name") == "ENOTCONN" or ev.get("op_errno") == ENOTCONN:
            for ep in self._open_episodes():
                if len(ep.app) < MAX_SHOWN:
                    ep.app.append(ev)
        if not self.down:
            return []       # no episode to end (the usual reply)
        path = self.state.topology.brick(ev.get("src"))
        ep = self._open(host_of(ev.get("src")), path)
        if ep is not None and ep.started is not None and ep.answered is None \
                and key not in ep.cut_conns:
            ep.answered = ev
            return [self._report(ep, ev["time_ns"])]
        return []

    def _portmap(self, ev: dict, brick: str | None) -> None:
        if brick is None:
            return
        host = host_of(ev.get("src"))
        port = find_key(ev.get("result") or {}, "port")
        if ev.get("op_ret") == -1 or port == 0:
            ep = self._open(host, brick) or self._episode(host, brick, None, ev)
            ep.marks.add("portmap")
            if len(ep.portmap) < MAX_SHOWN:
                ep.portmap.append(ev)
            elif ep.portmap:
                ep.portmap[-1] = ev       # keep the first few and the latest
        elif isinstance(port, int) and port > 0:
            ep = self._open(host, brick)
            if ep is not None and ep.started is None and ep.marks:
                self._restarted(ep, ev)

    def _close(self, ev: dict) -> None:
        key = (ev.get("source"), ev.get("conn"))
        if key in self.mgmt:
            host, path = self.mgmt.pop(key)
            ep = self._open(host, path) or self._episode(host, path, None, ev)
            ep.marks.add("mgmt")
            ep.mgmt_close = ev
            return
        st = self.conns.pop(key, None)
        if st is None or ev.get("by") != "server":
            return
        server = st.server
        path = self.state.topology.brick(server)
        ep = self._open(host_of(server), path) if path else \
            self.down.get(self._brick_key(host_of(server), None, server))
        if ep is None or ep.reported:
            ep = self._episode(host_of(server), path, server, ev)
        ep.endpoint = ep.endpoint or server
        ep.cut_conns.add(key)
        if len(ep.closes) < MAX_SHOWN:
            ep.closes.append(ev)
        process = self.state.clients.process(ev)
        label = (process.actor().name if process is not None
                 else f"the client at {ev.get('src', '?')}")
        if label not in ep.clients and len(ep.clients) < MAX_SHOWN:
            ep.clients.append(label)
        for call in self.state.calls.pending(ev):
            # a reply the capture may have lost was perhaps answered: not a lost call
            if call.get("procedure") != "PING" and len(ep.lost) < 4 * MAX_SHOWN \
                    and not self.state.loss.reply_may_be_lost(call):
                ep.lost.append(call)

    def _refused(self, ev: dict) -> None:
        dst = ev.get("dst")
        path = self.state.topology.brick(dst)
        ep = self._open(host_of(dst), path) if path else None
        if ep is None:
            return     # a port nobody saw a brick on: brick-unreachable's case
        ep.marks.add("refused")
        if len(ep.refused) < MAX_SHOWN:
            ep.refused.append(ev)

    def _open_episodes(self) -> list[_Down]:
        return [ep for ep in self.down.values()
                if not ep.reported and ep.started is None and (ep.marks or ep.closes)]

    def _probe(self, ev: dict) -> None:
        if ev.get("errno_name") == "ENOTCONN" or ev.get("errno") == ENOTCONN:
            for ep in self._open_episodes():
                if len(ep.app) < MAX_SHOWN:
                    ep.app.append(ev)

    def _add_log(self, ep: _Down, ev: dict) -> None:
        kind = self.logs.kind(ev, ep.host, ep.path)
        if kind == "enotconn":
            ep.log_enotconn[0] += 1
            ep.log_enotconn[1] = ep.log_enotconn[1] or ev
        elif kind is not None and len(ep.logs) < MAX_SHOWN and not any(
                e.get("message") == ev.get("message") for e in ep.logs):
            ep.logs.append(ev)      # each thing said once: the client repeats it every 3 s

    def _log(self, ev: dict) -> None:
        self.logs.observe_log(ev)
        self.recent_logs.append(ev)
        for ep in self.down.values():
            if not ep.reported:
                self._add_log(ep, ev)

    # ---- time ----------------------------------------------------------------------------

    def due(self) -> int | None:
        times = [ep.started["time_ns"] + RECONNECT_WAIT_NS for ep in self.down.values()
                 if not ep.reported and ep.started is not None]
        return min(times) if times else None

    def tick(self, now: int) -> list[dict]:
        return [self._report(ep, now) for ep in list(self.down.values())
                if not ep.reported and ep.started is not None
                and now - ep.started["time_ns"] >= RECONNECT_WAIT_NS]

    def finish(self):
        return [self._report(ep, None) for ep in list(self.down.values())
                if not ep.reported and (ep.marks or ep.started is not None)]

    def drops(self) -> dict[str, int]:
        return {"connections or bricks forgotten (tables full)": self.dropped}

    # ---- the finding ---------------------------------------------------------------------

    def _report(self, ep: _Down, now: int | None) -> dict:
        ep.reported = True
        back = ep.started["time_ns"] if ep.started else None
        end = back if back is not None else (now if now is not None else _last(ep))
        down_s = (end - ep.since) / 1e9
        brick = f"{ep.host}:{ep.path}" if ep.path else f"the brick at {ep.endpoint}"
        key = (ep.host, ep.path)
        bricks = self.state.bricks      # from the volfiles (GETSPEC)
        volume = (bricks.volume_of_only_copy(*key) or self.state.topology.volume_of.get(ep.endpoint or "")
                  or _volume_of_set(bricks.set_of(*key)) or "VOLNAME")
        only = bricks.is_only_copy(*key)
        redundant = bricks.set_of(*key) is not None
        seen = ep.app or ep.log_enotconn[0]
        if ep.app:
            severity = "error"
        elif only and (ep.lost or seen or down_s >= BRIEF_S or back is None):
            severity = "error"
        elif not only and not redundant and down_s >= BRIEF_S:
            severity = "warning"
        elif redundant and (down_s >= LONG_S or back is None and down_s >= BRIEF_S):
            severity = "warning"
        else:
            severity = "info"
        parts = [f"{brick} (volume {volume}) went down at {clock(ep.since, ms=True)}: "
                 + "; ".join(self._marks(ep)) + ". The brick process died or was stopped: a "
                 "hung brick keeps its connections and its port (that is brick-not-responding)."]
        if ep.clients:
            parts.append("Cut off: " + ", ".join(ep.clients) + ".")
        if ep.lost:
            names = ", ".join(f"{c.get('procedure')} (xid {c.get('xid')})" for c in ep.lost[:MAX_SHOWN])
            parts.append(f"{len(ep.lost)} call(s) pending at the close were lost: {names}; the "
                         "client failed them with ENOTCONN.")
        if only:
            parts.append(f"It holds the only copy of its files (no replica or disperse set in "
                         f"the volfile of {volume}): any call to them failed with ENOTCONN "
                         f"in the client (made there, not on the wire) during the {down_s:.1f} s "
                         "it was down.")
        elif redundant:
            parts.append(f"It is a member of {bricks.set_of(*key)}: the other bricks kept serving; "
                         "what was written meanwhile is healed once it is back.")
        else:
            parts.append("The capture holds no volfile: if this brick holds the only copy of "
                         "its files (a distribute volume), calls to them failed with ENOTCONN "
                         "while it was down.")
        if ep.app:
            parts.append("Seen failing with ENOTCONN: " + "; ".join(_app(e) for e in ep.app) + ".")
        if ep.started is not None:
            how = ("signed in to glusterd again" if ep.started.get("procedure") == "SIGNIN"
                   else "was given a port by glusterd again")
            port = find_key(ep.started.get("args") or {}, "port") or \
                find_key(ep.started.get("result") or {}, "port")
            parts.append(f"It was back at {clock(back, ms=True)} ({how}, port {port}), "
                         f"{down_s:.1f} s after it went down"
                         + (f"; the clients reconnected and it answered at "
                            f"{clock(ep.answered['time_ns'], ms=True)}." if ep.answered else
                            "; no client reconnected in the capture."))
        else:
            parts.append(f"It was still down {down_s:.1f} s later, when the capture ended.")
        if ep.log_enotconn[0]:
            first = ep.log_enotconn[1]
            parts.append(f"The client log has {ep.log_enotconn[0]} line(s) of calls to it that "
                         f"failed with ENOTCONN (first at {clock(first['time_ns'], ms=True)}: "
                         f"{str(first.get('function'))[:60]}: {str(first.get('message'))[:100]}).")
        if ep.logs:
            parts.append("Logs: " + " | ".join(
                f"{clock(e['time_ns'], ms=True)} {e.get('source')}: {str(e.get('message'))[:160]}"
                for e in ep.logs[:MAX_SHOWN]))
        remedy = (f"`gluster volume status {volume}` shows the brick offline (Online N, no "
                  f"pid). Find why it ended in its log (/var/log/glusterfs/bricks/"
                  f"{brick_log_name(ep.path) if ep.path else '<brick path>.log'}: a crash "
                  "leaves a backtrace; a SIGKILL or the OOM killer leaves nothing there: "
                  "`dmesg | grep -i -e oom -e killed`, `journalctl`, core dumps), then start "
                  f"it again with `gluster volume start {volume} force` (it starts only the "
                  "bricks that are down)."
                  + (f" Then check `gluster volume heal {volume} info`." if redundant else ""))
        evidence = [*ep.closes[:2], *ep.lost[:MAX_SHOWN]]
        evidence += [e for e in (ep.mgmt_close,) if e]
        evidence += ep.portmap[:3] + ep.refused[:2] + ep.app
        evidence += [e for e in (ep.started, ep.answered, ep.log_enotconn[1]) if e] + ep.logs
        evidence.sort(key=lambda e: e["time_ns"])
        return self.finding(
            end if now is None else now, severity=severity,
            title=f"brick down: {brick}" + (f" for {down_s:.1f} s" if back else " (still down)"),
            explanation=" ".join(parts), remedy=remedy, evidence=evidence,
            key=f"down:{ep.host}:{ep.path or ep.endpoint}", brick=ep.path, volume=volume,
            server=ep.endpoint, since_ns=ep.since, back_ns=back,
            answered_ns=ep.answered["time_ns"] if ep.answered else None,
            down_ns=end - ep.since, lost_calls=len(ep.lost), only_copy=only,
            enotconn=bool(ep.app or ep.lost or only or seen), clients=list(ep.clients),
            log_enotconn=ep.log_enotconn[0],
            portmap_refusals=len(ep.portmap))

    @staticmethod
    def _marks(ep: _Down) -> list[str]:
        out = []
        if ep.closes:
            how = sorted({(c.get("reason") or "fin").upper() for c in ep.closes})
            out.append(f"its side closed {len(ep.closes)} client connection(s) "
                       f"({'/'.join(how)})")
        if ep.mgmt_close is not None:
            out.append("its own connection to glusterd closed")
        if ep.portmap:
            out.append(f"glusterd's PORTBYBRICK answered op_ret -1 / port 0 for it "
                       f"{len(ep.portmap)} time(s) from {clock(ep.portmap[0]['time_ns'], ms=True)}")
        if ep.refused:
            out.append(f"{len(ep.refused)} connect(s) to its port were refused")
        return out or ["it went away"]


def _last(ep: _Down) -> int:
    events = ep.closes + ep.portmap + ep.refused + ep.app + ep.logs
    return max((e["time_ns"] for e in events), default=ep.since)


def _volume_of_set(name: str | None) -> str | None:
    """'vol-replicate-0' -> 'vol'"""
    return name.rsplit("-", 2)[0] if name and name.count("-") >= 2 else None


def _app(ev: dict) -> str:
    if ev.get("layer") == "probe":
        return f"{ev.get('function')} in pid {ev.get('pid')} at {clock(ev['time_ns'], ms=True)}"
    return f"{ev.get('procedure')} reply from {ev.get('src')} at {clock(ev['time_ns'], ms=True)}"



@hookimpl
def correlate_detectors(state):
    return [BrickDown(state)]
