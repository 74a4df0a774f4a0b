"""Clock offset between two captures of the same TCP connections, taken at both ends.

Each RPC seen in both captures (same client/server endpoints and xid) gives four times, as in
NTP: the call leaves the client (t1) and reaches the server (t2), the reply leaves the server
(t3) and reaches the client (t4). Causality bounds the server clock's offset theta from the
client clock: t2 - theta >= t1 and t4 >= t3 - theta, so

    t3 - t4 <= theta <= t2 - t1,    width = (t4 - t1) - (t3 - t2) = the pair's network delay.

Every pair's interval contains the true offset (clocks that do not drift during the
captures), so the intersection of all intervals bounds it; the estimate is its middle and
the uncertainty its half-width. Which capture holds the client side needs no telling: with
dc = B.call - A.call and dr = B.reply - A.reply the interval is [min(dc, dr), max(dc, dr)].
If the intervals do not intersect (drift, or timestamps from different points of the
stack), the lowest-delay pairs are used and the estimate is marked inconsistent.

Offsets are B's clock minus A's: apply `shift_clock(events_b, -estimate.offset_ns)` to put
B on A's clock.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_INDEXED = 1_000_000       # RPCs remembered from capture B (enough pairs long before this)


@dataclass(frozen=True)
class OffsetEstimate:
    offset_ns: int           # clock of B minus clock of A
    uncertainty_ns: int      # half-width of the interval the true offset lies in
    pairs: int               # RPC call/reply pairs seen in both captures and used
    min_delay_ns: int        # the smallest network round trip among the pairs
    consistent: bool = True  # False: the pairs' bounds did not intersect (see module doc)

    @property
    def low_ns(self) -> int:
        return self.offset_ns - self.uncertainty_ns

    @property
    def high_ns(self) -> int:
        return self.offset_ns + self.uncertainty_ns

    def inverted(self) -> "OffsetEstimate":
        """The same estimate seen from the other capture (A's clock minus B's)."""
        return OffsetEstimate(-self.offset_ns, self.uncertainty_ns, self.pairs, self.min_delay_ns,
                              self.consistent)

    def describe(self, a: str = "A", b: str = "B") -> str:
        ahead = "ahead of" if self.offset_ns >= 0 else "behind"
        note = "" if self.consistent else " (bounds disagree: clock drift? estimate from the fastest pairs)"
        return (f"clock of {b} is {abs(self.offset_ns) / 1e9:.6f} s {ahead} {a} "
                f"(+/- {self.uncertainty_ns / 1e9:.6f} s, from {self.pairs} RPC pairs){note}")


def _rpc_key(ev: dict) -> tuple | None:
    """(client endpoint, server endpoint, xid), the same in both captures of one connection."""
    kind = ev.get("kind")
    xid = ev.get("xid")
    if xid is None or ev.get("layer") != "wire":
        return None
    if kind == "rpc.call":
        return ev.get("src"), ev.get("dst"), xid
    if kind == "rpc.reply":
        return ev.get("dst"), ev.get("src"), xid
    return None


def _call_reply_times(events: Iterable[dict], limit: int = MAX_INDEXED,
                      only: dict | None = None) -> dict[tuple, list]:
    """key -> [call time, reply time] (first of each; None when not seen), for at most
    `limit` keys, or only for the keys of `only`."""
    times: dict[tuple, list] = {}
    for ev in events:
        key = _rpc_key(ev)
        if key is None or (only is not None and key not in only):
            continue
        slot = times.get(key)
        if slot is None:
            if only is None and len(times) >= limit:
                continue
            slot = times[key] = [None, None]
        i = 0 if ev["kind"] == "rpc.call" else 1
        if slot[i] is None:
            slot[i] = ev["time_ns"]
    return times


class RpcTimes:
    """The call and reply times of one capture's RPCs, indexed once to be compared with
    several other captures (only this side is held in memory; the other side streams)."""

    def __init__(self, events: Iterable[dict], limit: int = MAX_INDEXED):
        self.times = _call_reply_times(events, limit)


def pair_intervals(events_a: Iterable[dict], events_b: Iterable[dict] | RpcTimes) -> list[tuple[int, int]]:
    """The [low, high] bound on (clock B - clock A) from each RPC complete in both captures."""
    b_times = events_b.times if isinstance(events_b, RpcTimes) else _call_reply_times(events_b)
    a_times = _call_reply_times(events_a, only=b_times)
    out = []
    for key, (a_call, a_reply) in a_times.items():
        b = b_times.get(key)
        if b is None or None in (a_call, a_reply, b[0], b[1]):
            continue
        dc, dr = b[0] - a_call, b[1] - a_reply
        out.append((min(dc, dr), max(dc, dr)))
    return out


def combine(intervals: list[tuple[int, int]]) -> OffsetEstimate | None:
    """Intersect the pairs' bounds; fall back to the lowest-delay pairs when they disagree."""
    if not intervals:
        return None
    min_delay = min(hi - lo for lo, hi in intervals)
    lo = max(i[0] for i in intervals)
    hi = min(i[1] for i in intervals)
    if lo <= hi:
        return OffsetEstimate((lo + hi) // 2, (hi - lo + 1) // 2, len(intervals), min_delay)
    fastest = sorted(intervals, key=lambda i: i[1] - i[0])[:max(1, len(intervals) // 4)]
    lo = max(i[0] for i in fastest)
    hi = min(i[1] for i in fastest)
    if lo > hi:
        lo, hi = fastest[0]
    return OffsetEstimate((lo + hi) // 2, (hi - lo + 1) // 2, len(fastest), min_delay, consistent=False)


def estimate_offset(events_a: Iterable[dict], events_b: Iterable[dict] | RpcTimes) -> OffsetEstimate | None:
    """Offset of B's clock from A's, from RPCs seen in both; None when no RPC pairs up.

    B's RPCs are indexed (at most MAX_INDEXED), A's stream past; pass `RpcTimes(events)` as
    B to compare one capture with several."""
    return combine(pair_intervals(events_a, events_b))
