"""`tcpdump ... -w - | correlate run --pcap - --json` on the lab, as a user runs it live: the
pipeline the live tests and `make run` share.

    pipe = LivePipeline(["--probe", "all"], "/tmp/timeline.jsonl")
    pipe.wait_ready()                 # tcpdump listening, probes attached
    ...                               # a scenario's trigger
    hit = pipe.wait_for(lambda ev: ev.get("detector") == "lock-wait", timeout=20)
    code = pipe.stop()                # SIGINT to tcpdump: correlate ends with the input

Each finding on correlate's stdout is kept with the time it arrived (`lines`).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

from . import lab

CORRELATE = [sys.executable, "-m", "correlate"]
SERIOUS = ("warning", "error", "critical")


class LivePipeline:
    """tcpdump piped into `correlate run`; stdout lines are timestamped on arrival."""

    def __init__(self, args, timeline):
        self.tcpdump = subprocess.Popen(
            ["tcpdump", "-i", "any", "-s", "0", "-U", "--immediate-mode", "-B", "262144", "-w", "-",
             lab.DEFAULT_FILTER], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.run = subprocess.Popen(CORRELATE + ["run", "--pcap", "-", "--json", "--timeline",
                                                 str(timeline), *args],
                                    stdin=self.tcpdump.stdout, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        self.tcpdump.stdout.close()   # the pipe now belongs to correlate
        self.lines: list[tuple[int, dict]] = []
        self.stderr: list[str] = []
        self.capturing, self.attached = threading.Event(), threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in
                         (self._read_out, self._read_run_err, self._read_tcpdump_err)]
        for t in self._threads:
            t.start()

    def _read_out(self):
        for raw in iter(self.run.stdout.readline, b""):
            self.lines.append((time.time_ns(), json.loads(raw)))

    def _read_run_err(self):
        for raw in iter(self.run.stderr.readline, b""):
            self.stderr.append(raw.decode(errors="replace"))
            if b"probes attached" in raw:
                self.attached.set()
        self.attached.set()      # correlate ended: nobody waits for probes any longer

    def _read_tcpdump_err(self):
        for raw in iter(self.tcpdump.stderr.readline, b""):
            if b"listening on" in raw:
                self.capturing.set()

    def wait_ready(self, needs_probes=True):
        assert self.capturing.wait(30), "tcpdump did not start"
        if needs_probes:
            assert self.attached.wait(120) and self.run.poll() is None, "".join(self.stderr)

    def wait_for(self, predicate, timeout, since: int = 0):
        """The first (arrival time, event) from line `since` on that `predicate` accepts, or
        None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for arrived, ev in self.lines[since:]:
                if predicate(ev):
                    return arrived, ev
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def findings(self, since: int = 0) -> list[dict]:
        """The findings (not their folded updates) that arrived from line `since` on."""
        return [ev for _, ev in self.lines[since:] if ev.get("kind") == "finding"]

    def stop(self):
        self.tcpdump.send_signal(signal.SIGINT)
        self.tcpdump.wait(30)
        code = self.run.wait(60)
        for t in self._threads:
            t.join(5)
        return code

    def kill(self) -> None:
        """When the pipeline never became ready: end both, by their pids."""
        for proc in (self.tcpdump, self.run):
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
