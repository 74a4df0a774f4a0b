"""brick-not-responding: a brick connection whose calls, GF-DUMP PING included, go
unanswered until the client gives up on it.

Gluster's client PINGs each brick connection when it has not heard from it; when no reply
came within `network.ping-timeout` (SETVOLUME carries it) it logs "has not responded in the
last N seconds, disconnecting" and closes the connection with a FIN. That FIN (a half close:
the brick may still answer later) is when this detector speaks, so live it speaks while the
brick is still hung. Whether the brick host's kernel still ACKed the calls tells a stuck
brick process (stopped, deadlocked, blocked on its disk) from a host or network that is gone.
A late reply, the client's RST and its reconnect (PORTBYBRICK, SETVOLUME) follow as an info
finding once the brick answers again.

Without the FIN (a capture that ends first, or a client whose FIN was not captured), a PING
unanswered for longer than the ping timeout is enough, judged by the events' own clock.
A brick whose connection the server side closes (brick killed) is not hung: it is gone.

The ping timeout said is the one the capture carries, and the finding says where it came
from: SETVOLUME's dict, the volfile's `option ping-timeout` (GETSPEC), the client log's "has
not responded in the last N seconds", or the time measured from the PING to the client's
FIN; Gluster's default of 42 s only when none of these is there. "Answering again" needs a
real RPC reply from the brick (the late PING reply, or the first reply on a new connection):
a stopped brick's kernel still completes TCP handshakes on its listening socket.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict

from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.state import GlusterState
from correlate.state.clients import parse_setvolume

from .app_waits import call_name, enotconn, took, what_they_saw
from .gluster_facts import BRICK_PORTS, LOCK_PROCEDURES, clock, find_key, host_of, is_blocking_lock, port_of

DEFAULT_PING_TIMEOUT_S = 42      # Gluster's network.ping-timeout default
GIVE_UP_MIN_NS = 1_000_000_000   # a PING pending this long at the client's close: it gave up
MAX_CONNS = 4096
MAX_PENDING_PER_CONN = 64       # whole call events (1-2 KB each): the newest are kept
MAX_SHOWN = 8
STALL_NS = 1_000_000_000
LOG_NEAR_NS = 3_000_000_000      # a client log line this close to the FIN is about it
GAVE_UP_LOG = re.compile(r"has not responded in the last (\d{1,6}) seconds")


class _Conn:
    __slots__ = ("client", "server", "pending", "ping", "last_reply", "setvolume", "reported",
                 "gave_up", "late", "dropped", "app")

    def __init__(self, client: str, server: str):
        self.client, self.server = client, server
        self.pending: OrderedDict[int, dict] = OrderedDict()   # xid -> call, oldest first
        self.ping: dict | None = None         # the oldest unanswered PING
        self.last_reply: dict | None = None
        self.setvolume: dict | None = None
        self.reported: dict | None = None     # the finding, once made
        self.gave_up: dict | None = None      # the client's close
        self.late: dict | None = None         # a reply after the close
        self.dropped = 0
        self.app: list[dict] = []             # application calls that stalled or failed meanwhile


class BrickNotResponding(Detector):
    id = "brick-not-responding"
    # Every call of a brick connection may be the one left pending. Details: SETVOLUME's
    # ping-timeout (brick names are the shared state's), and a lock call's cmd (a blocking one may
    # wait by design). An overdue PING is reported by time passing: due/tick.
    wants = Wants(kinds={"rpc.call", "rpc.reply", "tcp.close", "tcp.connect", "probe.return",
                         "log.message", "fuse.reply", "fuse.pending"},
                  details=GlusterState.DETAILS | LOCK_PROCEDURES)

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.conns: OrderedDict[int, _Conn] = OrderedDict()
        self.hung: OrderedDict[tuple[str, int], _Conn] = OrderedDict()  # reported, not recovered
        self.pinged: OrderedDict[int, _Conn] = OrderedDict()   # conns with a PING pending
        self.forgotten = 0              # pending calls dropped to stay bounded (drops())
        self.volfile_timeouts: OrderedDict[tuple[str, str], str] = OrderedDict()  # brick -> s
        self.translators: OrderedDict[str, str] = OrderedDict()  # VOL-client-N -> server
        self.gave_up_logs: OrderedDict[str, dict] = OrderedDict()  # server -> client log line
        self.reconnected: OrderedDict[tuple[str, int], dict] = OrderedDict()  # hung -> connect

    # ---- bookkeeping ---------------------------------------------------------------------

    def drops(self) -> dict[str, int]:
        return {f"calls forgotten on a busy connection ({MAX_PENDING_PER_CONN} per connection "
                "were kept)": self.forgotten}

    @staticmethod
    def _bounded_put(table: OrderedDict, key, value, limit: int) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > limit:
            table.popitem(last=False)

    def _conn(self, ev: dict, client: str, server: str) -> _Conn | None:
        conn = ev.get("conn")
        if conn is None:
            return None
        st = self.conns.get(conn)
        if st is None or (st.client, st.server) != (client, server):
            if port_of(server) not in BRICK_PORTS and self.state.topology.brick(server) is None:
                return None
            st = _Conn(client, server)
            self._bounded_put(self.conns, conn, st, MAX_CONNS)
        return st

    # ---- events --------------------------------------------------------------------------

    def observe(self, ev):
        kind = ev.get("kind")
        found = []
        if kind == "rpc.call":
            st = self._conn(ev, ev.get("src"), ev.get("dst"))
            if st is not None:
                self._call(st, ev)
        elif kind == "rpc.reply":
            if ev.get("procedure") == "GETSPEC":
                self._volfile(ev)       # from glusterd, on no brick connection
            st = self._conn(ev, ev.get("dst"), ev.get("src"))
            if st is not None:
                found += self._reply(st, ev)
        elif kind == "tcp.close":
            st = self.conns.get(ev.get("conn"))
            if st is not None:
                found += self._close(st, ev)
        elif kind == "tcp.connect":
            found += self._reconnect(ev)
        elif kind in ("probe.return", "fuse.reply", "fuse.pending") and self.hung:
            self._application(ev)
        elif kind == "log.message":
            found += self._log(ev)
        if self.pinged:
            found += self._overdue_pings(ev["time_ns"])
        return found

    def _call(self, st: _Conn, ev: dict) -> None:
        if ev.get("procedure") == "SETVOLUME":
            st.setvolume = ev           # its ping-timeout
            options = (ev.get("args") or {}).get("dict")
            process = parse_setvolume(options) if isinstance(options, dict) else None
            if process is not None and process.translator:
                self._bounded_put(self.translators, process.translator, st.server, MAX_CONNS)
        if is_blocking_lock(ev):
            return              # may wait for another client's lock: no sign of a hang
        if len(st.pending) >= MAX_PENDING_PER_CONN:
            st.pending.popitem(last=False)
            st.dropped += 1
            self.forgotten += 1
        st.pending[ev.get("xid")] = ev
        if ev.get("procedure") == "PING" and st.ping is None:
            st.ping = ev
            self._bounded_put(self.pinged, ev.get("conn"), st, MAX_CONNS)

    def _volfile(self, ev: dict) -> None:
        """A client volfile's ping-timeout, for each brick it names."""
        result = ev.get("result") or {}
        timeout, bricks = result.get("ping_timeout"), result.get("bricks")
        if timeout is None or not isinstance(bricks, list):
            return
        for b in bricks:
            if isinstance(b, list) and len(b) == 2:
                self._bounded_put(self.volfile_timeouts, (str(b[0]), str(b[1])), str(timeout),
                                  MAX_CONNS)

    def _log(self, ev: dict) -> list[dict]:
        """The client's own word that it gave up: "has not responded in the last N seconds,
        disconnecting", by the client translator (VOL-client-N) of that brick connection."""
        m = GAVE_UP_LOG.search(str(ev.get("message") or ""))
        server = self.translators.get(str(ev.get("xlator") or "")) if m else None
        if server is None:
            return []
        self._bounded_put(self.gave_up_logs, server, ev, MAX_CONNS)
        st = self.hung.get((host_of(server), port_of(server)))
        if st is None or st.gave_up is None or abs(ev["time_ns"] - st.gave_up["time_ns"]) > LOG_NEAR_NS:
            return []
        # the line came after the FIN: add it to the finding already made
        return [self._report(st, st.reported["time_ns"], st.gave_up, refines=True)]

    def _reply(self, st: _Conn, ev: dict) -> list[dict]:
        call = st.pending.pop(ev.get("xid"), None)
        st.last_reply = ev
        # Any reply after the PING went out resets the client's ping timer as its own reply
        # would (it counts what it receives): a brick that answers is not hung, even when
        # the capture lost the PING's reply.
        if st.ping is not None and (call is st.ping or (
                st.reported is None and ev.get("time_ns", 0) >= st.ping["time_ns"])):
            st.ping = None
            self.pinged.pop(ev.get("conn"), None)
        if st.reported is not None and st.late is None:
            st.late = ev
            return self._recovered(st, ev, "answered the old call late on the closed connection")
        old = self.hung.get((host_of(st.server), port_of(st.server)))
        if st.reported is None and old is not None and old is not st and old.late is None:
            old.late = ev       # its first real answer, on the client's new connection
            return self._recovered(old, ev, f"answered the client's new connection "
                                            f"({ev.get('procedure')} reply)")
        return []

    def _close(self, st: _Conn, ev: dict) -> list[dict]:
        conn = ev.get("conn")
        if ev.get("by") != "client" or st.reported is not None:
            if st.reported is None:
                self.conns.pop(conn, None)
                self.pinged.pop(conn, None)
            return []
        ping = st.ping
        if ping is None or ev["time_ns"] - ping["time_ns"] < GIVE_UP_MIN_NS \
                or self.state.loss.reply_may_be_lost(ping):
            self.conns.pop(conn, None)      # a client leaving, not giving up on the brick
            self.pinged.pop(conn, None)
            return []
        st.gave_up = ev
        self.pinged.pop(conn, None)
        return [self._report(st, ev["time_ns"], ev)]

    def due(self) -> int | None:
        """When the oldest pending PING outlives its connection's ping timeout."""
        first = None
        for st in self.pinged.values():
            limit = self._overdue_after_ns(st)
            if st.ping is not None and st.reported is None and math.isfinite(limit):
                at = st.ping["time_ns"] + math.floor(limit) + 1     # the first ns past it
                first = at if first is None else min(first, at)
        return first

    def tick(self, now: int):
        return self._overdue_pings(now)

    def _overdue_after_ns(self, st: _Conn) -> float:
        """A PING is overdue once it waited longer than this."""
        return (self._ping_timeout(st) + 1) * 1_000_000_000

    def _overdue_pings(self, now: int) -> list[dict]:
        found = []
        for conn, st in list(self.pinged.items()):
            if st.ping is None or st.reported is not None:
                self.pinged.pop(conn, None)
                continue
            if now - st.ping["time_ns"] > self._overdue_after_ns(st):
                self.pinged.pop(conn, None)
                if self.state.loss.reply_may_be_lost(st.ping):
                    continue    # the PING's reply may lie in a capture gap: see capture-loss
                found.append(self._report(st, now, None))
        return found

    def _application(self, ev: dict) -> None:
        """With probes: a libgfapi call, or a FUSE request of an application on a mount, that
        failed with ENOTCONN or took (or still waits) over a second while a brick hung is what
        the application saw of it."""
        if not enotconn(ev) and took(ev) < STALL_NS:
            return
        for st in self.hung.values():
            if len(st.app) < MAX_SHOWN:
                st.app.append(ev)

    def _reconnect(self, ev: dict) -> list[dict]:
        """A handshake completed by the kernel is no answer from the brick (a stopped process's
        listening socket still accepts): only noted, for the recovery's evidence."""
        key = (host_of(ev.get("dst")), port_of(ev.get("dst")))
        st = self.hung.get(key)
        if st is not None and st.late is None and key not in self.reconnected:
            self._bounded_put(self.reconnected, key, ev, MAX_CONNS)
        return []

    def _ping_timeout(self, st: _Conn) -> float:
        return self._ping_timeout_from(st)[0]

    def _ping_timeout_from(self, st: _Conn, close: dict | None = None) -> tuple[float, str]:
        """The connection's ping timeout and where the capture (or log) says so."""
        candidates = [
            (find_key((st.setvolume or {}).get("args") or {}, "ping-timeout"), "from SETVOLUME"),
            (self.volfile_timeouts.get((host_of(st.server), self.state.topology.brick(st.server) or "")),
             "from the volfile"),
        ]
        log = self.gave_up_logs.get(st.server)
        if log is not None:
            m = GAVE_UP_LOG.search(str(log.get("message") or ""))
            candidates.append((m.group(1) if m else None, "from the client log"))
        for value, how in candidates:
            try:
                return float(value), how
            except (TypeError, ValueError):
                continue
        if close is not None and st.ping is not None:
            measured = (close["time_ns"] - st.ping["time_ns"]) / 1e9
            return float(round(measured)), "measured from the PING to the client's FIN"
        return float(DEFAULT_PING_TIMEOUT_S), "Gluster's default: the capture carries none"

    # ---- findings ------------------------------------------------------------------------

    def _brick_name(self, st: _Conn) -> str:
        host, port = host_of(st.server), port_of(st.server)
        path = self.state.topology.brick(st.server)
        return f"{host}:{path} (port {port})" if path else f"the brick at {st.server}"

    def _copies(self, st: _Conn) -> str:
        """What the hang means for the files on that brick, from its replica/disperse set."""
        peers, how = self.state.topology.peers(st.server)
        if how.startswith("volfile") and peers:
            return (f" It is one of {len(peers) + 1} bricks of {how[len('volfile '):]}: the "
                    f"others keep serving, so I/O stalled for the ping timeout and then went on "
                    "without it (files to heal once it is back).")
        return (" Files on it stall for the ping timeout, then fail with ENOTCONN unless "
                "another replica holds them (the capture shows no replica or disperse set with "
                "this brick: a distribute volume, or a mount older than the capture).")

    def _report(self, st: _Conn, now: int, close: dict | None, refines: bool = False) -> dict:
        brick = self._brick_name(st)
        first = next(iter(st.pending.values()), st.ping)
        since = first["time_ns"] if first else now
        pending = list(st.pending.values())
        names = ", ".join(f"{c.get('procedure')} (xid {c.get('xid')})" for c in pending[:MAX_SHOWN])
        more = f" and {len(pending) - MAX_SHOWN} more" if len(pending) > MAX_SHOWN else ""
        timeout, timeout_from = self._ping_timeout_from(st, close)
        label = self.state.topology.client_of(first or st.setvolume or {"kind": "rpc.call", "src": st.client})
        client = f"the client {st.client}" + (f" ({label})" if label.startswith("pid") else "")
        tcp = ""
        if close is not None:
            unacked = close.get("unacked_bytes")
            if unacked == 0:
                tcp = (" The brick host's kernel still acknowledged every byte of these calls: "
                       "host and network are up, the brick process itself is stuck (stopped, "
                       "deadlocked, or blocked on its disk).")
            elif unacked:
                tcp = (f" {unacked} bytes of the calls were never acknowledged by the brick "
                       "host's TCP: the host or the network to it is down.")
            gave_up = (f" After {(close['time_ns'] - st.ping['time_ns']) / 1e9:.1f} s without an "
                       f"answer to its PING (ping-timeout {timeout:g} s, {timeout_from}) the "
                       f"client gave up and closed the connection "
                       f"({close.get('reason', 'fin').upper()}).")
        else:
            gave_up = (f" The PING has waited {(now - st.ping['time_ns']) / 1e9:.1f} s, longer "
                       f"than the ping-timeout of {timeout:g} s ({timeout_from}).")
        last = st.last_reply
        heard = (f" The last reply from it came at {clock(last['time_ns'], ms=True)}." if last else "")
        log = self.gave_up_logs.get(st.server)
        if log is not None and (close is None or abs(log["time_ns"] - close["time_ns"]) > LOG_NEAR_NS):
            log = None
        said = (f" The client log says at {clock(log['time_ns'], ms=True)}: "
                f"\"{str(log.get('message'))[:200]}\"." if log else "")
        explanation = (f"{brick} stopped answering {client}: since {clock(since, ms=True)} "
                       f"{len(pending)} call(s) got no reply: {names}{more}.{heard}{gave_up}{tcp}"
                       + said + self._copies(st))
        volume = self.state.topology.volume_of.get(st.server, "VOLNAME")
        remedy = (f"Find the brick process (`gluster volume status {volume}`) and look at what "
                  f"it waits for: `gluster volume statedump {volume}` (or `kill -USR1` the "
                  "brick pid; dumps land in /var/run/gluster), its state and kernel stack "
                  "(`ps -o stat,wchan`, /proc/PID/stack), its disk (`iostat -x 1`, dmesg for "
                  "hung-task or I/O errors) and the brick log. network.ping-timeout "
                  f"({timeout:g} s) only sets how long clients wait before giving up; it is not "
                  "the cause.")
        evidence = [e for e in (st.setvolume, st.last_reply) if e]
        evidence += pending[:MAX_SHOWN]
        if st.ping is not None and st.ping not in pending[:MAX_SHOWN]:
            evidence.append(st.ping)
        if close is not None:
            evidence.append(close)
        if log is not None:
            evidence.append(log)
        finding = self.finding(
            now, severity="error", title=f"brick not responding: {brick}", refines=refines,
            explanation=explanation, remedy=remedy, evidence=evidence,
            key=f"hung:{st.server}", brick=self.state.topology.brick(st.server),
            server=st.server, client=st.client, since_ns=since, ping_timeout_s=timeout,
            ping_timeout_from=timeout_from,
            tcp_acked=None if close is None or close.get("unacked_bytes") is None
            else close.get("unacked_bytes") == 0)
        if refines:
            return finding
        st.reported = finding
        self._bounded_put(self.hung, (host_of(st.server), port_of(st.server)), st, MAX_CONNS)
        return finding

    def _recovered(self, st: _Conn, ev: dict, how: str) -> list[dict]:
        since = st.reported["since_ns"]
        key = (host_of(st.server), port_of(st.server))
        self.hung.pop(key, None)
        connect = self.reconnected.pop(key, None)
        brick = self._brick_name(st)
        seen = f" Meanwhile the application saw: {what_they_saw(st.app)}." if st.app else ""
        if connect is not None:
            seen += (f" (The client's new TCP connection was accepted at "
                     f"{clock(connect['time_ns'], ms=True)}, {(ev['time_ns'] - connect['time_ns']) / 1e9:.1f} s "
                     "earlier, by the kernel alone: no answer from the brick.)")
        return [self.finding(
            ev["time_ns"], severity="info", title=f"brick answering again: {brick}",
            explanation=(f"{brick} {how} at {clock(ev['time_ns'], ms=True)}, "
                         f"{(ev['time_ns'] - since) / 1e9:.1f} s after the first unanswered call; "
                         f"the client reconnects (PORTBYBRICK, SETVOLUME) and I/O to it resumes.{seen}"),
            remedy="Nothing to do if it stays healthy; the statedump and disk checks of the "
                   "not-responding finding still tell why it stopped.",
            evidence=[e for e in (st.gave_up, *st.app, connect, ev) if e],
            key=f"recovered:{st.server}", answered_ns=ev["time_ns"],
            application=[call_name(a) for a in st.app])]


@hookimpl
def correlate_detectors(state):
    return [BrickNotResponding(state)]
