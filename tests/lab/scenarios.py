"""The lab's scenarios: each breaks one thing, drives a real client into it, checks the
symptom really showed, and leaves the lab healthy again.

A scenario has three phases so a capture holds only what matters:
  prepare()  set volume options or firewall rules (not captured)
  trigger()  the client traffic (captured by lab.record) -> Result
  lab.up()   afterwards, always: resets options, restarts the volume, removes our rules
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import firewall, gfapi, gluster, lab
from .capture import Probes, Tcpdump


@dataclass
class Result:
    scenario: str
    reproduced: bool  # the expected behaviour (the problem, or success for `healthy`) showed
    summary: str
    details: dict = field(default_factory=dict)
    capture: str | None = None
    packets: int | None = None


def client_log(name: str) -> Path:
    """A fresh gfapi log file for this scenario run."""
    path = lab.LOG_DIR / f"{name}-client.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def client_address() -> str:
    """The source address the kernel picks toward the brick host: what auth.* rules match."""
    out = subprocess.run(["ip", "-o", "route", "get", lab.HOST], capture_output=True, text=True,
                         timeout=10).stdout.split()
    return out[out.index("src") + 1] if "src" in out else "127.0.0.1"


def restart_and_wait() -> None:
    gluster.restart_volume()
    gluster.wait_bricks_online()


class BrickLogs:
    """What the brick logs gain from now on."""

    def __init__(self):
        self.paths = sorted(Path("/var/log/glusterfs/bricks").glob("srv-correlate-lab-*.log"))
        self.sizes = {p: p.stat().st_size for p in self.paths}

    def new_lines(self) -> list[str]:
        lines = []
        for path in self.paths:
            with open(path, "rb") as f:
                f.seek(self.sizes[path])
                lines += f.read().decode(errors="replace").splitlines()
        return lines


class Scenario:
    name = ""
    timeout = 12.0  # seconds a client may take before it counts as hung
    capture_buffer_kib = 65536  # tcpdump -B: busier scenarios ask for more

    def __init__(self, **params):
        self.params = params
        # `volume`: the same layout under another name (the demo runs on its own volumes)
        if params.get("volume") and getattr(self, "spec", None) is not None:
            self.spec = dataclasses.replace(self.spec, name=str(params["volume"]))

    def prepare(self, info: "lab.LabInfo") -> None:
        self.info = info

    def trigger(self) -> Result:
        raise NotImplementedError

    def gfapi(self, *args: str, timeout: float | None = None) -> tuple[dict, Path]:
        log = client_log(self.name)
        result = gfapi.run([*args, "--log", str(log)], timeout=timeout or self.timeout)
        return result, log


class Healthy(Scenario):
    name = "healthy"

    def trigger(self) -> Result:
        now = int(time.time())
        result, log = self.gfapi("utimens", "--path", "/healthy", "--atime", f"{now - 60}.25",
                                 "--mtime", f"{now}.5", "--unlink")
        stat = result.get("stat", {})
        ok = (result["status"] == "ok" and stat.get("atime") == now - 60
              and stat.get("atime_nsec") == 250_000_000 and stat.get("mtime") == now)
        return Result(self.name, ok, "create, utimens, stat and unlink through libgfapi "
                      + ("succeeded" if ok else f"failed: {result}"),
                      {"client": result, "client_log": str(log)})


class AtimeMinusOne(Scenario):
    """glfs_utimens with atime.tv_sec = -1 (what old Samba passed for "leave unchanged")."""
    name = "atime-minus-one"
    path = "/atime-minus-one"

    def trigger(self) -> Result:
        mtime = int(self.params.get("mtime", 1700000000))
        result, log = self.gfapi("utimens", "--path", self.path, "--atime", "-1",
                                 "--mtime", str(mtime))
        brick = lab.brick_file(self.path)
        details = {"client": result, "client_log": str(log), "brick_file": str(brick)}
        if brick is None:
            return Result(self.name, False, f"{self.path} is on no brick: {result}", details)
        st = os.stat(brick)
        details.update(brick_atime_ns=st.st_atime_ns, brick_mtime_ns=st.st_mtime_ns)
        ok = result["status"] == "ok" and st.st_atime_ns == -1_000_000_000 \
            and st.st_mtime_ns == mtime * 1_000_000_000
        summary = (f"brick file {brick} has atime {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(st.st_atime))}"
                   f" (st_atime {st.st_atime_ns / 1e9:.0f})")
        return Result(self.name, ok, summary, details)

    def cleanup(self) -> None:
        gfapi.run(["unlink", "--path", self.path, "--log", str(client_log(self.name + "-cleanup"))],
                  timeout=self.timeout)


class AuthRejected(Scenario):
    """auth.reject of the client's address: SETVOLUME fails with errno 13, qemu-img hangs."""
    name = "auth-rejected"
    timeout = 10.0

    def prepare(self, info) -> None:
        super().prepare(info)
        self.address = client_address()
        gluster.set_option("auth.reject", self.address)
        restart_and_wait()
        self.brick_logs = BrickLogs()

    def trigger(self) -> Result:
        cmd = ["qemu-img", "create", "-f", "qcow2", f"gluster://{lab.HOST}/{lab.VOLUME}/vm.img",
               "16M"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=self.timeout)
            hung = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, _ = proc.communicate()
            hung = True
        failed = "Authentication failed" in out
        brick_lines = [line for line in self.brick_logs.new_lines()
                       if "Cannot authenticate client" in line or "rejected =" in line]
        return Result(self.name, failed,
                      f"qemu-img {'hung' if hung else f'exited {proc.returncode}'}; its output "
                      + ("says Authentication failed" if failed else "lacks Authentication failed"),
                      {"command": " ".join(cmd), "hung": hung, "output": out[-4000:],
                       "rejected_address": self.address, "brick_lines": brick_lines[:4]})


class InsecurePort(Scenario):
    """server.allow-insecure off and a client bound to a port above 1023: DUMP is denied."""
    name = "insecure-port"
    timeout = 10.0

    def prepare(self, info) -> None:
        super().prepare(info)
        gluster.set_option("server.allow-insecure", "off")
        restart_and_wait()
        self.brick_logs = BrickLogs()

    def trigger(self) -> Result:
        # libgfapi binds a port below 1024 when root; this client option makes it bind above.
        result, log = self.gfapi("init", "--xlator-option", "*-client-*:client-bind-insecure=on")
        client_lines = [line for line in log.read_text(errors="replace").splitlines()
                        if "client_dump_version_cbk" in line]
        brick_lines = [line for line in self.brick_logs.new_lines()
                       if "non-privileged port" in line]
        denied = bool(client_lines) and bool(brick_lines)
        return Result(self.name, denied and result["status"] != "ok",
                      f"client {result['status']}; "
                      + ("bricks refused its non-privileged port and the DUMP failed" if denied
                         else "no refusal seen in the client and brick logs"),
                      {"client": result, "client_log": str(log),
                       "client_lines": client_lines[:4], "brick_lines": brick_lines[:4]})


class FirewallBlock(Scenario):
    action = "REJECT"

    def prepare(self, info) -> None:
        super().prepare(info)
        firewall.block_ports(lab.HOST, info.brick_ports, self.action)

    def trigger(self) -> Result:
        result, log = self.gfapi("utimens", "--path", f"/{self.name}", "--mtime", "1700000000")
        failed = result["status"] != "ok"
        return Result(self.name, failed,
                      f"client {result['status']} with brick ports {self.info.brick_ports} "
                      f"blocked ({self.action})",
                      {"client": result, "client_log": str(log),
                       "rules": [" ".join(r) for r in firewall.our_rules()]})


class FirewallReject(FirewallBlock):
    name = "firewall-reject"
    action = "REJECT"


class FirewallDrop(FirewallBlock):
    name = "firewall-drop"
    action = "DROP"


class Workload(Scenario):
    """Small files through every common fop; `files` sets the size (5000 files give
    well over 100k packets)."""
    name = "workload"

    def trigger(self) -> Result:
        files = int(self.params.get("files", 5000))
        size = int(self.params.get("size", 4096))
        self.timeout = float(self.params.get("timeout", 60 + files * 0.05))
        started = time.monotonic()
        result, log = self.gfapi("workload", "--files", str(files), "--size", str(size))
        return Result(self.name, result["status"] == "ok",
                      f"{files} files of {size} bytes: {result['status']} in "
                      f"{time.monotonic() - started:.1f} s",
                      {"client": result, "client_log": str(log)})


REGISTRY = {cls.name: cls for cls in (Healthy, AtimeMinusOne, AuthRejected, InsecurePort,
                                      FirewallReject, FirewallDrop, Workload)}



def get(name: str, **params) -> Scenario:
    if name not in REGISTRY:
        raise gluster.LabError(f"unknown scenario {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**params)


@contextlib.contextmanager
def staged(name: str, **params) -> Iterator[Scenario]:
    """Hold the lab with the scenario prepared (options set, rules in place); the caller
    starts its own capture or probes, calls `.trigger()`, and on leaving the lab is healthy."""
    scenario = get(name, **params)
    with lab.exclusive():
        info = lab.up()
        try:
            scenario.prepare(info)
            yield scenario
        finally:
            lab.up()
            restore = getattr(scenario, "restore", None)
            if restore:
                restore()
            cleanup = getattr(scenario, "cleanup", None)
            if cleanup:
                cleanup()


def run(name: str, capture_to: Path | None = None, capture_filter: str | None = None,
        probes_to: Path | None = None, probe_group: str = "gfapi", **params) -> Result:
    with staged(name, **params) as scenario:
        if capture_to is None:
            return scenario.trigger()
        with contextlib.ExitStack() as stack:
            if probes_to is not None:
                stack.enter_context(Probes(probes_to, probe_group))
            dump = stack.enter_context(Tcpdump(capture_to, capture_filter or lab.DEFAULT_FILTER,
                                               buffer_kib=scenario.capture_buffer_kib))
            result = scenario.trigger()
        result.capture, result.packets = str(capture_to), dump.packets
        result.details["dropped_by_kernel"] = dump.dropped
        return result


# The fault scenarios on their own volumes (imported last: they build on the classes above).
from .fault_scenarios import FAULT_SCENARIOS  # noqa: E402

REGISTRY.update({cls.name: cls for cls in FAULT_SCENARIOS})

# Scenarios where data goes wrong, on their own volumes (they build on the classes above).
from .data_scenarios import DATA_SCENARIOS  # noqa: E402

REGISTRY.update({cls.name: cls for cls in DATA_SCENARIOS})

from .latency_scenarios import LATENCY_SCENARIOS  # noqa: E402

REGISTRY.update({cls.name: cls for cls in LATENCY_SCENARIOS})

# Production's healthy day: several clients, heal, rebalance, quota (its own volumes).
from .production_scenario import PRODUCTION_SCENARIOS  # noqa: E402

REGISTRY.update({cls.name: cls for cls in PRODUCTION_SCENARIOS})
