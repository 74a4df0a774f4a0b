"""The loopback lab reproduces each problem for real, and always comes back healthy; the
committed captures show what tests/captures/README.md says they show."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import dpkt
import pytest

from tests.lab import firewall, gfapi, gluster
from tests.lab import lab as labmod

# RPC call header words for GlusterFS v400 SETATTR: program 1298437, version 400, proc 38.
SETATTR_CALL = bytes.fromhex("0013d005" "00000190" "00000026")


def assert_healthy():
    state = gluster.volume_state()
    assert state.exists and state.started
    assert not gluster.leftover_options(state), state.options
    assert len(state.bricks) == 2 and all(b.online for b in state.bricks)
    assert firewall.our_rules() == []


def tcp_payloads(path):
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_LINUX_SLL2
        for _, buf in reader:
            ip = dpkt.sll2.SLL2(buf).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP):
                yield bytes(ip.data.data)


# lifecycle ----------------------------------------------------------------------------------

def test_up_is_idempotent(lab):
    again = labmod.up()
    assert again.glusterd_pid == lab.glusterd_pid or gluster.glusterd_pid() == again.glusterd_pid
    assert all(gluster.BRICK_PORT_MIN <= p <= gluster.BRICK_PORT_MAX for p in again.brick_ports)
    assert_healthy()


def test_up_repairs_leftovers_and_keeps_foreign_rules(lab):
    with labmod.exclusive():
        up_repairs_leftovers_and_keeps_foreign_rules()


def up_repairs_leftovers_and_keeps_foreign_rules():
    gluster.set_option("auth.reject", "127.0.0.1")
    firewall.block_ports(labmod.HOST, [49999], "DROP")
    foreign = ["INPUT", "-d", "127.0.0.2/32", "-p", "tcp", "--dport", "49998", "-m", "comment",
               "--comment", "correlate-lab-foreign", "-j", "DROP"]
    subprocess.run(["iptables", "-w", "10", "-I", *foreign], check=True, timeout=30)
    try:
        labmod.up()
        assert_healthy()
        rules = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True,
                               timeout=30).stdout
        assert "correlate-lab-foreign" in rules
    finally:
        subprocess.run(["iptables", "-w", "10", "-D", *foreign], timeout=30)


def test_up_starts_a_stopped_volume(lab):
    with labmod.exclusive():
        gluster.gluster("volume", "stop", labmod.VOLUME, "force")
        assert not gluster.volume_state().started
        labmod.up()
        assert_healthy()


def test_down_then_up(lab):
    with labmod.exclusive():
        labmod.down()
        assert gluster.glusterd_pid() is None
        assert gluster.brick_pids() == []
        info = labmod.up()
        assert gluster.glusterd_pid() == info.glusterd_pid
        assert_healthy()


def test_up_recreates_a_deleted_volume_over_stale_bricks(lab):
    with labmod.exclusive():
        gluster.delete_volume()  # the brick directories stay, with the old volume-id xattr
        assert not gluster.volume_state().exists
        labmod.up()
        assert_healthy()


# the libgfapi client ------------------------------------------------------------------------

def test_gfapi_times_round_trip(lab, tmp_path):
    log = tmp_path / "client.log"
    result = gfapi.run(["futimens", "--path", "/roundtrip", "--atime", "1234567890.000000001",
                        "--mtime", "-5.5", "--unlink", "--log", str(log)], timeout=30)
    assert result["status"] == "ok", result
    assert result["stat"]["atime"] == 1234567890 and result["stat"]["atime_nsec"] == 1
    assert result["stat"]["mtime"] == -5 and result["stat"]["mtime_nsec"] == 500_000_000
    assert "Connected, attached to remote volume" in log.read_text()


def test_gfapi_reports_errors(lab, tmp_path):
    result = gfapi.run(["stat", "--path", "/does-not-exist", "--log", str(tmp_path / "c.log")])
    assert result["status"] == "error" and result["errno"] == 2


# scenarios ----------------------------------------------------------------------------------

def test_healthy(lab):
    result = labmod.scenario("healthy")
    assert result.reproduced, result
    assert labmod.brick_file("/healthy") is None  # unlinked
    assert_healthy()


def test_atime_minus_one_reaches_the_brick(lab):
    result = labmod.scenario("atime-minus-one")
    assert result.reproduced, result
    assert result.details["brick_atime_ns"] == -1_000_000_000
    assert time.gmtime(-1)[:6] == (1969, 12, 31, 23, 59, 59)
    assert labmod.brick_file("/atime-minus-one") is None  # cleaned up afterwards
    assert_healthy()


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)")
def test_auth_rejected(lab):
    result = labmod.scenario("auth-rejected")
    assert result.reproduced, result
    assert result.details["hung"]
    assert "SETVOLUME on remote-host failed" in result.details["output"]
    assert "{errno=13}" in result.details["output"]
    assert any("Cannot authenticate client" in line for line in result.details["brick_lines"])
    assert_healthy()


def test_insecure_port(lab):
    result = labmod.scenario("insecure-port")
    assert result.reproduced, result
    assert result.details["client"]["status"] != "ok"
    assert any("non-privileged port" in line for line in result.details["brick_lines"])
    assert_healthy()


def test_firewall_reject(lab):
    result = labmod.scenario("firewall-reject")
    assert result.reproduced, result
    assert result.details["client"]["status"] == "error"
    assert len(result.details["rules"]) == 2
    assert_healthy()


def test_firewall_drop_hangs(lab):
    result = labmod.scenario("firewall-drop")
    assert result.reproduced, result
    assert result.details["client"]["status"] == "hung"
    assert_healthy()


def test_small_workload(lab):
    result = labmod.scenario("workload", files=20, size=1000)
    assert result.reproduced, result
    assert result.details["client"]["files"] == 20


# recording ----------------------------------------------------------------------------------

def test_record_captures_the_setattr_with_atime_minus_one(lab, tmp_path):
    out = tmp_path / "a.pcap"
    result = labmod.record("atime-minus-one", out)
    assert result.reproduced and result.packets and result.packets > 20
    calls = [p for p in tcp_payloads(out) if SETATTR_CALL in p]
    assert calls, "no SETATTR call in the capture"
    assert any(b"\xff" * 8 + (1700000000).to_bytes(8, "big") in p for p in calls)
    assert os.stat(out).st_uid == 0


# the committed captures (no lab needed; tshark is the independent cross-check) --------------

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")


def tshark(path, display_filter, *fields):
    cmd = ["tshark", "-n", "-r", str(path), "-Y", display_filter]
    if fields:
        cmd += ["-T", "fields", *[a for f in fields for a in ("-e", f)]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_committed_atime_capture_carries_minus_one(captures_dir):
    calls = [p for p in tcp_payloads(captures_dir / "atime-minus-one.pcap") if SETATTR_CALL in p]
    assert len(calls) == 1
    assert b"\xff" * 8 + (1700000000).to_bytes(8, "big") in calls[0]
    healthy = [p for p in tcp_payloads(captures_dir / "healthy.pcap") if SETATTR_CALL in p]
    assert len(healthy) == 1 and b"\xff" * 8 not in healthy[0]


@needs_tshark
def test_committed_auth_rejected_capture(captures_dir):
    replies = tshark(captures_dir / "auth-rejected.pcap",
                     "rpc.program == 14398633 && rpc.procedure == 1 && rpc.msgtyp == 1",
                     "gluster.op_ret", "gluster.op_errno")
    assert replies == ["-1\t13", "-1\t13"]


@needs_tshark
def test_committed_insecure_port_capture(captures_dir):
    denied = tshark(captures_dir / "insecure-port.pcap", "rpc.replystat == 1",
                    "rpc.program", "rpc.state_reject", "rpc.state_auth")
    assert len(denied) == 4 and set(denied) == {"123451501\t1\t2"}


@needs_tshark
def test_committed_firewall_captures(captures_dir):
    unreachable = tshark(captures_dir / "firewall-reject.pcap", "icmp.type == 3 && icmp.code == 3")
    assert len(unreachable) == 2
    retransmitted = tshark(captures_dir / "firewall-drop.pcap",
                           "tcp.analysis.retransmission && tcp.flags.syn == 1", "tcp.dstport")
    assert len(retransmitted) >= 4 and all(int(p) >= 49152 for p in retransmitted)
    assert tshark(captures_dir / "firewall-drop.pcap",
                  "tcp.flags.syn == 1 && tcp.flags.ack == 1 && tcp.srcport >= 49152") == []


def test_insecure_port_is_about_the_port(lab, tmp_path):
    """Same refusal setting, but a client bound below 1024 (root, client-bind-insecure off)
    mounts: the source port is the cause."""
    with labmod.staged("insecure-port"):
        result = gfapi.run(["init", "--xlator-option", "*-client-*:client-bind-insecure=off",
                            "--log", str(tmp_path / "c.log")], timeout=20)
    assert result["status"] == "ok", result


def test_default_workload_capture_is_big_enough(lab, tmp_path):
    """The benchmarks rely on the default workload giving a capture of at least 100k packets."""
    out = tmp_path / "workload.pcap"
    result = labmod.record("workload", out)
    assert result.reproduced, result
    with open(out, "rb") as f:
        count = sum(1 for _ in dpkt.pcap.Reader(f))
    assert count == result.packets and count >= 100_000


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("smbd"), reason="needs root and smbd")
def test_smbd_takes_a_free_port_when_its_own_is_taken():
    """Another smbd (or anything) on 127.0.0.1:4450 must not end `make run` with a traceback."""
    import socket
    from tests.lab import samba
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind((samba.ADDRESS, samba.PORT))
            holder.listen()
        except OSError:
            pass                       # something else holds it already: the same situation
        with samba.Smbd() as smbd:
            assert smbd.port != samba.PORT
            with socket.create_connection((samba.ADDRESS, smbd.port), timeout=5):
                pass                   # the new smbd answers on the port it took
