"""CLOCK_MONOTONIC (what bpf_ktime_get_ns returns) to CLOCK_REALTIME (the event contract).

Method: read REALTIME, MONOTONIC, REALTIME back to back. The monotonic reading happened
somewhere between the two realtime readings, so offset = midpoint(realtime) - monotonic is
wrong by at most half the gap. Of N such brackets the tightest wins; half its gap is the
recorded error bound. Realtime can be stepped or slewed by NTP while monotonic is not, so a
long run re-measures (ClockMap.maybe_remeasure).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

REMEASURE_NS = 60 * 1_000_000_000


@dataclass(frozen=True)
class ClockOffset:
    offset_ns: int        # realtime = monotonic + offset_ns
    error_ns: int         # half the tightest bracket: |true offset - offset_ns| <= error_ns
    measured_mono_ns: int
    samples: int


def measure(samples: int = 200) -> ClockOffset:
    rt, mono = time.CLOCK_REALTIME, time.CLOCK_MONOTONIC
    get = time.clock_gettime_ns
    best_gap = None
    best = (0, 0)
    for _ in range(max(1, samples)):
        r1 = get(rt)
        m = get(mono)
        r2 = get(rt)
        gap = r2 - r1
        if gap < 0:          # realtime stepped backwards inside the bracket: discard
            continue
        if best_gap is None or gap < best_gap:
            best_gap = gap
            best = ((r1 + r2) // 2 - m, m)
    if best_gap is None:
        raise RuntimeError("CLOCK_REALTIME kept stepping backwards; cannot measure the offset")
    return ClockOffset(best[0], (best_gap + 1) // 2, best[1], samples)


class ClockMap:
    """Converts monotonic timestamps, re-measuring the offset every REMEASURE_NS."""

    def __init__(self, samples: int = 200, interval_ns: int = REMEASURE_NS):
        self.samples = samples
        self.interval_ns = interval_ns
        self.current = measure(samples)
        self.history: list[ClockOffset] = [self.current]

    def to_realtime(self, mono_ns: int) -> int:
        return mono_ns + self.current.offset_ns

    def maybe_remeasure(self) -> bool:
        if time.clock_gettime_ns(time.CLOCK_MONOTONIC) - self.current.measured_mono_ns < self.interval_ns:
            return False
        self.current = measure(self.samples)
        self.history.append(self.current)
        return True

    @property
    def error_ns(self) -> int:
        return max(c.error_ns for c in self.history)

    @property
    def drift_ns(self) -> int:
        """How far the offset moved between measurements (NTP slew or steps)."""
        offs = [c.offset_ns for c in self.history]
        return max(offs) - min(offs)
