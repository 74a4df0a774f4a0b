"""ONC RPC over TCP as events: RpcSink, the StreamSink that turns the records of reassembled
TCP streams into rpc.call / rpc.reply events, matching each reply to its call by xid and
decoding credentials, arguments and results with the Gluster program tables.

record_marking.py cuts the streams into records; rpc_header.py reads their headers;
rpc_cred.py their credentials.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Collection
from functools import partial

from ..diagnostics import Diagnostics
from ..errors import DecodeError
from ..events import DETAILS_LATER
from ..gluster import programs
from ..gluster.errnos import errno_name
from ..xdr import Unpacker
from .model import Conn
from .record_marking import MAX_RECORD, Direction, Record, RecordFramer
from .rpc_cred import decode_cred
from .rpc_header import CallHeader, ReplyHeader, parse_header
from .tls import TlsConn, starts_tls

MAX_PENDING = 4096              # unanswered calls remembered per connection
# ... and over all connections, in bytes as estimated below: a call costs its bookkeeping,
# plus its decoded context (credential, identifying args) or the record it holds to decode
# that later (measured with tracemalloc on a flood of unanswered LOOKUPs). 8 MiB keeps about
# 4,000 detailed calls or 20,000 small lean ones: far more than Gluster keeps in flight.
MAX_PENDING_BYTES = 8 << 20
PENDING_COST = 320              # _Pending, its key and its table entry
CONTEXT_COST = 1600             # a decoded credential and identifying args (dicts, strings)
MAX_CONNS = 65536               # connections with state at once
LATER_MAX = 4096                # a record held to decode its details later is at most this


class RpcSink:
    """StreamSink for ONC RPC over TCP. Never raises: damage goes to `diag`."""

    def __init__(self, source: str, diag: Diagnostics, *, max_pending: int = MAX_PENDING,
                 max_record: int = MAX_RECORD, details: bool | Collection[str] = True,
                 details_later: bool = False, keylog=None):
        """details: True decodes credentials, args and results of every RPC; False of none
        (a reply still gets op_ret/op_errno); a collection names the procedures to decode.
        details_later: an event left without them carries `DETAILS_LATER`, a function that
        returns the event as full decoding would have made it (events.with_details); it holds
        the record, so records longer than LATER_MAX are decoded at once instead.
        keylog (tls_keys.KeyLog): TLS connections whose keys it has are decrypted and decoded."""
        self.source = source
        self.diag = diag
        self.details = details
        self._details_for = (frozenset(details) if not isinstance(details, bool)
                             else None if details else frozenset())
        self.details_later = details_later
        self.keylog = keylog
        self.max_pending = max_pending
        self.framer = RecordFramer(diag, max_record)
        self._conns: OrderedDict[Conn, _ConnState] = OrderedDict()
        self._pending_bytes = 0        # estimated cost of the calls waiting in all tables

    # -- StreamSink -------------------------------------------------------------------------
    def on_data(self, conn: Conn, from_client: bool, time_ns: int, data: bytes) -> list[dict]:
        st = self._state(conn)
        d = st.dirs.get(from_client)
        if d is None:
            # A direction is TLS or RPC from its first bytes on (the other direction may
            # still speak RPC: the one side plaintext failure)
            d = st.direction(from_client)
            if starts_tls(data):
                if st.tls is None:
                    st.tls = TlsConn(self.source, self.keylog,
                                     lambda sent_by_client, t, plain, conn=conn, st=st:
                                     self._plaintext(conn, st, sent_by_client, t, plain))
                    if (not from_client) in st.dirs:
                        st.tls.plain.add(not from_client)
                return st.tls.feed(conn, from_client, time_ns, data)
            if st.tls is not None:
                st.tls.plain.add(from_client)
        elif st.tls is not None and from_client not in st.tls.plain \
                and st.tls.sides[from_client].bytes:
            return st.tls.feed(conn, from_client, time_ns, data)
        try:
            records = self.framer.feed(conn, st.pending, from_client, d, time_ns, data)
        except Exception as exc:   # a bug must not end the whole run: report it, resync
            self.framer.reset(conn, d, exc)
            return []
        return self._records_to_events(conn, st, from_client, records)

    def _plaintext(self, conn: Conn, st: "_ConnState", from_client: bool, time_ns: int,
                   data: bytes) -> list[dict]:
        """A TLS connection's decrypted bytes: framed and decoded as a plaintext one's."""
        d = st.dirs.get(from_client) or st.direction(from_client)
        try:
            records = self.framer.feed(conn, st.pending, from_client, d, time_ns, data)
        except Exception as exc:
            self.framer.reset(conn, d, exc)
            return []
        return self._records_to_events(conn, st, from_client, records)

    def on_gap(self, conn: Conn, from_client: bool, time_ns: int, missing: int) -> list[dict]:
        st = self._state(conn)
        if st.tls is not None and st.tls.sides[from_client].bytes:
            st.tls.gap(from_client)
            return []
        d = st.dirs.get(from_client) or st.direction(from_client)
        try:
            records = self.framer.gap(conn, from_client, d, missing)
        except Exception as exc:
            self.framer.reset(conn, d, exc)
            return []
        return self._records_to_events(conn, st, from_client, records)

    def on_close(self, conn: Conn, time_ns: int) -> list[dict]:
        st = self._conns.pop(conn, None)
        if st is not None:
            self._pending_bytes -= st.pending_bytes
            self.framer.close(conn, st.dirs)
            if st.tls is not None:
                return [st.tls.close(conn, time_ns)]
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
        old = pending.pop(key, None)
        if old is not None:
            self._forgotten(st, old)
        context, later = _context(ev), ev.get(DETAILS_LATER)
        call = pending[key] = _Pending(hdr.prog, hdr.vers, hdr.proc, info, rec.time_ns, context,
                                       later, PENDING_COST + (CONTEXT_COST if context is not None
                                       else len(rec.data) if later is not None else 0))
        st.pending_bytes += call.cost
        self._pending_bytes += call.cost
        # Over a bound, the connection adding calls gives up its oldest: the calls waiting
        # longest elsewhere are kept (their replies are the likeliest still to come).
        while len(pending) > self.max_pending or (self._pending_bytes > MAX_PENDING_BYTES
                                                  and pending):
            self._forgotten(st, pending.popitem(last=False)[1])
            self.diag.skip("rpc: unanswered call forgotten (pending table full)", f"conn {conn.number}")
        return ev

    def _forgotten(self, st: "_ConnState", call: "_Pending") -> None:
        st.pending_bytes -= call.cost
        self._pending_bytes -= call.cost

    def _reply_event(self, conn, st, from_client, rec, hdr: ReplyHeader, src, dst) -> dict:
        call = st.pending.pop((not from_client, hdr.xid), None)
        if call is not None:
            self._forgotten(st, call)
        if call is None or self._wants_details(call.info.procedure, rec):
            return _reply_dict(self.source, rec, hdr, call, src, dst, conn.number, True)
        ev = _reply_dict(self.source, rec, hdr, call, src, dst, conn.number, False)
        decoders = call.info.decoders
        has_result = hdr.body_offset is not None and decoders is not None \
            and decoders.result is not None
        if self.details_later and (has_result or call.later is not None):
            # a result to decode, or the call's context (cred, identifying args) to carry
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
                self._pending_bytes -= self._conns.popitem(last=False)[1].pending_bytes
                self.diag.skip("rpc: connection state dropped (too many connections)")
        return st

class _Pending:
    """A call waiting for its reply (a C struct in the compiled build: rpc.pxd)."""
    __slots__ = ("prog", "vers", "proc", "info", "time_ns", "context", "later", "cost")

    def __init__(self, prog: int, vers: int, proc: int, info: programs.Lookup, time_ns: int,
                 context: dict | None = None, later=None, cost: int = 0):
        self.prog = prog
        self.vers = vers
        self.proc = proc
        self.info = info
        self.time_ns = time_ns
        self.context = context    # what the reply carries of its call (cred, identifying args)
        self.later = later        # a lean call's DETAILS_LATER: its context, when a reply needs it
        self.cost = cost          # its estimated bytes in the pending table

    def call_context(self) -> dict | None:
        if self.context is None and self.later is not None:
            self.context = _context(self.later())
            self.later = None
        return self.context


# Arguments that say what a call is about: a reply carries them, so filters (--pid, --gfid,
# --path) and detectors find both halves. Not the rest (a WRITE's data, a SETATTR's times).
IDENTIFYING_ARGS = ("gfid", "pargfid", "oldgfid", "newgfid", "path", "bname", "name",
                    "oldbname", "newbname", "fd", "brick", "key", "volfile-key",
                    "remote-subvolume")


def _context(ev: dict) -> dict | None:
    if "cred" not in ev:
        return None
    args = ev.get("args") or {}
    return {"cred": ev["cred"], "args": {k: args[k] for k in IDENTIFYING_ARGS if k in args}}


class _ConnState:
    __slots__ = ("dirs", "pending", "pending_bytes", "tls")

    def __init__(self):
        # sent by client? -> framing state, made when that side first sends (many
        # connections of a flood never hear back)
        self.dirs: dict[bool, Direction] = {}
        # (sent by client?, xid) -> the call, oldest first
        self.pending: OrderedDict[tuple[bool, int], _Pending] = OrderedDict()
        self.pending_bytes = 0
        self.tls: TlsConn | None = None      # set when the connection's first bytes are TLS

    def direction(self, from_client: bool) -> Direction:
        d = self.dirs[from_client] = Direction()
        return d


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
    context = call.call_context() if details else None
    if context is not None:
        ev["cred"], ev["args"] = context["cred"], context["args"]
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
    record: what another process unpickles fast (see events.with_details). Nothing is
    decoded here: a reply carries its call's context as it is, or, for a lean call, the
    call's own portable form, to be decoded there if ever."""
    if later.func is _call_dict:
        source, rec, hdr, info, src, dst, conn, _ = later.args
        blob = _CALL_LATER.pack(rec.time_ns, rec.length, rec.lost, hdr.xid, hdr.prog, hdr.vers,
                                hdr.proc, hdr.cred_flavor, hdr.verf_flavor, hdr.body_offset,
                                len(hdr.cred_body)) + hdr.cred_body + rec.data
        return _call_from_blob, source, src, dst, conn, blob
    source, rec, hdr, call, src, dst, conn, _ = later.args        # _reply_dict
    if hdr.accept_status != "SUCCESS" or hdr.body_offset is None:
        return dict, later()      # a rare failed reply (denied, ...): not the blob's shape
    blob = _REPLY_LATER.pack(rec.time_ns, rec.length, rec.lost, hdr.xid, hdr.body_offset,
                             call.prog, call.vers, call.proc, call.time_ns) + rec.data
    call_later = portable_later(call.later) if call.later is not None else None
    return _reply_from_blob, source, src, dst, conn, blob, call.context, call_later


def _call_from_blob(source: str, src: str, dst: str, conn: int, blob: bytes) -> dict:
    (time_ns, length, lost, xid, prog, vers, proc, flavor, verf_flavor, body_offset,
     cred_len) = _CALL_LATER.unpack_from(blob)
    at = _CALL_LATER.size
    hdr = CallHeader(xid, 2, prog, vers, proc, flavor, blob[at:at + cred_len], verf_flavor,
                     body_offset)
    rec = Record(blob[at + cred_len:], length, time_ns, lost)
    return _call_dict(source, rec, hdr, programs.lookup(prog, vers, proc), src, dst, conn, True)


def _reply_from_blob(source: str, src: str, dst: str, conn: int, blob: bytes,
                     context: dict | None = None, call_later: tuple | None = None) -> dict:
    time_ns, length, lost, xid, body_offset, prog, vers, proc, call_time = \
        _REPLY_LATER.unpack_from(blob)
    hdr = ReplyHeader(xid, "accepted", accept_status="SUCCESS", body_offset=body_offset)
    later = partial(call_later[0], *call_later[1:]) if call_later is not None else None
    call = _Pending(prog, vers, proc, programs.lookup(prog, vers, proc), call_time, context,
                    later)
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
