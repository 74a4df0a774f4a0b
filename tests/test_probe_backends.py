"""Both backends on a real libgfapi without the lab: a ctypes child calls glfs_new (which
needs no server), so the uprobe fires in an ordinary process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from correlate.probe.catalog import Arg, ProbeSpec
from correlate.probe.errors import ProbeError
from correlate.probe.resolve import resolve
from tests.probe_child import call_and_collect, skip_unless_bcc

pytestmark = pytest.mark.bpf

GLFS_NEW = ProbeSpec("test.glfs_new", "test", "libgfapi.so.0", "glfs_new", (Arg("volname", 1, "str"),),
                     retprobe=True, retval="ptr")

CHILD = """
import ctypes, sys
lib = ctypes.CDLL("libgfapi.so.0")
lib.glfs_new.restype = ctypes.c_void_p
print("ready", flush=True)
for line in sys.stdin:
    lib.glfs_new(line.strip().encode())
    print("done", flush=True)
"""


def _skip_unless_root_and_gfapi():
    if os.geteuid() != 0:
        pytest.skip("probes need root")
    try:
        return resolve(GLFS_NEW)
    except ProbeError as exc:
        pytest.skip(str(exc))


class Child:
    """A process that has libgfapi loaded and calls glfs_new(name) on request."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, name: str) -> None:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def _poll_for(session, pred, timeout=10.0):
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(pred(e) for e in events):
        events += session.poll(100)
    return events


def test_bcc_pid_filter_and_string_argument():
    _skip_unless_root_and_gfapi()
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        print(f"\nskipping: {exc}")
        pytest.skip(str(exc))
    from correlate.probe.session import ProbeSession
    watched, other = Child(), Child()
    try:
        session = ProbeSession([GLFS_NEW], pid=watched.pid, backend="bcc").start()
        try:
            other.call("vol-other")
            watched.call("volwatched")
            watched.call("vol-watched\x1b]0;x")
            events = _poll_for(session, lambda e: e["kind"] == "probe.return"
                               and e["retval"] == "0x0")
            events += session.stop()
        finally:
            session.stop()
    finally:
        watched.close()
        other.close()
    assert {e["pid"] for e in events} == {watched.pid}
    calls = [e for e in events if e["kind"] == "probe.call"]
    rets = [e for e in events if e["kind"] == "probe.return"]
    assert [c["args"]["volname"] for c in calls] == ["volwatched", "vol-watched\x1b]0;x"]
    # glfs_new returns a glfs_t * for a valid name and NULL for one with control characters.
    assert int(rets[0]["retval"], 16) != 0 and rets[1]["retval"] == "0x0"
    assert rets[0]["time_ns"] - calls[0]["time_ns"] == rets[0]["duration_ns"]
    assert session.summary()["clock"]["error_ns"] < 1_000_000


def test_stap_runs_or_says_why():
    rp = _skip_unless_root_and_gfapi()
    if shutil.which("stap") is None:
        pytest.skip("stap not installed (apt-get install systemtap)")
    from correlate.probe.stap_backend import StapCollector
    collector = StapCollector([rp])
    try:
        collector.start()
    except ProbeError as exc:
        # This is what stap itself said (e.g. stapbpf cannot raise RLIMIT_MEMLOCK here).
        print(f"\nstap cannot run here: {exc}")
        pytest.skip(f"stap cannot run here: {exc}")
    child = Child()
    events = []
    try:
        child.call("vol-stap")
        events += _poll_for(collector, lambda e: e["kind"] == "probe.call" and e["pid"] == child.pid, 20)
    finally:
        events += collector.stop()
        child.close()
    calls = [e for e in events if e["kind"] == "probe.call" and e["pid"] == child.pid]
    assert calls and calls[0]["function"] == "glfs_new"
    assert abs(calls[0]["time_ns"] - time.time_ns()) < 120 * 1_000_000_000


def _setfsuid_spec_for_bcc() -> ProbeSpec:
    """A probe on glfs_setfsuid (cheap to call in a burst from ctypes); skips without bcc."""
    _skip_unless_root_and_gfapi()
    from correlate.probe.bcc_backend import check_bcc_prerequisites
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        pytest.skip(str(exc))
    return ProbeSpec("test.glfs_setfsuid", "test", "libgfapi.so.0", "glfs_setfsuid",
                     (Arg("uid", 1, "int"),))


def test_bcc_counts_lost_events_when_the_buffer_overflows():
    """A burst far larger than a one-page perf buffer, polled only afterwards: the kernel
    drops records and the collector reports them as probe.lost events and in `lost`.

    The kernel writes its "lost N" record with the next record that fits, so the child makes
    one more call after the buffer was drained; it stays on one CPU so both land in the same
    per-CPU buffer."""
    spec = _setfsuid_spec_for_bcc()
    from correlate.probe.bcc_backend import BccCollector
    code = ("import ctypes, os, sys\n"
            "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "f = ctypes.CDLL('libgfapi.so.0').glfs_setfsuid\n"
            "sys.stdin.readline()\n[f(0) for _ in range(20000)]\nprint('burst', flush=True)\n"
            "sys.stdin.readline()\nf(0)\nprint('one', flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    collector = BccCollector([resolve(spec, child.pid)], pid=child.pid, perf_pages=1)
    collector.start()
    events = []
    try:
        for expect in ("burst", "one"):
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == expect
            for _ in range(10):
                events += collector.poll(50)
        child.wait(30)
    finally:
        events += collector.stop()
    calls = [e for e in events if e["kind"] == "probe.call"]
    lost = [e for e in events if e["kind"] == "probe.lost"]
    assert collector.lost > 0 and lost and sum(e["count"] for e in lost) == collector.lost
    assert len(calls) + collector.lost == 20001
    assert all(e["args"]["uid"] == 0 for e in calls)


DWARF_LIB = """
#include <time.h>
int glfs_utimens(void *fs, const char *path, const struct timespec times[2])
{
    return (int)(times[0].tv_sec & 1);
}
"""

DWARF_CHILD = """
import ctypes, sys
class TS(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("n", ctypes.c_long)]
lib = ctypes.CDLL(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
lib.glfs_utimens(None, b"/dwarf/path", (TS * 2)(TS(-1, 0), TS(1700000000, 5)))
print("done", flush=True)
"""


def test_stap_reads_arguments_the_dwarf_way(tmp_path):
    """A library with debug info (built here with gcc -g) that has glfs_utimens's signature:
    the stap backend reads path and the signed times through DWARF ($path, $times[0]->tv_sec)."""
    if os.geteuid() != 0:
        pytest.skip("probes need root")
    if shutil.which("stap") is None or shutil.which("gcc") is None:
        pytest.skip("needs stap and gcc")
    from correlate.probe.stap_backend import StapCollector
    from correlate.probe.stap_script import has_dwarf
    src = tmp_path / "dw.c"
    src.write_text(DWARF_LIB)
    lib = tmp_path / "libdw.so"
    subprocess.run(["gcc", "-g", "-O0", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    assert has_dwarf(str(lib))
    spec = ProbeSpec("t.dwarf", "t", str(lib), "glfs_utimens",
                     (Arg("path", 2, "str"), Arg("times", 3, "timespec2")), retprobe=True)
    collector = StapCollector([resolve(spec)])
    try:
        collector.start()
    except ProbeError as exc:
        print(f"\nstap cannot run here: {exc}")
        pytest.skip(f"stap cannot run here: {exc}")
    child = subprocess.Popen([sys.executable, "-c", DWARF_CHILD, str(lib)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    events = []
    try:
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        events += _poll_for(collector, lambda e: e["kind"] == "probe.call" and e["pid"] == child.pid, 20)
    finally:
        events += collector.stop()
        child.stdin.close()
        child.wait(10)
    call = next(e for e in events if e["kind"] == "probe.call" and e["pid"] == child.pid)
    assert call["args"] == {"path": "/dwarf/path", "atime": -1, "atime_nsec": 0,
                            "mtime": 1700000000, "mtime_nsec": 5}
    assert call["source"] == "stap" and call["function"] == "glfs_utimens"


def test_bcc_orders_a_batch_read_from_several_cpu_buffers_by_time():
    """Each CPU has its own perf buffer and they are read in CPU order. The child calls first on
    the highest CPU, then on the lowest: read naively, the later call comes out first."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to put events in two perf buffers")
    spec = _setfsuid_spec_for_bcc()
    from correlate.probe.bcc_backend import BccCollector
    code = ("import ctypes, os, sys\n"
            "f = ctypes.CDLL('libgfapi.so.0').glfs_setfsuid\n"
            "sys.stdin.readline()\n"
            f"os.sched_setaffinity(0, {{{cpus[-1]}}}); f(1)\n"
            f"os.sched_setaffinity(0, {{{cpus[0]}}}); f(2)\n"
            "print('done', flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    collector = BccCollector([resolve(spec, child.pid)], pid=child.pid)
    collector.start()
    try:
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        child.wait(30)
        batch = collector.poll(100)   # one batch: both buffers read in one go
    finally:
        batch += collector.stop()
    uids = [e["args"]["uid"] for e in batch if e["kind"] == "probe.call"]
    assert uids == [1, 2]
    assert [e["time_ns"] for e in batch] == sorted(e["time_ns"] for e in batch)


SLEEPER = """
import ctypes, sys
libc = ctypes.CDLL("libc.so.6")
class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
print("ready", flush=True)
for line in sys.stdin:
    ns = int(line)      # a negative one asks for tv_nsec out of range: EINVAL at once
    req = Timespec(0, 2_000_000_000) if ns < 0 else Timespec(ns // 1_000_000_000, ns % 1_000_000_000)
    print(libc.nanosleep(ctypes.byref(req), None), flush=True)
"""


def test_bcc_slow_emit_sends_only_slow_or_failed_calls_and_slow_ones_while_they_run():
    """emit="slow" on libc's nanosleep in a child: 1 ms sleeps send nothing, a failed one
    (EINVAL) sends its call and return, a 1 s sleep sends its call while it still sleeps
    (about slow_ns after it began, from the kept record) and, at its return, only the return."""
    skip_unless_bcc()
    from correlate.probe.bcc_backend import BccCollector
    slow_ns = 150_000_000
    spec = ProbeSpec("test.nanosleep", "test", "libc.so.6", "nanosleep", (Arg("req", 1, "ptr"),),
                     retprobe=True, emit="slow", slow_ns=slow_ns)
    child = subprocess.Popen([sys.executable, "-c", SLEEPER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    collector = BccCollector([resolve(spec, child.pid)], pid=child.pid)
    collector.start()

    def sleep(ns: int) -> str:
        child.stdin.write(f"{ns}\n")
        child.stdin.flush()
        return child.stdout.readline().strip()

    events, early = [], []
    try:
        for _ in range(5):
            assert sleep(1_000_000) == "0"
        events += collector.poll(100)
        assert events == [], events                      # fast and successful: nothing sent
        assert sleep(-1) == "-1"
        events += _poll_until(collector, lambda e: e["kind"] == "probe.return", 5)
        failed = [e for e in events if e["kind"] == "probe.return"]
        assert len(failed) == 1 and failed[0]["retval"] == -1
        assert failed[0].get("errno_name", "EINVAL") == "EINVAL"
        assert [e["kind"] for e in events] == ["probe.call", "probe.return"]
        events.clear()
        child.stdin.write("1000000000\n")                # 1 s: longer than the reorder window
        child.stdin.flush()
        sent = time.monotonic()
        early = _poll_until(collector, lambda e: e["kind"] == "probe.call", 0.8)
        seen_after = time.monotonic() - sent
        assert child.stdout.readline().strip() == "0"
        events += _poll_until(collector, lambda e: e["kind"] == "probe.return", 5)
        events += collector.poll(100)
    finally:
        events += collector.stop()
        child.stdin.close()
        child.wait(10)
    assert [e["kind"] for e in early] == ["probe.call"], early
    assert seen_after < 0.6                              # slow_ns + a scan, not the 1 s sleep
    ret = [e for e in events if e["kind"] == "probe.return"]
    assert [e["kind"] for e in events] == ["probe.return"], events   # the call's copy dropped
    assert ret[0]["duration_ns"] >= 1_000_000_000
    assert ret[0]["time_ns"] - early[0]["time_ns"] == ret[0]["duration_ns"]


def _poll_until(collector, pred, timeout: float) -> list[dict]:
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(pred(e) for e in events):
        events += collector.poll(20)
    return events


NESTED_SRC = r"""
#include <time.h>
__attribute__((noinline)) int inner(int x) { return x < 0 ? -1 : x; }
/* sleeps for ts[0]: a slow call with a string and a struct to read while it runs */
int hold(const char *path, const struct timespec ts[2]) { return nanosleep(&ts[0], 0) + (path ? 0 : 1); }
int outer(int x) { return inner(x); }
/* a wrapper that tail-jumps to inner: no return address of its own on inner's stack */
__asm__(".globl outer_tail\n.type outer_tail, @function\nouter_tail:\n"
        "\tjmp inner@PLT\n.size outer_tail, .-outer_tail\n");
"""

NESTED_CHILD = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
class TS(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
print("ready", flush=True)
for line in sys.stdin:
    name, arg = line.split()
    if name == "hold":   # hold(path, {ms, (5 s, 6 ns)})
        ms = int(arg)
        print(lib.hold(b"/held/path", (TS * 2)(TS(ms // 1000, ms % 1000 * 1000000), TS(5, 6))), flush=True)
    else:
        print(getattr(lib, name)(int(arg)), flush=True)
"""


def _nested_library(tmp_path):
    """libnest.so built from NESTED_SRC, or a skip saying what is missing for bcc and gcc."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    skip_unless_bcc()
    src, lib = tmp_path / "nest.c", tmp_path / "libnest.so"
    src.write_text(NESTED_SRC)
    # outer must call inner (a tail jump would leave no return address inside outer)
    subprocess.run(["gcc", "-O1", "-fno-optimize-sibling-calls", "-shared", "-fPIC", "-o", str(lib),
                    str(src)], check=True)
    return lib


@pytest.mark.parametrize("keep_in", ["task", "hash"])
def test_bcc_calls_emit_and_a_wrapper_seen_in_the_function_it_calls(tmp_path, keep_in):
    """emit="calls" sends every call and only failed returns. A wrapper whose spec names its
    implementation (glfs_utimens -> glfs_setattr) has no trap of its own: the implementing
    probe names the calls that come from it, and sends direct calls under its own name. A
    wrapper that tail-jumps is probed itself. On a library built here: outer(x) calls
    inner(x), outer_tail jumps to it. Both stores of the calls waiting for their return."""
    lib = _nested_library(tmp_path)
    from correlate.probe.bcc_backend import BccCollector
    x = (Arg("x", 1, "int"),)
    specs = [ProbeSpec("t.outer", "t", str(lib), "outer", x, retprobe=True, emit="calls",
                       implemented_by="inner"),
             ProbeSpec("t.inner", "t", str(lib), "inner", x, retprobe=True, emit="calls"),
             ProbeSpec("t.outer_tail", "t", str(lib), "outer_tail", x, retprobe=True, emit="calls",
                       implemented_by="inner")]
    child = subprocess.Popen([sys.executable, "-c", NESTED_CHILD, str(lib)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    collector = BccCollector([resolve(s, child.pid) for s in specs], pid=child.pid, keep_in=keep_in)
    assert list(collector.folded) == [0] and collector.folded[0].inner == 1
    collector.start()
    assert collector.kept_in == keep_in and collector.trap_addresses == 2
    calls = (("inner", 5), ("outer", 6), ("outer", -7), ("inner", -8), ("outer_tail", 9))
    seen = call_and_collect(child, collector, [(f"{name} {arg}", arg if arg >= 0 else -1)
                                               for name, arg in calls], want=8, pause=0.05)
    got = [(e["kind"].split(".")[1], e["function"], e.get("via"), e.get("args", {}).get("x", e.get("retval")))
           for e in seen]
    assert got == [("call", "inner", None, 5),                    # direct: no success return
                   ("call", "outer", "inner", 6),                 # one trap, in inner
                   ("call", "outer", "inner", -7), ("return", "outer", "inner", -1),
                   ("call", "inner", None, -8), ("return", "inner", None, -1),
                   ("call", "outer_tail", None, 9), ("call", "inner", None, 9)], got
    assert {e["probe"] for e in seen if e["function"] == "outer"} == {"t.outer"}


def test_bcc_a_slow_probe_leaves_failures_to_the_failure_probe_on_the_same_function(tmp_path):
    """`--probe all` puts app-latency's emit="slow" probe and gfapi's emit="failures" probe on
    the same functions: a fast failed call is sent once, by the failure probe; alone, the
    slow probe sends it (a failure is never hidden by being fast)."""
    lib = _nested_library(tmp_path)
    from correlate.probe.bcc_backend import BccCollector
    failures = ProbeSpec("t.fail", "t", str(lib), "inner", (Arg("x", 1, "int"),), retprobe=True,
                         emit="failures")
    slow = ProbeSpec("t.slow", "t", str(lib), "inner", (Arg("x", 1, "int"),), retprobe=True,
                     emit="slow", slow_ns=10**9)
    child = subprocess.Popen([sys.executable, "-c", NESTED_CHILD, str(lib)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    got = {}
    try:
        for specs in ([failures, slow], [slow]):
            collector = BccCollector([resolve(s, child.pid) for s in specs], pid=child.pid)
            collector.start()
            seen = []
            try:
                child.stdin.write("inner -3\n")
                child.stdin.flush()
                assert int(child.stdout.readline()) == -1
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not any(e["kind"] == "probe.return" for e in seen):
                    seen += collector.poll(50)
                seen += collector.poll(200)
            finally:
                seen += collector.stop()
            got[len(specs)] = sorted((e["probe"], e["kind"]) for e in seen)
    finally:
        child.stdin.close()
        child.wait(10)
    assert got[2] == [("t.fail", "probe.call"), ("t.fail", "probe.return")], got
    assert got[1] == [("t.slow", "probe.call"), ("t.slow", "probe.return")], got


def test_bcc_falls_back_to_the_hash_where_the_kernel_refuses_task_storage(tmp_path, monkeypatch):
    """A kernel whose uprobe programs cannot use task storage refuses that program: the
    collector loads the hash variant instead and works. The refusal is made here by a
    program that does not compile; the probe must still report a failed call."""
    lib = _nested_library(tmp_path)
    from correlate.probe import bcc_backend
    real = bcc_backend.program_text
    tried = []

    def refused_in_task(probes, pid=None, keep_in="task", folded=None, plan=None):
        tried.append(keep_in)
        text = real(probes, pid, keep_in, folded, plan)
        return text + ("\n#error task storage refused\n" if keep_in == "task" else "")

    monkeypatch.setattr(bcc_backend, "program_text", refused_in_task)

    def check(collector):
        assert tried == ["task", "hash"] and collector.kept_in == "hash"

    seen = _one_failed_call(lib, check)
    assert [(e["kind"], e.get("retval")) for e in seen] == [("probe.call", None), ("probe.return", -1)], seen


def _one_failed_call(lib, check) -> list[dict]:
    """Start a failures probe on inner() of `lib` in a child, `check(collector)` once it is
    started, and return what a call of inner(-3) sent."""
    from correlate.probe import bcc_backend
    spec = ProbeSpec("t.fail", "t", str(lib), "inner", (Arg("x", 1, "int"),), retprobe=True,
                     emit="failures")
    child = subprocess.Popen([sys.executable, "-c", NESTED_CHILD, str(lib)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    collector = bcc_backend.BccCollector([resolve(spec, child.pid)], pid=child.pid)
    seen = []
    try:
        collector.start()
        check(collector)
        child.stdin.write("inner -3\n")
        child.stdin.flush()
        assert int(child.stdout.readline()) == -1
        seen += _poll_until(collector, lambda e: e["kind"] == "probe.return", 5)
    finally:
        seen += collector.stop()
        child.stdin.close()
        child.wait(10)
    assert collector._links == []
    return seen


@pytest.mark.parametrize("how", ["links", "perf", "links refused"])
def test_bcc_attaches_through_links_or_perf_events_and_falls_back(tmp_path, monkeypatch, how):
    """uprobe_multi links by default; perf-event uprobes when CORRELATE_UPROBE_LINKS=0 asks for
    them, or when the kernel refuses a link (made here by refusing every link): then the
    program is compiled again for perf events, says why, and a failed call is still reported
    with its return."""
    lib = _nested_library(tmp_path)
    from correlate.probe import uprobe_links
    if how == "perf":
        monkeypatch.setenv("CORRELATE_UPROBE_LINKS", "0")
    else:
        monkeypatch.delenv("CORRELATE_UPROBE_LINKS", raising=False)
    if how == "links refused":
        def refuse(prog_fd, path, vaddr, *how):
            raise ProbeError(f"refused at {vaddr:#x} (test)")
        monkeypatch.setattr(uprobe_links, "link_uprobe", refuse)

    def check(collector):
        assert collector.attach_with == ("links" if how == "links" else "perf")
        assert ("(test)" in collector.links_refused) == (how == "links refused")
        assert bool(collector._links) == (how == "links")
        assert bool(collector.bpf.uprobe_fds) == (how != "links")

    seen = _one_failed_call(lib, check)
    assert [(e["kind"], e.get("args", {}).get("x"), e.get("retval")) for e in seen] == \
        [("probe.call", -3, None), ("probe.return", None, -1)], seen


@pytest.mark.parametrize("keep_in,for_pid,refused", [("task", True, False), ("task", False, False),
                                                     ("hash", True, False), (None, True, True)])
def test_bcc_a_slow_call_is_sent_while_it_runs_with_its_memory_read_then(tmp_path, monkeypatch,
                                                                        keep_in, for_pid, refused):
    """emit="slow" keeps only a call's registers; the collector sends a call that has run
    slow_ns already while it still runs, reading its string and struct from the process
    (proc_memory.py): the same values the program reads at the return. The calls in
    progress are listed by the program's task iterator (for one process with --pid, else
    every thread of the machine) or, without task storage, from the hash; a kernel that
    refuses the iterator gets the hash."""
    lib = _nested_library(tmp_path)
    from correlate.probe import bcc_backend
    from correlate.probe.bcc_backend import BccCollector
    if refused:
        def refuse(bpf, pid):
            raise ProbeError("the kernel refused the task iterator: (test)")
        monkeypatch.setattr(bcc_backend, "_iterator_link", refuse)
    spec = ProbeSpec("t.hold", "t", str(lib), "hold", (Arg("path", 1, "str"), Arg("ts", 2, "timespec2")),
                     retprobe=True, emit="slow", slow_ns=150_000_000)
    child = subprocess.Popen([sys.executable, "-c", NESTED_CHILD, str(lib)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    collector = BccCollector([resolve(spec, child.pid)], pid=child.pid if for_pid else None,
                             keep_in=keep_in)
    collector.start()
    assert collector.kept_in == (keep_in or "hash")
    early, events = [], []
    try:
        for ms in (1, 2, 3):
            child.stdin.write(f"hold {ms}\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "0"
        events += collector.poll(100)
        assert events == []                               # fast: nothing sent
        child.stdin.write("hold 1000\n")
        child.stdin.flush()
        early = _poll_until(collector, lambda e: e["kind"] == "probe.call", 0.8)
        assert child.stdout.readline().strip() == "0"
        events += _poll_until(collector, lambda e: e["kind"] == "probe.return", 5)
    finally:
        events += collector.stop()
        child.stdin.close()
        child.wait(10)
    call, = early
    assert call["args"] == {"path": "/held/path", "atime": 1, "atime_nsec": 0, "mtime": 5,
                            "mtime_nsec": 6}, call
    assert call["pid"] == child.pid and call["comm"] and "unreadable" not in call
    assert [e["kind"] for e in events] == ["probe.return"], events   # the call's copy dropped
    assert events[0]["time_ns"] - call["time_ns"] == events[0]["duration_ns"] >= 1_000_000_000
