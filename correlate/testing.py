"""Unit-testing a detector the way `correlate analyze` runs it.

    from correlate.testing import run_detector

    findings = run_detector(SlowReplies(), "tests/captures/brick-hang.pcap")
    findings = run_detector(SlowReplies(), [call, reply], options={"threshold_ms": 5})

`run_detector` feeds the events through the real runtime (correlate.engine.detector_runner): the
shared Gluster state sees every event first, the detector gets only the events its `wants`
lets through, `due()`/`tick()` wake it as in a run, repeated findings fold (their `count`
grows), and a capture is decoded with only the details the detector declared, so a missing
`wants.details` entry shows up in the test and not in production. Unlike a real run, a
detector that raises is not disabled quietly: the exception reaches the test.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from .detector import configure_detectors, details_needed
from .engine.detector_runner import DetectorRunner
from .state import GlusterState

__all__ = ["run_detector", "events_of"]


class _RaisingRunner(DetectorRunner):
    """The runtime, except that a detector's exception propagates (a test wants the traceback)."""

    def _failed(self, i: int, exc: Exception, arg):
        raise exc


def events_of(*paths: str | os.PathLike, details=True) -> list[dict]:
    """The events of captures, saved timelines or Gluster logs, merged in time order as
    `analyze` merges them. `details` is what the decoder decodes (True: everything; a set of
    procedure names: only theirs, the rest completed on demand as in a run)."""
    from .engine.merge import merge
    from .sources import open_input
    later = details is not True
    opened = [open_input(os.fspath(p), details=details, details_later=later) for p in paths]
    return list(merge([i.events for i in opened]))


def run_detector(detector, events: Iterable[dict] | str | os.PathLike, *,
                 options: dict | None = None, state: GlusterState | None = None,
                 subscriptions: bool = True) -> list[dict]:
    """The findings `detector` makes over `events`: event dicts (put in time order, as the
    merge would), or the path of a capture, timeline or log. `options` sets the detector's
    options as `-o` would; `state` is the shared state to feed (default: the one the
    detector was built with, else a new one). Returns the findings as a run ends them: one
    per fold key with its final `count`, refined explanations applied, and any `finding.update`
    evidence appended; detector.error events never appear (the exception is raised)."""
    if options:
        configure_detectors([detector], {detector.id: options})
    if state is None:
        state = getattr(detector, "state", None)
        state = state if isinstance(state, GlusterState) else GlusterState()
    if isinstance(events, (str, os.PathLike)):
        needed = details_needed([detector])
        events = events_of(events, details=True if needed is None else needed)
    else:
        events = sorted(events, key=lambda e: e["time_ns"])
    runner = _RaisingRunner([detector], state=state, subscriptions=subscriptions)
    for ev in events:
        runner.observe(ev)
    by_id = {f["id"]: f for f in runner.findings}
    for update in runner.finish():
        first = by_id.get(update.get("id"))
        if update.get("kind") == "finding.update" and first is not None:
            first["count"] = update["count"]
            if "explanation" in update:
                first["explanation"] = update["explanation"]
            first["evidence"] = first.get("evidence", []) + update.get("evidence", [])
    return list(runner.findings)
