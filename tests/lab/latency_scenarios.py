"""Scenarios about where the time goes: a lock one client waits on while another holds it,
and (with a replicated volume) one slow brick among its peers."""
from __future__ import annotations

import json
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

from . import gfapi, gluster, volumes
from .scenarios import Result, Scenario, client_log

VOLFILE_DIR = Path("/var/lib/glusterd/vols")


def _locker(path: str, hold: float, log, volume: str = gluster.VOLUME) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.lab.locker", "--path", path,
                             "--hold", str(hold), "--log", str(log), "--volume", volume],
                            cwd=gfapi.REPO_ROOT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


def _line(proc: subprocess.Popen, timeout: float) -> dict:
    """The child's next JSON line, or {} when none comes in time."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return {}
    line = proc.stdout.readline()
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return {}


class LockWait(Scenario):
    """Client A takes a POSIX write lock and holds it `hold` seconds (default 12, longer than
    rpc-unanswered's 10 s); client B asks for the same lock with F_SETLKW and waits: its LK
    call stays unanswered until A unlocks. On the lab's volume, or with `volume` on a
    one-brick volume of that name."""
    name = "lock-wait"
    path = "/lock-wait"

    @property
    def volume(self) -> str:
        return str(self.params.get("volume") or gluster.VOLUME)

    def prepare(self, info) -> None:
        super().prepare(info)
        if self.volume != gluster.VOLUME:
            volumes.ensure(volumes.VolumeSpec(self.volume, "distribute", 1))

    def trigger(self) -> Result:
        hold = float(self.params.get("hold", 12))
        holder = _locker(self.path, hold, client_log(self.name + "-holder"), self.volume)
        details: dict = {"hold_s": hold, "volume": self.volume}
        try:
            locked = _line(holder, 30)
            if locked.get("event") != "locked":
                return Result(self.name, False, "the holder never got its lock", details)
            time.sleep(0.2)     # the waiter's LK goes out while the lock is surely held
            waiter = _locker(self.path, 0, client_log(self.name + "-waiter"), self.volume)
            w_locked = _line(waiter, hold + 30)
            w_done = _line(waiter, 30)
            h_done = _line(holder, 30)
        finally:
            for proc in [holder] + ([waiter] if "waiter" in locals() else []):
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        details.update(holder=h_done, waiter=w_done, holder_pid=holder.pid, waiter_pid=waiter.pid)
        waited = w_done.get("waited_ns", 0)
        # The waiter got the lock only once the holder let go, after waiting for it.
        ok = (w_locked.get("event") == "locked" and w_done.get("status") == "ok"
              and w_done.get("locked_ns", 0) >= h_done.get("unlocked_ns", 1 << 63)
              and waited >= 500_000_000)
        return Result(self.name, ok, f"waiter pid {waiter.pid} waited {waited / 1e9:.3f} s for "
                      f"the lock holder pid {holder.pid} held {hold:g} s", details)

    def cleanup(self) -> None:
        gfapi.run(["unlink", "--path", self.path, "--volume", self.volume,
                   "--log", str(client_log(self.name + "-cleanup"))], timeout=self.timeout)


class SlowBrick(Scenario):
    """One brick of a replica 3 volume slowed by debug/delay-gen: every WRITE on brick
    `brick` (1-based, default 2) waits `delay_us` (default 200000) more. `volume set` puts the
    delay into every brick's volfile; the peers' copies get `delay-percentage 0` before the
    volume's first start (a later `volume set` would regenerate them). A client then writes
    1 KiB blocks for `seconds` (default 6), write-behind off, while a second client (unless
    `mkdir_client` is 0) makes and removes a directory every `mkdir_interval` (0.1) s. The
    bricks run `io_threads` (1) threads, so its calls wait for the thread a slow WRITE holds."""
    name = "slow-brick"
    spec = volumes.VolumeSpec("slowvol", "replica", 3)

    def prepare(self, info) -> None:
        super().prepare(info)
        self.delay_us = int(self.params.get("delay_us", 200_000))
        self.slow = int(self.params.get("brick", 2))
        gluster.ensure_glusterd()
        if volumes.state(self.spec.name).exists:
            volumes.delete(self.spec.name)
        volumes.create(self.spec)
        volumes.set_options(self.spec.name, {
            "debug.delay-gen": "posix", "delay-gen.delay-duration": str(self.delay_us),
            "delay-gen.enable": "WRITE", "delay-gen.delay-percentage": "100",
            # one WRITE per pwrite, one at a time: each WRITE shows the brick's own delay
            "performance.write-behind": "off",
            # one brick thread, held by each slow WRITE as 16 busy writers would hold the
            # default 16: other calls wait for it (the queue the finding names)
            "performance.io-thread-count": str(self.params.get("io_threads", 1))})
        for i, brick_dir in enumerate(self.spec.brick_dirs, start=1):
            if i != self.slow:
                self._no_delay(brick_dir)
        gluster.gluster("volume", "start", self.spec.name)
        self.bricks = gluster.wait_bricks_online(90, volume=self.spec.name, count=self.spec.count)

    def _no_delay(self, brick_dir: Path) -> None:
        name = f"{self.spec.name}.{gluster.HOST}.{str(brick_dir).strip('/').replace('/', '-')}.vol"
        path = VOLFILE_DIR / self.spec.name / name
        text = path.read_text()
        edited = re.sub(r"option delay-percentage \d+", "option delay-percentage 0", text)
        if edited == text:
            raise gluster.LabError(f"slow-brick: no delay-gen in {path}")
        path.write_text(edited)

    def trigger(self) -> Result:
        seconds = float(self.params.get("seconds", 6))
        log = client_log(self.name)
        if not int(self.params.get("mkdir_client", 1)):
            return self._result(self._write_loop(seconds, log), {}, log)
        # A second client makes directories meanwhile: metadata calls that are not delayed
        # themselves but reach the slow brick while its WRITEs are in flight.
        mkdirs = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.mkdir_loop", "--volume", self.spec.name,
             "--dir", "/slow-mkdirs", "--seconds", str(seconds), "--interval",
             str(self.params.get("mkdir_interval", 0.1)), "--log", str(client_log(self.name + "-mkdir"))],
            cwd=gfapi.REPO_ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            result = self._write_loop(seconds, log)
            meta = _line(mkdirs, 60) or {"status": "no answer"}
        finally:
            if mkdirs.poll() is None:
                mkdirs.kill()
            mkdirs.wait()
        return self._result(result, meta, log)

    def _write_loop(self, seconds: float, log) -> dict:
        return gfapi.run(["write-loop", "--volume", self.spec.name, "--path", "/slow-writes",
                          "--seconds", str(seconds), "--size", "1024", "--interval", "0.02",
                          "--log", str(log)], timeout=seconds + 60)

    def _result(self, result: dict, meta: dict, log) -> Result:
        slow = volumes.brick(self.spec.name, self.slow - 1)
        ok = (result.get("status") == "ok" and not result.get("errors")
              and meta.get("status", "ok") == "ok" and not meta.get("errors"))
        summary = (f"brick {slow.path} (port {slow.port}) delays each WRITE by "
                   f"{self.delay_us / 1000:g} ms; writer: {result.get('status')}, "
                   f"{result.get('calls')} calls")
        if meta:
            summary += f"; mkdir client: {meta.get('status')}, {meta.get('mkdirs')} mkdirs"
        return Result(self.name, ok, summary,
                      {"client": result, "client_log": str(log), "mkdir_client": meta,
                       "slow_brick": slow.path, "slow_port": slow.port, "delay_us": self.delay_us,
                       "ports": {b.path: b.port for b in self.bricks}})

    def restore(self) -> None:
        volumes.delete(self.spec.name)   # its volfiles were edited by hand: never reuse it


LATENCY_SCENARIOS = (LockWait, SlowBrick)
