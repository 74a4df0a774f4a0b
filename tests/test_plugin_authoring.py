"""What a plugin author relies on: finding()'s checks, correlate.testing.run_detector, and
turning a plugin off without uninstalling it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.detector import SEVERITIES, Detector, Wants
from correlate.testing import events_of, run_detector

CAPTURES = Path(__file__).parent / "captures"
CORRELATE = [sys.executable, "-m", "correlate"]
S = 1_000_000_000


class LockCalls(Detector):
    """Every LK call, named by the gfid in its decoded arguments."""
    id = "test-lock-calls"
    wants = Wants(kinds={"rpc.call"}, procedures={"LK"}, details={"LK"})

    def observe(self, event):
        return [self.finding(event["time_ns"], severity="info", title="LK call",
                             explanation=f"on {event['args']['gfid']}", remedy="none",
                             evidence=[event], key=event["args"]["gfid"])]


def test_an_unknown_severity_names_the_valid_ones():
    with pytest.raises(ValueError) as info:
        LockCalls().finding(1, severity="fatal", title="t", explanation="e", remedy="r", evidence=[])
    assert "'fatal'" in str(info.value) and "test-lock-calls" in str(info.value)
    assert all(s in str(info.value) for s in SEVERITIES)
    for severity in SEVERITIES:
        assert LockCalls().finding(1, severity=severity, title="t", explanation="e", remedy="r",
                                   evidence=[])["severity"] == severity


def test_run_detector_on_a_capture_folds_repeats_with_their_count():
    lk_calls = [e for e in events_of(CAPTURES / "lock-wait.pcap")
                if e["kind"] == "rpc.call" and e.get("procedure") == "LK"]
    [f] = run_detector(LockCalls(), CAPTURES / "lock-wait.pcap")
    assert f["count"] == len(lk_calls) == 4
    assert f["explanation"] == f"on {lk_calls[0]['args']['gfid']}"
    assert f["evidence"][0]["xid"] == lk_calls[0]["xid"]


def test_run_detector_decodes_only_what_wants_declares():
    """A detector reading args it did not list in `details` fails in the test, as it would
    in `analyze` (which skips undeclared details), instead of only in production."""
    class Undeclared(LockCalls):
        wants = Wants(kinds={"rpc.call"}, procedures={"LK"}, details=())

    with pytest.raises(KeyError):
        run_detector(Undeclared(), CAPTURES / "lock-wait.pcap")


def test_run_detector_feeds_the_shared_state_first_and_sorts_events():
    """The state knows the SETVOLUME's client before the detector sees the next call, and
    events given out of order are put in time order (the merge would)."""
    from correlate.state import DAEMON, GlusterState

    class Roles(Detector):
        id = "test-roles"
        wants = Wants(kinds={"rpc.call"}, procedures={"STAT"})

        def __init__(self, state):
            self.state = state

        def observe(self, event):
            actor = self.state.actor(event)
            return [self.finding(event["time_ns"], severity="info", title=actor.role,
                                 explanation=actor.name, remedy="-", evidence=[event])]

    base = {"layer": "wire", "source": "t.pcap", "conn": 1, "program": "GlusterFS",
            "src": "127.0.0.1:1000", "dst": "127.0.0.2:49152"}
    setvolume = {**base, "time_ns": 1 * S, "kind": "rpc.call", "xid": 1, "procedure": "SETVOLUME",
                 "args": {"dict": {"process-uuid": "CTX_ID:x-GRAPH_ID:0-PID:77-HOST:h-PC_NAME:v-client-0-RECON_NO:-0",
                                   "process-name": "glustershd", "remote-subvolume": "/b1"}}}
    stat = {**base, "time_ns": 2 * S, "kind": "rpc.call", "xid": 2, "procedure": "STAT",
            "cred": {"pid": -6}}
    state = GlusterState()
    [f] = run_detector(Roles(state), [stat, setvolume])
    assert f["title"] == DAEMON and "self-heal" in f["explanation"]


def test_run_detector_lets_the_detectors_exception_through():
    class Broken(LockCalls):
        def observe(self, event):
            raise RuntimeError("bug in the plugin")

    with pytest.raises(RuntimeError, match="bug in the plugin"):
        run_detector(Broken(), CAPTURES / "lock-wait.pcap")


def test_run_detector_sets_options_as_dash_o_does():
    from correlate.detector import Option

    class Slow(Detector):
        id = "test-slow"
        wants = Wants(kinds={"rpc.reply"}, details=())
        options = {"over_ms": Option(1000.0, "replies slower than this")}

        def observe(self, event):
            if (event.get("latency_ns") or 0) > self.option("over_ms") * 1e6:
                return [self.finding(event["time_ns"], severity="warning", title="slow",
                                     explanation="", remedy="", evidence=[event])]
            return []

    [f] = run_detector(Slow(), CAPTURES / "lock-wait.pcap")
    assert f["count"] == 1 and f["evidence"][0]["procedure"] == "LK"     # the 11 s wait
    assert run_detector(Slow(), CAPTURES / "lock-wait.pcap", options={"over_ms": "20000"}) == []
    with pytest.raises(ValueError, match="no option"):
        run_detector(Slow(), [], options={"nosuch": 1})


# ---- turning a plugin off ----------------------------------------------------------------

def _analyze(*args, env=None):
    res = subprocess.run(CORRELATE + ["analyze", "--json", str(CAPTURES / "lock-wait.pcap"), *args],
                         capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    return res, [json.loads(line) for line in res.stdout.splitlines()]


def test_a_disabled_plugin_is_not_loaded_and_its_options_only_warn():
    res, events = _analyze()
    assert res.returncode == 0 and any(e.get("detector") == "lock-wait" for e in events)
    for how in ({"env": {"CORRELATE_DISABLE_PLUGINS": "capture_loss, lock_wait"}},
                {"args": ("--no-plugin", "lock_wait")}):
        res, events = _analyze("-o", "lock-wait.enabled=true", *how.get("args", ()), env=how.get("env"))
        assert res.returncode == 0, res.stderr
        assert not any(e.get("detector") == "lock-wait" for e in events)
        assert not any(e.get("kind") == "detector.error" for e in events)   # off, not failed
        assert "options lock-wait.enabled ignored" in res.stderr and "lock_wait" in res.stderr
    rows = {r["name"]: r for r in json.loads(subprocess.run(
        CORRELATE + ["plugins", "--json"], capture_output=True, text=True, check=True,
        env={**os.environ, "CORRELATE_DISABLE_PLUGINS": "lock_wait"}).stdout)}
    assert rows["lock_wait"]["status"] == "disabled" and rows["slow_brick"]["status"] == "loaded"


def test_an_unknown_plugin_or_detector_is_still_a_usage_error():
    res, _ = _analyze("--no-plugin", "lock-wait")        # a detector's id, not a plugin's name
    assert res.returncode == 2 and "no plugin 'lock-wait'" in res.stderr and "lock_wait" in res.stderr
    res, _ = _analyze("-o", "lock-wiat.enabled=false")   # every plugin runs: a typo
    assert res.returncode == 2 and "no detector 'lock-wiat'" in res.stderr
    res = subprocess.run(CORRELATE + ["plugins"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CORRELATE_DISABLE_PLUGINS": "nosuch\x1b[2J"})
    assert res.returncode == 0 and "no plugin named nosuch" in res.stderr
    assert "\x1b" not in res.stderr
