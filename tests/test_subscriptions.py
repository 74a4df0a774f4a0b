"""Detector subscriptions (`Wants`): the runner hands each detector only what it declared and
the decoder skips the details nobody reads, yet every finding comes out as before."""
from pathlib import Path

import pytest

from correlate.detector import EVERYTHING, Detector, Wants, details_needed, load_detectors, wants_of
from correlate.engine.detector_runner import DetectorRunner
from correlate.cli.engine import decoding_options
from correlate.events import DETAILS_LATER, to_json
from correlate.engine.merge import merge
from correlate.plugin_manager import get_plugin_manager
from correlate.sources import open_input

CAPTURE_DIR = Path(__file__).parent / "captures"
CAPTURES = sorted(CAPTURE_DIR.glob("*.pcap")) + sorted(CAPTURE_DIR.glob("*.pcap.gz"))
# Probe events recorded beside a capture: each file runs merged with its capture.
PROBED = sorted(CAPTURE_DIR.glob("*.probes.jsonl"))


def builtin_detectors(after_ns: int):
    """Every detector of the built-in plugins, as `analyze` loads them (through the hook): a
    new one is covered without being named here."""
    detectors, errors = load_detectors(get_plugin_manager(), {"unanswered_after_ns": after_ns})
    assert not errors
    builtin = [d for d in detectors if type(d).__module__.startswith("correlate.plugins.")]
    assert len(builtin) >= 12
    return builtin


def findings(paths, detectors, *, subscriptions: bool) -> list[str]:
    """Every finding of a run over the captures, as JSON lines (evidence included). With
    subscriptions, the runner is told when no input carries probe events, as `analyze`
    tells it (the detectors that need them are then fed nothing)."""
    runner = DetectorRunner(detectors, subscriptions=subscriptions)
    if subscriptions:
        runner.expect_probes(any(p.name.endswith(".probes.jsonl") for p in paths))
    decoding = decoding_options(runner, every_event=not subscriptions)
    out = []
    for ev in merge([open_input(str(p), **decoding).events for p in paths]):
        out.extend(runner.observe(ev))
    out.extend(runner.finish())
    return [to_json(f) for f in out]


def _inputs(name: str) -> list[Path]:
    if name == "all":
        return CAPTURES
    if name.endswith(".probes.jsonl"):
        return [CAPTURE_DIR / name.replace(".probes.jsonl", ".pcap"), CAPTURE_DIR / name]
    return [CAPTURE_DIR / name]


# A threshold of 1 ms makes slow replies "unanswered": the detector's wake-ups by time
# (due/tick) are exercised on every capture, not only on the hung one.
@pytest.mark.parametrize("after_ns", [10_000_000_000, 1_000_000])
@pytest.mark.parametrize("capture", [p.name for p in CAPTURES + PROBED] + ["all"])
def test_same_findings_with_and_without_subscriptions(capture, after_ns):
    paths = _inputs(capture)
    assert all(p.exists() for p in paths), paths
    filtered = findings(paths, builtin_detectors(after_ns), subscriptions=True)
    everything = findings(paths, builtin_detectors(after_ns), subscriptions=False)
    assert filtered == everything
    assert DETAILS_LATER not in "".join(filtered)
    if capture == "all":
        assert len(filtered) >= 5          # the scenarios' findings are really there


@pytest.mark.parametrize("probes", [p.name for p in PROBED])
def test_probe_events_reach_the_detectors(probes):
    """With subscriptions on, a capture's probe file still changes its findings (the
    probe-reading detectors are handed the probe events)."""
    capture, _ = _inputs(probes)
    alone = findings([capture], builtin_detectors(10_000_000_000), subscriptions=True)
    merged = findings(_inputs(probes), builtin_detectors(10_000_000_000), subscriptions=True)
    assert merged != alone


def test_every_builtin_detector_declares():
    """No built-in detector falls back to every event, every detail."""
    for det in builtin_detectors(10_000_000_000):
        wants = wants_of(det)
        assert wants is not EVERYTHING, det.id
        assert wants.details is not None, det.id
        assert wants.kinds is not None or wants.layers is not None, det.id


def test_builtin_detectors_declare_what_they_read():
    needed = details_needed(builtin_detectors(1))
    assert needed == {"SETATTR", "FSETATTR", "SETVOLUME", "PORTBYBRICK", "GETSPEC", "STATFS",
                      "LK", "INODELK", "FINODELK", "ENTRYLK", "FENTRYLK",
                      "INODELK_CONTENTION", "ENTRYLK_CONTENTION",
                      "LOOKUP", "CREATE", "MKDIR", "MKNOD", "SYMLINK", "LINK",
                      "UNLINK", "RENAME", "RMDIR", "SIGNIN"}
    runner = DetectorRunner(builtin_detectors(1))
    opts = decoding_options(runner, every_event=False)
    assert opts == {"details": needed, "details_later": True}
    assert decoding_options(runner, every_event=True) == {"details": True}


class Recorder(Detector):
    """Declares nothing: must see every event, with every detail."""
    id = "recorder"

    def __init__(self):
        self.seen = []

    def observe(self, event):
        self.seen.append(event)
        return ()


class OnlyConnects(Detector):
    id = "only-connects"
    wants = Wants(kinds={"tcp.connect"}, details=())

    def __init__(self):
        self.seen = []

    def observe(self, event):
        self.seen.append(event)
        return ()


def test_detector_declaring_nothing_sees_everything_decoded():
    capture = str(Path(__file__).parent / "captures" / "healthy.pcap")
    recorder, connects = Recorder(), OnlyConnects()
    detectors = [recorder, connects, *builtin_detectors(10_000_000_000)]
    runner = DetectorRunner(detectors)
    decoding = decoding_options(runner, every_event=False)
    assert decoding == {"details": True}         # someone reads everything: all is decoded
    for ev in open_input(capture, **decoding).events:
        runner.observe(ev)
    reference = list(open_input(capture).events)
    assert [to_json(e) for e in recorder.seen] == [to_json(e) for e in reference]
    assert connects.seen and all(e["kind"] == "tcp.connect" for e in connects.seen)
    assert len(connects.seen) == sum(e["kind"] == "tcp.connect" for e in reference)


def test_filtered_decoding_skips_details_and_restores_them_for_evidence():
    """Without the filtering this test fails: calls outside `details` keep their args."""
    from correlate.events import with_details
    capture = str(Path(__file__).parent / "captures" / "healthy.pcap")
    lean = list(open_input(capture, details={"SETATTR"}, details_later=True).events)
    full = list(open_input(capture).events)
    assert len(lean) == len(full)
    calls = [e for e in lean if e["kind"] == "rpc.call"]
    assert any(e["procedure"] == "SETATTR" and "args" in e for e in calls)
    assert all("args" not in e for e in calls if e["procedure"] != "SETATTR"
               and DETAILS_LATER in e)
    assert sum(DETAILS_LATER in e for e in lean) > len(lean) // 2
    # op_ret/op_errno/errno_name are there without the details
    replies = [(e.get("op_ret"), e.get("errno_name")) for e in lean if e["kind"] == "rpc.reply"]
    assert replies == [(e.get("op_ret"), e.get("errno_name")) for e in full if e["kind"] == "rpc.reply"]
    assert [to_json(with_details(e)) for e in lean] == [to_json(e) for e in full]


def test_details_restored_in_another_process_equal_full_decoding():
    """What a decoding process sends for DETAILS_LATER (--jobs, stdin's decoder: portable_later,
    pickled) gives the full events there; the sender decodes nothing for it but a rare failed
    reply (it used to decode every reply and its call, which made --jobs slower than one
    process)."""
    import pickle
    from correlate.events import with_details
    from correlate.wire.rpc import portable_later
    replies = []
    for name in ("busy-healthy.pcap.gz", "insecure-port.pcap"):
        capture = str(Path(__file__).parent / "captures" / name)
        lean = list(open_input(capture, details={"LOOKUP", "SETATTR"}, details_later=True).events)
        full = list(open_input(capture).events)
        sent = [pickle.loads(pickle.dumps({**e, DETAILS_LATER: portable_later(e[DETAILS_LATER])}
                                          if DETAILS_LATER in e else e)) for e in lean]
        assert [to_json(with_details(e)) for e in sent] == [to_json(e) for e in full]
        replies += [(e, e[DETAILS_LATER]) for e in sent
                    if e["kind"] == "rpc.reply" and DETAILS_LATER in e]
    decoded = [e for e, later in replies if later[0] is dict]
    assert decoded and all(e.get("accept_status") != "SUCCESS" for e in decoded)
    assert any(later[6] is not None for _, later in replies if later[0] is not dict)  # context
    assert any(later[7] is not None for _, later in replies if later[0] is not dict)  # lean call


def test_wants_rejects_a_bare_string():
    with pytest.raises(TypeError):
        Wants(kinds="rpc.call")


def _stream():
    """A call, then only TCP and probe events while the reply is overdue, then the reply."""
    call = {"time_ns": 1_000, "layer": "wire", "kind": "rpc.call", "source": "t", "xid": 7,
            "program": "GlusterFS", "program_num": 1298437, "version": 400,
            "procedure": "SETATTR", "procedure_num": 38, "src": "127.0.0.1:1000",
            "dst": "127.0.0.2:49152", "conn": 1,
            "args": {"valid": 0x10, "atime": -1, "atime_nsec": 0, "gfid": "x"}}
    others = [{"time_ns": t, "layer": layer, "kind": kind, "source": "t", "conn": 2}
              for t, layer, kind in ((500_000_000, "wire", "tcp.connect"),
                                     (2_500_000_000, "probe", "probe.return"),
                                     (11_000_000_000, "wire", "tcp.close"),
                                     (12_000_000_000, "log", "log.line"))]
    reply = {**call, "time_ns": 13_000_000_000, "kind": "rpc.reply", "src": call["dst"],
             "dst": call["src"], "reply_status": "accepted", "op_ret": 0}
    del reply["args"]
    return [call, *others, reply]


def test_detectors_woken_by_time_act_at_the_same_event():
    """rpc-unanswered and atime-minus-one act on time passing, woken at the first later
    event even one they do not subscribe to (due/tick): the call overdue at the close of
    another connection becomes a suspect, judged when its own connection speaks again (here
    its late reply: no capture gap could hide it)."""
    runs = []
    for subscriptions in (True, False):
        runner = DetectorRunner(builtin_detectors(10_000_000_000), subscriptions=subscriptions)
        out = []
        for ev in _stream():
            out.extend((ev["kind"], f["detector"], f["time_ns"]) for f in runner.observe(ev))
        out.extend((None, f.get("detector"), f["time_ns"]) for f in runner.finish())
        runs.append(out)
    assert runs[0] == runs[1]
    assert ("probe.return", "atime-minus-one", 2_500_000_000) in runs[0]
    assert ("rpc.reply", "rpc-unanswered", 13_000_000_000) in runs[0]


def _rpc(time_ns, kind, procedure, program="GlusterFS", xid=1, **fields):
    client, brick = "127.0.0.1:1000", "127.0.0.2:49152"
    src, dst = (client, brick) if kind == "rpc.call" else (brick, client)
    return {"time_ns": time_ns, "layer": "wire", "kind": kind, "source": "t", "xid": xid,
            "program": program, "procedure": procedure, "src": src, "dst": dst, "conn": 1,
            **fields}


def _unwanted(*times):
    """Events no detector here subscribes to but auth-rejected: log lines."""
    return [{"time_ns": t, "layer": "log", "kind": "log.line", "source": "t", "message": "x"}
            for t in times]


S = 1_000_000_000
TIMED_STREAMS = {
    # a PING unanswered past the ping timeout (42 s + 1): reported at the next event
    "brick-not-responding": ([_rpc(S, "rpc.call", "PING", program="GF-DUMP", cred={}, args={})]
                             + _unwanted(20 * S, 44 * S + 1, 60 * S), 44 * S + 1),
    # ENOSPC with no STATFS of that brick: reported once it waited 3 s for one
    "no-space": ([_rpc(S, "rpc.reply", "WRITE", op_ret=-1, op_errno=28, errno_name="ENOSPC")]
                 + _unwanted(2 * S, 4 * S + 7, 9 * S), 4 * S + 7),
    # a blocking INODELK still waiting when the input ends: judged at its last event
    "lock-wait": ([_rpc(S, "rpc.call", "INODELK", cred={"pid": 7, "lk_owner": "aa"},
                        args={"gfid": "g", "volume": "vol", "cmd": 2, "type": 1,
                              "flock": {"type": 1, "start": 0, "len": 0, "lk_owner": "aa"}})]
                  + _unwanted(S + 10, 3 * S, 5 * S + 3), 5 * S + 3),
}


@pytest.mark.parametrize("detector", sorted(TIMED_STREAMS))
def test_timed_detectors_act_at_the_same_event_when_filtered(detector):
    """Without due/tick these findings came later (at the end) or never."""
    stream, expected_ns = TIMED_STREAMS[detector]
    runs = []
    for subscriptions in (True, False):
        runner = DetectorRunner(builtin_detectors(10_000_000_000), subscriptions=subscriptions)
        out = [f for ev in stream for f in runner.observe(ev)] + runner.finish()
        runs.append([(f.get("detector"), f["time_ns"], f.get("title")) for f in out])
    assert runs[0] == runs[1]
    assert any(d == detector and t == expected_ns for d, t, _title in runs[0]), runs[0]


def test_route_table_is_per_kind_not_per_event():
    runner = DetectorRunner(builtin_detectors(10_000_000_000))
    for ev in _stream() * 100:
        runner.observe(ev)
    assert len(runner._routes) == 6
    ids = [d.id for d in runner.detectors]

    def route(*key):
        got = [ids[i] for i, _observe, _timed in runner._routes[key].calls]
        assert got == sorted(got, key=ids.index)        # detector order kept
        return set(got)

    # lock-wait, split-brain, lost-write and brick-unreachable read no SETATTR; auth-rejected
    # no call at all (the SETVOLUME call a failed reply answers is the shared state's)
    assert route("wire", "rpc.call", "GlusterFS", "SETATTR", False) == {
        "stale-handle", "slow-brick", "rpc-unanswered", "brick-not-responding",
        "atime-minus-one", "app-latency", "brick-down"}
    # a reply that did not fail reaches none of the detectors of errors
    assert route("wire", "rpc.reply", "GlusterFS", "SETATTR", False) == {
        "stale-handle", "slow-brick", "rpc-unanswered", "brick-not-responding",
        "atime-minus-one", "app-latency", "brick-down"}
    assert route("log", "log.line", None, None, False) == {"auth-rejected", "tls-failure"}
    assert route("wire", "tcp.connect", None, None, False) == {"brick-not-responding"}


def test_failed_replies_reach_the_detectors_of_errors():
    runner = DetectorRunner(builtin_detectors(10_000_000_000))
    ids = [d.id for d in runner.detectors]
    reply = _stream()[-1]
    ok = {ids[i] for i, _o, _t in runner._route(reply).calls}
    failed = {ids[i] for i, _o, _t in runner._route({**reply, "op_ret": -1, "op_errno": 13}).calls}
    denied = {ids[i] for i, _o, _t in runner._route(
        {**reply, "reply_status": "denied", "reject_status": "AUTH_ERROR"}).calls}
    assert failed - ok == {"no-space", "daemon-errors", "auth-rejected", "lost-write"}
    assert denied == failed
    # the STATFS a full brick is judged by reaches no-space whatever its outcome
    statfs = {ids[i] for i, _o, _t in runner._route({**reply, "procedure": "STATFS"}).calls}
    assert "no-space" in statfs and "daemon-errors" not in statfs


def test_wants_failures_lets_failed_replies_of_other_procedures_through():
    errors = Wants(kinds={"rpc.reply"}, procedures={"STATFS"}, failures=True)
    assert errors.matches("wire", "rpc.reply", "GlusterFS", "STATFS", False)
    assert errors.matches("wire", "rpc.reply", "GlusterFS", "WRITE", True)
    assert not errors.matches("wire", "rpc.reply", "GlusterFS", "WRITE", False)
    assert not errors.matches("wire", "rpc.call", "GlusterFS", "WRITE", False)
    assert not Wants(kinds={"rpc.reply"}, procedures={"STATFS"}).matches(
        "wire", "rpc.reply", "GlusterFS", "WRITE", True)


class NeedsProbes(Recorder):
    id = "needs-probes"
    needs = frozenset({"probe"})
    wants = Wants(kinds={"rpc.reply", "probe.return"}, details=())


def test_a_detector_that_needs_probes_is_fed_nothing_without_them():
    capture = str(Path(__file__).parent / "captures" / "healthy.pcap")
    for expected in (False, True):
        det, recorder = NeedsProbes(), Recorder()
        runner = DetectorRunner([det, recorder])
        runner.expect_probes(expected)
        for ev in open_input(capture).events:
            runner.observe(ev)
        replies = [e for e in recorder.seen if e["kind"] == "rpc.reply"]
        assert replies
        assert det.seen == (replies if expected else [])


def test_a_request_waiting_to_the_end_costs_one_tick_not_one_per_event():
    """lock-wait needs only the input's last time (due() = END_OF_INPUT): one tick before
    finish, however many events follow the request (it used to be woken at each one)."""
    from correlate.detector import END_OF_INPUT
    from plugins.lock_wait import LockWait
    det = LockWait(after_ns=S)
    ticks = []
    real_tick = det.tick
    det.tick = lambda now: ticks.append(now) or real_tick(now)
    runner = DetectorRunner([det])
    stream, last_ns = TIMED_STREAMS["lock-wait"]
    stream = stream[:1] + _unwanted(*range(2 * S, 3 * S, 1_000_000)) + [_unwanted(last_ns)[0]]
    for ev in stream:
        runner.observe(ev)
    assert det.due() == END_OF_INPUT and ticks == []
    found = runner.finish()
    assert ticks == [last_ns]
    assert [(f["detector"], f["time_ns"]) for f in found if f.get("kind") == "finding"] == [("lock-wait", last_ns)]


class _Counting(Detector):
    """Wants calls only; wakes 5 s after the first; counts how often due() is asked and
    what the shared state held when it was."""
    id = "counting"
    wants = Wants(kinds={"rpc.call"})

    def __init__(self, state):
        self.state, self.first, self.asked, self.ticks = state, None, [], []

    def observe(self, ev):
        self.first = self.first or ev["time_ns"]

    def due(self):
        self.asked.append(self.state.events_seen)
        return None if self.first is None else self.first + 5 * S

    def tick(self, now):
        self.ticks.append(now)
        self.first = None
        return [{"kind": "finding", "time_ns": now, "detector": self.id, "key": "k",
                 "severity": "info", "title": "woke"}]


def test_due_is_asked_when_an_unwanted_event_comes_not_after_every_call():
    """A timed detector that wants most events used to be asked due() after each one (387,000
    times on a 110k-packet capture): now once per unwanted event that follows calls, with the
    shared state as it was right after its last call, and it still wakes at the same event."""
    from correlate.state import GlusterState

    class Counted(GlusterState):
        events_seen = 0

        def observe(self, ev):
            self.events_seen += 1
            super().observe(ev)

    state = Counted()
    det = _Counting(state)
    runner = DetectorRunner([det], state=state)
    calls = [_rpc(S + i, "rpc.call", "LOOKUP") for i in range(1000)]
    for ev in calls + _unwanted(2 * S, 6 * S + 3, 7 * S):
        runner.observe(ev)
    assert det.asked == [1000, 1002], det.asked   # each before the state saw the log line
    assert det.ticks == [6 * S + 3]
