"""A libgfapi client that takes a POSIX write lock (glfs_posix_lock, F_SETLKW) on a file,
holds it, and releases it: two of them make a lock wait on the wire.

    python -m tests.lab.locker --path /locked --hold 12

prints one JSON line when the lock is granted ({"event": "locked", "time_ns": ...}) and one
at the end ({"status": "ok", "waited_ns": ..., "locked_ns": ..., "unlocked_ns": ...}).
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import sys
import time

from .gfapi import DEFAULT_LOG, LOG_LEVEL_INFO, SERVER, VOLUME, Client, GfapiError


class Flock(ctypes.Structure):
    """struct flock of Linux (x86_64 and aarch64 share it)."""
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short),
                ("l_start", ctypes.c_long), ("l_len", ctypes.c_long), ("l_pid", ctypes.c_int)]


def posix_lock(fs: Client, fd, cmd: int, lock_type: int) -> None:
    func = fs.lib.glfs_posix_lock
    func.argtypes, func.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(Flock)], ctypes.c_int
    fs._check("glfs_posix_lock", func(fd, cmd, ctypes.byref(Flock(lock_type, os.SEEK_SET, 0, 0, 0))))


def hold_lock(fs: Client, path: str, hold_s: float) -> dict:
    fd = fs.creat(path, flags=os.O_RDWR | os.O_CREAT)
    asked = time.time_ns()
    posix_lock(fs, fd, fcntl.F_SETLKW, fcntl.F_WRLCK)
    locked = time.time_ns()
    print(json.dumps({"event": "locked", "pid": os.getpid(), "time_ns": locked}), flush=True)
    time.sleep(hold_s)
    unlocked = time.time_ns()
    posix_lock(fs, fd, fcntl.F_SETLK, fcntl.F_UNLCK)
    fs.close(fd)
    return {"asked_ns": asked, "locked_ns": locked, "unlocked_ns": unlocked,
            "waited_ns": locked - asked}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.locker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", required=True)
    ap.add_argument("--hold", type=float, default=1.0, help="seconds to hold the lock")
    ap.add_argument("--volume", default=VOLUME)
    ap.add_argument("--server", default=SERVER)
    ap.add_argument("--log", default=DEFAULT_LOG)
    opts = ap.parse_args(argv)
    try:
        fs = Client(opts.volume, opts.server, log_file=opts.log, log_level=LOG_LEVEL_INFO).init()
        result = {"status": "ok", **hold_lock(fs, opts.path, opts.hold)}
    except GfapiError as exc:
        result = {"status": "error", "errno": exc.errno, "error": str(exc)}
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)   # as tests.lab.gfapi: no glfs_fini wait, no shutdown race with its threads
