"""The exit-code contract (correlate.exit_codes), command by command, on real captures:
0 success, 1 findings at or above --fail-on, 2 usage or unreadable input, 3 an output that
could not be written, 4 a failed part, 130 Ctrl-C."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from correlate.cli import main

CAPTURES = Path(__file__).parent / "captures"
HANG = CAPTURES / "brick-hang.pcap"          # an error and an info finding
HEALTHY = CAPTURES / "healthy.pcap"          # none
CORRELATE = [sys.executable, "-m", "correlate"]


def correlate(*args, **kw):
    return subprocess.run(CORRELATE + [str(a) for a in args], capture_output=True, text=True,
                          timeout=120, **kw)


def test_help_states_the_contract():
    text = CliRunner().invoke(main, ["--help"]).stdout
    for line in ("0    success", "1    findings at or above --fail-on LEVEL",
                 "3    an output could not be written", "130  interrupted"):
        assert line in text, text


@pytest.mark.parametrize("command", [["analyze"], ["timeline"], ["run", "--pcap"]])
def test_fail_on_makes_findings_exit_1(command):
    assert correlate(*command, HANG).returncode == 0                       # default: never
    assert correlate(*command, HANG, "--fail-on", "error").returncode == 1
    assert correlate(*command, HANG, "--fail-on", "WARNING").returncode == 1
    assert correlate(*command, HANG, "--fail-on", "critical").returncode == 0
    assert correlate(*command, HEALTHY, "--fail-on", "info").returncode == 0


def test_fail_on_counts_only_what_the_suppression_lets_through():
    res = correlate("analyze", HANG, "--fail-on", "info", "--suppress", "brick-not-responding")
    assert res.returncode == 0, res.stderr


def test_fail_on_refuses_an_unknown_level():
    res = correlate("analyze", HANG, "--fail-on", "loud")
    assert res.returncode == 2 and "--fail-on" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args", [
    ["analyze", HANG, "--timeline", "{missing}/t.jsonl"],
    ["run", "--pcap", HANG, "--timeline", "{missing}/t.jsonl"],
    ["profile", HANG, "--html", "{missing}/p.html"],
    ["timeline", HANG, "--html", "{missing}/r.html"],
    ["analyze", HANG, "--output", "perfetto={missing}/t.json"],
])
def test_an_output_in_a_missing_directory_is_one_line_and_exit_3(tmp_path, args):
    missing = tmp_path / "no" / "such"
    res = correlate(*[str(a).format(missing=missing) for a in args])
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr
    said = [line for line in res.stderr.splitlines() if str(missing) in line]
    assert len(said) == 1 and ("No such file or directory" in said[0] or "failed" in said[0]), res.stderr


@pytest.mark.parametrize("command", [["decode", "-"], ["analyze", "-"], ["timeline", "-"],
                                     ["profile", "-"], ["run", "--pcap", "-"]])
def test_ctrl_c_exits_130_with_what_was_read(command):
    """stdin stays open (a capture still running): Ctrl-C ends the command, 130, no traceback."""
    proc = subprocess.Popen(CORRELATE + command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdin.write(HANG.read_bytes()[:24])    # a pcap header, then silence
    proc.stdin.flush()
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    try:
        err = proc.stderr.read().decode()       # stdin left open: Ctrl-C alone ends it
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted!" not in err, err


def test_a_cut_input_is_2_and_damage_outranks_findings(tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(HANG.read_bytes()[:-30])
    res = correlate("analyze", cut, "--fail-on", "info")
    assert res.returncode == 2 and "truncated in packet" in res.stderr, res.stderr
