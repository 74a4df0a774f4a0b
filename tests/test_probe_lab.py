"""Probes on the real lab: libgfapi through ctypes, Samba's vfs_glusterfs in a loopback smbd,
and the probe clock against tcpdump's. Needs root, bcc and the lab; skips saying why."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest

from correlate.probe import catalog
from correlate.probe.errors import ProbeError

pytestmark = [pytest.mark.bpf, pytest.mark.lab]


def _bcc_missing() -> str | None:
    if os.geteuid() != 0:
        return "bcc probes need root"
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        return str(exc)
    return None


@pytest.fixture
def probe_lab(lab):
    """The lab, held exclusively for the test (other lab users wait), plus a probe session
    factory; sessions are stopped afterwards."""
    reason = _bcc_missing()
    if reason:
        print(f"\nskipping probe lab test: {reason}")
        pytest.skip(reason)
    from correlate.probe.session import ProbeSession
    from tests.lab import lab as lab_module
    sessions = []

    def open_session(group: str, **kw) -> ProbeSession:
        s = ProbeSession(catalog.select(group), backend="bcc", **kw).start()
        sessions.append(s)
        return s

    with lab_module.exclusive():
        lab_module.up()
        yield open_session
        for s in sessions:
            s.stop()


def _collect(session, until, timeout=20.0) -> list[dict]:
    """Poll until `until(events)` is true or the timeout passes."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += session.poll(100)
        if until(events):
            break
    return events


def _gfapi(*args: str) -> dict:
    from tests.lab import gfapi
    result = gfapi.run(list(args), timeout=60)
    assert result["status"] == "ok", result
    return result


def _calls(events, function, pid=None):
    return [e for e in events if e["kind"] == "probe.call" and e["function"] == function
            and (pid is None or e["pid"] == pid)]


def test_atime_minus_one_and_healthy_utimens(probe_lab):
    session = probe_lab("gfapi")
    bad = _gfapi("utimens", "--path", "/probe-atime-minus-one", "--atime", "-1", "--mtime", "1700000000")
    good_atime = int(time.time()) - 3600
    good = _gfapi("utimens", "--path", "/probe-atime-healthy", "--atime", f"{good_atime}.25",
                  "--mtime", "1700000000")
    events = _collect(session, lambda ev: _calls(ev, "glfs_utimens", good["pid"]))
    events += session.poll(200)

    bad_call, = _calls(events, "glfs_utimens", bad["pid"])
    assert bad_call["args"]["path"] == "/probe-atime-minus-one"
    assert bad_call["args"]["atime"] == -1 and bad_call["args"]["atime_nsec"] == 0
    assert bad_call["args"]["mtime"] == 1700000000
    assert bad_call["library"].endswith("libgfapi.so.0") and bad_call["tid"] and bad_call["comm"]

    good_call, = _calls(events, "glfs_utimens", good["pid"])
    assert good_call["args"]["path"] == "/probe-atime-healthy"
    assert good_call["args"]["atime"] == good_atime and good_call["args"]["atime_nsec"] == 250_000_000

    # glfs_utimens has no trap of its own: it is seen in the glfs_setattr it calls, one event
    # under its own name (implemented_by); emit="calls": a successful return sends nothing
    assert good_call["via"] == "glfs_setattr" and good_call["probe"] == "gfapi.glfs_utimens"
    assert not [e for e in events if e["kind"] == "probe.return" and e["function"] == "glfs_utimens"]
    assert not [e for e in events if e["function"] == "glfs_setattr"]
    # a failed one sends its return, with the errno the application got
    from tests.lab import gfapi
    missing = gfapi.run(["utimens", "--existing", "--path", "/probe-atime-no-such-file",
                         "--atime", "1700000000", "--mtime", "1700000000"], timeout=60)
    assert missing["status"] == "error" and missing["errno"] == errno.ENOENT, missing
    failed = _collect(session, lambda ev: any(e["kind"] == "probe.return" and e["pid"] == missing["pid"]
                                              and e["function"] == "glfs_utimens" for e in ev))
    failed += session.poll(200)
    call, = _calls(failed, "glfs_utimens", missing["pid"])
    ret, = [e for e in failed if e["kind"] == "probe.return" and e["pid"] == missing["pid"]
            and e["function"] == "glfs_utimens"]
    assert ret["retval"] == -1 and ret["errno_name"] == "ENOENT"
    assert 0 < ret["duration_ns"] < 10_000_000_000 and ret["time_ns"] > call["time_ns"]
    assert not [e for e in failed if e["function"] == "glfs_setattr"]
    # glfs_init was probed with its return: a mount that completed has both.
    inits = [e for e in events if e["function"] == "glfs_init" and e["pid"] == good["pid"]]
    assert [e["kind"] for e in inits] == ["probe.call", "probe.return"] and inits[1]["retval"] == 0
    assert session.lost == 0


def test_samba_fntimes_resolved_in_stripped_module(probe_lab):
    if shutil.which("smbd") is None or shutil.which("smbclient") is None:
        pytest.skip("needs smbd and smbclient (apt-get install samba smbclient)")
    from tests.lab import samba
    session = probe_lab("all")
    fnt = next(r for r in session.resolved if r.spec.name == "samba.vfs_gluster_fntimes")
    assert fnt.method == "eh_frame+plt"
    with samba.Smbd() as smbd:
        put = smbd.client("put /etc/hostname probe-smb.txt")
        assert put.returncode == 0, put.stdout + put.stderr
        # A new access time each run: vfs_glusterfs skips the call when nothing changes.
        want = int(time.time()) - 86400 * 400
        stamp = time.strftime("%Y:%m:%d-%H:%M:%S", time.gmtime(want))
        res = smbd.utimes("probe-smb.txt", access=stamp)
        assert res.returncode == 0, res.stdout + res.stderr
        events = _collect(session, lambda ev: _calls(ev, "vfs_gluster_fntimes")
                          and any(e["kind"] == "probe.return" and e["function"] == "vfs_gluster_fntimes"
                                  for e in ev))
        events += session.poll(300)
    calls = [e for e in _calls(events, "vfs_gluster_fntimes") if e["args"].get("atime") == want]
    assert calls, [e for e in events if e["layer"] == "probe"]
    call = calls[0]
    # smbclient left the other times at -1, which current Samba passes on as UTIME_OMIT.
    assert call["args"]["mtime_nsec"] == catalog.UTIME_OMIT
    assert call["comm"].startswith("smbd")
    # fsp->fsp_name->base_name, through the offset read from the module's own code.
    assert call["args"]["path"] == "probe-smb.txt", call
    ret = next(e for e in events if e["kind"] == "probe.return" and e["function"] == "vfs_gluster_fntimes"
               and e["tid"] == call["tid"] and e["time_ns"] > call["time_ns"])
    assert ret["retval"] == 0
    # Beneath it, in the same smbd process and thread: the libgfapi call with the same atime.
    below = [e for e in events if e["kind"] == "probe.call" and e["function"] in ("glfs_futimens", "glfs_utimens")
             and e["pid"] == call["pid"] and e["tid"] == call["tid"]
             and call["time_ns"] < e["time_ns"] < ret["time_ns"]]
    assert below and below[0]["args"]["atime"] == want
    # Samba 4.17 fills the omitted times from the file's current stat before calling gfapi.
    assert below[0]["args"]["mtime"] > 0 and below[0]["args"]["mtime_nsec"] != catalog.UTIME_OMIT


def test_probe_time_precedes_the_setattr_packet(probe_lab, tmp_path):
    if shutil.which("tshark") is None:
        pytest.skip("needs tshark to find the SETATTR frame")
    from tests.lab import lab as lab_module
    from tests.lab.capture import Tcpdump
    session = probe_lab("gfapi")
    pcap = tmp_path / "setattr.pcap"
    with Tcpdump(pcap, lab_module.DEFAULT_FILTER, interface="lo"):
        result = _gfapi("utimens", "--path", "/probe-clock", "--atime", "1600000000", "--mtime", "1700000000")
        events = _collect(session, lambda ev: _calls(ev, "glfs_utimens", result["pid"]))
    call, = _calls(events, "glfs_utimens", result["pid"])
    # GlusterFS program 1298437, procedure 38 (SETATTR), calls only.
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y",
                          "rpc.program == 1298437 && rpc.procedure == 38 && rpc.msgtyp == 0",
                          "-T", "fields", "-e", "frame.time_epoch"],
                         capture_output=True, text=True, timeout=120)
    stamps = []
    for line in out.stdout.split():
        sec, _, frac = line.partition(".")
        stamps.append(int(sec) * 1_000_000_000 + int((frac + "000000000")[:9]))
    assert stamps, f"no SETATTR call in the capture: {out.stderr[-500:]}"
    after = [t for t in stamps if t >= call["time_ns"]]
    assert after, f"probe at {call['time_ns']} is after every SETATTR packet {stamps}"
    gap = after[0] - call["time_ns"]
    print(f"\nprobe -> SETATTR packet: {gap / 1000:.1f} us; clock error bound "
          f"{session.summary()['clock']['error_ns']} ns")
    assert 0 <= gap <= 1_000_000


def test_hanging_mount_is_a_glfs_init_call_without_return(probe_lab):
    """auth.reject of the client: qemu-img's glfs_init never returns (the scenario kills it)."""
    if shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-img (apt-get install qemu-utils qemu-block-extra)")
    from tests.lab import lab as lab_module
    with lab_module.staged("auth-rejected") as scenario:
        session = probe_lab("gfapi")
        result = scenario.trigger()
        events = _collect(session, lambda ev: False, timeout=1.0)
    assert result.details.get("hung"), result.summary
    inits = [e for e in events if e["function"] == "glfs_init" and e["comm"].startswith("qemu-img")]
    assert [e["kind"] for e in inits] == ["probe.call"], inits


def test_probe_command_streams_json_until_sigterm(probe_lab):
    """`correlate probe --json` as a user runs it: events as JSON lines, a clean exit on
    SIGTERM with the events collected so far and the lost-event count."""
    import json
    import signal
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "correlate", "probe", "--probe", "gfapi", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "attached" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "correlate probe exited early"
        result = _gfapi("utimens", "--path", "/probe-cli", "--atime", "-1", "--mtime", "1700000000")
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    events = [json.loads(l) for l in out.splitlines()]
    calls = [e for e in events if e["function"] == "glfs_utimens" and e["pid"] == result["pid"]
             and e["kind"] == "probe.call"]
    assert calls and calls[0]["args"]["atime"] == -1 and calls[0]["args"]["path"] == "/probe-cli"
    assert all(e["layer"] == "probe" and isinstance(e["time_ns"], int) for e in events)
    assert ", 0 lost" in err.strip().splitlines()[-1]


FOPS_CHILD = r'''
import ctypes, json, os, sys
from tests.lab import gfapi
fs = gfapi.Client(log_file="/var/log/correlate-lab/probe-fops-client.log").init()
lib, c = fs.lib, ctypes
libc = c.CDLL("libc.so.6")
libc.dlvsym.restype = c.c_void_p
libc.dlvsym.argtypes = [c.c_void_p, c.c_char_p, c.c_char_p]
def versioned(name, version, restype, argtypes):
    return c.CFUNCTYPE(restype, *argtypes, use_errno=True)(libc.dlvsym(lib._handle, name, version))
p, sz, off = c.c_void_p, c.c_size_t, c.c_long
pwrite6 = versioned(b"glfs_pwrite", b"GFAPI_6.0", c.c_ssize_t, [p, c.c_char_p, sz, off, c.c_int, p, p])
pwrite34 = versioned(b"glfs_pwrite", b"GFAPI_3.4.0", c.c_ssize_t, [p, c.c_char_p, sz, off, c.c_int])
pread6 = versioned(b"glfs_pread", b"GFAPI_6.0", c.c_ssize_t, [p, c.c_char_p, sz, off, c.c_int, p])
pread34 = versioned(b"glfs_pread", b"GFAPI_3.4.0", c.c_ssize_t, [p, c.c_char_p, sz, off, c.c_int])
fsync6 = versioned(b"glfs_fsync", b"GFAPI_6.0", c.c_int, [p, p, p])
out = {"pid": os.getpid()}
path = sys.argv[1]
# healthy: every call succeeds, so the probes send nothing
fd = fs.creat(path)
assert pwrite6(fd, b"a" * 4096, 4096, 0, 0, None, None) == 4096
assert pwrite34(fd, b"b" * 100, 100, 4096, 0) == 100
assert fsync6(fd, None, None) == 0
fs.close(fd)
fd = fs.open(path)
buf = c.create_string_buffer(4096)
assert pread6(fd, buf, 4096, 0, 0, None) == 4096 and pread34(fd, buf, 10, 0, 0) == 10
# failing: a write on a read-only fd is acknowledged by write-behind, the close fails
out["acknowledged"] = [pwrite6(fd, b"c" * 512, 512, 8192, 0, None, None),
                       pwrite34(fd, b"d" * 256, 256, 100, 0)]
out["close"] = lib.glfs_close(fd)
out["close_errno"] = c.get_errno()
# failing: a read of a directory, an open and a stat of a missing file
fs.mkdir(path + ".dir", exist_ok=True)
fd = fs.open(path + ".dir")
out["pread"] = pread6(fd, buf, 16, 0, 0, None)
out["pread_errno"] = c.get_errno()
fs.close(fd)
fs.rmdir(path + ".dir")
for call in (lambda: fs.open(path + ".missing"), lambda: fs.stat(path + ".missing")):
    try:
        call()
    except gfapi.GfapiError as exc:
        out.setdefault("missing_errnos", []).append(exc.errno)
fs.unlink(path)
print(json.dumps(out), flush=True)
os._exit(0)
'''


def test_fop_failures_with_errno_and_the_lost_acknowledged_writes(probe_lab):
    """Real gfapi calls through both symbol versions: successful fops send nothing; each
    failure comes as its call and return with errno as the caller read it; a close that fails
    after write-behind acknowledged writes carries those writes (the lost data)."""
    import json
    import sys
    from tests.lab.gfapi import REPO_ROOT
    session = probe_lab("gfapi")
    path = "/probe-fops"
    child = subprocess.run([sys.executable, "-c", FOPS_CHILD, path], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    pid = out["pid"]
    events = _collect(session, lambda ev: sum(e["kind"] == "probe.return" and e["pid"] == pid
                                              and e["function"] == "glfs_stat" for e in ev))
    events += session.poll(200)
    mine = [e for e in events if e["pid"] == pid and e["function"] not in ("glfs_init",)]
    assert session.lost == 0
    # Exactly the failing calls, each as call + return: nothing from the healthy part.
    assert [(e["function"], e["kind"]) for e in mine] == [
        ("glfs_close", "probe.call"), ("glfs_close", "probe.return"),
        ("glfs_pread", "probe.call"), ("glfs_pread", "probe.return"),
        ("glfs_open", "probe.call"), ("glfs_open", "probe.return"),
        ("glfs_stat", "probe.call"), ("glfs_stat", "probe.return")], mine
    close_call, close_ret, pread_call, pread_ret, open_call, open_ret, stat_call, stat_ret = mine
    assert out["acknowledged"] == [512, 256] and out["close"] == -1
    assert close_call["args"]["path"] == path                   # from the open the probes saw
    assert close_ret["retval"] == -1 and close_ret["errno"] == out["close_errno"] == errno.EBADF
    assert close_ret["unsynced_writes"]["count"] == 2
    assert close_ret["unsynced_writes"]["bytes"] == 512 + 256
    assert (close_ret["unsynced_writes"]["offset_lo"], close_ret["unsynced_writes"]["offset_hi"]) == (100, 8704)
    assert close_ret["unsynced_writes"]["first_time_ns"] <= close_ret["unsynced_writes"]["last_time_ns"] \
        < close_call["time_ns"]
    assert pread_call["args"] == {"fd": pread_call["args"]["fd"], "count": 16, "offset": 0,
                                  "path": path + ".dir"}
    assert pread_ret["retval"] == -1 and pread_ret["errno"] == out["pread_errno"] == errno.EISDIR
    assert open_call["args"]["path"] == path + ".missing" and open_ret["retval"] == "0x0"
    assert open_ret["errno"] == stat_ret["errno"] == errno.ENOENT == out["missing_errnos"][0]
    assert stat_call["args"]["path"] == path + ".missing" and stat_ret["retval"] == -1
    assert all(e["comm"].startswith("python") for e in mine)
