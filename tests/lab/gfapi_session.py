"""A libgfapi client that stays mounted and takes one call at a time, so a scenario can
interleave two clients (and brick restarts) exactly: fds stay open between calls.

    with Session("stalevol", log="/tmp/a.log") as a:
        fd = a.call("creat", path="/f")["fd"]
        a.call("pwrite", fd=fd, data="abc", offset=0)
        a.call("fsync", fd=fd)        # {"ok": false, "errno": 116, ...} on failure

Each call runs in the child process (python -m tests.lab.gfapi_session) and answers one JSON
line: {"ok": true, ...} or {"ok": false, "errno": N, "error": "..."}. The child exits without
glfs_fini (it takes ~10 s) when its stdin closes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .gfapi import REPO_ROOT, Client, GfapiError


class Session:
    def __init__(self, volume: str, log: str, timeout: float = 60.0):
        self.volume, self.log, self.timeout = volume, log, timeout
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    def __enter__(self) -> "Session":
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.lab.gfapi_session", self.volume, self.log],
                                     cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        hello = self._read()
        if not hello.get("ok"):
            self.close()
            raise GfapiError(hello.get("errno") or 5, f"mount of {self.volume} failed: {hello}")
        self.pid = hello["pid"]
        return self

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            return {"ok": False, "error": f"client exited ({self.proc.poll()})"}
        return json.loads(line)

    def call(self, op: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(volume: str, log: str) -> None:
    try:
        fs = Client(volume=volume, log_file=log).init()
    except GfapiError as exc:
        print(json.dumps({"ok": False, "errno": exc.errno, "error": str(exc)}), flush=True)
        return
    print(json.dumps({"ok": True, "pid": os.getpid()}), flush=True)
    fds: dict[int, object] = {}
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        try:
            out = _do(fs, fds, op, req)
            print(json.dumps({"ok": True, **out}), flush=True)
        except GfapiError as exc:
            print(json.dumps({"ok": False, "errno": exc.errno, "error": str(exc)}), flush=True)


def _do(fs: Client, fds: dict, op: str, a: dict) -> dict:
    if "fd" in a and a["fd"] not in fds:
        # A caller whose open failed passes no fd: answer EBADF, as the library would.
        raise GfapiError(9, f"{op}: no open fd {a['fd']!r}")
    if op in ("creat", "open"):
        flags = a.get("flags", os.O_RDWR)
        fd = fs.creat(a["path"], flags=flags | os.O_CREAT) if op == "creat" else fs.open(a["path"], flags)
        fds[len(fds) + 1] = fd
        return {"fd": len(fds)}
    if op == "pwrite":
        return {"written": fs.pwrite(fds[a["fd"]], a["data"].encode(), a.get("offset", 0))}
    if op == "pread":
        return {"data": fs.pread(fds[a["fd"]], a.get("size", 4096), a.get("offset", 0)).decode(errors="replace")}
    if op == "fsync":
        fs.fsync(fds[a["fd"]])
        return {}
    if op == "fstat":
        return {"size": fs.fstat(fds[a["fd"]]).size}
    if op == "close":
        fs.close(fds.pop(a["fd"]))
        return {}
    if op == "create":
        fs.create(a["path"], a.get("data", "").encode())
        return {}
    if op == "unlink":
        fs.unlink(a["path"])
        return {}
    if op == "stat":
        return {"size": fs.stat(a["path"]).size}
    raise GfapiError(22, f"unknown op {op}")


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    os._exit(0)
