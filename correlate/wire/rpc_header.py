"""ONC RPC (RFC 5531) message headers: the protocol's constants and the call / reply header
of one record, read from untrusted bytes."""
from __future__ import annotations

import struct

from ..errors import DecodeError
from ..xdr import Unpacker

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

# -- headers --------------------------------------------------------------------------------
# Plain classes with their own __init__ (a dataclass's is generated code the compiled build
# cannot compile: it ran interpreted for every record); C structs in the compiled build
# (rpc_header.pxd).
class CallHeader:
    __slots__ = ("xid", "rpcvers", "prog", "vers", "proc", "cred_flavor", "cred_body",
                 "verf_flavor", "body_offset")

    def __init__(self, xid: int, rpcvers: int, prog: int, vers: int, proc: int, cred_flavor: int,
                 cred_body: bytes, verf_flavor: int, body_offset: int):
        self.xid = xid
        self.rpcvers = rpcvers
        self.prog = prog
        self.vers = vers
        self.proc = proc
        self.cred_flavor = cred_flavor
        self.cred_body = cred_body
        self.verf_flavor = verf_flavor
        self.body_offset = body_offset

    def fields(self) -> tuple:
        return (self.xid, self.rpcvers, self.prog, self.vers, self.proc, self.cred_flavor,
                self.cred_body, self.verf_flavor, self.body_offset)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.fields() == other.fields()

    def __repr__(self) -> str:
        return "CallHeader" + repr(self.fields())


class ReplyHeader:
    __slots__ = ("xid", "reply_status", "accept_status", "reject_status", "auth_status",
                 "mismatch", "body_offset")

    def __init__(self, xid: int, reply_status: str, accept_status: str | None = None,
                 reject_status: str | None = None, auth_status: str | None = None,
                 mismatch: dict | None = None, body_offset: int | None = None):
        self.xid = xid
        self.reply_status = reply_status      # "accepted" | "denied"
        self.accept_status = accept_status
        self.reject_status = reject_status
        self.auth_status = auth_status
        self.mismatch = mismatch              # {"low", "high"} for PROG_MISMATCH / RPC_MISMATCH
        self.body_offset = body_offset        # where the results start (SUCCESS only)

    def fields(self) -> tuple:
        return (self.xid, self.reply_status, self.accept_status, self.reject_status,
                self.auth_status, self.mismatch, self.body_offset)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.fields() == other.fields()

    def __repr__(self) -> str:
        return "ReplyHeader" + repr(self.fields())


def _opaque_auth(u: Unpacker, what: str) -> tuple[int, bytes]:
    flavor = u.uint32(f"{what} flavor")
    body = u.opaque(f"{what} body", MAX_AUTH_BYTES)
    return flavor, body


# xid, msg_type, then for a call: rpcvers prog vers proc cred.flavor cred.length; for a reply:
# reply_stat verf.flavor verf.length accept_stat (when the verifier is empty) and two more.
_HEADER = struct.Struct(">IIIIIIII")
_AUTH = struct.Struct(">II")          # the verifier's flavor and length, after the credential


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
