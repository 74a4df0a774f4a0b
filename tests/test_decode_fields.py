"""`correlate decode --fields`: tab-separated event fields, like tshark -T fields, with RPC
credentials, args and results decoded only when a field needs them."""
import json
import subprocess
import sys
from collections import Counter

import pytest

from correlate.outputs.fields import format_fields, needs_details, parse_fields
from correlate.wire.decode import decode_capture
from tests.test_gluster_captures import CAPTURES, needs_captures, needs_tshark, tshark_calls

DETAIL_KEYS = {"cred", "args", "result", "decode_error"}   # op_ret/op_errno are always read


def decode_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "correlate", "decode", *args],
                          capture_output=True, text=True, timeout=120)


def test_field_names_are_keys_or_dotted_paths():
    assert parse_fields("xid, args.path,cred.uid") == [("xid",), ("args", "path"), ("cred", "uid")]
    for bad in ("", "xid,,procedure", "args.", ".path"):
        with pytest.raises(ValueError):
            parse_fields(bad)
    assert not needs_details(parse_fields("time_ns,xid,program,procedure,latency_ns"))
    assert needs_details(parse_fields("xid,args.atime")) and needs_details(parse_fields("cred.pid"))
    assert not needs_details(parse_fields("op_ret,op_errno,errno_name"))


def test_one_column_per_field_whatever_the_values():
    ev = {"xid": 7, "procedure": "LOOKUP", "args": {"bname": "a\tb\nc\x1b[31m", "flags": ["X", "Y"]},
          "result": {"xdata": {"k": "v"}}, "op_ret": -1}
    line = format_fields(ev, parse_fields("xid,procedure,args.bname,args.flags,result.xdata,"
                                          "decode_error,args.bname.deeper,op_ret"))
    cols = line.split("\t")
    assert cols == ["7", "LOOKUP", "a\\tb\\nc\\x1b[31m", '["X","Y"]', '{"k":"v"}', "", "", "-1"]
    assert "\x1b" not in line and "\n" not in line


@needs_captures
@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_events_without_details_are_the_full_events_less_the_details(path):
    full = list(decode_capture(str(path)))
    lean = list(decode_capture(str(path), details=False))
    assert len(lean) == len(full) and full
    for f, lv in zip(full, lean):
        assert not DETAIL_KEYS & lv.keys()
        assert {k: v for k, v in f.items() if k not in DETAIL_KEYS} == lv
    assert any("args" in e for e in full) and any("op_ret" in e for e in full)


@needs_captures
@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_fields_output_is_the_json_output_projected(path):
    spec = "kind,src,dst,xid,program_num,procedure_num,latency_ns,args.path,op_errno,cred.pid"
    fields = decode_cli("--fields", spec, str(path))
    as_json = decode_cli("--json", str(path))
    assert fields.returncode == 0 and as_json.returncode == 0, fields.stderr + as_json.stderr
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert fields.stdout.splitlines() == [format_fields(e, parse_fields(spec)) for e in events]
    assert any(line.split("\t")[-1] for line in fields.stdout.splitlines())   # cred.pid present


@needs_captures
@needs_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_fields_hold_every_call_tshark_decodes(path):
    """The same question `make bench` asks both tools, answered alike."""
    theirs = tshark_calls(path)
    out = decode_cli("--fields", "kind,src,dst,xid,program_num,procedure_num", str(path))
    mine = Counter()
    for line in out.stdout.splitlines():
        kind, src, dst, xid, prog, proc = line.split("\t")
        if kind == "rpc.call":
            mine[(int(src.rsplit(":", 1)[1]), int(dst.rsplit(":", 1)[1]), int(xid), int(prog),
                  int(proc))] += 1
    assert sum(theirs.values()) > 0 and not theirs - mine


def test_fields_and_json_together_is_a_usage_error(tmp_path):
    path = CAPTURES[0] if CAPTURES else tmp_path / "none.pcap"
    both = decode_cli("--json", "--fields", "xid", str(path))
    assert both.returncode == 2 and "choose one" in both.stderr and "Traceback" not in both.stderr
    empty = decode_cli("--fields", "xid,,kind", str(path))
    assert empty.returncode == 2 and "bad field name" in empty.stderr


@needs_captures
def test_from_a_pipe_each_line_comes_while_the_input_stays_open():
    """A few events on a pipe that stays open (tcpdump still running) are printed at once,
    not held back for a batch."""
    import select
    proc = subprocess.Popen([sys.executable, "-m", "correlate", "decode", "--fields", "kind,xid", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(CAPTURES[0].read_bytes())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "no line while stdin is still open"
        assert proc.stdout.readline().decode().startswith(("rpc.", "tcp."))
    finally:
        proc.kill()
        proc.wait()
