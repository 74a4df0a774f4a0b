"""One capture filter everywhere a user is told how to capture: the README's, which keeps
glusterd's and every brick's port and the ICMP answers of a REJECT firewall."""
from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from correlate.cli import COMMANDS, main

ROOT = Path(__file__).parent.parent
FILTER_AFTER_W = re.compile(r"tcpdump [^|`]*?-w \S+\s*\\?\s*'([^']+)'")


def readme_filter() -> str:
    (first, *_rest) = FILTER_AFTER_W.findall((ROOT / "README.md").read_text())
    return first


def test_readme_filter_keeps_what_the_diagnoses_need():
    f = readme_filter()
    assert "icmp" in f and "24007" in f and "49152-49251" in f


def test_every_doc_and_help_uses_the_readme_filter():
    expected = readme_filter()
    texts = {p.name: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    for name in [None, *COMMANDS]:
        args = [name, "--help"] if name else ["--help"]
        texts[f"correlate {name or ''} --help"] = CliRunner().invoke(main, args).stdout
    found = 0
    for where, text in texts.items():
        for f in FILTER_AFTER_W.findall(text):
            found += 1
            assert f == expected, f"{where}: {f!r}"
    assert found >= 6
