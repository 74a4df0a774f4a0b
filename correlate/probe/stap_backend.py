"""The SystemTap fallback: run `stap` on the script stap_script.py generates from the
catalog, and turn its lines into events.

With `--runtime=bpf` (the default here) two things this kind of host lacks are worked around
without changing the host: tracefs, which stapbpf creates its uprobes through, is mounted in
a private mount namespace (`unshare --mount`), and when RLIMIT_MEMLOCK may not be raised
(no CAP_SYS_RESOURCE) probes/memlock_shim.c is built and preloaded so stapbpf's request for an
unlimited limit does not abort it. Both are listed in `adaptations`.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from importlib import resources

from .errors import NotRoot, ProbeError
from .resolve import ResolvedProbe
from .stap_script import COMM_RE, parse_line, script_text

STAPBPF_UPROBE_EVENTS = "/sys/kernel/debug/tracing/uprobe_events"    # the one path stapbpf opens
START_TIMEOUT_S = 180.0       # stap compiles (passes 1-4) before it prints "ready"


def memlock_raise_refused() -> bool:
    """stapbpf insists on an unlimited RLIMIT_MEMLOCK; True when this process may not set it."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        return True
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))  # it could; leave it as it was
    return False


def memlock_shim() -> str | None:
    """Build (once, with gcc) probes/memlock_shim.c when stapbpf's raise would be refused."""
    if not memlock_raise_refused() or shutil.which("gcc") is None:
        return None
    src = resources.files("correlate.probes").joinpath("memlock_shim.c").read_text()
    cache = os.path.join(tempfile.gettempdir(), f"correlate-memlock-shim-{os.geteuid()}")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    lib = os.path.join(cache, "memlock_shim.so")
    c_file = os.path.join(cache, "memlock_shim.c")
    if not os.path.exists(lib) or not os.path.exists(c_file) or open(c_file).read() != src:
        with open(c_file, "w") as fh:
            fh.write(src)
        done = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", lib, c_file, "-ldl"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return None
    return lib


class StapCollector:
    name = "stap"

    def __init__(self, probes: list[ResolvedProbe], pid: int | None = None, source: str = "stap",
                 runtime: str | None = None):
        self.all_probes = probes
        self.pid = pid
        self.source = source
        self.runtime = runtime or os.environ.get("CORRELATE_STAP_RUNTIME", "bpf")
        self.host = socket.gethostname()
        self.lost = 0
        self.skipped: list[tuple[ResolvedProbe, str]] = []
        self.clock = None
        self.proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._entries: dict = {}
        self._tmpdir: str | None = None
        self.damaged_lines = 0
        self.adaptations: list[str] = []
        self.attached = 0

    def command(self, script_path: str) -> tuple[list[str], dict]:
        """The stap command line and environment, adapted to what this host lacks."""
        cmd = [shutil.which("stap") or "stap"]
        env = dict(os.environ)
        self.adaptations = []
        if self.runtime and self.runtime != "kernel":
            cmd.append(f"--runtime={self.runtime}")
        if self.pid is not None:
            cmd += ["-x", str(self.pid)]
        cmd.append(script_path)
        if self.runtime == "bpf":
            shim = memlock_shim()
            if shim:
                env["LD_PRELOAD"] = shim + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
                self.adaptations.append("RLIMIT_MEMLOCK cannot be raised: preloading " + shim)
            if not os.path.exists(STAPBPF_UPROBE_EVENTS) and shutil.which("unshare"):
                # stapbpf creates uprobes through tracefs under debugfs (that path only, even
                # where tracefs is mounted at /sys/kernel/tracing); mount it in a private
                # mount namespace so the host's mounts stay as they are.
                cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       "mount -t debugfs nodev /sys/kernel/debug 2>/dev/null; "
                       "mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; exec \"$@\"",
                       "stap", *cmd]
                self.adaptations.append("tracefs not mounted: running stap in a private mount "
                                        "namespace with tracefs mounted")
        return cmd, env

    def start(self) -> None:
        if shutil.which("stap") is None:
            raise ProbeError("stap not found: apt-get install systemtap")
        if os.geteuid() != 0:
            raise NotRoot()
        try:
            self._run(returns=True)
        except ProbeError as exc:
            # Kernels without uretprobe support in stap's view: keep the entry probes.
            if "return probes not available" not in str(exc):
                raise
            self._run(returns=False)
            left_out = {id(rp) for rp, _ in self.skipped}
            self.skipped += [(rp, "return not probed: stap says process return probes are not "
                                  "available on this kernel")
                             for rp in self.all_probes if rp.spec.retprobe and id(rp) not in left_out]

    def _run(self, returns: bool) -> None:
        text, self.skipped = script_text(self.all_probes, filter_pid=self.pid is not None,
                                         returns=returns)
        self.attached = len(self.all_probes) - sum(1 for _, why in self.skipped
                                                   if "stap needs a name" in why or "failed calls only" in why)
        if len(self.skipped) == len(self.all_probes):
            raise ProbeError("stap: no probe can be named to stap (" +
                             "; ".join(why for _, why in self.skipped) + ")")
        self._tmpdir = self._tmpdir or tempfile.mkdtemp(prefix="correlate-stap-")
        script = os.path.join(self._tmpdir, "correlate.stp")
        with open(script, "w") as fh:
            fh.write(text)
        self._lines, self._stderr = queue.Queue(), []
        cmd, env = self.command(script)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env,
                                     stderr=subprocess.PIPE, text=True, errors="backslashreplace",
                                     start_new_session=True)
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._pump_err, args=(self.proc, self._stderr), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    time.sleep(0.2)   # let the stderr reader finish
                    reason = self.failure_reason()
                    self.proc = None
                    raise ProbeError(f"stap failed: {reason}")
                continue
            if line is not None and "CORR\tready" in line:
                return
        self.stop()
        raise ProbeError(f"stap did not start within {START_TIMEOUT_S:.0f} s")

    def failure_reason(self) -> str:
        """The line of stap's output that says why it failed (stap prints several)."""
        lines = [l.strip() for l in self._stderr if l.strip()]
        for l in lines:
            if l.startswith(("Error", "ERROR")) or "Operation not permitted" in l \
                    or "not available" in l:
                return l
        for l in lines:
            if l.startswith("semantic error"):
                return l
        for l in lines:
            if "failed" in l:
                return l
        return lines[-1] if lines else f"exit status {self.proc.returncode if self.proc else '?'}"

    @staticmethod
    def _pump(stream, q: queue.Queue) -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    @staticmethod
    def _pump_err(proc, sink: list) -> None:
        for line in proc.stderr:
            if len(sink) < 1000:
                sink.append(line)

    def _drain(self, timeout_ms: int) -> list[dict]:
        out = []
        waiting: dict[int, dict] = {}
        wait = timeout_ms / 1000.0
        while True:
            try:
                line = self._lines.get(timeout=wait) if wait else self._lines.get_nowait()
            except queue.Empty:
                break
            wait = 0
            if line is None:
                break
            # stapbpf may print its own text without a newline ahead of ours
            start = line.find("CORR\t")
            if start < 0:
                continue
            line = line[start:]
            comm = COMM_RE.match(line.rstrip("\n"))
            if comm and int(comm.group(1)) in waiting:
                # the name's own handler may print after the call line: fill it in
                waiting.pop(int(comm.group(1)))["comm"] = comm.group(2)
            ev = parse_line(line, self.all_probes, self.source, self.host, self._entries)
            if ev is not None:
                out.append(ev)
                if not ev["comm"]:
                    waiting[ev["tid"]] = ev
            elif not comm:
                self.damaged_lines += 1
        return out

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        if self.proc is None:
            return []
        return self._drain(timeout_ms)

    def stop(self) -> list[dict]:
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # stap detaches and flushes on SIGINT
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.1)
        out = self._drain(0)
        self.proc = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        return out
