"""Live process probes as a merge source: the catalog (plus plugin probe points) -> a
started ProbeSession -> an event generator that drains the session when the run stops."""
from __future__ import annotations

import threading
from collections.abc import Iterator

from .errors import CorrelateError
from .plugin_manager import call_each, get_plugin_manager


def plugin_probe_specs() -> list:
    specs = []
    for name, provided, exc in call_each(get_plugin_manager(), "correlate_probe_specs"):
        if exc is not None:
            raise CorrelateError(f"plugin {name}: correlate_probe_specs failed: {exc}")
        specs.extend(provided or [])
    return specs


def parse_offsets(items) -> dict[str, int]:
    offsets = {}
    for item in items:
        func, sep, value = item.partition("=")
        try:
            offsets[func] = int(value, 0)
        except ValueError:
            sep = ""
        if not sep or not func:
            raise CorrelateError(f"--probe-offset {item!r}: expected FUNC=0xOFFSET")
    return offsets


def select_specs(groups) -> list:
    from .probe import catalog
    extra = plugin_probe_specs()
    chosen, seen = [], set()
    for group in groups:
        try:
            specs = catalog.select(group, extra)
        except ValueError as exc:
            raise CorrelateError(str(exc)) from None
        for spec in specs:
            if spec.name not in seen:
                seen.add(spec.name)
                chosen.append(spec)
    return chosen


def open_probe_session(groups, *, pid=None, backend="auto", offsets=()):
    """Resolve and attach; raises CorrelateError subclasses with one clear line."""
    from .probe.session import ProbeSession
    session = ProbeSession(select_specs(groups), pid=pid, backend=backend,
                           offsets=parse_offsets(offsets))
    return session.start()


def probe_events(session, stopping: threading.Event, stats: dict) -> Iterator[dict]:
    """Poll until the run stops, then drain what the kernel still buffers."""
    while not stopping.is_set():
        yield from session.poll(100)
    yield from session.stop()
    stats["lost"] = session.lost
    stats["summary"] = session.summary()
