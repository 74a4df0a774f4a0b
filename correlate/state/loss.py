"""Capture loss as a fact detectors can ask about: the bytes a receiver acknowledged that the
capture never showed (`tcp.gap` events), per connection and overall.

A reply can hide in a gap. So a call is "unanswered" only when no gap toward its client
opened on its connection after the call went out: with one, the absence of the reply means
nothing, and a finding that rests on it must say so (or not be made). A real hang gives no
gap: a server that does not answer sends no bytes to lose.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

MAX_CONNECTIONS = 65536
# Bytes that arrive behind a hole wait in reassembly until the hole is known lost (the
# receiver's ACK passes it, an RTT or a delayed ACK later); a call among them is stamped then,
# so a gap toward the caller that opened this long before the call's stamp may hold its reply.
HELD_SLACK_NS = 1_000_000_000


@dataclass(slots=True)
class ConnLoss:
    gaps: int = 0
    missing_bytes: int = 0
    first_ns: int | None = None
    # receiving endpoint ("ip:port") -> the latest time bytes toward it went missing
    last_ns: dict = field(default_factory=dict)


class CaptureLoss:
    def __init__(self):
        self._conns: OrderedDict[tuple, ConnLoss] = OrderedDict()
        self.gaps = 0
        self.missing_bytes = 0
        self.connections = 0          # connections that lost anything
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.sources: set = set()
        self.hidden_replies = 0       # calls whose missing reply a gap explains (detectors count)

    def observe_gap(self, ev: dict) -> None:
        key = (ev.get("source"), ev.get("conn"))
        missing = ev.get("missing")
        missing = missing if type(missing) is int and missing > 0 else 0
        t = ev.get("time_ns")
        loss = self._conns.get(key)
        if loss is None:
            loss = self._conns[key] = ConnLoss(first_ns=t)
            self.connections += 1
            if len(self._conns) > MAX_CONNECTIONS:
                self._conns.popitem(last=False)
        loss.gaps += 1
        loss.missing_bytes += missing
        receiver = ev.get("dst") if ev.get("direction") == "to_server" else ev.get("src")
        loss.last_ns[receiver] = t
        self.gaps += 1
        self.missing_bytes += missing
        self.sources.add(ev.get("source"))
        if type(t) is int:
            self.first_ns = t if self.first_ns is None else min(self.first_ns, t)
            self.last_ns = t if self.last_ns is None else max(self.last_ns, t)

    def of(self, ev: dict) -> ConnLoss | None:
        """The loss on the connection of an event, None when it lost nothing."""
        return self._conns.get((ev.get("source"), ev.get("conn")))

    def reply_may_be_lost(self, call: dict) -> bool:
        """Could the capture have lost this call's reply? True when bytes toward the caller
        went missing on its connection after the call (or just before its stamp: see
        HELD_SLACK_NS)."""
        loss = self._conns.get((call.get("source"), call.get("conn")))
        if loss is None:
            return False
        last = loss.last_ns.get(call.get("src"))     # the reply travels toward the caller
        t = call.get("time_ns")
        return last is not None and (type(t) is not int or last >= t - HELD_SLACK_NS)

    def since(self, start: int) -> bool:
        """Whether any connection showed a gap at or after `start` (a burst of lost packets
        touches every connection that was busy then)."""
        return self.last_ns is not None and self.last_ns >= start

    def __bool__(self) -> bool:
        return self.gaps > 0

