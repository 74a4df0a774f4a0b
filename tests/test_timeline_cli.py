"""`correlate timeline` on the lab's real captures (and real captures made at both ends of a
veth pair for --sync-clocks)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from correlate.cli import main
from correlate.cli.timeline_filter import EventFilter, parse_time

from .test_clocksync import (ADDR_B, NEEDS_NETNS, PORT, namespaces, rpc_exchange,  # noqa: F401
                             start_tcpdump, stop_tcpdump)
from .test_perfetto import check_trace_event_format

CAPTURES = Path(__file__).parent / "captures"
ATIME = CAPTURES / "atime-minus-one.pcap"
AUTH = CAPTURES / "auth-rejected.pcap"
needs_captures = pytest.mark.skipif(not ATIME.exists() or not AUTH.exists(), reason="lab captures missing")


def run(*args, ok=True):
    result = CliRunner().invoke(main, ["timeline", *map(str, args)], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def json_events(result) -> list[dict]:
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["kind"] == "timeline.header" and lines[0]["schema"] == "correlate/1"
    return lines[1:]


def test_parse_time():
    assert parse_time("2024-01-01T10:00:00Z") == ("abs", 1704103200 * 10**9)
    assert parse_time("2024-01-01 12:00:00.5+02:00") == ("abs", 1704103200 * 10**9 + 500_000_000)
    assert parse_time("1700000000.25") == ("abs", 1700000000 * 10**9 + 250_000_000)
    assert parse_time("+1.5s") == ("rel", 1_500_000_000)
    assert parse_time("+20ms") == ("rel", 20_000_000)
    for bad in ("yesterday", "+5 parsecs", "2024-13-01T00:00:00"):
        with pytest.raises(click.BadParameter):
            parse_time(bad)


def test_filter_keeps_findings_by_their_evidence():
    ev = {"time_ns": 10, "layer": "wire", "kind": "rpc.call", "conn": 3, "src": "a:1", "dst": "b:2",
          "args": {"gfid": "8a7f9f72-d023-4abb-b092-c10c92cd6de6"}}
    finding = {"time_ns": 11, "layer": "finding", "kind": "finding", "evidence": [ev]}
    assert EventFilter(conn="3")(ev) and EventFilter(conn="3")(finding)
    assert not EventFilter(conn="4")(finding)
    assert EventFilter(conn="b:2")(ev) and not EventFilter(conn="c:2")(ev)
    assert EventFilter(gfid="8A7F9F72D023")(ev) and not EventFilter(gfid="00")(ev)
    assert not EventFilter(layers=["wire"])(finding)
    f = EventFilter(since=("rel", 5))
    assert not f({"time_ns": 100, "layer": "log"})   # the first event sets the base: +5 is 105
    assert not f({"time_ns": 104, "layer": "log"}) and f({"time_ns": 105, "layer": "log"})


@needs_captures
def test_terminal_lines_with_findings():
    result = run(AUTH)
    assert "SETVOLUME" in result.stdout and "EACCES" in result.stdout
    assert "== [" in result.stdout                       # a finding block
    assert "events shown" in result.stderr


@needs_captures
def test_ladder():
    result = run(AUTH, "--ladder")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("time (UTC)") and "client 127.0.0.1" in lines[0]
    assert any("glusterd 127.0.0.2:24007" in line for line in lines if line.startswith("time"))
    assert any("|--c" in line and "SETVOLUME" in line for line in lines)
    assert any("<--c" in line and "op_ret=-1 EACCES" in line for line in lines)
    assert any(line.lstrip().startswith("* ") and "FINDING [" in line for line in lines)


@needs_captures
def test_json_and_filters():
    everything = json_events(run(AUTH, "--json"))
    assert all({"time_ns", "layer", "kind", "source"} <= set(e) for e in everything)
    findings = [e for e in everything if e["kind"] == "finding"]
    assert findings
    only = json_events(run(AUTH, "--json", "--layer", "finding"))
    assert {e["layer"] for e in only} == {"finding"} and len(only) >= len(findings)

    setvolume_conn = next(e["conn"] for e in everything if e.get("procedure") == "SETVOLUME")
    conn = json_events(run(AUTH, "--json", "--conn", setvolume_conn))
    wire = [e for e in conn if e["layer"] == "wire"]
    assert wire and {e["conn"] for e in wire} == {setvolume_conn}

    t0 = everything[0]["time_ns"]
    window = json_events(run(AUTH, "--json", "--since", "+2ms", "--until", "+3ms"))
    expected = [e for e in everything if t0 + 2_000_000 <= e["time_ns"] <= t0 + 3_000_000]
    assert window and window == expected and len(window) < len(everything)


@needs_captures
def test_gfid_and_pid_filters():
    events = json_events(run(ATIME, "--json", "--layer", "wire"))
    setattr_call = next(e for e in events if e.get("procedure") == "SETATTR" and e["kind"] == "rpc.call")
    gfid = setattr_call["args"]["gfid"]
    chosen = json_events(run(ATIME, "--json", "--gfid", gfid[:8]))
    assert chosen and all(gfid == (e.get("args") or {}).get("gfid") or e["layer"] == "finding" for e in chosen)
    assert any(e["kind"] == "finding" for e in chosen)
    pid = (setattr_call.get("cred") or {}).get("pid")
    if pid is not None:
        by_pid = json_events(run(ATIME, "--json", "--pid", pid, "--layer", "wire"))
        assert by_pid and all(e["cred"]["pid"] == pid for e in by_pid)


@needs_captures
@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark missing")
def test_all_renderings_in_one_pass(tmp_path):
    html, trace, pcapng = tmp_path / "r.html", tmp_path / "t.json", tmp_path / "a.pcapng"
    result = run(ATIME, "--html", html, "--perfetto", trace, "--pcapng", pcapng)
    assert result.stdout == ""                # renderings to files only
    page = html.read_text()
    assert "atime -1 sent to the bricks in SETATTR" in page
    events = check_trace_event_format(json.loads(trace.read_text()))
    assert any(te["ph"] == "X" and te["name"].endswith("SETATTR") for te in events)
    assert any(te["cat"] == "finding" for te in events)
    # tshark: the commented packets are the SETATTR call and its reply (GlusterFS proc 38).
    out = subprocess.run(["tshark", "-r", str(pcapng), "-Y", "frame.comment", "-T", "fields",
                          "-e", "frame.number", "-e", "rpc.msgtyp", "-e", "rpc.xid", "-e", "rpc.procedure",
                          "-e", "frame.comment"], capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[1] for r in rows] == ["0", "1"] and rows[0][2] == rows[1][2]
    assert rows[0][3] == "38"
    assert all("correlate: finding atime-minus-one [error]" in r[4] for r in rows)


@needs_captures
def test_log_merged_with_capture_and_escaped(tmp_path):
    first = json_events(run(AUTH, "--json", "--layer", "wire"))
    t = first[len(first) // 2]["time_ns"]
    import datetime as dt
    stamp = dt.datetime.fromtimestamp(t / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    log = tmp_path / "mnt.log"
    log.write_text(f"[{stamp} +0000] E [MSGID: 114044] [client-handshake.c:1101:client_setvolume_cbk] "
                   f"0-labvol-client-0: SETVOLUME on remote-host failed \x1b[2J "
                   f"[{{remote-error=Authentication failed}}, {{errno=13}}, {{error=Permission denied}}] \n")
    merged = json_events(run(AUTH, "--host", f"client={log}", "--json"))
    logs = [i for i, e in enumerate(merged) if e["layer"] == "log"]
    assert len(logs) == 1 and merged[logs[0]]["host"] == "client"
    times = [e["time_ns"] for e in merged if e["layer"] != "finding"]
    assert times == sorted(times)
    text = run(AUTH, log, "--layer", "log").stdout
    assert "SETVOLUME on remote-host failed" in text and "\x1b" not in text and "\\x1b" in text


def test_usage_errors(tmp_path):
    assert run(ok=False).exit_code == 2
    assert run("--host", "nonsense", ok=False).exit_code == 2
    log = tmp_path / "x.log"
    log.write_text("[2024-01-01 10:00:00.000001 +0000] I [a.c:1:f] 0-x: hello\n")
    result = run(log, "--pcapng", tmp_path / "o.pcapng", ok=False)   # the other outputs go on
    assert result.exit_code == 2 and "capture" in result.stderr   # a usage error
    result = run("--host", f"a={log}", "--sync-clocks", ok=False)
    assert result.exit_code == 2 and "two hosts" in result.stderr
    result = run(tmp_path / "missing.pcap", ok=False)
    assert result.exit_code == 2 and "missing.pcap" in result.stderr


@NEEDS_NETNS
def test_sync_clocks_between_two_hosts(namespaces, tmp_path):  # noqa: F811
    ns_a, ns_b, veth_a, veth_b = namespaces
    cap_a, cap_b = tmp_path / "client.pcap", tmp_path / "server-raw.pcap"
    dumps = [start_tcpdump(ns_a, veth_a, str(cap_a), PORT), start_tcpdump(ns_b, veth_b, str(cap_b), PORT)]
    try:
        rpc_exchange(ns_b, ns_a, ADDR_B, PORT, count=10, gap_s=0.005)
    finally:
        for d in dumps:
            stop_tcpdump(d)
    shifted = tmp_path / "server.pcap"
    subprocess.run(["editcap", "-t", "-3.5", str(cap_b), str(shifted)], check=True, capture_output=True)

    plain = json_events(run("--host", f"client={cap_a}", "--host", f"server={shifted}", "--json",
                            "--layer", "wire", "--no-detect"))
    synced = run("--host", f"client={cap_a}", "--host", f"server={shifted}", "--json", "--layer", "wire",
                 "--no-detect", "--sync-clocks")
    m = re.search(r"clock of server is ([\d.]+) s behind client \(\+/- ([\d.]+) s, from 10 RPC pairs\)",
                  synced.stderr)
    assert m, synced.stderr
    assert abs(float(m.group(1)) - 3.5) <= float(m.group(2)) + 1e-6
    events = json_events(synced)

    def check_causal(evs) -> bool:
        """Each call reaches the server after the client sent it; each reply after it left."""
        by = {(e["host"], e["kind"], e["xid"]): e["time_ns"] for e in evs if "xid" in e}
        xids = {e["xid"] for e in evs if "xid" in e}
        return all(by[("client", "rpc.call", x)] <= by[("server", "rpc.call", x)] <=
                   by[("server", "rpc.reply", x)] <= by[("client", "rpc.reply", x)] for x in xids)

    assert not check_causal(plain)      # 3.5 s apart: the server seems to answer before the call
    assert check_causal(events)
    server = [e for e in events if e["host"] == "server"]
    assert server and all(3_499_000_000 < e["clock_offset_ns"] < 3_501_000_000 for e in server)


# -- the ladder on its own -----------------------------------------------------------------

def _wire(kind, t, src, dst, xid=None, **kw):
    ev = {"time_ns": t, "layer": "wire", "kind": kind, "source": kw.pop("source", "c.pcap"), "src": src,
          "dst": dst, "conn": 1}
    if xid is not None:
        ev["xid"] = xid
    ev.update(kw)
    return ev


def test_ladder_columns_arrows_and_escaping():
    from correlate.outputs.ladder import Ladder, render_ladder
    hostile = "vol\x1b[2J\u202e"
    events = [
        _wire("rpc.call", 1, "127.0.0.1:1021", "127.0.0.2:49152", 7, procedure="SETVOLUME"),
        _wire("rpc.call", 1, "127.0.0.1:1021", "127.0.0.2:49152", 7, procedure="SETVOLUME", source="s.pcap"),
        {"time_ns": 2, "layer": "log", "kind": "log.message", "source": "l", "level": "E",
         "domain": f"0-{hostile}-client-0", "message": "SETVOLUME on remote-host failed"},
        _wire("rpc.reply", 3, "127.0.0.2:49152", "127.0.0.1:1021", 7, procedure="SETVOLUME", op_ret=-1,
              errno_name="EACCES"),
    ]
    lines = list(render_ladder(events, width=100))
    assert lines[0].split() == ["time", "(UTC)", "client", "127.0.0.1", "brick", "127.0.0.2:49152"]
    arrows = [line for line in lines if "SETVOLUME" in line and "|" in line]
    assert len(arrows) == 1                     # the copy from the server's capture is drawn once
    call, reply = arrows[0], next(line for line in lines if "EACCES" in line)
    # The call points right into the brick's column, the reply left into the client's.
    brick_col = lines[0].index("brick")
    assert call.index(">") == brick_col - 1 and reply.index("<") == lines[0].index("client") + 1
    note = next(line for line in lines if "log E" in line)
    assert "\x1b" not in note and "\u202e" not in note and "\\x1b" in note and "\\u202e" in note

    narrow = Ladder(width=60)                    # room for 3 columns; the 4th endpoint shares "(other)"
    out = []
    for port in (49152, 49153, 49154):
        out += narrow.add(_wire("rpc.call", port, "127.0.0.1:1", f"127.0.0.2:{port}", port, procedure="STAT"))
    assert narrow.columns[-1] == "(other)" and len(narrow.columns) == 3
    assert out[-2].startswith("time (UTC)") and "(other)" in out[-2]


# -- three layers of real data: capture, client log, brick log from one lab run ------------------

@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tcpdump") or not shutil.which("glusterd"),
                    reason="needs root, tcpdump and glusterd (the loopback lab)")
def test_capture_client_log_and_brick_log_on_one_timeline(tmp_path):
    """insecure-port: the brick logs the refusal, replies MSG_DENIED, the client logs the error;
    merged, the three appear in that order for the same client port."""
    from tests.lab import lab
    capture = tmp_path / "insecure-port.pcap"
    result = lab.record("insecure-port", capture)
    assert result.reproduced, result.summary
    client_log = result.details["client_log"]
    brick_logs = sorted(Path("/var/log/glusterfs/bricks").glob("*.log"))
    start = subprocess.run(["tshark", "-r", str(capture), "-c", "1", "-T", "fields", "-e", "frame.time_epoch"],
                           capture_output=True, text=True, check=True).stdout.strip()
    args = [capture, "--host", f"client={client_log}"] + [a for b in brick_logs for a in ("--host", f"server={b}")]
    events = json_events(run(*args, "--since", start, "--json"))

    denied = next(e for e in events if e.get("reply_status") == "denied")
    client_port = denied["dst"]
    refusal = [e for e in events if e["layer"] == "log" and e.get("host") == "server"
               and "non-privileged port" in e["message"] and client_port in e["message"]]
    logs = [(e["time_ns"], e["host"], e["level"], e["message"][:120]) for e in events
            if e["layer"] == "log"]
    why = f"denied reply {denied['time_ns']} to {client_port}; log lines: {logs}"
    assert refusal, "the brick's log line about this client port is on the timeline: " + why
    client_side = [e for e in events if e["layer"] == "log" and e.get("host") == "client" and e["level"] == "W"
                   and e["time_ns"] >= denied["time_ns"]]
    assert refusal[0]["time_ns"] <= denied["time_ns"], why
    # The client's threads log "socket or ib related error" and "received RPC status error" in
    # either order: the claim is that the latter follows the denied reply on the timeline.
    assert any("RPC status error" in e["message"] for e in client_side), why
    finding = next(e for e in events if e["kind"] == "finding" and "AUTH_REJECTEDCRED" in e["title"])
    assert finding["time_ns"] >= denied["time_ns"]

    html = tmp_path / "r.html"
    run(*args, "--since", start, "--html", html)
    page = html.read_text()
    assert "non-privileged port" in page and "AUTH_REJECTEDCRED" in page
