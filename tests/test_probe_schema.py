"""Probe records at the typed boundary (correlate/validate.py PROBE_NESTED): every probe of the
catalog, as the bcc backend turns its records into events, emits exactly the schema; the
committed recordings hold to it; and a record of the wrong type (a plugin's probe spec, a
backend bug) is dropped and counted by the session, never handed to a detector."""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import pytest

from correlate.engine.detector_runner import DetectorRunner
from correlate.diagnostics import Diagnostics
from correlate.probe import catalog
from correlate.probe.bcc_records import (F_ERRNO, F_FD_PATH, F_STR, F_STRUCT, F_TALLY,
                                         KIND_CALL, KIND_RETURN, EventRecord, record_to_event)
from correlate.probe.clock import ClockMap
from correlate.probe.resolve import ResolvedProbe
from correlate.probe.session import ProbeSession
from correlate.sources.probes import probe_events
from correlate.sources import open_input
from correlate.validate import clean_event

CAPTURES = Path(__file__).parent / "captures"
SPECS = catalog.select("all")


def _record(kind: int, flags: int) -> EventRecord:
    rec = EventRecord()
    rec.ts, rec.duration_ns, rec.retval, rec.kind, rec.flags = 10**9, 5000, -1, kind, flags
    rec.pid, rec.tid, rec.err, rec.comm, rec.str = 42, 43, 5, b"smbd", b"/dir/file"
    for i in range(4):
        rec.ints[i] = 0x7F00_0000_1000 + i
    for i in range(11):
        rec.words[i] = 1_700_000_000 + i
    return rec


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_probe_emits_the_schema(spec):
    rp = ResolvedProbe(spec, "/lib/x.so", spec.function, 0x1000, 0x1000, "offset")
    clock = ClockMap(samples=3)
    every_flag = F_STR | F_STRUCT | F_ERRNO | F_TALLY | F_FD_PATH
    diag = Diagnostics("records")
    for kind in (KIND_CALL, KIND_RETURN):
        for flags in (0, every_flag):
            ev = record_to_event(rp, _record(kind, flags), clock, "bcc", "host")
            clean_event(ev, diag, f"{spec.name} kind {kind} flags {flags}")
    assert not diag.counts, diag.summary_lines()


@pytest.mark.parametrize("recording", sorted(p.name for p in CAPTURES.glob("*.probes.jsonl")))
def test_the_committed_recordings_hold_to_the_schema(recording):
    inp = open_input(str(CAPTURES / recording))
    events = list(inp.events)
    assert events and not inp.diag.counts, inp.diag.summary_lines()


class _Collector:
    """The records a faulty backend or plugin spec could hand over."""
    name = "test"

    def __init__(self, events):
        self.events = events

    def poll(self, _timeout_ms):
        out, self.events = self.events, []
        return out

    def stop(self):
        return self.poll(0)


def test_a_record_of_the_wrong_type_is_dropped_and_counted():
    """As `run` takes a session's records (correlate.sources.probes.probe_events): any session kind."""
    good = {"time_ns": 10**18, "layer": "probe", "kind": "probe.call", "source": "bcc",
            "function": "glfs_utimens", "probe": "gfapi.glfs_utimens", "pid": 7, "tid": 7,
            "args": {"path": "/f", "atime": -1, "atime_nsec": 0, "mtime": 5, "mtime_nsec": 0}}
    bad = dict(good, time_ns=10**18 + 1, args=dict(good["args"], atime="-1", path=["/f"]))
    session = ProbeSession([], backend="bcc")
    session.collector = _Collector([good, bad, "not an event", dict(good, time_ns="soon")])
    stopping, diag = threading.Event(), Diagnostics("probes")
    stopping.set()          # one drain: stop() hands over what the collector held
    events = list(probe_events(session, stopping, {}, diag))
    assert [e["args"] for e in events] == [good["args"], {"atime_nsec": 0, "mtime": 5, "mtime_nsec": 0}]
    lines = " ".join(diag.summary_lines())
    assert "'args.atime' of the wrong type" in lines and "'args.path' of the wrong type" in lines
    assert "not a JSON object" in lines and "without time_ns" in lines
    # what remains is safe for every detector: none fails on it
    from correlate.cli.run_setup import make_runner
    runner: DetectorRunner = make_runner({}, {})
    for ev in events:
        runner.observe(ev)
    runner.finish()
    assert not runner.disabled, runner.disabled
