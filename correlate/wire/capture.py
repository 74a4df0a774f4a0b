"""Reading pcap and pcapng captures (plain or gzip) from a file or a live stream, as Frames.

dpkt 1.9.8's readers do not fit: its pcapng Reader honours only the first interface of the
first section, ignores Simple Packet Blocks, turns timestamps into floats (ns are lost) and
trusts every length field. So the blocks are walked here with struct, which is also faster.

Streaming: bytes are pulled with read1(), which returns what has arrived instead of waiting
for a full buffer, so a frame is yielded as soon as its record is complete
(`tcpdump -U -w - | correlate decode -`). Nothing seeks; gzip is detected by peeking.
"""
from __future__ import annotations

import gzip
import struct
import sys
import zlib
from typing import BinaryIO, Callable, Iterator

from ..diagnostics import Diagnostics
from ..errors import GZIP_DAMAGE, InputError, what_it_starts_with
from ..validate import MAX_TIME_NS

MAX_CAPLEN = 256 * 1024            # bytes of one packet; more is a corrupt length field
MAX_BLOCK_LEN = 16 * 1024 * 1024   # one pcapng block
READ_CHUNK = 256 * 1024
GZIP_OUT_CHUNK = 1024 * 1024       # decompressed bytes per step (no bomb-sized allocation)
GZIP_IN_STEP = 4096                # compressed bytes per step

# pcap magic as read little-endian -> (record header byte order, ns per timestamp fraction unit,
# record header length)
_PCAP_MAGICS = {
    0xA1B2C3D4: ("<", 1000, 16),        # microseconds, little-endian file
    0xD4C3B2A1: (">", 1000, 16),        # microseconds, big-endian file
    0xA1B23C4D: ("<", 1, 16),           # nanoseconds
    0x4D3CB2A1: (">", 1, 16),
    0xA1B2CD34: ("<", 1000, 24),        # Kuznetzov's modified pcap (8 more header bytes)
    0x34CDB2A1: (">", 1000, 24),
}
_PCAPNG_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D

# pcapng block types
_IDB, _PB, _SPB, _EPB = 0x00000001, 0x00000002, 0x00000003, 0x00000006
_OPT_TSRESOL, _OPT_TSOFFSET = 9, 14


class Frame:
    """One captured packet, before any decoding (a C struct in the compiled build)."""
    __slots__ = ("time_ns", "linktype", "data", "number", "orig_len")

    def __init__(self, time_ns: int, linktype: int, data: bytes, number: int, orig_len: int = 0):
        self.time_ns = time_ns      # CLOCK_REALTIME ns (pcap timestamps, resolution respected)
        self.linktype = linktype    # DLT/LINKTYPE number of its interface
        self.data = data
        self.number = number        # 1-based packet number in its input (for messages)
        self.orig_len = orig_len    # length on the wire (more than len(data) when cut by snaplen)

    def __repr__(self) -> str:
        return f"Frame(#{self.number} time_ns={self.time_ns} linktype={self.linktype} len={len(self.data)})"


class _Input:
    """Exact-length reads over a byte source that may deliver bytes in dribs (a pipe)."""

    __slots__ = ("_pull", "_buf", "_pos", "consumed")

    def __init__(self, pull: Callable[[int], bytes]):
        self._pull = pull          # returns some bytes (b"" at end), never waits for more than it has
        self._buf = b""
        self._pos = 0
        self.consumed = 0          # bytes handed out so far = offset of the next read

    def read(self, n: int) -> bytes:
        """n bytes, or fewer only at end of input."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            self.consumed += n
            return self._buf[pos:end]
        return self._read_slow(n)

    def _read_slow(self, n: int) -> bytes:
        parts = [self._buf[self._pos:]]
        have = len(parts[0])
        while have < n:
            chunk = self._pull(max(READ_CHUNK, n - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        out, self._buf, self._pos = data[:n], data, min(n, len(data))
        self.consumed += len(out)
        return out

    def peek(self, n: int) -> bytes:
        data = self.read(n)
        self._pos -= len(data)     # read() left it all in _buf
        self.consumed -= len(data)
        return data


def _puller(fileobj: BinaryIO) -> Callable[[int], bytes]:
    return getattr(fileobj, "read1", None) or fileobj.read


class _Gunzip:
    """A pull function yielding decompressed bytes, for gzip input (concatenated members too).
    Offsets in messages about a gzip input count decompressed bytes."""

    def __init__(self, raw: "_RawInput"):
        self._raw = raw
        self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._fed = False          # the current member has started
        self._tail = b""           # bytes after a member's end: the next member
        self._pending = memoryview(b"")     # compressed bytes read, not yet given to zlib

    def __call__(self, _n: int) -> bytes:
        while True:
            member = self._member
            data = member.unconsumed_tail
            if not data:
                # zlib drops a step's output when it meets damage: small steps keep what
                # came before it (a capture damaged after its header still reads up to there)
                if not self._pending:
                    self._pending = memoryview(self._tail or self._raw.read1_for_gzip())
                    self._tail = b""
                data = self._pending[:GZIP_IN_STEP]
                self._pending = self._pending[GZIP_IN_STEP:]
            if not data:
                if self._fed:
                    raise zlib.error("compressed data ends before the end of its gzip member")
                return b""
            self._fed = True
            out = member.decompress(data, GZIP_OUT_CHUNK)
            if member.eof:
                self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._fed = False
                # zero padding after the last member is tolerated, as gzip(1) does
                rest = member.unused_data + bytes(self._pending)
                self._pending = memoryview(b"")
                self._tail = rest if rest.strip(b"\0") else b""
            if out:
                return out


class _RawInput(_Input):
    __slots__ = ()

    def read1_for_gzip(self) -> bytes:
        """Whatever is buffered, else one pull: never waits for more than has arrived."""
        if self._pos < len(self._buf):
            data = self._buf[self._pos:]
            self._pos = len(self._buf)
            self.consumed += len(data)
            return data
        data = self._pull(READ_CHUNK)
        self.consumed += len(data)
        return data


def open_capture(path: str, diag: Diagnostics) -> Iterator[Frame]:
    """Frames of a capture file, or of stdin as a stream when path is "-".

    Raises InputError at once when the input cannot be opened or is not a capture."""
    if path == "-":
        if sys.stdin is None:      # started with stdin closed (`<&-`)
            raise InputError("stdin", "standard input is closed")
        return open_capture_stream(sys.stdin.buffer, "stdin", diag)
    try:
        fileobj = open(path, "rb")
    except OSError as exc:
        raise InputError(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        frames = open_capture_stream(fileobj, path, diag)
    except BaseException:
        fileobj.close()
        raise
    return _closing(frames, fileobj)


def _closing(frames: Iterator[Frame], fileobj: BinaryIO) -> Iterator[Frame]:
    try:
        yield from frames
    finally:
        fileobj.close()


def open_capture_stream(fileobj: BinaryIO, source: str, diag: Diagnostics) -> Iterator[Frame]:
    """Frames from an open binary file object (a file, a pipe, stdin). Reads the magic now,
    so a non-capture raises InputError before the first frame is asked for."""
    try:
        inp, frames = _start(_RawInput(_puller(fileobj)), source, diag)
    except (zlib.error, EOFError) as exc:
        raise InputError(source, GZIP_DAMAGE) from None
    except OSError as exc:
        raise InputError(source, f"cannot read: {exc}") from None
    return _guarded(frames, inp, diag)


def _start(inp: _Input, source: str, diag: Diagnostics) -> tuple[_Input, Iterator[Frame]]:
    """Identify the format (through gzip if need be) and read the file header."""
    head = inp.peek(4)
    if head[:2] == b"\x1f\x8b":
        inp = _Input(_Gunzip(inp))
        head = inp.peek(4)
    if len(head) < 4:
        raise InputError(source, f"not a pcap or pcapng capture ({what_it_starts_with(head)})")
    (magic,) = struct.unpack("<I", head)
    if magic in _PCAP_MAGICS:
        return inp, _PcapRecords(inp, _pcap_header(inp, source), diag)
    if magic == _PCAPNG_SHB:
        _check_pcapng_start(inp, source)
        return inp, _read_pcapng(inp, diag)
    raise InputError(source, f"not a pcap or pcapng capture ({what_it_starts_with(inp.peek(16))})")


def _guarded(frames: Iterator[Frame], inp: _Input, diag: Diagnostics) -> Iterator[Frame]:
    """Damage in compressed data or a failing read ends the input cleanly, with a note."""
    try:
        yield from frames
    except (zlib.error, EOFError, gzip.BadGzipFile):
        diag.stop(f"{GZIP_DAMAGE} (after {inp.consumed} bytes of decompressed data)")
    except OSError as exc:
        diag.stop(f"read error near byte offset {inp.consumed} ({exc})")


def _pcap_header(inp: _Input, source: str) -> bytes:
    header = inp.read(24)
    if len(header) < 24:
        raise InputError(source, f"truncated pcap file header ({len(header)} of 24 bytes)")
    return header


class _PcapRecords:
    """The frames of a pcap file after its header, one per record. An iterator object, not
    a generator: compiled (capture.pxd), its state is a C struct, its reads C calls and the
    record header C integers read byte by byte."""
    __slots__ = ("inp", "diag", "linktype", "big_endian", "frac_ns", "rec_len", "number", "done")

    def __init__(self, inp: _Input, header: bytes, diag: Diagnostics):
        order, self.frac_ns, self.rec_len = _PCAP_MAGICS[struct.unpack_from("<I", header)[0]]
        self.big_endian = order == ">"
        # The top bits of the link type field carry FCS information; the type is the low 16.
        self.linktype = struct.unpack_from(order + "I", header, 20)[0] & 0xFFFF
        self.inp = inp
        self.diag = diag
        self.number = 0
        self.done = False

    def __iter__(self):
        return self

    def __next__(self) -> Frame:
        frame = self._next_frame()
        if frame is None:
            raise StopIteration
        return frame

    def _next_frame(self) -> Frame | None:
        if self.done:
            return None
        inp = self.inp
        offset = inp.consumed
        rec = inp.read(self.rec_len)
        if len(rec) < self.rec_len:
            self.done = True
            if rec:
                self.diag.stop(f"truncated in packet {self.number + 1} at byte offset {offset}")
            return None
        self.number += 1
        big = self.big_endian
        sec, frac = _u32(rec, 0, big), _u32(rec, 4, big)
        caplen, wirelen = _u32(rec, 8, big), _u32(rec, 12, big)
        if caplen > MAX_CAPLEN:
            self.done = True
            self.diag.stop(f"corrupt record header in packet {self.number} at byte offset "
                           f"{offset} (captured length {caplen})")
            return None
        data = inp.read(caplen)
        if len(data) < caplen:
            self.done = True
            self.diag.stop(f"truncated in packet {self.number} at byte offset {offset}")
            return None
        return Frame(sec * 1_000_000_000 + frac * self.frac_ns, self.linktype, data,
                     self.number, wirelen)


def _u32(buf: bytes, at: int, big_endian: bool) -> int:
    """The unsigned 32-bit integer at `at`, in the file's byte order."""
    b0, b1, b2, b3 = buf[at], buf[at + 1], buf[at + 2], buf[at + 3]
    if big_endian:
        return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    return (b3 << 24) | (b2 << 16) | (b1 << 8) | b0


class _Interface:
    __slots__ = ("linktype", "snaplen", "to_ns", "offset_ns")

    def __init__(self, linktype: int, snaplen: int, to_ns: Callable[[int], int], offset_ns: int):
        self.linktype = linktype
        self.snaplen = snaplen
        self.to_ns = to_ns
        self.offset_ns = offset_ns


def _ticks_to_ns(tsresol: int) -> Callable[[int], int]:
    """Exact integer conversion of pcapng timestamp units to ns (if_tsresol, default 10^-6)."""
    exp = tsresol & 0x7F
    if tsresol & 0x80:                       # 2^-exp seconds per tick
        return lambda t: (t * 1_000_000_000) >> exp
    if exp <= 9:
        mult = 10 ** (9 - exp)
        return lambda t: t * mult
    div = 10 ** (exp - 9)
    return lambda t: t // div


_MICROS = _ticks_to_ns(6)


def _parse_idb(body: bytes, order: str) -> _Interface:
    linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", body, 0)
    to_ns, offset_ns = _MICROS, 0
    pos = 8
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, pos)
        pos += 4
        if code == 0:
            break
        value = body[pos:pos + length]
        if code == _OPT_TSRESOL and len(value) >= 1:
            to_ns = _ticks_to_ns(value[0])
        elif code == _OPT_TSOFFSET and len(value) >= 8:
            offset_ns = struct.unpack_from(order + "q", value)[0] * 1_000_000_000
        pos += (length + 3) & ~3
    return _Interface(linktype, snaplen, to_ns, offset_ns)


def _check_pcapng_start(inp: _Input, source: str) -> None:
    """The first section header must be sound, or this is no pcapng at all."""
    head = inp.peek(12)
    if len(head) < 12:
        raise InputError(source, f"truncated pcapng section header ({len(head)} bytes)")
    order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(head[8:12])
    if order is None:
        raise InputError(source, f"not a pcapng capture (byte-order magic {head[8:12].hex()})")
    (blen,) = struct.unpack_from(order + "I", head, 4)
    if blen < 28 or blen % 4 or blen > MAX_BLOCK_LEN:
        raise InputError(source, f"corrupt pcapng section header (block length {blen})")


def _pcapng_unpackers(order: str):
    """Block header (type, length), one 32-bit word, and the start of a packet block."""
    return (struct.Struct(order + "II").unpack_from, struct.Struct(order + "I").unpack_from,
            struct.Struct(order + "IIIII").unpack_from)


def _read_pcapng(inp: _Input, diag: Diagnostics) -> Iterator[Frame]:
    order = "<"
    interfaces: list[_Interface] = []
    number = 0
    last_ns = 0                  # Simple Packet Blocks carry no time: they get the previous one
    unpack_head, unpack_u32, unpack_epb = _pcapng_unpackers(order)
    while True:
        offset = inp.consumed
        head = inp.read(8)
        if len(head) < 8:
            if head:
                diag.stop(f"truncated block header after packet {number} at byte offset {offset}")
            return
        btype, blen = unpack_head(head)
        if btype == _PCAPNG_SHB:     # the same in both byte orders; the BOM tells which
            bom = inp.read(4)
            if len(bom) < 4:
                diag.stop(f"truncated section header at byte offset {offset}")
                return
            if bom == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                diag.stop(f"corrupt section header at byte offset {offset}")
                return
            head += bom
            interfaces = []
            unpack_head, unpack_u32, unpack_epb = _pcapng_unpackers(order)
            blen = unpack_head(head)[1]
            if blen < 28:
                diag.stop(f"corrupt block length {blen} after packet {number} at byte offset {offset}")
                return
        if blen < 12 or blen % 4 or blen > MAX_BLOCK_LEN:
            diag.stop(f"corrupt block length {blen} after packet {number} at byte offset {offset}")
            return
        rest = inp.read(blen - len(head))
        if len(rest) < blen - len(head):
            what = f"in packet {number + 1}" if btype in (_EPB, _SPB, _PB) else f"after packet {number}"
            diag.stop(f"truncated {what} at byte offset {offset}")
            return
        # `rest` is the block after its 8-byte header (after the BOM for a section header);
        # for packet blocks it starts with the body, which saves copying the block.
        body_len = len(rest) - 4
        if unpack_u32(rest, body_len)[0] != blen:
            diag.stop(f"corrupt block (trailing length differs) after packet {number} "
                      f"at byte offset {offset}")
            return
        if btype == _EPB or btype == _PB:
            number += 1
            if body_len < 20:
                diag.skip("pcapng packet blocks too short", f"packet {number}")
                continue
            if btype == _EPB:
                ifid, ts_high, ts_low, caplen, wirelen = unpack_epb(rest)
            else:       # obsolete Packet Block: 16-bit interface id and drops count
                ifid, _drops, ts_high, ts_low, caplen, wirelen = struct.unpack_from(order + "HHIIII", rest)
            if caplen > body_len - 20 or caplen > MAX_CAPLEN:
                diag.skip("pcapng packet blocks with a bad captured length", f"packet {number}")
                continue
            if ifid >= len(interfaces):
                diag.skip("pcapng packets on an undeclared interface", f"packet {number}")
                continue
            iface = interfaces[ifid]
            last_ns = iface.to_ns((ts_high << 32) | ts_low) + iface.offset_ns
            if not 0 <= last_ns <= MAX_TIME_NS:    # a date no renderer could show: damage
                diag.skip("packet times outside 1970..2262 (clamped)", f"packet {number}")
                last_ns = max(0, min(MAX_TIME_NS, last_ns))
            yield Frame(last_ns, iface.linktype, rest[20:20 + caplen], number, wirelen)
            continue
        body = rest[:body_len]
        if btype == _SPB:
            number += 1
            if not interfaces or len(body) < 4:
                diag.skip("pcapng simple packet blocks without an interface", f"packet {number}")
                continue
            iface = interfaces[0]
            (wirelen,) = struct.unpack_from(order + "I", body)
            caplen = min(wirelen, len(body) - 4, MAX_CAPLEN)
            if iface.snaplen:
                caplen = min(caplen, iface.snaplen)
            yield Frame(last_ns, iface.linktype, body[4:4 + caplen], number, wirelen)
        elif btype == _IDB:
            if len(body) < 8:
                diag.stop(f"corrupt interface block at byte offset {offset}")
                return
            interfaces.append(_parse_idb(body, order))
        # Other blocks (name resolution, statistics, custom, ...) carry nothing we use.
