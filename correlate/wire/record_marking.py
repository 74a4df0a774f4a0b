"""ONC RPC record marking over TCP (RFC 5531 section 11): cutting a byte stream into records,
and finding the way back into the stream after a gap or garbage.

Each record is a sequence of fragments, each preceded by a 4-byte mark whose top bit flags the
last fragment and whose low 31 bits give the fragment length. Fragments are accumulated as bytes
arrive, never preallocated from a length.

Resynchronization: a stream that starts mid-record (the capture began mid-connection), that
follows a gap, or whose record turns out not to be RPC, is scanned forward for a plausible
record mark followed by a plausible RPC header: a call with rpcvers 2, a known or plausible
program and a well-formed credential, or a reply whose xid is pending in the other direction.
Skipped bytes are counted in the Diagnostics.
"""
from __future__ import annotations

import struct
from collections.abc import Container

from ..diagnostics import Diagnostics
from ..gluster import programs
from .model import Conn
from .rpc_header import CALL, FLAVORS, MAX_AUTH_BYTES, MSG_ACCEPTED, MSG_DENIED, REPLY

MAX_RECORD = 32 << 20           # a record larger than this is taken as corruption
KEEP_RECORD = 4 << 20           # bytes of a record kept for decoding (the rest is payload)
MIN_RECORD = 12                 # xid + msg_type + one word: nothing smaller is RPC
HEADER_PEEK = 36                # bytes after the mark needed to judge a call header
MAX_PLAUSIBLE_VERS = 1000       # version / procedure of an unknown program, when resyncing

_MARK = struct.Struct(">I")
_THREE_WORDS = struct.Struct(">III")
_FIVE_WORDS = struct.Struct(">IIIII")

_CALL_TAG = b"\0\0\0\0\0\0\0\x02"         # msg_type CALL, rpcvers 2 (8 bytes after the mark)
_REPLY_TAG = b"\0\0\0\x01\0\0\0"          # msg_type REPLY, reply_stat 0 or 1 follows
HUNT, MARK, BODY = "hunt", "mark", "body"


class Record:
    """One RPC record, as cut from a stream."""
    __slots__ = ("data", "length", "time_ns", "lost")

    def __init__(self, data: bytes, length: int, time_ns: int, lost: int = 0):
        self.data = data            # the record, or its first KEEP_RECORD bytes
        self.length = length        # its length on the wire
        self.time_ns = time_ns      # when its first byte arrived
        self.lost = lost            # bytes of it missing from the capture (gap inside)

    def __repr__(self) -> str:
        return f"Record(length={self.length}, time_ns={self.time_ns}, lost={self.lost})"


class Direction:
    """Framing state of one direction of one connection (a C struct in the compiled build)."""
    __slots__ = ("state", "buf", "record", "record_len", "record_time", "record_lost",
                 "frag_left", "last_frag", "fresh", "buf_time", "consumed")

    def __init__(self):
        self.state = HUNT
        self.buf = bytearray()
        self.record = bytearray()
        self.record_len = 0         # bytes of the current record so far (kept or not)
        self.record_time = 0
        self.record_lost = 0
        self.frag_left = 0
        self.last_frag = False
        self.fresh = True           # nothing consumed yet and no gap: a record may start at byte 0
        self.buf_time = 0           # when the oldest byte in buf arrived
        self.consumed = 0           # stream offset of buf[0] (for messages)


class RecordFramer:
    """Cuts the directions of connections into Records. `pending` (a container of
    (sent by client?, xid) of unanswered calls) lets a hunt trust a reply that answers one.
    Damage goes to `diag`."""

    def __init__(self, diag: Diagnostics, max_record: int = MAX_RECORD):
        self.diag = diag
        self.max_record = max_record

    def close(self, conn: Conn, dirs: dict[bool, Direction]) -> None:
        """The connection ended: count what was left mid-record."""
        for from_client, d in dirs.items():
            left = len(d.buf) + (d.record_len if d.state == BODY else 0)
            if left:
                self._skipped(conn, from_client, left, "incomplete RPC record at connection end")

    # -- records --------------------------------------------------------------------------
    def _whole_records(self, pending: Container, from_client: bool, d: Direction, time_ns: int,
                       data: bytes) -> list[Record] | None:
        """The common case: the stream is between records and `data` is one or more whole
        single-fragment records. Then they are cut out of `data` without buffering; None
        (and no state touched) when anything else is there, for the general path."""
        if d.state != MARK or d.buf or d.record_len:
            return None
        out = []
        pos, end = 0, len(data)
        while pos < end:
            if end - pos < 4:
                return None
            word = _MARK.unpack_from(data, pos)[0]
            length = word & 0x7FFFFFFF
            start = pos + 4
            pos = start + length
            if not word & 0x80000000 or length < MIN_RECORD or length > KEEP_RECORD \
                    or length > self.max_record or pos > end \
                    or not self._plausible(pending, from_client, data, start, min(HEADER_PEEK, length),
                                           strict=False):
                return None
            out.append(Record(data[start:pos], length, time_ns))
        # the state the general path leaves after whole records
        d.record_time = d.buf_time = time_ns
        d.frag_left, d.last_frag = 0, True
        d.consumed += end
        return out

    def feed(self, conn: Conn, pending: Container, from_client: bool, d: Direction,
             time_ns: int, data: bytes) -> list[Record]:
        """The records that `data` (the next bytes of direction `d`) completes."""
        records = self._whole_records(pending, from_client, d, time_ns, data)
        if records is not None:
            return records
        out: list[Record] = []
        old = len(d.buf)              # bytes held from earlier calls arrived at d.buf_time
        if not old:
            d.buf_time = time_ns
        d.buf += data
        buf = d.buf
        i = 0
        while i < len(buf):
            if d.state == HUNT:
                start, wait_from = self._hunt(pending, from_client, d, i)
                if start is None:
                    if wait_from is not None:          # a candidate needs more bytes
                        keep_from = wait_from
                    elif d.fresh and i == 0 and len(buf) < HEADER_PEEK + 4:
                        keep_from = 0                  # too early to judge the first bytes
                    else:                              # keep a tail that may hold a mark
                        keep_from = max(i, len(buf) - (HEADER_PEEK + 12))
                    if keep_from > i:
                        self._skipped(conn, from_client, keep_from - i, "bytes outside RPC records")
                        d.fresh = False
                    i = keep_from
                    break
                if start > i:
                    self._skipped(conn, from_client, start - i, "bytes outside RPC records")
                i = start
                d.state = MARK
                d.fresh = False
                continue
            if d.state == MARK:
                if len(buf) - i < 4:
                    break
                word = _MARK.unpack_from(buf, i)[0]
                last, length = bool(word & 0x80000000), word & 0x7FFFFFFF
                first = d.record_len == 0
                if d.record_len + length > self.max_record or (first and last and length < MIN_RECORD):
                    self._desync(conn, from_client, d, f"record mark with length {length}")
                    self._skipped(conn, from_client, 1, "bytes outside RPC records")
                    i += 1
                    continue
                if first:
                    need = min(HEADER_PEEK, length)
                    if len(buf) - i - 4 < need:
                        break                          # wait until the header can be judged
                    if not self._plausible(pending, from_client, buf, i + 4, need, strict=False):
                        self._desync(conn, from_client, d, "record does not start with an RPC header")
                        self._skipped(conn, from_client, 1, "bytes outside RPC records")
                        i += 1
                        continue
                    d.record_time = d.buf_time if i < old else time_ns
                d.frag_left, d.last_frag = length, last
                d.state = BODY
                i += 4
                if length == 0:
                    out.extend(self._end_fragment(d))
                continue
            # BODY
            take = min(d.frag_left, len(buf) - i)
            room = KEEP_RECORD - len(d.record)
            if room > 0 and not d.record_lost:
                d.record += buf[i:i + min(take, room)]
            d.record_len += take
            d.frag_left -= take
            i += take
            if d.frag_left == 0:
                out.extend(self._end_fragment(d))
        del buf[:i]
        d.consumed += i
        if i >= old:
            d.buf_time = time_ns
        return out

    def _end_fragment(self, d: Direction) -> list[Record]:
        if not d.last_frag:
            d.state = MARK
            return []
        rec = Record(bytes(d.record), d.record_len, d.record_time, d.record_lost)
        d.record = bytearray()
        d.record_len = d.record_lost = 0
        d.state = MARK
        return [rec]

    def _desync(self, conn: Conn, from_client: bool, d: Direction, why: str) -> None:
        self.diag.skip(f"rpc: lost record framing ({why}), resynchronizing",
                       self._where(conn, from_client, d))
        if d.record_len:
            self._skipped(conn, from_client, d.record_len, "bytes outside RPC records")
        d.record = bytearray()
        d.record_len = d.record_lost = 0
        d.state = HUNT

    def _hunt(self, pending: Container, from_client: bool, d: Direction,
              i: int) -> tuple[int | None, int | None]:
        """Look for a plausible record start at or after i.

        Returns (start, None) when found, (None, p) when the candidate at p needs more bytes
        to be judged, (None, None) when there is no candidate."""
        buf = d.buf
        # A stream that starts at a record boundary is the common case: try byte 0 itself.
        if d.fresh and i == 0 and self._mark_ok(pending, from_client, buf, 0, strict=False):
            return 0, None
        pos = i
        call_at = reply_at = -1
        while True:
            # Calls and replies have fixed words 8 bytes after the mark: find them with
            # bytes.find rather than trying every offset.
            if call_at < pos + 8:
                call_at = buf.find(_CALL_TAG, pos + 8)
                if call_at < 0:
                    call_at = len(buf) + 1
            if reply_at < pos + 8:
                reply_at = buf.find(_REPLY_TAG, pos + 8)
                if reply_at < 0:
                    reply_at = len(buf) + 1
            tag = min(call_at, reply_at)
            if tag > len(buf):
                return None, None
            p = tag - 8
            length = _MARK.unpack_from(buf, p)[0] & 0x7FFFFFFF
            if len(buf) - p < 4 + min(HEADER_PEEK, max(length, MIN_RECORD)):
                return None, p
            if self._mark_ok(pending, from_client, buf, p, strict=True):
                return p, None
            pos = p + 1

    def _mark_ok(self, pending: Container, from_client: bool, buf: bytearray, p: int,
                 strict: bool) -> bool:
        if len(buf) - p < 4:
            return False
        word = _MARK.unpack_from(buf, p)[0]
        length = word & 0x7FFFFFFF
        if length > self.max_record or (word & 0x80000000 and length < MIN_RECORD):
            return False
        need = min(HEADER_PEEK, length)
        if len(buf) - p - 4 < need:
            return False
        return self._plausible(pending, from_client, buf, p + 4, need, strict)

    def _plausible(self, pending: Container, from_client: bool, buf, at: int, n: int,
                   strict: bool) -> bool:
        """Do the n bytes of `buf` at `at` (the first bytes of a record, n <= HEADER_PEEK and
        all present) look like an RPC message?

        strict (when hunting): a reply must answer a pending call of this connection, a call
        must name a known program (or a small version and procedure) and a sane credential."""
        if n < 12:
            # a first fragment too short to show the header: only judged when not hunting
            return not strict and n > 0
        xid, mtype, third = _THREE_WORDS.unpack_from(buf, at)
        if mtype == REPLY:
            if third not in (MSG_ACCEPTED, MSG_DENIED):
                return False
            return not strict or (not from_client, xid) in pending
        if mtype != CALL or third != 2:
            return False
        if n < 36:
            return not strict
        prog, vers, proc, flavor, cred_len = _FIVE_WORDS.unpack_from(buf, at + 12)
        if cred_len > MAX_AUTH_BYTES:
            return False
        if not strict:
            return True
        known = programs.is_known_program(prog)
        return (known or (vers <= MAX_PLAUSIBLE_VERS and proc <= MAX_PLAUSIBLE_VERS)) \
            and (flavor in FLAVORS or known)

    def gap(self, conn: Conn, from_client: bool, d: Direction, missing: int) -> list[Record]:
        """`missing` bytes of direction `d` were not captured."""
        if missing <= 0:
            return []
        if d.state == BODY and not d.buf and missing <= d.frag_left:
            # The hole is inside the current fragment: framing survives, the record is damaged.
            d.record_lost += missing
            d.record_len += missing
            d.frag_left -= missing
            self.diag.skip("rpc: record damaged by a capture gap", self._where(conn, from_client, d))
            return self._end_fragment(d) if d.frag_left == 0 else []
        dropped = len(d.buf) + (d.record_len if d.state == BODY else 0)
        self.diag.skip("rpc: capture gap, resynchronizing", self._where(conn, from_client, d))
        if dropped:
            self._skipped(conn, from_client, dropped, "bytes outside RPC records")
        d.consumed += len(d.buf) + missing
        d.buf.clear()
        d.record = bytearray()
        d.record_len = d.record_lost = 0
        d.state = HUNT
        d.fresh = False
        return []

    def _where(self, conn: Conn, from_client: bool, d: Direction) -> str:
        side = f"{conn.client} -> {conn.server}" if from_client else f"{conn.server} -> {conn.client}"
        return f"conn {conn.number} ({side}) stream offset {d.consumed}"

    def _skipped(self, conn: Conn, from_client: bool, nbytes: int, reason: str) -> None:
        # Diagnostics counts occurrences; here the unit is bytes, so add them in one step.
        key = f"{reason} (bytes)"
        self.diag.counts[key] += nbytes
        self.diag.first_where.setdefault(key, f"conn {conn.number}")

    def reset(self, conn: Conn, d: Direction, exc: Exception) -> None:
        """A bug met this direction: report it and hunt for the next record."""
        self.diag.skip(f"rpc: internal error: {type(exc).__name__}: {exc}", f"conn {conn.number}")
        d.buf.clear()
        d.record = bytearray()
        d.record_len = d.record_lost = 0
        d.state = HUNT
        d.fresh = False
