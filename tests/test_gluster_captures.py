"""Real lab captures (tests/captures/*.pcap*) through TcpTracker + RpcSink, cross-checked
against tshark for everything tshark decodes cleanly, and against what the lab recorded.

tshark 4.0 marks GlusterFS v400 CREATE/SETATTR/STATFS calls malformed; those are checked
against the lab's own account (tests/captures/README.md) instead.
"""
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from correlate.diagnostics import Diagnostics
from correlate.wire.decode import decode_capture
from correlate.wire.rpc_header import ACCEPT_STATUS, AUTH_STATUS, REJECT_STATUS

CAPTURES = sorted(p for p in (Path(__file__).parent / "captures").glob("*.pcap*"))
needs_captures = pytest.mark.skipif(not CAPTURES, reason="no captures in tests/captures yet")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def ours(path: Path) -> tuple[list[dict], Diagnostics]:
    diag = Diagnostics(path.name)
    events = [e for e in decode_capture(str(path), diag=diag) if e["kind"].startswith("rpc.")]
    return events, diag


def tshark_rows(path: Path, display_filter: str, fields: list[str]) -> list[tuple]:
    """One tuple per RPC message (tshark joins the messages of one frame with commas)."""
    cmd = ["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields", "-E", "occurrence=a"]
    for f in ["tcp.srcport", "tcp.dstport", *fields]:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split("\t")
        sport, dport, *per_message = cols
        values = [c.split(",") if c else [] for c in per_message]
        n = max((len(v) for v in values), default=0)
        for i in range(n):
            rows.append((int(sport), int(dport),
                         *[(v[i] if i < len(v) else "") for v in values]))
    return rows


def tshark_calls(path: Path) -> Counter:
    """(src port, dst port, xid, program, procedure) of each call tshark decodes cleanly."""
    rows = tshark_rows(path, "rpc.msgtyp == 0 && !_ws.malformed",
                       ["rpc.xid", "rpc.program", "rpc.procedure"])
    return Counter((s, d, int(x, 16), int(prog), int(proc)) for s, d, x, prog, proc in rows)


@needs_captures
@needs_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_every_call_tshark_decodes_is_ours(path):
    theirs = tshark_calls(path)
    events, diag = ours(path)
    mine = Counter((port(e["src"]), port(e["dst"]), e["xid"], e["program_num"], e["procedure_num"])
                   for e in events if e["kind"] == "rpc.call")
    missing = theirs - mine
    assert not missing, f"calls tshark saw that we did not: {sorted(missing)}"
    assert sum(theirs.values()) > 0
    assert not [k for k in diag.counts if k.startswith("rpc")], diag.summary_lines()


@needs_captures
@needs_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_reply_statuses_match_tshark(path):
    rows = tshark_rows(path, "rpc.msgtyp == 1 && !_ws.malformed",
                       ["rpc.xid", "rpc.replystat", "rpc.state_accept", "rpc.state_reject",
                        "rpc.state_auth"])
    events, _ = ours(path)
    mine = Counter()
    for e in events:
        if e["kind"] != "rpc.reply":
            continue
        mine[(port(e["src"]), port(e["dst"]), e["xid"], e["reply_status"],
              e.get("accept_status") or e.get("reject_status"), e.get("auth_status"))] += 1
    theirs = Counter()
    for s, d, xid, stat, acc, rej, auth in rows:
        if stat == "0":
            key = ("accepted", ACCEPT_STATUS[int(acc)], None)
        else:
            key = ("denied", REJECT_STATUS[int(rej)], AUTH_STATUS[int(auth)] if auth else None)
        theirs[(s, d, int(xid, 16), *key)] += 1
    missing = theirs - mine
    assert not missing, f"replies tshark saw that we did not: {sorted(missing)}"


def capture(name: str) -> Path:
    for p in CAPTURES:
        if p.name.startswith(name + "."):
            return p
    pytest.skip(f"capture {name} not recorded")


def test_atime_minus_one_setattr_is_decoded_where_tshark_cannot():
    events, _ = ours(capture("atime-minus-one"))
    setattrs = [e for e in events if e["kind"] == "rpc.call" and e["procedure"] == "SETATTR"]
    assert setattrs, "no SETATTR call decoded"
    args = setattrs[0]["args"]
    assert setattrs[0]["version"] == 400 and "decode_error" not in setattrs[0]
    assert (args["atime"], args["atime_nsec"], args["mtime"]) == (-1, 0, 1700000000)
    assert "GF_SET_ATTR_ATIME" in args["valid_flags"]
    [reply] = [e for e in events if e["kind"] == "rpc.reply" and e["procedure"] == "SETATTR"]
    assert reply["op_ret"] == 0 and reply["latency_ns"] >= 0
    assert reply["result"]["poststat"]["ia_gfid"] == args["gfid"]


def test_auth_rejected_setvolume_carries_the_error_text():
    events, _ = ours(capture("auth-rejected"))
    replies = [e for e in events if e["kind"] == "rpc.reply" and e["procedure"] == "SETVOLUME"]
    assert len(replies) == 2
    for r in replies:
        assert (r["op_ret"], r["op_errno"], r["errno_name"]) == (-1, 13, "EACCES")
        assert r["result"]["dict"]["ERROR"] == "Authentication failed"
    assert not [e for e in events if e["program"] == "GlusterFS"]


def test_insecure_port_dump_is_denied_with_rejected_credentials():
    events, _ = ours(capture("insecure-port"))
    denied = [e for e in events if e["kind"] == "rpc.reply" and e["reply_status"] == "denied"]
    assert {(e["procedure"], e["reject_status"], e["auth_status"]) for e in denied} == \
        {("DUMP", "AUTH_ERROR", "AUTH_REJECTEDCRED"), ("PING", "AUTH_ERROR", "AUTH_REJECTEDCRED")}
    calls = [e for e in events if e["kind"] == "rpc.call"]
    # the management programs (glusterd, DUMP) go with AUTH_GLUSTERFS v2 and pid 0
    assert {e["cred"]["flavor"] for e in calls} == {"AUTH_GLUSTERFS_v2"}


def test_healthy_mount_flow():
    events, _ = ours(capture("healthy"))
    procs = [(e["program"], e["procedure"]) for e in events if e["kind"] == "rpc.call"]
    for expected in [("GlusterFS Handshake", "GETSPEC"), ("GF-DUMP", "DUMP"), ("GF-DUMP", "PING"),
                     ("Gluster Portmap", "PORTBYBRICK"), ("GlusterFS Handshake", "SETVOLUME"),
                     ("GlusterFS", "STATFS"), ("GlusterFS", "LOOKUP"), ("GlusterFS", "CREATE"),
                     ("GlusterFS", "SETATTR"), ("GlusterFS", "UNLINK")]:
        assert expected in procs
    ports = {e["result"]["port"] for e in events
             if e["kind"] == "rpc.reply" and e["procedure"] == "PORTBYBRICK"}
    fop_ports = {port(e["dst"]) for e in events if e["kind"] == "rpc.call" and e["program"] == "GlusterFS"}
    assert fop_ports and fop_ports <= ports           # fops go to the ports portmap gave
    fops = [e for e in events if e["kind"] == "rpc.call" and e["program"] == "GlusterFS"]
    assert {e["cred"]["flavor"] for e in fops} == {"AUTH_GLUSTERFS_v3"}
    assert any(e["cred"]["pid"] > 0 for e in fops)     # internal fops go with pid 0
    unmatched = [e for e in events if e["kind"] == "rpc.reply" and e["program"] is None]
    assert not unmatched
    assert all("decode_error" not in e for e in events)
    setvolume = [e for e in events if e["kind"] == "rpc.reply" and e["procedure"] == "SETVOLUME"]
    assert setvolume and all(e["op_ret"] == 0 and e["errno_name"] is None for e in setvolume)


@needs_tshark
@pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap is not installed")
def test_capture_started_mid_connection(tmp_path):
    """Drop the start of the healthy capture (SYNs, handshakes, the first calls): what is left
    begins with replies whose calls were never seen, inside established connections."""
    full, _ = ours(capture("healthy"))
    # cut just before the first fop reply, so the capture starts with a reply to a lost call
    first_reply = next(e for e in full if e["kind"] == "rpc.reply" and e["program"] == "GlusterFS")
    cut = tmp_path / "mid.pcap"
    subprocess.run(["editcap", "-r", str(capture("healthy")), str(cut),
                    f"{first_reply['frame']}-1000000"], check=True, capture_output=True, timeout=60)
    rows = tshark_rows(cut, "rpc.msgtyp == 0 && !_ws.malformed", ["rpc.xid", "rpc.program", "rpc.procedure"])
    theirs = Counter((s, d, int(x, 16), int(prog), int(proc)) for s, d, x, prog, proc in rows)
    events, diag = ours(cut)
    mine = Counter((port(e["src"]), port(e["dst"]), e["xid"], e["program_num"], e["procedure_num"])
                   for e in events if e["kind"] == "rpc.call")
    assert theirs and not theirs - mine
    first = events[0]
    assert first["kind"] == "rpc.reply" and first["program"] is None
    assert (first["xid"], first["src"]) == (first_reply["xid"], first_reply["src"])
    assert any(e["procedure"] == "SETATTR" for e in events if e["kind"] == "rpc.call")


def _start_mid_record(src: Path, dst: Path, frame: int, drop: int) -> int:
    """Write `src` from `frame` on, that frame losing the first `drop` bytes of its TCP
    payload (sequence number, lengths and checksums adjusted): a capture that begins in
    the middle of an RPC record. Returns the frame's original payload length."""
    dpkt = pytest.importorskip("dpkt")
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        reader = dpkt.pcap.Reader(f_in)
        assert reader.datalink() == 276, "the lab records LINUX_SLL2"
        writer = dpkt.pcap.Writer(f_out, linktype=276)
        for number, (ts, buf) in enumerate(reader, 1):
            if number < frame:
                continue
            if number == frame:
                sll = dpkt.sll2.SLL2(buf)
                ip, tcp = sll.data, sll.data.data
                payload = len(tcp.data)
                assert payload > drop
                tcp.data = tcp.data[drop:]
                tcp.seq = (tcp.seq + drop) & 0xFFFFFFFF
                ip.len -= drop
                ip.sum = tcp.sum = 0            # recomputed when packed
                buf = bytes(sll)
            writer.writepkt(buf, ts)
    return payload


@needs_tshark
def test_capture_started_mid_record(tmp_path):
    full, _ = ours(capture("healthy"))
    lookup = next(e for e in full if e["kind"] == "rpc.call" and e["procedure"] == "LOOKUP")
    cut = tmp_path / "mid-record.pcap"
    payload = _start_mid_record(capture("healthy"), cut, lookup["frame"], 100)
    events, diag = ours(cut)
    # the torn LOOKUP is gone, its reply is reported without a program, and every later
    # call on every connection is there (checked against tshark on the same file)
    assert not [e for e in events if e["kind"] == "rpc.call" and e["xid"] == lookup["xid"]
                and e["src"] == lookup["src"]]
    [orphan] = [e for e in events if e["kind"] == "rpc.reply" and e["xid"] == lookup["xid"]
                and e["dst"] == lookup["src"]]
    assert orphan["program"] is None and orphan["accept_status"] == "SUCCESS"
    rows = tshark_rows(cut, "rpc.msgtyp == 0 && !_ws.malformed", ["rpc.xid", "rpc.program", "rpc.procedure"])
    theirs = Counter((s, d, int(x, 16), int(prog), int(proc)) for s, d, x, prog, proc in rows)
    mine = Counter((port(e["src"]), port(e["dst"]), e["xid"], e["program_num"], e["procedure_num"])
                   for e in events if e["kind"] == "rpc.call")
    assert not theirs - mine
    later = [e for e in full if e["kind"] == "rpc.call" and e["frame"] > lookup["frame"]]
    assert len([e for e in events if e["kind"] == "rpc.call"]) == len(later)
    skipped = sum(v for k, v in diag.counts.items() if k.startswith("bytes outside RPC records"))
    assert skipped == payload - 100          # the rest of the torn record, nothing more
