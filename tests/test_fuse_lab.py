"""`correlate run --probe fuse --pcap -` on a real FUSE mount of the lab (tcpdump piped in):
an application's ENOTCONN (dead brick), a hung system call (bricks stopped), a stale file
under an open fd (replaced by a second client, brick restarted), a split-brain read, a slow
brick under the application's writes, and a healthy workload without warnings. Needs root,
bcc, the kernel's fuse tracepoints and the lab; skips saying which is missing."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.lab import fuse, lab, volumes
from tests.lab.live import SERIOUS, LivePipeline

pytestmark = [pytest.mark.bpf, pytest.mark.lab]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the fuse probes need root"
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    from correlate.probe.errors import ProbeError
    from correlate.probe.fuse_backend import kernel_defines
    try:
        check_bcc_prerequisites()
        kernel_defines()
    except ProbeError as exc:
        return str(exc)
    if not shutil.which("mount.glusterfs"):
        return "no mount.glusterfs (glusterfs-client)"
    return None


@pytest.fixture(scope="module")
def mounted(lab):
    reason = _missing()
    if reason:
        print(f"\nskipping FUSE lab tests: {reason}")
        pytest.skip(reason)
    fuse.ensure()
    yield fuse.MOUNT
    for where in (fuse.MOUNT_B, fuse.SB_MOUNT, fuse.MOUNT):
        fuse.umount(where)


@pytest.fixture
def pipeline(mounted, tmp_path):
    pipes = []

    def start(*args):
        pipe = LivePipeline(["--probe", "fuse", *args], tmp_path / "timeline.jsonl")
        pipes.append(pipe)
        try:
            pipe.wait_ready()
        except AssertionError:
            pipe.kill()
            raise
        return pipe
    yield start
    for pipe in pipes:
        if pipe.run.poll() is None:
            pipe.stop()


def _fuse_finding(pipe, predicate, timeout=30):
    hit = pipe.wait_for(lambda ev: ev.get("kind") == "finding" and ev.get("detector") == "fuse-errors"
                        and predicate(ev), timeout)
    assert hit, "no fuse-errors finding; findings: " + json.dumps(
        [f.get("title") for f in pipe.findings()]) + "".join(pipe.stderr)[-2000:]
    return hit[1]


def _errno_name(number: int) -> str:
    return errno.errorcode[number]


def _fresh_dir(name: str):
    """A new directory on the mount, once the mount has reconnected to every brick (a
    previous test restarted one: the client retries every 3 s). A directory made while a
    brick was still away exists on the others only, and DHT then places every file there:
    it is made again until every brick has it (a mkdir meanwhile may fail with ENOTCONN or
    EIO: tried again)."""
    deadline = time.monotonic() + 60
    while True:
        d = fuse.MOUNT / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            d.mkdir()
        except OSError as exc:
            # ENOTCONN, or EIO from DHT while the restarted brick's layout is not back yet
            if exc.errno not in (errno.ENOTCONN, errno.EIO) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        if all((b / d.name).is_dir() for b in fuse.SPEC.brick_dirs):
            return d
        if time.monotonic() > deadline:
            raise AssertionError(f"{d} is not on every brick of {fuse.SPEC.name}")
        time.sleep(1)


@pytest.mark.parametrize("calls", ["send", "exit"])
def test_enotconn_names_program_path_and_dead_brick(pipeline, monkeypatch, calls, tmp_path):
    """By default the system call is named where its FUSE request is sent; with
    CORRELATE_FUSE_SYSCALLS=exit its end is traced too: the errno the program got."""
    monkeypatch.setenv("CORRELATE_FUSE_SYSCALLS", calls)
    directory = _fresh_dir("enotconn")
    pipe = pipeline()
    with lab.exclusive():
        volumes.kill_brick(fuse.SPEC.name, 0)
        try:
            time.sleep(4)     # the client's retry: PORTBYBRICK answered -1 on the wire
            proc = fuse.run_app("create", str(directory), "12")
            out = json.loads(proc.communicate(timeout=120)[0].splitlines()[-1])
            failed = [p for p, e in out["results"].items() if e == 107]
            assert failed, f"no create hashed to the dead brick: {out}"
            f = _fuse_finding(pipe, lambda ev: ev.get("errno_name") == "ENOTCONN")
        finally:
            volumes.start_force(fuse.SPEC.name, fuse.SPEC.count)
    assert f["pid"] == out["pid"] and f["program"] == out["comm"]
    assert f["path"] == failed[0] and f["fuse_op"] == "CREATE"
    assert f"thread {out['tid']}" in f["title"]
    # the application's own call: openat (and, its end traced, the errno it returned)
    assert f["syscall"] == "openat" and "openat(" in f["title"] and "(FUSE CREATE)" in f["title"]
    assert f.get("syscall_errno_name") == ("ENOTCONN" if calls == "exit" else None)
    assert f"{lab.HOST}:{fuse.SPEC.brick_dirs[0]} is down" in f["explanation"]
    # the same analysis offline, from the saved timeline
    assert pipe.stop() == 0
    res = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--json",
                          str(tmp_path / "timeline.jsonl")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    again = [e for e in map(json.loads, res.stdout.splitlines()) if e.get("kind") == "finding"
             and e.get("detector") == "fuse-errors" and e.get("errno_name") == "ENOTCONN"]
    assert [(e["title"], e.get("syscall")) for e in again][:1] == [(f["title"], f["syscall"])]


def test_hung_call_names_the_rpc_it_waits_on(pipeline, tmp_path):
    directory = _fresh_dir("hung")
    pipe = pipeline("-o", "fuse-errors.slow_s=1")
    with lab.exclusive():
        pids = [volumes.pause_brick(fuse.SPEC.name, i) for i in range(fuse.SPEC.count)]
        try:
            proc = fuse.run_app("stat", str(directory / "not-yet"))
            app_pid = json.loads(proc.stdout.readline())["pid"]
            # the path walk's first request to the mount hangs: a GETATTR revalidating a
            # directory (the entries time out after 1 s) or the LOOKUP of the new name
            f = _fuse_finding(pipe, lambda ev: ev.get("pid") == app_pid)
        finally:
            for pid in pids:
                volumes.resume_brick(pid)
        out = json.loads(proc.communicate(timeout=60)[0].splitlines()[-1])
    print(f["title"], f["explanation"], sep="\n")
    assert f["severity"] == "warning" and f["fuse_op"] in ("GETATTR", "LOOKUP")
    # the system call it hangs in, from the thread's registers when the request was sent
    assert f["syscall"] in ("newfstatat", "stat", "statx", "lstat")
    assert f"hangs in {f['syscall']}() (FUSE {f['fuse_op']})" in f["title"]
    assert str(directory / "not-yet").startswith(f["path"]) or f["path"] == str(directory / "not-yet")
    assert re.search(r"It waits for (LOOKUP|STAT) to 127\.0\.0\.2:\d+", f["explanation"])
    assert "unanswered" in f["explanation"]
    assert out["errno"] in (0, 2)     # answered once the bricks run again
    assert pipe.stop() == 0
    # the requests that waited and then succeeded are split across layers by app-latency:
    # the wait was the bricks' (their RPCs answered after SIGCONT)
    timeline = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    waited = [e for e in timeline if e.get("kind") == "fuse.reply" and e.get("pid") == app_pid
              and not e.get("errno") and e.get("latency_ns", 0) >= 1_000_000_000]
    split = [e for e in timeline if e.get("kind") == "finding" and e.get("detector") == "app-latency"
             and f"pid {app_pid}" in e.get("title", "")]
    print([e["title"] + ": " + e["explanation"] for e in split])
    assert len(split) >= (1 if waited else 0)
    for e in split:
        assert "(FUSE " in e["title"] and "the wire and the bricks took" in e["explanation"]


def test_stale_file_under_open_fd(pipeline):
    fuse.mount(fuse.MOUNT_B)
    name = f"stale-{os.getpid()}-{time.monotonic_ns()}"
    pipe = pipeline()
    with lab.exclusive():
        proc = fuse.run_app("stale", str(fuse.MOUNT / name), str(fuse.MOUNT_B / name),
                            stdin=subprocess.PIPE)
        assert json.loads(proc.stdout.readline()) == {"replaced": True}
        gone = [volumes.kill_brick(fuse.SPEC.name, i).pid for i in range(fuse.SPEC.count)]
        volumes.start_force(fuse.SPEC.name, fuse.SPEC.count, gone=gone)
        time.sleep(4)        # the client reconnects (and re-opens its fds) within 3 s
        out = json.loads(proc.communicate("go\n", timeout=60)[0].splitlines()[-1])
    failed = {call: e for call, e in out["results"].items() if e}
    assert failed, f"the fd kept working: {out}"
    f = _fuse_finding(pipe, lambda ev: ev.get("errno_name") in ("ENOENT", "EBADFD", "ESTALE"))
    assert f["pid"] == out["pid"] and f["path"] == str(fuse.MOUNT / name)
    print(f["title"], f["explanation"], sep="\n")
    assert "removed or replaced by another client" in f["explanation"]
    assert f["errno_name"] in {_errno_name(e) for e in failed.values()}
    calls = {"pwrite": "pwrite64", "fsync": "fsync", "fstat": "fstat", "close": "close"}
    assert f["syscall"] in {calls[c] for c in failed}
    assert re.search(rf"{f['syscall']}\(fd \d+\) \(FUSE {f['fuse_op']}\)", f["title"])


def test_healthy_fuse_workload_gives_no_warning(pipeline, tmp_path):
    directory = _fresh_dir("healthy")
    pipe = pipeline()
    script = (f"set -e; cp -r /usr/share/doc/bash {directory}/a; cp -r {directory}/a {directory}/b; "
              f"ls -lR {directory} > /dev/null; dd if=/dev/zero of={directory}/big bs=1M count=16 "
              f"status=none; cat {directory}/big > /dev/null; ls {directory}/missing 2>/dev/null || true; "
              f"mv {directory}/b {directory}/c; rm -r {directory}")
    subprocess.run(["sh", "-c", script], check=True, timeout=300)
    time.sleep(1)
    assert pipe.stop() == 0
    serious = [f for f in pipe.findings() if f.get("severity") in SERIOUS]
    assert not serious, [f["title"] for f in serious]
    # the kernel kept the everyday answers (the missing name's LOOKUP ENOENT, the xattr
    # lookups' ENODATA) to itself: nothing left it for this workload
    timeline = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    sent = [e for e in timeline if e.get("kind", "").startswith("fuse.")]
    assert not [e for e in sent if e.get("errno_name") in ("ENOENT", "ENODATA")], sent


def test_split_brain_eio_names_reader_and_file(pipeline):
    with lab.exclusive():
        path = fuse.make_split_brain(f"sb-{os.getpid()}-{time.monotonic_ns()}")
    pipe = pipeline()
    time.sleep(1.5)          # the kernel's entry for the file expires: the read looks it up
    res = subprocess.run(["cat", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "Input/output error" in res.stderr, res
    f = _fuse_finding(pipe, lambda ev: ev.get("errno_name") == "EIO")
    print(f["title"], f["explanation"], sep="\n")
    assert f["program"] == "cat" and f["path"] == str(path) and f["fuse_op"] in ("READ", "OPEN", "LOOKUP")
    assert f["syscall"] in ("read", "openat")
    assert "made EIO itself" in f["explanation"] or "turned that into EIO" in f["explanation"]
    assert "split-brain" in f["explanation"]


WRITER = """import os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
for _ in range(int(sys.argv[2])):
    os.write(fd, b"x" * 1024)
    time.sleep(0.05)
os.close(fd)
"""


def test_slow_brick_under_the_mount(pipeline, tmp_path):
    """The lab's slow-brick volume (replica 3, the third brick's WRITEs delayed 300 ms,
    write-behind off) on a FUSE mount, an application writing: slow-brick names that brick
    against its peers, and app-latency splits the application's slow FUSE WRITEs, each
    almost all wire and bricks."""
    from tests.lab.scenarios import REGISTRY
    scenario = REGISTRY["slow-brick"](volume="fz2slow", delay_us=300_000, brick=3)
    where = fuse.MOUNT.parent / "fz2slow"
    with lab.exclusive():
        scenario.prepare(lab.up())
        try:
            fuse.mount(where, volume="fz2slow")
            # mounted before the capture began: the bricks' names from glusterd
            pipe = pipeline("-o", "fuse-errors.slow_s=0.2", "--topology", "live")
            subprocess.run([sys.executable, "-c", WRITER, str(where / f"slow-{os.getpid()}"), "25"],
                           check=True, timeout=120)
            assert pipe.stop() == 0
        finally:
            fuse.umount(where)
            scenario.restore()
    timeline = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    findings = [e for e in timeline if e.get("kind") == "finding"]
    print(*(f"{f['severity']} {f['detector']}: {f['title']}" for f in findings), sep="\n")
    (slow,) = [f for f in findings if f["detector"] == "slow-brick" and f["severity"] == "warning"]
    assert slow["procedure"] == "WRITE" and "/srv/correlate-lab/fz2slow/b3" in slow["title"]
    port = slow["brick"].split()[0].rsplit(":", 1)[1]
    split = [f for f in findings if f["detector"] == "app-latency" and "(FUSE WRITE)" in f["title"]]
    assert split, [f["title"] for f in findings]
    for f in split:
        assert "the wire and the bricks took" in f["explanation"]
        assert f"the slowest WRITE on 127.0.0.2:{port} /srv/correlate-lab/fz2slow/b3" in f["explanation"]
        assert not re.search(r"took -", f["explanation"])
    # past the 0.2 s asked for, the application's write waits on that brick's WRITE
    waits = [f for f in findings if f["detector"] == "fuse-errors"]
    assert all(f"WRITE to 127.0.0.2:{port}" in f["explanation"] for f in waits)
    assert not [f for f in findings if f["severity"] in SERIOUS and f["detector"] not in
                ("slow-brick", "app-latency", "fuse-errors")]


def test_a_mount_whose_client_was_killed_is_mounted_afresh(mounted):
    """A run killed between sessions leaves its FUSE mount dead (ENOTCONN on every access,
    and `mountpoint` cannot tell it is one): the lab mounts it again instead of failing."""
    from tests.lab import gluster
    clients = [p for p in gluster.pids_of("glusterfs") if str(fuse.MOUNT) in gluster._cmdline(p)]
    assert clients
    for pid in clients:
        os.kill(pid, 9)
    volumes.wait_gone(clients)
    assert fuse.dead(fuse.MOUNT)
    fuse.ensure()
    assert not fuse.dead(fuse.MOUNT) and fuse.mounted(fuse.MOUNT)
    (fuse.MOUNT / "after-remount").write_text("ok\n")
    assert (fuse.MOUNT / "after-remount").read_text() == "ok\n"
