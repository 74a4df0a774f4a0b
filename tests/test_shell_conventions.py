"""Shell conventions on the real captures: colour only when wanted (NO_COLOR, TERM=dumb,
--color), progress on a terminal, --fields refusing unknown names, messages that say what
happened, help texts that agree."""
from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from correlate.cli import main

CAPTURES = Path(__file__).parent / "captures"
AUTH = CAPTURES / "auth-rejected.pcap"
CORRELATE = [sys.executable, "-m", "correlate"]
ESC = "\x1b["


def on_a_terminal(args, env_extra=None, timeout=120) -> str:
    """Run correlate with stdout and stderr on a pseudo-terminal; what it printed."""
    env = {**os.environ, "TERM": "xterm", **(env_extra or {})}
    env.pop("NO_COLOR", None) if "NO_COLOR" not in (env_extra or {}) else None
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(CORRELATE + args, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=timeout)
    os.close(primary)
    return b"".join(chunks).decode("utf-8", "replace")


def test_colour_follows_no_color_term_and_the_option():
    assert ESC in on_a_terminal(["analyze", str(AUTH)])
    assert ESC not in on_a_terminal(["analyze", str(AUTH)], {"NO_COLOR": "1"})
    assert ESC not in on_a_terminal(["analyze", str(AUTH)], {"TERM": "dumb"})
    assert ESC not in on_a_terminal(["analyze", "--color", "never", str(AUTH)])
    assert ESC not in on_a_terminal(["decode", str(AUTH)], {"NO_COLOR": "1"})
    assert ESC in on_a_terminal(["timeline", "--layer", "finding", str(AUTH)])
    piped = subprocess.run(CORRELATE + ["analyze", "--color", "always", str(AUTH)],
                           capture_output=True, text=True, timeout=120)
    assert ESC in piped.stdout


def test_analyze_shows_progress_on_a_terminal(tmp_path):
    """Over 1000 events and a second of work: the counter line appears, then is wiped."""
    big = tmp_path / "big.jsonl"
    res = subprocess.run(CORRELATE + ["timeline", "--json", str(CAPTURES / "healthy.pcap")],
                         capture_output=True, text=True, check=True, timeout=120)
    lines = res.stdout.splitlines()
    events = [json.loads(line) for line in lines[1:]]
    with open(big, "w") as f:
        f.write(lines[0] + "\n")
        for i in range(1500):          # the capture's events again and again, a second apart
            for ev in events:
                f.write(json.dumps({**ev, "time_ns": ev["time_ns"] + i * 10**9}) + "\n")
    text = on_a_terminal(["analyze", "--color", "never", str(big)], timeout=300)
    assert re.search(r"\r\d+ events, at \d\d:\d\d:\d\d", text), text[-500:]


def test_fields_refuses_unknown_names_and_lists_the_valid_ones():
    res = subprocess.run(CORRELATE + ["decode", "--fields", "kind,bname", str(AUTH)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown field 'bname'" in res.stderr
    assert "args.bname" in res.stderr and "procedure" in res.stderr and "xid" in res.stderr
    ok = subprocess.run(CORRELATE + ["decode", "--fields", "kind,args.bname,result.op_ret", str(AUTH)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_timeline_to_files_does_not_claim_to_show_events(tmp_path):
    res = CliRunner().invoke(main, ["timeline", str(AUTH), "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 0
    assert "events shown" not in res.stderr and "passed the filters into the outputs" in res.stderr


def test_the_jq_example_prints_each_finding_once():
    """`analyze --help`'s jq example, on a capture whose finding folds (both bricks)."""
    help_text = CliRunner().invoke(main, ["analyze", "--help"]).stdout
    jq_filter = re.search(r"\| jq -r '([^']+)'", help_text).group(1)
    res = subprocess.run(CORRELATE + ["analyze", "--json", str(AUTH)], capture_output=True, text=True,
                         timeout=120)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert any(e["kind"] == "finding.update" for e in events)     # a folded finding is there
    if jq_filter == 'select(.kind == "finding") | .title':
        titles = [e["title"] for e in events if e["kind"] == "finding"]
    else:
        pytest.fail(f"the example changed: {jq_filter}")
    assert len(titles) == len(set(titles))


def test_probe_offset_means_the_same_in_every_command():
    texts = [CliRunner().invoke(main, [cmd, "--help"]).stdout for cmd in ("run", "probe", "probes")]
    for text in texts:
        flat = " ".join(text.split())
        assert "--probe-offset FUNC=0xADDR" in flat and "ELF virtual address" in flat, flat
        assert "file offset" not in flat


def test_shell_completion_is_documented_and_works():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "_CORRELATE_COMPLETE=bash_source correlate" in readme
    res = subprocess.run([str(Path(sys.executable).parent / "correlate")],
                         env={**os.environ, "_CORRELATE_COMPLETE": "bash_complete",
                              "COMP_WORDS": "correlate tim", "COMP_CWORD": "1"},
                         capture_output=True, text=True, timeout=60)
    assert "timeline" in res.stdout


def test_large_integers_stay_exact_where_the_docs_say(tmp_path):
    """docs/events.md: --fields prints the digits, the HTML report keeps them as text."""
    from correlate.outputs.html import write_html
    from correlate.sources import open_input
    ino = "12867908867289900242"      # above 2**53: a double would round it
    docs = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    assert ino in docs
    res = subprocess.run(CORRELATE + ["decode", "--fields", "result.stat.ia_ino",
                                      str(CAPTURES / "healthy.pcap")],
                         capture_output=True, text=True, timeout=60)
    assert ino in res.stdout.split()
    out = tmp_path / "r.html"
    write_html(open_input(str(CAPTURES / "healthy.pcap")).events, str(out))
    data = json.loads(re.search(r'id="timeline-data">(.*?)</script>', out.read_text()).group(1))
    assert all(isinstance(r["t"], int) and r["t"] < 2**53 for r in data["rows"])
    assert any(f'"ia_ino":{ino}' in r["detail"] for r in data["rows"])   # compact JSON, as text
