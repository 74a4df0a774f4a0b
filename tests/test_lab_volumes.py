"""The lab's named volumes (tests/lab/volumes.py) on the real glusterd."""
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.lab import gfapi, gluster, lab as lab_module, volumes

SPEC = volumes.VolumeSpec("volstest", "replica", 3)


def test_ensure_is_idempotent_resets_options_and_restarts_a_killed_brick(lab):
    with lab_module.exclusive():
        first = volumes.ensure(SPEC, {"network.ping-timeout": "7"})
        assert [b.path for b in first] == [str(d) for d in SPEC.brick_dirs]
        assert volumes.state(SPEC.name).options["network.ping-timeout"] == "7"
        # a later ensure without the option resets it: it was a scenario's leftover
        again = volumes.ensure(SPEC)
        assert "network.ping-timeout" not in volumes.state(SPEC.name).options
        assert [b.pid for b in again] == [b.pid for b in first]     # nothing restarted
        killed = volumes.kill_brick(SPEC.name, 1)
        assert not os.path.exists(f"/proc/{killed.pid}")            # waited for it to vanish
        assert not volumes.brick(SPEC.name, 1).online
        restarted = volumes.ensure(SPEC)
        assert restarted[1].online and restarted[1].pid != killed.pid
        assert restarted[0].pid == first[0].pid
        res = gfapi.run(["fops", "--volume", SPEC.name, "--dir", "/t",
                         "--log", "/var/log/correlate-lab/volstest.log"], timeout=60)
        assert res["status"] == "ok", res
        assert {"pwrite", "posix_lock", "rename", "listdir", "statvfs"} <= set(res["calls"])


def test_pause_and_resume_a_brick(lab):
    with lab_module.exclusive():
        volumes.ensure(SPEC)
        pid = volumes.pause_brick(SPEC.name, 0)
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            assert state == "T"
        finally:
            volumes.resume_brick(pid)
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        assert state != "T"


def test_disperse_volume_and_delete(lab):
    spec = volumes.VolumeSpec("volstestec", "disperse", 3, redundancy=1)
    bricks = volumes.ensure(spec)
    assert len(bricks) == 3 and all(b.online for b in bricks)
    assert "Disperse" in volumes.gluster.gluster("volume", "info", spec.name)
    volumes.delete(spec.name)
    assert not volumes.state(spec.name).exists
    assert not (volumes.BRICK_ROOT / spec.name).exists()


def test_a_dead_bricks_pid_reused_by_another_process_does_not_keep_it_offline(lab):
    # glusterd trusts a brick pidfile whose pid is alive; after a brick died and its pid
    # went to another process, `volume start force` said "already running" and left it
    # offline (a whole CI run lost busyrep3's first brick that way).
    with lab_module.exclusive():
        volumes.ensure(SPEC)
        killed = volumes.kill_brick(SPEC.name, 2)
        pidfile = next(gluster.BRICK_PIDFILES.glob(f"{SPEC.name}/*-b3.pid"))
        impostor = subprocess.Popen(["sleep", "120"])
        try:
            pidfile.write_text(f"{impostor.pid}\n")
            gluster.gluster("volume", "start", SPEC.name, "force")
            time.sleep(2)
            assert not volumes.brick(SPEC.name, 2).online  # glusterd was fooled
            restarted = volumes.ensure(SPEC)
            assert restarted[2].online and restarted[2].pid not in (killed.pid, impostor.pid)
            assert impostor.poll() is None                  # nobody else was killed
        finally:
            impostor.kill()
            impostor.wait()


def test_pidfiles_of_processes_that_are_not_their_daemon_are_cleared(tmp_path):
    """The rule, on a planted /run/gluster: a brick's pidfile holds its own glusterfsd (-p
    names it), the self-heal daemon's any glusterfs serving shd/ (one serves every volume)."""
    def fake(argv0: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([argv0, "-c", "import time; time.sleep(60)", *args],
                                executable=sys.executable)

    def plant(rel: str, pid: int) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{pid}\n")
        return path

    brick_pidfile = tmp_path / "vols/v/127.0.0.2-srv-v-b1.pid"
    brick = fake("glusterfsd", "-p", str(brick_pidfile))
    shd = fake("glusterfs", "--volfile-id", "shd/v")
    other = fake("python3")
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        keep = [plant("vols/v/127.0.0.2-srv-v-b1.pid", brick.pid),
                plant("shd/v/v-shd.pid", shd.pid), plant("shd/w/w-shd.pid", shd.pid)]
        gone = [plant("vols/v/127.0.0.2-srv-v-b2.pid", brick.pid),   # another brick's process
                plant("vols/w/127.0.0.2-srv-w-b1.pid", other.pid),   # a reused pid
                plant("shd/x/x-shd.pid", other.pid), plant("shd/y/y-shd.pid", dead.pid),
                plant("vols/z/127.0.0.2-srv-z-b1.pid", 0)]
        (tmp_path / "vols/z/127.0.0.2-srv-z-b1.pid").write_text("garbage")
        removed = gluster.clear_stale_pidfiles(tmp_path)
        assert sorted(removed) == sorted(gone)
        assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    finally:
        for proc in (brick, shd, other):
            proc.kill()
            proc.wait()


def test_glusterd_is_the_oldest_process_of_that_name(monkeypatch):
    """A forked copy of glusterd (a quota crawl) listed first in /proc, as after a pid
    wraparound, is not taken for the daemon (a CI run started a second glusterd so)."""
    daemon = subprocess.Popen(["glusterd", "-c", "import time; time.sleep(60)"],
                              executable=sys.executable)
    time.sleep(0.1)                        # ten clock ticks later: the younger one
    fork = subprocess.Popen(["glusterd", "-c", "import time; time.sleep(60)"],
                            executable=sys.executable)
    try:
        monkeypatch.setattr(gluster, "pids_of", lambda program: [fork.pid, daemon.pid])
        assert gluster.glusterd_pid() == daemon.pid
    finally:
        for proc in (daemon, fork):
            proc.kill()
            proc.wait()
