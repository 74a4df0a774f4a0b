"""Sessions for `--probe fuse`: the kernel FUSE collector behind the ProbeSession interface
(start, poll, stop, summary), and several sessions polled as one when `--probe fuse` comes
with uprobe groups (gfapi, io, ...)."""
from __future__ import annotations

from .fuse_backend import SYS_TRACEPOINTS, TRACEPOINTS, FuseCollector

GROUP = "fuse"


class FuseSession:
    resolved = ()

    def __init__(self, slow_ns: int, pid: int | None = None):
        self.collector = FuseCollector(slow_ns=slow_ns, pid=pid)
        self.events_seen = 0
        self.started = False

    def start(self) -> "FuseSession":
        self.collector.start()
        self.started = True
        return self

    backend_name = FuseCollector.name

    @property
    def specs(self) -> tuple[str, ...]:
        """What describe_session counts: the FUSE tracepoints, and the system call ones."""
        return TRACEPOINTS + (SYS_TRACEPOINTS if self.collector.sysnames else ())

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
        if c.sysnames:
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
        calls = (f"the system calls behind them, of {c.watched_at_start} processes using a "
                 "FUSE mount now and any that sends a FUSE request later" if c.sysnames
                 else f"their system calls {c.syscalls_off}")
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
