"""ONC RPC (RFC 5531) over TCP: record marking, message headers, credentials, and RpcSink,
the StreamSink that turns reassembled TCP bytes into rpc.call / rpc.reply events.

Record marking (RFC 5531 section 11): each record is a sequence of fragments, each preceded
by a 4-byte mark whose top bit flags the last fragment and whose low 31 bits give the
fragment length. Fragments are accumulated as bytes arrive, never preallocated from a length.

Resynchronization: a stream that starts mid-record (the capture began mid-connection), that
follows a gap, or whose record turns out not to be RPC, is scanned forward for a plausible
record mark followed by a plausible RPC header: a call with rpcvers 2, a known or plausible
program and a well-formed credential, or a reply whose xid is pending in the other direction.
Skipped bytes are counted in the Diagnostics.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..diagnostics import Diagnostics
from ..errors import DecodeError
from ..events import DETAILS_LATER
from ..gluster import programs
from ..gluster.errnos import errno_name
from .model import Conn
from .xdr import Unpacker

# -- protocol constants (RFC 5531) ----------------------------------------------------------
CALL, REPLY = 0, 1
MSG_ACCEPTED, MSG_DENIED = 0, 1
ACCEPT_STATUS = {0: "SUCCESS", 1: "PROG_UNAVAIL", 2: "PROG_MISMATCH", 3: "PROC_UNAVAIL",
                 4: "GARBAGE_ARGS", 5: "SYSTEM_ERR"}
REJECT_STATUS = {0: "RPC_MISMATCH", 1: "AUTH_ERROR"}
AUTH_STATUS = {0: "AUTH_OK", 1: "AUTH_BADCRED", 2: "AUTH_REJECTEDCRED", 3: "AUTH_BADVERF",
               4: "AUTH_REJECTEDVERF", 5: "AUTH_TOOWEAK", 6: "AUTH_INVALIDRESP", 7: "AUTH_FAILED",
               8: "AUTH_KERB_GENERIC", 9: "AUTH_TIMEEXPIRE", 10: "AUTH_TKT_FILE",
               11: "AUTH_DECODE", 12: "AUTH_NET_ADDR", 13: "RPCSEC_GSS_CREDPROBLEM",
               14: "RPCSEC_GSS_CTXPROBLEM"}

AUTH_NULL, AUTH_UNIX, AUTH_SHORT, AUTH_DH, RPCSEC_GSS = 0, 1, 2, 3, 6
AUTH_GLUSTERFS = 5              # gluster's v1 credential reuses flavor 5 (AUTH_RSA elsewhere)
AUTH_GLUSTERFS_V2 = 390039
AUTH_GLUSTERFS_V3 = 390040
FLAVORS = {AUTH_NULL: "AUTH_NULL", AUTH_UNIX: "AUTH_UNIX", AUTH_SHORT: "AUTH_SHORT",
           AUTH_DH: "AUTH_DH", AUTH_GLUSTERFS: "AUTH_GLUSTERFS", RPCSEC_GSS: "RPCSEC_GSS",
           AUTH_GLUSTERFS_V2: "AUTH_GLUSTERFS_v2", AUTH_GLUSTERFS_V3: "AUTH_GLUSTERFS_v3"}
MAX_AUTH_BYTES = 400            # RFC 5531 opaque_auth body limit

# -- limits ---------------------------------------------------------------------------------
MAX_RECORD = 32 << 20           # a record larger than this is taken as corruption
KEEP_RECORD = 4 << 20           # bytes of a record kept for decoding (the rest is payload)
MIN_RECORD = 12                 # xid + msg_type + one word: nothing smaller is RPC
MAX_PENDING = 4096              # unanswered calls remembered per connection
MAX_CONNS = 65536               # connections with state at once
HEADER_PEEK = 36                # bytes after the mark needed to judge a call header
LATER_MAX = 4096                # a record held to decode its details later is at most this
MAX_PLAUSIBLE_VERS = 1000       # version / procedure of an unknown program, when resyncing


# -- messages -------------------------------------------------------------------------------
def _by_fields(self):
    """Pickled as its class and its fields: an event whose details are decoded later carries
    these to the process that merges (wire.parallel), and this is the fast way."""
    return type(self), tuple([getattr(self, name) for name in self.__slots__])


@dataclass(slots=True)
class CallHeader:
    xid: int
    rpcvers: int
    prog: int
    vers: int
    proc: int
    cred_flavor: int
    cred_body: bytes
    verf_flavor: int
    body_offset: int

    __reduce__ = _by_fields


@dataclass(slots=True)
class ReplyHeader:
    xid: int
    reply_status: str                    # "accepted" | "denied"
    accept_status: str | None = None
    reject_status: str | None = None
    auth_status: str | None = None
    mismatch: dict | None = None         # {"low", "high"} for PROG_MISMATCH / RPC_MISMATCH
    body_offset: int | None = None       # where the results start (SUCCESS only)

    __reduce__ = _by_fields


def _opaque_auth(u: Unpacker, what: str) -> tuple[int, bytes]:
    flavor = u.uint32(f"{what} flavor")
    body = u.opaque(f"{what} body", MAX_AUTH_BYTES)
    return flavor, body


# xid, msg_type, then for a call: rpcvers prog vers proc cred.flavor cred.length; for a reply:
# reply_stat verf.flavor verf.length accept_stat (when the verifier is empty) and two more.
_HEADER = struct.Struct(">IIIIIIII")
_AUTH = struct.Struct(">II")          # the verifier's flavor and length, after the credential
_MARK = struct.Struct(">I")           # a record mark; also any lone 32-bit word
_THREE_WORDS = struct.Struct(">III")
_FIVE_WORDS = struct.Struct(">IIIII")


def parse_header(rec: bytes) -> CallHeader | ReplyHeader:
    """The RPC header of one record. Raises DecodeError when it is not an RPC message.

    The common shapes (a call, an accepted SUCCESS reply with an empty verifier) are read
    with two Structs; everything else, and every error, goes through the field-by-field
    reader."""
    if len(rec) >= 32:
        xid, mtype, w2, w3, w4, w5, w6, w7 = _HEADER.unpack_from(rec)
        if mtype == CALL and w2 == 2 and w7 <= MAX_AUTH_BYTES:
            verf_at = 32 + w7 + (-w7 & 3)
            if verf_at + 8 <= len(rec):
                verf_flavor, verf_len = _AUTH.unpack_from(rec, verf_at)
                body = verf_at + 8 + verf_len + (-verf_len & 3)
                if verf_len <= MAX_AUTH_BYTES and body <= len(rec):
                    return CallHeader(xid, 2, w3, w4, w5, w6, rec[32:32 + w7], verf_flavor, body)
        elif mtype == REPLY and w2 == MSG_ACCEPTED and w4 == 0 and w5 == 0:
            return ReplyHeader(xid, "accepted", accept_status="SUCCESS", body_offset=24)
    return _parse_header_slowly(rec)


def _parse_header_slowly(rec: bytes) -> CallHeader | ReplyHeader:
    u = Unpacker(rec)
    xid = u.uint32("xid")
    mtype = u.uint32("msg_type")
    if mtype == CALL:
        rpcvers = u.uint32("rpcvers")
        if rpcvers != 2:
            raise DecodeError(f"call with rpcvers {rpcvers}, not 2, at offset 8")
        prog, vers, proc = u.uint32("prog"), u.uint32("vers"), u.uint32("proc")
        cred_flavor, cred_body = _opaque_auth(u, "credential")
        verf_flavor, _ = _opaque_auth(u, "verifier")
        return CallHeader(xid, rpcvers, prog, vers, proc, cred_flavor, cred_body, verf_flavor, u.pos)
    if mtype != REPLY:
        raise DecodeError(f"msg_type {mtype} is neither CALL nor REPLY at offset 4")
    stat = u.uint32("reply_stat")
    if stat == MSG_ACCEPTED:
        _opaque_auth(u, "verifier")
        code = u.uint32("accept_stat")
        if code not in ACCEPT_STATUS:
            raise DecodeError(f"accept_stat {code} unknown at offset {u.pos - 4}")
        r = ReplyHeader(xid, "accepted", accept_status=ACCEPT_STATUS[code])
        if code == 0:
            r.body_offset = u.pos
        elif code == 2:
            r.mismatch = {"low": u.uint32("mismatch low"), "high": u.uint32("mismatch high")}
        return r
    if stat == MSG_DENIED:
        code = u.uint32("reject_stat")
        if code == 0:
            return ReplyHeader(xid, "denied", reject_status="RPC_MISMATCH",
                               mismatch={"low": u.uint32("mismatch low"), "high": u.uint32("mismatch high")})
        if code == 1:
            auth = u.uint32("auth_stat")
            return ReplyHeader(xid, "denied", reject_status="AUTH_ERROR",
                               auth_status=AUTH_STATUS.get(auth, str(auth)))
        raise DecodeError(f"reject_stat {code} unknown at offset {u.pos - 4}")
    raise DecodeError(f"reply_stat {stat} unknown at offset 8")


# -- credentials ------------------------------------------------------------------------------
def _lk_owner(u: Unpacker) -> str:
    return u.opaque("lk_owner", 1024).hex()


def _groups(u: Unpacker, cap: int = 65536) -> list[int]:
    return u.array(lambda x: x.uint32("gid"), "groups", cap)


_CRED_V3 = struct.Struct(">iIIIIQI")    # pid uid gid flags ctime_nsec ctime_sec, groups count
_CRED_V2 = struct.Struct(">iIII")       # pid uid gid, groups count


def decode_cred(flavor: int, body: bytes) -> dict:
    """The credential as a dict: `flavor` (name) and, for the known flavors, its fields.
    A body that does not decode keeps the raw bytes (hex) and says why."""
    if flavor == AUTH_GLUSTERFS_V3 or flavor == AUTH_GLUSTERFS_V2:
        cred = _gluster_cred(flavor, body)
        if cred is not None:
            return cred
    return _decode_cred_slowly(flavor, body)


def _gluster_cred(flavor: int, body: bytes) -> dict | None:
    """A well-formed v2/v3 Gluster credential with a few Structs; None for anything else."""
    v3 = flavor == AUTH_GLUSTERFS_V3
    head = _CRED_V3 if v3 else _CRED_V2
    if len(body) < head.size:
        return None
    fields = head.unpack_from(body)
    ngroups = fields[-1]
    at = head.size + 4 * ngroups
    if ngroups > 65536 or at + 4 > len(body):
        return None
    groups = list(struct.unpack_from(f">{ngroups}I", body, head.size)) if ngroups else []
    owner_len = _MARK.unpack_from(body, at)[0]
    if owner_len > 1024 or at + 4 + owner_len + (-owner_len & 3) > len(body):
        return None
    lk_owner = body[at + 4:at + 4 + owner_len].hex()
    if v3:
        pid, uid, gid, flags, ctime_nsec, ctime_sec, _ = fields
        return {"flavor": "AUTH_GLUSTERFS_v3", "pid": pid, "uid": uid, "gid": gid, "flags": flags,
                "ctime_nsec": ctime_nsec, "ctime_sec": ctime_sec, "groups": groups,
                "lk_owner": lk_owner}
    pid, uid, gid, _ = fields
    return {"flavor": "AUTH_GLUSTERFS_v2", "pid": pid, "uid": uid, "gid": gid, "groups": groups,
            "lk_owner": lk_owner}


def _decode_cred_slowly(flavor: int, body: bytes) -> dict:
    cred: dict[str, Any] = {"flavor": FLAVORS.get(flavor, flavor)}
    u = Unpacker(body)
    try:
        if flavor == AUTH_NULL:
            pass
        elif flavor == AUTH_UNIX:
            cred.update(stamp=u.uint32("stamp"), machinename=u.string("machinename", 255),
                        uid=u.uint32("uid"), gid=u.uint32("gid"), groups=_groups(u, 16))
        elif flavor == AUTH_GLUSTERFS_V2:
            # rpc-common-xdr.x auth_glusterfs_parms_v2
            cred.update(pid=u.int32("pid"), uid=u.uint32("uid"), gid=u.uint32("gid"),
                        groups=_groups(u), lk_owner=_lk_owner(u))
        elif flavor == AUTH_GLUSTERFS_V3:
            # glusterfs4-xdr.x auth_glusterfs_params_v3
            cred.update(pid=u.int32("pid"), uid=u.uint32("uid"), gid=u.uint32("gid"),
                        flags=u.uint32("flags"), ctime_nsec=u.uint32("ctime_nsec"),
                        ctime_sec=u.uint64("ctime_sec"), groups=_groups(u), lk_owner=_lk_owner(u))
        elif flavor == AUTH_GLUSTERFS and len(body) == 88:
            # rpc-common-xdr.x auth_glusterfs_parms (v1): fixed 16 groups
            lk_owner = u.uint64("lk_owner")
            pid, uid, gid, ngrps = (u.uint32(n) for n in ("pid", "uid", "gid", "ngrps"))
            groups = [u.uint32("group") for _ in range(16)][:min(ngrps, 16)]
            cred.update(pid=pid, uid=uid, gid=gid, groups=groups, lk_owner=f"{lk_owner:016x}")
        elif body:
            cred["body"] = body.hex()
    except DecodeError as exc:
        cred["error"] = str(exc)
        cred["body"] = body.hex()
    return cred


# -- record marking -------------------------------------------------------------------------
_CALL_TAG = b"\0\0\0\0\0\0\0\x02"         # msg_type CALL, rpcvers 2 (8 bytes after the mark)
_REPLY_TAG = b"\0\0\0\x01\0\0\0"          # msg_type REPLY, reply_stat 0 or 1 follows
HUNT, MARK, BODY = "hunt", "mark", "body"


@dataclass(slots=True)
class Record:
    data: bytes             # the record, or its first KEEP_RECORD bytes
    length: int             # its length on the wire
    time_ns: int            # when its first byte arrived
    lost: int = 0           # bytes of it missing from the capture (gap inside)

    __reduce__ = _by_fields


@dataclass
class _Direction:
    """Framing state of one direction of one connection."""
    state: str = HUNT
    buf: bytearray = field(default_factory=bytearray)
    record: bytearray = field(default_factory=bytearray)
    record_len: int = 0         # bytes of the current record so far (kept or not)
    record_time: int = 0
    record_lost: int = 0
    frag_left: int = 0
    last_frag: bool = False
    fresh: bool = True          # nothing consumed yet and no gap: a record may start at byte 0
    buf_time: int = 0           # when the oldest byte in buf arrived
    consumed: int = 0           # stream offset of buf[0] (for messages)


class RpcSink:
    """StreamSink for ONC RPC over TCP. Never raises: damage goes to `diag`."""

    def __init__(self, source: str, diag: Diagnostics, *, max_pending: int = MAX_PENDING,
                 max_record: int = MAX_RECORD, details: bool | Collection[str] = True,
                 details_later: bool = False):
        """details: True decodes credentials, args and results of every RPC; False of none
        (a reply still gets op_ret/op_errno); a collection names the procedures to decode.
        details_later: an event left without them carries `DETAILS_LATER`, a function that
        returns the event as full decoding would have made it (events.with_details); it holds
        the record, so records longer than LATER_MAX are decoded at once instead."""
        self.source = source
        self.diag = diag
        self.details = details
        self._details_for = (frozenset(details) if not isinstance(details, bool)
                             else None if details else frozenset())
        self.details_later = details_later
        self.max_pending = max_pending
        self.max_record = max_record
        self._conns: OrderedDict[Conn, _ConnState] = OrderedDict()

    # -- StreamSink -------------------------------------------------------------------------
    def on_data(self, conn: Conn, from_client: bool, time_ns: int, data: bytes) -> list[dict]:
        st = self._state(conn)
        d = st.dirs[from_client]
        try:
            records = self._feed(conn, st, from_client, d, time_ns, data)
        except Exception as exc:   # a bug must not end the whole run: report it, resync
            self._internal_error(conn, d, exc)
            return []
        return self._records_to_events(conn, st, from_client, records)

    def on_gap(self, conn: Conn, from_client: bool, time_ns: int, missing: int) -> list[dict]:
        st = self._state(conn)
        d = st.dirs[from_client]
        try:
            records = self._gap(conn, from_client, d, missing)
        except Exception as exc:
            self._internal_error(conn, d, exc)
            return []
        return self._records_to_events(conn, st, from_client, records)

    def on_close(self, conn: Conn, time_ns: int) -> list[dict]:
        st = self._conns.pop(conn, None)
        if st is None:
            return []
        for from_client, d in st.dirs.items():
            left = len(d.buf) + (d.record_len if d.state == BODY else 0)
            if left:
                self._skipped(conn, from_client, left, "incomplete RPC record at connection end")
        return []

    # -- framing --------------------------------------------------------------------------
    def _whole_records(self, st: "_ConnState", from_client: bool, d: _Direction, time_ns: int,
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
                    or not self._plausible(st, from_client, data, start, min(HEADER_PEEK, length),
                                           strict=False):
                return None
            out.append(Record(data[start:pos], length, time_ns))
        # the state the general path leaves after whole records
        d.record_time = d.buf_time = time_ns
        d.frag_left, d.last_frag = 0, True
        d.consumed += end
        return out

    def _feed(self, conn: Conn, st: "_ConnState", from_client: bool, d: _Direction,
              time_ns: int, data: bytes) -> list[Record]:
        records = self._whole_records(st, from_client, d, time_ns, data)
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
                start, wait_from = self._hunt(st, from_client, d, i)
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
                    if not self._plausible(st, from_client, buf, i + 4, need, strict=False):
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

    def _end_fragment(self, d: _Direction) -> list[Record]:
        if not d.last_frag:
            d.state = MARK
            return []
        rec = Record(bytes(d.record), d.record_len, d.record_time, d.record_lost)
        d.record = bytearray()
        d.record_len = d.record_lost = 0
        d.state = MARK
        return [rec]

    def _desync(self, conn: Conn, from_client: bool, d: _Direction, why: str) -> None:
        self.diag.skip(f"rpc: lost record framing ({why}), resynchronizing",
                       self._where(conn, from_client, d))
        if d.record_len:
            self._skipped(conn, from_client, d.record_len, "bytes outside RPC records")
        d.record = bytearray()
        d.record_len = d.record_lost = 0
        d.state = HUNT

    def _hunt(self, st: "_ConnState", from_client: bool, d: _Direction,
              i: int) -> tuple[int | None, int | None]:
        """Look for a plausible record start at or after i.

        Returns (start, None) when found, (None, p) when the candidate at p needs more bytes
        to be judged, (None, None) when there is no candidate."""
        buf = d.buf
        # A stream that starts at a record boundary is the common case: try byte 0 itself.
        if d.fresh and i == 0 and self._mark_ok(st, from_client, buf, 0, strict=False):
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
            if self._mark_ok(st, from_client, buf, p, strict=True):
                return p, None
            pos = p + 1

    def _mark_ok(self, st: "_ConnState", from_client: bool, buf: bytearray, p: int,
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
        return self._plausible(st, from_client, buf, p + 4, need, strict)

    def _plausible(self, st: "_ConnState", from_client: bool, buf, at: int, n: int,
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
            return not strict or (not from_client, xid) in st.pending
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

    def _gap(self, conn: Conn, from_client: bool, d: _Direction, missing: int) -> list[Record]:
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

    # -- events ----------------------------------------------------------------------------
    def _records_to_events(self, conn: Conn, st: "_ConnState", from_client: bool,
                           records: list[Record]) -> list[dict]:
        events = []
        for rec in records:
            try:
                ev = self._record_event(conn, st, from_client, rec)
            except Exception as exc:
                self.diag.skip(f"rpc: internal error decoding a record: {type(exc).__name__}: {exc}",
                               f"conn {conn.number}")
                continue
            if ev is not None:
                events.append(ev)
        return events

    def _record_event(self, conn: Conn, st: "_ConnState", from_client: bool, rec: Record) -> dict | None:
        try:
            hdr = parse_header(rec.data)
        except DecodeError as exc:
            self.diag.skip("rpc: record is not an RPC message", f"conn {conn.number}: {exc}")
            return None
        src, dst = (conn.client, conn.server) if from_client else (conn.server, conn.client)
        if isinstance(hdr, CallHeader):
            return self._call_event(conn, st, from_client, rec, hdr, src, dst)
        return self._reply_event(conn, st, from_client, rec, hdr, src, dst)

    def _wants_details(self, procedure: str | None, rec: Record) -> bool:
        return (self._details_for is None or procedure in self._details_for
                or (self.details_later and len(rec.data) > LATER_MAX))

    def _call_event(self, conn, st, from_client, rec, hdr: CallHeader, src, dst) -> dict:
        info = programs.lookup(hdr.prog, hdr.vers, hdr.proc)
        if self._wants_details(info.procedure, rec):
            ev = _call_dict(self.source, rec, hdr, info, src, dst, conn.number, True)
        else:
            ev = _call_dict(self.source, rec, hdr, info, src, dst, conn.number, False)
            if self.details_later:
                ev[DETAILS_LATER] = partial(_call_dict, self.source, rec, hdr, info, src, dst,
                                            conn.number, True)
        if not info.expects_reply:
            return ev
        pending = st.pending
        key = (from_client, hdr.xid)
        pending.pop(key, None)
        pending[key] = _Pending(hdr.prog, hdr.vers, hdr.proc, info, rec.time_ns)
        if len(pending) > self.max_pending:
            pending.popitem(last=False)
            self.diag.skip("rpc: unanswered call forgotten (pending table full)", f"conn {conn.number}")
        return ev

    def _reply_event(self, conn, st, from_client, rec, hdr: ReplyHeader, src, dst) -> dict:
        call = st.pending.pop((not from_client, hdr.xid), None)
        if call is None or self._wants_details(call.info.procedure, rec):
            return _reply_dict(self.source, rec, hdr, call, src, dst, conn.number, True)
        ev = _reply_dict(self.source, rec, hdr, call, src, dst, conn.number, False)
        decoders = call.info.decoders
        if self.details_later and hdr.body_offset is not None and decoders is not None \
                and decoders.result is not None:     # else there is no result to add
            ev[DETAILS_LATER] = partial(_reply_dict, self.source, rec, hdr, call, src, dst,
                                        conn.number, True)
        return ev

    # -- bookkeeping ------------------------------------------------------------------------
    def _state(self, conn: Conn) -> "_ConnState":
        st = self._conns.get(conn)
        if st is not None:
            self._conns.move_to_end(conn)      # least recently active first
        else:
            st = self._conns[conn] = _ConnState()
            if len(self._conns) > MAX_CONNS:
                self._conns.popitem(last=False)
                self.diag.skip("rpc: connection state dropped (too many connections)")
        return st

    def _where(self, conn: Conn, from_client: bool, d: _Direction) -> str:
        side = f"{conn.client} -> {conn.server}" if from_client else f"{conn.server} -> {conn.client}"
        return f"conn {conn.number} ({side}) stream offset {d.consumed}"

    def _skipped(self, conn: Conn, from_client: bool, nbytes: int, reason: str) -> None:
        # Diagnostics counts occurrences; here the unit is bytes, so add them in one step.
        key = f"{reason} (bytes)"
        self.diag.counts[key] += nbytes
        self.diag.first_where.setdefault(key, f"conn {conn.number}")

    def _internal_error(self, conn: Conn, d: _Direction, exc: Exception) -> None:
        self.diag.skip(f"rpc: internal error: {type(exc).__name__}: {exc}", f"conn {conn.number}")
        d.buf.clear()
        d.record = bytearray()
        d.record_len = d.record_lost = 0
        d.state = HUNT
        d.fresh = False


@dataclass(slots=True)
class _Pending:
    prog: int
    vers: int
    proc: int
    info: programs.Lookup
    time_ns: int

    __reduce__ = _by_fields


class _ConnState:
    __slots__ = ("dirs", "pending")

    def __init__(self):
        self.dirs = {True: _Direction(), False: _Direction()}
        # (sent by client?, xid) -> the call, oldest first
        self.pending: OrderedDict[tuple[bool, int], _Pending] = OrderedDict()


def _call_dict(source: str, rec: Record, hdr: CallHeader, info, src, dst, conn: int,
               details: bool) -> dict:
    # a dict display in the event contract's key order (what make_event gives)
    ev = {"time_ns": rec.time_ns, "layer": "wire", "kind": "rpc.call", "source": source,
          "xid": hdr.xid, "program": info.program, "program_num": hdr.prog,
          "version": hdr.vers, "procedure": info.procedure, "procedure_num": hdr.proc,
          "src": src, "dst": dst, "conn": conn}
    if details:
        ev["cred"] = decode_cred(hdr.cred_flavor, hdr.cred_body)
        if info.decoders is not None and info.decoders.args is not None:
            args, error = _decode_body(info.decoders.args, rec, hdr.body_offset)
            ev["args"] = args
            if error:
                ev["decode_error"] = error
        else:
            ev["args"] = {}
    if rec.length > len(rec.data) and not rec.lost:
        ev["payload_bytes"] = rec.length - len(rec.data)
    return ev


def _reply_dict(source: str, rec: Record, hdr: ReplyHeader, call: "_Pending | None", src, dst,
                conn: int, details: bool) -> dict:
    if call is not None:
        ev = {"time_ns": rec.time_ns, "layer": "wire", "kind": "rpc.reply",
              "source": source, "xid": hdr.xid, "program": call.info.program,
              "program_num": call.prog, "version": call.vers,
              "procedure": call.info.procedure, "procedure_num": call.proc,
              "src": src, "dst": dst, "conn": conn, "reply_status": hdr.reply_status}
    else:
        ev = {"time_ns": rec.time_ns, "layer": "wire", "kind": "rpc.reply",
              "source": source, "xid": hdr.xid, "program": None, "program_num": None,
              "version": None, "procedure": None, "procedure_num": None,
              "src": src, "dst": dst, "conn": conn, "reply_status": hdr.reply_status}
    if hdr.reply_status == "accepted":
        ev["accept_status"] = hdr.accept_status
    else:
        ev["reject_status"] = hdr.reject_status
        if hdr.auth_status is not None:
            ev["auth_status"] = hdr.auth_status
    if hdr.mismatch is not None:
        ev["mismatch"] = hdr.mismatch
    if call is None:
        return ev
    ev["call_time_ns"] = call.time_ns
    ev["latency_ns"] = rec.time_ns - call.time_ns
    decoders = call.info.decoders
    if hdr.body_offset is None or decoders is None:
        return ev
    if not details or decoders.result is None:
        status = _status(decoders, rec, hdr.body_offset)
        if status:
            _set_status(ev, status)
        return ev
    result, error = _decode_body(decoders.result, rec, hdr.body_offset)
    if error:   # what can still be read: op_ret/op_errno come first
        result = _status(decoders, rec, hdr.body_offset) or result
    _set_status(ev, result)
    ev["result"] = result
    if error:
        ev["decode_error"] = error
    return ev


_CALL_LATER = struct.Struct(">qQQIIIIIIII")
_REPLY_LATER = struct.Struct(">qQQIIIIIq")


def portable_later(later: partial) -> tuple:
    """An event's DETAILS_LATER as (function, plain values...), one bytes blob holding the
    record: what another process unpickles fast (see events.with_details)."""
    if later.func is _call_dict:
        source, rec, hdr, info, src, dst, conn, _ = later.args
        blob = _CALL_LATER.pack(rec.time_ns, rec.length, rec.lost, hdr.xid, hdr.prog, hdr.vers,
                                hdr.proc, hdr.cred_flavor, hdr.verf_flavor, hdr.body_offset,
                                len(hdr.cred_body)) + hdr.cred_body + rec.data
        return _call_from_blob, source, src, dst, conn, blob
    source, rec, hdr, call, src, dst, conn, _ = later.args        # _reply_dict, SUCCESS
    blob = _REPLY_LATER.pack(rec.time_ns, rec.length, rec.lost, hdr.xid, hdr.body_offset,
                             call.prog, call.vers, call.proc, call.time_ns) + rec.data
    return _reply_from_blob, source, src, dst, conn, blob


def _call_from_blob(source: str, src: str, dst: str, conn: int, blob: bytes) -> dict:
    (time_ns, length, lost, xid, prog, vers, proc, flavor, verf_flavor, body_offset,
     cred_len) = _CALL_LATER.unpack_from(blob)
    at = _CALL_LATER.size
    hdr = CallHeader(xid, 2, prog, vers, proc, flavor, blob[at:at + cred_len], verf_flavor,
                     body_offset)
    rec = Record(blob[at + cred_len:], length, time_ns, lost)
    return _call_dict(source, rec, hdr, programs.lookup(prog, vers, proc), src, dst, conn, True)


def _reply_from_blob(source: str, src: str, dst: str, conn: int, blob: bytes) -> dict:
    time_ns, length, lost, xid, body_offset, prog, vers, proc, call_time = \
        _REPLY_LATER.unpack_from(blob)
    hdr = ReplyHeader(xid, "accepted", accept_status="SUCCESS", body_offset=body_offset)
    call = _Pending(prog, vers, proc, programs.lookup(prog, vers, proc), call_time)
    rec = Record(blob[_REPLY_LATER.size:], length, time_ns, lost)
    return _reply_dict(source, rec, hdr, call, src, dst, conn, True)


def _status(decoders, rec: Record, offset: int) -> dict | None:
    """op_ret/op_errno alone, read without the rest of the result; None when unreadable."""
    if decoders.status is None:
        return None
    try:
        return decoders.status(Unpacker(rec.data, offset))
    except DecodeError:
        return None


def _set_status(ev: dict, result: dict) -> None:
    if "op_ret" in result:
        ev["op_ret"] = result.pop("op_ret")
    if "op_errno" in result:
        ev["op_errno"] = result.pop("op_errno")
        # Gluster sets op_errno only on failure; a successful reply may carry a stale one
        # (SETVOLUME answers op_ret 0 with op_errno 22): not named then.
        failed = ev.get("op_ret", -1) < 0
        ev["errno_name"] = errno_name(ev["op_errno"]) if failed else None


def _decode_body(decoder, rec: Record, offset: int) -> tuple[dict, str | None]:
    """Run a program decoder over a record body: (fields, None) or (partial {}, message)."""
    try:
        return decoder(Unpacker(rec.data, offset)), None
    except DecodeError as exc:
        msg = str(exc)
        if rec.lost:
            msg += f" ({rec.lost} bytes of this record were not captured)"
        elif rec.length > len(rec.data):
            msg += f" (only the first {len(rec.data)} of {rec.length} bytes were kept)"
        return {}, msg
