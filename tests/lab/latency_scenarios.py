"""Scenarios about where the time goes: a lock one client waits on while another holds it,
and (with a replicated volume) one slow brick among its peers."""
from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time

from . import gfapi, lab
from .scenarios import Result, Scenario, client_log


def _locker(path: str, hold: float, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.lab.locker", "--path", path,
                             "--hold", str(hold), "--log", str(log)],
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
    call stays unanswered until A unlocks."""
    name = "lock-wait"
    path = "/lock-wait"

    def trigger(self) -> Result:
        hold = float(self.params.get("hold", 12))
        holder = _locker(self.path, hold, client_log(self.name + "-holder"))
        details: dict = {"hold_s": hold}
        try:
            locked = _line(holder, 30)
            if locked.get("event") != "locked":
                return Result(self.name, False, "the holder never got its lock", details)
            time.sleep(0.2)     # the waiter's LK goes out while the lock is surely held
            waiter = _locker(self.path, 0, client_log(self.name + "-waiter"))
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
        gfapi.run(["unlink", "--path", self.path, "--log", str(client_log(self.name + "-cleanup"))],
                  timeout=self.timeout)

LATENCY_SCENARIOS = (LockWait,)
