"""A live capture that falls behind: the lag watch warns, skips (counted) and says so in --json.

The live cases use a real pipe: a writer thread replays a committed capture into it with
every packet's time set to the moment it is written, as `tcpdump -U -w -` would."""
import gzip
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from correlate.diagnostics import Diagnostics
from correlate.sources.lag import LagWatch
from correlate.engine.merge import LiveMerger
from correlate.wire.decode import decode_capture

CAPTURE = Path(__file__).parent / "captures" / "busy-healthy.pcap.gz"
SKIP_REASON = "packets skipped to catch up with the live capture"


def _records(data: bytes):
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        yield data[pos + 8:pos + 16], data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen


def _replay_now(fd: int, copies: int = 1, pace_every: int = 0, burst: bool = False) -> threading.Thread:
    """Write the capture to fd, each packet stamped with the wall clock as it is written
    (pace_every: a 1 ms pause after that many packets, as packets arrive over time; burst:
    each copy's packets all stamped when its writing starts, as a burst of traffic)."""
    data = gzip.decompress(CAPTURE.read_bytes())
    assert data[:4] == b"\xd4\xc3\xb2\xa1"          # little-endian, microseconds

    def write():
        with os.fdopen(fd, "wb", buffering=0) as out:
            try:
                out.write(data[:24])
                for _ in range(copies):
                    burst_us = time.time_ns() // 1000
                    for n, (lengths, pkt) in enumerate(_records(data)):
                        if pace_every and n % pace_every == 0:
                            time.sleep(0.001)
                        now_us = burst_us if burst else time.time_ns() // 1000
                        out.write(struct.pack("<II", now_us // 1_000_000, now_us % 1_000_000)
                                  + lengths + pkt)
            except BrokenPipeError:
                pass

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


class FakeClock:
    def __init__(self):
        self.now = 1_000_000_000_000

    def __call__(self):
        return self.now


def test_warns_once_per_episode_and_skips_until_caught_up():
    clock, said = FakeClock(), []
    watch = LagWatch(warn_s=1, skip_s=3, clock=clock, say=said.append)
    watch.observe(clock.now - 10_000)               # the first packet: the base delay
    clock.now += 2_000_000_000
    watch.observe(clock.now - 2_000_000_000)        # 2 s behind: warned, not skipping
    watch.observe(clock.now - 2_100_000_000)
    assert len(said) == 1 and "2.0 s behind" in said[0] and not watch.skipping
    watch.observe(clock.now - 4_000_000_000)        # past skip_s
    assert watch.skipping and len(said) == 1
    assert watch.skip(clock.now - 5_000_000_000)    # the reader is still far behind: skip
    assert watch.skip(clock.now - 10_000)           # recent, but the merge has a backlog: skip
    watch.drained()                                 # the merge took all that was queued
    assert watch.skip(clock.now - 5_000_000_000)    # this packet is still old: skip
    assert not watch.skip(clock.now - 10_000)       # recent, nothing queued: caught up
    assert not watch.skipping and watch.skipped == 3
    watch.observe(clock.now - 10_000)               # caught up ...
    watch.observe(clock.now - 1_500_000_000)        # ... and behind again: a second line
    assert len(said) == 2 and watch.summary()["fell_behind"] == 2


def test_a_saved_capture_piped_in_is_never_behind():
    """Old packet times read faster than they were recorded: lag stays 0."""
    clock, said = FakeClock(), []
    watch = LagWatch(warn_s=1, skip_s=3, clock=clock, say=said.append)
    t0 = 1_500_000_000_000_000_000                  # years before the clock: far from "now"
    for i in range(1000):
        clock.now += 1_000_000                      # read at 1 ms per packet ...
        watch.observe(t0 + i * 10_000_000)          # ... recorded 10 ms apart
    assert not said and watch.max_lag_ns == 0 and not watch.skipping


def test_a_slow_consumer_on_a_real_pipe_warns_and_skips_counted():
    r, w = os.pipe()
    writer = _replay_now(w, copies=3, pace_every=10)
    said = []
    watch = LagWatch(warn_s=0.05, skip_s=0.2, say=said.append)
    diag = Diagnostics("stdin")
    merger = LiveMerger(window_ns=10_000_000)
    merger.watch = watch
    with os.fdopen(r, "rb") as f:
        merger.add("stdin", lambda: decode_capture("-", "stdin", diag=diag, fileobj=f,
                                                   details=False, skip=watch.skip))
        seen = 0
        for _ev in merger.events():
            seen += 1
            if seen < 3000:
                time.sleep(0.0005)                  # a consumer slower than the packets come
    writer.join(10)
    assert said and "falling behind the live capture" in said[0]
    assert watch.max_lag_ns > 200_000_000
    assert watch.skipped > 0 and diag.counts[SKIP_REASON] == watch.skipped
    assert seen > 1000                               # it caught up and went on decoding


def _run(args, *, stamped_now: bool) -> subprocess.CompletedProcess:
    r, w = os.pipe()
    if stamped_now:
        writer = _replay_now(w, copies=3, burst=True)
    else:
        data = gzip.decompress(CAPTURE.read_bytes())
        writer = threading.Thread(target=lambda: os.fdopen(w, "wb").write(data) and None, daemon=True)
        writer.start()
    with os.fdopen(r, "rb") as stdin:
        res = subprocess.run([sys.executable, "-m", "correlate", "run", "--pcap", "-", *args],
                             stdin=stdin, capture_output=True, text=True, timeout=300)
    writer.join(10)
    return res


def _diagnostics_line(stdout: str) -> dict:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    found = [ev for ev in lines if ev.get("kind") == "capture.diagnostics"]
    assert len(found) == 1, stdout[-2000:]
    return found[0]


def test_run_from_a_pipe_says_when_it_falls_behind():
    """Bursts of 6,000 packets stamped when they come, faster than the detectors take them
    (whose speed decides nothing: no reader takes 6,000 packets in 20 ms): one warning line
    on stderr, and the lag in the --json diagnostics."""
    res = _run(["--json", "--max-lag", "0.02", "--skip-behind", "0"], stamped_now=True)
    assert res.returncode in (0, 1), res.stderr
    assert res.stderr.count("falling behind the live capture") >= 1, res.stderr
    diag = _diagnostics_line(res.stdout)
    assert diag["layer"] == "wire" and diag["source"] == "stdin"
    assert diag["lag"]["fell_behind"] >= 1 and diag["lag"]["max_lag_s"] > 0.02
    assert diag["lag"]["skipped_packets"] == 0 and SKIP_REASON not in diag["skipped"]


def test_run_of_a_saved_capture_through_a_pipe_is_not_behind():
    res = _run(["--json", "--max-lag", "0.5"], stamped_now=False)
    assert res.returncode in (0, 1), res.stderr
    assert "falling behind" not in res.stderr
    diag = _diagnostics_line(res.stdout)
    assert diag["lag"]["fell_behind"] == 0 and diag["lag"]["skipped_packets"] == 0


def test_only_the_live_source_is_watched():
    """A saved capture merged in beside the live one (`--pcap old.pcap --pcap -`) has old
    times: they are not the live capture falling behind."""
    said = []
    watch = LagWatch(warn_s=0.05, skip_s=0, say=said.append)
    merger = LiveMerger(window_ns=0)
    merger.watch = watch
    live_done = threading.Event()

    def saved():            # after the live events, so a watch of every source would warn
        live_done.wait(10)
        for i in range(100):
            yield {"time_ns": 1_500_000_000_000_000_000 + i, "layer": "wire", "kind": "x",
                   "source": "old.pcap"}

    def live():
        for i in range(100):
            yield {"time_ns": time.time_ns(), "layer": "wire", "kind": "x", "source": "stdin"}
        live_done.set()

    merger.add("old.pcap", saved)
    merger.add("stdin", live)
    assert len(list(merger.events())) == 200
    assert not said and watch.max_lag_ns < 1_000_000_000
