"""tcpdump around a piece of lab traffic: start, wait until it really captures, stop cleanly."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path


class CaptureError(RuntimeError):
    pass


class Tcpdump:
    """`with Tcpdump(out, bpf_filter): ...` captures on all interfaces (`-i any`, full
    snaplen, packet-buffered) into `out`; `packets` holds tcpdump's own count afterwards."""

    def __init__(self, out: Path, bpf_filter: str, interface: str = "any",
                 start_timeout: float = 15):
        self.out = Path(out)
        # No --immediate-mode: per-packet wakeups made tcpdump drop packets under the
        # workload. The kernel hands packets over in blocks instead, at the latest after
        # tcpdump's 1 s buffer timeout, so stop() waits that long before SIGINT.
        self.cmd = ["tcpdump", "-i", interface, "-n", "-s", "0", "-U",
                    "-B", "65536",  # KiB: the workload must not overrun the ring
                    "-Z", "root",  # keep the output owned by root like the rest of the tree
                    "-w", str(self.out),
                    bpf_filter]
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.stderr = ""
        self.packets: int | None = None

    def start(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        # tcpdump prints "listening on any, ..." once the socket is bound and the filter set.
        deadline = time.monotonic() + self.start_timeout
        while "listening on" not in self.stderr:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise CaptureError(f"tcpdump did not start: {self.stderr.strip()!r}")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                # Raw reads: a buffered readline can swallow both of tcpdump's first lines
                # ("data link type ...", "listening on ...") and leave select waiting.
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                self.stderr += chunk.decode(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Let the kernel retire the last partly filled block (1 s timeout) to tcpdump.
            time.sleep(1.5)
            self.proc.send_signal(signal.SIGINT)
        try:
            _, rest = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            _, rest = self.proc.communicate()
        self.stderr += rest or ""
        match = re.search(r"(\d+) packets? captured", self.stderr)
        self.packets = int(match.group(1)) if match else None
        self.proc = None

    def __enter__(self) -> "Tcpdump":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ProbeRecorder:
    """`with ProbeRecorder(out, "io"): ...` runs `correlate probe --probe GROUP --json` into
    `out` (JSON Lines, a timeline `correlate analyze` reads) from the moment its probes are
    attached until the block ends."""

    def __init__(self, out: Path, group: str, start_timeout: float = 60):
        self.out, self.group, self.start_timeout = Path(out), group, start_timeout
        self.proc: subprocess.Popen | None = None
        self._sink = None

    def __enter__(self) -> "ProbeRecorder":
        import sys
        self._sink = open(self.out, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "correlate", "probe", "--probe",
                                      self.group, "--json"], stdout=self._sink,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.start_timeout
        said = ""
        while "attached" not in said:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.__exit__()
                raise CaptureError(f"probes did not attach: {said.strip()[-500:]!r}")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                said += os.read(self.proc.stderr.fileno(), 4096).decode(errors="replace")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._sink:
            self._sink.close()
            self._sink = None
