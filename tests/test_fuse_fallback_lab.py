"""The fuse group's fallback (uprobes on the glusterfs FUSE client's readv/writev of
/dev/fuse) on a real FUSE mount of the lab: chosen with its reason when the tracepoints do
not load (here forced: this kernel has them), and the same failed-request events as the
tracepoint collector for the same failure, both attached at once. Needs root, bcc, the
kernel's fuse tracepoints and the lab; skips saying which is missing."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.lab import fuse, lab, volumes
from tests.test_fuse_lab import _fresh_dir, _missing

pytestmark = [pytest.mark.bpf, pytest.mark.lab]
SAME = ("kind", "opcode", "opcode_num", "unique", "connection", "mount", "nodeid", "name",
        "path", "tid", "pid", "comm", "uid", "gid", "error", "errno", "errno_name")


@pytest.fixture(scope="module")
def mounted(lab):
    reason = _missing()
    if reason:
        print(f"\nskipping FUSE fallback lab tests: {reason}")
        pytest.skip(reason)
    fuse.ensure()
    yield fuse.MOUNT


def _session(monkeypatch, **env):
    from correlate.probe.fuse_session import FuseSession
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return FuseSession(slow_ns=1_000_000_000).start()


def test_fallback_is_chosen_with_its_reason(mounted, monkeypatch):
    from correlate.probe.errors import ProbeError
    from correlate.probe.fuse_backend import FuseCollector

    def no_tracepoints(self):
        raise ProbeError("the fuse probes could not load: failed to attach raw tracepoint "
                         "(the tracepoints fuse:fuse_request_send and fuse:fuse_request_end "
                         "exist since Linux 6.12)")
    monkeypatch.setattr(FuseCollector, "start", no_tracepoints)
    session = _session(monkeypatch)
    try:
        assert session.backend_name == "bcc-fuse-uprobes"
        [note] = session.notes()
        assert "exist since Linux 6.12" in note and "readv/writev of /dev/fuse" in note
        assert session.attached == 3 * len(session.collector.clients) >= 3
        probes = session.summary()["probes"]
        assert {p["method"] for p in probes} == {"uprobe"} and any("readv" in p["probe"] for p in probes)
    finally:
        session.stop()
    # asked for the tracepoints only: no fallback, the reason stands
    with pytest.raises(ProbeError, match="Linux 6.12"):
        _session(monkeypatch, CORRELATE_FUSE_BACKEND="tracepoints")


def test_forced_fallback_sends_what_the_tracepoints_send(mounted, monkeypatch):
    from correlate.probe.fuse_backend import FuseCollector
    directory = _fresh_dir("fallback")
    fallback = _session(monkeypatch, CORRELATE_FUSE_BACKEND="uprobes")
    assert "CORRELATE_FUSE_BACKEND=uprobes" in fallback.notes()[0]
    tracepoints = FuseCollector(slow_ns=1_000_000_000, syscalls=False)
    tracepoints.start()
    got = {"uprobes": [], "tracepoints": []}

    def poll():
        got["uprobes"] += fallback.poll(50)
        got["tracepoints"] += tracepoints.poll(50)
    try:
        with lab.exclusive():
            volumes.kill_brick(fuse.SPEC.name, 0)
            try:
                time.sleep(4)
                app = fuse.run_app("create", str(directory), "12", "wait", stdin=subprocess.PIPE)
                out = json.loads(app.stdout.readline())
                for _ in range(10):     # while the app's thread lives: both name it
                    poll()
                app.communicate("go\n", timeout=60)
            finally:
                volumes.start_force(fuse.SPEC.name, fuse.SPEC.count)
    finally:
        got["uprobes"] += fallback.stop()
        got["tracepoints"] += tracepoints.stop()
    failed = sorted(p for p, e in out["results"].items() if e)
    assert failed, f"no create hashed to the dead brick: {out}"
    mine = {side: sorted((tuple(e.get(k) for k in SAME) for e in evs
                          if e.get("tid") == out["tid"] and e["kind"] == "fuse.reply"), key=str)
            for side, evs in got.items()}
    assert mine["uprobes"] == mine["tracepoints"], mine
    assert sorted(e[SAME.index("path")] for e in mine["uprobes"]) == failed
    assert {e[SAME.index("errno_name")] for e in mine["uprobes"]} == {"ENOTCONN"}
    assert {e[SAME.index("pid")] for e in mine["uprobes"]} == {out["pid"]}
    # the two sides' times of one request: the daemon reads it after the kernel sends it and
    # answers before the kernel ends it
    by_unique = {e["unique"]: e for e in got["tracepoints"]}
    for e in got["uprobes"]:
        t = by_unique[e["unique"]]
        assert t["call_time_ns"] - 2_000_000 <= e["call_time_ns"] and e["time_ns"] <= t["time_ns"] + 2_000_000
