"""Latency over time in bounded memory: call-to-reply latencies folded into time buckets.

A `Clock` holds the bucket width shared by its series. The width starts at 1 ms and doubles
whenever the events seen span more than `target * 2` buckets, so a series never holds more
than about `2 * target` buckets however long the capture; doubling merges neighbouring
buckets exactly (each bucket keeps count, min, max and the sum of log latencies, all
mergeable). The "typical" line is the geometric mean of a bucket: exact under merging, where
a median would need a histogram per bucket, and on a logarithmic axis it sits where the bulk
of the calls are. The band from min to max shows every spike, and each series also keeps its
K slowest calls as points (with their procedure) for the tooltip.
"""
from __future__ import annotations

import heapq
import math

START_WIDTH_NS = 1_000_000


class Clock:
    """Bucket width for a group of series, widened as the capture's span grows."""

    def __init__(self, target: int):
        self.target = target
        self.width = START_WIDTH_NS
        self.origin: int | None = None
        self.lo = self.hi = 0
        self.series: list[Series] = []

    def index(self, t: int) -> int:
        if self.origin is None:
            self.origin = self.lo = self.hi = t
        self.lo, self.hi = min(self.lo, t), max(self.hi, t)
        while (self.hi - self.lo) > self.width * self.target * 2:
            self.width *= 2
            for s in self.series:
                s.halve()
        return (t - self.origin) // self.width

    def start_of(self, index: int) -> int:
        return (self.origin or 0) + index * self.width


class Series:
    """One line of a chart: buckets of (count, min, max, sum of ln latency), K slowest calls."""

    __slots__ = ("clock", "buckets", "slowest", "keep", "calls")

    def __init__(self, clock: Clock, keep: int = 0):
        self.clock = clock
        self.buckets: dict[int, list] = {}
        self.slowest: list[tuple] = []      # min-heap of (latency, time, label)
        self.keep = keep
        self.calls = 0
        clock.series.append(self)

    def add(self, t: int, latency: int, label: str = "") -> None:
        self.calls += 1
        i = self.clock.index(t)
        b = self.buckets.get(i)
        ln = math.log(max(latency, 1))
        if b is None:
            self.buckets[i] = [1, latency, latency, ln]
        else:
            b[0] += 1
            b[1] = min(b[1], latency)
            b[2] = max(b[2], latency)
            b[3] += ln
        if self.keep:
            item = (latency, t, label)
            if len(self.slowest) < self.keep:
                heapq.heappush(self.slowest, item)
            elif item > self.slowest[0]:
                heapq.heapreplace(self.slowest, item)

    def halve(self) -> None:
        merged: dict[int, list] = {}
        for i, b in self.buckets.items():
            m = merged.get(i // 2)
            if m is None:
                merged[i // 2] = b
            else:
                m[0] += b[0]
                m[1] = min(m[1], b[1])
                m[2] = max(m[2], b[2])
                m[3] += b[3]
        self.buckets = merged

    def points(self) -> list[tuple[int, int, int, int, int]]:
        """(bucket middle ns, count, min, typical, max) in time order."""
        half = self.clock.width // 2
        return [(self.clock.start_of(i) + half, b[0], b[1], int(math.exp(b[3] / b[0])), b[2])
                for i, b in sorted(self.buckets.items())]
