"""Fault scenarios on their own named volumes (tests/lab/volumes.py), registered beside the
classic ones in scenarios.REGISTRY: each prepares its volume, triggers the fault with a real
client and checks it showed; `restore()` leaves the volume healthy (bricks running)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path

from . import gfapi, gluster, volumes
from .scenarios import Result, Scenario, client_log

PING_TIMEOUT = 5


class VolumeScenario(Scenario):
    spec: volumes.VolumeSpec
    options: dict[str, str] = {}

    def prepare(self, info) -> None:
        super().prepare(info)
        self.bricks = volumes.ensure(self.spec, self.options)

    def gfapi(self, *args: str, timeout: float | None = None):
        return super().gfapi(*args, "--volume", self.spec.name, timeout=timeout)

    def restore(self) -> None:
        volumes.ensure(self.spec, self.options)


class BrickHang(VolumeScenario):
    """SIGSTOP one brick of a replica 3 volume while a client writes; SIGCONT after the
    client's ping timeout (5 s) disconnected it."""
    name = "brick-hang"
    spec = volumes.VolumeSpec("hangvol", "replica", 3)
    options = {"network.ping-timeout": str(PING_TIMEOUT), "cluster.self-heal-daemon": "off"}

    def trigger(self) -> Result:
        hang_s = float(self.params.get("hang", PING_TIMEOUT + 5))
        index = int(self.params.get("brick", 2)) - 1
        log = client_log(self.name)
        box: dict = {}
        writer = threading.Thread(target=lambda: box.update(gfapi.run(
            ["write-loop", "--volume", self.spec.name, "--path", "/hang-writes",
             "--seconds", str(hang_s + 10), "--size", "1024", "--log", str(log)],
            timeout=hang_s + 50)))
        writer.start()
        time.sleep(2)                       # the client is mounted and writing
        target = volumes.brick(self.spec.name, index)
        stopped_at = time.time()
        pid = volumes.pause_brick(self.spec.name, index)
        try:
            time.sleep(hang_s)
        finally:
            volumes.resume_brick(pid)
        resumed_at = time.time()
        writer.join()
        text = log.read_text(errors="replace")
        gave_up = "has not responded in the last" in text
        # After SIGCONT the client reconnects (within its 3 s reconnect interval) and the
        # writes go on to all three bricks.
        stalls = box.get("stalls", [])
        return Result(self.name, gave_up and box.get("status") == "ok",
                      f"brick {target.path} (port {target.port}) stopped {hang_s:.0f} s; client "
                      + ("logged the ping timeout" if gave_up else "did not log a ping timeout")
                      + f", {len(stalls)} stalled calls, {len(box.get('errors', []))} errors",
                      {"client": box, "client_log": str(log), "brick": target.path,
                       "port": target.port, "brick_pid": pid, "stopped_at": stopped_at,
                       "resumed_at": resumed_at})


class BrickDown(VolumeScenario):
    """SIGKILL the brick of a distribute volume that holds a file a gfapi client writes to;
    `start force` `down` (10) s later. The client's calls to that file fail with ENOTCONN
    (made in the client: the wire shows the brick's FIN, then PORTBYBRICK answering -1), and
    go on once the client has reconnected."""
    name = "brick-down"
    spec = volumes.VolumeSpec("downvol", "distribute", 2)
    path = "/down-writes"

    def holder(self) -> int:
        """Which brick (0-based) holds the file: DHT picks it by the name's hash."""
        for i, d in enumerate(self.spec.brick_dirs):
            if (d / self.path.lstrip("/")).exists():
                return i
        raise gluster.LabError(f"brick-down: {self.path} is on no brick of {self.spec.name}")

    def writer(self, seconds: float, log) -> tuple[threading.Thread, dict]:
        box: dict = {}
        thread = threading.Thread(target=lambda: box.update(gfapi.run(
            ["write-loop", "--volume", self.spec.name, "--path", self.path, "--seconds",
             str(seconds), "--size", "1024", "--log", str(log)], timeout=seconds + 60)))
        return thread, box

    def trigger(self) -> Result:
        down_s = float(self.params.get("down", 10))
        log = client_log(self.name)
        thread, box = self.writer(down_s + 10, log)
        thread.start()
        try:
            time.sleep(2)                   # mounted, the file created and written
            timings = self.kill_and_restart(down_s)
        finally:
            thread.join()
        return self.result(box.get("errors", []), box.get("status") == "ok", box, log, timings)

    def kill_and_restart(self, down_s: float) -> dict:
        index = self.holder()
        target = volumes.brick(self.spec.name, index)
        brick_log = volumes.brick_log(self.spec.name, index)
        log_size = brick_log.stat().st_size if brick_log.exists() else 0
        killed_at = time.time()
        volumes.kill_brick(self.spec.name, index)       # waits for the pid to vanish
        time.sleep(down_s)
        start_at = time.time()
        back = volumes.start_force(self.spec.name, count=self.spec.count)
        restarted_at = time.time()
        new_port = next((b.port for b in back if b.path == target.path), None)
        return {"brick": target.path, "port": target.port, "new_port": new_port,
                "brick_pid": target.pid, "brick_log": str(brick_log), "brick_log_from": log_size,
                "killed_at": killed_at, "start_at": start_at, "restarted_at": restarted_at}

    def result(self, errors: list[dict], finished: bool, client: dict, log, timings: dict) -> Result:
        enotconn = [e for e in errors if e.get("errno") == 107]
        after = [e for e in errors if e["time"] > timings["restarted_at"] + 5]
        return Result(self.name, bool(enotconn) and finished and not after,
                      f"brick {timings['brick']} (port {timings['port']}) killed for "
                      f"{timings['start_at'] - timings['killed_at']:.1f} s: {len(enotconn)} "
                      f"ENOTCONN, {len(errors) - len(enotconn)} other errors, "
                      f"{len(after)} errors after the restart",
                      {"client": client, "client_log": str(log), **timings,
                       "enotconn": len(enotconn), "volume": self.spec.name})

    def restore(self) -> None:
        super().restore()
        # its own log: the scenario's client log stays as the run left it
        gfapi.run(["unlink", "--volume", self.spec.name, "--path", self.path, "--log",
                   str(client_log(self.name + "-cleanup"))], timeout=self.timeout)


class BrickDownFuse(BrickDown):
    """The same through a FUSE mount: the glusterfs client process fails the writes with
    ENOTCONN and the application sees it in pwrite or fsync."""
    name = "brick-down-fuse"
    mountpoint = Path("/mnt/correlate-lab-downvol")

    def trigger(self) -> Result:
        down_s = float(self.params.get("down", 10))
        log = client_log(self.name)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "glusterfs", "-o", f"log-file={log}",
                        f"{gluster.HOST}:/{self.spec.name}", str(self.mountpoint)],
                       check=True, capture_output=True, timeout=30)
        try:
            box: dict = {}
            thread = threading.Thread(target=lambda: box.update(
                _fuse_write_loop(self.mountpoint / self.path.lstrip("/"), down_s + 10)))
            thread.start()
            try:
                time.sleep(2)
                timings = self.kill_and_restart(down_s)
            finally:
                thread.join()
        finally:
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=30)
        return self.result(box.get("errors", []), "calls" in box, box, log, timings)


def _fuse_write_loop(path: Path, seconds: float, interval: float = 0.2) -> dict:
    """pwrite 1 KiB every `interval` s (fsync every 5th) through the mount, going on after
    failures (a failed fd is reopened), as workloads.write_loop does through gfapi."""
    errors, calls, fd = [], 0, None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.time()
        op = "fsync" if calls % 5 == 4 else "pwrite"
        try:
            if fd is None:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if op == "fsync":
                os.fsync(fd)
            else:
                os.pwrite(fd, b"w" * 1024, (calls % 64) * 1024)
        except OSError as exc:
            errors.append({"op": op, "errno": exc.errno, "time": started})
            if fd is not None and exc.errno in (107, 77, 9):    # ENOTCONN, EBADFD, EBADF
                with contextlib.suppress(OSError):
                    os.close(fd)
                fd = None
        calls += 1
        time.sleep(interval)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    return {"calls": calls, "errors": errors}


class ReserveFull(VolumeScenario):
    """`storage.reserve 99` on a mostly empty brick: writes, creates and mkdirs fail with
    ENOSPC although the file system has most of its space free."""
    name = "reserve-full"
    spec = volumes.VolumeSpec("reservevol", "distribute", 1)
    path = "/existing"

    def prepare(self, info) -> None:
        super().prepare(info)
        # The file exists before the reserve applies, so its WRITEs (not only CREATE) fail.
        created, _ = self.gfapi("create", "--path", self.path)
        if created["status"] != "ok":
            raise gluster.LabError(f"reserve-full: could not create {self.path}: {created}")
        volumes.set_options(self.spec.name, {"storage.reserve": self.params.get("reserve", "99")})
        time.sleep(6)   # the brick's disk-space check runs every 5 s

    def trigger(self) -> Result:
        results = {}
        results["write"], log = self.gfapi("write-loop", "--path", self.path, "--seconds", "1",
                                           "--size", "4096", "--interval", "0.1", "--existing")
        results["create"], _ = self.gfapi("create", "--path", "/new-file")
        results["mkdir"], _ = self.gfapi("mkdir", "--path", "/new-dir")
        results["statvfs"], _ = self.gfapi("statvfs")
        brick = self.spec.brick_dirs[0]
        st = os.statvfs(brick)
        free_pct = 100 * st.f_bavail / st.f_blocks
        errnos = {op: r.get("errno") or [e["errno"] for e in r.get("errors", [])][:1]
                  for op, r in results.items()}
        refused = (results["create"].get("errno") == 28 and results["mkdir"].get("errno") == 28
                   and any(e["errno"] == 28 for e in results["write"].get("errors", [])))
        return Result(self.name, refused and free_pct > 10,
                      f"with storage.reserve {self.params.get('reserve', '99')}% and "
                      f"{free_pct:.0f}% of the brick's file system free: errnos {errnos}",
                      {"client": results, "client_log": str(log), "brick": str(brick),
                       "brick_free_pct": round(free_pct, 1)})

    def restore(self) -> None:
        super().restore()
        self.gfapi("unlink", "--path", self.path)


class BusyHealthy(Scenario):
    """A busy but healthy day on replica 3 and disperse 3 (redundancy 1): every gfapi call,
    heal info, profile, quota, qemu-img over gluster://, and one brick of the replica killed
    and restarted while a client writes. Nothing here is a fault but the kill."""
    name = "busy-healthy"
    replica = volumes.VolumeSpec("busyrep3", "replica", 3)
    disperse = volumes.VolumeSpec("busydisp", "disperse", 3, redundancy=1)
    timeout = 60.0

    def prepare(self, info) -> None:
        super().prepare(info)
        for spec in (self.replica, self.disperse):
            volumes.ensure(spec)
        # quota enable crawls and starts quotad: done before the capture
        gluster.gluster("volume", "quota", self.replica.name, "enable", check=False)

    def _run(self, *args: str, timeout: float = 60) -> dict:
        import subprocess
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        return {"command": " ".join(args), "exit_code": proc.returncode,
                "output": (proc.stdout + proc.stderr)[-600:]}

    def trigger(self) -> Result:
        rep, disp = self.replica.name, self.disperse.name
        steps: dict[str, dict] = {}
        for spec in (self.replica, self.disperse):
            steps[f"fops {spec.name}"], log = self.gfapi("fops", "--volume", spec.name,
                                                         "--dir", "/busy")
        steps["heal info"] = self._run("gluster", "volume", "heal", rep, "info")
        steps["profile start"] = self._run("gluster", "volume", "profile", rep, "start")
        steps["fops while profiling"], _ = self.gfapi("fops", "--volume", rep, "--dir", "/prof")
        steps["profile info"] = self._run("gluster", "volume", "profile", rep, "info")
        steps["profile stop"] = self._run("gluster", "volume", "profile", rep, "stop")
        self.gfapi("mkdir", "--volume", rep, "--path", "/quota")
        steps["quota limit"] = self._run("gluster", "volume", "quota", rep, "limit-usage",
                                         "/quota", "10MB")
        steps["write under quota"], _ = self.gfapi("write-loop", "--volume", rep, "--path",
                                                   "/quota/f", "--seconds", "1")
        steps["quota list"] = self._run("gluster", "volume", "quota", rep, "list")
        image = f"gluster://{gluster.HOST}/{rep}/vm.img"
        steps["qemu-img create"] = self._run("qemu-img", "create", "-f", "qcow2", image, "16M")
        steps["qemu-img info"] = self._run("qemu-img", "info", image)
        # One brick killed (SIGKILL) and restarted while a client writes.
        box: dict = {}
        writer = threading.Thread(target=lambda: box.update(gfapi.run(
            ["write-loop", "--volume", rep, "--path", "/during-kill", "--seconds", "10",
             "--size", "1024", "--interval", "0.25", "--log", str(client_log(self.name + "-kill"))],
            timeout=60)))
        writer.start()
        time.sleep(2)
        killed = volumes.kill_brick(rep, 2)
        killed_at = time.time()
        time.sleep(2)
        volumes.start_force(rep, count=3, gone=[killed.pid])
        restarted_at = time.time()
        writer.join()
        steps["writes during the kill"] = box
        steps["cleanup"], _ = self.gfapi("unlink", "--volume", rep, "--path", "/vm.img")
        failed = {k: v for k, v in steps.items()
                  if k != "cleanup" and (v.get("status", "ok") != "ok" or v.get("exit_code"))}
        return Result(self.name, not failed,
                      f"{len(steps) - 1} steps on {rep} and {disp}; brick {killed.path} (port "
                      f"{killed.port}) killed and restarted" + (f"; failed: {sorted(failed)}"
                                                                if failed else ""),
                      {"steps": steps, "client_log": str(log), "killed_brick": killed.path,
                       "killed_port": killed.port, "killed_at": killed_at,
                       "restarted_at": restarted_at})

    def restore(self) -> None:
        gluster.gluster("volume", "quota", self.replica.name, "disable", check=False)
        for spec in (self.replica, self.disperse):
            volumes.ensure(spec)
        for d in ("/busy", "/prof"):
            for spec in (self.replica, self.disperse):
                self.gfapi("unlink", "--volume", spec.name, "--path", f"{d}/file")


FAULT_SCENARIOS = (BrickHang, BrickDown, BrickDownFuse, ReserveFull, BusyHealthy)
