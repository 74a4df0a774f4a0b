"""A latency sketch as small as the latencies it holds: DDSketch's logarithmic buckets (the
`ddsketch` package's own mapping, so keys, quantiles and the 1% relative accuracy are the
package's), counted in one dense array of machine integers instead of the package's list of
Python floats. A profile or detector keeps thousands of these (one per brick and procedure):
with 50 latencies the package's sketch takes about 4.8 KB, this one about 1 KB.
"""
from __future__ import annotations

import math
from array import array

from ddsketch.mapping import LogarithmicMapping

RELATIVE_ACCURACY = 0.01       # 1%: a 200 ms p50 is reported within 198-202 ms
BIN_LIMIT = 2048               # buckets per sketch: 1 ns .. hours at 1% stay uncollapsed
MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
# MAPPING.key(value) written out (LogarithmicMapping: ceil(log2(value) * multiplier) + offset,
# the same float operations): two method calls per latency saved; tests/test_sketch.py
# compares the keys with the package's.
_MULTIPLIER, _OFFSET, _MIN = MAPPING._multiplier, MAPPING._offset, MAPPING.min_possible


def key_of(value: float) -> int:
    return int(math.ceil(math.log(value, 2) * _MULTIPLIER) + _OFFSET)


class LatencySketch:
    """add(value >= 0); quantile(q) as DDSketch's get_quantile_value with a lowest-collapsing
    store of BIN_LIMIT buckets."""
    __slots__ = ("count", "zeros", "offset", "bins")

    def __init__(self):
        self.count = self.zeros = self.offset = 0
        self.bins = array("I")      # bins[i] counts key offset + i ("Q" past 2**32 - 1)

    def add(self, value: float) -> None:
        self.count += 1
        if value <= _MIN:
            self.zeros += 1
            return
        key = int(math.ceil(math.log(value, 2) * _MULTIPLIER) + _OFFSET)    # key_of(value)
        bins = self.bins
        if not bins:
            self.offset = key
            bins.append(1)
            return
        index = key - self.offset
        if index < 0:
            self.bins = bins = array(bins.typecode, bytes(bins.itemsize * -index)) + bins
            self.offset = key
            index = 0
        elif index >= len(bins):
            bins.extend(array(bins.typecode, bytes(bins.itemsize * (index - len(bins) + 1))))
        try:
            bins[index] += 1
        except OverflowError:       # 4 billion latencies in one bucket: wider counters
            self.bins = bins = array("Q", bins)
            bins[index] += 1
        if len(bins) > BIN_LIMIT:       # fold the lowest buckets into the lowest one kept
            excess = len(bins) - BIN_LIMIT
            folded = sum(bins[:excess + 1])
            del bins[:excess]
            try:
                bins[0] = folded
            except OverflowError:
                self.bins = bins = array("Q", bins)
                bins[0] = folded
            self.offset += excess

    def quantile(self, q: float) -> float | None:
        if self.count == 0 or not 0 <= q <= 1:
            return None
        rank = q * (self.count - 1)
        if rank < self.zeros:
            return 0.0
        rank -= self.zeros
        running = 0
        for i, n in enumerate(self.bins):
            running += n
            if running > rank:
                return MAPPING.value(i + self.offset)
        return MAPPING.value(len(self.bins) - 1 + self.offset)


class LatencyRow:
    """Replies counted, their latencies in a sketch, the max kept exactly; quantiles cached
    until the next latency (a sketch's quantile walks its buckets, and detectors ask the same
    rows again and again between two replies)."""
    __slots__ = ("replies", "max_ns", "sketch", "_quantiles")

    def __init__(self):
        self.replies = self.max_ns = 0
        self.sketch = LatencySketch()
        self._quantiles: dict[float, int | None] = {}

    def add(self, latency) -> bool:
        """One reply; its latency when it has one (an int >= 0). True when it had."""
        self.replies += 1
        if not (isinstance(latency, int) and latency >= 0):
            return False
        self.sketch.add(latency)
        if self._quantiles:
            self._quantiles = {}
        if latency > self.max_ns:
            self.max_ns = latency
        return True

    def quantile(self, q: float) -> int | None:
        """The q-quantile in whole ns (never above the max), None without latencies."""
        try:
            return self._quantiles[q]
        except KeyError:
            pass
        value = self.sketch.quantile(q)
        value = None if value is None else min(int(round(value)), self.max_ns)
        self._quantiles[q] = value
        return value
