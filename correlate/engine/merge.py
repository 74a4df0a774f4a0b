"""Merge engine: many roughly time-ordered event streams -> one ordered stream.

Offline, every stream is finite: each passes through a bounded reorder buffer (a stream may
be slightly out of order, e.g. per-CPU perf buffers) and the streams are k-way merged.
Live, sources push into a queue from their own threads; an event leaves once every source's
watermark has passed it. A source's watermark is the newest time it gave, minus the reorder
window, plus the wall-clock time it has been quiet since: a live capture's follows the wall
clock, and a saved capture piped in (old times, read faster than recorded) is reordered by
its own times, the same however its events were grouped on the way. So events leave in
order, at most `window_ns` (plus a poll tick) late.

Ties are broken stably: by time, then by the source's position in the input list, then by
arrival order within the source.
"""
from __future__ import annotations

import heapq
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

DEFAULT_WINDOW_NS = 500_000_000   # 0.5 s: covers perf-buffer and pipe batching on loopback
MAX_QUEUED = 2048               # events waiting between live sources and the merge
MAX_QUEUED_BATCHES = 8          # of a batched source's lists (DecoderProcess: 256 events each)
HOLD_BACK_S = 0.002             # how long a reader waits while the merge is that far behind
# Events one stream's reorder buffer holds at most, however dense the stream: a burst of
# 200,000 connections in half a second must not be held whole (memory stays bounded).
MAX_HELD = 10_000


def shift_clock(events: Iterable[dict], offset_ns: int) -> Iterator[dict]:
    """Apply a per-source clock offset (a host whose clock runs behind gets a positive one)."""
    if not offset_ns:
        yield from events
        return
    for ev in events:
        ev["time_ns"] = ev["time_ns"] + offset_ns
        ev["clock_offset_ns"] = offset_ns
        yield ev


def reorder(events: Iterable[dict], window_ns: int = DEFAULT_WINDOW_NS,
            max_held: int = MAX_HELD) -> Iterator[dict]:
    """Sort a nearly sorted stream, holding at most `window_ns` worth of events, and never
    more than `max_held` of them (the oldest leaves first).

    An event later than the window behind the newest one is emitted as soon as possible
    (never dropped), so the output is sorted whenever the input disorder fits the window.
    Events in order wait in a FIFO, only the others in a heap: most of a capture costs an
    append and a pop, not a heap's log n comparisons (the order out is the same, by time
    then by arrival)."""
    fifo: deque[tuple[int, int, dict]] = deque()     # in order: ascending (time, seq)
    heap: list[tuple[int, int, dict]] = []           # the events that came out of order
    newest = None
    for seq, ev in enumerate(events):
        t = ev["time_ns"]
        if newest is None or t >= newest:
            fifo.append((t, seq, ev))
            newest = t
        else:
            heapq.heappush(heap, (t, seq, ev))
        edge = newest - window_ns
        if heap:
            while (fifo or heap) and _oldest(fifo, heap)[0] <= edge:
                yield _pop_oldest(fifo, heap)
            if len(fifo) + len(heap) > max_held:
                yield _pop_oldest(fifo, heap)
        else:
            while fifo and fifo[0][0] <= edge:
                yield fifo.popleft()[2]
            if len(fifo) > max_held:
                yield fifo.popleft()[2]
    while fifo or heap:
        yield _pop_oldest(fifo, heap)


# A FIFO of the entries that came in order beside a heap of the others; entries are tuples
# whose first item is the time and whose last is the event (the items between break ties).
def _oldest(fifo: deque, heap: list) -> tuple:
    if not heap:
        return fifo[0]
    if not fifo:
        return heap[0]
    return heap[0] if heap[0] < fifo[0] else fifo[0]


def _pop_oldest(fifo: deque, heap: list) -> dict:
    if heap and (not fifo or heap[0] < fifo[0]):
        return heapq.heappop(heap)[-1]
    return fifo.popleft()[-1]


def merge(streams: list[Iterable[dict]], window_ns: int = DEFAULT_WINDOW_NS) -> Iterator[dict]:
    """Offline k-way merge of finite streams, each reordered within `window_ns`."""
    streams = list(streams)
    if len(streams) == 1:      # nothing to interleave: a k-way merge would only add its cost
        yield from reorder(streams[0], window_ns)
        return

    def keyed(index: int, stream: Iterable[dict]):
        for seq, ev in enumerate(reorder(stream, window_ns)):
            yield ev["time_ns"], index, seq, ev

    for _t, _i, _s, ev in heapq.merge(*(keyed(i, s) for i, s in enumerate(streams))):
        yield ev


class _Held:
    """Events waiting for the watermark, leaving in (time, source, arrival) order: those
    that arrive in that order wait in a FIFO, only the others in a heap (a single live
    capture costs an append and a pop per event, not a heap's log n comparisons)."""

    def __init__(self):
        self.fifo: deque[tuple[int, int, int, dict]] = deque()
        self.heap: list[tuple[int, int, int, dict]] = []
        self.seq = 0

    def put(self, t: int, index: int, ev: dict) -> None:
        self.seq += 1
        entry = (t, index, self.seq, ev)
        fifo = self.fifo
        if not fifo or (t, index) >= fifo[-1][:2]:
            fifo.append(entry)
        else:
            heapq.heappush(self.heap, entry)

    def take(self, watermark: int | None, max_held: int = MAX_HELD) -> Iterator[dict]:
        """What is at or before the watermark (None: everything), oldest first; and the
        oldest beyond `max_held` (memory stays bounded whatever the clocks say)."""
        fifo, heap = self.fifo, self.heap
        while fifo or heap:
            if (watermark is not None and _oldest(fifo, heap)[0] > watermark
                    and len(fifo) + len(heap) <= max_held):
                return
            yield _pop_oldest(fifo, heap)


class LiveMerger:
    """Merge live sources that run in their own threads.

    Each source is a callable that yields events (blocking as it likes); the merger runs it in
    a daemon thread. `events()` yields merged events in time order until every source ended
    or `stop()` was called, then flushes what is left, in order."""

    _END = object()

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS, tick_s: float = 0.05,
                 clock: Callable[[], int] = time.time_ns):
        self.window_ns = window_ns
        self.tick_s = tick_s
        self.clock = clock
        # Bounded: a consumer that falls behind holds back the readers (memory stays flat);
        # a live capture's lag then shows at `watch` (correlate.sources.lag.LagWatch), if given,
        # which sees the wire events of the source named `watched` only. A SimpleQueue (C,
        # no Python-level locking: a queue.Queue cost 5 us per event between two threads),
        # bounded by the readers looking at its size.
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.watch = None
        self.watched = "stdin"
        self._sources: list[str] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._finite: set[int] = set()
        self._batched: set[int] = set()
        self.errors: list[tuple[str, BaseException]] = []

    def add(self, name: str, produce: Callable[[], Iterable], *, finite: bool = True,
            batched: bool = False) -> None:
        """Run `produce` in a thread. The merge ends when every finite source has ended (or,
        with none, on `stop()`); endless sources (live probes) should watch `stopping`.
        batched: `produce` yields lists of events (handed over a list at a time)."""
        index = len(self._sources)
        self._sources.append(name)
        if finite:
            self._finite.add(index)
        if batched:
            self._batched.add(index)
        bound = MAX_QUEUED_BATCHES if batched else MAX_QUEUED

        def pump():
            q, stopping = self._queue, self._stopping
            try:
                for ev in produce():
                    while q.qsize() >= bound and not stopping.is_set():
                        time.sleep(HOLD_BACK_S)
                    q.put((index, ev))
                    if finite and self._stopping.is_set():
                        break   # endless sources end themselves, after draining
            except BaseException as exc:   # reported by the caller, never lost silently
                self.errors.append((name, exc))
            finally:
                self._queue.put((index, self._END))

        self._threads.append(threading.Thread(target=pump, name=f"source-{name}", daemon=True))

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> threading.Event:
        return self._stopping

    def events(self) -> Iterator[dict]:
        for t in self._threads:
            t.start()
        live = set(range(len(self._sources)))
        held = _Held()
        watch = self.watch
        watched = self._sources.index(self.watched) if self.watched in self._sources else -1
        batched = self._batched
        clock = self.clock
        # per source: the newest time it gave, and when (wall clock) it last gave anything
        newest: list[int | None] = [None] * len(self._sources)
        heard = [0] * len(self._sources)
        get, get_now = self._queue.get, self._queue.get_nowait
        while live and not self._stopping.is_set() and (live & self._finite or not self._finite):
            deadline = time.monotonic() + self.tick_s
            while True:   # drain what has arrived within this tick
                try:
                    index, item = get_now()
                except queue.Empty:
                    try:
                        index, item = get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        if watch is not None:
                            watch.drained()
                        break
                if item is self._END:
                    live.discard(index)
                    continue
                top = newest[index]
                for ev in (item if index in batched else (item,)):
                    t = ev["time_ns"]
                    if watch is not None and index == watched and ev["layer"] == "wire":
                        watch.observe(t)
                    held.put(t, index, ev)
                    if top is None or t > top:
                        top = t
                newest[index] = top
                heard[index] = clock()
            yield from held.take(self._watermark(live, newest, heard))
        # Stopped or all finite sources ended: let the others finish their last events (live
        # probes drain their buffers on stop), then flush everything in order.
        # A finite source still running is blocked in a read (a quiet stdin): not waited for.
        self._stopping.set()
        deadline = time.monotonic() + 3.0
        for index, t in enumerate(self._threads):
            if index not in self._finite:
                t.join(max(0.0, deadline - time.monotonic()))
        while True:
            try:
                index, item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not self._END:
                for ev in (item if index in batched else (item,)):
                    held.put(ev["time_ns"], index, ev)
        yield from held.take(None)

    def _watermark(self, live: set[int], newest: list, heard: list[int]) -> int:
        """No source still running will give an event older than this (within the window)."""
        now = self.clock()
        marks = [now if newest[i] is None else newest[i] + now - heard[i] for i in live]
        return min(marks, default=now) - self.window_ns

    def blocked_sources(self) -> list[str]:
        """Sources whose thread has not ended (blocked in a read) after the merge finished."""
        return [t.name for t in self._threads if t.is_alive()]

    @property
    def source_names(self) -> list[str]:
        return list(self._sources)

