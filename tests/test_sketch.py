"""correlate.sketch against the ddsketch package it stands in for: the same quantiles on the
same latencies (the package is the oracle), bounded buckets, counters that do not overflow."""
import random
from array import array

from ddsketch import LogCollapsingLowestDenseDDSketch
from hypothesis import given, settings, strategies as st

from correlate.sketch import BIN_LIMIT, MAPPING, LatencyRow, LatencySketch, key_of

QS = (0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0)
latencies = st.lists(st.one_of(st.just(0), st.integers(1, 10**13),
                               st.floats(0, 1e13, allow_nan=False)), min_size=1, max_size=300)


@settings(max_examples=300, deadline=None)
@given(latencies)
def test_quantiles_equal_the_packages(values):
    ours, theirs = LatencySketch(), LogCollapsingLowestDenseDDSketch(0.01, bin_limit=BIN_LIMIT)
    for v in values:
        ours.add(v)
        theirs.add(v)
    assert ours.count == theirs.count
    for q in QS:
        assert ours.quantile(q) == theirs.get_quantile_value(q), q


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.integers(1, 10**15), st.floats(1e-9, 1e15, allow_nan=False)))
def test_keys_are_the_packages(value):
    assert key_of(value) == MAPPING.key(value)


def test_keys_are_the_packages_at_every_bucket_edge():
    for key in range(MAPPING.key(1), MAPPING.key(10**13)):
        edge = MAPPING.value(key)
        for v in (edge, edge * (1 - 1e-12), edge * (1 + 1e-12)):
            assert key_of(v) == MAPPING.key(v)


def test_lognormal_latencies_like_a_brick():
    rng = random.Random(7)
    ours, theirs = LatencySketch(), LogCollapsingLowestDenseDDSketch(0.01, bin_limit=BIN_LIMIT)
    for _ in range(20_000):
        v = int(rng.lognormvariate(12, 1.5))
        ours.add(v)
        theirs.add(v)
    assert [ours.quantile(q) for q in QS] == [theirs.get_quantile_value(q) for q in QS]


def test_empty_and_out_of_range():
    s = LatencySketch()
    assert s.quantile(0.5) is None
    s.add(5)
    assert s.quantile(-0.1) is None and s.quantile(1.5) is None


def test_buckets_stay_bounded_however_wide_the_values():
    s = LatencySketch()
    for e in range(0, 300):
        s.add(1.1 ** e * 1e-40)          # far wider than BIN_LIMIT buckets at 1 %
        s.add(10.0 ** (e % 300 - 150))
    assert len(s.bins) <= BIN_LIMIT and sum(s.bins) + s.zeros == s.count


def test_a_full_bucket_widens_its_counters():
    s = LatencySketch()
    s.add(1000)
    s.bins[0] = s.count = 2**32 - 1
    s.add(1000)
    assert s.bins.typecode == "Q" and s.bins[0] == 2**32
    s.add(10**9)            # and it still grows after the change
    assert s.quantile(1.0) > 9.8e8
    assert isinstance(s.bins, array)


def test_a_row_counts_replies_and_forgets_a_cached_quantile_on_the_next_latency():
    row = LatencyRow()
    assert row.add(None) is False and row.replies == 1 and row.quantile(0.5) is None
    for v in (100_000, 200_000, 300_000):
        row.add(v)
    first = row.quantile(0.5)
    assert abs(first - 200_000) <= 2_000 and row.quantile(0.5) is first    # cached
    row.add(10**9)
    row.add(10**9)
    assert row.quantile(0.5) > first and row.quantile(1.0) == row.max_ns == 10**9
    assert row.replies == 6
