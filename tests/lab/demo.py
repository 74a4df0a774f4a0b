"""`make run`: Gluster problems made on the loopback lab and diagnosed live.

Brings up the loopback lab, starts `tcpdump ... -w - | correlate run --probe all --pcap -`,
and makes one problem after another with the lab's own scenarios (tests/lab/scenarios.py):
the talk's three (an atime of -1 from a libgfapi application and through a real smbd with
vfs_glusterfs, the SETVOLUME authentication failure of qemu-img over gluster://, the
firewall REJECT and DROP), then a hung brick, a slow brick, a lock wait, a split-brain and
an application on a FUSE mount getting ENOTCONN from a dead brick (named with its system
call, path and errno through `--probe fuse`, where the kernel has the FUSE tracepoints) and
a TLS volume a client cannot mount (its CA file holds another CA), each on a volume of its
own (demohang, demoslow, demolock, demosb, fz2demo, demotls; deleted at the end).
For each it prints what it does and the findings correlate printed meanwhile, and ends with
which problems were diagnosed: the exit status is 1 when an expected finding did not come.

Without root, glusterd, tcpdump or bcc, it says what is missing and analyzes the real
captures shipped in tests/captures/ instead (`--offline` does that anywhere).

    python -m tests.lab.demo [--only brick-hang,lock-wait] [--offline]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "tests" / "captures"
CORRELATE = [sys.executable, "-m", "correlate"]
SERIOUS = ("warning", "error", "critical")
# A live run re-judges brick latencies this often (capture time): soon after the slow writes.
LIVE_OPTIONS = ["--probe", "all", "-o", "slow-brick.check_every_s=2"]


@dataclass
class Step:
    name: str
    says: str                                  # what it does, one line
    expect: tuple[str, ...]                    # detectors whose finding diagnoses it
    scenario: str | None = None                # the lab scenario that makes the problem
    params: dict = field(default_factory=dict)
    volume: str | None = None                  # the demo's own volume, deleted at the end
    wait_s: float = 20.0                       # how long a finding may come after the trigger
    captures: tuple[str, ...] = ()             # offline: the shipped inputs that show it
    live: bool = True                          # made on the lab by `make run`
    title_has: str = ""                        # ... in the expected finding's title
    make: Callable[["Step"], tuple[bool | None, str]] | None = None   # instead of a scenario

    def diagnosed_by(self, f: dict) -> bool:
        # a warning or worse: "brick answering again" (info) alone does not diagnose a hang
        return (f.get("detector") in self.expect and f.get("severity") in SERIOUS
                and self.title_has in str(f.get("title", "")))


def demo_steps() -> list[Step]:
    return [
        Step("atime-minus-one", "a libgfapi application sets a file's access time with "
             "tv_sec = -1 (glfs_utimens)", ("atime-minus-one",), "atime-minus-one",
             captures=("atime-minus-one.pcap",)),
        Step("auth-rejected", "auth.reject of the client's address, then qemu-img create over "
             "gluster:// (it hangs in glfs_init)", ("auth-rejected",), "auth-rejected",
             captures=("auth-rejected.pcap",)),
        Step("firewall-reject", "iptables REJECT on the brick ports, then a libgfapi client "
             "mounts", ("brick-unreachable",), "firewall-reject",
             captures=("firewall-reject.pcap",), title_has="REJECT"),
        Step("firewall-drop", "iptables DROP on the brick ports, then a libgfapi client mounts "
             "(and hangs)", ("brick-unreachable",), "firewall-drop",
             captures=("firewall-drop.pcap",), title_has="DROP"),
        Step("samba-atime", "smbclient sets an access time of 1969-12-31 23:59:59 over a "
             "vfs_glusterfs share of a real smbd", ("atime-minus-one",)),
        # stopped for twice the ping timeout: the client's PING may go out seconds late
        Step("brick-hang", "replica 3, network.ping-timeout 5: one brick "
             "SIGSTOPped for 10 s while a client writes, then SIGCONT",
             ("brick-not-responding",), "brick-hang", {}, "demohang",
             captures=("brick-hang.pcap",)),
        Step("slow-brick", "replica 3, debug/delay-gen makes brick 2's WRITEs "
             "200 ms slower; a client writes for 6 s while another makes directories",
             ("slow-brick",), "slow-brick", {}, "demoslow", captures=("slow-brick-queue.pcap.gz",)),
        Step("lock-wait", "client A holds a POSIX write lock for 4 s, client "
             "B asks for it with F_SETLKW and waits", ("lock-wait",), "lock-wait", {"hold": 4},
             "demolock", captures=("lock-wait.pcap",)),
        Step("split-brain", "replica 2, quorum and heals off: each brick written "
             "while the other was down; a fresh client reads the file", ("split-brain",),
             "split-brain", {}, "demosb",
             captures=("split-brain.pcap", "split-brain.probes.jsonl")),
        Step("fuse-enotconn", "an application creates files on a FUSE mount while one of its "
             "2 distribute bricks is dead", ("fuse-errors",), "fuse-enotconn", {}, "fz2demo",
             captures=("fuse-enotconn.pcap", "fuse-enotconn.probes.jsonl"), title_has="ENOTCONN"),
        Step("tls-ca", "a TLS volume (client.ssl/server.ssl on, lab CA); a libgfapi client "
             "whose glusterfs.ca holds another CA mounts it", ("tls-failure",), volume="demotls",
             captures=("tls-ca-mismatch.pcap",), title_has="trusted CA", make=tls_ca_mismatch),
        Step("reserve-full", "storage.reserve 99 on a mostly empty brick: "
             "writes, creates and mkdirs get ENOSPC", ("no-space",),
             captures=("reserve-full.pcap",), live=False),
    ]


# printing -----------------------------------------------------------------------------------

def say(text: str = "") -> None:
    print(text, flush=True)


def show_finding(f: dict, full: bool) -> None:
    """One headline per finding; what it explains and the remedy for the ones that matter."""
    from correlate.outputs.terminal import safe_text
    say(f"   correlate: [{safe_text(f.get('severity', '?')).upper()}] "
        f"{safe_text(f.get('detector'))}: {safe_text(f.get('title'))}")
    if full:
        for label, key, limit in (("", "explanation", 900), ("remedy: ", "remedy", 400)):
            if f.get(key):
                say(textwrap.fill(label + safe_text(f[key], limit), 100,
                                  initial_indent="      ", subsequent_indent="      "))


def show_findings(findings: list[dict], expect: tuple[str, ...]) -> None:
    if not findings:
        say("   correlate: no finding")
    for f in findings:
        show_finding(f, f.get("detector") in expect or f.get("severity") in SERIOUS)


def verdict(step: Step, findings: list[dict]) -> str:
    found = {f.get("detector") for f in findings if step.diagnosed_by(f)}
    return "diagnosed" if found >= set(step.expect) else "NOT diagnosed"


def summary(outcomes: list[tuple[Step, str]], seconds: dict[str, float] | None = None) -> int:
    say("\ndemo: summary")
    for step, got in outcomes:
        took = f" {seconds[step.name]:5.1f} s" if seconds else ""
        say(f"   {step.name:<16} {got:<14}{took} ({', '.join(step.expect)})")
    missed = [s.name for s, v in outcomes if v == "NOT diagnosed"]
    say(f"demo: {sum(v == 'diagnosed' for _, v in outcomes)} of {len(outcomes)} diagnosed"
        + (f"; no expected finding for: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


# offline ------------------------------------------------------------------------------------

def offline(reason: str | None, steps: list[Step]) -> int:
    say(f"demo: cannot run the live lab here ({reason}); analyzing the shipped captures instead."
        if reason else "demo: analyzing the captures shipped in tests/captures/")
    outcomes = []
    for step in steps:
        if not step.captures:
            continue
        say(f"\ndemo: -> {step.name}: {step.says}")
        say(f"   recorded on the lab: correlate analyze {' '.join(step.captures)}")
        res = subprocess.run(CORRELATE + ["analyze", "--json", *(str(CAPTURES / c) for c in step.captures)],
                             capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            say(f"   correlate failed (exit {res.returncode}): {res.stderr.strip()[-400:]}")
        findings = [ev for ev in map(json.loads, res.stdout.splitlines())
                    if ev.get("kind") == "finding"]
        show_findings(findings, step.expect)
        outcomes.append((step, verdict(step, findings) if res.returncode == 0 else "NOT diagnosed"))
    return summary(outcomes)


# live ---------------------------------------------------------------------------------------

def missing_capabilities() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("glusterd", "tcpdump", "qemu-img", "iptables"):
        if not shutil.which(tool):
            missing.append(tool)
    if importlib.util.find_spec("bcc") is None:
        missing.append("bcc (apt-get install python3-bpfcc; venv with --system-site-packages)")
    return missing


def trigger(step: Step) -> tuple[bool | None, str]:
    """Make the step's problem; (reproduced, what happened). None: skipped."""
    from tests.lab import lab
    if step.make is not None:
        return step.make(step)
    if step.scenario is None:
        return samba_atime()
    if step.scenario == "fuse-enotconn":
        reason = fuse_missing()
        if reason:
            return None, f"skipped: {reason}"
        from tests.lab import fuse
        return fuse.demo_enotconn()
    params = {**step.params, **({"volume": step.volume} if step.volume else {})}
    result = lab.scenario(step.scenario, **params)
    return result.reproduced, result.summary


def samba_atime() -> tuple[bool | None, str]:
    """The talk's case: an access time of -1 through Samba's vfs_glusterfs to the bricks."""
    if not (shutil.which("smbd") and shutil.which("smbclient")):
        return None, "no smbd/smbclient (apt-get install samba smbclient)"
    from tests.lab import samba
    with samba.Smbd() as smbd:
        smbd.client("put /etc/hostname samba-demo.txt")
        result = smbd.utimes("samba-demo.txt", access="1969:12:31-23:59:59")
        time.sleep(1.0)
        smbd.client("del samba-demo.txt")
    return result.returncode == 0, f"smbclient utimes exit {result.returncode}"


def fuse_missing() -> str | None:
    """Why `--probe fuse` cannot run here (None: it can)."""
    from correlate.probe.errors import ProbeError
    from correlate.probe.fuse_backend import kernel_defines
    if not shutil.which("mount.glusterfs"):
        return "no mount.glusterfs (apt-get install glusterfs-client)"
    if os.path.isdir("/sys/kernel/tracing/events") and \
            not os.path.exists("/sys/kernel/tracing/events/fuse/fuse_request_send"):
        return "the kernel has no fuse tracepoints (Linux 6.12+)"
    try:      # tracefs may be unmounted: the program's needs, from BTF
        kernel_defines()
    except ProbeError as exc:
        return str(exc)
    return None
def tls_ca_mismatch(step: Step) -> tuple[bool | None, str]:
    """The lab's TLS certificates (tests/lab/tls.py) on a volume of the demo's own; the client
    presents and trusts another CA's (bound over /usr/lib/ssl/glusterfs.* in its own mount
    namespace), so it rejects the bricks' certificate with an unknown_ca alert, in clear."""
    from tests.lab import tls
    pki = tls.up()
    tls.ensure_volume(step.volume)
    result = tls.gfapi(["init", "--volume", step.volume, "--log", "/dev/null"],
                       identity=pki.foreign, timeout=15)
    return result.get("status") == "error", ("glfs_init as a client of another CA: "
                                             f"{result.get('error') or result.get('status')}")


def run_step(pipe, step: Step) -> str:
    from tests.lab.gluster import LabError
    on = f" (volume {step.volume})" if step.volume else ""
    say(f"\ndemo: -> {step.name}: {step.says}{on}")
    mark = len(pipe.lines)
    try:
        reproduced, what = trigger(step)
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        reproduced, what = False, f"the lab failed: {exc}"
    say(f"   lab: {what}" + ("" if reproduced or reproduced is None else " (not reproduced)"))
    if reproduced is None:
        return "skipped"
    for detector in step.expect:
        pipe.wait_for(lambda ev, d=detector: ev.get("kind") == "finding" and ev.get("detector") == d
                      and step.diagnosed_by(ev), timeout=step.wait_s, since=mark)
    findings = pipe.findings(mark)
    show_findings(findings, step.expect)
    return verdict(step, findings)


def live(steps: list[Step]) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.lab import lab, volumes
    from tests.lab.gluster import LabError
    from tests.lab.live import LivePipeline

    say("demo: bringing up the loopback Gluster lab (127.0.0.2) ...")
    info = lab.up()
    out = ROOT / "out" / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    timeline = out / "timeline.jsonl"
    fuse_step = any(s.scenario == "fuse-enotconn" for s in steps)
    pipe = LivePipeline(LIVE_OPTIONS + (["--probe", "fuse"] if fuse_step and not fuse_missing()
                                        else []), timeline)
    try:
        pipe.wait_ready()
    except AssertionError:
        pipe.kill()
        say("demo: tcpdump or correlate did not start:\n" + "".join(pipe.stderr))
        return 1
    for line in pipe.stderr:
        say(line.rstrip())
    say(f"demo: volume {info.volume}, bricks on ports {info.brick_ports}; capture and probes "
        "running. Making the problems:")
    outcomes, seconds = [], {}
    try:
        for step in steps:
            started = time.monotonic()
            outcomes.append((step, run_step(pipe, step)))
            seconds[step.name] = time.monotonic() - started
    finally:
        time.sleep(1.0)   # let the last packets reach correlate
        code = pipe.stop()
        lab.up()          # leave the lab healthy
        for name in sorted({s.volume for s in steps if s.volume}):
            try:
                volumes.delete(name)
            except LabError as exc:
                say(f"demo: could not delete volume {name}: {exc}")
    if code != 0:
        say(f"demo: correlate exited {code}:\n" + "".join(pipe.stderr[-20:]))
    say(f"\ndemo: merged timeline (events and findings): {timeline}")
    say(f"demo: reopen it with: correlate analyze {timeline}   or   correlate timeline {timeline} "
        f"--html {out}/report.html")
    return summary(outcomes, seconds) or (1 if code else 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", metavar="NAME,...", help="run only these steps: "
                    + ", ".join(s.name for s in demo_steps()))
    ap.add_argument("--offline", action="store_true", help="analyze the shipped captures only")
    opts = ap.parse_args(argv)
    steps = demo_steps()
    if opts.only:
        wanted = opts.only.split(",")
        unknown = set(wanted) - {s.name for s in steps}
        if unknown:
            ap.error(f"unknown steps: {', '.join(sorted(unknown))}")
        steps = [s for s in steps if s.name in wanted]
    missing = missing_capabilities()
    if opts.offline or missing:
        return offline(None if opts.offline else "missing: " + ", ".join(missing), steps)
    return live([s for s in steps if s.live])


if __name__ == "__main__":
    sys.exit(main())
