"""The fuzz harness (tests/fuzz): a short pass in every test run, and the replay of every input
a campaign (`make fuzz`) found failing.

Why hypothesis rather than atheris: the hostile inputs that break things past the decoder are
structured (a JSON value of the wrong type, a log number of 5,000 digits, an escape sequence
in one field), so the harness mutates real inputs with structure-aware operations whose
choices hypothesis draws; hypothesis then shrinks a failure to the few mutations that matter,
runs inside pytest for the short pass, and is a test dependency already. atheris's coverage
guidance pays most on a binary decoder, and the capture decoder was fuzzed that way already
(1.29 million mutated captures without a failure); byte mutations of captures are kept here.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tests.fuzz import command_lines, target
from tests.fuzz.campaign import fuzz_edges, fuzz_round

SHORT_PASS_EXAMPLES = 25     # per kind of input: 20-40 s in all on a loaded 2-core machine


@pytest.fixture(scope="module")
def seeds():
    with tempfile.TemporaryDirectory(prefix="correlate-seeds-") as d:
        return target.seeds(Path(d))


@pytest.mark.parametrize("kind, path", target.regression_inputs(),
                         ids=[p.name for _k, p in target.regression_inputs()])
def test_regression_input(kind, path):
    """Inputs a campaign found failing: each must now pass every command and renderer."""
    target.check_input(kind, path.read_bytes())


@pytest.mark.parametrize("kind", ["capture", "timeline", "log"])
def test_short_fuzz_pass(seeds, kind):
    others = [s for group in seeds.values() for s in group]
    counts, found = Counter(), []
    fuzz_round(kind, seeds[kind], others, counts, found, examples=SHORT_PASS_EXAMPLES)
    assert counts[kind] >= SHORT_PASS_EXAMPLES and not found


@pytest.mark.parametrize("kind", ["options", "outputs", "stdout"])
def test_short_command_line_pass(kind):
    """Hostile option values, output targets and stdouts, as `make fuzz` draws them."""
    counts, found = Counter(), []
    fuzz_edges(kind, counts, found, examples=SHORT_PASS_EXAMPLES)
    assert counts[kind] >= SHORT_PASS_EXAMPLES and not found


def test_every_listed_option_value_in_every_template_once():
    """The systematic sweep of the lists (each value once, in a template chosen by its
    index), so a value once found hostile keeps being tried in every test run."""
    values = command_lines.HOSTILE_OPTION_VALUES
    for i, value in enumerate(values):
        command_lines.check_option(i * 7, value, i)
    for t in range(len(command_lines.OPTION_TEMPLATES)):
        command_lines.check_option(t, values[t * 5 % len(values)], t)


def test_every_output_target_for_every_output():
    for c in range(len(command_lines.OUTPUT_COMMANDS)):
        for t in range(len(command_lines.TARGETS)):
            command_lines.check_output_target(c, t)


def test_harness_fails_an_output_that_replaces_a_symlink(tmp_path, monkeypatch):
    """The harness itself: a writer that replaces its target (write aside, rename) fails."""
    import correlate.cli.timeline_sinks as timeline_sinks

    def replacing_close(self, echo):
        self.writer.close()
        self.file.close()
        with open(self.out_path + ".part", "w") as f:
            f.write("{}")
        os.replace(self.out_path + ".part", self.out_path)
    monkeypatch.setattr(timeline_sinks.PerfettoSink, "close", replacing_close)
    assert command_lines.OUTPUT_COMMANDS[3][2] == "--perfetto"
    with pytest.raises(target.Failure, match="replaced the symlink"):
        command_lines.check_output_target(3, command_lines.TARGETS.index("a symlink"))


def test_harness_catches_a_raw_escape():
    """The harness itself: output with a raw ESC is a failure, its escaped form is not."""
    with pytest.raises(target.Failure):
        target._check(["timeline"], 0, b"ok \x1b[2J\n", b"")
    target._check(["timeline"], 0, b"ok \\x1b[2J\n", b"")
    with pytest.raises(target.Failure):
        target._check(["analyze"], 1, b"", b"Traceback (most recent call last):\n")
