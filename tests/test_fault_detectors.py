"""brick-not-responding, no-space and rpc-unanswered's classification: on the committed
captures (`correlate analyze`) and on synthetic event sequences for the corners."""
from pathlib import Path

from correlate.events import make_event
from tests.test_detectors import S, builtin, run, runner_of
from tests.test_findings_on_captures import analyze

CAPTURES = Path(__file__).parent / "captures"
CLIENT, BRICK = "127.0.0.1:49144", "127.0.0.2:49226"


def call(t, xid, procedure, conn=6, src=CLIENT, dst=BRICK, **fields):
    return make_event(t, "wire", "rpc.call", "x", conn=conn, xid=xid, procedure=procedure,
                      program="GF-DUMP" if procedure == "PING" else "GlusterFS",
                      src=src, dst=dst, **fields)


def reply(t, xid, procedure, conn=6, src=BRICK, dst=CLIENT, op_ret=0, **fields):
    return make_event(t, "wire", "rpc.reply", "x", conn=conn, xid=xid, procedure=procedure,
                      program="GlusterFS", src=src, dst=dst, op_ret=op_ret, **fields)


def keepalive(t, conn=6, by="client"):
    """A TCP keepalive probe: the connection lives though idle (Gluster's after 20 s)."""
    return make_event(t, "wire", "tcp.keepalive", "x", conn=conn, src=CLIENT, dst=BRICK, by=by)


def close(t, by="client", conn=6, reason="fin", unacked=0):
    return make_event(t, "wire", "tcp.close", "x", conn=conn, src=CLIENT, dst=BRICK, by=by,
                      reason=reason, half=reason == "fin", unacked_bytes=unacked)


def setvolume(t, ping_timeout="5", conn=6):
    return call(t, 1, "SETVOLUME", conn=conn, args={"dict": {
        "remote-subvolume": "/bricks/b2", "ping-timeout": ping_timeout, "volfile-key": "vol",
        "process-uuid": "CTX_ID:x-GRAPH_ID:0-PID:4242-HOST:h-PC_NAME:vol-client-1-RECON_NO:-0"}})


# ---- brick-not-responding on the real capture -----------------------------------------------

def test_brick_hang_capture_names_brick_calls_tcp_and_recovery():
    out = [f for f in analyze(CAPTURES / "brick-hang.pcap") if f["kind"] == "finding"]
    hung, back = out
    assert hung["severity"] == "error" and back["severity"] == "info"
    assert hung["brick"] == "/srv/correlate-lab/hangvol/b2" and hung["tcp_acked"] is True
    kinds = [(e["kind"], e.get("procedure")) for e in hung["evidence"]]
    assert kinds[0] == ("rpc.call", "SETVOLUME") and ("rpc.call", "PING") in kinds
    assert ("rpc.call", "WRITE") in kinds and kinds[-1] == ("tcp.close", None)
    assert "ping-timeout 5 s" in hung["explanation"] and "pid " in hung["explanation"]
    assert "statedump" in hung["remedy"]
    late = back["evidence"][-1]
    assert late["kind"] == "rpc.reply" and late["procedure"] == "PING"
    assert late["time_ns"] - hung["time_ns"] > 1e9      # the late answer came after SIGCONT


def test_brick_hang_capture_has_no_unanswered_warning():
    """The WRITE and PING pending at the FIN were lost with the connection: rpc-unanswered
    leaves them to brick-not-responding."""
    out = analyze(CAPTURES / "brick-hang.pcap")
    assert not [f for f in out if f.get("detector") == "rpc-unanswered"]


# ---- brick-not-responding corners -------------------------------------------------------------

def test_capture_starting_mid_incident_still_names_the_port():
    """No SETVOLUME or PORTBYBRICK in the capture: only the PING and the client's FIN. The
    timeout said is the one measured from the PING to the FIN, not Gluster's default."""
    found = run(builtin("brick-not-responding"), [call(S, 9, "PING"), close(6 * S)])
    assert len(found) == 1 and found[0]["brick"] is None
    assert "127.0.0.2:49226" in found[0]["title"]
    assert "ping-timeout 5 s, measured from the PING to the client's FIN" in found[0]["explanation"]
    assert "ping-timeout 42" not in found[0]["explanation"]


def test_client_exit_with_fresh_calls_is_not_a_hang():
    events = [setvolume(0), call(S, 9, "PING"), reply(S + 1000, 9, "PING"),
              call(2 * S, 10, "WRITE"), close(2 * S + 5_000_000)]
    assert run(builtin("brick-not-responding"), events) == []


def test_brick_side_close_is_not_a_hang():
    events = [setvolume(0), call(S, 9, "PING"), close(7 * S, by="server", reason="rst")]
    assert run(builtin("brick-not-responding"), events) == []


def test_unacknowledged_calls_point_at_the_host_or_network():
    events = [setvolume(0), call(S, 9, "WRITE"), call(2 * S, 10, "PING"), close(7 * S, unacked=240)]
    (f,) = run(builtin("brick-not-responding"), events)
    assert f["tcp_acked"] is False and "host or the network" in f["explanation"]
    assert "pid 4242" in f["explanation"] and "/bricks/b2" in f["title"]


def test_overdue_ping_without_fin_by_the_events_clock():
    """A PING older than the ping timeout (from SETVOLUME) while other traffic goes on."""
    other = [reply(t * S, 50 + t, "WRITE", conn=7, src="127.0.0.2:49300") for t in range(2, 10)]
    events = [setvolume(0, ping_timeout="3"), call(S, 9, "PING"), *other]
    (f,) = run(builtin("brick-not-responding"), events)
    assert f["time_ns"] == 6 * S and f["tcp_acked"] is None   # ping + timeout 3 s + 1 s grace


def test_blocking_lock_pending_is_no_sign_of_a_hang():
    lk = call(S, 8, "LK", args={"cmd": 2, "type": 1})          # GF_LK_SETLKW
    events = [setvolume(0), lk, call(2 * S, 9, "PING"), reply(2 * S + 1000, 9, "PING"),
              close(30 * S)]
    assert run(builtin("brick-not-responding"), events) == []


# ---- rpc-unanswered classification ------------------------------------------------------------

def test_calls_lost_at_close_are_not_unanswered():
    events = [call(S, 9, "WRITE"), close(5 * S), reply(60 * S, 1, "LOOKUP", conn=7)]
    assert run(builtin("rpc-unanswered"), events) == []


def test_calls_unanswered_while_the_connection_lived_still_warn():
    events = [call(S, 9, "WRITE"), reply(15 * S, 1, "LOOKUP", conn=7), close(16 * S)]
    (f,) = run(builtin("rpc-unanswered"), events)
    assert f["severity"] == "warning" and "WRITE" in f["title"]


def test_blocking_locks_are_left_to_the_lock_wait_detector():
    blocking = [call(S, 1, "LK", args={"cmd": 2}), call(S, 2, "INODELK", args={"cmd": 2}),
                call(S, 3, "FINODELK", args={"cmd": 2}), call(S, 4, "ENTRYLK", args={"cmd": 0}),
                call(S, 5, "FENTRYLK", args={"cmd": 0})]
    late = reply(60 * S, 1, "LOOKUP", conn=7)
    assert run(builtin("rpc-unanswered"), [*blocking, late]) == []
    non_blocking = [call(S, 1, "LK", args={"cmd": 1}), call(S, 4, "ENTRYLK", args={"cmd": 2})]
    assert len(run(builtin("rpc-unanswered"), [*non_blocking, keepalive(21 * S), late])) == 2


# ---- no-space -----------------------------------------------------------------------------------

def statfs(t, **fields):
    values = {"blocks": 1000, "bfree": 500, "bavail": 450, "files": 100, "ffree": 50,
              "bsize": 4096, "frsize": 4096, **fields}
    return reply(t, 3, "STATFS", result={"statfs": values, "xdata": {}})


def enospc(t, procedure="WRITE", errno_name="ENOSPC"):
    return reply(t, 7, procedure, op_ret=-1, op_errno=28 if errno_name == "ENOSPC" else 122,
                 errno_name=errno_name)


def test_reserve_full_capture_tells_storage_reserve():
    (f,) = [f for f in analyze(CAPTURES / "reserve-full.pcap")
            if f["kind"] == "finding" and f["detector"] == "no-space"]
    assert f["cause"] == "storage.reserve refusing writes" and f["severity"] == "error"
    assert f["brick"] == "/srv/correlate-lab/reservevol/b1"
    assert "storage.reserve" in f["remedy"] and "reservevol" in f["remedy"]
    assert [e["procedure"] for e in f["evidence"]][-1] == "STATFS"


def test_no_space_causes_from_statfs():
    cases = [({"bfree": 0, "bavail": 0}, "storage.reserve refusing writes"),
             ({"bfree": 50, "bavail": 2}, "brick full"),
             ({"ffree": 0}, "out of inodes"),
             ({}, "ENOSPC with space left")]
    for values, cause in cases:
        (f,) = run(builtin("no-space"), [statfs(S, **values), enospc(2 * S)])
        assert f["cause"] == cause, values


def test_enospc_with_space_left_beside_other_errors_points_at_fault_injection():
    """debug.error-gen makes a brick answer errors of several kinds; routine ones (ENOENT,
    ESTALE...) are no such sign."""
    other = [reply(S + i, 9, "READ", op_ret=-1, op_errno=9, errno_name=e)
             for i, e in enumerate(["EBADF", "EIO", "EBADF"])]
    (f,) = run(builtin("no-space"), [statfs(S), *other, enospc(2 * S)])
    assert f["cause"] == "ENOSPC with space left, among other errors"
    assert "EBADF x2, EIO x1" in f["explanation"]
    assert "debug.error-gen" in f["remedy"] and "quota" in f["remedy"] and "storage.reserve" in f["remedy"]
    routine = [reply(S + i, 9, "LOOKUP", op_ret=-1, op_errno=2, errno_name="ENOENT") for i in range(3)]
    (f,) = run(builtin("no-space"), [statfs(S), *routine, enospc(2 * S)])
    assert f["cause"] == "ENOSPC with space left" and "debug.error-gen" in f["remedy"]


def test_quota_needs_no_statfs_and_names_the_limit():
    (f,) = run(builtin("no-space"), [enospc(S, errno_name="EDQUOT")])
    assert f["cause"] == "quota limit reached" and "quota" in f["remedy"]
    assert f["time_ns"] == S


def test_enospc_waits_for_a_later_statfs_then_speaks():
    found = run(builtin("no-space"), [enospc(S), statfs(2 * S, bfree=0, bavail=0)])
    assert len(found) == 1 and found[0]["cause"] == "storage.reserve refusing writes"
    assert found[0]["time_ns"] == 2 * S


def test_enospc_without_statfs_says_it_cannot_tell():
    (f,) = run(builtin("no-space"), [enospc(S)])
    assert f["cause"] == "no space" and "cannot tell" in f["explanation"]
    # by the events' clock: other traffic 3 s later makes it speak without the end of input
    runner = runner_of("no-space")
    assert runner.observe(enospc(S)) == []
    assert runner.observe(reply(5 * S, 1, "LOOKUP", conn=7))[0]["cause"] == "no space"


def test_repeats_fold_into_one_finding_per_brick_and_errno():
    events = [statfs(0, bfree=0, bavail=0)] + [enospc(S + i) for i in range(5)]
    found = run(builtin("no-space"), events)
    assert len(found) == 1 and found[0]["count"] == 5


def test_application_calls_that_stalled_or_failed_meanwhile_join_the_recovery():
    """With probes: what the application saw while the brick hung (a call blocked for
    seconds, or ENOTCONN) is named when the brick answers again."""
    def ret(t, function, **fields):
        return make_event(t, "probe", "probe.return", "bcc", function=function, pid=77, tid=77,
                          comm="python3", **fields)
    events = [setvolume(0), call(S, 9, "WRITE"), call(2 * S, 10, "PING"), close(7 * S),
              ret(8 * S, "glfs_fsync", retval=0, duration_ns=7 * S),
              ret(8 * S + 1, "glfs_pwrite", retval=-1, errno=107),
              ret(8 * S + 2, "glfs_stat", retval=0, duration_ns=1000),       # quick: not shown
              reply(9 * S, 10, "PING")]
    hung, back = run(builtin("brick-not-responding"), events)
    assert back["application"] == ["glfs_fsync", "glfs_pwrite"]
    assert "glfs_fsync in pid 77 blocked 7.0 s" in back["explanation"]
    assert "glfs_pwrite in pid 77 failed with ENOTCONN" in back["explanation"]


def getspec(t, sets):
    return reply(t, 2, "GETSPEC", conn=1, src="127.0.0.2:24007", dst="127.0.0.1:1000",
                 result={"brick_sets": sets})


def test_replica_count_decides_stall_or_enotconn():
    """A brick of a replica 3 set stalls I/O and the others go on; a brick in no set seen (a
    distribute volume, or no volfile in the capture) leaves its files failing with ENOTCONN."""
    replica = [{"name": "vol-replicate-0", "type": "replicate",
                "bricks": [["127.0.0.2", "/bricks/b1"], ["127.0.0.2", "/bricks/b2"],
                           ["127.0.0.2", "/bricks/b3"]]}]
    peers = [setvolume(0, conn=c) for c in (7, 8)]
    for c, port, path in ((7, "49227", "/bricks/b1"), (8, "49228", "/bricks/b3")):
        peers[c - 7]["dst"] = f"127.0.0.2:{port}"
        peers[c - 7]["args"]["dict"]["remote-subvolume"] = path
    hang = [setvolume(S), call(2 * S, 9, "PING"), close(8 * S)]
    (f,) = run(builtin("brick-not-responding"), [getspec(0, replica), *peers, *hang])
    assert "one of 3 bricks of vol-replicate-0" in f["explanation"]
    (f,) = run(builtin("brick-not-responding"), [getspec(0, [{"name": "other-replicate-0",
               "type": "replicate", "bricks": [["10.0.0.9", "/x"], ["10.0.0.8", "/y"]]}]), *hang])
    assert "no replica or disperse set with this brick" in f["explanation"]
    (f,) = run(builtin("brick-not-responding"), hang)
    assert "no replica or disperse set with this brick" in f["explanation"]


def _gap(t, conn=6, direction="to_client", missing=300):
    return make_event(t, "wire", "tcp.gap", "x", conn=conn, src=CLIENT, dst=BRICK,
                      direction=direction, missing=missing)


def test_a_lossy_connection_gone_silent_after_a_call_is_not_a_hang():
    """Its reply and its close were lost with the rest (5 % dropped, seen on the lab's
    busy-production day): nothing more on that connection, ever. Other connections go on."""
    elsewhere = [call(t * S, 100 + t, "LOOKUP", conn=9) for t in range(2, 40)]
    lossy = [_gap(S // 2, direction="to_server"), call(S, 1, "FXATTROP")]
    runner = builtin("rpc-unanswered")
    found = run(runner, sorted(lossy + elsewhere, key=lambda e: e["time_ns"]))
    assert not [f for f in found if f["severity"] == "warning" and "FXATTROP" in f["title"]]
    # the same call on a connection that never lost anything and lives (its keepalive) is a hang
    clean = [call(S, 1, "FXATTROP"), keepalive(21 * S)]
    found = run(builtin("rpc-unanswered"), sorted(clean + elsewhere, key=lambda e: e["time_ns"]))
    assert [f for f in found if f["severity"] == "warning" and "FXATTROP" in f["title"]]


def test_a_reply_lost_on_a_quiet_connection_shows_at_the_keepalive():
    """Seen on the lab's busy-production day at 5 % drops: a STATFS reply and the caller's
    ACK of it both dropped, then nothing on that connection until the brick's TCP keepalive
    21.75 s after the call, whose ACK shows the missing bytes. That is a lost reply, not a
    hang; the same call on a connection whose keepalive shows no gap is one."""
    elsewhere = [call(t * S, 100 + t, "LOOKUP", conn=9) for t in range(2, 60)]
    statfs = call(S, 8, "STATFS")
    revealed = [statfs, _gap(S + 21_750_000_000, direction="to_client", missing=136)]
    found = run(builtin("rpc-unanswered"), sorted(revealed + elsewhere, key=lambda e: e["time_ns"]))
    assert not [f for f in found if f["severity"] == "warning" and "STATFS" in f["title"]]
    assert [f for f in found if f["key"] == "reply-maybe-lost"]
    alive = keepalive(S + 21_750_000_000, by="server")     # the same keepalive, no gap
    (hang,) = [f for f in run(builtin("rpc-unanswered"),
                              sorted([statfs, alive] + elsewhere, key=lambda e: e["time_ns"]))
               if f["severity"] == "warning" and "STATFS" in f["title"]]
    assert hang["title"] == "GlusterFS STATFS unanswered after 30 s"


def test_a_call_held_behind_a_hole_may_have_lost_its_reply_before_its_stamp():
    """Seen on the lab's busy-production day at 5 % drops: a GETXATTR arrived behind a lost
    call, waited in reassembly until the brick's ACK showed the hole, and was stamped then,
    after the gap that had swallowed its reply. Its connection went on: not a hang. A gap
    toward the caller seconds before the call tells nothing of its reply."""
    elsewhere = [call(t * S, 100 + t, "LOOKUP", conn=9) for t in range(2, 60)]
    later = [call(S + t * S // 10, 50 + t, "LOOKUP") for t in range(1, 200)]
    replies = [reply(e["time_ns"] + 100_000, e["xid"], "LOOKUP") for e in later]
    getxattr = call(S, 8, "GETXATTR")
    held = [_gap(S - 100_000, direction="to_client", missing=196),
            _gap(S, direction="to_server", missing=124), getxattr]
    events = sorted(held + later + replies + elsewhere, key=lambda e: e["time_ns"])
    found = run(builtin("rpc-unanswered"), events)
    assert not [f for f in found if f["severity"] == "warning" and "GETXATTR" in f["title"]]
    assert [f for f in found if f["key"] == "reply-maybe-lost"]
    held[0]["time_ns"] = S - 3 * S
    events = sorted(held + later + replies + elsewhere, key=lambda e: e["time_ns"])
    assert [f for f in run(builtin("rpc-unanswered"), events)
            if f["severity"] == "warning" and "GETXATTR" in f["title"]]


def test_a_call_of_a_client_that_went_away_in_a_lossy_capture_is_not_a_hang():
    """Seen at 1 % drops on the lab's busy-production day: a program's RELEASEDIR, then it
    exited; the capture lost the reply and the RST of that connection, kept the FINs of its
    two others, and ended 10.5 s later. The same silence in a capture that lost nothing, or
    from a client that stayed, is a hang."""
    sv = [setvolume(S // 2, conn=c) for c in (6, 7, 8)]
    for e in sv:        # one process: its graph's context in each connection's SETVOLUME
        e["args"]["dict"]["process-uuid"] = e["args"]["dict"]["process-uuid"].replace(
            "CTX_ID:x", "CTX_ID:6b0b8ab9-1d5f-4a0e-9d9d-1c3c2b3a4f5e")
    sv += [reply(S // 2 + 1000, 1, "SETVOLUME", conn=c) for c in (6, 7, 8)]
    releasedir = call(3 * S, 31, "RELEASEDIR")
    gone = [close(3 * S + 1_600_000, conn=7), close(3 * S + 1_700_000, conn=8)]
    elsewhere = [call(3 * S + t * S // 2, 100 + t, "LOOKUP", conn=9) for t in range(1, 22)]
    loss = [_gap(S // 4, conn=9, direction="to_server")]     # well before the call

    def warned(events):
        found = run(builtin("rpc-unanswered"), sorted(events, key=lambda e: e["time_ns"]))
        return [f for f in found if f["severity"] == "warning" and "RELEASEDIR" in f["title"]]
    assert not warned(sv + [releasedir] + gone + elsewhere + loss)
    assert warned(sv + [releasedir] + gone + elsewhere)          # nothing lost: a hang
    assert warned(sv + [releasedir] + elsewhere + loss)          # the client stayed


def test_a_silent_connection_after_a_burst_of_drops_is_not_a_hang():
    """Seen with a burst of 100 packets cut from brick-down.pcap: a DUMP and a PING, then
    their connection showed nothing more (the burst took the replies and the rest of it),
    and other connections' gaps showed 20 s later, when they next acknowledged. Loss after
    the call: not a hang. Loss only long before it tells nothing of this call."""
    elsewhere = [e for t in range(1, 14) for e in (call(t * S, 100 + t, "LOOKUP", conn=9),
                                                    reply(t * S + 1000, 100 + t, "LOOKUP", conn=9))]
    dump = [call(3 * S, 5, "DUMP"), call(3 * S + 50_000, 6, "PING")]

    def warned(events):
        found = run(builtin("rpc-unanswered"), sorted(events, key=lambda e: e["time_ns"]))
        return [f["title"] for f in found if f["severity"] == "warning"]
    assert not warned(dump + elsewhere + [_gap(13 * S, conn=9, direction="to_client")])
    assert warned(dump + elsewhere + [_gap(S, conn=9, direction="to_client")])


def test_a_connection_without_even_a_keepalive_is_gone_not_hung():
    """Seen with a burst of 100 packets cut from busy-healthy.pcap: an OPENDIR, then the burst
    took its reply and the rest of its connection, and no other connection lost anything
    visible. A live connection idle 20 s sends a keepalive; silent 30 s while the capture
    went on, it was closed in the packets lost. With a keepalive it lives: a hang."""
    elsewhere = [e for t in range(2, 40) for e in (call(t * S, 100 + t, "LOOKUP", conn=9),
                                                    reply(t * S + 1000, 100 + t, "LOOKUP", conn=9))]
    opendir = call(S, 62, "OPENDIR")

    def warned(events):
        found = run(builtin("rpc-unanswered"), sorted(events, key=lambda e: e["time_ns"]))
        return [f["title"] for f in found if f["severity"] == "warning"]
    assert warned([opendir] + elsewhere) == []
    assert warned([opendir, keepalive(21 * S)] + elsewhere) == ["GlusterFS OPENDIR unanswered after 30 s"]
