"""`--probe tls`: the plaintext of Gluster's TLS connections, decoded as a capture would be.

probes/tls_plaintext.c copies what SSL_read returned and what SSL_write sent in libssl (per
call at most MAX_COPY bytes; the rest is a gap the RPC framer is told about, counted in
`truncated_bytes`). Each SSL* is tied to its socket (SSL_set_fd, or the thread's read/write
system call inside the SSL_* call), the socket to its TCP 4-tuple through /proc, and each
direction's bytes go, in time order, into the same RpcSink a capture feeds: rpc.call and
rpc.reply events with `source` "tls". When both ends of a connection are probed (client and
brick on one host), the first process seen moving its bytes speaks for it: the two copies are
the same bytes.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
from bisect import bisect_right
from collections import OrderedDict
from operator import itemgetter

from ..diagnostics import Diagnostics
from ..wire.model import Conn, endpoint
from ..wire.rpc import RpcSink
from .bcc_backend import detach_uprobes, check_bcc_prerequisites
from .btf import BtfError, member_offsets
from .clock import ClockMap
from . import openssl_errors
from .errors import ProbeError
from .proc_sockets import tcp_tuple
from .resolve import find_library
from .ringbuf import RingReader

MAX_COPY = 16384
HOLD_NS = 200_000_000        # events wait this long to be put in time order across CPUs
# 16 MiB: about 1,000 full-size records, 2-3 s of a busy client's small-file traffic, for a
# reader that waits its turn for a CPU (READER_POLICY)
RINGBUF_PAGES = 4096
THREAD_PREFIX = "glfs_"      # Gluster's threads (glfs_epoll000, ...): their processes are followed
LIBSSL = "libssl.so.3"
# function, entry program, argument registers it reads
FUNCTIONS = (("SSL_read", "read_enter", {1, 2}), ("SSL_write", "write_enter", {1, 2}),
             ("SSL_read_ex", "read_ex_enter", {1, 2, 4}),
             ("SSL_write_ex", "write_ex_enter", {1, 2, 4}))
HANDSHAKE = ("SSL_connect", "SSL_accept", "SSL_do_handshake")   # where a process is first seen
# a failed handshake's reason: the first error OpenSSL raised in it (probe, program, return?)
LIBCRYPTO = "libcrypto.so.3"
ERROR_PROBES = (("ERR_set_debug", "err_debug", False), ("ERR_set_error", "err_set", False),
                ("ERR_vset_error", "err_set", False),
                ("X509_STORE_CTX_get_error", "verify_result", True))
MAX_STREAMS = 16384
KIND_DATA, KIND_SETFD, KIND_HANDSHAKE = 0, 1, 2
# struct hs_t: lib reason verify ret family port(network order) addr func, then this end's
# family port addr (read from the socket)
_HS = struct.Struct("<IIiiH2s16s48sH2s16s")
# The kernel's socket structures the program reads a failed handshake's ends from (BTF):
# define, struct, member
SOCK_OFFSETS = (("OFF_TASK_FILES", "task_struct", "files"), ("OFF_FILES_FDT", "files_struct", "fdt"),
                ("OFF_FDT_MAX_FDS", "fdtable", "max_fds"), ("OFF_FDT_FD", "fdtable", "fd"),
                ("OFF_FILE_PRIVATE", "file", "private_data"), ("OFF_SOCKET_FILE", "socket", "file"),
                ("OFF_SOCKET_SK", "socket", "sk"), ("OFF_SKC_FAMILY", "sock_common", "skc_family"),
                ("OFF_SKC_DADDR", "sock_common", "skc_daddr"),
                ("OFF_SKC_RCV_SADDR", "sock_common", "skc_rcv_saddr"),
                ("OFF_SKC_V6_DADDR", "sock_common", "skc_v6_daddr"),
                ("OFF_SKC_V6_RCV_SADDR", "sock_common", "skc_v6_rcv_saddr"),
                ("OFF_SKC_DPORT", "sock_common", "skc_dport"), ("OFF_SKC_NUM", "sock_common", "skc_num"))
_TIME = itemgetter(0)
_EVENT_TIME = itemgetter("time_ns")
DIR_READ, DIR_WRITE = 0, 1


# struct tls_event_t up to data[]: ts ssl pid tid fd kind dir len copied lost_before comm
_HEADER = struct.Struct("<QQIIiIIIII16s")


def exported_symbols(path: str) -> dict[str, int]:
    from .elfsym import SHT_DYNSYM, load_elf
    return {sym.name: sym.value for sym in load_elf(path).symbols(SHT_DYNSYM)
            if sym.default and sym.value}


def _sites(path: str, address: int, args: set[int]):
    """Where to trap: OpenSSL 3's SSL_read/SSL_write start with `sub $N,%rsp`, which the
    kernel single-steps (over ten times an emulated trap); trap_sites.py moves the call to an
    emulated branch with the arguments still in registers and the return to the stack
    protector's branch with the value in %rax. This program reads registers only, so a site
    that needs a stack copy of an argument stays at the entry."""
    from .trap_sites import at_entry, trap_sites
    sites = trap_sites(path, address, args, True)
    return at_entry(address, True) if sites.stack_args else sites


def filter_cflags(thread_prefix: str | None, pid: int | None) -> list[str]:
    """Which processes a TLS program reads: by thread name prefix, and/or one pid."""
    out = [f'-DTHREAD_FILTER="{thread_prefix}"'] if thread_prefix else []
    return out + ([f"-DPID_FILTER={int(pid)}"] if pid else [])


def program_path() -> str:
    from importlib.resources import files
    return str(files("correlate.probes").joinpath("tls_plaintext.c"))


class TlsCollector:
    """Attach, poll, stop, as the other collectors; poll() returns wire events."""

    name = "tls"

    def __init__(self, pid: int | None = None, source: str = "tls", library: str = LIBSSL,
                 thread_prefix: str | None = THREAD_PREFIX, details=True,
                 details_later: bool = False):
        self.pid = pid
        self.source = source
        self.library = library
        self.thread_prefix = thread_prefix
        self.host = socket.gethostname()
        self.diag = Diagnostics(source)
        # details: as for a capture, only what the detectors read (the decoding shares the
        # probed host's CPUs; full decoding of every call cost the workload more than the probes)
        self.sink = RpcSink(source, self.diag, details=details, details_later=details_later)
        self.bpf = None
        self.clock: ClockMap | None = None
        self.path: str | None = None
        self._held: list[tuple[int, int, bool, int, bytes, int]] = []
        self._newest = 0
        self._conns: dict[tuple[str, str], tuple[Conn, int]] = {}   # 4-tuple -> (conn, owner pid)
        # (pid, SSL*) -> (client, server, this process is the client?)
        self._streams: OrderedDict[tuple[int, int], tuple[str, str, bool] | None] = OrderedDict()
        self._fds: dict[tuple[int, int], int] = {}                  # (pid, ssl) -> fd
        self.records = self.bytes = self.truncated_bytes = self.unattributed_bytes = 0
        self.lost_bytes = 0
        self.lost = 0
        self.ring = None
        self._niced = False
        self._errors: list[dict] = []       # tls.error events, released in time order

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "TlsCollector":
        check_bcc_prerequisites()
        from bcc import BPF
        self.path = find_library(self.library, self.pid)
        cflags = [f"-DRINGBUF_PAGES={RINGBUF_PAGES}", *filter_cflags(self.thread_prefix, self.pid)]
        cflags += self._sock_offsets()
        cflags += self._syscall_route()
        with open(program_path()) as f:
            text = f.read()
        try:
            self.bpf = BPF(text=text.encode(), cflags=cflags)
        except Exception as exc:
            raise ProbeError(f"the tls probe program did not load: {exc}") from None
        attached = 0
        symbols = exported_symbols(self.path)
        path = self.path.encode()
        self.sites = {}
        for function, entry, args in FUNCTIONS:
            if function not in symbols:
                continue       # the _ex forms exist from OpenSSL 1.1.1 on
            sites = _sites(self.path, symbols[function], args)
            self.sites[function] = sites
            # Always on the file, every process: the program filters by pid (a per-process
            # uprobe costs the process at each context switch, docs/probes.md).
            self.bpf.attach_uprobe(name=path, addr=sites.call, fn_name=entry.encode(), pid=-1)
            attach = self.bpf.attach_uprobe if sites.ret_reads_rax else self.bpf.attach_uretprobe
            attach(name=path, addr=sites.ret, fn_name=b"any_return", pid=-1)
            attached += 1
        for function, program in (("SSL_set_fd", "set_fd_enter"), ("SSL_connect", "connect_enter"),
                                  ("SSL_accept", "accept_enter"),
                                  ("SSL_do_handshake", "handshake_enter")):
            if function in symbols:
                self.bpf.attach_uprobe(name=path, addr=symbols[function],
                                       fn_name=program.encode(), pid=-1)
        for function in ("SSL_connect", "SSL_accept"):     # rare: a uretprobe's cost is no matter
            if function in symbols:
                self.bpf.attach_uretprobe(name=path, addr=symbols[function],
                                          fn_name=b"hs_return", pid=-1)
        self._attach_errors()
        if not attached:
            raise ProbeError(f"no SSL_read/SSL_write in {self.path}")
        self.clock = ClockMap()
        self.ring = RingReader(self.bpf[b"events"].map_fd, RINGBUF_PAGES * 4096)
        return self

    def _sock_offsets(self) -> list[str]:
        """The kernel's socket layout for a failed handshake's ends; without BTF, the ends
        come from connect() and /proc as before."""
        try:
            offsets = member_offsets([(struct_name, member) for _, struct_name, member in SOCK_OFFSETS])
        except BtfError as exc:
            self.diag.skip(f"a failed handshake's ends from /proc only ({exc})")
            return []
        return ["-DSOCK_OFFSETS"] + [f"-D{define}={offset}" for (define, _, _), offset
                                     in zip(SOCK_OFFSETS, offsets)]

    def _syscall_route(self) -> list[str]:
        """The raw sys_enter tracepoint's registers (x86_64's first two arguments), from BTF;
        without them, or with CORRELATE_TLS_SYSCALL_ROUTE=0, a socket is known from
        SSL_set_fd alone."""
        if os.environ.get("CORRELATE_TLS_SYSCALL_ROUTE", "1") == "0":
            return ["-DNO_SYSCALL_ROUTE"]
        try:
            arg0, arg1 = member_offsets([("pt_regs", "di"), ("pt_regs", "si")])
        except BtfError as exc:
            self.diag.skip(f"sockets from SSL_set_fd only, not from system calls ({exc})")
            return ["-DNO_SYSCALL_ROUTE"]
        return [f"-DREGS_ARG0={arg0}", f"-DREGS_ARG1={arg1}"]

    def _attach_errors(self) -> None:
        """OpenSSL's error calls in libcrypto; without them a failed handshake is still
        reported, without its reason."""
        try:
            crypto = find_library(LIBCRYPTO, self.pid)
            symbols = exported_symbols(crypto)
        except (ProbeError, OSError) as exc:
            self.diag.skip(f"no OpenSSL error reasons ({exc})")
            return
        for function, program, at_return in ERROR_PROBES:
            if function in symbols:
                attach = self.bpf.attach_uretprobe if at_return else self.bpf.attach_uprobe
                attach(name=crypto.encode(), addr=symbols[function], fn_name=program.encode(),
                       pid=-1)

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        if self.bpf is None:
            return []
        if not self._niced:     # the thread that polls is the one that decodes
            self._niced = _yield_to_probed() or True
        # records seldom wake the reader (every WAKE_EVERY-th does): wait, then drain
        self.ring.wait(timeout_ms)
        self._drain()
        self.clock.maybe_remeasure()
        return self._release(self._newest - HOLD_NS)

    def stop(self) -> list[dict]:
        if self.bpf is None:
            return []
        _restore_policy(self._niced)      # the thread may go on with other work (a test run)
        self._drain()
        out = self._release(None)
        self.lost = int(self.bpf[b"drops"][0].value)
        self.ring.close()
        detach_uprobes(self.bpf)
        self.bpf.cleanup()
        self.bpf = None
        return out

    def summary(self) -> dict:
        return {"backend": "bcc", "library": self.path, "records": self.records,
                "bytes": self.bytes, "truncated_bytes": self.truncated_bytes,
                "unattributed_bytes": self.unattributed_bytes, "lost": self.lost,
                "lost_bytes": self.lost_bytes,
                "connections": len(self._conns), "skipped": self.diag.summary_lines()}

    # -- records -------------------------------------------------------------------------------
    def _drain(self) -> None:
        for record in self.ring.records():
            self._on_record(record)

    def _on_record(self, record: memoryview) -> None:
        ts, ssl, pid, _tid, fd, kind, direction, moved, copied, lost, _comm = \
            _HEADER.unpack_from(record)
        if kind == KIND_HANDSHAKE:
            self._handshake_failed(record, ts, ssl, pid, _tid, fd, direction, _comm)
            return
        if kind == KIND_SETFD:
            # a new binding: what was resolved for this SSL* or this fd number is stale
            self._fds[(pid, ssl)] = fd
            self._streams.pop((pid, ssl), None)
            return
        self.records += 1
        self.bytes += moved
        key = (pid, ssl)
        if fd >= 0:
            self._fds.setdefault(key, fd)
        ends = self._streams.get(key, False)
        if ends is False:
            fd = self._fds.get(key, -1)
            # resolved at once: a short connection is gone from /proc by the time it is fed
            ends = self._streams[key] = tcp_tuple(pid, fd) if fd >= 0 else None
            if len(self._streams) > MAX_STREAMS:
                self._streams.popitem(last=False)
        if ends is not None and not lost:
            owner = self._conns.get(ends[:2])
            if owner is not None and owner[1] != pid:
                return      # the other end's copy of bytes its owner already sends
        start = _HEADER.size
        payload = bytes(record[start:start + min(copied, MAX_COPY)])
        time_ns = self.clock.to_realtime(ts)
        if time_ns > self._newest:
            self._newest = time_ns
        if lost:    # the ring refused earlier records of this stream: a gap before these bytes
            self.lost_bytes += lost
            self._held.append((time_ns, pid, direction == DIR_WRITE, ssl, b"", lost))
        self._held.append((time_ns, pid, direction == DIR_WRITE, ssl, payload, moved))

    def _handshake_failed(self, record, ts, ssl, pid, tid, fd, accept, comm) -> None:
        (lib, reason, verify, ret, family, port, addr, func,
         local_family, local_port, local_addr) = _HS.unpack_from(record, _HEADER.size)
        ev = {"time_ns": self.clock.to_realtime(ts), "layer": "probe", "kind": "tls.error",
              "source": self.source, "function": "SSL_accept" if accept else "SSL_connect",
              "library": self.path, "pid": pid, "tid": tid, "comm": _text(comm), "retval": ret}
        peer, local = _endpoint(family, port, addr), _endpoint(local_family, local_port, local_addr)
        if peer and local:          # read from the socket at the failure: src is the client
            ev["src"], ev["dst"] = (peer, local) if accept else (local, peer)
        else:
            ends = self._streams.get((pid, ssl)) or (tcp_tuple(pid, fd) if fd >= 0 else None)
            if ends is not None:
                ev["src"], ev["dst"] = ends[0], ends[1]
            elif peer and not accept:     # the peer connect() named
                ev["dst"] = peer
        if lib:
            ev["ssl_lib"], ev["ssl_reason"] = lib, reason
            ev["reason"] = openssl_errors.reason_text(lib, reason)
            ev["ssl_function"] = _text(func)
        else:
            ev["reason"] = "the peer closed the connection"
        if verify:
            ev["verify_result"] = verify
            ev["verify_error"] = openssl_errors.verify_text(verify)
        self._errors.append(ev)

    def _release(self, upto: int | None) -> list[dict]:
        # each CPU's records come in order, so the sort mostly merges runs; one cut at `upto`
        held = self._held
        held.sort(key=_TIME)
        cut = len(held) if upto is None else bisect_right(held, upto, key=_TIME)
        ready, self._held = held[:cut], held[cut:]
        out: list[dict] = []
        for time_ns, pid, wrote, ssl, payload, moved in _runs(ready):
            ends = self._streams.get((pid, ssl))
            if ends is None:
                self.unattributed_bytes += moved
                continue
            conn, owner = self._conn(ends[:2], pid)
            if owner != pid:
                continue            # the other end's copy of the same bytes
            from_client = wrote == ends[2]
            if payload:
                out.extend(self.sink.on_data(conn, from_client, time_ns, payload))
            if moved > len(payload):
                if payload:     # an empty payload stands for records the ring refused
                    self.truncated_bytes += moved - len(payload)
                out.extend(self.sink.on_gap(conn, from_client, time_ns, moved - len(payload)))
        if self._errors:
            cut = len(self._errors) if upto is None else \
                sum(1 for e in self._errors if e["time_ns"] <= upto)
            out.extend(self._errors[:cut])
            del self._errors[:cut]
            out.sort(key=_EVENT_TIME)
        for ev in out:
            ev["host"] = self.host
        return out

    def _conn(self, ends: tuple[str, str], pid: int) -> tuple[Conn, int]:
        got = self._conns.get(ends)
        if got is None:
            got = self._conns[ends] = (Conn(ends[0], ends[1], len(self._conns) + 1), pid)
        return got


def _runs(ready: list[tuple]):
    """Consecutive records of one SSL* and direction as one (Gluster reads a reply in
    pieces: the record mark, the header, the payload): the decoder is called once per run
    instead of once per piece. A run ends at a truncated record (its gap follows it) and
    before a refused one (an empty payload standing for the bytes lost). A read
    run takes its last piece's time (when all its bytes were in), a write run its first's;
    no other record lies between, so the order holds."""
    run = None
    for rec in ready:
        if (run is not None and rec[1] == run[1] and rec[2] == run[2] and rec[3] == run[3]
                and run[5] == len(run[4][-1]) and rec[4]):
            run[4].append(rec[4])
            run[5] = rec[5]
            run[6] += rec[5]
            if not rec[2]:
                run[0] = rec[0]
            continue
        if run is not None:
            yield _joined(run)
        run = [rec[0], rec[1], rec[2], rec[3], [rec[4]], rec[5], rec[5]]
    if run is not None:
        yield _joined(run)


def _joined(run: list):
    pieces = run[4]
    payload = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    # moved: the whole run's bytes; only the last piece can be short of its own
    return run[0], run[1], run[2], run[3], payload, run[6]


def _yield_to_probed() -> tuple | None:
    """The polling thread (it decodes) runs as SCHED_BATCH: it keeps its fair share of CPU,
    so the ring is drained on a busy host (a nice of 10 lost records there), but its wakeups
    no longer preempt the probed processes it shares the CPUs with. Returns (thread, policy,
    priority) as they were, for _restore_policy."""
    tid = threading.get_native_id()
    try:
        before = (tid, os.sched_getscheduler(tid), os.sched_getparam(tid))
        os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
        return before
    except OSError:
        return None


def _restore_policy(before) -> None:
    """The polling thread's scheduling as it was, when it is the thread stopping."""
    if not isinstance(before, tuple) or before[0] != threading.get_native_id():
        return
    try:
        os.sched_setscheduler(*before)
    except OSError:
        pass


def _endpoint(family: int, port: bytes, addr: bytes) -> str | None:
    """"ip:port" of an address the program read (family AF_INET or AF_INET6), else None."""
    if family not in (2, 10):
        return None
    return endpoint(str(ipaddress.ip_address(addr[:4] if family == 2 else addr)),
                    int.from_bytes(port, "big"))


def _text(raw: bytes) -> str:
    """A C string read from a process: up to its NUL, printable ASCII only (names)."""
    raw = raw.split(b"\0", 1)[0]
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in raw.decode("latin-1"))
