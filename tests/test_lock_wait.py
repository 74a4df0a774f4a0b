"""lock-wait on real lock waits: the committed capture (tests/captures/lock-wait.pcap) and a
fresh one from the lab; silence on healthy traffic."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.testing import run_detector
from correlate.wire.decode import decode_capture

CAPTURES = Path(__file__).parent / "captures"


def findings(path, detector="lock-wait"):
    res = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--json", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return [e for e in map(json.loads, res.stdout.splitlines())
            if e.get("kind") == "finding" and e.get("detector") == detector]


def lk_exchanges(path):
    """LK calls with their replies, from decode's events: (call, reply or None)."""
    calls, out = {}, []
    for ev in decode_capture(str(path)):
        if ev.get("procedure") != "LK":
            continue
        key = (ev["conn"], ev["xid"])
        if ev["kind"] == "rpc.call":
            calls[key] = ev
        elif key in calls:
            out.append((calls.pop(key), ev))
    return out


def check_wait(path, holder_pid=None, waiter_pid=None):
    exchanges = lk_exchanges(path)
    blocked = [(c, r) for c, r in exchanges if r["time_ns"] - c["time_ns"] > 1_000_000_000]
    assert len(blocked) == 1
    call, reply = blocked[0]
    granted_first = [c for c, r in exchanges if c["conn"] != call["conn"]
                     and c["args"]["flock"]["type"] == 1 and r["time_ns"] < call["time_ns"]]
    [f] = findings(path)
    assert f["severity"] == "warning" and not f["still_waiting"]
    assert abs(f["wait_ns"] - (reply["time_ns"] - call["time_ns"])) < 1_000_000
    assert f["brick"].startswith(call["dst"]) and "/srv/correlate-lab/" in f["brick"]
    assert f"pid {call['cred']['pid']}" in f["waiter"]
    assert f"pid {granted_first[0]['cred']['pid']}" in f["holder"]
    if waiter_pid:
        assert f"pid {waiter_pid}" in f["waiter"] and f"pid {holder_pid}" in f["holder"]
    return f


def test_committed_capture_names_waiter_holder_brick_and_wait():
    f = check_wait(CAPTURES / "lock-wait.pcap")
    assert "not on a hung brick" in f["explanation"]


@pytest.mark.parametrize("capture", ["healthy.pcap", "atime-minus-one.pcap", "auth-rejected.pcap",
                                     "firewall-drop.pcap"])
def test_no_lock_wait_on_other_captures(capture):
    assert findings(CAPTURES / capture) == []


def test_lab_lock_wait(lab, tmp_path):
    from tests.lab import lab as labmod
    out = tmp_path / "lock-wait.pcap"
    result = labmod.record("lock-wait", out, hold=3)
    assert result.reproduced, result.summary
    check_wait(out, result.details["holder_pid"], result.details["waiter_pid"])


def test_contention_summarized_per_file_on_busy_replicated_traffic():
    """busy-healthy.pcap.gz (replica 3, clients at once) holds INODELK_CONTENTION callbacks and
    INODELK EAGAIN replies: with a low threshold they are summed per gfid as info, and the
    counts are decode's own."""
    from collections import Counter

    from correlate.plugins.lock_wait import LockWait
    path = str(CAPTURES / "busy-healthy.pcap.gz")
    want, calls = Counter(), {}
    for ev in decode_capture(path):
        if ev["kind"] == "rpc.call" and ev.get("procedure") == "INODELK_CONTENTION":
            want[(ev["args"]["gfid"], "INODELK_CONTENTION callbacks")] += 1
        elif ev["kind"] == "rpc.call":
            calls[(ev["conn"], ev["xid"])] = ev
        elif ev["kind"] == "rpc.reply" and ev.get("errno_name") == "EAGAIN" \
                and ev.get("procedure") in ("INODELK", "FINODELK", "ENTRYLK", "FENTRYLK", "LK"):
            gfid = calls[(ev["conn"], ev["xid"])]["args"]["gfid"]
            want[(gfid, f"{ev['procedure']} EAGAIN replies")] += 1
    assert want
    found = run_detector(LockWait(storm_min=1), path)
    storms = [f for f in found if f["key"].startswith("storm:")]
    assert storms and all(f["severity"] == "info" and f["count"] == 1 for f in storms)
    got = Counter()
    for f in storms:
        for part in f["explanation"].split(": ", 1)[1].split(". ")[0].split(", "):
            n, what = part.split(" ", 1)
            got[(f["gfid"], what)] += int(n)
    assert got == want
    assert [f for f in found if f["severity"] != "info"] == []


def test_a_wait_still_going_at_the_end_of_the_capture(tmp_path):
    """The committed capture cut right after the holder's unlock call (before any reply):
    the waiter is still waiting at the end, 11.44 s after its call, the holder named."""
    exchanges = lk_exchanges(CAPTURES / "lock-wait.pcap")
    unlock = next(c for c, _r in exchanges if c["args"]["type"] == 2)
    waiter = next(c for c, r in exchanges if r["time_ns"] - c["time_ns"] > 1_000_000_000)
    cut = tmp_path / "cut.pcap"
    subprocess.run(["editcap", "-r", str(CAPTURES / "lock-wait.pcap"), str(cut),
                    f"1-{unlock['frame']}"], check=True, capture_output=True)
    [f] = findings(cut)
    assert f["still_waiting"] and "asked to release it" in f["explanation"]
    assert f"pid {unlock['cred']['pid']}" in f["holder"]
    assert abs(f["wait_ns"] - (unlock["time_ns"] - waiter["time_ns"])) < 1_000_000
    assert findings(cut, "rpc-unanswered") == []


# ---- the file by its path: in findings and in `timeline --path` ---------------------------

def _created(path):
    """(path, gfid) of the file the capture's CREATE made in the volume's root."""
    from correlate.state.files import ROOT_GFID
    reply = next(e for e in decode_capture(str(path)) if e["kind"] == "rpc.reply"
                 and e.get("procedure") == "CREATE" and e["op_ret"] == 0)
    assert reply["args"]["pargfid"] == ROOT_GFID
    return "/" + reply["args"]["bname"], reply["result"]["stat"]["ia_gfid"]


def test_lock_finding_names_the_file_by_its_path():
    path, gfid = _created(CAPTURES / "lock-wait.pcap")
    [f] = findings(CAPTURES / "lock-wait.pcap")
    assert f["path"] == path == "/lock-wait" and f["gfid"] == gfid
    assert f"LK on {path} waited" in f["title"]
    assert f"blocking LK on {path} (gfid {gfid})" in f["explanation"]


def timeline(*args):
    res = subprocess.run([sys.executable, "-m", "correlate", "timeline", "--json",
                          str(CAPTURES / "lock-wait.pcap"), *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()[1:]]     # after the header


def test_timeline_path_follows_the_files_gfid():
    """By full path or basename: the LOOKUPs and the CREATE that name the file, then every
    call and reply by its gfid (OPEN, the LKs of both clients, FLUSH), and the finding."""
    path, gfid = _created(CAPTURES / "lock-wait.pcap")
    want = [(e["kind"], e["conn"], e["xid"]) for e in decode_capture(str(CAPTURES / "lock-wait.pcap"))
            if e["kind"].startswith("rpc.") and ((e.get("args") or {}).get("bname") == path[1:]
                                                 or (e.get("args") or {}).get("gfid") == gfid)]
    for spec in (path, path[1:], path + "/"):
        shown = timeline("--path", spec)
        assert [(e["kind"], e["conn"], e["xid"]) for e in shown if e["layer"] == "wire"] == want
        assert [e["detector"] for e in shown if e["layer"] == "finding"] == ["lock-wait"]
    procedures = {e["procedure"] for e in timeline("--path", path) if e["layer"] == "wire"}
    assert procedures == {"LOOKUP", "CREATE", "OPEN", "LK", "FLUSH"}
    assert timeline("--path", "/elsewhere" + path) == []
    assert timeline("--path", "lock") == []           # a name, not a substring


def test_path_filter_follows_an_fd_to_its_file():
    """A call that names only an fd (FINODELK without a gfid) is the file's when that fd
    came from the OPEN of the file's gfid on the same connection."""
    from correlate.state.files import ROOT_GFID
    from correlate.cli.timeline_filter import EventFilter
    G = "6b222e8d-5cb0-440d-9b7c-58fcc8f7faf7"
    base = {"layer": "wire", "source": "c.pcap", "conn": 3, "program": "GlusterFS"}
    lookup = {**base, "time_ns": 1, "kind": "rpc.reply", "xid": 1, "procedure": "LOOKUP", "op_ret": 0,
              "args": {"pargfid": ROOT_GFID, "bname": "f"}, "result": {"prestat": {"ia_gfid": G}}}
    opened = {**base, "time_ns": 2, "kind": "rpc.reply", "xid": 2, "procedure": "OPEN", "op_ret": 0,
              "args": {"gfid": G}, "result": {"fd": 7}}
    lock = {**base, "time_ns": 3, "kind": "rpc.call", "xid": 3, "procedure": "FINODELK",
            "args": {"fd": 7, "volume": "v"}}
    other_conn = {**lock, "conn": 4, "xid": 4}
    other_fd = {**lock, "xid": 5, "args": {"fd": 8}}
    keep = EventFilter(path="/f")
    assert [keep(e) for e in (lookup, opened, lock, other_conn, other_fd)] == [True, True, True, False, False]
