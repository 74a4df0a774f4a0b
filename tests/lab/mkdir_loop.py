"""A libgfapi client that makes (and removes) directories for a while: metadata calls that a
scenario sends beside another client's I/O, to see whether they wait behind it.

    python -m tests.lab.mkdir_loop --volume slowvol --dir /meta --seconds 6 --interval 0.1

prints one JSON line at the end: {"status": "ok", "mkdirs": N, "slowest_s": ..., "errors": [...]}.
Each round is glfs_mkdir DIR/dNNNN then glfs_rmdir of it (MKDIR and RMDIR on the wire).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .gfapi import DEFAULT_LOG, LOG_LEVEL_INFO, SERVER, VOLUME, Client, GfapiError


def mkdir_loop(fs: Client, directory: str, seconds: float, interval: float) -> dict:
    fs.mkdir(directory, exist_ok=True)
    count, slowest, errors = 0, 0.0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        path = f"{directory}/d{count:05d}"
        started = time.monotonic()
        try:
            fs.mkdir(path)
            fs.rmdir(path)
        except OSError as exc:       # GfapiError is an OSError
            errors.append({"path": path, "errno": exc.errno})
        slowest = max(slowest, time.monotonic() - started)
        count += 1
        time.sleep(interval)
    return {"mkdirs": count, "slowest_s": round(slowest, 4), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.mkdir_loop", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/mkdir-loop")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--volume", default=VOLUME)
    ap.add_argument("--server", default=SERVER)
    ap.add_argument("--log", default=DEFAULT_LOG)
    opts = ap.parse_args(argv)
    try:
        fs = Client(opts.volume, opts.server, log_file=opts.log, log_level=LOG_LEVEL_INFO).init()
        result = {"status": "ok", **mkdir_loop(fs, opts.dir, opts.seconds, opts.interval)}
    except GfapiError as exc:
        result = {"status": "error", "errno": exc.errno, "error": str(exc)}
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)   # as tests.lab.gfapi: no glfs_fini wait, no shutdown race with its threads
