"""daemon-errors: Gluster's own daemons failing at their job (a rebalance that cannot write
to a full brick), told from the everyday errors of their crawls, which are never findings."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.plugins.daemon_errors import DaemonErrors
from correlate.state import GlusterState
from correlate.testing import run_detector

CAPTURES = Path(__file__).parent / "captures"
S = 1_000_000_000
UUID = "CTX_ID:0d4f7c0e-1111-2222-3333-444455556666-GRAPH_ID:0-PID:{pid}-HOST:vm-PC_NAME:{xl}-RECON_NO:-0"


def setvolume(t, conn, process_name, pid=4242, brick="/srv/b2", volume="spread"):
    return {"time_ns": t, "layer": "wire", "kind": "rpc.call", "source": "t.pcap", "conn": conn,
            "xid": 1, "program": "GlusterFS Handshake", "procedure": "SETVOLUME",
            "src": "127.0.0.1:1000", "dst": "127.0.0.2:49200",
            "args": {"dict": {"process-uuid": UUID.format(pid=pid, xl=f"{volume}-client-1"),
                              "process-name": process_name, "remote-subvolume": brick,
                              "remote-host": "127.0.0.2", "volfile-key": volume}}}


def error(t, conn, procedure, errno_name, xid=2):
    return {"time_ns": t, "layer": "wire", "kind": "rpc.reply", "source": "t.pcap", "conn": conn,
            "xid": xid, "program": "GlusterFS", "procedure": procedure, "op_ret": -1,
            "errno_name": errno_name, "src": "127.0.0.2:49200", "dst": "127.0.0.1:1000"}


def run(events) -> list[dict]:
    return run_detector(DaemonErrors(GlusterState()), events)


def test_a_rebalance_that_cannot_write_to_a_full_brick():
    events = [setvolume(S, 5, "rebalance"), error(2 * S, 5, "CREATE", "ENOSPC"),
              error(3 * S, 5, "WRITE", "ENOSPC", xid=3), error(4 * S, 5, "LOOKUP", "ENOENT", xid=4)]
    (f,) = run(events)
    assert f["severity"] == "warning" and f["daemon"] == "rebalance" and f["volume"] == "spread"
    assert f["title"] == "the rebalance process failing on volume spread"
    assert "gluster volume rebalance spread status" in f["remedy"]
    assert f["count"] == 1        # the WRITE refined the CREATE's finding, not a second one
    assert "CREATE ENOSPC x1, WRITE ENOSPC x1" in f["explanation"]     # the final word
    assert "127.0.0.2:/srv/b2 (2)" in f["explanation"]


@pytest.mark.parametrize("errno_name", ["ENOENT", "ESTALE", "ENODATA", "EAGAIN"])
def test_a_crawls_everyday_errors_are_not_findings(errno_name):
    assert run([setvolume(S, 5, "glustershd"), error(2 * S, 5, "INODELK", errno_name)]) == []


def test_an_applications_errors_are_other_detectors_business():
    assert run([setvolume(S, 5, "gfapi.qemu-img"), error(2 * S, 5, "WRITE", "EIO")]) == []
    assert run([error(2 * S, 5, "WRITE", "EIO")]) == []          # nobody known on it


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("*.pcap*")))
def test_silent_on_every_committed_capture(capture):
    res = subprocess.run([sys.executable, "-m", "correlate", "analyze", "--json",
                          "--detector", "daemon-errors", str(CAPTURES / capture)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert [json.loads(line) for line in res.stdout.splitlines()] == []
