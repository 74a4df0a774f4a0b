"""Where output goes can be hostile too: stdout on a full device, a terminal encoding without
the input's characters, a --pcapng path that is a symlink or a device. One clear line or
escaped text, never a traceback, and never a replaced link or device node."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

CAPTURE = Path(__file__).parent / "captures" / "healthy.pcap"


def correlate(*args, stdout=subprocess.PIPE, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "correlate", *map(str, args)], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, errors="replace", timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", [["decode"], ["decode", "--json"], ["profile"], ["timeline"],
                                     ["analyze", "--events"]])
def test_stdout_on_a_full_device_is_one_line(command):
    with open("/dev/full", "w") as full:
        res = correlate(*command, CAPTURE, stdout=full)
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == \
        "correlate: cannot write the output: No space left on device"


@pytest.fixture
def foreign_text(tmp_path) -> Path:
    """A saved timeline whose log line and file name hold characters ASCII and Latin-1 lack."""
    out = correlate("decode", "--json", CAPTURE).stdout.splitlines()[:3]
    events = [json.loads(line) for line in out]
    events.append({"time_ns": events[-1]["time_ns"] + 1, "layer": "log", "kind": "log.message",
                   "source": "cliënt.log", "level": "E", "message": "échec — ✗ 日本"})
    path = tmp_path / "foreign.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events), "utf-8")
    return path


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
@pytest.mark.parametrize("command", [["timeline"], ["timeline", "--json"], ["analyze", "--events"]])
def test_an_encoding_without_the_inputs_characters_escapes_them(foreign_text, encoding, command):
    res = correlate(*command, foreign_text, env={"PYTHONIOENCODING": encoding})
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "chec" in res.stdout


def test_pcapng_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "real.pcapng"
    target.write_bytes(b"old")
    link = tmp_path / "link.pcapng"
    link.symlink_to(target)
    res = correlate("timeline", CAPTURE, "--pcapng", link)
    assert res.returncode == 0, res.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"          # a pcapng section header
    assert not list(tmp_path.glob("*.part"))


def test_pcapng_to_a_device_writes_into_it_and_leaves_the_node(tmp_path):
    """A private null device in tmp_path (never the system's /dev/null: a regression would
    replace it with a file)."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    res = correlate("timeline", CAPTURE, "--pcapng", device)
    assert res.returncode == 0, res.stderr
    assert stat.S_ISCHR(os.stat(device).st_mode)
