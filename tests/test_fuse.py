"""The fuse probe group and what reads it, offline: the committed recording
(tests/captures/fuse-enotconn.*, a real FUSE mount with a dead brick), the join in the shared
state, the detector, and the collector's readers of kernel facts (BTF, tracepoint format,
mountinfo)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.probe import btf
from correlate.probe.fuse_backend import (OFFSETS, fuse_mounts, kernel_defines, opcode_names,
                                          slow_ns_from)
from correlate.state import GlusterState

CAPTURES = Path(__file__).parent / "captures"
PCAP, PROBES = CAPTURES / "fuse-enotconn.pcap", CAPTURES / "fuse-enotconn.probes.jsonl"
SERIOUS = ("warning", "error", "critical")


def _json_lines(args) -> list[dict]:
    res = subprocess.run([sys.executable, "-m", "correlate", *args], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def _probe_events() -> list[dict]:
    return [json.loads(line) for line in PROBES.read_text().splitlines()]


def test_recording_names_program_path_errno_and_dead_brick():
    probes = _probe_events()
    assert probes and all(e["kind"] == "fuse.reply" and e["errno_name"] == "ENOTCONN" for e in probes)
    app_pid, app_tid = probes[0]["pid"], probes[0]["tid"]
    assert app_tid != app_pid        # a worker thread made the calls
    out = _json_lines(["analyze", "--json", str(PCAP), str(PROBES)])
    findings = [e for e in out if e.get("kind") == "finding"]
    serious = [f for f in findings if f["severity"] in SERIOUS]
    assert [f["detector"] for f in serious] == ["fuse-errors"]   # one cause: folded
    f = serious[0]
    assert f["program"] == "python" and f["pid"] == app_pid and f["errno_name"] == "ENOTCONN"
    assert f["fuse_op"] == "CREATE" and f["path"] == probes[0]["path"]
    assert f["path"].startswith("/mnt/fusevol/rec-") and f["path"].endswith("/file-0")
    assert f"thread {app_tid}" in f["title"] and "open(O_CREAT)" in f["title"]
    assert "127.0.0.2:/srv/correlate-lab/fusevol/b1 is down" in f["explanation"]
    assert "No reply carried it" in f["explanation"]
    kinds = [(e["kind"], e.get("procedure")) for e in f["evidence"]]
    assert ("fuse.reply", None) in kinds and ("rpc.reply", "PORTBYBRICK") in kinds
    updates = [u for u in out if u.get("kind") == "finding.update" and u["id"] == f["id"]]
    assert updates and updates[-1]["count"] == len(probes)   # each failed file, folded


def test_join_is_by_credential_pid_within_the_request():
    """Every RPC the state joins to a FUSE request carries the requesting thread's id in its
    credential and was sent while the request ran."""
    wire = _json_lines(["decode", "--json", str(PCAP)])
    probes = _probe_events()
    state = GlusterState()
    joins = []
    for ev in sorted(wire + probes, key=lambda e: e["time_ns"]):
        state.observe(ev)
        if ev["kind"] == "fuse.reply":
            joins.append(state.fuse.join(ev))
    assert len(joins) == len(probes)
    with_calls = [j for j in joins if j.calls]
    assert with_calls, "no FUSE request met its RPCs"
    for j in joins:
        for call in j.calls:
            assert call["cred"]["pid"] == j.request["tid"]
            assert j.request["call_time_ns"] - 2_000_000 <= call["time_ns"] <= j.request["time_ns"] + 2_000_000
        assert j.down_bricks and j.down_bricks[-1]["procedure"] == "PORTBYBRICK"
        assert not j.failed_replies   # the client made the error: no reply carried it
    # the wire's LOOKUPs of the failing names are the ones joined
    names = {c["args"].get("bname") for j in joins for c in j.calls if c["procedure"] == "LOOKUP"}
    assert {p["name"] for p in probes} <= names


def test_pending_request_names_unanswered_call():
    state = GlusterState()
    call = {"time_ns": 1_500, "layer": "wire", "kind": "rpc.call", "source": "t", "program": "GlusterFS",
            "procedure": "LOOKUP", "xid": 7, "conn": 1, "src": "127.0.0.1:1000",
            "dst": "127.0.0.2:49200", "cred": {"pid": 42}, "args": {"bname": "x"}}
    other = dict(call, xid=8, cred={"pid": 43})
    state.observe(call)
    state.observe(other)
    pending = {"time_ns": 5_000_000_000, "layer": "probe", "kind": "fuse.pending", "source": "t",
               "opcode": "LOOKUP", "tid": 42, "pid": 40, "comm": "app", "call_time_ns": 1_000,
               "waited_ns": 4_999_999_000}
    j = state.fuse.join(pending)
    assert j.unanswered == (call,) and j.program == "app (pid 40, thread 42)"
    assert j.path == "/.../x"   # no probe path: the wire LOOKUP's name


def test_no_thread_no_join():
    state = GlusterState()
    j = state.fuse.join({"time_ns": 10, "kind": "fuse.reply", "tid": 0, "errno": 5,
                         "call_time_ns": 5})
    assert not j.calls and any("no requesting thread" in u for u in j.uncertain)


@pytest.mark.skipif(not os.path.exists(btf.VMLINUX), reason="the kernel exposes no BTF")
def test_offsets_come_from_the_running_kernel():
    try:
        text = kernel_defines()
    except Exception as exc:       # a kernel without FUSE in its BTF
        pytest.skip(str(exc))
    defines = dict(line.split()[1:3] for line in text.splitlines())
    assert set(defines) == {d for d, *_ in OFFSETS} | {"IN_ARG_LEN"}
    # the uapi in-header's own layout is fixed by the FUSE protocol
    assert int(defines["H_UNIQUE"]) == 8 and int(defines["H_NODEID"]) == 16
    assert int(defines["H_PID"]) == 32 and int(defines["IN_ARG_LEN"]) == 16


def test_btf_struct_size_refuses_damage(tmp_path):
    bad = tmp_path / "btf"
    bad.write_bytes(b"\x9f\xeb\x01\x00" + b"\x00" * 30)
    with pytest.raises(btf.BtfError):
        btf.struct_size("fuse_req", path=str(bad))


def test_opcode_names_and_mounts_from_kernel_text(tmp_path):
    fmt = tmp_path / "format"
    fmt.write_text('print fmt: "...", __print_symbolic(REC->opcode, {1, "FUSE_LOOKUP"}, '
                   '{99, "FUSE_NEWOP"}), REC->len')
    names = opcode_names(str(fmt))
    assert names[1] == "LOOKUP" and names[99] == "NEWOP" and names[35] == "CREATE"
    assert opcode_names(str(tmp_path / "missing"))[16] == "WRITE"
    info = tmp_path / "mountinfo"
    info.write_text("47 27 0:40 / /mnt/fusevol rw,relatime - fuse.glusterfs 127.0.0.2:/fusevol rw\n"
                    "48 27 8:1 / /data rw - ext4 /dev/sda1 rw\n"
                    "49 27 0:41 / /mnt/with\\040space rw - fuse.glusterfs h:/v rw\n"
                    "garbage\n")
    assert fuse_mounts(str(info)) == {40: "/mnt/fusevol", 41: "/mnt/with space"}


def test_threshold_follows_the_detector_option():
    assert slow_ns_from({}) == 1_000_000_000
    assert slow_ns_from({"fuse-errors": {"slow_s": 0.25}}) == 250_000_000
    assert slow_ns_from({"fuse-errors": {"slow_s": -1}}) == 1_000_000_000
    assert slow_ns_from({"fuse-errors": {"slow_s": True}}) == 1_000_000_000


def test_sessions_poll_and_stop_as_one_source():
    from correlate.probe.fuse_session import Sessions

    class Part:
        def __init__(self, name, times):
            self.backend_name, self.lost, self.times = name, 1, times

        def poll(self, timeout_ms):
            out, self.times = [{"time_ns": t} for t in self.times], []
            return out

        def stop(self):
            return [{"time_ns": 99}]

        def summary(self):
            return {"backend": self.backend_name}

    s = Sessions([Part("bcc", [5, 1]), Part("bcc-fuse", [3])])
    assert [e["time_ns"] for e in s.poll(100)] == [1, 3, 5]
    assert s.backend_name == "bcc+bcc-fuse" and s.lost == 2
    assert [e["time_ns"] for e in s.stop()] == [99, 99]
    assert [p["backend"] for p in s.summary()["parts"]] == ["bcc", "bcc-fuse"]
