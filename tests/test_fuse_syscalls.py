"""The application's system calls in the fuse group, offline: which calls the kernel keeps and
where their path is, the fuse.syscall event a record becomes (relative paths made absolute,
an fd named), processes found by what they hold open, and fuse-errors meeting a failed FUSE
request with the call that sent it (by connection and unique), in either order and without
it."""
import os
import threading

from correlate.plugins.fuse_errors import SYSCALL_WAIT_NS, FuseErrors
from correlate.probe import fuse_syscalls as sysc
from correlate.testing import run_detector
from correlate.diagnostics import Diagnostics
from correlate.validate import clean_event

TABLE = {0: "read", 1: "write", 2: "open", 3: "close", 74: "fsync", 257: "openat",
         262: "newfstatat", 217: "getdents64", 56: "clone", 999: "far"}


class Clock:
    def to_realtime(self, ns):
        return ns + 1_000


def test_kept_calls_and_their_path_argument():
    flags = sysc.sysinfo_flags(TABLE)
    assert flags[2] == sysc.SYS_TRACKED | 1              # open(path, ...)
    assert flags[257] == sysc.SYS_TRACKED | 2            # openat(dirfd, path, ...)
    assert flags[262] == sysc.SYS_TRACKED | 2
    for fd_call in (0, 1, 3, 74, 217):
        assert flags[fd_call] == sysc.SYS_TRACKED | sysc.SYS_FD0
    assert 56 not in flags and 999 not in flags          # not a file call; beyond the map


def _record(**kw):
    rec = sysc.SysEvent(ts_enter=100, ts_exit=2_100, ret=-107, unique=30, nr=257, tgid=os.getpid(),
                        tid=threading.get_native_id(), fused=3, opcode=35, dev=40, fuse_error=-107,
                        comm=b"app")
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def test_record_becomes_a_typed_event():
    ev = sysc.event_of(_record(path=b"/mnt/v/dir/file-2", fd=2 ** 64 - 100), TABLE,
                       {35: "CREATE"}, Clock(), "bcc-fuse", "h", {40: "/mnt/v"})
    assert ev["kind"] == "fuse.syscall" and ev["syscall"] == "openat" and ev["ret"] == -107
    assert ev["errno_name"] == "ENOTCONN" and ev["fuse_errno_name"] == "ENOTCONN"
    assert ev["path"] == "/mnt/v/dir/file-2" and ev["opcode"] == "CREATE" and ev["mount"] == "/mnt/v"
    assert ev["call_time_ns"] == 1_100 and ev["latency_ns"] == 2_000 and ev["time_ns"] == 3_100
    diag = Diagnostics("probes")
    assert clean_event(dict(ev), diag) == ev          # the schema types every new key
    bad = clean_event(dict(ev, syscall=5, ret="x", in_syscall="yes"), diag)
    assert not {"syscall", "ret", "in_syscall"} & set(bad)


def test_relative_path_and_fd_are_named_from_proc(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        rel = sysc.event_of(_record(path=b"file-2", fd=2 ** 64 - 100), TABLE, {}, Clock(), "s",
                            "h", {})
    finally:
        os.chdir(old)
    assert rel["path"] == f"{tmp_path}/file-2"       # AT_FDCWD: the working directory
    with open(tmp_path / "held", "w") as fh:
        fd = fh.fileno()
        ev = sysc.event_of(_record(nr=74, fd=fd, has_fd=1, ret=-5), TABLE, {}, Clock(),
                           "s", "h", {})
    assert ev["syscall"] == "fsync" and ev["fd"] == fd and ev["path"] == str(tmp_path / "held")
    partial = sysc.event_of(_record(partial=1, path=b""), TABLE, {}, Clock(), "s", "h", {})
    assert "call_time_ns" not in partial and "path" not in partial   # entered unwatched
    ok = sysc.event_of(_record(ret=4096), TABLE, {}, Clock(), "s", "h", {})
    assert "errno" not in ok


def test_processes_found_by_what_they_hold(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    with open(mount / "f", "w"):
        # this process is left out (it is the collector); a child holding the file is found
        assert sysc.processes_using([str(mount)]) == []
    proc = tmp_path / "proc"
    (proc / "7" / "fd").mkdir(parents=True)
    (proc / "7" / "fd" / "3").symlink_to(mount / "f")
    (proc / "7" / "cwd").symlink_to("/")
    (proc / "8" / "fd").mkdir(parents=True)
    (proc / "8" / "cwd").symlink_to(mount)
    (proc / "9" / "fd").mkdir(parents=True)
    (proc / "9" / "cwd").symlink_to(tmp_path)
    assert sorted(sysc.processes_using([str(mount)], proc=str(proc))) == [7, 8]


def _reply(t, unique, errno=107, **kw):
    return {"time_ns": t, "layer": "probe", "kind": "fuse.reply", "source": "t", "opcode": "CREATE",
            "unique": unique, "connection": 40, "tid": 11, "pid": 10, "comm": "app", "errno": errno,
            "errno_name": {107: "ENOTCONN", 5: "EIO"}[errno], "path": f"/mnt/v/f{unique}",
            "call_time_ns": t - 1000, "latency_ns": 1000, **kw}


def _call(t, unique, errno_name="ENOTCONN", **kw):
    return {"time_ns": t, "layer": "probe", "kind": "fuse.syscall", "source": "t",
            "syscall": "openat", "unique": unique, "connection": 40, "tid": 11, "pid": 10,
            "comm": "app", "ret": -107 if errno_name else 3, "path": f"/mnt/v/f{unique}",
            **({"errno_name": errno_name} if errno_name else {}), **kw}


def test_failed_request_is_named_by_the_call_that_sent_it():
    found = run_detector(FuseErrors(), [_reply(1_000_000, 30, in_syscall=True),
                                        _call(1_050_000, 30)])
    [f] = found
    assert f["syscall"] == "openat" and f["syscall_errno_name"] == "ENOTCONN"
    assert 'openat("/mnt/v/f30") (FUSE CREATE)' in f["title"] and f["severity"] == "error"
    assert [e["kind"] for e in f["evidence"]][:2] == ["fuse.reply", "fuse.syscall"]


def test_call_ahead_of_its_request_and_a_call_that_never_comes():
    # the call first (another CPU's buffer was read first), then a request whose call is
    # lost (another process: a finding of its own, not folded into the first)
    found = run_detector(FuseErrors(), [_call(1_000_000, 30), _reply(1_000_001, 30, in_syscall=True),
                                        _reply(2_000_000, 31, in_syscall=True, pid=12),
                                        _reply(2_000_000 + SYSCALL_WAIT_NS + 5, 32, errno=5)])
    by_path = {f["path"]: f for f in found}
    assert by_path["/mnt/v/f30"]["syscall"] == "openat"
    # held for SYSCALL_WAIT_NS, then reported from the FUSE operation alone
    assert "syscall" not in by_path["/mnt/v/f31"] and "open(O_CREAT)" in by_path["/mnt/v/f31"]["title"]
    assert "syscall" not in by_path["/mnt/v/f32"]    # not in a traced call: reported at once


def test_error_the_program_never_saw_is_a_warning():
    [f] = run_detector(FuseErrors(), [_reply(1_000_000, 30, in_syscall=True),
                                      _call(1_050_000, 30, errno_name=None)])
    assert f["severity"] == "warning" and "the program saw no error" in f["explanation"]


def test_call_named_where_its_request_was_sent():
    """Without the exit traced (the default): the call and its fd from the send side."""
    [f] = run_detector(FuseErrors(), [_reply(1_000_000, 30, opcode="FSYNC", syscall="fsync", fd=3,
                                             errno=5)])
    assert f["title"].startswith("app (pid 10, thread 11) got EIO from fsync(fd 3) (FUSE FSYNC)")
    assert f["syscall"] == "fsync" and "syscall_errno_name" not in f


def test_slow_fuse_request_is_split_across_layers():
    """app-latency splits a slow FUSE request with the RPCs its thread sent: kernel and FUSE
    client before, between and after them, the wire and the bricks during them."""
    from correlate.plugins.app_latency import AppLatency
    ms = 1_000_000
    call = {"time_ns": 110 * ms, "layer": "wire", "kind": "rpc.call", "source": "t",
            "program": "GlusterFS", "program_num": 1298437, "procedure": "LOOKUP", "xid": 7,
            "conn": 1, "src": "127.0.0.1:1000", "dst": "127.0.0.2:49200", "cred": {"pid": 11},
            "args": {"bname": "f"}}
    reply = dict(call, time_ns=390 * ms, kind="rpc.reply", op_ret=0, src=call["dst"], dst=call["src"])
    other = dict(call, xid=8, cred={"pid": 99}, time_ns=120 * ms)      # another thread's
    slow = {"time_ns": 400 * ms, "layer": "probe", "kind": "fuse.reply", "source": "t",
            "opcode": "LOOKUP", "unique": 4, "connection": 40, "tid": 11, "pid": 10, "comm": "ls",
            "path": "/mnt/v/f", "syscall": "newfstatat", "error": 0, "call_time_ns": 100 * ms,
            "latency_ns": 300 * ms}
    [f] = run_detector(AppLatency(), [call, other, reply, slow])
    assert f["title"] == "newfstatat() (FUSE LOOKUP) on /mnt/v/f took 300.00 ms in ls (pid 10, thread 11)"
    assert "the wire and the bricks took 280.00 ms of the 300.00 ms (93%) over 1 RPCs" in f["explanation"]
    assert "the kernel and the FUSE client took 10.00 ms before the first RPC" in f["explanation"]
    assert f["brick_ns"] == 280 * ms and f["total_ns"] == 300 * ms
    # a failed request is fuse-errors' to report; a fast one is no finding
    assert not run_detector(AppLatency(), [dict(slow, errno=107, errno_name="ENOTCONN")])
    assert not run_detector(AppLatency(), [dict(slow, latency_ns=5 * ms)])


def test_hung_brick_recovery_names_the_fuse_applications_that_waited():
    """brick-not-responding lists FUSE callers that waited or got ENOTCONN meanwhile, with
    their system call, beside libgfapi callers (the committed hung-brick capture, with a
    FUSE request still waiting and one that failed while the brick was reported hung)."""
    from pathlib import Path

    from correlate.plugins.brick_not_responding import BrickNotResponding
    from correlate.testing import events_of
    events = events_of(Path(__file__).parent / "captures" / "brick-hang.pcap")
    reported = 1796160686961825000          # the not-responding finding's time
    waiting = {"time_ns": reported + 500_000_000, "layer": "probe", "kind": "fuse.pending",
               "source": "t", "opcode": "GETATTR", "tid": 11, "pid": 10, "comm": "ls",
               "syscall": "newfstatat", "call_time_ns": reported - 2_500_000_000,
               "waited_ns": 3_000_000_000}
    failed = _reply(reported + 600_000_000, 31, pid=12, comm="cp", opcode="OPEN", syscall="openat")
    found = run_detector(BrickNotResponding(), [*events, waiting, failed])
    [back] = [f for f in found if f["title"].startswith("brick answering again")]
    assert ("Meanwhile the application saw: newfstatat() (FUSE GETATTR) in ls pid 10 blocked "
            "3.0 s and still waited; openat() (FUSE OPEN) in cp pid 12 failed with ENOTCONN"
            in back["explanation"])
    assert back["application"] == ["newfstatat() (FUSE GETATTR)", "openat() (FUSE OPEN)"]
