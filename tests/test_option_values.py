"""Option values are checked where they are parsed: a number that float() accepts but no run
can use (nan, inf, 1e308, 0 seconds), in a flag, in -o or in a config file, and a config file
that is not UTF-8, are one-line usage errors (exit 2) naming the option, never a traceback
or a detector disabled at run time."""
import subprocess
import sys
from pathlib import Path

import pytest

CAPTURE = Path(__file__).parent / "captures" / "healthy.pcap"


def correlate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "correlate", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def assert_usage_error(res, names: str):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert names in lines[-1], lines


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "0", "-5", "ten"])
def test_seconds_flags_take_finite_positive_numbers(value):
    assert_usage_error(correlate("analyze", CAPTURE, "--unanswered-after", value), "--unanswered-after")
    assert_usage_error(correlate("run", "--pcap", CAPTURE, "--duration", value), "--duration")


@pytest.mark.parametrize("value", ["nan", "inf", "1e308"])
def test_detector_options_are_finite_on_the_command_line_and_in_the_config(value, tmp_path):
    assert_usage_error(correlate("analyze", CAPTURE, "-o", f"rpc-unanswered.after_s={value}"),
                       "rpc-unanswered.after_s")
    config = tmp_path / "c.toml"
    config.write_text(f"[rpc-unanswered]\nafter_s = {value}\n")
    assert_usage_error(correlate("analyze", CAPTURE, "--config", config), "rpc-unanswered.after_s")


def test_a_config_file_that_is_not_utf8(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes("[rpc-unanswered]\n# délai\nafter_s = 5\n".encode("latin-1"))
    res = correlate("analyze", CAPTURE, "--config", config)
    assert_usage_error(res, "not UTF-8")


def test_good_values_still_run():
    res = correlate("analyze", CAPTURE, "--unanswered-after", "2.5", "-o", "rpc-unanswered.after_s=3")
    assert res.returncode == 0, res.stderr
