"""Client workloads for the fault scenarios, run inside a mounted gfapi.Client.

`every_fop` drives each call the lab client can make once (a busy but healthy client);
`write_loop` keeps writing for a while and notes every failure and stall, for the hung-brick
and full-brick scenarios."""
from __future__ import annotations

import errno
import fcntl
import os
import time

from .gfapi import Client  # (as `python -m tests.lab.gfapi` its GfapiError is another class: catch OSError)


def every_fop(fs: Client, directory: str = "/busy", size: int = 65536) -> dict:
    """Each gfapi call once, on files under `directory`; returns the calls made, in order."""
    done: list[str] = []
    unsupported: list[str] = []

    def do(name, func, *args):
        try:
            result = func(*args)
        except OSError as exc:
            # disperse volumes answer EOPNOTSUPP to zerofill and the like: a healthy answer
            if exc.errno != errno.EOPNOTSUPP:
                raise
            unsupported.append(name)
            return None
        done.append(name)
        return result

    data = bytes(range(256)) * (size // 256)
    d = directory.rstrip("/")
    do("mkdir", fs.mkdir, d, 0o755, True)
    fd = do("creat", fs.creat, f"{d}/file")
    try:
        do("write", fs.write, fd, data)
        do("pwrite", fs.pwrite, fd, data, size)
        do("fsync", fs.fsync, fd)
        do("fdatasync", fs.fdatasync, fd)
        do("lseek", fs.lseek, fd, 0, os.SEEK_DATA)
        do("pread", fs.pread, fd, 4096, 100)
        do("fstat", fs.fstat, fd)
        do("fallocate", fs.fallocate, fd, 2 * size, 4096)
        do("zerofill", fs.zerofill, fd, 0, 4096)
        do("discard", fs.discard, fd, 4096, 4096)
        do("ftruncate", fs.ftruncate, fd, size)
        do("posix_lock", fs.posix_lock, fd, fcntl.F_SETLK, fcntl.F_WRLCK)
        do("posix_lock", fs.posix_lock, fd, fcntl.F_GETLK, fcntl.F_RDLCK)
        do("posix_lock", fs.posix_lock, fd, fcntl.F_SETLK, fcntl.F_UNLCK)
        do("fsetxattr", fs.fsetxattr, fd, "user.busy", b"1")
        do("fgetxattr", fs.fgetxattr, fd, "user.busy")
        do("fchmod", fs.fchmod, fd, 0o640)
        do("futimens", fs.futimens, fd, (1700000000, 0), (1700000000, 0))
    finally:
        do("close", fs.close, fd)
    fd = do("open", fs.open, f"{d}/file")
    try:
        do("read", fs.read, fd, 4096)
    finally:
        fs.close(fd)
    do("stat", fs.stat, f"{d}/file")
    do("access", fs.access, f"{d}/file", os.R_OK)
    do("chmod", fs.chmod, f"{d}/file", 0o644)
    do("chown", fs.chown, f"{d}/file", 0, 0)
    do("utimens", fs.utimens, f"{d}/file", (1700000000, 0), (1700000000, 0))
    do("truncate", fs.truncate, f"{d}/file", 100)
    do("setxattr", fs.setxattr, f"{d}/file", "user.other", b"2")
    do("getxattr", fs.getxattr, f"{d}/file", "user.other")
    do("listxattr", fs.listxattr, f"{d}/file")
    do("removexattr", fs.removexattr, f"{d}/file", "user.other")
    do("link", fs.link, f"{d}/file", f"{d}/hard")
    do("symlink", fs.symlink, "file", f"{d}/soft")
    do("readlink", fs.readlink, f"{d}/soft")
    do("lstat", fs.lstat, f"{d}/soft")
    do("rename", fs.rename, f"{d}/hard", f"{d}/renamed")
    do("mknod", fs.mknod, f"{d}/fifo", 0o10644)
    do("mkdir", fs.mkdir, f"{d}/sub")
    do("listdir", fs.listdir, d)
    do("statvfs", fs.statvfs, "/")
    for name in ("file", "renamed", "soft", "fifo"):
        do("unlink", fs.unlink, f"{d}/{name}")
    do("rmdir", fs.rmdir, f"{d}/sub")
    do("rmdir", fs.rmdir, d)
    return {"calls": done, "unsupported": unsupported}


def write_loop(fs: Client, path: str, seconds: float, size: int = 4096,
               interval: float = 0.2, stop_after_errors: int = 0, existing: bool = False) -> dict:
    """pwrite `size` bytes every `interval` s (fsync every 5th) for `seconds`, going on after
    failures; report each failure and each call slower than a second. `existing`: open the
    file as it is (no create, no truncate)."""
    fd = (fs.open(path, os.O_RDWR) if existing
          else fs.creat(path, flags=os.O_RDWR | os.O_CREAT | os.O_TRUNC))
    data = b"w" * size
    errors, stalls, calls = [], [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.time()
        op = "fsync" if calls % 5 == 4 else "pwrite"
        try:
            if op == "fsync":
                fs.fsync(fd)
            else:
                fs.pwrite(fd, data, (calls % 64) * size)
        except OSError as exc:
            errors.append({"op": op, "errno": exc.errno, "time": started})
            if stop_after_errors and len(errors) >= stop_after_errors:
                break
        took = time.time() - started
        if took > 1.0:
            stalls.append({"op": op, "time": started, "seconds": round(took, 3)})
        calls += 1
        time.sleep(interval)
    try:
        fs.close(fd)
    except OSError as exc:
        errors.append({"op": "close", "errno": exc.errno, "time": time.time()})
    return {"calls": calls, "errors": errors, "stalls": stalls}
