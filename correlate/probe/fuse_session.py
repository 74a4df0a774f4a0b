"""Sessions for `--probe fuse`: the kernel FUSE collector behind the ProbeSession interface
(start, poll, stop, summary), and several sessions polled as one when `--probe fuse` comes
with uprobe groups (gfapi, io, ...).

The collector is the tracepoints' where they load; otherwise (a kernel before 6.12, or
CORRELATE_FUSE_BACKEND=uprobes) the fallback on the glusterfs client's readv/writev of
/dev/fuse, with the reason said. CORRELATE_FUSE_BACKEND=tracepoints refuses the fallback."""
from __future__ import annotations

import os

from .errors import BccMissing, KernelHeadersMissing, NotRoot, ProbeError
from .fuse_backend import SYS_TRACEPOINTS, TRACEPOINTS, FuseCollector

GROUP = "fuse"
BACKENDS = ("auto", "tracepoints", "uprobes")


class FuseSession:
    resolved = ()

    def __init__(self, slow_ns: int, pid: int | None = None, backend: str | None = None):
        self.collector = FuseCollector(slow_ns=slow_ns, pid=pid)
        self.backend = backend or os.environ.get("CORRELATE_FUSE_BACKEND", "auto")
        if self.backend not in BACKENDS:
            raise ProbeError(f"CORRELATE_FUSE_BACKEND must be one of {', '.join(BACKENDS)}, "
                             f"not {self.backend[:40]!r}")
        self.fallback_reason = ""
        self.events_seen = 0
        self.started = False

    def start(self) -> "FuseSession":
        if self.backend == "uprobes":
            self._fall_back("CORRELATE_FUSE_BACKEND=uprobes")
        else:
            try:
                self.collector.start()
            except ProbeError as exc:
                # what the fallback needs as well (root, bcc, headers) is no reason to fall back
                if self.backend == "tracepoints" or isinstance(exc, (NotRoot, BccMissing,
                                                                      KernelHeadersMissing)):
                    raise
                self._fall_back(str(exc))
        self.started = True
        return self

    def _fall_back(self, reason: str) -> None:
        from .fuse_uprobes import FuseUprobeCollector
        c = self.collector
        self.collector = FuseUprobeCollector(slow_ns=c.slow_ns, pid=c.pid)
        self.collector.start()
        self.fallback_reason = reason

    @property
    def backend_name(self) -> str:
        return self.collector.name

    @property
    def specs(self) -> tuple[str, ...]:
        """What describe_session counts: the tracepoints (and the system call ones), or the
        fallback's uprobes."""
        if self.fallback_reason:
            return ("uprobes",) * max(1, self.collector.attached)
        return TRACEPOINTS + (SYS_TRACEPOINTS if self.collector.sys_exit else ())

    @property
    def attached(self) -> int:
        return self.collector.attached

    @property
    def lost(self) -> int:
        return self.collector.lost

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        out = self.collector.poll(timeout_ms)
        self.events_seen += len(out)
        return out

    def stop(self) -> list[dict]:
        out = self.collector.stop()
        self.events_seen += len(out)
        return out

    def summary(self) -> dict:
        c = self.collector
        probes = [{"probe": f"fuse:{tp}", "method": "raw tracepoint"} for tp in TRACEPOINTS]
        if self.fallback_reason:
            probes = [{"probe": f"{libc}:{fn} (pid {pid})", "method": "uprobe"}
                      for pid, (_fd, _dev, libc) in c.clients.items() for fn in ("readv", "writev")]
        elif c.sys_exit:
            probes += [{"probe": f"raw_syscalls:{tp}", "method": "raw tracepoint"}
                       for tp in SYS_TRACEPOINTS]
        out = {"backend": self.backend_name, "events": self.events_seen, "lost": c.lost,
               "probes": probes, "unresolved": [], "slow_ns": c.slow_ns}
        if c.clock is not None:
            out["clock"] = {"offset_ns": c.clock.current.offset_ns, "error_ns": c.clock.error_ns,
                            "drift_ns": c.clock.drift_ns, "measurements": len(c.clock.history)}
        return out

    def notes(self) -> list[str]:
        c = self.collector
        if self.fallback_reason:
            return [f"fuse probes: the fuse tracepoints are not used ({self.fallback_reason}): "
                    f"following the FUSE client's readv/writev of /dev/fuse instead ("
                    f"{len(c.clients)} client processes now, later ones within 2 s); requests "
                    f"that fail or take {c.slow_ns / 1e6:g} ms or more; their system calls "
                    f"{c.syscalls_off}"]
        calls = (f"their system calls with the errno the program got (raw_syscalls), of "
                 f"{c.watched_at_start} processes using a FUSE mount now and any that sends a "
                 "FUSE request later" if c.sys_exit else
                 "the system call each is sent from (CORRELATE_FUSE_SYSCALLS=exit adds the "
                 "errno the program got)" if c.sysnames else f"their system calls {c.syscalls_off}")
        return [f"fuse probes: requests that fail or take {c.slow_ns / 1e6:g} ms "
                "or more (-o fuse-errors.slow_s=...), and " + calls]


class Sessions:
    """Several started sessions as one source: polled in turn, merged by time."""

    def __init__(self, parts: list):
        self.parts = parts

    @property
    def backend_name(self) -> str:
        return "+".join(p.backend_name or "?" for p in self.parts)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.parts)

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        wait = max(1, timeout_ms // len(self.parts))
        out = [ev for p in self.parts for ev in p.poll(wait)]
        out.sort(key=lambda e: e["time_ns"])
        return out

    def stop(self) -> list[dict]:
        out = [ev for p in self.parts for ev in p.stop()]
        out.sort(key=lambda e: e["time_ns"])
        return out

    def summary(self) -> dict:
        return {"backend": self.backend_name, "lost": self.lost,
                "parts": [p.summary() for p in self.parts]}
