"""Client workloads for the fault scenarios, run inside a mounted gfapi.Client.

`every_fop` drives each call the lab client can make once (a busy but healthy client);
`write_loop` keeps writing for a while and notes every failure and stall, for the hung-brick
and full-brick scenarios. `churn`, `populate`, `reshape` and `remove_tree` run on a gfapi
client or a FUSE mount (`MountFS`), several clients on the same files at once, for the
busy-production scenario; `python -m tests.lab.workloads` runs one in a child process."""
from __future__ import annotations

import errno
import fcntl
import os
import random
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


# Several clients on the same files at once ----------------------------------------------------

class MountFS:
    """The few calls the shared workloads make, on a FUSE mount, with gfapi.Client's names and
    volume paths ("/dir/f"), so one workload drives either kind of client."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def _p(self, path: str) -> str:
        return self.root + path

    def mkdir(self, path: str, mode: int = 0o755, exist_ok: bool = False) -> None:
        try:
            os.mkdir(self._p(path), mode)
        except FileExistsError:
            if not exist_ok:
                raise

    def create(self, path: str, data: bytes = b"") -> None:
        with open(self._p(path), "wb") as f:
            f.write(data)

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        return os.open(self._p(path), flags)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def stat(self, path: str):
        return os.stat(self._p(path))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._p(old), self._p(new))

    def unlink(self, path: str) -> None:
        os.unlink(self._p(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._p(path))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(self._p(path))


# Answers another client's work can give on a shared file: it was renamed or removed between
# our lookup and our call (disperse answers a truncating create of a file another client just
# removed with ENODATA: the removed inode has lost its EC config xattr). Anything else is a
# failure of the volume.
RACE_ERRNOS = {errno.ENOENT, errno.ESTALE, errno.ENODATA}
# A listing's directory fd of a disperse volume, opened while a brick was away, can be
# refused (EBADFD) by the brick once it is back: the next listing opens it again.
LISTING_ERRNOS = RACE_ERRNOS | {errno.EBADFD}


def churn(fs, directory: str, seconds: float, seed: int, names: int = 16,
          size: int = 4096, interval: float = 0.1, control: str | None = None) -> dict:
    """Random whole-file writes, reads, pwrites with fsync, stats, renames, unlinks and
    listings on `names` shared names for `seconds`; other clients running the same on the
    same directory race with it. Counts each call and each failure by errno name.

    `control` is a directory the caller steers it with: while `control/freeze` exists no name
    is removed or renamed (a name removed and made again while a brick is down gets another
    gfid than the down brick still holds: a gfid split-brain, EIO until resolved by hand);
    while `control/hold` exists it only reads (a disperse brick SIGKILLed in the middle of
    a write transaction can leave the other fragments disagreeing: EIO, and a heal entry
    that never goes); once `control/stop` exists it ends."""
    rng = random.Random(seed)
    ops = (["write"] * 3 + ["read"] * 3 + ["pwrite"] * 2 + ["stat"] * 2
           + ["rename", "unlink", "listdir"])
    steady = [op for op in ops if op not in ("rename", "unlink")]
    reading = [op for op in ops if op in ("read", "stat", "listdir")]
    freeze = os.path.join(control, "freeze") if control else None
    hold = os.path.join(control, "hold") if control else None
    stop = os.path.join(control, "stop") if control else None
    d = directory.rstrip("/")
    fs.mkdir(d, 0o755, True)
    data = bytes([seed & 0xFF]) * size
    done: dict[str, int] = {}
    failed: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (stop and os.path.exists(stop)):
        frozen = freeze is not None and os.path.exists(freeze)
        held = hold is not None and os.path.exists(hold)
        op = rng.choice(reading if held else steady if frozen else ops)
        path = f"{d}/f{rng.randrange(names):02d}"
        try:
            if op == "write":
                fs.create(path, data)
            elif op in ("read", "pwrite"):
                fd = fs.open(path, os.O_RDONLY if op == "read" else os.O_RDWR)
                try:
                    if op == "read":
                        fs.pread(fd, size, 0)
                    else:
                        fs.pwrite(fd, data[:512], rng.randrange(size // 512) * 512)
                        fs.fsync(fd)
                finally:
                    fs.close(fd)
            elif op == "stat":
                fs.stat(path)
            elif op == "rename":
                fs.rename(path, f"{d}/f{rng.randrange(names):02d}")
            elif op == "unlink":
                fs.unlink(path)
            else:
                fs.listdir(d)
            done[op] = done.get(op, 0) + 1
        except OSError as exc:
            key = f"{op} {errno.errorcode.get(exc.errno, exc.errno)}"
            failed[key] = failed.get(key, 0) + 1
        time.sleep(interval)
    unexpected = {k: n for k, n in failed.items()
                  if not any(k.endswith(" " + errno.errorcode[e])
                             for e in (LISTING_ERRNOS if k.startswith("listdir ") else RACE_ERRNOS))}
    return {"calls": done, "failed": failed, "unexpected": unexpected}


def populate(fs, directory: str, files: int, size: int = 4096) -> dict:
    """`files` files f000.. under `directory`, `size` bytes each."""
    d = directory.rstrip("/")
    fs.mkdir(d, 0o755, True)
    for i in range(files):
        fs.create(f"{d}/f{i:03d}", bytes([i & 0xFF]) * size)
    return {"files": files}


def reshape(fs, directory: str, files: int) -> dict:
    """What clients do to a populated directory while a brick is down: remove the first half
    of its files, rename the next quarter, create as many new ones as were removed. The heal
    crawl that follows the brick's return has to undo each on the brick that missed it."""
    d = directory.rstrip("/")
    half, quarter = files // 2, files // 4
    for i in range(half):
        fs.unlink(f"{d}/f{i:03d}")
    for i in range(half, half + quarter):
        fs.rename(f"{d}/f{i:03d}", f"{d}/r{i:03d}")
    for i in range(half):
        fs.create(f"{d}/n{i:03d}", b"n" * 1024)
    return {"unlinked": half, "renamed": quarter, "created": half}


def remove_tree(fs, directory: str) -> int:
    """Remove `directory` and the files in it (one level); the number removed."""
    d = directory.rstrip("/")
    try:
        names = [n for n in fs.listdir(d) if n not in (".", "..")]
    except OSError:
        return 0
    for name in names:
        fs.unlink(f"{d}/{name}")
    fs.rmdir(d)
    return len(names)


def main(argv: list[str] | None = None) -> int:
    """One workload in this process, on a gfapi client or (`--mount`) a FUSE mount; prints one
    JSON object. The scenario runs each in a child, several at once."""
    import argparse
    import json
    import sys
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.workloads",
        epilog="examples:\n"
               "  python -m tests.lab.workloads churn --volume busyrep3 --dir /shared --seconds 10 --seed 1\n"
               "  python -m tests.lab.workloads churn --mount /mnt/correlate-busyrep3 --dir /shared --seconds 10 --seed 2\n"
               "  python -m tests.lab.workloads populate --volume busydist --dir /spread --files 40",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", choices=("churn", "populate", "reshape", "remove"))
    parser.add_argument("--volume", default="labvol")
    parser.add_argument("--mount", help="work on this FUSE mount instead of through gfapi")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--control", help="churn: a directory with the files freeze and stop")
    parser.add_argument("--log", default="/var/log/correlate-lab/workloads.log")
    opts = parser.parse_args(argv)
    try:
        if opts.mount:
            fs = MountFS(opts.mount)
        else:
            from .gfapi import Client
            fs = Client(opts.volume, log_file=opts.log).init()
        if opts.op == "churn":
            result = churn(fs, opts.dir, opts.seconds, opts.seed, control=opts.control)
        elif opts.op == "populate":
            result = populate(fs, opts.dir, opts.files)
        elif opts.op == "reshape":
            result = reshape(fs, opts.dir, opts.files)
        else:
            result = {"removed": remove_tree(fs, opts.dir)}
        result = {"status": "ok", "op": opts.op, **result}
    except OSError as exc:
        result = {"status": "error", "op": opts.op, "errno": exc.errno, "error": str(exc)}
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    # A gfapi client without glfs_fini: leave at once (its threads still run), as gfapi does.
    os._exit(0 if result["status"] == "ok" else 1)


if __name__ == "__main__":
    main()
