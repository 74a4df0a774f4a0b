"""The lab's Gluster server side: glusterd, the two-brick volume, and its options.

Every call has a timeout; every step first looks at the current state, so it works from a
fresh machine, a running lab, or whatever an interrupted scenario left behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

VOLUME = "labvol"
HOST = "127.0.0.2"  # glusterd refuses bricks on 127.0.0.1 / localhost
BRICK_ROOT = Path("/srv/correlate-lab")
BRICK_DIRS = [BRICK_ROOT / "b1", BRICK_ROOT / "b2"]
GLUSTERD_PIDFILE = Path("/run/correlate-lab-glusterd.pid")
GLUSTER_PIDFILES = Path("/run/gluster")  # vols/<volume>/<host>-<brick path>.pid, shd/<volume>/
BRICK_PIDFILES = GLUSTER_PIDFILES / "vols"
# Brick ports stay inside the range the capture filter covers (glusterd's default reaches 60999).
BRICK_PORT_MIN, BRICK_PORT_MAX = 49152, 49251
GLUSTERD_ARGS = ["--xlator-option", f"management.base-port={BRICK_PORT_MIN}",
                 "--xlator-option", f"management.max-port={BRICK_PORT_MAX}"]
# What `volume create` sets by itself; anything else is a leftover of a scenario.
DEFAULT_OPTIONS = {"nfs.disable": "on", "transport.address-family": "inet",
                   "storage.fips-mode-rchecksum": "on"}


class LabError(RuntimeError):
    """The lab could not be brought to the wanted state; the message says which step."""


@dataclass
class Brick:
    path: str
    port: int | None
    pid: int | None
    online: bool


@dataclass
class VolumeState:
    exists: bool
    started: bool = False
    options: dict[str, str] = field(default_factory=dict)
    bricks: list[Brick] = field(default_factory=list)


def gluster(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run the gluster CLI non-interactively; returns stdout, raises LabError on failure."""
    cmd = ["gluster", "--mode=script", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(cmd)}` did not answer within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


# processes ----------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    """True for a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def pids_of(program: str, marker: str | None = None) -> list[int]:
    """Live processes whose executable name is `program` (and whose argv holds `marker`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        if argv and os.path.basename(argv[0]) == program and _alive(int(entry.name)):
            if marker is None or any(marker in a for a in argv):
                found.append(int(entry.name))
    return found


def _started(pid: int) -> int:
    """When the process started (clock ticks since boot; /proc/PID/stat field 22)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 1 << 62      # gone: the last choice


def glusterd_pid() -> int | None:
    """The glusterd daemon: the oldest process of that name. glusterd forks copies of itself
    (a quota crawl) that live a moment; once pids wrap around (pid_max is 32768 here) one
    can come first in /proc, vanish, and look like a glusterd to be started again."""
    pids = pids_of("glusterd")
    return min(pids, key=_started) if pids else None


def brick_pids() -> list[int]:
    return pids_of("glusterfsd", f"{VOLUME}.{HOST}.")


def stop_pids(pids: list[int], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `timeout` seconds."""
    pids = sorted(set(pids))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pidfile_is_live(pidfile: Path, pid: int | None) -> bool:
    """Is `pid` the Gluster daemon `pidfile` stands for?"""
    argv = _cmdline(pid) if pid else []
    if not argv or not _alive(pid):
        return False
    program = os.path.basename(argv[0])
    if pidfile.parent.parent.name == "shd":
        # one self-heal daemon serves every volume (its -p names only one of them)
        return program == "glusterfs" and any(a.startswith("shd/") for a in argv)
    its_pidfile = next((b for a, b in zip(argv, argv[1:]) if a == "-p"), None)
    # a brick: its own glusterfsd, started with -p (glusterd writes /var/run/..., a symlink)
    return (program == "glusterfsd" and its_pidfile is not None
            and os.path.realpath(its_pidfile) == os.path.realpath(pidfile))


def clear_stale_pidfiles(root: Path = GLUSTER_PIDFILES) -> list[Path]:
    """Remove the brick and self-heal daemon pidfiles whose pid is not that daemon any more.

    glusterd believes a pidfile whose pid is alive. Once a killed brick's pid is reused by
    any other process, glusterd says "discovered already-running brick" and never starts
    it again: the brick stays offline and its clients keep knocking on a closed port.
    """
    removed = []
    for pidfile in [*root.glob("vols/*/*.pid"), *root.glob("shd/*/*.pid")]:
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        if not _pidfile_is_live(pidfile, pid):
            pidfile.unlink(missing_ok=True)
            removed.append(pidfile)
    return removed


def ensure_loopback_address() -> None:
    out = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True, timeout=10).stdout
    if f"inet {HOST}/" not in out:
        subprocess.run(["ip", "addr", "add", f"{HOST}/8", "dev", "lo"], check=True, timeout=10)


def wait_for_glusterd(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            gluster("volume", "list", timeout=10)
            return
        except LabError as exc:
            if time.monotonic() > deadline:
                raise LabError(f"glusterd does not answer after {timeout:.0f} s: {exc}") from None
        time.sleep(0.3)


def ensure_glusterd() -> int:
    """Start glusterd with the lab's brick port range, unless it already runs that way;
    first let go of the pidfiles a killed lab left (clear_stale_pidfiles)."""
    pid = glusterd_pid()
    clear_stale_pidfiles()
    if pid is not None and all(a in _cmdline(pid) for a in GLUSTERD_ARGS):
        wait_for_glusterd()
        return pid
    if pid is not None:
        # Started by someone else without our port range: bricks could land outside the
        # capture filter. Restart it our way (its state in /var/lib/glusterd is kept).
        stop_pids([pid])
    subprocess.run(["glusterd", "-p", str(GLUSTERD_PIDFILE), *GLUSTERD_ARGS],
                   check=True, timeout=60)
    wait_for_glusterd()
    pid = glusterd_pid()
    if pid is None:
        raise LabError("glusterd exited right after starting; see /var/log/glusterfs/glusterd.log")
    return pid


# the volume ---------------------------------------------------------------------------------

def volume_state(volume: str = VOLUME) -> VolumeState:
    out = gluster("volume", "info", volume, "--xml", check=False, timeout=60)
    try:
        root = ET.fromstring(out)
    except ET.ParseError:
        raise LabError(f"`gluster volume info {volume}` gave no answer: {out.strip()[:200]!r}")
    vol = root.find("./volInfo/volumes/volume")
    if root.findtext("opRet") != "0" or vol is None:
        # Only a clear "does not exist" may lead to (re)creating the volume and its bricks.
        error = root.findtext("opErrstr") or ""
        if "does not exist" not in error:
            raise LabError(f"`gluster volume info {volume}` failed: {error!r}")
        return VolumeState(exists=False)
    options = {o.findtext("name"): o.findtext("value") for o in vol.findall("./options/option")}
    state = VolumeState(exists=True, started=vol.findtext("statusStr") == "Started",
                        options=options)
    if state.started:
        state.bricks = brick_status(volume)
    return state


def brick_status(volume: str = VOLUME) -> list[Brick]:
    out = gluster("volume", "status", volume, "--xml", check=False, timeout=60)
    bricks = []
    try:
        nodes = ET.fromstring(out).findall(".//volStatus/volumes/volume/node")
    except ET.ParseError:
        return bricks
    for node in nodes:
        path = node.findtext("path") or ""
        if not path.startswith(str(BRICK_ROOT)):
            continue
        port = node.findtext("port")
        pid = node.findtext("pid")
        bricks.append(Brick(path=path, port=int(port) if port and port.isdigit() else None,
                            pid=int(pid) if pid and pid.isdigit() and pid != "-1" else None,
                            online=node.findtext("status") == "1"))
    return bricks


def create_volume() -> None:
    for brick in BRICK_DIRS:
        # A brick directory left from an earlier volume carries its volume-id xattr and
        # .glusterfs tree; glusterd refuses it. It is ours, so start it afresh.
        if brick.exists():
            shutil.rmtree(brick)
        brick.mkdir(parents=True)
    gluster("volume", "create", VOLUME, *[f"{HOST}:{b}" for b in BRICK_DIRS], "force")


def delete_volume() -> None:
    gluster("volume", "stop", VOLUME, "force", check=False)
    gluster("volume", "delete", VOLUME)


def leftover_options(state: VolumeState) -> dict[str, str]:
    return {k: v for k, v in state.options.items() if DEFAULT_OPTIONS.get(k) != v}


def restart_volume(volume: str = VOLUME) -> None:
    """Stop and start the volume: auth.* and server.allow-insecure only apply then."""
    gluster("volume", "stop", volume, "force")
    gluster("volume", "start", volume)


def wait_bricks_online(timeout: float = 60, volume: str = VOLUME,
                       count: int = len(BRICK_DIRS)) -> list[Brick]:
    deadline = time.monotonic() + timeout
    while True:
        bricks = brick_status(volume)
        if len(bricks) == count and all(b.online and b.port for b in bricks):
            return bricks
        if time.monotonic() > deadline:
            raise LabError(f"bricks not online after {timeout:.0f} s: {bricks}")
        time.sleep(0.3)


def ensure_volume() -> list[Brick]:
    """The volume exists, has only default options, is started, both bricks online."""
    state = volume_state()
    if state.exists and not all(b.is_dir() for b in BRICK_DIRS):
        delete_volume()  # someone removed the brick directories: rebuild from scratch
        state = volume_state()
    if not state.exists:
        create_volume()
        state = volume_state()
    if leftover_options(state):
        gluster("volume", "reset", VOLUME, "force")
        if state.started:
            restart_volume()
        state = volume_state()
    if not state.started:
        gluster("volume", "start", VOLUME, "force")
    elif not all(b.online for b in state.bricks) or len(state.bricks) != len(BRICK_DIRS):
        gluster("volume", "start", VOLUME, "force")  # restarts dead bricks
    bricks = wait_bricks_online()
    if any(not BRICK_PORT_MIN <= b.port <= BRICK_PORT_MAX for b in bricks):
        # Ports from a glusterd that ran without our range: a restart picks new ones.
        restart_volume()
        bricks = wait_bricks_online()
    return bricks


def set_option(name: str, value: str, volume: str = VOLUME) -> None:
    gluster("volume", "set", volume, name, value)
