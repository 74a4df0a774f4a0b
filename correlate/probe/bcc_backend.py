"""The bcc collector: uprobes/uretprobes from the catalog, events as contract dicts.

bcc is imported only inside BccCollector.start(), so importing this module is cheap and works
on machines without bcc. bcc compiles and loads the program; it is attached through
uprobe_multi links where the kernel gives them (uprobe_links.py), else through bcc's
perf-event uprobes.

Probes with emit="slow" send a call only once it is known to be slow, at its return. That is
as late as the call was long, and a detector that ties RPCs to the call in progress (app-
latency) needs the call first. So each poll also looks at the calls in progress, kept until
their return in each thread's task storage (listed by the program's task iterator) or, on a
kernel without it, in a hash (listed whole), and sends the call of every slow probe that has
run for slow_ns already, at its own time: at most slow_ns plus a scan interval late, inside
the merge's reorder window. A call keeps only its registers (copying strings at every call of a hot
function cost more than the rest of the program); the call's strings and structs are read
from the running process then (proc_memory.py). The copy the return sends later is dropped
(the same tid, probe and entry time).
"""
from __future__ import annotations

import ctypes
import os
import socket
import time
from collections import OrderedDict

from ..events import make_event
from .bcc_program import KEEP_IN, attach_points, program_text, trap_plan
from .bcc_records import (F_FD_PATH, F_STR, F_STR_FAULT, F_STRUCT, F_STRUCT_FAULT, KIND_CALL,
                          EntryRecord, EventRecord, RunningRecord, record_to_event)
from .catalog import STRUCT_KINDS, WORD_KINDS
from .clock import ClockMap
from .errors import BccMissing, KernelHeadersMissing, NotRoot, ProbeError, kernel_headers_dir
from .proc_memory import ProcessMemory, thread_name
from .resolve import ResolvedProbe
from .uprobe_links import LinksRefused, attach_links, close_links
from .wrappers import folds

PERF_PAGES = 64      # per CPU; a record is 456 bytes, so ~600 events of slack per CPU
WAKEUP_EVENTS = 16   # events per reader wakeup; poll() consumes the remainder each tick
SCAN_EVERY_NS = 50_000_000   # emit="slow": how often the calls in progress are looked at
SENT_KEYS = 8192     # slow calls sent (tid, probe, entry time) remembered for the return's copy
# How programs are attached: uprobe_multi links where the kernel gives them (6.6+), else perf
# events. CORRELATE_UPROBE_LINKS=0 in the environment asks for perf events.
ATTACH_WITH = ("links", "perf")


def attach_kinds() -> tuple[str, ...]:
    """The ways to attach to try, in order (ATTACH_WITH, or perf events alone when the
    environment says CORRELATE_UPROBE_LINKS=0)."""
    return ("perf",) if os.environ.get("CORRELATE_UPROBE_LINKS", "") == "0" else ATTACH_WITH


def check_bcc_prerequisites() -> None:
    """Raise the ProbeError that says what is missing for bcc, or return."""
    if os.geteuid() != 0:
        raise NotRoot()
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc)
    except ImportError as exc:
        raise BccMissing(str(exc)) from None
    if not hasattr(bcc, "BPF"):
        raise BccMissing(f"the module at {getattr(bcc, '__file__', '?')} is not iovisor bcc")
    headers = kernel_headers_dir()
    if not os.path.isdir(headers):
        raise KernelHeadersMissing(headers)


class BccCollector:
    """Attach, poll, stop. One instance per run; poll() from one thread at a time."""

    name = "bcc"

    def __init__(self, probes: list[ResolvedProbe], pid: int | None = None, source: str = "bcc",
                 perf_pages: int = PERF_PAGES, keep_in: str | None = None):
        self.probes = probes
        self.keep_in = keep_in      # "task" or "hash" (program_text); None: task, or hash where task fails
        self.folded = folds(probes)  # wrappers seen at the function they call (wrappers.py)
        self.plan = trap_plan(probes, self.folded)  # where each attach point traps (trap_sites.py)
        self.kept_in: str | None = None   # where the loaded program keeps calls
        self.perf_pages = perf_pages
        self.pid = pid
        self.source = source
        self.host = socket.gethostname()
        self.lost = 0
        self.bpf = None
        self.clock: ClockMap | None = None
        self._pending: list[dict] = []
        self._slow = {i: rp.spec.slow_ns for i, rp in enumerate(probes) if rp.spec.emit == "slow"}
        self._sent: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        self._last_scan = 0
        self._running_link: int | None = None   # the task iterator's link (task storage)
        self.attach_with: str | None = None   # "links" or "perf" (ATTACH_WITH)
        self.links_refused = ""               # why links were not used, when they were not
        self._links: list[int] = []

    def start(self) -> None:
        check_bcc_prerequisites()
        # Calls wait for their return in task storage; a kernel whose uprobe programs cannot
        # use it refuses that program at compile or attach: then the hash.
        for keep_in in ((self.keep_in,) if self.keep_in else KEEP_IN):
            try:
                self._load(keep_in)
                break
            except ProbeError:
                if keep_in == KEEP_IN[-1] or self.keep_in:
                    raise
        # Measure the clock offset after the (slow) compile, right before events flow.
        self.clock = ClockMap()
        # The kernel wakes the reader only every WAKEUP_EVENTS events: a wakeup per event
        # preempts the probed process on a busy machine. poll() consumes the rest itself.
        self.bpf[b"events"].open_perf_buffer(self._on_event, page_cnt=self.perf_pages,
                                                 lost_cb=self._on_lost,
                                                 wakeup_events=WAKEUP_EVENTS)

    def _load(self, keep_in: str) -> None:
        for attach_with in attach_kinds():
            self._compile(keep_in)
            self.attach_with = attach_with
            try:
                self.attach()
            except LinksRefused as exc:   # attach() stopped the program: compile it again
                self.links_refused = str(exc)
                continue
            self.kept_in = keep_in
            return

    def _compile(self, keep_in: str) -> None:
        from bcc import BPF
        try:
            self.bpf = BPF(text=program_text(self.probes, self.pid, keep_in, self.folded, self.plan).encode())
        except Exception as exc:  # bcc raises plain Exception on compile errors
            raise ProbeError(f"bcc could not compile the probe program: {str(exc).splitlines()[0]} "
                             f"(kernel headers at {kernel_headers_dir()})") from None
        if keep_in == "task" and self._slow:
            try:
                self._running_link = _iterator_link(self.bpf, self.pid)
            except ProbeError:
                self.stop()   # the caller may load the hash variant instead
                raise

    @property
    def trap_addresses(self) -> int:
        """Addresses the program is attached to: fewer than the probes, since probes on one
        function share one and a wrapper seen in its implementation has none; a function
        whose call and return trap apart (trap_sites.py) has two."""
        return sum(len(sites.addresses) for sites in self.plan.values())

    def attach(self) -> None:
        """Attach every probe to the compiled program (start() does; after detach(), again).
        Always to the library file, in every process: the program itself drops other
        processes' calls when a pid was asked for (per-process uprobes cost the process at
        every context switch). With uprobe_multi links the kernel runs a program straight from
        the trap; a perf-event uprobe goes through the perf and trace layers first, which cost
        the lab workload about 2% more (bench/probe_overhead.py --attach-with)."""
        sites = self.attach_sites()
        if self.attach_with == "links":
            try:
                self._links = attach_links(self.bpf, sites)
            except LinksRefused:
                self.stop()
                raise
            return
        try:
            for name, path, address, retprobe in sites:
                attach = self.bpf.attach_uretprobe if retprobe else self.bpf.attach_uprobe
                attach(name=path.encode(), addr=address, fn_name=name.encode(), pid=-1)
        except Exception as exc:
            self.stop()
            raise ProbeError(f"attaching {name} at {address:#x} in {path} failed: {exc}") from None

    def attach_sites(self) -> list[tuple[str, str, int, bool]]:
        """(program, library, address, as a uretprobe) for every program of every attach
        point: call_N at the call's site; ret_N at the return's, a plain uprobe where the
        return value is read at a branch inside the function (trap_sites.py)."""
        sites = []
        for group in attach_points(self.probes, self.folded):
            i = group[0]
            rp, at = self.probes[i], self.plan[i]
            sites.append((f"call_{i}", rp.path, at.call, False))
            if at.ret is not None:
                sites.append((f"ret_{i}", rp.path, at.ret, not at.ret_reads_rax))
        return sites

    def detach(self) -> None:
        """Take the probes out of the processes but keep the program and its maps, so that
        attach() can put them back (elsewhere: the overhead bench moves them to a library
        copy) without recompiling."""
        if self.bpf is not None:
            detach_uprobes(self.bpf)
            close_links(self._links)

    def _on_event(self, _cpu, data, _size) -> None:
        rec = ctypes.cast(data, ctypes.POINTER(EventRecord)).contents
        if rec.probe_id >= len(self.probes):
            return
        if rec.kind == KIND_CALL and rec.probe_id in self._slow and not self._first_send(rec):
            return
        caller = self.probes[rec.caller - 1] if 0 < rec.caller <= len(self.probes) else None
        self._pending.append(record_to_event(self.probes[rec.probe_id], rec, self.clock,
                                             self.source, self.host, caller))

    def _on_lost(self, count) -> None:
        self.lost += count
        self._pending.append(make_event(time.time_ns(), "probe", "probe.lost", self.source, count=int(count),
                                        total=self.lost, host=self.host))

    def _first_send(self, rec: EventRecord) -> bool:
        """False when this slow call's record was sent already (scan or return)."""
        key = (rec.tid, rec.probe_id, rec.ts)
        if key in self._sent:
            del self._sent[key]
            return False
        self._sent[key] = None
        if len(self._sent) > SENT_KEYS:
            self._sent.popitem(last=False)
        return True

    def _scan_slow_calls(self, force: bool = False) -> None:
        """Send the calls of emit="slow" probes that have run for their slow_ns already."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # bpf_ktime_get_ns's clock
        if not self._slow or (not force and now - self._last_scan < SCAN_EVERY_NS):
            return
        self._last_scan = now
        for tid, probe_id, entry in self._running_calls():
            slow_ns = self._slow.get(probe_id)
            if slow_ns is None:
                continue
            if not entry.ts or now - entry.ts < slow_ns or (tid, probe_id, entry.ts) in self._sent:
                continue   # not slow yet, or its return's copy came first
            rec = self._running_call(probe_id, tid, entry)
            self._first_send(rec)
            self._pending.append(record_to_event(self.probes[probe_id], rec, self.clock,
                                                 self.source, self.host))

    def _running_calls(self):
        """(tid, probe id, EntryRecord with its pid) of the calls in progress: from the task
        iterator (only slow probes' calls that have run slow_ns), or the whole hash."""
        if self._running_link is None:
            for key, value in self.bpf[b"entries"].items():
                yield key.value >> 32, key.value & 0xFFFFFFFF, EntryRecord.from_buffer_copy(value)
            return
        for r in _read_iterator(self._running_link, RunningRecord):
            r.call.pid = r.pid
            yield r.tid, r.probe_id, r.call

    def _running_call(self, probe_id: int, tid: int, entry: "EntryRecord") -> EventRecord:
        """The call record the program would have built, from a running call's kept
        registers: strings and structs read from its process now (proc_memory.py), the
        path of an fd from the program's fd table."""
        rp = self.probes[probe_id]
        rec = EventRecord(ts=entry.ts, base=entry.base, pid=entry.pid, tid=tid, probe_id=probe_id,
                          kind=KIND_CALL, caller=entry.caller)
        rec.ints[:] = list(entry.ints)
        rec.comm = thread_name(entry.pid, tid).encode()[:15]
        slot = 0
        with ProcessMemory(entry.pid) as memory:
            for arg in rp.arguments:
                if arg.kind == "str":
                    text = memory.string(entry.str_ptr, tuple(arg.deref)) if entry.str_ptr else None
                    if text is not None:
                        rec.str, rec.flags = text, rec.flags | F_STR
                    elif entry.str_ptr:
                        rec.flags |= F_STR_FAULT
                elif arg.kind in STRUCT_KINDS and entry.struct_ptr:
                    words = memory.struct_words(arg.kind, entry.struct_ptr)
                    if words is None:
                        rec.flags |= F_STRUCT_FAULT
                    else:
                        rec.words[:len(words)] = words
                        rec.flags |= F_STRUCT
                elif arg.kind in WORD_KINDS:
                    if arg.kind == "fd":
                        path = self._fd_path(entry.pid, entry.ints[slot])
                        if path:
                            rec.str, rec.flags = path, rec.flags | F_STR | F_FD_PATH
                    slot += 1
        return rec

    def _fd_path(self, pid: int, fd: int) -> bytes | None:
        table = self.bpf[b"fds"]
        try:
            info = table[table.Key(pid, 0, fd)]
        except KeyError:
            return None
        return bytes(info.path).split(b"\0", 1)[0] or None

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        if self.bpf is None:
            return []
        self.clock.maybe_remeasure()
        if self._slow:   # wake up often enough to send slow calls in progress in time
            timeout_ms = min(timeout_ms, SCAN_EVERY_NS // 1_000_000)
        self.bpf.perf_buffer_poll(timeout=timeout_ms)
        self.bpf.perf_buffer_consume()   # events below the wakeup threshold: at most one tick late
        self._scan_slow_calls()
        return self._take_pending()

    def _take_pending(self) -> list[dict]:
        # Each CPU has its own perf buffer and they are read one after another, so a return on
        # CPU 1 can be read before its call on CPU 0: order the batch by time.
        out, self._pending = self._pending, []
        out.sort(key=_time_of)
        return out

    def stop(self) -> list[dict]:
        """Detach; returns the events still buffered."""
        out: list[dict] = []
        if self.bpf is not None:
            try:
                self.bpf.perf_buffer_consume()   # drain what the kernel already wrote
                self._scan_slow_calls(force=True)  # slow calls still running: sent, unreturned
            except Exception:
                pass
            out = self._take_pending()
            detach_uprobes(self.bpf)
            close_links(self._links)
            if self._running_link is not None:
                os.close(self._running_link)
                self._running_link = None
            self.bpf.cleanup()
            self.bpf = None
        return out


# bounds one listing of calls in progress (~10,000 calls); a slow call left out of it is
# still sent at its return, only later
ITER_READ_BYTES = 1 << 20


def _iterator_link(bpf, pid: int | None) -> int:
    """Load and link the program's task iterator (bpf_iter__task); with a pid, it visits
    only that process's threads (union bpf_iter_link_info's task.pid, Linux 6.1+)."""
    from bcc import BPF, lib
    lib.bcc_iter_attach.restype = ctypes.c_int
    lib.bcc_iter_attach.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    lib.bcc_iter_create.restype = ctypes.c_int
    lib.bcc_iter_create.argtypes = [ctypes.c_int]
    try:
        fn = bpf.load_func(b"bpf_iter__task", BPF.TRACING)
    except Exception as exc:   # bcc raises plain Exception when the kernel refuses it
        raise ProbeError(f"the kernel refused the task iterator: {str(exc).splitlines()[0]}") from None
    info = (ctypes.c_uint32 * 4)(0, int(pid or 0), 0, 0)   # task: tid, pid, pid_fd
    link = lib.bcc_iter_attach(fn.fd, ctypes.byref(info) if pid else None, ctypes.sizeof(info) if pid else 0)
    if link < 0:   # libbpf: -errno, or -1
        raise ProbeError(f"linking the task iterator failed: {os.strerror(-link) if link < -1 else 'refused'}")
    return link


def _read_iterator(link: int, record: type[ctypes.Structure]):
    """The records one run of the iterator writes, at most ITER_READ_BYTES of them."""
    from bcc import lib
    fd = lib.bcc_iter_create(link)
    if fd < 0:
        return
    data = bytearray()
    try:
        while len(data) < ITER_READ_BYTES:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    size = ctypes.sizeof(record)
    for at in range(0, len(data) - size + 1, size):
        yield record.from_buffer_copy(data, at)


def _time_of(event: dict) -> int:
    return event["time_ns"]


def detach_uprobes(bpf) -> None:
    """Close the uprobe perf events ourselves.

    bcc attaches through the uprobe PMU (perf_event_open) when tracefs has no uprobe_events
    file, as on this kernel, but its cleanup() then also writes to uprobe_events and raises.
    Closing the perf event fd is what detaches a PMU uprobe."""
    from bcc import lib
    for ev_name, fd in list(bpf.uprobe_fds.items()):
        lib.bpf_close_perf_event_fd(fd)
        if os.path.exists("/sys/kernel/tracing/uprobe_events") or \
                os.path.exists("/sys/kernel/debug/tracing/uprobe_events"):
            lib.bpf_detach_uprobe(ev_name)
        bpf._del_uprobe_fd(ev_name)
