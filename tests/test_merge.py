import random
import threading
import time

from correlate.engine.merge import LiveMerger, merge, reorder, shift_clock


def ev(t, src="a", n=0):
    return {"time_ns": t, "layer": "wire", "kind": "x", "source": src, "n": n}


def test_reorder_sorts_disorder_within_window():
    times = list(range(0, 10_000, 10))
    shuffled = times[:]
    # local disorder: swap neighbours within 50 ns
    for i in range(0, len(shuffled) - 3, 4):
        shuffled[i], shuffled[i + 3] = shuffled[i + 3], shuffled[i]
    out = [e["time_ns"] for e in reorder((ev(t) for t in shuffled), window_ns=100)]
    assert out == times


def test_reorder_never_drops_late_events():
    out = [e["time_ns"] for e in reorder((ev(t) for t in [100, 200, 300, 5]), window_ns=10)]
    assert sorted(out) == [5, 100, 200, 300]


def _heap_reorder(events, window_ns, max_held):
    """The reorder buffer as one heap of everything held: the reference for reorder's FIFO
    of in-order events beside a heap of the others."""
    import heapq
    heap, newest = [], None
    for seq, e in enumerate(events):
        heapq.heappush(heap, (e["time_ns"], seq, e))
        newest = e["time_ns"] if newest is None else max(newest, e["time_ns"])
        while heap and heap[0][0] <= newest - window_ns:
            yield heapq.heappop(heap)[2]
        if len(heap) > max_held:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def test_reorder_emits_what_one_heap_of_everything_would_and_when():
    rnd = random.Random(11)
    for trial in range(300):
        n = rnd.randint(0, 400)
        jitter, window, held = rnd.choice([0, 5, 50, 500]), rnd.choice([0, 10, 100]), rnd.randint(1, 60)
        events = [ev(max(0, 10 * i + rnd.randint(-jitter, jitter)) if rnd.random() > 0.05
                     else rnd.randint(0, 10 * n), n=i) for i in range(n)]
        # what has left after each input event, not only the final order
        assert _releases(reorder(_marked(events), window_ns=window, max_held=held)) == \
            _releases(_heap_reorder(_marked(events), window, held)), trial


def _marked(events):
    """The events, each stamped with how many came in before it left (see _releases)."""
    count = [0]
    for e in events:
        count[0] += 1
        yield dict(e, _in=count)


def _releases(out):
    return [(e["n"], e["_in"][0]) for e in out]


def test_merge_is_ordered_and_stable():
    rnd = random.Random(7)
    streams = []
    for s in range(4):
        ts = sorted(rnd.randrange(0, 1000) for _ in range(200))
        streams.append([ev(t, src=str(s), n=i) for i, t in enumerate(ts)])
    out = list(merge(streams, window_ns=0))
    assert len(out) == 800
    keys = [(e["time_ns"], int(e["source"]), e["n"]) for e in out]
    assert keys == sorted(keys)


def test_shift_clock_applies_offset():
    out = list(shift_clock([ev(10), ev(20)], 5))
    assert [e["time_ns"] for e in out] == [15, 25]
    assert out[0]["clock_offset_ns"] == 5


def test_live_merger_orders_two_threads_and_flushes_on_end():
    base = time.time_ns()

    def slow():
        for i in range(5):
            time.sleep(0.01)
            yield ev(base + 2 * i * 1_000_000 + 1_000_000, "slow", i)

    def fast():
        for i in range(5):
            yield ev(base + 2 * i * 1_000_000, "fast", i)

    m = LiveMerger(window_ns=200_000_000, tick_s=0.01)
    m.add("fast", fast)
    m.add("slow", slow)
    out = [e["time_ns"] for e in m.events()]
    assert out == sorted(out) and len(out) == 10


def test_live_merger_takes_batches_in_the_order_of_single_events():
    """A batched source (lists of events, as the stdin decoding process sends them) leaves
    in the order the same events leave one by one: by time, then source, then arrival (ties
    and disorder included), and the lag watch sees every wire event of it."""
    rnd = random.Random(5)
    base = time.time_ns()           # held by a window longer than the test: all leave sorted
    a = [ev(base + 10 * i + rnd.randint(-30, 30), "a", i) for i in range(3000)]
    b = [ev(base + 10 * i + rnd.randint(-30, 30), "b", i) for i in range(3000)]

    class Watch:
        def __init__(self):
            self.seen = []

        def observe(self, t):
            self.seen.append(t)

        def drained(self):
            pass

    def merged(batched: bool):
        m = LiveMerger(window_ns=10**12, tick_s=0.01)
        m.watch, m.watched = Watch(), "a"
        if batched:
            m.add("a", lambda: (a[i:i + 256] for i in range(0, len(a), 256)), batched=True)
        else:
            m.add("a", lambda: iter(a))
        m.add("b", lambda: iter(b))
        return [(e["source"], e["n"]) for e in m.events()], m.watch.seen

    one_by_one, seen_single = merged(False)
    in_batches, seen_batched = merged(True)
    expected = sorted([("a", i) for i in range(3000)] + [("b", i) for i in range(3000)],
                      key=lambda k: ((a if k[0] == "a" else b)[k[1]]["time_ns"], k))
    assert in_batches == one_by_one == expected
    assert seen_batched == seen_single == [e["time_ns"] for e in a]


def test_live_merger_latency_bounded_by_window():
    window = 100_000_000
    m = LiveMerger(window_ns=window, tick_s=0.01)
    gate = threading.Event()

    def source():
        yield ev(time.time_ns(), "s")
        gate.wait(2)   # stay alive, idle

    m.add("s", source)
    start = time.monotonic()
    it = m.events()
    first = next(it)
    waited = time.monotonic() - start
    gate.set()
    m.stop()
    list(it)
    assert first["source"] == "s"
    assert waited < 1.0   # window 0.1 s + ticks, far from the 2 s the source stays idle


def test_live_merger_reports_source_errors():
    def bad():
        yield ev(1)
        raise RuntimeError("boom")

    m = LiveMerger(window_ns=0, tick_s=0.01)
    m.add("bad", bad)
    assert [e["time_ns"] for e in m.events()] == [1]
    assert m.errors and m.errors[0][0] == "bad"


def test_live_merger_ends_with_finite_sources_and_drains_endless_ones():
    m = LiveMerger(window_ns=50_000_000, tick_s=0.01)

    def capture():
        yield ev(time.time_ns(), "pcap")

    def probes():
        while not m.stopping.is_set():
            time.sleep(0.01)
        yield ev(time.time_ns(), "probe-final")   # emitted while stopping: still delivered

    m.add("pcap", capture)
    m.add("probes", probes, finite=False)
    out = [e["source"] for e in m.events()]
    assert out == ["pcap", "probe-final"]


def test_live_merger_sorts_an_old_capture_by_its_own_times_however_it_arrives():
    """A saved capture piped in has times far behind the wall clock: its disorder (a record
    stamped with its first segment, given when its last arrives) is sorted within the window
    by its own times, not released at whatever moment the reader paused (which made two runs
    of one capture differ)."""
    rnd = random.Random(7)
    base = time.time_ns() - 86_400 * 10**9        # recorded a day ago
    events = [ev(base + 1_000 * i + rnd.randint(-5_000, 5_000), "old", i) for i in range(4000)]

    def paused():
        for i, e in enumerate(events):
            if i % 97 == 0:
                time.sleep(0.002)                 # the reader waits for the pipe now and then
            yield e

    m = LiveMerger(window_ns=50_000_000, tick_s=0.001)
    m.add("old", paused)
    out = [e["time_ns"] for e in m.events()]
    assert out == sorted(out) and len(out) == len(events)


def test_live_merger_holds_at_most_max_held_events():
    """A source whose clock runs far ahead of this host's is not held without bound."""
    from correlate.engine import merge as merge_module
    ahead = time.time_ns() + 3_600 * 10**9
    gate = threading.Event()

    def source():
        for i in range(merge_module.MAX_HELD + 500):
            yield ev(ahead + i, "ahead", i)
        gate.wait(30)                          # stays alive: nothing ends the merge yet

    m = LiveMerger(window_ns=10**12, tick_s=0.01)
    m.add("ahead", source)
    it = m.events()
    start = time.monotonic()
    first = [next(it) for _ in range(500)]
    assert time.monotonic() - start < 10       # left while the source still ran
    gate.set()
    rest = list(it)
    assert [e["n"] for e in first + rest] == list(range(merge_module.MAX_HELD + 500))
