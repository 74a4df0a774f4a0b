"""ProbeSession: the one entry point the engine and the CLI use.

    session = ProbeSession(catalog.select("gfapi"), pid=None, backend="auto")
    session.start()
    while running:
        for event in session.poll(100):
            ...
    tail = session.stop()          # events still buffered at the end
    print(session.summary())
"""
from __future__ import annotations

import shutil

from .catalog import ProbeSpec
from .errors import BackendUnavailable, ProbeError
from .resolve import ResolvedProbe, resolve

BACKENDS = ("auto", "bcc", "stap")


class ProbeSession:
    def __init__(self, specs: list[ProbeSpec], pid: int | None = None, backend: str = "auto",
                 offsets: dict[str, int] | None = None, source: str | None = None):
        if backend not in BACKENDS:
            raise ProbeError(f"unknown probe backend {backend!r} (one of {', '.join(BACKENDS)})")
        self.specs = list(specs)
        self.pid = pid
        self.backend = backend
        self.offsets = offsets or {}
        self.source = source
        self.resolved: list[ResolvedProbe] = []
        self.unresolved: list[tuple[ProbeSpec, str]] = []   # skipped, with the reason
        self.collector = None
        self.events_seen = 0

    # ---- lifecycle ------------------------------------------------------------------------
    def resolve(self) -> list[ResolvedProbe]:
        """Locate every spec; keeps going past failures, raises only if none resolves."""
        self.resolved, self.unresolved = [], []
        first_error: ProbeError | None = None
        for spec in self.specs:
            try:
                self.resolved.append(resolve(spec, self.pid, self.offsets))
            except ProbeError as exc:
                self.unresolved.append((spec, str(exc)))
                first_error = first_error or exc
        if not self.resolved:
            raise first_error or ProbeError("no probes selected")
        return self.resolved

    def start(self) -> "ProbeSession":
        self.resolve()
        self.collector = self._start_backend()
        return self

    def _start_backend(self):
        from .bcc_backend import BccCollector
        from .stap_backend import StapCollector

        choices = ["bcc", "stap"] if self.backend == "auto" else [self.backend]
        reasons = []
        for name in choices:
            cls = BccCollector if name == "bcc" else StapCollector
            collector = cls(self.resolved, pid=self.pid, source=self.source or name)
            try:
                collector.start()
                return collector
            except ProbeError as exc:
                if self.backend != "auto":
                    raise
                reasons.append(f"{name}: {exc}")
        hint = "" if shutil.which("stap") else "; or install systemtap"
        raise BackendUnavailable("no probe backend can run here (" + " | ".join(reasons) + ")" + hint)

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        if self.collector is None:
            return []
        out = self.collector.poll(timeout_ms)
        self.events_seen += len(out)
        return out

    def __iter__(self):
        while self.collector is not None:
            yield from self.poll(100)

    def stop(self) -> list[dict]:
        if self.collector is None:
            return []
        out = self.collector.stop()
        self.events_seen += len(out)
        return out

    def __enter__(self) -> "ProbeSession":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.collector = None

    # ---- reporting ------------------------------------------------------------------------
    @property
    def backend_name(self) -> str | None:
        return getattr(self.collector, "name", None)

    @property
    def attached(self) -> int:
        """Probe points the backend really attached (stap cannot name address-only ones)."""
        return getattr(self.collector, "attached", len(self.resolved))

    @property
    def lost(self) -> int:
        return getattr(self.collector, "lost", 0)

    def summary(self) -> dict:
        out = {"backend": self.backend_name, "events": self.events_seen, "lost": self.lost,
               "probes": [{"probe": r.spec.name, "function": r.function, "library": r.path,
                           "address": f"{r.address:#x}", "method": r.method} for r in self.resolved],
               "unresolved": [{"probe": s.name, "reason": why} for s, why in self.unresolved]}
        if getattr(self.collector, "attach_with", None):
            out["attach_with"] = self.collector.attach_with
            if self.collector.links_refused:
                out["links_refused"] = self.collector.links_refused
        clock = getattr(self.collector, "clock", None)
        if clock is not None:
            out["clock"] = {"offset_ns": clock.current.offset_ns, "error_ns": clock.error_ns,
                            "drift_ns": clock.drift_ns, "measurements": len(clock.history)}
        return out
