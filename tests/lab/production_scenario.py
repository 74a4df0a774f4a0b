"""busy-production: a healthy but busy day as production has it, on volumes of its own.

Replica 3 (`busyrep3`) and disperse 3 redundancy 1 (`busydisp`), self-heal daemon on. Two
gfapi clients and a FUSE mount on busyrep3 (two gfapi clients on busydisp) read, write,
create, rename and remove the same files at once. Meanwhile one brick of each volume is
SIGKILLed; while they are down, clients remove, rename and create files; then `start force`,
`gluster volume heal` and the crawl that follows, watched with `heal info` (glfsheal) until
no entry is left. Then quota (limit, writes under it, `quota list`: the quota mount) and a
distribute volume (`busydist`) grown with `add-brick` and rebalanced. Gluster's own daemons
(self-heal, glfsheal, quota, rebalance) all talk to the bricks in the capture. Nothing here
is a fault but the two deliberate kills.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import gluster, volumes
from .gfapi import REPO_ROOT
from .scenarios import Result, Scenario, client_log

MOUNT = Path("/mnt/correlate-busyrep3")
CHURN_S = 4           # shared work before the kills and after the heal
CHURN_MAX_S = 150     # the workers' own bound, should the scenario never stop them
DOWN_S = 6            # the bricks stay down this long (reshape runs then)
HEAL_WAIT_S = 40      # bounded waits for the heal crawl and the rebalance
REBALANCE_WAIT_S = 60
KEEP_FILES = 20       # /keep: files made before the kill, reshaped while the bricks are down
SPREAD_FILES = 40     # files on busydist before add-brick, for the rebalance to move


def _command(*args: str, timeout: float = 60) -> dict:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(args), "exit_code": None, "output": "timed out"}
    return {"command": " ".join(args), "exit_code": proc.returncode,
            "output": (proc.stdout + proc.stderr)[-600:]}


def _ok(step: dict) -> bool:
    return step.get("status", "ok") == "ok" and not step.get("exit_code") \
        and not step.get("unexpected")


class Worker:
    """`python -m tests.lab.workloads ARGS` in a child process, its JSON result on wait()."""

    def __init__(self, *args: str, log: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.lab.workloads", *args,
                                      "--log", str(log)], cwd=REPO_ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)

    def wait(self, timeout: float) -> dict:
        import json
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
            return {"status": "hung", "pid": self.proc.pid, "stderr": err[-1000:]}
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"status": "error", "pid": self.proc.pid, "exit_code": self.proc.returncode,
                    "stderr": err[-1000:]}


def run_workload(*args: str, log: Path, timeout: float = 60) -> dict:
    return Worker(*args, log=log).wait(timeout)


def start_heal(volume: str, timeout: float = 15) -> dict:
    """`gluster volume heal VOL` (index heal); right after `start force` glusterd refuses it
    until the self-heal daemon has connected to the restarted brick: retry, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        step = _command("gluster", "--mode=script", "volume", "heal", volume)
        if step["exit_code"] == 0 or time.monotonic() > deadline:
            return step
        time.sleep(1)


def heal_info(volume: str) -> tuple[int | None, list[str]]:
    """Entries `heal info` lists over all bricks (None when it failed) and the first of
    them: glfsheal, pid -7."""
    proc = subprocess.run(["gluster", "--mode=script", "volume", "heal", volume, "info"],
                          capture_output=True, text=True, timeout=60)
    counts = re.findall(r"Number of entries: (\d+)", proc.stdout)
    if proc.returncode != 0 or not counts:
        return None, []
    listed = [line.strip() for line in proc.stdout.splitlines()
              if line.startswith(("/", "<gfid:"))]
    return sum(int(n) for n in counts), listed[:10]


def wait_healed(volume: str, timeout: float) -> dict:
    """Poll `heal info` until no entry is left, for at most `timeout` s."""
    started = time.monotonic()
    polls, entries, listed = 0, None, []
    while time.monotonic() - started < timeout:
        entries, listed = heal_info(volume)
        polls += 1
        if entries == 0:
            break
        if polls % 5 == 0:      # entries made after the last crawl wait for the next one
            start_heal(volume, timeout=0)
        time.sleep(2)
    return {"status": "ok" if entries == 0 else "error", "entries": entries, "polls": polls,
            "seconds": round(time.monotonic() - started, 1), "left": listed}


def wait_rebalanced(volume: str, timeout: float) -> dict:
    started = time.monotonic()
    status = ""
    while time.monotonic() - started < timeout:
        out = _command("gluster", "--mode=script", "volume", "rebalance", volume, "status")["output"]
        status = "failed" if "failed" in out else "completed" if "completed" in out \
            and "in progress" not in out else "in progress"
        if status != "in progress":
            break
        time.sleep(1)
    return {"status": "ok" if status == "completed" else "error", "rebalance": status,
            "seconds": round(time.monotonic() - started, 1)}


class BusyProduction(Scenario):
    name = "busy-production"
    replica = volumes.VolumeSpec("busyrep3", "replica", 3)
    disperse = volumes.VolumeSpec("busydisp", "disperse", 3, redundancy=1)
    spread = volumes.VolumeSpec("busydist", "distribute", 1)
    capture_buffer_kib = 262144   # busy: the default ring overran on such loads
    timeout = 60.0

    def prepare(self, info) -> None:
        super().prepare(info)
        _unmount()
        for spec in (self.replica, self.disperse):
            # A crawl an earlier run left unfinished would keep this run's heal from reaching
            # 0: start afresh then. Not every run: glusterd keeps the port of a brick that was
            # SIGKILLed (it never signed out) and answers PORTBYBRICK with it for the new
            # volume's brick of the same path, and clients' connects there are refused.
            if volumes.state(spec.name).started and heal_info(spec.name)[0] != 0:
                volumes.delete(spec.name)
            volumes.ensure(spec)
        # add-brick of an earlier run left more bricks than the spec: start from one brick
        if len(volumes.state(self.spread.name).bricks) not in (0, self.spread.count):
            volumes.delete(self.spread.name)
        volumes.ensure(self.spread)
        # quota enable crawls and starts quotad: done before the capture
        gluster.gluster("volume", "quota", self.replica.name, "enable", check=False)
        MOUNT.mkdir(parents=True, exist_ok=True)

    def trigger(self) -> Result:
        rep, disp, dist = self.replica.name, self.disperse.name, self.spread.name
        steps: dict[str, dict] = {}
        try:
            steps["fuse mount"] = _command(
                "mount", "-t", "glusterfs", "-o",
                f"log-file={client_log(self.name + '-fuse')}",
                f"{gluster.HOST}:/{rep}", str(MOUNT))
            fuse = ["--mount", str(MOUNT)] if steps["fuse mount"]["exit_code"] == 0 else None
            steps.update(self._churn_with_kills(fuse))
            steps.update(self._quota())
        finally:
            _unmount()
        steps.update(self._grow(dist))
        failed = sorted(k for k, v in steps.items() if not _ok(v))
        killed = steps["kill"]["bricks"]
        return Result(self.name, not failed,
                      f"{len(steps)} steps on {rep}, {disp} and {dist}; bricks "
                      f"{', '.join(b['path'] for b in killed)} killed and restarted, healed in "
                      f"{steps.get(f'heal {rep}', {}).get('seconds')} s"
                      + (f"; failed: {failed}" if failed else ""),
                      {"steps": steps, "killed": killed, "mount": str(MOUNT)})

    def _churn_with_kills(self, fuse: list[str] | None) -> dict[str, dict]:
        rep, disp = self.replica.name, self.disperse.name
        steps: dict[str, dict] = {}
        for volume in (rep, disp):
            steps[f"populate {volume}"] = run_workload(
                "populate", "--volume", volume, "--dir", "/keep", "--files", str(KEEP_FILES),
                log=client_log(f"{self.name}-populate-{volume}"))
        # Each volume's workers are steered through their own control directory (see
        # workloads.churn: freeze, hold, stop).
        control = {v: Path(tempfile.mkdtemp(prefix=f"busy-production-{v}-")) for v in (rep, disp)}
        churn = ["--dir", "/shared", "--seconds", str(CHURN_MAX_S)]
        workers = {f"gfapi {tag} {volume}": Worker("churn", "--volume", volume, *churn,
                                                   "--control", str(control[volume]), "--seed",
                                                   seed, log=client_log(f"{self.name}-{tag}-{volume}"))
                   for tag, volume, seed in (("A", rep, "1"), ("B", rep, "2"),
                                             ("C", disp, "4"), ("D", disp, "5"))}
        if fuse:
            workers[f"fuse {rep}"] = Worker("churn", *fuse, *churn, "--control", str(control[rep]),
                                            "--seed", "3",
                                            log=client_log(self.name + "-fuse-w"))
        started = time.monotonic()
        try:
            time.sleep(CHURN_S)
            # From here until the heal is done no client removes or renames a shared name
            # (the workers' freeze); the kills come while they go on reading and writing.
            for d in control.values():
                (d / "freeze").touch()
                # and around the kill instant they only read: no write transaction is cut
                # (a disperse client updates a file's version and size up to its eager-lock
                # timeout, 1 s, after the last write)
                (d / "hold").touch()
            time.sleep(3.0)
            old = [volumes.kill_brick(rep, 2), volumes.kill_brick(disp, 1)]
            killed_at = time.time()
            time.sleep(0.5)
            # The replica's clients write on while its brick is down. The disperse volume's
            # two writers only read until it is healed: Gluster 10.3's disperse, killed
            # under two clients writing the same files, leaves a few files whose fragments
            # disagree (EIO on reads, heal entries that stay). Holding the writes makes it
            # rarer, not gone (tests/test_busy_production_lab.py reports it, as Gluster's).
            (control[rep] / "hold").unlink()
            # While the bricks are down: remove, rename and create under /keep (FUSE on the
            # replica, gfapi on the disperse volume), names never reused: entries to heal
            # and gfids that are gone.
            down = time.monotonic()
            reshape = ["reshape", "--dir", "/keep", "--files", str(KEEP_FILES)]
            steps[f"reshape {rep}"] = run_workload(*reshape, *(fuse or ["--volume", rep]),
                                                   log=client_log(self.name + "-reshape-rep"))
            steps[f"reshape {disp}"] = run_workload(*reshape, "--volume", disp,
                                                    log=client_log(self.name + "-reshape-disp"))
            time.sleep(max(0.0, DOWN_S - (time.monotonic() - down)))
            restarted = {}
            for spec, brick in ((self.replica, old[0]), (self.disperse, old[1])):
                found = volumes.start_force(spec.name, count=spec.count, gone=[brick.pid])
                restarted[brick.path] = next((b for b in found if b.path == brick.path), None)
            restarted_at = time.time()
            for volume in (rep, disp):
                steps[f"heal start {volume}"] = start_heal(volume)
            for volume in (rep, disp):
                steps[f"heal {volume}"] = wait_healed(volume, HEAL_WAIT_S)
            for d in control.values():
                (d / "freeze").unlink()
                (d / "hold").unlink(missing_ok=True)
            time.sleep(CHURN_S)
        finally:
            for d in control.values():
                (d / "stop").touch()
            for name, worker in workers.items():
                steps[name] = worker.wait(max(10.0, CHURN_MAX_S + 30 - (time.monotonic() - started)))
            for d in control.values():
                shutil.rmtree(d, ignore_errors=True)
        # What the last round of churn left in the index (all bricks up): the crawl again
        for volume in (rep, disp):
            steps[f"heal after {volume}"] = wait_healed(volume, HEAL_WAIT_S)
        steps["kill"] = {"bricks": [
            {"volume": v, "path": b.path, "port": b.port, "pid": b.pid,
             "new_port": getattr(restarted[b.path], "port", None),
             "new_pid": getattr(restarted[b.path], "pid", None)}
            for v, b in ((rep, old[0]), (disp, old[1]))],
            "killed_at": killed_at, "restarted_at": restarted_at}
        return steps

    def _quota(self) -> dict[str, dict]:
        rep = self.replica.name
        steps = {"quota mkdir": run_workload("populate", "--volume", rep, "--dir", "/prod-quota",
                                             "--files", "0", log=client_log(self.name + "-quota"))}
        steps["quota limit"] = _command("gluster", "--mode=script", "volume", "quota", rep, "limit-usage",
                                        "/prod-quota", "10MB")
        steps["write under quota"] = run_workload(
            "populate", "--volume", rep, "--dir", "/prod-quota", "--files", "8",
            log=client_log(self.name + "-quota-w"))
        steps["quota list"] = _command("gluster", "--mode=script", "volume", "quota", rep, "list")
        return steps

    def _grow(self, dist: str) -> dict[str, dict]:
        """Files on a one-brick distribute volume, a second brick added, rebalance."""
        steps = {"populate spread": run_workload(
            "populate", "--volume", dist, "--dir", "/spread", "--files", str(SPREAD_FILES),
            log=client_log(self.name + "-spread"))}
        new = volumes.brick_dirs(dist, 2)[1]
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        steps["add-brick"] = _command("gluster", "--mode=script", "volume", "add-brick", dist,
                                      f"{gluster.HOST}:{new}", "force")
        steps["rebalance start"] = _command("gluster", "--mode=script", "volume", "rebalance", dist, "start")
        steps["rebalance"] = wait_rebalanced(dist, REBALANCE_WAIT_S)
        return steps

    def restore(self) -> None:
        rep, disp = self.replica.name, self.disperse.name
        _unmount()
        gluster.gluster("volume", "quota", rep, "disable", check=False)
        for spec in (self.replica, self.disperse):
            volumes.ensure(spec)
        for volume, dirs in ((rep, ("/keep", "/shared", "/prod-quota")), (disp, ("/keep", "/shared"))):
            for d in dirs:
                run_workload("remove", "--volume", volume, "--dir", d,
                             log=client_log(self.name + "-cleanup"))
        volumes.delete(self.spread.name)   # back to one brick for the next run


def _unmount() -> None:
    """Unmount our FUSE mount if it is mounted (lazily if a process still holds it)."""
    if not os.path.ismount(MOUNT):
        return
    if subprocess.run(["umount", str(MOUNT)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(MOUNT)], capture_output=True, timeout=30)


PRODUCTION_SCENARIOS = (BusyProduction,)
