"""Replies carry their call's credential and identifying arguments, so the timeline filters
keep both halves of an RPC, on the lab's real captures."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from correlate.cli import main
from correlate.sources import open_input

ATIME = Path(__file__).parent / "captures" / "atime-minus-one.pcap"


def timeline(*args) -> list[dict]:
    res = CliRunner().invoke(main, ["timeline", "--json", *map(str, args)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()[1:]]


def test_reply_carries_the_calls_cred_and_identifying_args():
    events = list(open_input(str(ATIME)).events)
    calls = {(e["conn"], e["xid"]): e for e in events if e["kind"] == "rpc.call"}
    replies = [e for e in events if e["kind"] == "rpc.reply" and (e["conn"], e["xid"]) in calls]
    assert replies
    for reply in replies:
        call = calls[(reply["conn"], reply["xid"])]
        assert reply["cred"] == call["cred"]
        for key, value in reply["args"].items():
            assert call["args"][key] == value
    lookup = next(r for r in replies if r["procedure"] == "LOOKUP" and r["args"].get("bname"))
    assert lookup["args"]["bname"] == "atime-minus-one" and "pargfid" in lookup["args"]
    setattr_reply = next(r for r in replies if r["procedure"] == "SETATTR")
    assert "gfid" in setattr_reply["args"] and "atime" not in setattr_reply["args"]


def test_filters_keep_both_halves_and_findings_by_pid():
    events = list(open_input(str(ATIME)).events)
    pid = next(e["cred"]["pid"] for e in events if e["kind"] == "rpc.call" and e.get("procedure") == "SETATTR")
    by_pid = timeline(ATIME, "--pid", pid)
    kinds = {(e["kind"], e.get("procedure")) for e in by_pid}
    assert ("rpc.call", "SETATTR") in kinds and ("rpc.reply", "SETATTR") in kinds
    assert any(e["kind"] == "finding" and e["detector"] == "atime-minus-one" for e in by_pid)
    by_path = timeline(ATIME, "--path", "atime-minus-one")
    assert {"rpc.call", "rpc.reply"} <= {e["kind"] for e in by_path if e.get("procedure") == "LOOKUP"}
    gfid = next(e["args"]["gfid"] for e in events if e["kind"] == "rpc.call" and e.get("procedure") == "SETATTR")
    by_gfid = timeline(ATIME, "--gfid", gfid[:8])
    assert ("rpc.reply", "SETATTR") in {(e["kind"], e.get("procedure")) for e in by_gfid}
