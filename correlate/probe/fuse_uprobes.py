"""The `fuse` group's fallback for kernels without the fuse tracepoints (before Linux 6.12):
the glusterfs FUSE client's own reads of requests from /dev/fuse and writes of replies
(libc `readv`/`writev`), uprobes attached per client process and filtered in the program to
that process's /dev/fuse fd (probes/fuse_uprobes.c). The records and rules are the
tracepoint collector's, so the events (fuse.reply, fuse.pending) are the same; what this side
cannot see: the thread that sent a request (the requester is the header's pid, named from
/proc while it lives) and the application's system calls.

Client processes are found in /proc (a /dev/fuse fd, and the mount point its command line
ends with); ones started later are attached at the collector's next look (every 2 s).
"""
from __future__ import annotations

import os
import time

from .bcc_backend import check_bcc_prerequisites
from .clock import ClockMap
from .errors import ProbeError
from .fuse_backend import FuseCollector, fuse_mounts, fuse_program

RESCAN_NS = 2_000_000_000
FUNCS = (("readv", "readv_enter", False), ("readv", "readv_return", True),
         ("writev", "writev_enter", False))


def fuse_clients(mounts: dict[int, str], proc: str = "/proc") -> list[tuple[int, int, int, str]]:
    """(pid, /dev/fuse fd, the mount's dev, libc path) of each FUSE daemon serving one of
    `mounts` (dev -> mount point): the glusterfs client names its mount point last."""
    by_point = {point: dev for dev, point in mounts.items()}
    out = []
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            fds = [int(fd) for fd in os.listdir(f"{proc}/{pid}/fd")
                   if os.readlink(f"{proc}/{pid}/fd/{fd}") == "/dev/fuse"]
            if not fds:
                continue
            with open(f"{proc}/{pid}/cmdline", "rb") as fh:
                args = fh.read(65536).rstrip(b"\0").split(b"\0")
            with open(f"{proc}/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                libc = next((line.split()[-1] for line in fh
                             if line.rstrip().endswith(("/libc.so.6", "/libc.so"))), None)
        except (OSError, ValueError):
            continue
        point = os.fsdecode(args[-1]).rstrip("/") if args else ""
        dev = by_point.get(point)
        if dev is not None and libc:
            out.append((pid, fds[0], dev, libc))
    return out


class FuseUprobeCollector(FuseCollector):
    """The tracepoint collector's reading, polling and naming over uprobe-made records."""

    name = "bcc-fuse-uprobes"

    def __init__(self, *args, **kwargs):
        kwargs["syscalls"] = False       # the application's calls need the tracepoints
        kwargs.setdefault("source", self.name)
        super().__init__(*args, **kwargs)
        self.syscalls_off = "off (they need the fuse tracepoints)"
        self.clients: dict[int, tuple[int, int, str]] = {}    # pid -> (fd, dev, libc)
        self._last_rescan = 0

    def program_text(self) -> str:
        return f"#define SLOW_NS {self.slow_ns}ULL\n" + fuse_program("fuse_uprobes.c")

    def start(self) -> None:
        check_bcc_prerequisites()
        from bcc import BPF
        try:
            self.bpf = BPF(text=self.program_text().encode())
        except Exception as exc:   # bcc raises plain Exception for compile errors
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ProbeError(f"the fuse uprobes could not load: {first}") from None
        self.clock = ClockMap()
        self.mounts = fuse_mounts()
        self._attach_new()
        self.bpf[b"events"].open_perf_buffer(self._on_event, page_cnt=self.perf_pages,
                                             lost_cb=self._on_lost)

    def _attach_new(self) -> None:
        """Attach to each FUSE client not attached yet; forget those that ended."""
        self._last_rescan = time.monotonic_ns()
        self.mounts = fuse_mounts()
        fds = self.bpf[b"fuse_fds"]
        for pid in [p for p in self.clients if not os.path.exists(f"/proc/{p}")]:
            fd, _dev, _libc = self.clients.pop(pid)
            fds.pop(fds.Key(pid << 32 | fd), None)
        for pid, fd, dev, libc in fuse_clients(self.mounts):
            if pid in self.clients:
                continue
            try:
                for sym, fn, ret in FUNCS:
                    attach = self.bpf.attach_uretprobe if ret else self.bpf.attach_uprobe
                    attach(name=libc.encode(), sym=sym.encode(), fn_name=fn.encode(), pid=pid)
            except Exception:      # the process ended meanwhile, or its libc is unreadable
                continue
            fds[fds.Key(pid << 32 | fd)] = fds.Leaf(dev)
            self.clients[pid] = (fd, dev, libc)

    @property
    def attached(self) -> int:
        return len(FUNCS) * len(self.clients) if self.bpf is not None else 0

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        if self.bpf is not None and time.monotonic_ns() - self._last_rescan >= RESCAN_NS:
            self._attach_new()
        return super().poll(timeout_ms)
