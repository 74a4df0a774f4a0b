"""Fault scenarios on their own named volumes (tests/lab/volumes.py), registered beside the
classic ones in scenarios.REGISTRY: each prepares its volume, triggers the fault with a real
client and checks it showed; `restore()` leaves the volume healthy (bricks running)."""
from __future__ import annotations

import os
import threading
import time

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


FAULT_SCENARIOS = (BrickHang, ReserveFull)
