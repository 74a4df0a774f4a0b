"""Detector logic on synthetic event sequences (the lab tests run them on real traffic)."""
from correlate.detector import Detector, load_detectors
from correlate.engine.detector_runner import DetectorRunner
from correlate.events import make_event
from correlate.plugin_manager import get_plugin_manager
from correlate.plugins.gluster_facts import UTIME_NOW, UTIME_OMIT
from correlate.state import GlusterState
from correlate.testing import run_detector

S = 1_000_000_000


def builtin(detector_id):
    detectors, errors = load_detectors(get_plugin_manager(), {})
    assert not errors
    [detector] = [d for d in detectors if d.id == detector_id]
    return detector


def runner_of(detector_id):
    """The runtime around one built-in detector, fed event by event (for what a test watches
    as it streams: when a finding comes, its finding.update at the end)."""
    state = GlusterState()
    detectors, _errors = load_detectors(get_plugin_manager(), {}, state)
    [detector] = [d for d in detectors if d.id == detector_id]
    return DetectorRunner([detector], state=state)


def run(detector, events):
    """Its findings as a run ends them (correlate.testing): folded, with their count."""
    return run_detector(detector, events)


def setattr_call(t, atime, atime_nsec=0, valid=0x30, xid=7, pid=4242):
    return make_event(t, "wire", "rpc.call", "x.pcap", conn=1, xid=xid, src="127.0.0.1:1000",
                      dst="127.0.0.2:49152", program="GlusterFS", program_num=1298437,
                      version=400, procedure="SETATTR", procedure_num=38,
                      cred={"pid": pid},
                      args={"gfid": "g", "valid": valid, "atime": atime, "atime_nsec": atime_nsec,
                            "mtime": 1700000000, "mtime_nsec": 0})


def setattr_reply(t, xid=7, op_ret=0):
    return make_event(t, "wire", "rpc.reply", "x.pcap", conn=1, xid=xid, src="127.0.0.2:49152",
                      dst="127.0.0.1:1000", program="GlusterFS", procedure="SETATTR",
                      reply_status="accepted", op_ret=op_ret, op_errno=0)


def probe(t, function, atime, atime_nsec=0, pid=4242, comm="smbd"):
    return make_event(t, "probe", "probe.call", "bcc", function=function, pid=pid, tid=pid,
                      comm=comm, args={"atime": atime, "atime_nsec": atime_nsec,
                                       "mtime": 1700000000, "mtime_nsec": 0, "path": "/f"})


def test_atime_chain_names_samba_and_holds_every_layer():
    r = builtin("atime-minus-one")
    found = run(r, [probe(1 * S, "vfs_gluster_fntimes", -1), probe(1 * S + 10, "glfs_futimens", -1),
                    setattr_call(1 * S + 500_000, -1), setattr_reply(1 * S + 900_000)])
    assert len(found) == 1
    f = found[0]
    assert f["introduced_by"] == "samba"
    kinds = [e["kind"] for e in f["evidence"]]
    assert kinds == ["probe.call", "probe.call", "rpc.call", "rpc.reply"]
    assert any("1969-12-31 23:59:59" in step for step in f["chain"])


def test_atime_wire_only_says_process_layer_not_observed():
    found = run(builtin("atime-minus-one"), [setattr_call(S, -1), setattr_reply(S + 1000)])
    assert len(found) == 1 and found[0]["introduced_by"] == "unknown"
    assert "not observed" in found[0]["explanation"]


def test_atime_utime_omit_and_now_and_real_times_are_not_findings():
    events = [setattr_call(S, -1, UTIME_OMIT, xid=1), setattr_reply(S + 1, xid=1),
              setattr_call(2 * S, -1, UTIME_NOW, xid=2), setattr_reply(2 * S + 1, xid=2),
              setattr_call(3 * S, 1700000000, xid=3), setattr_reply(3 * S + 1, xid=3),
              setattr_call(4 * S, -1, valid=0x20, xid=4), setattr_reply(4 * S + 1, xid=4),
              probe(5 * S, "glfs_utimens", -1, UTIME_OMIT)]
    assert run(builtin("atime-minus-one"), events) == []


def test_atime_repeats_fold_into_one_finding_with_count():
    events = []
    for i in range(5):
        events += [setattr_call(i * S, -1, xid=i), setattr_reply(i * S + 1, xid=i)]
    r = DetectorRunner([builtin("atime-minus-one")])
    out = []
    for ev in events:
        out.extend(r.observe(ev))
    out.extend(r.finish())
    findings = [f for f in out if f["kind"] == "finding"]
    updates = [f for f in out if f["kind"] == "finding.update"]
    assert len(findings) == 1 and updates[0]["count"] == 5
    assert [f["count"] for f in run(builtin("atime-minus-one"), events)] == [5]


def test_atime_probe_only_finding():
    found = run(builtin("atime-minus-one"), [probe(S, "glfs_utimens", -1, comm="app")])
    assert len(found) == 1 and "not seen on the wire" in found[0]["title"]
    assert found[0]["introduced_by"] == "application"


def tcp(kind, t, dst, **kw):
    return make_event(t, "wire", kind, "x.pcap", conn=3, src="127.0.0.1:999", dst=dst, **kw)


def test_brick_unreachable_distinguishes_reject_and_drop():
    call = make_event(S, "wire", "rpc.call", "x", conn=1, xid=5, procedure="PORTBYBRICK",
                      src="127.0.0.1:1020", dst="127.0.0.2:24007", args={"brick": "/srv/b1"})
    reply = make_event(S + 1, "wire", "rpc.reply", "x", conn=1, xid=5, procedure="PORTBYBRICK",
                       src="127.0.0.2:24007", dst="127.0.0.1:1020", op_ret=0,
                       result={"port": 49152})
    found = run(builtin("brick-unreachable"),
                [call, reply, tcp("tcp.refused", 2 * S, "127.0.0.2:49152", reason="icmp",
                                  icmp_type=3, icmp_code=3, icmp_from="127.0.0.2"),
                 tcp("tcp.timeout", 3 * S, "127.0.0.2:49153", attempts=4, waited_ns=7 * S)])
    assert [f["action"] for f in found] == ["REJECT", "DROP"]
    assert "/srv/b1" in found[0]["explanation"]
    assert found[0]["evidence"][-1]["kind"] == "tcp.refused"


def test_a_syn_never_sent_again_is_no_drop():
    """Seen with a burst of 100 packets cut from brick-down.pcap: the SYN/ACK to glusterd
    lost, the connection went on. A DROP makes the kernel send the SYN again (1 s, 3 s...):
    one SYN in 3.9 s is no firewall."""
    runner = builtin("brick-unreachable")
    assert run(runner, [tcp("tcp.timeout", 4 * S, "127.0.0.2:24007", attempts=1,
                            waited_ns=3_900_000_000)]) == []
    (f,) = run(builtin("brick-unreachable"), [tcp("tcp.timeout", 4 * S, "127.0.0.2:24007",
                                                  attempts=3, waited_ns=3_100_000_000)])
    assert f["action"] == "DROP"


def test_brick_unreachable_ignores_unrelated_ports():
    assert run(builtin("brick-unreachable"), [tcp("tcp.refused", S, "127.0.0.1:8080", reason="rst")]) == []


def test_auth_rejected_setvolume_and_denied():
    reply = make_event(S, "wire", "rpc.reply", "x", conn=1, xid=9, procedure="SETVOLUME",
                       program="GlusterFS Handshake", src="127.0.0.2:49152", dst="127.0.0.1:1021",
                       op_ret=-1, op_errno=13, errno_name="EACCES",
                       result={"dict": {"ERROR": "Authentication failed"}})
    denied = make_event(2 * S, "wire", "rpc.reply", "x", conn=2, xid=1, procedure="DUMP",
                        program="GF-DUMP", src="127.0.0.2:49152", dst="127.0.0.1:40000",
                        reply_status="denied", reject_status="AUTH_ERROR",
                        auth_status="AUTH_REJECTEDCRED")
    found = run(builtin("auth-rejected"), [reply, denied])
    assert len(found) == 2
    assert found[0]["error_text"] == "Authentication failed"
    assert "allow-insecure" in found[1]["remedy"] and "40000" in found[1]["explanation"]


def test_rpc_unanswered_by_capture_clock():
    call = make_event(S, "wire", "rpc.call", "x", conn=1, xid=1, procedure="LOOKUP",
                      program="GlusterFS", src="a:1", dst="b:2")
    late = make_event(20 * S, "wire", "tcp.close", "x", conn=9, src="c:1", dst="d:2")
    found = run(builtin("rpc-unanswered"), [call, late])
    assert len(found) == 1 and "unanswered" in found[0]["title"]
    answered = make_event(2 * S, "wire", "rpc.reply", "x", conn=1, xid=1, procedure="LOOKUP",
                          src="b:2", dst="a:1", op_ret=0)
    assert run(builtin("rpc-unanswered"), [call, answered, late]) == []


class Boom(Detector):
    id = "boom"

    def observe(self, ev):
        raise ValueError("bad plugin")


def test_raising_detector_is_disabled_and_reported_by_name():
    runner = DetectorRunner([Boom(), builtin("rpc-unanswered")])
    out = runner.observe(make_event(S, "wire", "tcp.close", "x"))
    out += runner.observe(make_event(2 * S, "wire", "tcp.close", "x"))
    assert [e["kind"] for e in out] == ["detector.error"]
    assert out[0]["detector"] == "boom" and "boom" in runner.disabled


def test_atime_probe_only_chain_of_one_process_is_one_finding():
    events = [probe(S, "vfs_gluster_fntimes", -1), probe(S + 10, "glfs_utimens", -1),
              probe(S + 20, "glfs_setattr", -1)]
    found = run(builtin("atime-minus-one"), events)
    assert len(found) == 1 and found[0]["introduced_by"] == "samba"
    assert [e["function"] for e in found[0]["evidence"]] == ["vfs_gluster_fntimes", "glfs_utimens",
                                                            "glfs_setattr"]


def test_rpc_unanswered_ignores_one_way_callbacks():
    callback = make_event(S, "wire", "rpc.call", "x", conn=1, xid=1, program="GlusterFS Callback",
                          program_num=52743234, version=1, procedure="FETCHSPEC", procedure_num=1,
                          src="127.0.0.2:24007", dst="127.0.0.1:49151")
    late = make_event(60 * S, "wire", "tcp.close", "x", conn=9, src="c:1", dst="d:2")
    assert run(builtin("rpc-unanswered"), [callback, late]) == []


def _portmap(t, xid, port, brick="/srv/b1"):
    call = make_event(t, "wire", "rpc.call", "x", conn=1, xid=xid, procedure="PORTBYBRICK",
                      src="127.0.0.1:1020", dst="127.0.0.2:24007", args={"brick": brick})
    reply = make_event(t + 1, "wire", "rpc.reply", "x", conn=1, xid=xid, procedure="PORTBYBRICK",
                       src="127.0.0.2:24007", dst="127.0.0.1:1020", op_ret=0, result={"port": port})
    return [call, reply]


def test_a_stale_port_of_a_brick_just_killed_is_not_a_firewall():
    """The brick on 49160 was killed (its side closed the clients' connections); glusterd
    then names 49155, a port that brick had before an earlier SIGKILL and never gave back:
    RST there is the restart, brick-down's story. The same RST with no brick ending before
    it is still REJECT."""
    killed = make_event(2 * S, "wire", "tcp.close", "x", conn=2, src="127.0.0.1:998",
                        dst="127.0.0.2:49160", by="server", reason="fin")
    stale = [*_portmap(3 * S, 6, 49155), tcp("tcp.refused", 3 * S + 5, "127.0.0.2:49155", reason="rst")]
    assert run(builtin("brick-unreachable"), [*_portmap(S, 5, 49160), killed, *stale]) == []
    (f,) = run(builtin("brick-unreachable"), stale)
    assert f["action"] == "REJECT"
