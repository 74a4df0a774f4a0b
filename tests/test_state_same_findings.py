"""The shared Gluster state changes no finding: `analyze --json` and `profile --json` on every
committed capture (with its probes and logs where it has them) print exactly what the code
before it printed (main at 8c66177, where each detector kept its own Topology and Files).

The references under tests/fixtures/same_findings/ were written by that code:

    git archive 8c66177 | tar -x -C /tmp/old && ln -s ../plugins /tmp/old/correlate/plugins
    PYTHONPATH=/tmp/old .venv/bin/python tests/test_state_same_findings.py

Run it again only when a change means to alter findings, and say why in the commit (so
far: the probe layer's typed schema keeps probes' fd pointers, which the single schema had
dropped and counted; captures added since, TLS and FUSE (and TLS with a key log), got their first reference; the
TCP keepalive probes became `tcp.keepalive` events, which changed only the event count line
of the captures that hold some; the TLS captures' note and tls-failure's remedy came to name
`--probe tls-keys` and `--tls-keylog`, nothing else in them changed).
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent
CAPTURES = ROOT / "captures"
REFERENCE = ROOT / "fixtures" / "same_findings"


def cases() -> dict[str, list[str]]:
    """name -> the command's arguments after `correlate`."""
    out = {}
    for capture in sorted(CAPTURES.glob("*.pcap*")):
        stem = capture.name.split(".pcap")[0]
        beside = sorted(str(p) for p in CAPTURES.glob(f"{stem}.*")
                        if p.suffix in (".jsonl", ".log"))
        keys = CAPTURES / f"{stem}.keys"      # a TLS capture's key log: decrypted
        keylog = ["--tls-keylog", str(keys)] if keys.exists() else []
        out[f"analyze-{stem}"] = ["analyze", "--json", *keylog, str(capture), *beside]
        out[f"profile-{stem}"] = ["profile", "--json", *keylog, str(capture)]
    # per client, where the client is named from a call's credential (decoded only then)
    for stem in ("brick-hang-late", "busy-healthy", "fuse-enotconn", "tls-expired12", "healthy"):
        capture = next(CAPTURES.glob(f"{stem}.pcap*"))
        out[f"profile-per-client-{stem}"] = ["profile", "--per-client", "--json", str(capture)]
    # the three busiest, also decoded in two processes (--jobs 3: this one runs the detectors)
    for stem in ("busy-healthy", "slow-brick-queue", "brick-hang"):
        capture = next(CAPTURES.glob(f"{stem}.pcap*"))
        out[f"analyze-jobs3-{stem}"] = ["analyze", "--json", "--jobs", "3", str(capture)]
    return out


def run(args: list[str]) -> str:
    """stdout, and the summary line on stderr (so an input without findings compares too)."""
    res = subprocess.run([sys.executable, "-m", "correlate", *args], capture_output=True,
                         text=True, timeout=300, cwd="/")   # no repository on sys.path
    assert res.returncode in (0, 1), res.stderr
    # paths in the output are relative to the repository either way
    summary = [line for line in res.stderr.splitlines() if line.startswith("correlate: ")]
    return (res.stdout + "".join(f"# {line}\n" for line in summary)).replace(str(ROOT.parent) + "/", "")


@pytest.mark.parametrize("name", sorted(cases()))
def test_same_output_as_before_the_shared_state(name):
    expected = (REFERENCE / f"{name}.out").read_text()
    got = run(cases()[name])
    assert got == expected


if __name__ == "__main__":
    REFERENCE.mkdir(parents=True, exist_ok=True)
    for name, args in cases().items():
        (REFERENCE / f"{name}.out").write_text(run(args))
        print(name)
