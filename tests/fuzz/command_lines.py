"""The edges a mutated input never reaches: hostile option values on every command, and
hostile output targets (a missing directory, a directory, a symlink, a device node, stdout on
a full device or in a narrow encoding).

A run passes when it ends with 0, 1 (--fail-on), 2 (a usage error or bad input: one line) or
3 (an output not written: one line naming it), with no traceback and nothing raw on the
terminal, and leaves a symlink a symlink and a device a device. Anything else is `Failure`.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from .target import CAPTURES, RAW_CONTROL, Failure, run_command

CAPTURE = str(CAPTURES / "auth-rejected.pcap")   # small, with a finding

# Each template holds one V: where the hostile value goes.
OPTION_TEMPLATES = (
    ["analyze", CAPTURE, "--unanswered-after", "V"],
    ["analyze", CAPTURE, "-o", "rpc-unanswered.after_s=V"],
    ["analyze", CAPTURE, "-o", "slow-brick.threshold_ms=V"],
    ["analyze", CAPTURE, "-o", "V"],
    ["analyze", CAPTURE, "--fail-on", "V"],
    ["analyze", CAPTURE, "--suppress", "V"],
    ["analyze", CAPTURE, "--detector", "V"],
    ["analyze", CAPTURE, "--no-detector", "V"],
    ["analyze", CAPTURE, "--jobs", "V"],
    ["analyze", CAPTURE, "--host", "V"],
    ["analyze", CAPTURE, "--config", "CONFIG"],
    ["run", "--pcap", CAPTURE, "--duration", "V", "--window-ms", "0"],
    ["run", "--pcap", CAPTURE, "--profile-every", "V", "--window-ms", "0"],
    ["run", "--pcap", CAPTURE, "--window-ms", "V"],
    ["timeline", CAPTURE, "--since", "V"],
    ["timeline", CAPTURE, "--until", "V"],
    ["timeline", CAPTURE, "--conn", "V"],
    ["timeline", CAPTURE, "--gfid", "V"],
    ["timeline", CAPTURE, "--path", "V"],
    ["timeline", CAPTURE, "--pid", "V"],
    ["timeline", CAPTURE, "--window-ms", "V"],
    ["timeline", CAPTURE, "--layer", "V"],
    ["decode", "--fields", "V", CAPTURE],
    ["decode", "--fields", "kind,V", CAPTURE],
    ["profile", CAPTURE, "--per-client", "--json", "--jobs", "V"],
)
HOSTILE_OPTION_VALUES = (
    "nan", "NaN", "inf", "-inf", "1e308", "1e309", "-1", "0", "", " ", "1e-400", "0x10", "1_000",
    " 5 ", "²", "٣", "9" * 5000, "-9" * 30, "\x1b[2J\x1b]0;t\x07", "\u202e", "\udcff", "a=b",
    "x.y=z", "rpc-unanswered", "rpc-unanswered.after_s", "rpc-unanswered.after_s=nan",
    "slow-brick.enabled=maybe", "stale-handle:brick=*", ":", "::", "*", "+1h", "+-1s", "+1e400s",
    "2262-04-12T00:00:00", "1677-09-21", "9999999999999999999999", "-9223372036854775809",
    "127.0.0.1:99999", "[::1]:1", "info", "ERROR", "never", "args.", ".", "..", "args.path.x",
    "wire", "finding", "%s%n", "${HOME}", "\n", "a\x00b")
HOSTILE_CONFIGS = (
    b"[rpc-unanswered]\nafter_s = nan\n", b"[rpc-unanswered]\nafter_s = inf\n",
    b"[rpc-unanswered]\nafter_s = 1e400\n", b"[rpc-unanswered]\nafter_s = \"10\"\n",
    b"[detectors]\nenable = 5\n", b"[detectors]\ndisable = [1, [2]]\n", b"[[suppress]]\ndetector = 1\n",
    b"[[suppress]]\nbrick = \"\x1b[2J\"\n", b"\xff\xfe[rpc-unanswered]\n", b"a = " + b"[" * 2000,
    b"[slow-brick]\nthreshold_ms = -1e308\n", b"[nosuch]\nx = 1\n", b"", b"\x00\x00",
    b"[rpc-unanswered]\nafter_s = 10\nafter_s = 11\n", b"[rpc-unanswered.after_s]\n")


def _check_run(args: list[str], code: int, out: bytes, err: bytes, allowed=(0, 1, 2)) -> None:
    where = f"correlate {' '.join(a[:80] for a in args)}"
    if code not in allowed:
        raise Failure(f"{where}: exit code {code}: {err[-2000:]!r}")
    for name, stream in (("stdout", out), ("stderr", err)):
        m = RAW_CONTROL.search(stream)
        if m:
            raise Failure(f"{where}: raw control character on {name}: {stream[max(0, m.start() - 120):m.end() + 40]!r}")
    if b"Traceback" in err or b"Error:" in err and b"Usage:" not in err and b"correlate:" not in err:
        raise Failure(f"{where}: traceback or bare exception: {err[-2000:]!r}")
    if code in (2, 3) and b"Usage:" not in err and not any(
            line.startswith(b"correlate: ") for line in err.splitlines()):
        raise Failure(f"{where}: exit {code} without a line saying why: {err[-2000:]!r}")


def check_option(template: int, value: str, config: int = 0) -> int:
    """One hostile option value in one command; returns the number of runs (1)."""
    args = list(OPTION_TEMPLATES[template % len(OPTION_TEMPLATES)])
    with tempfile.TemporaryDirectory(prefix="correlate-fuzz-") as d:
        cfg = Path(d) / "c.toml"
        cfg.write_bytes(HOSTILE_CONFIGS[config % len(HOSTILE_CONFIGS)])
        args = [str(cfg) if a == "CONFIG" else a.replace("V", value) if "V" in a else a for a in args]
        if "--timeline" not in args and args[0] in ("analyze", "run"):
            args += ["--timeline", str(Path(d) / "t.jsonl")]
        code, out, err = run_command(args)
        _check_run(args, code, out, err)
    return 1


# -- output targets ---------------------------------------------------------------------------

OUTPUT_COMMANDS = (
    ["analyze", CAPTURE, "--timeline", "T"],
    ["run", "--pcap", CAPTURE, "--window-ms", "0", "--timeline", "T"],
    ["timeline", CAPTURE, "--html", "T"],
    ["timeline", CAPTURE, "--perfetto", "T"],
    ["timeline", CAPTURE, "--pcapng", "T"],
    ["profile", CAPTURE, "--html", "T"],
    ["analyze", CAPTURE, "--output", "perfetto=T"],
    ["timeline", CAPTURE, "--output", "html=T"],
)
TARGETS = ("missing directory", "a directory", "a symlink", "a device", "a read-only place",
           "a plain path")
STDOUT_COMMANDS = (["decode", CAPTURE], ["decode", "--json", CAPTURE], ["analyze", "--events", CAPTURE],
                   ["timeline", CAPTURE], ["timeline", "--ladder", CAPTURE], ["profile", CAPTURE],
                   ["analyze", "--json", CAPTURE], ["timeline", "NONASCII"],
                   ["analyze", "--events", "NONASCII"], ["timeline", "--ladder", "NONASCII"])
# A saved timeline whose text no narrow encoding holds (a log line, a probe's path)
NONASCII_EVENTS = "".join(json.dumps(ev) + "\n" for ev in (
    {"time_ns": 1700000000000000000, "layer": "log", "kind": "log.message", "source": "b.log",
     "level": "E", "message": "Verzeichnis \u00fcberf\u00fcllt \u2713 \u202e\u4e2d\u6587 \U0001F600"},
    {"time_ns": 1700000000000000001, "layer": "probe", "kind": "probe.call", "source": "bcc",
     "function": "glfs_open", "pid": 1, "tid": 1, "comm": "caf\u00e9",
     "args": {"path": "/d\u00e9j\u00e0/\u2603"}}))


def _target(kind: str, tmp: Path) -> Path:
    if kind == "missing directory":
        return tmp / "no" / "such" / "out"
    if kind == "a directory":
        return tmp
    if kind == "a symlink":
        real = tmp / "real.out"
        real.write_bytes(b"before")
        link = tmp / "link.out"
        link.symlink_to(real)
        return link
    if kind == "a device":       # a private full device: writes fail with ENOSPC
        dev = tmp / "full"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        return dev
    if kind == "a read-only place":
        if os.geteuid() == 0:    # root writes through mode bits: /proc takes no new file
            return Path("/proc/self/correlate-out")
        (tmp / "ro").mkdir(mode=0o500)
        return tmp / "ro" / "out"
    return tmp / "plain.out"


def check_output_target(command: int, target: int) -> int:
    """One output written to one hostile target; returns the number of runs (1)."""
    kind = TARGETS[target % len(TARGETS)]
    if kind == "a device" and os.geteuid() != 0:
        kind = "missing directory"      # making a device node needs root
    with tempfile.TemporaryDirectory(prefix="correlate-fuzz-") as d:
        tmp = Path(d)
        path = _target(kind, tmp)
        args = [a.replace("T", str(path)) if a in ("T", "perfetto=T", "html=T") else a
                for a in OUTPUT_COMMANDS[command % len(OUTPUT_COMMANDS)]]
        code, out, err = run_command(args)
        # a directory named as a file is a usage error (2), said by the option's check
        _check_run(args, code, out, err, allowed=(0, 2, 3) if kind == "a directory" else (0, 3))
        if code == 3 and str(path).encode() not in err:
            raise Failure(f"correlate {' '.join(args)}: exit 3 without naming {path}: {err[-1000:]!r}")
        if kind == "a symlink" and not path.is_symlink():
            raise Failure(f"correlate {' '.join(args)}: replaced the symlink {path} with a file")
        if kind == "a device" and not stat.S_ISCHR(os.lstat(path).st_mode):
            raise Failure(f"correlate {' '.join(args)}: replaced the device node {path} with a file")
    return 1


STDOUTS = ("a full device", "ascii", "latin-1", "a closed pipe")


def check_stdout(command: int, how: int) -> int:
    """stdout on a full device (exit 3, one line), in ASCII or Latin-1 with text they lack
    (escaped, exit 0), or a pipe its reader closed (`| head`: exit 0, not a word)."""
    mode = STDOUTS[how % len(STDOUTS)]
    with tempfile.TemporaryDirectory(prefix="correlate-fuzz-") as d:
        text = Path(d) / "nonascii.jsonl"
        text.write_text(NONASCII_EVENTS, encoding="utf-8")
        args = [str(text) if a == "NONASCII" else a for a in STDOUT_COMMANDS[command % len(STDOUT_COMMANDS)]]
        _stdout_to(args, mode)
    return 1


def _stdout_to(args: list[str], mode: str) -> None:
    if mode == "a closed pipe":    # in its own process: the command closes its stderr then
        read, write = os.pipe()
        os.close(read)
        try:
            res = subprocess.run([sys.executable, "-m", "correlate", *args], stdout=write,
                                 stderr=subprocess.PIPE, timeout=120)
        finally:
            os.close(write)
        _check_run(args, res.returncode, b"", res.stderr, allowed=(0,))
        if res.stderr.strip():
            raise Failure(f"correlate {' '.join(args)} | (closed): said {res.stderr[-500:]!r}")
    elif mode == "a full device" and os.geteuid() == 0:
        with tempfile.TemporaryDirectory(prefix="correlate-fuzz-") as d:
            dev = _target("a device", Path(d))
            with open(dev, "wb", buffering=0) as full:
                code, out, err = run_command(args, stdout=full)
        _check_run(args, code, out, err, allowed=(3,))
        if err.strip().splitlines()[-1:] != [b"correlate: cannot write the output: No space left on device"]:
            raise Failure(f"correlate {' '.join(args)} > full device: {err[-1000:]!r}")
    else:
        code, out, err = run_command(args, encoding="latin-1" if mode == "latin-1" else "ascii")
        _check_run(args, code, out, err, allowed=(0,))
