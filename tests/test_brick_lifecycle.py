"""A brick's life as the detectors tell it: brick-down (the process died) against
brick-not-responding (it hung), on the committed captures and logs and on event sequences for
the corners; and the details both must get right (ping-timeout's source, "answering again"
only on a real reply, the client's own log lines as evidence)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.events import make_event
from correlate.gluster.volfile import blocks, clients_of
from tests.test_detectors import S, builtin, run, runner_of
from tests.test_fault_detectors import CLIENT, BRICK, call, close, reply, setvolume

CAPTURES = Path(__file__).parent / "captures"
DOWN = CAPTURES / "brick-down.pcap"
DOWN_LOGS = [CAPTURES / "brick-down.client.log", CAPTURES / "brick-down.brick.log"]


def correlate(command: str, *paths) -> list[dict]:
    res = subprocess.run([sys.executable, "-m", "correlate", command, "--json", *map(str, paths)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def findings(*paths, detector: str) -> list[dict]:
    return [f for f in correlate("analyze", *paths)
            if f.get("kind") == "finding" and f.get("detector") == detector]


def clock(time_ns: int) -> str:
    import time
    return time.strftime("%H:%M:%S", time.gmtime(time_ns / 1e9)) + f".{time_ns % 10**9 // 10**6:03d}"


# ---- brick-down on the real capture ------------------------------------------------------

def test_killed_brick_of_a_distribute_volume_is_down_with_enotconn():
    events = correlate("decode", DOWN)
    kill = next(e for e in events if e["kind"] == "tcp.close" and e.get("by") == "server")
    signin = next(e for e in events if e.get("procedure") == "SIGNIN" and e["kind"] == "rpc.call")
    refusals = [e for e in events if e.get("procedure") == "PORTBYBRICK"
                and e["kind"] == "rpc.reply" and e.get("op_ret") == -1]
    (f,) = findings(DOWN, detector="brick-down")
    assert f["severity"] == "error"
    assert f["brick"] == signin["args"]["brick"] == "/srv/correlate-lab/downvol/b2"
    assert f["volume"] == "downvol" and f["only_copy"] and f["enotconn"]
    assert "ENOTCONN" in f["explanation"] and "only copy" in f["explanation"]
    # the times are those of the capture's own marks: the brick's FIN, its SIGNIN
    assert f["since_ns"] == kill["time_ns"] and f["back_ns"] == signin["time_ns"]
    assert f["down_ns"] == signin["time_ns"] - kill["time_ns"] > 10 * S
    assert f["portmap_refusals"] == len(refusals) >= 3
    assert clock(signin["time_ns"]) in f["explanation"]
    assert f"port {signin['args']['port']}" in f["explanation"]
    assert "gluster volume start downvol force" in f["remedy"]
    assert "gluster volume status downvol" in f["remedy"]
    assert "srv-correlate-lab-downvol-b2.log" in f["remedy"]
    assert f["answered_ns"] > f["back_ns"]        # the client's new connection got a reply
    kinds = [(e["kind"], e.get("procedure")) for e in f["evidence"]]
    assert kinds[0] == ("tcp.close", None) and ("rpc.reply", "PORTBYBRICK") in kinds
    assert ("rpc.call", "SIGNIN") in kinds


def test_brick_down_cites_the_client_and_brick_logs():
    (f,) = findings(DOWN, *DOWN_LOGS, detector="brick-down")
    logs = [e for e in f["evidence"] if e["layer"] == "log"]
    messages = " | ".join(e["message"] for e in logs)
    assert "keep trying to connect" in messages               # the client lost it
    assert "failed to get the port number" in messages          # PORTBYBRICK said no
    assert any(e["source"] == "brick-down.brick.log" and "Started running" in e["message"]
               for e in logs)                                   # the restart, by the brick
    assert f["log_enotconn"] > 0 and "failed with ENOTCONN" in f["explanation"]
    assert all(f["since_ns"] - 2 * S <= e["time_ns"] <= f["answered_ns"] + S for e in logs)


def test_brick_down_is_not_called_a_hang_or_a_firewall():
    out = [f for f in correlate("analyze", DOWN, *DOWN_LOGS) if f.get("kind") == "finding"]
    assert not [f for f in out if f["detector"] in ("brick-not-responding", "brick-unreachable")]


def test_a_quick_restart_of_a_replica_brick_is_info():
    """busy-healthy: brick 3 of a replica 3 SIGKILLed, `start force` 2 s later."""
    (f,) = findings(CAPTURES / "busy-healthy.pcap.gz", detector="brick-down")
    assert f["severity"] == "info" and f["brick"] == "/srv/correlate-lab/busyrep3/b3"
    assert "busyrep3-replicate-0" in f["explanation"] and not f["only_copy"]
    assert f["down_ns"] < 5 * S and f["back_ns"] is not None


def test_a_quick_restart_of_the_only_copy_with_nothing_lost_is_info():
    """stale-handle: its one brick killed and restarted in 2.4 s between two clients' calls."""
    (f,) = findings(CAPTURES / "stale-handle.pcap", detector="brick-down")
    assert f["severity"] == "info" and f["only_copy"] and f["lost_calls"] == 0
    assert f["down_ns"] < 5 * S


BRICK_DIES = ("brick-down.pcap", "busy-healthy.pcap.gz", "stale-handle.pcap",   # tested above
              "fuse-enotconn.pcap")        # a brick killed under a FUSE mount (test_fuse.py)


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("*.pcap*")
                                           if p.name not in BRICK_DIES))
def test_no_brick_down_where_no_brick_died(capture):
    assert findings(CAPTURES / capture, detector="brick-down") == []


# ---- brick-down corners --------------------------------------------------------------------

GLUSTERD, OLD, NEW = "127.0.0.2:24007", BRICK, "127.0.0.2:49300"
PATH = "/bricks/b2"


def portmap(t, xid, port, conn=20):
    c = call(t, xid, "PORTBYBRICK", conn=conn, dst=GLUSTERD, args={"brick": PATH})
    r = reply(t + 1000, xid, "PORTBYBRICK", conn=conn, src=GLUSTERD,
              op_ret=-1 if port == 0 else 0, result={"status": 0, "port": port})
    return [c, r]


def signin(t, port=49300, conn=30):
    return call(t, 1, "SIGNIN", conn=conn, src="127.0.0.2:1020", dst=GLUSTERD,
                args={"brick": PATH, "port": port, "pid": 99})


def volfile(t, sets):
    bricks = [["127.0.0.2", "/bricks/b1"], ["127.0.0.2", PATH]]
    return reply(t, 2, "GETSPEC", conn=1, src=GLUSTERD, dst="127.0.0.1:1000",
                 args={"key": "vol"}, result={"bricks": bricks, "brick_sets": sets})


def killed(down_s, *, before=(), lost=False):
    """A brick connection, the brick's FIN, PORTBYBRICK -1 every 3 s, SIGNIN at down_s and
    the client's reconnect."""
    events = [*before, setvolume(0), reply(1000, 1, "SETVOLUME")]
    if lost:
        events.append(call(S - 1000, 40, "WRITE"))
    events.append(close(S, by="server"))
    events += [e for i, t in enumerate(range(4, int(down_s) + 1, 3)) for e in portmap(t * S, 50 + i, 0)]
    back = S + int(down_s * S)
    events += [signin(back), *portmap(back + S, 90, 49300)]
    events += [call(back + S + 5000, 1, "DUMP", conn=31, dst=NEW),
               reply(back + S + 6000, 1, "DUMP", conn=31, src=NEW)]
    return events


REPLICA = [{"name": "vol-replicate-0", "type": "replicate",
            "bricks": [["127.0.0.2", "/bricks/b1"], ["127.0.0.2", PATH]]}]


def test_severity_follows_what_the_clients_could_have_got():
    cases = [  # (volfile sets, down s, lost call) -> severity
        (([]), 10, False, "error"),          # only copy, down 10 s
        (([]), 2, True, "error"),            # only copy, a call lost at the close
        (([]), 2, False, "info"),            # only copy, brief, nothing lost
        ((REPLICA), 10, True, "info"),       # the replica kept serving
        ((REPLICA), 70, False, "warning"),   # the set ran degraded for over a minute
        ((None), 10, False, "warning"),      # no volfile: cannot tell
        ((None), 2, False, "info"),
    ]
    for sets, down_s, lost, severity in cases:
        before = [] if sets is None else [volfile(0, sets)]
        (f,) = run(builtin("brick-down"), killed(down_s, before=before, lost=lost))
        assert f["severity"] == severity, (sets, down_s, lost, f["explanation"])
        assert f["back_ns"] == S + int(down_s * S)
        if lost:
            assert f["lost_calls"] == 1 and "WRITE (xid 40)" in f["explanation"]


def test_an_application_seen_failing_makes_it_an_error_even_on_a_replica():
    probe = make_event(3 * S, "probe", "probe.return", "bcc", function="glfs_pwrite", pid=77,
                       tid=77, retval=-1, errno=107)
    events = killed(10, before=[volfile(0, REPLICA)])
    events.insert(4, probe)
    (f,) = run(builtin("brick-down"), sorted(events, key=lambda e: e["time_ns"]))
    assert f["severity"] == "error" and "glfs_pwrite in pid 77" in f["explanation"]


def test_one_server_close_alone_is_no_outage():
    """A brick may drop one client; without PORTBYBRICK, refusals or a restart it is not down."""
    events = [setvolume(0), close(S, by="server"), call(2 * S, 5, "LOOKUP", conn=7)]
    assert run(builtin("brick-down"), events) == []


def test_still_down_when_the_input_ends():
    events = [volfile(0, []), setvolume(0), close(S, by="server"),
              *portmap(4 * S, 50, 0), *portmap(7 * S, 51, 0)]
    (f,) = run(builtin("brick-down"), events)
    assert f["title"].endswith("(still down)") and f["back_ns"] is None
    assert f["severity"] == "error" and "still down" in f["explanation"]


def test_the_first_brick_down_then_the_next_outage_is_counted():
    first = killed(10, before=[volfile(0, [])])
    later = [dict(e, time_ns=e["time_ns"] + 100 * S) for e in killed(10)[1:]]
    found = run(builtin("brick-down"), first + later)
    assert len(found) == 1 and found[0]["count"] == 2


def test_a_refused_connect_to_a_dead_brick_is_not_a_firewall():
    refused = make_event(2 * S, "wire", "tcp.refused", "x", conn=9, src=CLIENT, dst=OLD,
                         reason="rst")
    events = [setvolume(0), close(S, by="server"), refused]
    assert run(builtin("brick-unreachable"), events) == []
    assert len(run(builtin("brick-unreachable"), [setvolume(0), refused])) == 1


# ---- brick-not-responding: what the capture carries ---------------------------------------

def hang_events() -> list[dict]:
    return correlate("decode", CAPTURES / "brick-hang.pcap")


@pytest.mark.parametrize("drop, said", [
    ((), "ping-timeout 5 s, from SETVOLUME"),
    (("SETVOLUME",), "ping-timeout 5 s, from the volfile"),
    (("SETVOLUME", "GETSPEC"), "ping-timeout 5 s, measured from the PING to the client's FIN"),
])
def test_ping_timeout_comes_from_the_capture_and_says_where(drop, said):
    events = [e for e in hang_events() if e.get("procedure") not in drop]
    hung = [f for f in run(builtin("brick-not-responding"), events) if f["severity"] == "error"]
    assert len(hung) == 1 and said in hung[0]["explanation"], hung[0]["explanation"]
    assert "ping-timeout 42" not in hung[0]["explanation"]


def test_answering_again_is_the_late_ping_reply():
    events = hang_events()
    hung, back = run(builtin("brick-not-responding"), events)
    ping = next(e for e in hung["evidence"] if e.get("procedure") == "PING")
    ping_reply = next(e for e in events if e["kind"] == "rpc.reply" and e.get("xid") == ping["xid"]
                      and e.get("conn") == ping["conn"])
    assert back["title"].startswith("brick answering again")
    assert back["time_ns"] == back["answered_ns"] == ping_reply["time_ns"]


def test_a_kernel_handshake_is_not_the_brick_answering():
    """A stopped brick's listening socket still completes the client's new handshake: only
    the first RPC reply on that connection says the brick is back."""
    connect = make_event(8 * S, "wire", "tcp.connect", "x", conn=7, src="127.0.0.1:50000", dst=BRICK)
    events = [setvolume(0), call(S, 9, "PING"), close(7 * S), connect,
              call(8 * S + 1000, 1, "DUMP", conn=7, src="127.0.0.1:50000"),
              reply(12 * S, 1, "DUMP", conn=7, dst="127.0.0.1:50000")]
    hung, back = run(builtin("brick-not-responding"), events)
    assert back["time_ns"] == 12 * S and "new connection" in back["explanation"]
    assert "by the kernel alone" in back["explanation"]


def gave_up_line(t):
    return make_event(t, "log", "log.message", "mnt.log", level="C", xlator="vol-client-1",
                      message="server 127.0.0.2:49226 has not responded in the last 5 seconds, "
                              "disconnecting.", fields={})


@pytest.mark.parametrize("before_fin", [True, False])
def test_the_client_log_line_is_cited(before_fin):
    log = gave_up_line(7 * S - 1000 if before_fin else 7 * S + 2000)
    events = [setvolume(0, ping_timeout=None), call(S, 9, "PING"), close(7 * S)]
    events.insert(2 if before_fin else 3, log)
    events.sort(key=lambda e: e["time_ns"])
    runner = runner_of("brick-not-responding")
    out = [f for ev in events for f in runner.observe(ev)] + runner.finish()
    (hung,) = [f for f in out if f["kind"] == "finding"]
    if before_fin:
        text, evidence = hung["explanation"], hung["evidence"]
    else:
        (update,) = [u for u in out if u["kind"] == "finding.update"]
        text, evidence = update["explanation"], update["evidence"]
    assert "has not responded in the last 5 seconds" in text
    assert any(e["layer"] == "log" for e in evidence)
    assert "ping-timeout 5 s, from the client log" in text


def test_volfile_names_every_brick_and_the_ping_timeout():
    text = ("volume v-client-0\n type protocol/client\n option remote-host h\n"
            " option remote-subvolume /b1\n option ping-timeout 5\nend-volume\n"
            "volume v-client-1\n type protocol/client\n option remote-host h\n"
            " option remote-subvolume /b2\nend-volume\n"
            "volume v-dht\n type cluster/distribute\n subvolumes v-client-0 v-client-1\nend-volume\n")
    assert clients_of(blocks(text)) == ([("h", "/b1"), ("h", "/b2")], "5")
    assert clients_of(blocks(text.replace(" option ping-timeout 5\n", ""))) == (
        [("h", "/b1"), ("h", "/b2")], None)
