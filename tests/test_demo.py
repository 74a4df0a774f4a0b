"""`make run` (tests/lab/demo.py): the problems it makes on the lab are diagnosed by the live
`tcpdump | correlate run` it starts, and its offline fallback diagnoses the shipped captures."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEW = {"brick-hang": "brick-not-responding", "slow-brick": "slow-brick",
       "lock-wait": "lock-wait", "split-brain": "split-brain"}


def demo(*args, timeout=600):
    res = subprocess.run([sys.executable, "-m", "tests.lab.demo", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    print(res.stdout, res.stderr[-4000:])
    return res


def verdicts(stdout: str) -> dict[str, str]:
    summary = stdout.split("demo: summary", 1)[1]
    return {m.group(1): m.group(2) for m in
            re.finditer(r"^   (\S+) +(diagnosed|NOT diagnosed|skipped) ", summary, re.M)}


def test_offline_demo_diagnoses_every_shipped_problem():
    res = demo("--offline", timeout=300)
    assert res.returncode == 0
    got = verdicts(res.stdout)
    assert set(got) >= set(NEW) | {"atime-minus-one", "auth-rejected", "firewall-reject",
                                   "firewall-drop", "reserve-full", "fuse-enotconn", "tls-ca"}
    assert set(got.values()) == {"diagnosed"}


def test_demo_names_a_step_it_does_not_know():
    res = demo("--only", "brick-hang,nonsense", "--offline")
    assert res.returncode == 2 and "nonsense" in res.stderr


def test_live_demo_diagnoses_hang_slow_lock_and_split_brain(lab):
    """The demo's own steps on its own volumes (demohang, demoslow, demolock, demosb): each
    diagnosed by the expected detector, about those volumes, and the volumes gone after."""
    from tests.lab import demo as demo_module
    from tests.lab import volumes
    missing = demo_module.missing_capabilities()
    if missing:
        print(f"\nskipping: the live demo needs {', '.join(missing)}")
        pytest.skip("the live demo needs " + ", ".join(missing))
    res = demo("--only", ",".join(NEW))
    assert "capture and probes running" in res.stdout       # live, not the offline fallback
    assert verdicts(res.stdout) == dict.fromkeys(NEW, "diagnosed")
    assert res.returncode == 0
    timeline = Path(re.search(r"merged timeline \(events and findings\): (\S+)", res.stdout)[1])
    findings = [ev for ev in map(json.loads, timeline.read_text().splitlines())
                if ev.get("kind") == "finding"]
    steps = {s.name: s for s in demo_module.demo_steps()}
    for step, detector in NEW.items():
        about = [f for f in findings if f.get("detector") == detector
                 and f"/srv/correlate-lab/{steps[step].volume}/" in json.dumps(f)]
        assert about, f"no {detector} finding about volume {steps[step].volume}"
    for step in NEW:
        assert not volumes.state(steps[step].volume).exists


def test_live_demo_shows_an_application_enotconn_on_a_fuse_mount(lab):
    """The FUSE step: live through --probe fuse, the finding names the program, its system
    call, the path, the errno and the dead brick of the demo's own volume (fz2demo), which
    is unmounted and deleted after."""
    from tests.lab import demo as demo_module
    from tests.lab import fuse, volumes
    missing = demo_module.missing_capabilities()
    reason = demo_module.fuse_missing()
    if missing or reason:
        print(f"\nskipping: the live FUSE demo needs {', '.join(missing) or reason}")
        pytest.skip(f"the live FUSE demo needs {', '.join(missing) or reason}")
    res = demo("--only", "fuse-enotconn")
    assert "capture and probes running" in res.stdout
    assert verdicts(res.stdout) == {"fuse-enotconn": "diagnosed"} and res.returncode == 0
    shown = res.stdout.split("demo: -> fuse-enotconn", 1)[1]
    head = re.search(r"\[ERROR\] fuse-errors: (.*) got ENOTCONN from openat\((\"/mnt/fz2demo/app-\S+"
                     r"/file-\d+\")?\) \(FUSE CREATE\)", shown)
    assert head and head[1].startswith("python (pid "), shown
    assert "/srv/correlate-lab/fz2demo/b1 is down" in shown.replace("\n      ", " ")
    assert not fuse.mounted(fuse.DEMO_MOUNT) and not volumes.state("fz2demo").exists


def test_live_demo_diagnoses_a_tls_failure(lab):
    """`make run`'s TLS step: a client of another CA fails to mount the demo's TLS volume;
    the live capture's unknown_ca alert is named by tls-failure, and demotls is gone after."""
    from tests.lab import demo as demo_module
    from tests.lab import volumes
    missing = demo_module.missing_capabilities()
    if missing:
        pytest.skip("the live demo needs " + ", ".join(missing))
    res = demo("--only", "tls-ca")
    assert "capture and probes running" in res.stdout
    assert verdicts(res.stdout) == {"tls-ca": "diagnosed"} and res.returncode == 0
    timeline = Path(re.search(r"merged timeline \(events and findings\): (\S+)", res.stdout)[1])
    found = [ev for ev in map(json.loads, timeline.read_text().splitlines())
             if ev.get("kind") == "finding" and ev.get("detector") == "tls-failure"
             and ev.get("severity") == "error"]
    assert found and {f["cause"] for f in found} == {"ca-mismatch"}
    assert "unknown_ca" in found[0]["explanation"]
    assert not volumes.state("demotls").exists
