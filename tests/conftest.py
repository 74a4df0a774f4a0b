"""Shared fixtures. The `lab` fixture brings up the loopback Gluster lab (tests/lab/) once per
session, or skips the test with the reason when this machine cannot run it."""
from __future__ import annotations

import ctypes.util
import os
import shutil
from pathlib import Path

import pytest

CAPTURES = Path(__file__).parent / "captures"


def lab_missing() -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the lab needs root (glusterd, tcpdump, iptables)"
    for tool in ("glusterd", "gluster", "tcpdump", "iptables", "ip"):
        if shutil.which(tool) is None:
            return f"the lab needs `{tool}` (run `make deps`)"
    if ctypes.util.find_library("gfapi") is None:
        return "the lab needs libgfapi (Debian package libgfapi0)"
    return None


def pytest_collection_modifyitems(items):
    # Every test that uses the lab carries the `lab` marker: `-m "not lab"` deselects them.
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab():
    """The running lab's LabInfo (volume, host, glusterd pid, bricks with their ports).
    The lab is left up afterwards: the next session starts fast."""
    reason = lab_missing()
    if reason:
        print(f"\nskipping lab tests: {reason}")
        pytest.skip(reason)
    from tests.lab import lab as lab_module
    return lab_module.up()


@pytest.fixture
def tls_lab(lab):
    """The lab's TLS setup (PKI, `tlsvol` with TLS, `tlsvolplain` without), held for one test."""
    from tests.lab import lab as lab_module
    from tests.lab import tls
    with lab_module.exclusive():
        pki = tls.up()
        tls.ensure_volume("tlsvol")
        tls.ensure_volume("tlsvolplain", {})
        yield pki


@pytest.fixture
def captures_dir() -> Path:
    """tests/captures: the real captures recorded on the lab (see its README.md)."""
    return CAPTURES
