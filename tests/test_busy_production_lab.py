"""On the lab: a healthy day as production has it (tests/lab/production_scenario.py:
replica 3 and disperse volumes, gfapi clients and a FUSE mount on the same files, a brick of
each killed and restarted while clients remove and rename, the heal crawl and `heal info`,
quota, add-brick and rebalance) gives no warning or error, with and without packets
dropped, and every Gluster daemon in it is named by its role."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.capture_loss import drop_packets
from tests.lab import lab as lab_module

SERIOUS = ("warning", "error", "critical")
DAEMONS = ("the self-heal daemon", "glfsheal (gluster volume heal info)", "the rebalance process",
           "the quota daemon")


def correlate(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "correlate", *args], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return res


def serious_findings(path: Path) -> list[str]:
    out = correlate("analyze", "--json", str(path)).stdout
    found = [json.loads(line) for line in out.splitlines()]
    return [f"{f['severity']} {f['detector']}: {f['title']}" for f in found
            if f.get("kind") == "finding" and f.get("severity") in SERIOUS]


def disperse_trouble(step: str, outcome: dict) -> bool:
    """Gluster 10.3's own trouble on the disperse volume, seen on this lab in most runs: a
    brick SIGKILLed under clients that use the same files leaves a few files whose fragments
    disagree (reads get EIO, made by the client's disperse translator: the wire shows none)
    and heal entries that do not go. Not a correlate matter; printed, not failed."""
    if "busydisp" not in step:
        return False
    unexpected = set(outcome.get("unexpected") or {})
    return (step.startswith(("heal ", "heal after ")) and outcome.get("status") == "error") or \
        (bool(unexpected) and all(u.endswith(" EIO") for u in unexpected))


@pytest.fixture(scope="module")
def production(lab, tmp_path_factory):
    capture = tmp_path_factory.mktemp("production") / "busy-production.pcap"
    result = lab_module.record("busy-production", capture)
    steps = result.details["steps"]
    failed = {k: v for k, v in steps.items()
              if v.get("status", "ok") != "ok" or v.get("exit_code") or v.get("unexpected")}
    trouble = {k for k, v in failed.items() if disperse_trouble(k, v)}
    if trouble:
        print(f"\nGluster's disperse trouble in this run (not correlate's): {sorted(trouble)}")
    assert not set(failed) - trouble, result.summary + "\n" + json.dumps(
        {k: failed[k] for k in set(failed) - trouble}, default=str)[:3000]
    return capture, result


def test_a_healthy_production_day_raises_no_alarm(production):
    capture, result = production
    steps = result.details["steps"]
    killed = steps["kill"]["bricks"]
    assert {b["volume"] for b in killed} == {"busyrep3", "busydisp"}
    assert steps["rebalance"]["rebalance"] == "completed" and steps["quota list"]["exit_code"] == 0
    assert serious_findings(capture) == []


def test_dropped_packets_raise_no_alarm_on_it(production, tmp_path):
    capture, _ = production
    for rate, seed in ((0.01, 1), (0.05, 2)):
        lossy = tmp_path / f"lossy-{rate}.pcap"
        drop_packets(capture, lossy, rate, seed)
        assert serious_findings(lossy) == [], f"{rate:.0%} dropped (seed {seed})"


def test_gluster_daemons_are_named_by_role(production):
    capture, _ = production
    out = correlate("profile", "--per-client", str(capture)).stdout
    clients = {line.split("Client:", 1)[1].strip() for line in out.splitlines() if "Client:" in line}
    for daemon in DAEMONS:
        assert daemon in clients, sorted(clients)
    assert any("the FUSE mount pid" in c for c in clients), sorted(clients)
    assert not [c for c in clients if " pid -" in c], sorted(clients)   # no raw special pid
