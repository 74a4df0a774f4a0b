"""ONC RPC record marking, headers, credentials and RpcSink, on synthetic bytes.

The builders at the top are shared with the other RPC/Gluster tests.
"""
import struct

import pytest

from correlate.diagnostics import Diagnostics
from correlate.wire.model import Conn
from correlate.wire.rpc import RpcSink
from correlate.wire.rpc_cred import decode_cred
from correlate.wire.rpc_header import AUTH_GLUSTERFS_V2, AUTH_GLUSTERFS_V3, AUTH_UNIX, parse_header
from correlate.xdr import Packer

FOP, HNDSK, PMAP, DUMP = 1298437, 14398633, 34123456, 123451501


# -- builders ---------------------------------------------------------------------------------
def record(msg: bytes, fragments: list[int] | None = None) -> bytes:
    """Frame a message with record marks; `fragments` gives the sizes of all but the last."""
    out, pos = b"", 0
    for size in fragments or []:
        out += struct.pack(">I", size) + msg[pos:pos + size]
        pos += size
    rest = msg[pos:]
    return out + struct.pack(">I", 0x80000000 | len(rest)) + rest


def cred_v3(pid=1234, uid=0, gid=0, groups=(), lk_owner=b"\x01\x02", flags=0,
            ctime_sec=1700000000, ctime_nsec=5) -> tuple[int, bytes]:
    p = Packer().int32(pid).uint32(uid).uint32(gid).uint32(flags).uint32(ctime_nsec).uint64(ctime_sec)
    p.uint32(len(groups))
    for g in groups:
        p.uint32(g)
    return AUTH_GLUSTERFS_V3, p.opaque(lk_owner).bytes()


def cred_v2(pid=99, uid=1000, gid=1000, groups=(10,), lk_owner=b"\xab") -> tuple[int, bytes]:
    p = Packer().int32(pid).uint32(uid).uint32(gid).uint32(len(groups))
    for g in groups:
        p.uint32(g)
    return AUTH_GLUSTERFS_V2, p.opaque(lk_owner).bytes()


def cred_unix(stamp=7, machine="client1", uid=1000, gid=100, groups=(4, 24)) -> tuple[int, bytes]:
    p = Packer().uint32(stamp).string(machine).uint32(uid).uint32(gid).uint32(len(groups))
    for g in groups:
        p.uint32(g)
    return AUTH_UNIX, p.bytes()


def call_msg(xid, prog, vers, proc, args=b"", cred=(0, b""), rpcvers=2) -> bytes:
    p = Packer().uint32(xid).uint32(0).uint32(rpcvers).uint32(prog).uint32(vers).uint32(proc)
    p.uint32(cred[0]).opaque(cred[1]).uint32(0).opaque(b"")
    return p.raw(args).bytes()


def reply_msg(xid, body=b"", accept_stat=0, mismatch=None) -> bytes:
    p = Packer().uint32(xid).uint32(1).uint32(0).uint32(0).opaque(b"").uint32(accept_stat)
    if mismatch:
        p.uint32(mismatch[0]).uint32(mismatch[1])
    return p.raw(body).bytes()


def denied_rpc_mismatch(xid, low, high) -> bytes:
    return Packer().uint32(xid).uint32(1).uint32(1).uint32(0).uint32(low).uint32(high).bytes()


def denied_auth(xid, auth_stat) -> bytes:
    return Packer().uint32(xid).uint32(1).uint32(1).uint32(1).uint32(auth_stat).bytes()


CLIENT, SERVER = "127.0.0.1:49150", "127.0.0.2:24007"


def new_sink():
    diag = Diagnostics("test")
    return RpcSink("test", diag), diag, Conn(CLIENT, SERVER, 1)


def feed(sink, conn, from_client, data, t=1_000, chunks=None):
    """Feed bytes in one piece, or split at the given chunk size."""
    events = []
    if chunks is None:
        return sink.on_data(conn, from_client, t, data)
    for i in range(0, len(data), chunks):
        events += sink.on_data(conn, from_client, t + i, data[i:i + chunks])
    return events


def ping_call(xid):
    return record(call_msg(xid, DUMP, 1, 2, cred=cred_v3()))


def ping_reply(xid):
    return record(reply_msg(xid, Packer().int32(0).int32(0).opaque(b"").bytes()))


# -- headers and credentials ------------------------------------------------------------------
def test_parse_call_header():
    h = parse_header(call_msg(0x1234, FOP, 400, 38, b"ARGS", cred=cred_v3()))
    assert (h.xid, h.rpcvers, h.prog, h.vers, h.proc) == (0x1234, 2, FOP, 400, 38)
    assert h.cred_flavor == AUTH_GLUSTERFS_V3
    assert call_msg(0x1234, FOP, 400, 38, b"ARGS", cred=cred_v3())[h.body_offset:] == b"ARGS"


@pytest.mark.parametrize("msg,fields", [
    (reply_msg(1, accept_stat=1), {"reply_status": "accepted", "accept_status": "PROG_UNAVAIL"}),
    (reply_msg(1, accept_stat=2, mismatch=(1, 2)),
     {"accept_status": "PROG_MISMATCH", "mismatch": {"low": 1, "high": 2}}),
    (reply_msg(1, accept_stat=3), {"accept_status": "PROC_UNAVAIL"}),
    (reply_msg(1, accept_stat=4), {"accept_status": "GARBAGE_ARGS"}),
    (reply_msg(1, accept_stat=5), {"accept_status": "SYSTEM_ERR"}),
    (denied_rpc_mismatch(1, 2, 2),
     {"reply_status": "denied", "reject_status": "RPC_MISMATCH", "mismatch": {"low": 2, "high": 2}}),
    (denied_auth(1, 2), {"reply_status": "denied", "reject_status": "AUTH_ERROR",
                         "auth_status": "AUTH_REJECTEDCRED"}),
    (denied_auth(1, 1), {"auth_status": "AUTH_BADCRED"}),
])
def test_parse_reply_statuses(msg, fields):
    h = parse_header(msg)
    for k, v in fields.items():
        assert getattr(h, k) == v


def test_credential_glusterfs_v3():
    c = decode_cred(*cred_v3(pid=-5, uid=1000, gid=100, groups=(1, 2, 3), lk_owner=b"\xde\xad",
                             flags=1, ctime_sec=1700000001, ctime_nsec=42))
    assert c == {"flavor": "AUTH_GLUSTERFS_v3", "pid": -5, "uid": 1000, "gid": 100, "flags": 1,
                 "ctime_nsec": 42, "ctime_sec": 1700000001, "groups": [1, 2, 3], "lk_owner": "dead"}


def test_credential_glusterfs_v2():
    c = decode_cred(*cred_v2())
    assert c == {"flavor": "AUTH_GLUSTERFS_v2", "pid": 99, "uid": 1000, "gid": 1000,
                 "groups": [10], "lk_owner": "ab"}


def test_credential_unix_and_null():
    c = decode_cred(*cred_unix())
    assert c == {"flavor": "AUTH_UNIX", "stamp": 7, "machinename": "client1", "uid": 1000,
                 "gid": 100, "groups": [4, 24]}
    assert decode_cred(0, b"") == {"flavor": "AUTH_NULL"}


def test_credential_glusterfs_v1_fixed_groups():
    body = Packer().uint64(0xabc).uint32(7).uint32(1).uint32(2).uint32(2)
    for g in range(16):
        body.uint32(g + 100)
    c = decode_cred(5, body.bytes())
    assert c == {"flavor": "AUTH_GLUSTERFS", "pid": 7, "uid": 1, "gid": 2, "groups": [100, 101],
                 "lk_owner": "0000000000000abc"}


def test_broken_credential_keeps_raw_bytes():
    flavor, body = cred_v3()
    c = decode_cred(flavor, body[:10])
    assert c["flavor"] == "AUTH_GLUSTERFS_v3" and "error" in c and c["body"] == body[:10].hex()


# -- the sink: matching, latency, directions ----------------------------------------------------
def test_call_and_reply_are_matched_with_latency():
    sink, diag, conn = new_sink()
    [call] = sink.on_data(conn, True, 1_000, ping_call(77))
    [reply] = sink.on_data(conn, False, 4_500, ping_reply(77))
    assert call["kind"] == "rpc.call" and call["layer"] == "wire" and call["source"] == "test"
    assert (call["program"], call["program_num"], call["version"]) == ("GF-DUMP", DUMP, 1)
    assert (call["procedure"], call["procedure_num"]) == ("PING", 2)
    assert (call["src"], call["dst"], call["conn"]) == (CLIENT, SERVER, 1)
    assert call["cred"]["flavor"] == "AUTH_GLUSTERFS_v3" and call["cred"]["pid"] == 1234
    assert reply["kind"] == "rpc.reply" and reply["procedure"] == "PING"
    assert (reply["src"], reply["dst"]) == (SERVER, CLIENT)
    assert reply["reply_status"] == "accepted" and reply["accept_status"] == "SUCCESS"
    assert reply["call_time_ns"] == 1_000 and reply["latency_ns"] == 3_500
    assert reply["op_ret"] == 0 and reply["op_errno"] == 0
    assert not diag.counts


def test_unmatched_reply_is_reported_without_program():
    sink, diag, conn = new_sink()
    # a call first so the stream is in sync, then a reply nobody asked for
    sink.on_data(conn, True, 1, ping_call(1))
    sink.on_data(conn, False, 2, ping_reply(1))
    [reply] = sink.on_data(conn, False, 3, ping_reply(999))
    assert reply["xid"] == 999 and reply["program"] is None and reply["procedure"] is None
    assert "latency_ns" not in reply


def test_reply_at_stream_start_without_its_call_is_still_reported():
    sink, diag, conn = new_sink()
    [reply] = sink.on_data(conn, False, 3, ping_reply(5))
    assert reply["xid"] == 5 and reply["program"] is None


def test_callback_call_from_server_side():
    """Gluster servers call their clients (GF_CBK): src/dst follow the sender."""
    sink, diag, conn = new_sink()
    [ev] = sink.on_data(conn, False, 1, record(call_msg(3, 52743234, 1, 1)))
    assert ev["program"] == "GlusterFS Callback" and ev["procedure"] == "FETCHSPEC"
    assert (ev["src"], ev["dst"]) == (SERVER, CLIENT)
    assert not sink._conns[conn].pending        # callbacks are never answered: not kept
    # the same xid from the client side is a different call
    [mine] = sink.on_data(conn, True, 2, ping_call(3))
    [reply] = sink.on_data(conn, False, 5, ping_reply(3))
    assert reply["procedure"] == "PING" and reply["latency_ns"] == 3


def test_denied_replies():
    sink, diag, conn = new_sink()
    sink.on_data(conn, True, 1, ping_call(10) + ping_call(11))
    evs = sink.on_data(conn, False, 2, record(denied_rpc_mismatch(10, 2, 2)) + record(denied_auth(11, 2)))
    assert [e["reply_status"] for e in evs] == ["denied", "denied"]
    assert evs[0]["reject_status"] == "RPC_MISMATCH" and evs[0]["mismatch"] == {"low": 2, "high": 2}
    assert evs[1]["reject_status"] == "AUTH_ERROR" and evs[1]["auth_status"] == "AUTH_REJECTEDCRED"
    assert evs[1]["procedure"] == "PING" and "op_ret" not in evs[1]


def test_unknown_program_call_is_kept():
    sink, diag, conn = new_sink()
    [ev] = sink.on_data(conn, True, 1, record(call_msg(1, 100003, 3, 1, b"\0" * 8)))
    assert ev["program"] is None and ev["program_num"] == 100003 and ev["args"] == {}


def test_unknown_version_names_program_but_not_procedure():
    sink, diag, conn = new_sink()
    [ev] = sink.on_data(conn, True, 1, record(call_msg(1, FOP, 999, 38)))
    assert ev["program"] == "GlusterFS" and ev["procedure"] is None and ev["procedure_num"] == 38


def test_pending_table_is_bounded():
    diag = Diagnostics("t")
    sink, conn = RpcSink("t", diag, max_pending=3), Conn(CLIENT, SERVER, 1)
    for xid in range(5):
        sink.on_data(conn, True, xid, ping_call(xid))
    assert len(sink._conns[conn].pending) == 3
    assert sum(v for k, v in diag.counts.items() if "forgotten" in k) == 2
    [old] = sink.on_data(conn, False, 9, ping_reply(0))
    assert old["program"] is None          # forgotten, still reported
    [recent] = sink.on_data(conn, False, 9, ping_reply(4))
    assert recent["procedure"] == "PING"


# -- record marking ---------------------------------------------------------------------------
def test_multi_fragment_record():
    sink, diag, conn = new_sink()
    msg = call_msg(42, DUMP, 1, 1, Packer().uint64(9).bytes(), cred=cred_v3())
    [ev] = sink.on_data(conn, True, 1, record(msg, fragments=[5, 17, 1]))
    assert ev["xid"] == 42 and ev["procedure"] == "DUMP" and ev["args"] == {"gfs_id": 9}


def test_record_split_byte_by_byte():
    sink, diag, conn = new_sink()
    data = ping_call(1) + record(call_msg(2, DUMP, 1, 1, Packer().uint64(3).bytes()), [7, 9])
    evs = feed(sink, conn, True, data, chunks=1)
    assert [e["xid"] for e in evs] == [1, 2]
    assert evs[1]["args"] == {"gfs_id": 3}
    assert not diag.counts


def test_message_time_is_when_its_first_byte_arrived():
    sink, diag, conn = new_sink()
    data = ping_call(1)
    assert sink.on_data(conn, True, 100, data[:10]) == []
    [ev] = sink.on_data(conn, True, 200, data[10:])
    assert ev["time_ns"] == 100


def test_oversized_record_mark_resyncs():
    diag = Diagnostics("t")
    sink, conn = RpcSink("t", diag, max_record=1024), Conn(CLIENT, SERVER, 1)
    sink.on_data(conn, True, 1, ping_call(1))
    bad = struct.pack(">I", 0x80000000 | 5000) + b"\0" * 40
    evs = sink.on_data(conn, True, 2, bad + ping_call(2))
    assert [e["xid"] for e in evs] == [2]
    assert any("lost record framing" in k for k in diag.counts)
    assert sum(v for k, v in diag.counts.items() if k.endswith("(bytes)")) == len(bad)


def test_resync_after_garbage_at_stream_start():
    sink, diag, conn = new_sink()
    garbage = bytes(range(256)) * 3 + b"\x80\x00"       # the tail of some earlier record
    evs = sink.on_data(conn, True, 1, garbage + ping_call(5) + ping_call(6))
    assert [e["xid"] for e in evs] == [5, 6]
    skipped = sum(v for k, v in diag.counts.items() if k.endswith("(bytes)"))
    assert skipped == len(garbage)


def test_resync_accepts_reply_only_when_its_call_is_pending():
    sink, diag, conn = new_sink()
    sink.on_data(conn, True, 1, ping_call(21))
    junk = b"\x13" * 50
    evs = sink.on_data(conn, False, 2, junk + ping_reply(20) + ping_reply(21))
    # the reply to 20 cannot be told from garbage while hunting; the one to 21 can
    assert [e["xid"] for e in evs] == [21]
    assert evs[0]["procedure"] == "PING"


def test_gap_inside_a_fragment_keeps_framing_and_flags_the_record():
    sink, diag, conn = new_sink()
    big = call_msg(8, FOP, 400, 13, Packer().fopaque(b"\x11" * 16).int64(1).uint64(0)
                   .uint32(4096).uint32(0).uint32(0).int32(0).raw(b"\0" * 4096).bytes())
    data = record(big) + ping_call(9)
    evs = sink.on_data(conn, True, 1, data[:200])
    evs += sink.on_gap(conn, True, 2, 1000)
    evs += sink.on_data(conn, True, 3, data[1200:])
    assert [e["xid"] for e in evs] == [8, 9]
    assert evs[0]["procedure"] == "WRITE" and evs[0]["args"]["size"] == 4096   # header survived
    assert any("damaged by a capture gap" in k for k in diag.counts)


def test_gap_across_records_resyncs_on_next_call():
    sink, diag, conn = new_sink()
    data = ping_call(1) + ping_call(2) + ping_call(3)
    n = len(ping_call(1))
    evs = sink.on_data(conn, True, 1, data[:n + 10])
    evs += sink.on_gap(conn, True, 2, n)                  # lose the rest of 2 and a part of 3
    evs += sink.on_data(conn, True, 3, data[2 * n + 10:] + ping_call(4))
    assert [e["xid"] for e in evs] == [1, 4]
    assert any("capture gap" in k for k in diag.counts)


def test_non_rpc_record_is_skipped_and_counted():
    sink, diag, conn = new_sink()
    sink.on_data(conn, True, 1, ping_call(1))
    # a well-framed record whose verifier length is absurd
    bad = Packer().uint32(5).uint32(0).uint32(2).uint32(DUMP).uint32(1).uint32(2) \
        .uint32(0).uint32(0).uint32(0).uint32(5000).bytes()
    evs = sink.on_data(conn, True, 2, record(bad) + ping_call(2))
    assert [e["xid"] for e in evs] == [2]
    assert any("not an RPC message" in k for k in diag.counts)


def test_close_reports_incomplete_record_and_forgets_connection():
    sink, diag, conn = new_sink()
    sink.on_data(conn, True, 1, ping_call(1)[:20])
    assert sink.on_close(conn, 2) == []
    assert conn not in sink._conns
    assert any("connection end" in k for k in diag.counts)
