"""The `fuse` probe group: every FUSE request the kernel sends to a file system daemon (the
glusterfs FUSE client) and its reply, from the tracepoints fuse:fuse_request_send and
fuse:fuse_request_end (Linux 6.12+), attached as raw tracepoints so the program reads the
request's in-header (node id, uid, gid, requesting thread) behind them. Offsets come from the
running kernel's BTF (btf.py); the program text is probes/fuse_events.c.

The kernel sends only failed requests (bar everyday answers such as a negative LOOKUP) and
requests that took `slow_ns` or more. A request still unanswered after `slow_ns` is sent by
the collector's scan of the requests in flight (`fuse.pending`), so a hung system call is
seen while it hangs. Node ids are named from the LOOKUP/CREATE/MKDIR/MKNOD replies the
program keeps in a kernel map; the collector walks that map for the requests it sends.

The requester's system call is named where the request is sent (its saved registers), and
with CORRELATE_FUSE_SYSCALLS=exit followed to its end (fuse_syscalls.py); a kernel that
refuses that part gets the group without it, said in the notes.
"""
from __future__ import annotations

import ctypes
import os
import re
import socket
import time
from collections import OrderedDict
from importlib import resources

from ..events import make_event
from ..gluster.errnos import errno_name
from .bcc_backend import detach_uprobes, check_bcc_prerequisites
from .btf import BtfError, member_offset, struct_size
from .clock import ClockMap
from .errors import ProbeError
from . import fuse_syscalls as sysc

DEFAULT_SLOW_NS = 1_000_000_000
SCAN_EVERY_NS = 200_000_000
MAX_PENDING_SCAN = 4096       # in-flight requests looked at per scan
MAX_DEPTH = 32                # path components walked up from a node
NAME_LEN = 128
ROOT_NODE = 1                 # FUSE_ROOT_ID
TRACEPOINTS = ("fuse_request_send", "fuse_request_end")
SYS_TRACEPOINTS = ("sys_enter", "sys_exit")
FORMAT = "/sys/kernel/tracing/events/fuse/fuse_request_send/format"
# include/uapi/linux/fuse.h (a stable ABI); the tracepoint's format, when readable, wins
OPCODES = {1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK",
           8: "MKNOD", 9: "MKDIR", 10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK",
           14: "OPEN", 15: "READ", 16: "WRITE", 17: "STATFS", 18: "RELEASE", 20: "FSYNC",
           21: "SETXATTR", 22: "GETXATTR", 23: "LISTXATTR", 24: "REMOVEXATTR", 25: "FLUSH",
           26: "INIT", 27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR", 30: "FSYNCDIR",
           31: "GETLK", 32: "SETLK", 33: "SETLKW", 34: "ACCESS", 35: "CREATE", 36: "INTERRUPT",
           37: "BMAP", 38: "DESTROY", 39: "IOCTL", 40: "POLL", 41: "NOTIFY_REPLY",
           42: "BATCH_FORGET", 43: "FALLOCATE", 44: "READDIRPLUS", 45: "RENAME2", 46: "LSEEK",
           47: "COPY_FILE_RANGE", 48: "SETUPMAPPING", 49: "REMOVEMAPPING", 50: "SYNCFS",
           51: "TMPFILE", 52: "STATX"}
# (define, struct, members...): what the program reads, located in the running kernel
OFFSETS = (
    ("REQ_IN_H", "fuse_req", "in", "h"), ("REQ_OUT_H", "fuse_req", "out", "h"),
    ("REQ_ARGS", "fuse_req", "args"), ("REQ_FM", "fuse_req", "fm"),
    ("FM_FC", "fuse_mount", "fc"), ("FC_DEV", "fuse_conn", "dev"),
    ("H_OPCODE", "fuse_in_header", "opcode"), ("H_UNIQUE", "fuse_in_header", "unique"),
    ("H_NODEID", "fuse_in_header", "nodeid"), ("H_UID", "fuse_in_header", "uid"),
    ("H_GID", "fuse_in_header", "gid"), ("H_PID", "fuse_in_header", "pid"),
    ("OH_ERROR", "fuse_out_header", "error"),
    ("ARGS_IN", "fuse_args", "in_args"), ("ARGS_OUT", "fuse_args", "out_args"),
    ("IN_ARG_SIZE", "fuse_in_arg", "size"), ("IN_ARG_VALUE", "fuse_in_arg", "value"),
    ("ARG_VALUE", "fuse_arg", "value"),
)



def fuse_program(name: str) -> str:
    """A FUSE program's C text with the records both programs send (probes/fuse_records.h,
    which one Python mirror reads) where it says #include "fuse_records.h"."""
    probes = resources.files("correlate.probes")
    records = probes.joinpath("fuse_records.h").read_text()
    return probes.joinpath(name).read_text().replace('#include "fuse_records.h"', records, 1)

class FuseEvent(ctypes.Structure):
    """Mirror of struct fuse_event_t in probes/fuse_events.c."""
    _fields_ = [("ts_send", ctypes.c_uint64), ("ts_end", ctypes.c_uint64),
                ("unique", ctypes.c_uint64), ("nodeid", ctypes.c_uint64),
                ("out_nodeid", ctypes.c_uint64), ("opcode", ctypes.c_uint32),
                ("error", ctypes.c_int32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("hpid", ctypes.c_uint32), ("send_tgid", ctypes.c_uint32),
                ("send_tid", ctypes.c_uint32), ("end_tid", ctypes.c_uint32),
                ("dev", ctypes.c_uint32), ("pending", ctypes.c_uint32),
                ("sys_nr", ctypes.c_uint32), ("in_syscall", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("pad2", ctypes.c_uint32), ("sys_arg0", ctypes.c_uint64),
                ("comm", ctypes.c_char * 16), ("name", ctypes.c_char * NAME_LEN)]


def kernel_defines() -> str:
    """#defines for the program: member offsets from BTF; a kernel without them is refused."""
    lines = []
    try:
        for define, struct_name, *members in OFFSETS:
            lines.append(f"#define {define} {member_offset(struct_name, *members)}")
        lines.append(f"#define IN_ARG_LEN {struct_size('fuse_in_arg')}")
    except BtfError as exc:
        raise ProbeError(f"the fuse probes need the kernel's FUSE structures in BTF: {exc}") from None
    return "\n".join(lines) + "\n"


def opcode_names(path: str = FORMAT) -> dict[int, str]:
    """Opcode names from the tracepoint's print format (the running kernel's list)."""
    names = dict(OPCODES)
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read(65536)
    except OSError:
        return names
    for num, name in re.findall(r'\{(\d+), "FUSE_([A-Z_0-9]+)"\}', text):
        names[int(num)] = name
    return names


def fuse_mounts(path: str = "/proc/self/mountinfo") -> dict[int, str]:
    """Kernel dev_t (major << 20 | minor) of each FUSE mount -> its mount point."""
    out = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 10 or " - fuse" not in line:
                    continue
                major, _, minor = fields[2].partition(":")
                if major.isdigit() and minor.isdigit():
                    out[int(major) << 20 | int(minor)] = fields[4].replace("\\040", " ")
    except OSError:
        pass
    return out


def _tgid(tid: int) -> int | None:
    try:
        with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _comm(tid: int) -> str:
    try:
        with open(f"/proc/{tid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read(64).strip()
    except OSError:
        return ""


class FuseCollector:
    """Attach the two raw tracepoints, poll, stop; events as contract dicts."""

    name = "bcc-fuse"

    def __init__(self, slow_ns: int = DEFAULT_SLOW_NS, pid: int | None = None,
                 source: str = "bcc-fuse", perf_pages: int = 64, syscalls: bool | None = None):
        if type(slow_ns) is not int or slow_ns <= 0:
            raise ProbeError("the fuse probes' threshold must be an int > 0 (nanoseconds)")
        self.slow_ns = slow_ns
        self.pid = pid
        self.source = source
        self.perf_pages = perf_pages
        self.host = socket.gethostname()
        self.lost = 0
        self.bpf = None
        self.clock: ClockMap | None = None
        self.opcodes = opcode_names()
        self.mounts: dict[int, str] = {}
        self._pending: list[dict] = []
        self._last_scan = 0
        self._reported: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        # the applications' system calls (sysc.MODES): named where each FUSE request is
        # sent by default; "exit" adds raw_syscalls for the errno the program got and the
        # path argument; "0" (or syscalls=False) neither
        mode = os.environ.get("CORRELATE_FUSE_SYSCALLS", "send") if syscalls is None else \
            ("send" if syscalls else "0")
        if mode not in sysc.MODES:
            raise ProbeError(f"CORRELATE_FUSE_SYSCALLS must be one of {', '.join(sysc.MODES)}")
        self.sysnames = sysc.syscall_table() if mode != "0" else {}
        self.sys_exit = mode == "exit" and bool(self.sysnames)
        self.syscalls_off = "" if self.sysnames else (
            "off (CORRELATE_FUSE_SYSCALLS=0)" if mode == "0" else
            "off: no system call table for this architecture")
        self.watched_at_start = 0

    def program_text(self) -> str:
        probes = resources.files("correlate.probes")
        text = fuse_program("fuse_events.c")
        defines = kernel_defines() + f"#define SLOW_NS {self.slow_ns}ULL\n"
        defines += (f"#define SYS_SEND {1 if self.sysnames else 0}\n#define SYSCALLS "
                    f"{1 if self.sys_exit else 0}\n#define FILTER_PID {self.pid or 0}\n")
        if self.sysnames:
            try:
                defines += "".join(f"#define {d} {member_offset('pt_regs', m)}\n" for d, m in sysc.REGS)
            except BtfError as exc:
                self.sysnames, self.sys_exit, self.syscalls_off = {}, False, f"off: {exc}"
                return self.program_text()
        calls = probes.joinpath("fuse_syscalls.c").read_text()
        return defines + text.replace("/* fuse_syscalls.c */", calls, 1)

    def start(self) -> None:
        check_bcc_prerequisites()
        from bcc import BPF
        try:
            self.bpf = BPF(text=self.program_text().encode())
        except Exception as exc:   # bcc raises plain Exception for compile and attach errors
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.sysnames:      # the system call part refused (bpf_task_pt_regs: 5.15+)
                self.sysnames, self.sys_exit = {}, False
                self.start()
                self.syscalls_off = f"off: the program with them did not load ({first[:200]})"
                return
            raise ProbeError(f"the fuse probes could not load: {first} (the tracepoints "
                             f"fuse:{' and fuse:'.join(TRACEPOINTS)} exist since Linux 6.12)") from None
        self.clock = ClockMap()
        self.mounts = fuse_mounts()
        self.bpf[b"events"].open_perf_buffer(self._on_event, page_cnt=self.perf_pages,
                                             lost_cb=self._on_lost)
        if self.sys_exit:
            self._start_syscalls()

    def _start_syscalls(self) -> None:
        """Which calls the kernel keeps, and the processes that have a mount open now."""
        info = self.bpf[b"sysinfo"]
        for nr, flags in sysc.sysinfo_flags(self.sysnames).items():
            info[info.Key(nr)] = info.Leaf(flags)
        watched = self.bpf[b"watched"]
        pids = [self.pid] if self.pid else sysc.processes_using(self.mounts.values())
        for pid in pids:
            word = watched.Key(pid >> 6)
            watched[word] = watched.Leaf(watched[word].value | 1 << (pid & 63))
        self.watched_at_start = len(pids)
        self.bpf[b"sysevents"].open_perf_buffer(self._on_sys_event, page_cnt=self.perf_pages,
                                                lost_cb=self._on_lost)

    def _on_sys_event(self, _cpu, data, _size) -> None:
        rec = ctypes.cast(data, ctypes.POINTER(sysc.SysEvent)).contents
        if rec.dev and rec.dev not in self.mounts:
            self.mounts = fuse_mounts()
        self._pending.append(sysc.event_of(rec, self.sysnames, self.opcodes, self.clock,
                                           self.source, self.host, self.mounts))

    @property
    def attached(self) -> int:
        if self.bpf is None:
            return 0
        return len(TRACEPOINTS) + (len(SYS_TRACEPOINTS) if self.sys_exit else 0)

    def _on_lost(self, count) -> None:
        self.lost += count
        self._pending.append(make_event(time.time_ns(), "probe", "probe.lost", self.source,
                                        count=int(count), total=self.lost, host=self.host))

    def _on_event(self, _cpu, data, _size) -> None:
        rec = ctypes.cast(data, ctypes.POINTER(FuseEvent)).contents
        ev = self.event_of(rec)
        if ev is not None:
            self._pending.append(ev)

    def event_of(self, rec: FuseEvent) -> dict | None:
        """The contract event for a record (None when --pid excludes it)."""
        tid = int(rec.hpid)
        # a synchronous request is sent from the requester's thread: its comm and process
        pid = int(rec.send_tgid) if rec.send_tid and rec.send_tid == tid else (_tgid(tid) if tid else None)
        if self.pid is not None and pid != self.pid:
            return None
        comm = rec.comm.decode("utf-8", "replace") if rec.send_tid == tid and tid else _comm(tid)
        opcode = self.opcodes.get(rec.opcode, f"OP{rec.opcode}")
        fields = dict(opcode=opcode, opcode_num=int(rec.opcode), unique=int(rec.unique),
                      nodeid=int(rec.nodeid), connection=int(rec.dev), uid=int(rec.uid),
                      gid=int(rec.gid), tid=tid, pid=pid, comm=comm, host=self.host)
        mount = self.mounts.get(rec.dev)
        if mount is None:   # mounted after the probes started
            self.mounts = fuse_mounts()
            mount = self.mounts.get(rec.dev)
        if mount:
            fields["mount"] = mount
        name = rec.name.decode("utf-8", "replace") if rec.name else ""
        path = self.path_of(int(rec.nodeid), mount)
        if name:
            fields["name"] = name
            if path:
                path = path.rstrip("/") + "/" + name
        if path:
            fields["path"] = path
        if rec.pending:
            self._add_syscall(fields, rec, pid)
            now = self.clock.to_realtime(rec.ts_end)
            return make_event(now, "probe", "fuse.pending", self.source,
                              call_time_ns=self.clock.to_realtime(rec.ts_send),
                              waited_ns=int(rec.ts_end - rec.ts_send), **fields)
        if rec.out_nodeid:
            fields["out_nodeid"] = int(rec.out_nodeid)
        fields.update(error=int(rec.error), reply_tid=int(rec.end_tid))
        self._add_syscall(fields, rec, pid)
        if rec.error < 0:
            fields.update(errno=-int(rec.error), errno_name=errno_name(-int(rec.error)))
        if rec.ts_send:
            fields.update(call_time_ns=self.clock.to_realtime(rec.ts_send),
                          latency_ns=int(rec.ts_end - rec.ts_send))
        return make_event(self.clock.to_realtime(rec.ts_end), "probe", "fuse.reply",
                          self.source, **fields)

    def _add_syscall(self, fields: dict, rec, pid: int | None) -> None:
        """The requester's system call the request was sent from, and its fd."""
        if rec.in_syscall:
            fields["in_syscall"] = True      # its fuse.syscall follows when the call ends
        name = self.sysnames.get(int(rec.sys_nr))
        if name is None:
            return
        fields["syscall"] = name
        if name in sysc.FD0:
            fd = ctypes.c_int32(rec.sys_arg0 & 0xFFFFFFFF).value
            fields["fd"] = fd
            if "path" not in fields and pid:
                where = sysc.fd_path(pid, fd)
                if where:
                    fields["path"] = where

    def path_of(self, nodeid: int, mount: str | None) -> str | None:
        """The node's path from the names the program learned, walked up to the root."""
        if self.bpf is None:
            return None
        table = self.bpf[b"names"]
        parts, node = [], nodeid
        for _ in range(MAX_DEPTH):
            if node == ROOT_NODE:
                rel = "/" + "/".join(reversed(parts))
                if not mount:
                    return rel
                return mount if rel == "/" else mount.rstrip("/") + rel
            try:
                entry = table[table.Key(node)]
            except KeyError:
                return None
            parts.append(bytes(entry.name).split(b"\0", 1)[0].decode("utf-8", "replace"))
            node = int(entry.parent)
        return None

    def _scan_pending(self, force: bool = False) -> None:
        """Send each request unanswered for slow_ns, once, while it still waits."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # bpf_ktime_get_ns's clock
        if not force and now - self._last_scan < SCAN_EVERY_NS:
            return
        self._last_scan = now
        table = self.bpf[b"inflight"]
        for n, (key, value) in enumerate(table.items()):
            if n >= MAX_PENDING_SCAN:
                break
            mark = (key.dev, key.unique, value.ts)
            if not value.ts or now - value.ts < self.slow_ns or mark in self._reported:
                continue
            # remembered here: writing the flag into the map could re-create an entry the
            # reply just deleted
            self._reported[mark] = None
            if len(self._reported) > MAX_PENDING_SCAN:
                self._reported.popitem(last=False)
            rec = FuseEvent(ts_send=value.ts, ts_end=now, unique=key.unique, nodeid=value.nodeid,
                            opcode=value.opcode, hpid=value.hpid, send_tgid=value.tgid,
                            send_tid=value.tid, dev=key.dev, pending=1, comm=bytes(value.comm),
                            sys_nr=getattr(value, "sys_nr", sysc.NR_UNKNOWN),
                            sys_arg0=getattr(value, "sys_arg0", 0))
            ev = self.event_of(rec)
            if ev is not None:
                self._pending.append(ev)

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        if self.bpf is None:
            return []
        self.clock.maybe_remeasure()
        self.bpf.perf_buffer_poll(timeout=min(timeout_ms, SCAN_EVERY_NS // 1_000_000))
        self._scan_pending()
        out, self._pending = self._pending, []
        out.sort(key=lambda e: e["time_ns"])
        return out

    def stop(self) -> list[dict]:
        out: list[dict] = []
        if self.bpf is not None:
            try:
                self.bpf.perf_buffer_consume()
                self._scan_pending(force=True)
            except Exception:
                pass
            out, self._pending = self._pending, []
            out.sort(key=lambda e: e["time_ns"])
            detach_uprobes(self.bpf)    # the fallback's; bcc's cleanup needs tracefs for them
            self.bpf.cleanup()
            self.bpf = None
        return out


def slow_ns_from(options: dict | None) -> int:
    """The threshold the probes filter on: the fuse-errors detector's `slow_s`."""
    value = ((options or {}).get("fuse-errors") or {}).get("slow_s")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return max(1, int(value * 1e9))
    return DEFAULT_SLOW_NS
