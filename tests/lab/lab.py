"""The loopback Gluster lab: one glusterd, a two-brick distributed volume on 127.0.0.2.

    from tests.lab import lab
    info = lab.up()                       # idempotent; fast when already up
    result = lab.scenario("atime-minus-one")
    result = lab.record("auth-rejected", "/tmp/auth.pcap")
    lab.down()

    python -m tests.lab.lab up | down | status
    python -m tests.lab.lab scenario NAME [--param key=value ...]
    python -m tests.lab.lab record NAME OUT.pcap [--filter BPF] [--param key=value ...]

See tests/lab/README.md for the scenarios and what each leaves behind.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import firewall, gluster
from .gluster import BRICK_DIRS, HOST, VOLUME, LabError

# Gluster management (glusterd, portmap, handshake) on 24007-24100, the bricks on the range
# glusterd is told to use, and ICMP for the unreachable replies of the REJECT scenario.
DEFAULT_FILTER = (f"tcp and portrange 24007-24100 or portrange "
                  f"{gluster.BRICK_PORT_MIN}-{gluster.BRICK_PORT_MAX} or icmp")
LOG_DIR = Path("/var/log/correlate-lab")
LOCK_FILE = Path("/run/correlate-lab.lock")
_lock_depth = 0

__all__ = ["up", "down", "status", "scenario", "staged", "record", "exclusive", "brick_file", "LabInfo", "LabError",
           "SCENARIOS", "DEFAULT_FILTER", "VOLUME", "HOST", "LOG_DIR"]


@dataclass
class LabInfo:
    volume: str
    host: str
    glusterd_pid: int
    bricks: list[gluster.Brick]

    @property
    def brick_ports(self) -> list[int]:
        return [b.port for b in self.bricks]


@contextlib.contextmanager
def exclusive(timeout: float = 600):
    """Hold the lab for one user at a time across processes (tests, demo, benchmarks may
    run together); re-entrant within a process."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    with open(LOCK_FILE, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"the lab stayed busy for {timeout:.0f} s ({LOCK_FILE})")
                time.sleep(0.2)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def up() -> LabInfo:
    """Make the lab healthy from any state: glusterd running, volume started with default
    options, both bricks online, none of our firewall rules left."""
    with exclusive():
        firewall.remove_ours()
        gluster.ensure_loopback_address()
        pid = gluster.ensure_glusterd()
        bricks = gluster.ensure_volume()
        return LabInfo(volume=VOLUME, host=HOST, glusterd_pid=pid, bricks=bricks)


def down() -> None:
    """Stop the bricks and glusterd (by pid); the volume definition stays for the next up()."""
    with exclusive():
        firewall.remove_ours()
        gluster.stop_pids(gluster.brick_pids())
        pid = gluster.glusterd_pid()
        if pid is not None:
            gluster.stop_pids([pid])


def status() -> dict:
    pid = gluster.glusterd_pid()
    state = gluster.volume_state() if pid else None
    return {
        "glusterd_pid": pid,
        "volume": VOLUME,
        "exists": bool(state and state.exists),
        "started": bool(state and state.started),
        "options": state.options if state else {},
        "bricks": [asdict(b) for b in state.bricks] if state else [],
        "firewall_rules": [" ".join(r) for r in firewall.our_rules()],
    }


def brick_file(volume_path: str) -> Path | None:
    """Where a file of the volume lives on the bricks (DHT puts it on exactly one)."""
    for brick in BRICK_DIRS:
        candidate = brick / volume_path.lstrip("/")
        if candidate.exists():
            return candidate
    return None


def _scenarios():
    from . import scenarios  # imported late: it imports this module
    return scenarios


def __getattr__(name):
    if name == "SCENARIOS":
        return sorted(_scenarios().REGISTRY)
    raise AttributeError(name)


def scenario(name: str, **params):
    """Run one scenario from a healthy lab and leave it healthy; returns a scenarios.Result."""
    return _scenarios().run(name, **params)


def staged(name: str, **params):
    """Context manager: the lab held with scenario `name` prepared; call `.trigger()` on what
    it yields (after starting your own capture or probes). Healthy again on exit."""
    return _scenarios().staged(name, **params)


def record(name: str, out_path: str | Path, filter: str = DEFAULT_FILTER,
           probes: str | Path | None = None, **params):
    """Run a scenario while tcpdump writes its traffic (only the trigger phase) to out_path;
    with `probes`, the gfapi probe events of that phase go there as JSON Lines."""
    return _scenarios().run(name, capture_to=Path(out_path), capture_filter=filter,
                            probes_to=Path(probes) if probes else None, **params)


# command line -------------------------------------------------------------------------------

def _params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, _, value = item.partition("=")
        params[key.replace("-", "_")] = int(value) if value.lstrip("-").isdigit() else value
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.lab", description="The loopback Gluster lab.",
        epilog="examples:\n"
               "  python -m tests.lab.lab up\n"
               "  python -m tests.lab.lab scenario atime-minus-one\n"
               "  python -m tests.lab.lab record firewall-reject /tmp/reject.pcap\n"
               "  python -m tests.lab.lab record split-brain /tmp/sb.pcap --probes /tmp/sb.probes.jsonl\n"
               "  python -m tests.lab.lab scenario workload --param files=6000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start glusterd and the volume (idempotent)")
    sub.add_parser("down", help="stop the bricks and glusterd")
    sub.add_parser("status", help="print the lab's state as JSON")
    p = sub.add_parser("scenario", help="run a scenario")
    p.add_argument("name", choices=sorted(_scenarios().REGISTRY))
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p = sub.add_parser("record", help="run a scenario under tcpdump")
    p.add_argument("name", choices=sorted(_scenarios().REGISTRY))
    p.add_argument("out")
    p.add_argument("--filter", default=DEFAULT_FILTER)
    p.add_argument("--probes", metavar="FILE", help="also record the gfapi probe events (JSON Lines)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    opts = parser.parse_args(argv)
    try:
        if opts.cmd == "up":
            info = up()
            print(f"lab up: volume {info.volume} on {info.host}, glusterd pid "
                  f"{info.glusterd_pid}, brick ports {info.brick_ports}")
            return 0
        if opts.cmd == "down":
            down()
            print("lab down")
            return 0
        if opts.cmd == "status":
            print(json.dumps(status(), indent=2))
            return 0
        if opts.cmd == "scenario":
            result = scenario(opts.name, **_params(opts.param))
        else:
            result = record(opts.name, opts.out, filter=opts.filter, probes=opts.probes,
                            **_params(opts.param))
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result), indent=2, default=str))
    return 0 if result.reproduced else 1


if __name__ == "__main__":
    sys.exit(main())
