"""What applications saw while a brick did not answer, worded for findings: a libgfapi call
(probe.return) or a FUSE request (fuse.reply, or fuse.pending while it still waits) that
failed with ENOTCONN or was blocked."""
from __future__ import annotations

ENOTCONN = 107


def enotconn(ev: dict) -> bool:
    return ev.get("errno_name") == "ENOTCONN" or ev.get("errno") == ENOTCONN


def took(ev: dict) -> int:
    """How long an application's call took (a FUSE request: its latency, or its wait so far)."""
    for key in ("duration_ns", "latency_ns", "waited_ns"):
        if isinstance(ev.get(key), int):
            return ev[key]
    return 0


def call_name(ev: dict) -> str:
    """glfs_pwrite, or openat() (FUSE CREATE): the system call when the probe named it."""
    if not ev.get("kind", "").startswith("fuse."):
        return str(ev.get("function"))
    op = f"FUSE {ev.get('opcode')}"
    return f"{ev['syscall']}() ({op})" if ev.get("syscall") else op


def what_they_saw(apps: list[dict]) -> str:
    """"glfs_fsync in pid 77 blocked 7.0 s; openat() (FUSE CREATE) in python pid 9 failed
    with ENOTCONN"."""
    return "; ".join(
        f"{call_name(a)} in "
        f"{a.get('comm') + ' ' if a.get('kind', '').startswith('fuse.') and a.get('comm') else ''}"
        f"pid {a.get('pid')} "
        + ("failed with ENOTCONN" if enotconn(a)
           else f"blocked {took(a) / 1e9:.1f} s"
           + (" and still waited" if a.get("kind") == "fuse.pending" else ""))
        for a in apps)
