"""Driving a probed child process in the bcc tests: it reads `name args...` lines and prints
each call's result; the collector's events are gathered until enough have come."""
from __future__ import annotations

import time


def call_and_collect(child, collector, calls, want: int, pause: float = 0.0) -> list[dict]:
    """Send each (line, expected result) to the child, then poll `collector` until `want`
    events came (5 s at most); stop the collector and the child either way."""
    seen: list[dict] = []
    try:
        for line, expect in calls:
            child.stdin.write(line + "\n")
            child.stdin.flush()
            assert int(child.stdout.readline()) == expect, line
            time.sleep(pause)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(seen) < want:
            seen += collector.poll(50)
        seen += collector.poll(100)
    finally:
        seen += collector.stop()
        child.stdin.close()
        child.wait(10)
    return seen


def skip_unless_bcc() -> None:
    """Skip, saying why, where bcc probes cannot run: not root, or bcc or the kernel headers
    missing."""
    import os

    import pytest

    from correlate.probe.bcc_backend import check_bcc_prerequisites
    from correlate.probe.errors import ProbeError
    if os.geteuid() != 0:
        pytest.skip("bcc probes need root")
    try:
        check_bcc_prerequisites()
    except ProbeError as exc:
        pytest.skip(str(exc))
