"""`run --pcap -` decodes stdin in a process of its own (sources/decoder_process.py): the same
events, findings, skips and errors as decoding it in a thread, events delivered while the
capture goes quiet, and no decoding process left behind."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CAPTURES = Path(__file__).parent / "captures"
BUSY = gzip.decompress((CAPTURES / "busy-healthy.pcap.gz").read_bytes())
CORRELATE = [sys.executable, "-m", "correlate", "run", "--pcap", "-"]


def run(data: bytes, how: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CORRELATE_STDIN_DECODER=how)
    return subprocess.run(CORRELATE + list(args), input=data, capture_output=True, env=env,
                          timeout=300)


def comparable(res: subprocess.CompletedProcess) -> tuple:
    """Exit code, stdout with the lag figures of the diagnostics line left out (timing), and
    stderr."""
    lines = []
    for line in res.stdout.decode().splitlines():
        if '"capture.diagnostics"' in line:
            ev = json.loads(line)
            ev.pop("time_ns")
            ev["lag"] = {k: v for k, v in ev["lag"].items() if k not in ("max_lag_s", "lag_s")}
            line = json.dumps(ev, sort_keys=True)
        lines.append(line)
    return res.returncode, lines, res.stderr.decode()


@pytest.mark.parametrize("args", [("--json", "--events"), ()])
def test_the_same_output_as_decoding_in_a_thread(args):
    thread, process = (comparable(run(BUSY, how, *args)) for how in ("thread", "process"))
    assert process == thread
    assert len(process[1]) > 1000 if args else "findings" in process[2]


def test_gzip_on_stdin_is_decoded_too():
    data = (CAPTURES / "busy-healthy.pcap.gz").read_bytes()
    thread, process = (comparable(run(data, how, "--json", "--events")) for how in ("thread", "process"))
    assert process == thread and len(process[1]) > 1000


def test_a_cut_capture_and_a_non_capture_say_the_same():
    cut = BUSY[: len(BUSY) // 2 + 7]
    for data in (cut, b"hello, this is no capture\n" * 10, b""):
        thread, process = (comparable(run(data, how, "--json")) for how in ("thread", "process"))
        assert process == thread, data[:30]
        assert process[0] != 0 or "skipped" in process[2], process


def test_a_timeline_on_stdin_is_read_in_the_process():
    """A saved timeline piped to --pcap -: its kind reaches the merging process."""
    timeline = run(BUSY, "thread", "--json", "--events").stdout
    thread, process = (comparable(run(timeline, how, "--json")) for how in ("thread", "process"))
    assert process == thread and process[0] == 0


def _first_packets(pcap: bytes, n: int) -> bytes:
    """The pcap header and its first n packets."""
    at = 24
    for _ in range(n):
        at += 16 + int.from_bytes(pcap[at + 8:at + 12], "little")
    return pcap[:at]


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def test_events_come_while_the_capture_is_quiet_and_ctrl_c_leaves_no_process():
    """150 packets, then silence with stdin open (tcpdump waiting for traffic): their events
    (fewer than a batch) are printed without waiting for more; Ctrl-C ends both processes."""
    env = dict(os.environ, CORRELATE_STDIN_DECODER="process")
    proc = subprocess.Popen(CORRELATE + ["--json", "--events", "--window-ms", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(_first_packets(BUSY, 150))
        proc.stdin.flush()
        seen = 0
        deadline = time.monotonic() + 60
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline and seen < 40:
            chunk = proc.stdout.read()
            seen += chunk.count(b'"layer":"wire"') if chunk else 0
            time.sleep(0.1)
        assert seen >= 40, seen       # fewer than a batch: sent as the decoder waits for more
        children = _children(proc.pid)
        assert children, "no decoding process"
        proc.send_signal(signal.SIGINT)
        while proc.poll() is None and time.monotonic() < deadline + 30:
            proc.stdout.read()               # stdin stays open: Ctrl-C alone ends it
            time.sleep(0.1)
        assert proc.returncode == 130
        time.sleep(0.5)
        alive = [c for c in children if Path(f"/proc/{c}").exists()
                 and "zombie" not in Path(f"/proc/{c}/status").read_text()]
        assert alive == []
    finally:
        proc.kill()


def test_the_decoding_process_skips_when_the_merge_falls_behind():
    """The lag is measured where the events are merged, the packets are skipped where they
    are read: both sides share the decision and the count."""
    from tests.test_lag import SKIP_REASON, _replay_now
    r, w = os.pipe()
    writer = _replay_now(w, copies=6, burst=True)
    env = dict(os.environ, CORRELATE_STDIN_DECODER="process")
    with os.fdopen(r, "rb") as stdin:
        res = subprocess.run(CORRELATE + ["--json", "--max-lag", "0.01", "--skip-behind", "0.02"],
                             stdin=stdin, capture_output=True, text=True, timeout=300, env=env)
    writer.join(10)
    assert res.returncode in (0, 1), res.stderr
    (diag,) = [json.loads(line) for line in res.stdout.splitlines()
               if '"capture.diagnostics"' in line]
    assert diag["lag"]["skipped_packets"] > 0, diag
    assert diag["skipped"][SKIP_REASON] == diag["lag"]["skipped_packets"]


@pytest.mark.parametrize("what", ["capture", "gzip", "timeline", "cut", "no capture"])
def test_analyze_from_a_pipe_the_same_in_a_process(what):
    """`... | correlate analyze -`: stdin decoded beside the detectors gives what one process
    gives, and an input that cannot be read is said at once, the same way."""
    data = {"capture": BUSY, "gzip": (CAPTURES / "busy-healthy.pcap.gz").read_bytes(),
            "timeline": run(BUSY, "thread", "--json", "--events").stdout,
            "cut": BUSY[: len(BUSY) // 3 + 11], "no capture": b"GET / HTTP/1.0\r\n\r\n"}[what]
    out = []
    for how in ("thread", "process"):
        env = dict(os.environ, CORRELATE_STDIN_DECODER=how)
        res = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--json", "-",
                              str(CAPTURES / "healthy.pcap")],
                             input=data, capture_output=True, env=env, timeout=300)
        out.append((res.returncode, res.stdout, res.stderr))
    assert out[0] == out[1]
    assert out[0][0] == (2 if what in ("cut", "no capture") else 0), out[0][2]
