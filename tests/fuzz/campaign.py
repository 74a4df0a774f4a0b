"""`make fuzz`: mutate the real captures, logs and timelines for a bounded time, driving every
command and renderer (tests/fuzz/target.py); stop at the first failure, shrink it, save it
under tests/fuzz/regressions/ and exit 1.

Hypothesis draws the mutations (see test_fuzz.py for why hypothesis and not atheris); each
round is a fresh random run of `ROUND` inputs per kind, until the time is up.

    python -m tests.fuzz.campaign --seconds 1800
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from . import target
from .mutate import OPS, mutate

ROUND = 25


def mutations_for(kind: str):
    op = st.integers(0, len(OPS[kind]) - 1)
    word = st.integers(0, 2 ** 20)
    return st.lists(st.tuples(op, word, word), min_size=1, max_size=6)


def fuzz_round(kind: str, seeds: list[bytes], others: list[bytes], counts: Counter, found: list,
               examples: int = ROUND, shrink: bool = True) -> None:
    """`examples` mutated inputs of one kind through everything; the first failure is shrunk
    (with `shrink`) and raised."""
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]

    @settings(max_examples=examples, deadline=None, database=None, phases=phases,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(seed=st.integers(0, len(seeds) - 1), other=st.integers(0, len(others) - 1),
           muts=mutations_for(kind))
    def one(seed, other, muts):
        data = mutate(kind, seeds[seed], muts, others[other])
        try:
            counts["commands"] += target.check_input(kind, data)
        except Exception as exc:
            found[:] = [kind, data, traceback.format_exc()]
            raise
        finally:
            counts[kind] += 1

    one()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="correlate-seeds-") as d:
        seeds = target.seeds(Path(d))
    others = [s for group in seeds.values() for s in group]
    counts: Counter = Counter()
    start = time.monotonic()
    found: list = []
    rounds = 0
    try:
        while time.monotonic() - start < args.seconds:
            for kind in ("capture", "timeline", "log"):
                fuzz_round(kind, seeds[kind], others, counts, found)
            rounds += 1
            elapsed = time.monotonic() - start
            print(f"fuzz: {elapsed:.0f} s: {counts['capture']} captures, {counts['timeline']} timelines, "
                  f"{counts['log']} logs, {counts['commands']} command runs", flush=True)
    except Exception as exc:
        if not found:
            raise
        kind, data, failure = found
        path = target.save_regression(kind, data, failure)
        print(f"fuzz: FAILURE on a {kind} input, saved to {path}:\n{failure}", file=sys.stderr)
        return 1
    print(f"fuzz: done after {time.monotonic() - start:.0f} s, no failure: {counts['capture']} captures, "
          f"{counts['timeline']} timelines, {counts['log']} logs mutated; {counts['commands']} command "
          f"and renderer runs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
