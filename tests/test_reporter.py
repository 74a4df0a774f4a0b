"""Reporter: event lines to a file are written in batches, yet never after a finding that
follows them, and none is lost at close; a line-buffered (live) output gets each at once."""
import io

from correlate.engine.pipeline import HELD_LINES, Reporter


def _event(i: int) -> dict:
    return {"time_ns": i, "layer": "wire", "kind": "rpc.call", "source": "t", "xid": i}


def _finding(i: int) -> dict:
    return {"time_ns": i, "layer": "finding", "kind": "finding", "source": "t", "detector": "d",
            "id": "d", "severity": "warning", "title": f"finding after {i}", "evidence": []}


def test_lines_to_a_file_keep_their_order_around_findings(tmp_path):
    path = tmp_path / "out.txt"
    with open(path, "w") as out:
        assert not out.line_buffering
        reporter = Reporter(show_events=True, out=out, fields=[("xid",)], color=False)
        n = HELD_LINES * 2 + 7
        for i in range(n):
            reporter.event(_event(i))
            if i in (3, HELD_LINES + 1):
                reporter.finding(_finding(i))
                # the finding was flushed, and every event before it is in the file already
                written = [int(line) for line in path.read_text().splitlines() if line.isdigit()]
                assert written == list(range(i + 1))
        reporter.close()
    lines = path.read_text().splitlines()
    xids = [int(line) for line in lines if line.isdigit()]
    assert xids == list(range(n))
    for i in (3, HELD_LINES + 1):
        at = next(k for k, line in enumerate(lines) if f"finding after {i}" in line)
        assert [int(x) for x in lines[:at] if x.isdigit()] == list(range(i + 1))


def test_a_line_buffered_output_gets_every_event_at_once():
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, line_buffering=True)
    reporter = Reporter(show_events=True, out=out, fields=[("xid",)], color=False)
    reporter.event(_event(41))
    assert raw.getvalue() == b"41\n"
