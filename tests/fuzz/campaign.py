"""`make fuzz`: mutate the real captures, logs and timelines for a bounded time, driving every
command and renderer (tests/fuzz/target.py); each failure is shrunk and saved under
tests/fuzz/regressions/, the campaign goes on, and it exits 1 if there was any.

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

from . import command_lines, target
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


# Command-line edges: a hostile option value (one of the list, or any text hypothesis draws)
# in a command template with a hostile config file; an output to a hostile target; stdout on
# a full device or in ASCII.
EDGES = {
    "options": (lambda t, v, c, text: command_lines.check_option(t, text if c % 4 == 3 else
                                                                 command_lines.HOSTILE_OPTION_VALUES[
                                                                     v % len(command_lines.HOSTILE_OPTION_VALUES)], c)),
    "outputs": (lambda t, v, c, text: command_lines.check_output_target(t, v)),
    "stdout": (lambda t, v, c, text: command_lines.check_stdout(t, v)),
}


def fuzz_edges(kind: str, counts: Counter, found: list, examples: int = ROUND,
               shrink: bool = True) -> None:
    """`examples` command lines of one edge kind; the first failure is shrunk and raised."""
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]

    @settings(max_examples=examples, deadline=None, database=None, phases=phases,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(t=st.integers(0, 2 ** 16), v=st.integers(0, 2 ** 16), c=st.integers(0, 2 ** 16),
           text=st.text(max_size=40))
    def one(t, v, c, text):
        try:
            counts["commands"] += EDGES[kind](t, v, c, text)
        except Exception:
            found[:] = [kind, f"{kind}: t={t} v={v} c={c} text={text!r}".encode(), traceback.format_exc()]
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
    failures = 0
    while time.monotonic() - start < args.seconds:
        for kind in ("capture", "timeline", "log", *EDGES):
            found: list = []
            try:
                if kind in EDGES:
                    fuzz_edges(kind, counts, found)
                else:
                    fuzz_round(kind, seeds[kind], others, counts, found)
            except Exception:
                if not found:
                    raise
                failures += 1       # saved, and the campaign goes on to find the next one
                path = target.save_regression(*found)
                print(f"fuzz: FAILURE on a {kind} input, saved to {path}:\n{found[2]}", file=sys.stderr)
        elapsed = time.monotonic() - start
        print(f"fuzz: {elapsed:.0f} s: {counts['capture']} captures, {counts['timeline']} timelines, "
              f"{counts['log']} logs, {counts['options']} option values, {counts['outputs']} output "
              f"targets, {counts['stdout']} stdouts, {counts['commands']} command runs", flush=True)
    print(f"fuzz: done after {time.monotonic() - start:.0f} s, {failures} failures: {counts['capture']} "
          f"captures, {counts['timeline']} timelines, {counts['log']} logs mutated; {counts['commands']} "
          f"command and renderer runs", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
