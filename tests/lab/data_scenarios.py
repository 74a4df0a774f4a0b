"""Scenarios where data goes wrong, each on its own named volume (tests/lab/volumes.py):

- `split-brain` (sbvol, replica 2): each brick gets a write while the other is down, with
  quorum and self-heal off; a fresh client's read then gets EIO. prepare() makes the
  split-brain (not captured); trigger() is the read, so the capture holds the LOOKUP replies
  whose trusted.afr.* pending counters blame each other, and the EIO.
- `stale-handle` (stalevol, one brick): client A keeps an fd open while client B unlinks and
  recreates the path; A's next pwrite is acknowledged by write-behind while its WRITE gets
  ENOENT on the wire, and A's fsync fails (the lost write); then the brick restarts and A's
  handle operations get ESTALE.
"""
from __future__ import annotations

import time

from . import gluster, volumes
from .gfapi_session import Session
from .fault_scenarios import VolumeScenario
from .scenarios import Result, client_log

NO_HEAL = {"cluster.quorum-type": "none", "cluster.self-heal-daemon": "off",
           "cluster.entry-self-heal": "off", "cluster.data-self-heal": "off",
           "cluster.metadata-self-heal": "off"}


class OwnVolume(VolumeScenario):
    """A volume scenario whose clients stay mounted between calls (gfapi_session)."""

    def session(self, role: str) -> Session:
        return Session(self.spec.name, str(client_log(f"{self.name}-{role}")))

    def restart_brick(self, index: int) -> None:
        old = volumes.kill_brick(self.spec.name, index)
        volumes.start_force(self.spec.name, count=self.spec.count, gone=[old.pid])


class SplitBrain(OwnVolume):
    name = "split-brain"
    spec = volumes.VolumeSpec("sbvol", "replica", 2)
    options = NO_HEAL
    path = "/split-brain-file"

    def prepare(self, info) -> None:
        super().prepare(info)
        with self.session("setup") as c:
            c.call("unlink", path=self.path)
            made = c.call("create", path=self.path, data="written while both bricks were up\n")
        if not made["ok"]:
            raise gluster.LabError(f"split-brain: could not create {self.path}: {made}")
        self.writes = []
        for down, text in ((0, "written while brick 1 was down\n"), (1, "written while brick 2 was down, longer\n")):
            old = volumes.kill_brick(self.spec.name, down)
            self.writes.append(self._write_alone(f"write-b{down + 1}-down", text))
            volumes.start_force(self.spec.name, count=self.spec.count, gone=[old.pid])

    def _write_alone(self, role: str, text: str, tries: int = 3) -> dict:
        """Write `text` through a client that sees one brick. On a loaded machine a fresh
        client's open can fail (ENOTCONN) before its one brick's connection is up: that is
        the setup failing, not the split-brain, so try again with a new client."""
        for attempt in range(tries):
            with self.session(role) as c:
                fd = c.call("open", path=self.path)
                wrote = c.call("pwrite", fd=fd["fd"], data=text, offset=0) if fd["ok"] else fd
                c.call("close", fd=fd.get("fd"))
            if wrote.get("ok"):
                return {**wrote, "attempts": attempt + 1}
            time.sleep(2)
        return {**wrote, "attempts": tries}

    def trigger(self) -> Result:
        with self.session("read") as c:
            opened = c.call("open", path=self.path)
            read = c.call("pread", fd=opened["fd"], size=4096, offset=0) if opened["ok"] else opened
            pid = c.pid
        eio = read.get("errno") == 5 or opened.get("errno") == 5
        failed = [w for w in self.writes if not w.get("ok")]
        return Result(self.name, eio and not failed,
                      (f"a write while one brick was down failed ({failed[0].get('error')}); "
                       if failed else "each brick of replica 2 written while the other was down; ")
                      + "the read got "
                      + (f"errno {read.get('errno') or opened.get('errno')}" if not read["ok"] else "data"),
                      {"writes": self.writes, "open": opened, "read": read, "reader_pid": pid,
                       "path": self.path, "volume": self.spec.name})

    def restore(self) -> None:
        super().restore()
        # Remove the file from both bricks' view: heal would need a choice, unlink needs none.
        with self.session("cleanup") as c:
            c.call("unlink", path=self.path)


class StaleHandle(OwnVolume):
    name = "stale-handle"
    spec = volumes.VolumeSpec("stalevol", "distribute", 1)
    path = "/stale-file"

    def prepare(self, info) -> None:
        super().prepare(info)
        with self.session("setup") as c:
            c.call("unlink", path=self.path)

    def trigger(self) -> Result:
        steps: dict = {}
        with self.session("a") as a, self.session("b") as b:
            fd = a.call("creat", path=self.path)["fd"]
            steps["a_write"] = a.call("pwrite", fd=fd, data="first version\n", offset=0)
            steps["a_fsync"] = a.call("fsync", fd=fd)
            steps["b_unlink"] = b.call("unlink", path=self.path)
            steps["b_recreate"] = b.call("create", path=self.path, data="the other client's file\n")
            # The brick still holds A's open fd on the unlinked inode: this write lands there.
            steps["a_write_to_unlinked"] = a.call("pwrite", fd=fd, data="to the unlinked file\n", offset=14)
            steps["a_fsync_unlinked"] = a.call("fsync", fd=fd)
            self.restart_brick(0)
            # The client retries its brick every 3 s; on reconnecting it re-opens its fds by
            # gfid, and the gfid is gone (ESTALE). Wait for that rather than guess its time.
            steps["a_reconnected"] = wait_reconnected(a.log, times=2)
            steps["a_fstat_after_restart"] = a.call("fstat", fd=fd)
            steps["a_lost_write"] = a.call("pwrite", fd=fd, data="acknowledged, then lost\n", offset=0)
            time.sleep(0.5)
            steps["a_fsync_after_restart"] = a.call("fsync", fd=fd)
            steps["a_close"] = a.call("close", fd=fd)
            pids = {"a": a.pid, "b": b.pid}
        lost = steps["a_reconnected"] and steps["a_lost_write"].get("ok") \
            and not steps["a_fsync_after_restart"].get("ok")
        fsync = steps["a_fsync_after_restart"]
        return Result(self.name, bool(lost),
                      "after B recreated the path and the brick restarted, A's pwrite was "
                      + ("acknowledged" if steps["a_lost_write"].get("ok") else "refused")
                      + (f" and its fsync failed with errno {fsync.get('errno')}" if not fsync.get("ok")
                         else " and its fsync succeeded"),
                      {"steps": steps, "pids": pids, "path": self.path, "volume": self.spec.name})

    def restore(self) -> None:
        super().restore()
        with self.session("cleanup") as c:
            c.call("unlink", path=self.path)


def wait_reconnected(log: str, times: int, timeout: float = 20.0) -> bool:
    """True once the gfapi client logging to `log` has connected to its brick `times` times
    (its re-open of open fds is logged, and sent, before the next line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = open(log, errors="replace").read()
        if text.count("Connected, attached to remote volume") >= times \
                and "child_up_reopen_done" in text.split("Connected, attached to remote volume")[times]:
            return True
        time.sleep(0.1)
    return False


DATA_SCENARIOS = (SplitBrain, StaleHandle)
