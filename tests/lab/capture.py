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
                 start_timeout: float = 15, buffer_kib: int = 65536):
        self.out = Path(out)
        # No --immediate-mode: per-packet wakeups made tcpdump drop packets under the
        # workload. The kernel hands packets over in blocks instead, at the latest after
        # tcpdump's 1 s buffer timeout, so stop() waits that long before SIGINT.
        self.cmd = ["tcpdump", "-i", interface, "-n", "-s", "0", "-U",
                    "-B", str(buffer_kib),  # KiB: the workload must not overrun the ring
                    "-Z", "root",  # keep the output owned by root like the rest of the tree
                    "-w", str(self.out),
                    bpf_filter]
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.stderr = ""
        self.packets: int | None = None
        self.dropped: int | None = None   # tcpdump's "dropped by kernel": the ring overran

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
        match = re.search(r"(\d+) packets? dropped by kernel", self.stderr)
        self.dropped = int(match.group(1)) if match else None
        self.proc = None

    def __enter__(self) -> "Tcpdump":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Probes:
    """`with Probes(out): ...` runs `correlate probe --probe GROUP --json` (bcc uprobes on
    libgfapi) into `out` (JSON Lines, which `correlate analyze` reads beside the capture),
    from the moment the probes are attached until the block ends."""

    def __init__(self, out: Path, group: str = "gfapi", start_timeout: float = 120):
        import sys
        self.out = Path(out)
        self.cmd = [sys.executable, "-m", "correlate", "probe", "--probe", group, "--json"]
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Probes":
        root = Path(__file__).resolve().parents[2]
        self._fh = open(self.out, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=root, stdout=self._fh, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.start_timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            seen.append(line)
            if "attached" in line:
                return self
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        raise CaptureError(f"probes did not attach: {''.join(seen)[-500:]}")

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)   # the last returns are read on the next poll
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()


def record_with_probes(scenario, group: str, capture: Path, probes: Path, capture_filter: str):
    """Trigger a staged scenario under tcpdump (to `capture`) and `correlate probe --probe
    GROUP --json` (to `probes`), started once the probes are attached; the scenario's result."""
    import sys
    with open(probes, "w") as sink:
        probe = subprocess.Popen([sys.executable, "-m", "correlate", "probe", "--probe", group, "--json"],
                                 stdout=sink, stderr=subprocess.PIPE, text=True)
        try:
            for line in probe.stderr:   # the probe command says when it is attached
                if "attached" in line:
                    break
            with Tcpdump(capture, capture_filter):
                return scenario.trigger()
        finally:
            probe.send_signal(signal.SIGINT)
            probe.wait(60)
