"""Gluster log parsing: the formats logging.c writes, damage, and the lab's real logs."""
from __future__ import annotations

import calendar
import glob
import io
import os

import pytest

from correlate.diagnostics import Diagnostics
from correlate.sources.logs import (MAX_CONTINUATION_LINES, MAX_LINE_BYTES, looks_like_gluster_log,
                            parse_timestamp, read_gluster_log)

SETVOLUME = (
    "[2024-01-01 10:00:00.123456 +0000] E [MSGID: 114044] [client-handshake.c:1101:"
    "client_setvolume_cbk] 0-vol-client-0: SETVOLUME on remote-host failed "
    "[{remote-error=Authentication failed}, {errno=13}, {error=Permission denied}] \n")


def parse(text: str, **kw):
    diag = Diagnostics("t")
    events = list(read_gluster_log(io.BytesIO(text.encode()), "t.log", diag=diag, **kw))
    return events, diag


def epoch_ns(y, mo, d, h, mi, s, us=0):
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 10**9 + us * 1000


def test_structured_message_with_offset():
    (ev,), diag = parse(SETVOLUME, host="client1")
    assert ev["layer"] == "log" and ev["kind"] == "log.message" and ev["source"] == "t.log"
    assert ev["host"] == "client1"
    assert ev["time_ns"] == epoch_ns(2024, 1, 1, 10, 0, 0, 123456)
    assert (ev["level"], ev["level_name"], ev["msgid"]) == ("E", "ERROR", 114044)
    assert (ev["file"], ev["line"], ev["function"]) == ("client-handshake.c", 1101, "client_setvolume_cbk")
    assert ev["domain"] == "0-vol-client-0" and ev["xlator"] == "vol-client-0" and ev["graph_id"] == 0
    assert ev["message"] == "SETVOLUME on remote-host failed"
    assert ev["fields"] == {"remote-error": "Authentication failed", "errno": "13",
                            "error": "Permission denied"}
    assert not diag.counts


def test_old_release_without_offset_is_utc_and_traditional_format():
    line = ("[2014-03-11 14:34:43.286470] E [client-handshake.c:1778:client_query_portmap_cbk] "
            "0-vol-client-0: failed to get the port number for remote subvolume.\n")
    (ev,), _ = parse(line)
    assert ev["time_ns"] == epoch_ns(2014, 3, 11, 14, 34, 43, 286470)
    assert ev["msgid"] is None and ev["fields"] == {}
    assert ev["message"].startswith("failed to get the port number")


def test_non_utc_offset_is_applied():
    assert parse_timestamp("2024-01-01 12:00:00.000001 +0200") == epoch_ns(2024, 1, 1, 10, 0, 0, 1)
    assert parse_timestamp("2024-01-01 12:00:00 -0130") == epoch_ns(2024, 1, 1, 13, 30, 0)
    assert parse_timestamp("2024-13-01 12:00:00") is None


def test_strerror_suffix_and_duplicate_keys():
    text = ("[2026-11-23 22:22:40.870264 +0000] E [MSGID: 101032] [store.c:461:gf_store_handle_retrieve] "
            "0-: Path corresponding to /var/lib/glusterd/glusterd.info. [No such file or directory]\n"
            "[2026-11-23 22:22:44.761272 +0000] W [MSGID: 115048] [server.c:1318:server_init] "
            "0-labvol-server: WARNING: Failed to set 'ulimit -n 1M' [{errno=Operation not permitted}, "
            "{errno=1}, {error=Operation not permitted}] \n")
    (a, b), diag = parse(text)
    assert a["domain"] == "0-" and a["xlator"] == ""
    assert a["strerror"] == "No such file or directory"
    assert a["message"] == "Path corresponding to /var/lib/glusterd/glusterd.info."
    assert b["fields"] == {"errno": "Operation not permitted", "errno#2": "1",
                           "error": "Operation not permitted"}
    assert not diag.counts


def test_call_stack_and_repetition_and_continuation():
    text = (
        "[2026-11-23 22:22:44.711092 +0000] I [run.c:259:runner_log] (-->/usr/lib/glusterd.so(+0xc6c53) "
        "[0x7f6bc38c6c53] -->/lib/libglusterfs.so.0(runner_log+0x100) [0x7f6bc845afa0] ) 0-management: "
        "Ran script: /x.sh --volname=labvol \n"
        "Final graph:\n"
        "+-----+\n"
        "  1: volume management\n"
        "+-----+\n"
        'The message "I [MSGID: 106496] [glusterd-handshake.c:954:__server_getspec] 0-management: '
        'Received mount request for volume labvol" repeated 3 times between '
        "[2026-11-23 22:24:16.290727 +0000] and [2026-11-23 22:24:49.623323 +0000]\n")
    (a, b), diag = parse(text)
    assert a["callstack"].startswith("-->/usr/lib/glusterd.so") and a["domain"] == "0-management"
    assert a["message"] == "Ran script: /x.sh --volname=labvol"
    assert a["continuation"].splitlines() == ["Final graph:", "+-----+", "  1: volume management", "+-----+"]
    assert b["repeated"] == 3 and b["msgid"] == 106496
    assert b["first_time_ns"] == epoch_ns(2026, 11, 23, 22, 24, 16, 290727)
    assert b["time_ns"] == epoch_ns(2026, 11, 23, 22, 24, 49, 623323)
    assert b["message"] == "Received mount request for volume labvol"
    assert not diag.counts


def test_structured_message_without_fields():
    text = ("[2026-11-23 22:31:35.045010 +0000] E [MSGID: 114058] [client-handshake.c:1193:"
            "client_query_portmap_cbk] 0-labvol-client-0: failed to get the port number for remote "
            "subvolume. Please run gluster volume status on server to see if brick process is running [] \n")
    (ev,), _ = parse(text)
    assert ev["message"].endswith("to see if brick process is running") and ev["fields"] == {}


def test_cmd_history_lines():
    text = "[2026-11-23 22:22:44.856166 +0000]  : volume start labvol : SUCCESS\n"
    (ev,), _ = parse(text)
    assert ev["message"] == "volume start labvol : SUCCESS" and ev["level"] is None
    assert looks_like_gluster_log(text.encode())


def test_damage_is_counted_not_raised():
    junk = ("garbage before any entry\n"
            "[2024-99-01 10:00:00.1 +0000] E [a.c:1:f] 0-x: bad month\n"
            + "\x00\xff binary \x1b[31m\n" + SETVOLUME)
    events, diag = parse(junk)
    assert len(events) == 1 and events[0]["msgid"] == 114044
    assert diag.counts["log line outside any entry"] == 2
    assert diag.counts["unparseable log entry"] == 1


def test_long_lines_are_cut_and_continuations_bounded():
    long_line = "x" * (MAX_LINE_BYTES * 3) + "\n"
    text = SETVOLUME + long_line + "cont\n" * (MAX_CONTINUATION_LINES + 50) + SETVOLUME
    events, diag = parse(text)
    assert len(events) == 2
    first = events[0]
    assert len(first["continuation"].splitlines()[0]) == MAX_LINE_BYTES
    assert first["continuation_dropped"] == 51
    assert any("longer than" in r for r in diag.counts)


def test_text_file_object_and_path(tmp_path):
    p = tmp_path / "client.log"
    p.write_text(SETVOLUME)
    assert next(read_gluster_log(str(p), "client.log"))["msgid"] == 114044
    with open(p) as f:
        assert next(read_gluster_log(f, "client.log"))["msgid"] == 114044


def test_sniffing():
    assert looks_like_gluster_log(SETVOLUME.encode())
    assert looks_like_gluster_log(b"\n" + SETVOLUME.encode())
    assert not looks_like_gluster_log(b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00")   # a pcap header
    assert not looks_like_gluster_log(b'{"schema":"correlate/1"}\n')
    assert not looks_like_gluster_log(b"[2024-01-01] something else\n")


def real_logs() -> list[str]:
    """glusterd, cli, brick logs, and the lab's libgfapi client logs (tests/lab/gfapi.py),
    looked up when the test runs: on a fresh machine the lab writes them during the session."""
    return sorted(glob.glob("/var/log/glusterfs/*.log") + glob.glob("/var/log/glusterfs/bricks/*.log")
                  + glob.glob("/var/log/correlate-lab/*.log"))


def test_real_gluster_logs_parse_cleanly(lab):
    """Every entry of the lab's own logs parses: nothing outside an entry, no broken entry.
    The lab is up (glusterd and brick logs); a healthy client run adds a client log if none
    is there yet."""
    if not glob.glob("/var/log/correlate-lab/*-client.log"):
        from tests.lab import scenarios
        scenarios.run("healthy")
    paths = [p for p in real_logs() if os.path.getsize(p) > 0]
    assert any("/bricks/" in p for p in paths) and any(p.endswith("-client.log") for p in paths), paths
    for path in paths:
        _check_log(path)


def _check_log(path: str) -> None:
    diag = Diagnostics(path)
    events = list(read_gluster_log(path, os.path.basename(path), diag=diag))
    assert events, path
    assert not diag.counts, (path, diag.summary_lines())
    with open(path, "rb") as f:
        assert looks_like_gluster_log(f.read(4096)), path
    for ev in events:
        assert isinstance(ev["time_ns"], int) and ev["time_ns"] > 1_500_000_000 * 10**9, (path, ev)
        assert ev["level"] in (None, " ", "M", "A", "C", "E", "W", "N", "I", "D", "T"), (path, ev)
        # Structured fields were all taken out of the message text.
        assert "[{" not in ev["message"] and not ev["message"].endswith("[]"), (path, ev)


from hypothesis import given, settings
from hypothesis import strategies as st

_PIECES = st.sampled_from([
    "[2024-01-01 10:00:00.123456 +0000] ", "[2024-01-01 10:00:00.1] ", "E ", "W ", "[MSGID: 1] ",
    "[a.c:12:fn] ", "0-vol-client-0: ", "(-->x ) ", "[{k=v}, {k2=v2}]", "[]", " [Err]", "The message \"",
    "\" repeated 3 times between [2024-01-01 10:00:00.1] and [2024-01-01 10:00:01.1]", "\n", "\r\n",
    "\x00", "\xff", "{", "}", "=", ", ", "[", "]", ":", "Final graph:\n"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=20)), max_size=40), st.binary(max_size=200))
def test_any_input_is_read_without_raising(pieces, noise):
    data = "".join(pieces).encode("utf-8", "surrogatepass") + noise
    diag = Diagnostics("fuzz")
    events = list(read_gluster_log(io.BytesIO(data), "fuzz", diag=diag))
    for ev in events:
        assert isinstance(ev["time_ns"], int) and ev["layer"] == "log" and isinstance(ev["fields"], dict)
    looks_like_gluster_log(data)


def test_pathological_lines_still_parse_as_entries():
    """Lines built to make a backtracking parser crawl: each still becomes one entry."""
    head = "[2024-01-01 10:00:00.1 +0000] E [a.c:1:f] "
    lines = [head + "(-->" + ") 0-" * 16000, head + "0-" + "x" * 60000, head + "0-x: m" + " [a" * 20000]
    events, diag = parse("\n".join(lines) + "\n")
    assert len(events) == 3 and not diag.counts
    assert events[1]["domain"] is None and events[1]["message"].startswith("E [a.c:1:f] 0-xxx")
