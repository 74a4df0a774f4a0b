"""rpc-unanswered: calls that get no reply while their connection lives (the hang), and a
summary of error replies.

Timing follows the events' own clock (capture time), so offline analysis and live runs
agree. Calls still in flight when the input ends younger than the threshold are not hangs.
Calls pending when their connection closes (client exit, brick killed, a client giving up
on a hung brick: brick-not-responding tells that story) can never be answered: they are
lost, not hung. Blocking lock requests wait by design until the lock is free; the lock-wait
detector judges them. A call whose reply the capture may have lost (bytes toward the caller
missing on its connection after the call: the shared state's capture loss) is not a hang:
it is counted, and said once at the end.

Loss becomes certain only when the caller's side acknowledges past the missing bytes, which
can come after the call is overdue (a burst of lost packets hides everything, then the next
segment from the caller reveals the gap). So an overdue call is a suspect until its
connection shows the caller's side again (a call, a close) or a gap; then, or after another
`after_s` without either, or at the end of the input, it is judged. A connection that lost
packets before and then fell silent for good after the call (neither side sent anything
the capture kept) most likely ended in packets the capture lost too (the reply, the close):
not a hang either. A hung brick's connection is not silent: the client goes on calling,
and pinging.

A client process that closes its other connections after the call has gone away (a program
that ended): when the capture lost packets, a connection of that process silent since the
call most likely lost its reply and its close (an RST) with them. Not a hang either.

A connection silent since the call while the capture lost packets on others after it (a
burst of drops takes every busy connection's packets at once, the reply and the close with
them; the gaps show when those connections next acknowledge, maybe much later) is not
judged a hang either: a hung brick is told by the client's PING and its giving up
(brick-not-responding).

A connection that fell silent right after the call shows a lost reply only when TCP speaks
again: Gluster's sockets send keepalives after 20 s idle (on the lab the brick's came 20-22 s
after the last packet), and the acknowledgement in that exchange reveals bytes the capture
missed. So no call is judged sooner than REVEAL_NS after it was made. The keepalive itself
(`tcp.keepalive`) says the connection lives: one silent past REVEAL_NS, not even a keepalive
in it, while the capture went on, is gone (closed in packets the capture lost), not hung.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from correlate import hookimpl
from correlate.detector import Detector, Option, Wants
from correlate.events import DETAILS_LATER, with_details
from correlate.gluster.programs import lookup
from correlate.state import GlusterState
from correlate.state.loss import HELD_SLACK_NS

from .gluster_facts import host_of, is_blocking_lock

DEFAULT_AFTER_NS = 10_000_000_000
REVEAL_NS = 30_000_000_000    # Gluster's TCP keepalive (20 s idle) with room for timer slack
MAX_PENDING = 2_048           # calls waiting at once (2-3 KB each); more are counted, not kept
# What a waiting call keeps of its event: what the finding shows (not cred, result, ...).
KEPT = frozenset(("time_ns", "layer", "kind", "source", "host", "src", "dst", "conn", "xid", "frame",
        "program", "program_num", "version", "procedure", "procedure_num", "cred", "args",
        DETAILS_LATER))   # the rest of the call is decoded when it becomes evidence

# Error replies that are part of normal operation, not worth a finding.
BENIGN = {
    ("LOOKUP", "ENOENT"), ("STAT", "ENOENT"), ("GETXATTR", "ENODATA"),
    ("FGETXATTR", "ENODATA"), ("INODELK", "EAGAIN"), ("ENTRYLK", "EAGAIN"),
    ("OPENDIR", "ENOENT"), ("ACCESS", "ENOENT"), ("MKDIR", "EEXIST"),
}
# Explained by other built-in detectors with their own remedy.
EXPLAINED = {"SETVOLUME"}


class RpcUnanswered(Detector):
    id = "rpc-unanswered"
    options = {"after_s": Option(DEFAULT_AFTER_NS / 1e9, "seconds without a reply before a call "
                                                         "counts as unanswered (--unanswered-after)")}
    # op_ret/errno_name suffice, but a lock call's args say whether it may block (cmd)
    wants = Wants(kinds={"rpc.call", "rpc.reply", "tcp.close", "tcp.gap", "tcp.keepalive"},
                  details={"LK", "INODELK", "FINODELK", "ENTRYLK", "FENTRYLK"})

    def __init__(self, after_ns: int = DEFAULT_AFTER_NS, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.settings = {"after_s": after_ns / 1e9}
        # Call time order; an OrderedDict pops its oldest in O(1) (a dict rescans the holes
        # its deletions left at the front: quadratic over a million calls).
        self.pending: OrderedDict[tuple, dict] = OrderedDict()
        # conn -> its keys in pending, so a close forgets its calls without a scan of all
        self.by_conn: dict[object, set[tuple]] = {}
        self.errors: Counter = Counter()
        self.error_examples: dict[tuple, dict] = {}
        self.dropped = 0        # calls not tracked: MAX_PENDING were waiting already
        self.maybe_lost: list[dict] = []    # overdue calls whose reply may lie in a capture gap
        self.maybe_lost_count = 0
        # overdue calls not judged yet: key -> (call, judge by then at the latest, overdue since)
        self.suspects: OrderedDict[tuple, tuple[dict, int, int]] = OrderedDict()
        self.suspects_of: dict[object, set[tuple]] = {}    # conn -> its keys in suspects
        # No call becomes overdue and no suspect is due before this time: events before it
        # skip the look (it is never later than the real moment; a reply that took the
        # oldest call away only makes one look find nothing)
        self.check_at: int | None = None
        # conn -> when it last showed anything, for connections with calls waiting
        self.last_heard: dict[object, int] = {}
        # (source, client process context) -> when that process last closed a connection
        self.client_closed: OrderedDict[tuple, int] = OrderedDict()

    @property
    def after_ns(self) -> int:
        return int(self.option("after_s") * 1e9)

    def observe(self, ev):
        kind = ev.get("kind")
        conn = ev.get("conn")
        if conn in self.by_conn or conn in self.suspects_of:
            self.last_heard[conn] = ev["time_ns"]
        found = self._judge_conn(ev) if self.suspects else []
        if kind == "rpc.call" and self._expects_reply(ev) and not is_blocking_lock(ev):
            if len(self.pending) < MAX_PENDING:
                key = (ev.get("conn"), ev.get("src"), ev.get("xid"))
                self.pending[key] = ev      # cut to KEPT if it becomes a suspect
                self.by_conn.setdefault(key[0], set()).add(key)
                overdue_at = ev["time_ns"] + self.after_ns + 1
                if self.check_at is None or overdue_at < self.check_at:
                    self.check_at = overdue_at
            else:   # the oldest are kept: they are the ones that show a hang first
                self.dropped += 1
        elif kind == "rpc.reply":
            self._forget((ev.get("conn"), ev.get("dst"), ev.get("xid")))
            if ev.get("op_ret") == -1 and ev.get("procedure") not in EXPLAINED:
                key = (ev.get("procedure"), ev.get("errno_name"))
                if key not in BENIGN:
                    self.errors[key] += 1
                    self.error_examples.setdefault(key, ev)
        if self.check_at is not None and ev["time_ns"] >= self.check_at:
            found += self._overdue(ev["time_ns"])
        if kind == "tcp.close":
            self._lost_at_close(ev.get("conn"))
            if ev.get("by") == "client":
                self._client_closed(ev)
        return found

    def _client_closed(self, ev: dict) -> None:
        process = self.state.clients.process(ev)
        if process is not None and process.context:
            key = (ev.get("source"), process.context)
            self.client_closed.pop(key, None)
            self.client_closed[key] = ev["time_ns"]
            if len(self.client_closed) > MAX_PENDING:
                self.client_closed.popitem(last=False)

    def _client_left(self, call: dict) -> bool:
        """The call's client process closed another of its connections after the call."""
        process = self.state.clients.process(call)
        if process is None or not process.context:
            return False
        closed = self.client_closed.get((call.get("source"), process.context))
        return closed is not None and closed >= call["time_ns"]

    def _judge_conn(self, ev: dict) -> list[dict]:
        """The caller's side of a suspect's connection spoke again, or a gap opened on it:
        judge the suspects of that connection."""
        kind = ev.get("kind")
        keys = self.suspects_of.get(ev.get("conn"))
        if not keys:
            return []
        if kind in ("tcp.gap", "tcp.close"):
            keys = list(keys)
        elif kind == "rpc.call":
            keys = [k for k in keys if k[1] == ev.get("src")]
        elif kind == "rpc.reply":    # a late reply: it was unanswered that long all the same
            key = (ev.get("conn"), ev.get("dst"), ev.get("xid"))
            keys = [key] if key in keys else []
        else:
            keys = []
        return [f for f in (self._judge(k, ev["time_ns"]) for k in keys) if f]

    def _suspect(self, key: tuple, call: dict, now: int) -> None:
        # deadlines grow in insertion order (calls leave pending oldest first, now only grows)
        deadline = max(now + self.after_ns, call["time_ns"] + REVEAL_NS)
        call = {k: v for k, v in call.items() if k in KEPT}    # in the event's own order
        self.suspects[key] = (call, deadline, now)
        self.suspects_of.setdefault(key[0], set()).add(key)

    def _judge(self, key: tuple, now: int) -> dict | None:
        call, _, _ = self.suspects.pop(key)
        keys = self.suspects_of[key[0]]
        keys.discard(key)
        # nothing on the connection after the call's own moment (the caller's next call
        # sent with it, before any reply could come, is part of that moment)
        silent = self.last_heard.get(key[0], call["time_ns"]) <= call["time_ns"] + HELD_SLACK_NS
        if not keys:
            del self.suspects_of[key[0]]
            self._forget_conn(key[0])
        loss = self.state.loss
        # Silent past REVEAL_NS while the input went on: not even a keepalive, so the
        # connection is gone (its close among packets the capture lost), not hung.
        gone = silent and now >= call["time_ns"] + REVEAL_NS
        if loss.reply_may_be_lost(call) or gone or (silent and (
                loss.of(call) or (loss and self._client_left(call))
                or loss.since(call["time_ns"] - HELD_SLACK_NS))):
            self.maybe_lost_count += 1
            if len(self.maybe_lost) < 10:
                self.maybe_lost.append(call)
            return None
        return self._unanswered(call, now)

    def _lost_at_close(self, conn) -> None:
        """A reply can no longer come: the calls still pending were lost with the connection
        (overdue ones were reported above, while the connection lived)."""
        for key in self.by_conn.pop(conn, ()):
            del self.pending[key]
        self._forget_conn(conn)

    def _forget_conn(self, conn) -> None:
        if conn not in self.by_conn and conn not in self.suspects_of:
            self.last_heard.pop(conn, None)

    def _forget(self, key: tuple) -> None:
        if self.pending.pop(key, None) is not None:
            keys = self.by_conn[key[0]]
            keys.discard(key)
            if not keys:
                del self.by_conn[key[0]]
                self._forget_conn(key[0])

    def due(self) -> int | None:
        """When the oldest call waiting for its reply becomes overdue, or the oldest suspect
        must be judged."""
        times = []
        if self.pending:
            times.append(next(iter(self.pending.values()))["time_ns"] + self.after_ns + 1)
        if self.suspects:
            times.append(next(iter(self.suspects.values()))[1])
        return min(times, default=None)

    def tick(self, now: int):
        return self._overdue(now)

    @staticmethod
    def _expects_reply(call: dict) -> bool:
        """Callbacks (glusterd -> client, e.g. FETCHSPEC) are one-way: no reply is due."""
        if not isinstance(call.get("program_num"), int):
            return True
        return lookup(call["program_num"], call.get("version") or 0,
                      call.get("procedure_num") or 0).expects_reply

    def _overdue(self, now: int) -> list[dict]:
        found = []
        pending = self.pending
        while pending:
            key = next(iter(pending))
            call = pending[key]
            if now - call["time_ns"] <= self.after_ns:
                break
            if len(self.suspects) < MAX_PENDING:      # (a suspect first: its connection
                self._suspect(key, call, now)   # keeps what it last heard)
            else:
                self.dropped += 1
            self._forget(key)
        while self.suspects:
            key, (call, deadline, _) = next(iter(self.suspects.items()))
            if now < deadline:
                break
            found.append(self._judge(key, now))
        self.check_at = self.due()
        return [f for f in found if f]

    def _unanswered(self, call: dict, now: int) -> dict:
        waited = (now - call["time_ns"]) / 1e9
        what = f"{call.get('program')} {call.get('procedure')}"
        # the brick, volume and client it concerns: what users match in --suppress
        process = self.state.clients.process(call)
        where = {"brick": process.brick, "volume": process.volume} if process else {}
        return self.finding(
            now, severity="warning", title=f"{what} unanswered after {waited:.0f} s",
            explanation=(f"{call.get('src')} called {what} (xid {call.get('xid')}) on "
                         f"{call.get('dst')} and got no reply within {waited:.1f} s: the caller "
                         "is blocked (a hung mount or operation)."),
            remedy=(f"Check the server process at {call.get('dst')} (`gluster volume status`, "
                    "its brick log) and the network between; the other findings of this run "
                    "may name the cause."),
            evidence=[call], key=f"unanswered:{what}:{host_of(call.get('dst'))}",
            server=call.get("dst"), procedure=call.get("procedure"),
            client=self.state.actor(with_details(call)).name, **where)   # its cred, if lean

    def _reply_maybe_lost(self, last_time: int) -> dict:
        n = self.maybe_lost_count
        return self.finding(
            last_time, severity="info",
            title=f"{n} call{'s' if n != 1 else ''} without a reply the capture saw, on "
                  "connections where it lost bytes",
            explanation=(f"{n} call{'s' if n != 1 else ''} got no reply in the capture within "
                         f"{self.option('after_s'):g} s, but on each one's connection bytes "
                         "toward the caller went missing from the capture after the call: the "
                         "reply may be among them. These are not reported as hangs."),
            remedy="See the capture-loss finding: capture again without drops to be sure.",
            evidence=self.maybe_lost, key="reply-maybe-lost")

    def drops(self) -> dict[str, int]:
        return {f"calls not checked for a reply ({MAX_PENDING:,} were waiting already)": self.dropped}

    def finish(self):
        found = []
        if self.pending:
            last = max(c["time_ns"] for c in self.pending.values())
            found = self._overdue(last)
        # judged as of when each became a suspect: the input's last event depends on what
        # this detector was shown, that moment does not
        found += [f for f in (self._judge(k, since)
                              for k, (_, _, since) in list(self.suspects.items())) if f]
        if self.maybe_lost_count:
            found.append(self._reply_maybe_lost(last_time=self.maybe_lost[-1]["time_ns"]))
        if self.errors:
            parts = [f"{proc} {err or '?'} x{n}" for (proc, err), n in self.errors.most_common(10)]
            first = min(e["time_ns"] for e in self.error_examples.values())
            found.append(self.finding(
                first, severity="info", title=f"{sum(self.errors.values())} error replies",
                explanation="Replies with op_ret -1 (normal ones like LOOKUP ENOENT left out): "
                            + ", ".join(parts) + ".",
                remedy="Look at the brick logs around these times for the matching errors.",
                evidence=list(self.error_examples.values())[:10], key="error-summary"))
        return found


@hookimpl
def correlate_detectors(config, state):
    return [RpcUnanswered(after_ns=int(config.get("unanswered_after_ns", DEFAULT_AFTER_NS)),
                          state=state)]
