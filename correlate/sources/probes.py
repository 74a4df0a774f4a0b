"""Live process probes as a merge source: the catalog (plus plugin probe points) -> a
started ProbeSession -> an event generator that drains the session when the run stops."""
from __future__ import annotations

import threading
from collections.abc import Iterator

from ..diagnostics import Diagnostics
from ..errors import CorrelateError
from ..plugin_manager import call_each, get_plugin_manager
from ..validate import clean_events


def plugin_probe_specs(options: dict | None = None, skip_plugins=()) -> list:
    """Every plugin's probe points but those of `skip_plugins`; `options` are the run's
    detector settings ({detector id: {option: value}}, see correlate.detector.detector_settings)."""
    specs = []
    for name, provided, exc in call_each(get_plugin_manager(), "correlate_probe_specs",
                                         options=options or {}):
        if name in skip_plugins:
            continue
        if exc is not None:
            raise CorrelateError(f"plugin {name}: correlate_probe_specs failed: {exc}")
        specs.extend(provided or [])
    return specs


def select_specs(groups, options: dict | None = None, skip_plugins=()) -> list:
    from ..probe import catalog
    from ..probe.fuse_session import GROUP as FUSE
    extra = plugin_probe_specs(options, skip_plugins)
    chosen, seen = [], set()
    for group in groups:
        if group == FUSE:   # kernel tracepoints, not catalog specs (probe/fuse_session.py)
            continue
        try:
            specs = catalog.select(group, extra)
        except ValueError as exc:
            if skip_plugins and group in {s.group for s in plugin_probe_specs(options)}:
                raise CorrelateError(f"probe group {group!r} belongs to a plugin whose detectors "
                                     f"are all disabled ({', '.join(sorted(skip_plugins))}): "
                                     "enable one, or do not ask for its probes") from None
            raise CorrelateError(str(exc)) from None
        for spec in specs:
            if spec.name not in seen:
                seen.add(spec.name)
                chosen.append(spec)
    return chosen


def open_probe_session(groups, *, pid=None, backend="auto", offsets=(), options=None,
                       skip_plugins=()):
    """Resolve and attach; raises CorrelateError subclasses with one clear line. `options`:
    the detector settings the probes follow (a threshold a probe filters on, say);
    `skip_plugins`: plugins whose probe points are not wanted (their detectors are off)."""
    from ..probe.fuse_backend import slow_ns_from
    from ..probe.fuse_session import GROUP as FUSE, FuseSession, Sessions
    from ..probe.resolve import parse_offsets
    from ..probe.session import ProbeSession
    parts = []
    uprobe_groups = [g for g in groups if g != FUSE]
    try:
        if uprobe_groups:
            parts.append(ProbeSession(select_specs(uprobe_groups, options, skip_plugins), pid=pid,
                                      backend=backend, offsets=parse_offsets(list(offsets))).start())
        if FUSE in groups:   # its threshold follows the fuse-errors detector's slow_s
            parts.append(FuseSession(slow_ns_from(options), pid=pid).start())
    except BaseException:
        for started in parts:
            started.stop()
        raise
    return parts[0] if len(parts) == 1 else Sessions(parts)


def open_tls_collector(pid=None, decoding: dict | None = None):
    """`--probe tls`: its own collector (it copies buffers, not arguments): started, or a
    CorrelateError subclass with one clear line. `decoding`: what the RPC decoder decodes,
    as for captures (engine_cli.decoding_options)."""
    from ..probe.tls_collector import TlsCollector
    return TlsCollector(pid=pid, **(decoding or {})).start()


def open_tls_key_collector(keylog_path: str, pid=None):
    """`--probe tls-keys`: started, writing to `keylog_path`, or a CorrelateError subclass
    with one clear line."""
    from ..probe.tls_keys import TlsKeyCollector
    return TlsKeyCollector(keylog_path, pid=pid).start()


def describe_session(session) -> list[str]:
    """What a user should know once probes run: what attached, what did not, clock error."""
    if hasattr(session, "parts"):
        return [line for part in session.parts for line in describe_session(part)]
    summary = session.summary()
    how = {"links": ", through uprobe_multi links", "perf": ", through perf events"}.get(
        summary.get("attach_with"), "")
    lines = [f"probes attached ({summary['backend']}: {session.attached} of "
             f"{len(session.specs)} points{how})"]
    if summary.get("links_refused"):
        lines.append(f"probes attached through perf events: {summary['links_refused']}")
    clock = summary.get("clock")
    if clock:
        lines.append(f"probe clock: CLOCK_MONOTONIC -> CLOCK_REALTIME offset measured to "
                     f"+-{clock['error_ns']} ns")
    for rp in session.resolved:
        lines.extend(f"probe {rp.spec.name}: {note}" for note in getattr(rp, "notes", ()))
    if hasattr(session, "notes"):
        lines.extend(session.notes())
    lines.extend(f"probe {u['probe']} not attached: {u['reason']}" for u in summary["unresolved"])
    return lines


def probe_events(session, stopping: threading.Event, stats: dict,
                 diag: Diagnostics | None = None) -> Iterator[dict]:
    """Poll until the run stops, then drain what the kernel still buffers. Records meet the
    event schema as saved timelines do (a plugin's probe spec or a backend's bug cannot hand
    detectors a value of the wrong type): with `diag`, drops are counted there."""
    diag = diag if diag is not None else Diagnostics("probes")
    while not stopping.is_set():
        yield from clean_events(session.poll(100), diag)
    yield from clean_events(session.stop(), diag)
    stats["lost"] = session.lost
    stats["summary"] = session.summary()
