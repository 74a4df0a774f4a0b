"""`--jobs N`: a capture's connections decoded in N processes give, byte for byte, what one
process gives (events, findings, renderings), on every committed real capture."""
import subprocess
import sys
from pathlib import Path

import pytest

from correlate.diagnostics import Diagnostics
from correlate.wire import parallel

CAPTURES = sorted((Path(__file__).parent / "captures").glob("*.pcap"))
IDS = [p.name for p in CAPTURES]


def correlate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "correlate", *args], capture_output=True,
                          timeout=300)


@pytest.mark.parametrize("path", CAPTURES, ids=IDS)
@pytest.mark.parametrize("form", [(), ("--json",), ("--fields", "time_ns,conn,xid,procedure,op_ret,args.bname")])
def test_decode_output_is_the_same_for_any_number_of_jobs(path, form):
    one = correlate("decode", "--jobs", "1", *form, str(path))
    assert one.returncode == 0 and one.stdout
    for jobs in ("2", "3"):
        many = correlate("decode", "--jobs", jobs, *form, str(path))
        assert (many.returncode, many.stdout, many.stderr) == (0, one.stdout, one.stderr)


@pytest.mark.parametrize("form", [(), ("--json",), ("--json", "--events")])
def test_analyze_findings_are_the_same_for_any_number_of_jobs(form):
    paths = [str(p) for p in CAPTURES]
    one = correlate("analyze", "--jobs", "1", *form, *paths)
    assert one.returncode == 0 and b"brick-unreachable" in one.stdout
    for jobs in ("2", "4"):   # fewer jobs than captures: one process per capture
        many = correlate("analyze", "--jobs", jobs, *form, *paths)
        assert (many.returncode, many.stdout, many.stderr) == (0, one.stdout, one.stderr)


@pytest.mark.parametrize("form", [(), ("--json", "--per-client")])
def test_profile_is_the_same_for_any_number_of_jobs(form):
    """Replies carry their calls' details across processes (wire.rpc.portable_later) for
    the profile's evidence, as in analyze."""
    paths = [str(p) for p in CAPTURES]
    one = correlate("profile", "--jobs", "1", *form, *paths)
    assert one.returncode == 0 and b"LOOKUP" in one.stdout
    for jobs in ("2", "4"):
        many = correlate("profile", "--jobs", jobs, *form, *paths)
        assert (many.returncode, many.stdout, many.stderr) == (0, one.stdout, one.stderr)


def test_profile_of_stdin_decoded_in_a_process_of_its_own():
    import os
    capture = Path(__file__).parent / "captures" / "busy-healthy.pcap.gz"
    runs = []
    for how in ("thread", "process"):
        with open(capture, "rb") as f:
            runs.append(subprocess.run([sys.executable, "-m", "correlate", "profile", "--json",
                                        "-"], stdin=f, capture_output=True, timeout=300,
                                       env={**os.environ, "CORRELATE_STDIN_DECODER": how}))
    assert runs[0].returncode == 0 and b'"bricks"' in runs[0].stdout
    assert (runs[1].returncode, runs[1].stdout, runs[1].stderr) == \
        (0, runs[0].stdout, runs[0].stderr)


def test_timeline_is_the_same_for_any_number_of_jobs(tmp_path):
    paths = [str(p) for p in CAPTURES]
    one = correlate("timeline", "--jobs", "1", "--json", *paths)
    many = correlate("timeline", "--jobs", "2", "--json", *paths)
    header = lambda out: out.split(b"\n", 1)[1]     # noqa: E731 (the header has a start time)
    assert one.returncode == many.returncode == 0
    assert header(many.stdout) == header(one.stdout) and header(one.stdout)


def test_a_damaged_capture_is_reported_the_same(tmp_path):
    """A capture cut inside a packet: same events before the cut, same message, exit 2."""
    data = CAPTURES[0].read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) * 2 // 3])
    one = correlate("decode", "--jobs", "1", "--json", str(cut))
    many = correlate("decode", "--jobs", "2", "--json", str(cut))
    assert one.returncode == 2 and one.stdout
    assert (many.returncode, many.stdout, many.stderr) == (one.returncode, one.stdout, one.stderr)


@pytest.mark.parametrize("path", CAPTURES, ids=IDS)
def test_shards_split_the_connections_and_icmp_follows_its_connection(path, tmp_path):
    """Each connection is decoded by exactly one shard; together they are all of them."""
    from correlate.sources import open_input
    whole = [e for e in open_input(str(path)).events]
    tasks = parallel.shard_tasks(str(path), path.name, 2, str(tmp_path))
    per_shard = []
    for t in tasks:
        parallel.decode_shard(t)
        items = list(parallel._follow(t.spool, _Done(), 0))
        per_shard.append({(e["src"], e["dst"]) for _p, _s, kind, e in items if kind == 1})
    assert per_shard[0] and per_shard[1] and not per_shard[0] & per_shard[1]
    assert per_shard[0] | per_shard[1] == {(e["src"], e["dst"]) for e in whole}
    refused = [e for e in whole if e.get("reason") == "icmp"]
    for ev in refused:        # the ICMP error went to the shard that holds its connection
        assert sum((ev["src"], ev["dst"]) in s for s in per_shard) == 1


class _Done:
    """A finished future, for reading a spool file written in this process."""

    def done(self):
        return True

    def result(self):
        return None


class _EndsWhenAsked(_Done):
    """A task that writes its whole spool file and ends right when it is first asked whether
    it is done: between the reader's two looks on a loaded machine."""

    def __init__(self, path):
        self.path = path

    def done(self):
        if not self.path.exists():
            with open(self.path, "wb") as out:
                parallel._write_batch(out, [((0, 1), parallel._EVENT, {"kind": "x"})])
        return True


def test_a_task_that_writes_its_file_and_ends_between_two_looks_is_still_read(tmp_path):
    """Under load a small shard can write everything and end between the reader's look for
    its spool file and its question whether the task is done: its events must still come
    (CI once lost every connection of one shard this way)."""
    spool = tmp_path / "s.spool"
    items = list(parallel._follow(str(spool), _EndsWhenAsked(spool), 3))
    assert items == [((0, 1), 3, parallel._EVENT, {"kind": "x"})]


def test_default_jobs_gain_only_on_large_inputs(tmp_path):
    assert parallel.default_jobs([str(p) for p in CAPTURES]) == 1
    big = tmp_path / "big.pcap"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    assert parallel.default_jobs([str(big)]) >= 1
    assert parallel.default_jobs([str(big)]) == min(len(__import__("os").sched_getaffinity(0)), 16)


def test_diagnostics_add_up_over_shards():
    diag = Diagnostics("x")
    parallel.add_diagnostics([parallel.ShardResult("a", {"r": 2}, {"r": "conn 1"}, None),
                              parallel.ShardResult("b", {"r": 3, "s": 1}, {"r": "conn 2", "s": "p 9"},
                                                   "cut")], diag)
    assert diag.counts == {"r": 5, "s": 1} and diag.first_where == {"r": "conn 1", "s": "p 9"}
    assert diag.fatal == "cut"
