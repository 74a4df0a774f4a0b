"""Does a live capture keep up? The lag between packet times and the wall clock.

`tcpdump -U -w - | correlate run --pcap -`: when correlate takes packets slower than they
come, the pipe fills, tcpdump's buffer fills, and the kernel drops packets without anyone
counting them for us, and the missing replies look like Gluster trouble. So the live merger
shows the watch the time of every wire event it takes in:

- past `warn_s` of lag, one line on stderr (once per episode of falling behind);
- past `skip_s`, the capture reader skips packets (counted, and the TCP tracker reports the
  holes as capture gaps) until the merge has worked off what was queued and what the reader
  reads is back within `warn_s` of the wall clock: a loss that is known and counted instead
  of the kernel's.

Lag is measured against the smallest delay seen so far, not against zero: clocks of the
capturing host and this one may differ, and a saved capture piped in (`cat old.pcap |`)
has old times but is read faster than it was recorded, so it is never "behind".

The reader may be another process (sources/decoder_process.py): what both sides read and
write (skipping, backlog, the base delay, the count skipped) is then in shared memory.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

WARN_S = 2.0
SKIP_S = 10.0
# the slots of what the merge and the reader share
_SKIPPING, _BACKLOG, _HAS_BASE, _BASE, _SKIPPED = range(5)


class LagWatch:
    def __init__(self, warn_s: float = WARN_S, skip_s: float = SKIP_S,
                 clock: Callable[[], int] = time.time_ns, say: Callable[[str], None] | None = None):
        self.warn_ns = int(warn_s * 1e9)
        self.skip_ns = int(skip_s * 1e9)          # 0: never skip
        self.clock = clock
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.lag_ns = 0
        self.max_lag_ns = 0
        self.episodes = 0                         # times it fell behind past warn_s
        # skipping (set here, cleared by the reader), events queued that the merge has not
        # taken, the smallest wall - packet time seen (and whether one was), packets skipped
        self._shared = [0, 0, 0, 0, 0]

    def share(self) -> None:
        """Before a reader process is forked: keep what it reads and writes in shared memory."""
        from multiprocessing import RawArray
        self._shared = RawArray("q", self._shared)

    @property
    def skipping(self) -> bool:
        return bool(self._shared[_SKIPPING])

    @property
    def skipped(self) -> int:
        return self._shared[_SKIPPED]

    def _lag(self, time_ns: int) -> int:
        delay = self.clock() - time_ns
        shared = self._shared
        if not shared[_HAS_BASE] or delay < shared[_BASE]:
            shared[_BASE], shared[_HAS_BASE] = delay, 1
        return delay - shared[_BASE]

    def observe(self, time_ns: int) -> None:
        """The merger took in an event with this time (the consumer's side)."""
        self._shared[_BACKLOG] = 1
        lag = self.lag_ns = self._lag(time_ns)
        if lag > self.max_lag_ns:
            self.max_lag_ns = lag
        if lag > self.warn_ns:
            if not self._behind:
                self._behind = True
                self.episodes += 1
                then = (f"; past {self.skip_ns / 1e9:g} s packets are skipped (counted) to catch up"
                        if self.skip_ns else "")
                self.say(f"correlate: falling behind the live capture: {lag / 1e9:.1f} s behind "
                         f"the packets (warning at {self.warn_ns / 1e9:g} s){then}")
            if self.skip_ns and lag > self.skip_ns:
                self._shared[_SKIPPING] = 1
        elif lag < self.warn_ns // 2:
            self._behind = False

    _behind = False

    def drained(self) -> None:
        """The merge found its queue empty: it has taken every event the reader let in."""
        self._shared[_BACKLOG] = 0

    def skip(self, time_ns: int) -> bool:
        """Should the reader skip this packet? (the reader's side, per packet)"""
        shared = self._shared
        if not shared[_SKIPPING]:
            return False
        if not shared[_BACKLOG] and self._lag(time_ns) <= self.warn_ns:
            shared[_SKIPPING] = 0                 # nothing queued, and this packet is recent
            return False
        shared[_SKIPPED] += 1
        return True

    def summary(self) -> dict:
        return {"max_lag_s": round(self.max_lag_ns / 1e9, 3), "lag_s": round(self.lag_ns / 1e9, 3),
                "fell_behind": self.episodes, "skipped_packets": self.skipped,
                "warn_s": self.warn_ns / 1e9, "skip_s": self.skip_ns / 1e9}

    def closing_line(self) -> str | None:
        if not self.episodes:
            return None
        return (f"correlate: the live capture fell behind {self.episodes} time(s), at most "
                f"{self.max_lag_ns / 1e9:.1f} s; {self.skipped} packets skipped to catch up")
