"""Named replicated and disperse volumes on the lab's glusterd, one per scenario.

    from tests.lab import volumes
    spec = volumes.VolumeSpec("hangvol", "replica", 3)
    with lab.exclusive():
        bricks = volumes.ensure(spec, {"network.ping-timeout": "5"})
        pid = volumes.pause_brick(spec.name, 0)       # SIGSTOP
        volumes.resume_brick(pid)                     # SIGCONT
        old = volumes.kill_brick(spec.name, 1)        # SIGKILL, waits for the pid to vanish
        volumes.start_force(spec.name, count=spec.count)

    python -m tests.lab.volumes ensure hangvol --replica 3 --set network.ping-timeout=5
    python -m tests.lab.volumes status hangvol
    python -m tests.lab.volumes delete hangvol

Bricks live in /srv/correlate-lab/<volume>/b1..bN on 127.0.0.2 (created with `force`: the
root file system, one host). Like `labvol`, state persists in /var/lib/glusterd, so `ensure`
works from any state: missing volume, stopped volume, dead bricks, leftover options. Every
function that changes the lab must run under `lab.exclusive()`; `ensure` takes it itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import gluster, lab
from .gluster import BRICK_ROOT, HOST, Brick, LabError

BRICK_LOG_DIR = Path("/var/log/glusterfs/bricks")


@dataclass(frozen=True)
class VolumeSpec:
    """`kind` "replica" (count 2 or 3), "disperse" (count bricks, `redundancy` of them
    may fail) or "distribute"."""
    name: str
    kind: str = "replica"
    count: int = 3
    redundancy: int = 1

    @property
    def brick_dirs(self) -> list[Path]:
        return brick_dirs(self.name, self.count)

    def create_args(self) -> list[str]:
        layout = {"replica": ["replica", str(self.count)],
                  "disperse": ["disperse", str(self.count), "redundancy", str(self.redundancy)],
                  "distribute": []}[self.kind]
        return [self.name, *layout, *[f"{HOST}:{d}" for d in self.brick_dirs], "force"]


def brick_dirs(name: str, count: int) -> list[Path]:
    return [BRICK_ROOT / name / f"b{i + 1}" for i in range(count)]


def brick_log(name: str, index: int) -> Path:
    """The brick's own log (glusterd names it after the brick path)."""
    return BRICK_LOG_DIR / f"srv-correlate-lab-{name}-b{index + 1}.log"


# state ---------------------------------------------------------------------------------------

def state(name: str) -> gluster.VolumeState:
    return gluster.volume_state(name)


def bricks(name: str) -> list[Brick]:
    """Bricks in creation order (b1 first), with pid and port where running."""
    found = gluster.brick_status(name)
    return sorted(found, key=lambda b: int(Path(b.path).name[1:]))


def brick(name: str, index: int) -> Brick:
    all_bricks = bricks(name)
    if index >= len(all_bricks):
        raise LabError(f"volume {name} has no brick {index + 1} (status: {all_bricks})")
    return all_bricks[index]


# changes (under lab.exclusive()) -------------------------------------------------------------

def create(spec: VolumeSpec) -> None:
    _baseline_file(spec.name).unlink(missing_ok=True)
    for d in spec.brick_dirs:
        # A leftover brick directory carries the old volume-id xattr: glusterd refuses it.
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    gluster.gluster("volume", "create", *spec.create_args())


def delete(name: str) -> None:
    with lab.exclusive():
        if state(name).exists:
            gluster.gluster("volume", "stop", name, "force", check=False)
            gluster.gluster("volume", "delete", name)
        shutil.rmtree(BRICK_ROOT / name, ignore_errors=True)


def set_options(name: str, options: dict[str, str]) -> None:
    for key, value in options.items():
        gluster.set_option(key, str(value), volume=name)


def reset_options(name: str) -> None:
    gluster.gluster("volume", "reset", name, "force")


def ensure(spec: VolumeSpec, options: dict[str, str] | None = None,
           timeout: float = 90) -> list[Brick]:
    """Make `spec` exist, started, every brick online on a port in the lab's range, with
    exactly `options` on top of what `volume create` set."""
    options = {k: str(v) for k, v in (options or {}).items()}
    with lab.exclusive():
        gluster.ensure_loopback_address()
        gluster.ensure_glusterd()
        current = state(spec.name)
        if current.exists and not all(d.is_dir() for d in spec.brick_dirs):
            delete(spec.name)  # brick directories removed behind glusterd's back
            current = state(spec.name)
        if not current.exists:
            create(spec)
            current = state(spec.name)
        baseline = created_options(spec.name)
        wanted = {**baseline, **options}
        if any(wanted.get(k) != v for k, v in current.options.items()):
            reset_options(spec.name)
            current = state(spec.name)
        # (create's own options are not put back after a reset: some refuse `volume set`)
        missing = {k: v for k, v in options.items() if current.options.get(k) != v}
        set_options(spec.name, missing)
        if not current.started:
            gluster.gluster("volume", "start", spec.name, "force")
        elif len(current.bricks) != spec.count or not all(b.online for b in current.bricks):
            start_force(spec.name, count=spec.count, timeout=timeout)
        found = gluster.wait_bricks_online(timeout, volume=spec.name, count=spec.count)
        if any(not gluster.BRICK_PORT_MIN <= b.port <= gluster.BRICK_PORT_MAX for b in found):
            gluster.restart_volume(spec.name)
            found = gluster.wait_bricks_online(timeout, volume=spec.name, count=spec.count)
        remember_created_options(spec.name, baseline)
        return sorted(found, key=lambda b: int(Path(b.path).name[1:]))


# `volume create` adds a few options by itself (more for replica than distribute); what it
# added is kept next to the bricks, so anything beyond it is a scenario's leftover.
def _baseline_file(name: str) -> Path:
    return BRICK_ROOT / name / "created-options.json"


def created_options(name: str) -> dict[str, str]:
    path = _baseline_file(name)
    if path.exists():
        return json.loads(path.read_text())
    return dict(state(name).options)  # right after create: these are create's own


def remember_created_options(name: str, options: dict[str, str]) -> None:
    path = _baseline_file(name)
    if not path.exists():
        path.write_text(json.dumps(options, sort_keys=True))


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(gluster._alive(p) or Path(f"/proc/{p}").exists() for p in pids):
        if time.monotonic() > deadline:
            raise LabError(f"processes {pids} still exist after {timeout:.0f} s")
        time.sleep(0.05)


def kill_brick(name: str, index: int, sig: int = signal.SIGKILL) -> Brick:
    """Kill brick `index` (0-based) and wait until its pid has vanished (a `start force`
    before that leaves the brick down: "discovered already-running brick")."""
    target = brick(name, index)
    if target.pid is None:
        raise LabError(f"brick {target.path} of {name} is not running")
    os.kill(target.pid, sig)
    wait_gone([target.pid])
    return target


def pause_brick(name: str, index: int) -> int:
    """SIGSTOP brick `index`: its kernel still ACKs, its process answers nothing."""
    target = brick(name, index)
    if target.pid is None:
        raise LabError(f"brick {target.path} of {name} is not running")
    os.kill(target.pid, signal.SIGSTOP)
    _wait_stopped(target.pid, True)
    return target.pid


def resume_brick(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return
    _wait_stopped(pid, False)


def _wait_stopped(pid: int, stopped: bool, timeout: float = 5.0) -> None:
    """A signal is delivered asynchronously: wait until the process's state says it took
    effect ('T' = stopped), so callers and captures start from a brick really paused."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        if (state == "T") == stopped:
            return
        if time.monotonic() > deadline:
            raise LabError(f"pid {pid} is still in state {state} {timeout:.0f} s after "
                           f"{'SIGSTOP' if stopped else 'SIGCONT'}")
        time.sleep(0.01)


def start_force(name: str, count: int, gone: list[int] = (), timeout: float = 90) -> list[Brick]:
    """`volume start NAME force` (restarts dead bricks) once `gone` pids have vanished."""
    wait_gone(list(gone))
    gluster.clear_stale_pidfiles()
    gluster.gluster("volume", "start", name, "force")
    return gluster.wait_bricks_online(timeout, volume=name, count=count)


def brick_pids(name: str) -> list[int]:
    return gluster.pids_of("glusterfsd", f"{name}.{HOST}.")


# command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.volumes", description="Named volumes on the lab's glusterd.",
        epilog="examples:\n"
               "  python -m tests.lab.volumes ensure hangvol --replica 3 --set network.ping-timeout=5\n"
               "  python -m tests.lab.volumes ensure ecvol --disperse 3 --redundancy 1\n"
               "  python -m tests.lab.volumes status hangvol\n"
               "  python -m tests.lab.volumes kill hangvol 2 && python -m tests.lab.volumes ensure hangvol --replica 3\n"
               "  python -m tests.lab.volumes delete hangvol",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ensure", help="create/start the volume, reset other options")
    p.add_argument("name")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--replica", type=int)
    kind.add_argument("--disperse", type=int)
    kind.add_argument("--distribute", type=int)
    p.add_argument("--redundancy", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE")
    sub.add_parser("status", help="the volume's state as JSON").add_argument("name")
    p = sub.add_parser("kill", help="SIGKILL brick N (1-based), wait for its pid to vanish")
    p.add_argument("name")
    p.add_argument("brick", type=int)
    sub.add_parser("delete", help="stop and delete the volume, remove its bricks").add_argument("name")
    opts = parser.parse_args(argv)
    try:
        if opts.cmd == "ensure":
            kind, count = next((k, getattr(opts, k)) for k in ("replica", "disperse", "distribute")
                               if getattr(opts, k))
            spec = VolumeSpec(opts.name, kind, count, opts.redundancy)
            options = dict(item.split("=", 1) for item in opts.set)
            print(json.dumps([asdict(b) for b in ensure(spec, options)], indent=2))
        elif opts.cmd == "status":
            s = state(opts.name)
            print(json.dumps(asdict(s), indent=2))
        elif opts.cmd == "kill":
            with lab.exclusive():
                print(json.dumps(asdict(kill_brick(opts.name, opts.brick - 1))))
        else:
            delete(opts.name)
    except LabError as exc:
        print(f"volumes: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
