"""State under hostile load shapes: `decode` and `analyze` (1 and 2 jobs), time and peak RSS.

The shapes (made here: they are load shapes, not protocol corners):
  - open:        200,000 TCP connections to a brick that open and never close;
  - unanswered:  1,000,000 RPC calls (GF-DUMP DUMP, over 100 connections) never answered;
  - conn-lookup: 100,000 connections, each sending one LOOKUP that is never answered;
  - lookups:     250,000 LOOKUPs (with credentials and arguments, over 100 connections)
                 never answered.

Targets: every command under 100 MiB peak RSS in every process, `analyze` within 2x of
`decode`'s time (CPU seconds, less disturbed than wall time by other work on a shared
machine), and what was dropped to stay bounded is said on stderr.

    python bench/detector_state.py [--keep DIR] [--scale 1.0] [--shape NAME ...]
"""
from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_RSS_MIB = 100
MAX_RATIO = 2.0
BRICK = (bytes([127, 0, 0, 2]), 49152)
BASE_S = 1_764_000_000                  # 2025-11-24: a plausible capture date


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _packet(src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, flags: int,
            payload: bytes = b"") -> bytes:
    """An IPv4 + TCP packet (link type 228: raw IPv4). Checksums are left zero: the decoder
    does not check them, as tcpdump on loopback records them unset."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    return ip[:10] + struct.pack("!H", _sum16(ip)) + ip[12:] + tcp


class PcapWriter:
    def __init__(self, path: Path):
        self.f = open(path, "wb", buffering=1 << 20)
        self.f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 228))   # ns stamps

    def write(self, time_ns: int, data: bytes) -> None:
        sec, ns = divmod(time_ns, 1_000_000_000)
        self.f.write(struct.pack("<IIII", sec, ns, len(data), len(data)) + data)

    def close(self) -> None:
        self.f.close()


SYN, ACK, PSH = 0x02, 0x10, 0x08


def _client(i: int) -> tuple[bytes, int]:
    """Client address and port of connection i (127.1.x.y, ports 1024-60999)."""
    host, port = divmod(i, 60_000)
    return bytes([127, 1, (host >> 8) & 0xFF, host & 0xFF]), 1024 + port


def _handshake(w: PcapWriter, t: int, i: int) -> tuple[bytes, int]:
    src, sport = _client(i)
    dst, dport = BRICK
    w.write(t, _packet(src, sport, dst, dport, 1000, 0, SYN))
    w.write(t + 20_000, _packet(dst, dport, src, sport, 5000, 1001, SYN | ACK))
    w.write(t + 40_000, _packet(src, sport, dst, dport, 1001, 5001, ACK))
    return src, sport


def open_connections(path: Path, n: int = 200_000, gap_ns: int = 2_000) -> None:
    """A burst: 200,000 connections in 0.4 s (a reconnect storm, a SYN flood)."""
    w = PcapWriter(path)
    t = BASE_S * 1_000_000_000
    for i in range(n):
        _handshake(w, t + i * gap_ns, i)
    w.close()


def _dump_call(xid: int) -> bytes:
    """GF-DUMP v1 DUMP with AUTH_NULL and its u64 argument, in one record."""
    body = struct.pack("!IIIIIIIIIIQ", xid, 0, 2, 123451501, 1, 1, 0, 0, 0, 0, 0)
    return struct.pack("!I", 0x80000000 | len(body)) + body


def unanswered_calls(path: Path, n: int = 1_000_000, conns: int = 100, gap_ns: int = 20_000) -> None:
    w = PcapWriter(path)
    t = BASE_S * 1_000_000_000
    seqs = []
    for c in range(conns):
        src, sport = _handshake(w, t + c * 100_000, c)
        seqs.append([src, sport, 1001])
    t += conns * 100_000 + 1_000_000
    dst, dport = BRICK
    for i in range(n):
        state = seqs[i % conns]
        call = _dump_call(i + 1)
        w.write(t + i * gap_ns, _packet(state[0], state[1], dst, dport, state[2], 5001, PSH | ACK, call))
        state[2] += len(call)
    w.close()


def _lookup_call(xid: int, i: int) -> bytes:
    """GlusterFS v400 LOOKUP of "f<i>" in the root, as a FUSE client sends it: AUTH_GLUSTERFS
    v3 credential (pid, uid, gid, lk_owner), then gfx_lookup_req with a gfid-req in xdata."""
    lk_owner = struct.pack("!Q", i)
    cred = struct.pack("!iIIIIQI", 4000 + i % 1000, 0, 0, 0, 0, BASE_S, 0) \
        + struct.pack("!I", len(lk_owner)) + lk_owner
    name = f"f{i}".encode()
    name_xdr = struct.pack("!I", len(name)) + name + b"\0" * (-len(name) % 4)
    key = b"gfid-req\0"
    key_xdr = struct.pack("!I", len(key)) + key + b"\0" * (-len(key) % 4)
    xdata = struct.pack("!Iii", len(key) + 17, 1, 1) + key_xdr + struct.pack("!i", 7) \
        + struct.pack("!QQ", 0x3A0F3D554A1B4C8E, i)                  # GF_DATA_TYPE_GFUUID
    args = b"\0" * 16 + b"\0" * 15 + b"\1" + struct.pack("!I", 0) + name_xdr + xdata
    body = struct.pack("!IIIIII", xid, 0, 2, 1298437, 400, 27) \
        + struct.pack("!II", 390040, len(cred)) + cred + struct.pack("!II", 0, 0) + args
    return struct.pack("!I", 0x80000000 | len(body)) + body


def lookup_per_connection(path: Path, n: int = 100_000, gap_ns: int = 4_000) -> None:
    """n connections, each sending one LOOKUP that is never answered and never closing
    (clients of a brick that stopped answering, or a flood)."""
    w = PcapWriter(path)
    t = BASE_S * 1_000_000_000
    dst, dport = BRICK
    for i in range(n):
        start = t + i * gap_ns
        src, sport = _handshake(w, start, i)
        w.write(start + 60_000, _packet(src, sport, dst, dport, 1001, 5001, PSH | ACK,
                                        _lookup_call(1, i)))
    w.close()


def unanswered_lookups(path: Path, n: int = 250_000, conns: int = 100, gap_ns: int = 20_000) -> None:
    """n LOOKUPs over `conns` connections, none answered (a brick that hangs under load)."""
    w = PcapWriter(path)
    t = BASE_S * 1_000_000_000
    seqs = []
    for c in range(conns):
        src, sport = _handshake(w, t + c * 100_000, c)
        seqs.append([src, sport, 1001])
    t += conns * 100_000 + 1_000_000
    dst, dport = BRICK
    for i in range(n):
        state = seqs[i % conns]
        call = _lookup_call(i + 1, i)
        w.write(t + i * gap_ns, _packet(state[0], state[1], dst, dport, state[2], 5001, PSH | ACK, call))
        state[2] += len(call)
    w.close()


def measure(cmd: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds, peak RSS (KiB) and stderr of one child, stdout discarded.
    It runs in `cwd` (not the source tree), so PYTHONPATH can name another tree to compare."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {err[-2000:]}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, err


SHAPES = {   # name: (maker, full size, what it is)
    "open": (open_connections, 200_000, "connections opened, never closed"),
    "unanswered": (unanswered_calls, 1_000_000, "DUMP calls never answered, 100 connections"),
    "conn-lookup": (lookup_per_connection, 100_000, "connections, each with one unanswered LOOKUP"),
    "lookups": (unanswered_lookups, 250_000, "LOOKUPs never answered, 100 connections"),
}
# What is run on each shape: decode with as many jobs is the anchor of analyze's time ratio. `--jobs 2`'s peak is
# that of its largest process (wait4 reports the maximum over the waited-for process tree).
COMMANDS = {"decode -j1": ["decode", "--jobs", "1"], "decode -j2": ["decode", "--jobs", "2"],
            "analyze -j1": ["analyze", "--jobs", "1"], "analyze -j2": ["analyze", "--jobs", "2"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="write the captures here and keep them")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full shapes")
    ap.add_argument("--shape", action="append", choices=sorted(SHAPES),
                    help="run only this shape (repeatable; default: all)")
    args = ap.parse_args()
    d = args.keep or Path(tempfile.mkdtemp(prefix="correlate-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    correlate = [sys.executable, "-m", "correlate"]
    ok = True
    print(f"peak RSS target: < {MAX_RSS_MIB} MiB per process; analyze CPU <= {MAX_RATIO}x decode's")
    for name in args.shape or SHAPES:
        make, full, what = SHAPES[name]
        n = int(full * args.scale)
        cap = d / f"{name}-{n}.pcap"
        if not cap.exists():
            make(cap, n)
        print(f"{name}: {n:,} {what} ({cap.stat().st_size / 2**20:.0f} MiB capture)")
        anchors = {}                                    # jobs -> decode's CPU seconds
        for label, sub in COMMANDS.items():
            wall, cpu, rss, err = measure(correlate + sub + [str(cap)], d)
            jobs = sub[-1]
            anchor = anchors.setdefault(jobs, cpu)
            mib = rss / 1024
            over = [what for what, bad in (("memory", mib >= MAX_RSS_MIB),
                                           ("time", sub[0] != "decode" and cpu / anchor > MAX_RATIO))
                    if bad]
            ok &= not over
            print(f"    {label:<12} peak {mib:6.1f} MiB ({mib / MAX_RSS_MIB:4.2f}x of the {MAX_RSS_MIB} MiB "
                  f"target) | {cpu:6.1f} s CPU ({wall:6.1f} wall, {cpu / anchor:4.2f}x decode -j{jobs}) | "
                  f"{'OVER TARGET: ' + ', '.join(over) if over else 'ok'}")
            for line in err.splitlines():
                if "dropped" in line or "skipped" in line or "findings" in line:
                    print(f"        {line}")
    if not args.keep:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
