"""FUSE mounts of a lab volume and the applications the FUSE tests run on them.

    python -m tests.lab.fuse record DIR      # the committed fuse-enotconn recording

The volume `fz2vol` (distribute over 2 bricks: a file lives on one brick only, so a dead
brick fails the application) is mounted at /mnt/fz2vol and, for a second client, at
/mnt/fz2vol-b. The application (`app`) is a Python program whose worker thread does the
system calls, so the FUSE requests carry a thread id that is not the process id.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import lab, volumes

SPEC = volumes.VolumeSpec("fz2vol", "distribute", 2)
MOUNT = Path("/mnt/fz2vol")
MOUNT_B = Path("/mnt/fz2vol-b")


def mounted(where: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(where)]).returncode == 0


def dead(where: Path) -> bool:
    """A mount whose client process is gone: every access fails with ENOTCONN (and
    `mountpoint` cannot tell it is one)."""
    try:
        os.stat(where)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return False


def mount(where: Path = MOUNT, volume: str = SPEC.name) -> Path:
    if dead(where):     # left by a killed run: mount afresh
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=60)
    where.mkdir(parents=True, exist_ok=True)
    if not mounted(where):
        subprocess.run(["mount", "-t", "glusterfs", f"{lab.HOST}:/{volume}", str(where)],
                       check=True, timeout=60)
    return where


def umount(where: Path) -> None:
    if mounted(where):
        subprocess.run(["umount", str(where)], check=False, timeout=60)
    elif dead(where):
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=60)


def ensure() -> None:
    """The volume with both bricks up, mounted once (a second mount only where asked)."""
    volumes.ensure(SPEC)
    mount(MOUNT)


SB_SPEC = volumes.VolumeSpec("fz2sb", "replica", 2)
SB_MOUNT = Path("/mnt/fz2sb")
# replica 2 that lets each brick take writes alone and never heals: the split-brain recipe
SB_OPTIONS = {"cluster.quorum-type": "none", "cluster.self-heal-daemon": "off",
              "cluster.entry-self-heal": "off", "cluster.data-self-heal": "off",
              "cluster.metadata-self-heal": "off"}


def make_split_brain(name: str) -> Path:
    """A file of fz2sb whose two copies were written apart: brick 1 down for one write,
    brick 2 down for the next. Reading it through the mount gives EIO."""
    volumes.ensure(SB_SPEC, SB_OPTIONS)
    mount(SB_MOUNT, SB_SPEC.name)
    for attempt in range(3):
        path = SB_MOUNT / f"{name}-{attempt}"
        path.write_text("base\n")
        for down, text in ((0, "AAAA\n"), (1, "BBBB\n")):
            gone = volumes.kill_brick(SB_SPEC.name, down).pid
            path.write_text(text)
            volumes.start_force(SB_SPEC.name, SB_SPEC.count, gone=[gone])
            time.sleep(8)    # the mount reconnects (it retries every 3 s)
        # each brick holds its own write (read from the bricks: the mount's page cache
        # would answer a read through it)
        copies = [(d / path.name).read_text() for d in SB_SPEC.brick_dirs]
        if sorted(copies) == ["AAAA\n", "BBBB\n"]:
            return path
        # the mount had not reconnected to the first brick before the second went down:
        # both writes reached one copy; again with a new file
    raise lab.LabError(f"no split-brain on {SB_SPEC.name} after 3 attempts")


def run_app(mode: str, *args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.lab.fuse", mode, *args],
                            stdin=stdin, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])


# ---- the application ------------------------------------------------------------------------

def _in_thread(fn) -> dict:
    out = {"pid": os.getpid()}

    def work():
        out["tid"] = threading.get_native_id()
        with open(f"/proc/self/task/{out['tid']}/comm") as fh:
            out["comm"] = fh.read().strip()
        out.update(fn())
    t = threading.Thread(target=work)
    t.start()
    t.join()
    return out


def _create(directory: str, count: int, wait: bool = False) -> dict:
    """Create `count` files in `directory`: {name: errno or 0}. With `wait`, the thread
    prints them and lives on until a line comes on stdin (so it is nameable in /proc)."""
    results = {}
    for i in range(count):
        name = f"{directory}/file-{i}"
        try:
            with open(name, "w") as fh:
                fh.write("x")
            results[name] = 0
        except OSError as exc:
            results[name] = exc.errno
    if wait:
        print(json.dumps({"pid": os.getpid(), "tid": threading.get_native_id(),
                          "results": results}), flush=True)
        sys.stdin.readline()
    return {"results": results}


def _stat(path: str) -> dict:
    try:
        os.stat(path)
        return {"errno": 0}
    except OSError as exc:
        return {"errno": exc.errno}


def _stale(a: str, b: str) -> dict:
    """Hold `a` open, replace it through the other mount (`b`), wait for a line on stdin
    (the brick restarts meanwhile), then use the fd: {call: errno or 0}."""
    with open(a, "w") as fh:
        fh.write("v1")
    fd = os.open(a, os.O_RDWR)
    os.write(fd, b"a")
    os.unlink(b)
    with open(b, "w") as fh:
        fh.write("v2")
    print(json.dumps({"replaced": True}), flush=True)
    sys.stdin.readline()
    results = {}
    for call, fn in (("pwrite", lambda: os.pwrite(fd, b"zz", 0)), ("fsync", lambda: os.fsync(fd)),
                     ("fstat", lambda: os.fstat(fd)), ("close", lambda: os.close(fd))):
        try:
            fn()
            results[call] = 0
        except OSError as exc:
            results[call] = exc.errno
    return {"results": results}


def app_main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "create":
        out = _in_thread(lambda: _create(argv[1], int(argv[2]), argv[3:4] == ["wait"]))
    elif mode == "stat":
        print(json.dumps({"pid": os.getpid()}), flush=True)
        out = _in_thread(lambda: _stat(argv[1]))
    elif mode == "stale":
        out = _in_thread(lambda: _stale(argv[1], argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)
    return 0


# ---- make run's FUSE step ------------------------------------------------------------------

DEMO_SPEC = volumes.VolumeSpec("fz2demo", "distribute", 2)
DEMO_MOUNT = Path("/mnt/fz2demo")


def demo_enotconn() -> tuple[bool, str]:
    """`make run`: an application creating files on a FUSE mount while one brick is dead.
    (reproduced, what happened); the mount is gone afterwards (the demo deletes the volume)."""
    volumes.ensure(DEMO_SPEC)
    mount(DEMO_MOUNT, DEMO_SPEC.name)
    try:
        directory = DEMO_MOUNT / f"app-{os.getpid()}-{time.monotonic_ns()}"
        directory.mkdir()
        out = EnotconnScenario(str(directory), DEMO_SPEC).trigger()
    finally:
        umount(DEMO_MOUNT)
    failed = sorted(p for p, e in out["results"].items() if e)
    return bool(failed), (f"brick 1 of {DEMO_SPEC.name} killed; {out['comm']} (pid {out['pid']}) "
                          f"created {len(out['results'])} files on {DEMO_MOUNT}: {len(failed)} "
                          "failed with ENOTCONN (those the volume places on the dead brick)")


# ---- the committed recording -----------------------------------------------------------------

class EnotconnScenario:
    """Brick 1 of fz2vol killed, then an application creates files: those that hash to
    the dead brick fail with ENOTCONN (made in the client: PORTBYBRICK answers -1)."""

    def __init__(self, directory: str, spec: volumes.VolumeSpec = SPEC):
        self.directory = directory
        self.spec = spec

    def trigger(self) -> dict:
        volumes.kill_brick(self.spec.name, 0)
        # the client retries the dead brick every 3 s (PORTBYBRICK answered -1): the wire's
        # mark of a dead brick whose connections went quiet before the capture
        time.sleep(4)
        try:
            proc = run_app("create", self.directory, "12")
            out, _ = proc.communicate(timeout=120)
            return json.loads(out.splitlines()[-1])
        finally:
            volumes.start_force(self.spec.name, self.spec.count)


def record(out_dir: Path) -> dict:
    from .capture import record_with_probes
    with lab.exclusive():
        ensure()
        directory = MOUNT / f"rec-{os.getpid()}"
        directory.mkdir()
        result = record_with_probes(EnotconnScenario(str(directory)), "fuse",
                                    out_dir / "fuse-enotconn.pcap",
                                    out_dir / "fuse-enotconn.probes.jsonl", lab.DEFAULT_FILTER)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        print(json.dumps(record(Path(sys.argv[2]))))
    else:
        sys.exit(app_main(sys.argv[1:]))
