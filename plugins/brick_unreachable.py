"""brick-unreachable: the client got its volfile (GETSPEC) and learned a brick's port
(PORTBYBRICK) from glusterd, but the TCP connection to the brick fails.

A firewall that REJECTs answers the SYN at once (RST, or ICMP port unreachable): the mount
fails fast. One that DROPs leaves the SYN unanswered: the client retransmits and the mount
hangs. Which of the two it is tells the admin which rule to look for.

An RST to a port whose brick had just closed its client connections itself is no firewall:
that brick died and nothing listens there any more (brick-down tells that story).

A SYN that a DROP swallows is sent again: the kernel retransmits it after 1 s, 3 s, 7 s.
A timeout with one SYN in seconds of capture is a SYN/ACK the capture lost (the connection
then goes on: a burst of drops), or a client that gave up at once: neither is a DROP.
"""
from __future__ import annotations

from correlate import hookimpl
from correlate.detector import Detector, Wants
from correlate.state import GlusterState

from .gluster_facts import BRICK_PORTS, GLUSTERD_PORTS, find_key, host_of, port_of


RESTART_WINDOW_NS = 120_000_000_000   # a brick restarted by hand or by `start force`


class BrickUnreachable(Detector):
    id = "brick-unreachable"
    # The PORTBYBRICK call a reply answers (the brick path asked) is the shared state's.
    wants = Wants(kinds={"rpc.reply", "tcp.refused", "tcp.timeout", "tcp.close"},
                  procedures={"GETSPEC", "PORTBYBRICK"}, details={"PORTBYBRICK"})

    def __init__(self, state: GlusterState | None = None):
        self.state = state if state is not None else GlusterState()
        self.volfiles: dict[str, dict] = {}               # glusterd host -> GETSPEC reply
        self.bricks: dict[tuple[str, int], tuple] = {}   # (host, port) -> (reply, brick, call)
        self.final_syns: dict[str, dict[str, tuple]] = {}   # key -> dst -> (attempts, span s)
        self.single_syns = 0                # timeouts with one SYN: not a DROP (counted)
        self.gone: dict[str, int] = {}      # brick endpoints whose side closed connections
        # (host, brick path) -> when a port of that brick closed its connections: a brick
        # restarting, for which glusterd may still name a port of an earlier incarnation
        self.gone_bricks: dict[tuple[str, str], int] = {}

    def observe(self, ev):
        kind = ev.get("kind")
        if kind == "rpc.reply" and ev.get("procedure") == "GETSPEC" and ev.get("op_ret", 0) != -1:
            self.volfiles[host_of(ev.get("src"))] = ev
        elif kind == "rpc.reply" and ev.get("procedure") == "PORTBYBRICK":
            call = self.state.calls.call_of(ev)
            port = find_key(ev.get("result") or {}, "port")
            brick = find_key((call or {}).get("args") or {}, "brick") or "?"
            if isinstance(port, int) and port > 0:
                self.bricks[(host_of(ev.get("src")), port)] = (ev, str(brick), call)
        elif kind == "tcp.close" and ev.get("by") == "server" and port_of(ev.get("dst")) in BRICK_PORTS:
            self.gone[ev.get("dst")] = ev["time_ns"]
            if len(self.gone) > 4096:
                self.gone.pop(next(iter(self.gone)))
            learned = self.bricks.get((host_of(ev.get("dst")), port_of(ev.get("dst"))))
            if learned is not None:
                self.gone_bricks[(host_of(ev.get("dst")), learned[1])] = ev["time_ns"]
                if len(self.gone_bricks) > 4096:
                    self.gone_bricks.pop(next(iter(self.gone_bricks)))
        elif kind in ("tcp.refused", "tcp.timeout"):
            if kind == "tcp.timeout" and ev.get("attempts") == 1:
                self.single_syns += 1
                return ()
            if kind == "tcp.refused" and ev.get("reason") != "icmp" and (
                    ev.get("dst") in self.gone or self._restarting(ev)):
                return ()       # the brick that closed its connections is gone: brick-down
            return self._connection_failed(ev)
        return ()

    def drops(self) -> dict[str, int]:
        return {"SYN timeouts with a single SYN (never retransmitted: its SYN/ACK lost from "
                "the capture, or the client gave up at once; a DROP makes the client send it "
                "again)": self.single_syns}

    def _restarting(self, ev) -> bool:
        """A port glusterd named for a brick whose process was seen ending shortly before
        (its connections closed by its side): a stale port of that brick (glusterd keeps
        the port of a SIGKILLed brick that never signed out), not a firewall."""
        learned = self.bricks.get((host_of(ev.get("dst")), port_of(ev.get("dst"))))
        if learned is None:
            return False
        since = self.gone_bricks.get((host_of(ev.get("dst")), learned[1]))
        return since is not None and 0 <= ev["time_ns"] - since <= RESTART_WINDOW_NS

    def _connection_failed(self, ev):
        host, port = host_of(ev.get("dst")), port_of(ev.get("dst"))
        learned = self.bricks.get((host, port))
        if learned is None and port not in BRICK_PORTS and port not in GLUSTERD_PORTS:
            return ()
        if ev["kind"] == "tcp.timeout":
            action = "DROP"
            span = ev.get("syn_span_ns", ev.get("waited_ns", 0)) / 1e9
            how = (f"the SYN to {ev.get('dst')} was sent {ev.get('attempts', '?')} times in "
                   f"{span:.1f} s and never answered: a firewall silently "
                   "drops it, so the client hangs until its timeout")
        elif ev.get("reason") == "icmp":
            action = "REJECT"
            how = (f"the SYN to {ev.get('dst')} was answered by ICMP unreachable (type "
                   f"{ev.get('icmp_type')}, code {ev.get('icmp_code')}) from {ev.get('icmp_from')}: "
                   "a firewall REJECT rule (icmp-port-unreachable)")
        else:
            action = "REJECT"
            how = (f"the SYN to {ev.get('dst')} was answered by RST: a firewall REJECT rule with "
                   "tcp-reset, or no brick process listening on that port")
        evidence = []
        volfile = self.volfiles.get(host)
        if volfile:
            evidence.append(volfile)
        if port in GLUSTERD_PORTS:
            target = f"glusterd on {host} (management port {port})"
            title = f"glusterd unreachable at {ev.get('dst')} ({action})"
            ports_hint = f"{port}/tcp"
        else:
            if learned:
                reply, brick, call = learned
                evidence.extend(e for e in (call, reply) if e)
                target = f"brick {brick} on {host}, port {port} (learned from PORTBYBRICK)"
            else:
                target = f"a brick port {port} on {host} (PORTBYBRICK not captured)"
            title = f"brick unreachable on {host} ({action})"
            ports_hint = "24007/tcp and the brick ports (49152 and up, one per brick)"
        evidence.append(ev)
        fetched = "The client fetched the volfile (GETSPEC) but " if volfile else ""
        explanation = f"{fetched}{how}. Target: {target}."
        key = f"{action}:{host}:{'glusterd' if port in GLUSTERD_PORTS else 'brick'}"
        if ev.get("final"):
            # The client gave up (or the input ended): every SYN is counted now, the last one
            # is the evidence. Said for every connection of this finding.
            finals = self.final_syns.setdefault(key, {})
            finals[ev.get("dst")] = (ev.get("attempts"), span)
            if len(finals) > 1:
                listed = "; ".join(f"to {dst}: {n} SYNs in {s:.1f} s" for dst, (n, s) in finals.items())
                explanation = (f"{fetched}the SYNs were never answered ({listed}): a firewall "
                               f"silently drops them, so the client hangs until its timeout.")
            return [self.finding(ev["time_ns"], severity="error", title=title, refines=True,
                                 explanation=explanation, remedy="", evidence=[ev], key=key,
                                 action=action, target=ev.get("dst"))]
        if action == "DROP":
            remedy = (f"Look for a DROP rule (or a firewall default policy of DROP) on {host} or "
                      f"on the path: `iptables -S | grep -E 'DROP'`, `nft list ruleset`, "
                      f"`firewall-cmd --list-all`. Allow {ports_hint} from the clients, e.g. "
                      "`firewall-cmd --permanent --add-service=glusterfs && firewall-cmd --reload`.")
        else:
            remedy = (f"Look for a REJECT rule on {host}: `iptables -S | grep REJECT`, "
                      f"`nft list ruleset`, `firewall-cmd --list-all`; allow {ports_hint} from the "
                      "clients. If no rule matches, check that the brick process runs "
                      "(`gluster volume status`).")
        return [self.finding(ev["time_ns"], severity="error", title=title,
                             explanation=explanation, remedy=remedy, evidence=evidence,
                             key=key, action=action,
                             target=ev.get("dst"))]


@hookimpl
def correlate_detectors(state):
    return [BrickUnreachable(state)]
