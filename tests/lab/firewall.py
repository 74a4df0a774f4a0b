"""iptables rules for the firewall scenarios, all tagged so only ours are ever removed."""
from __future__ import annotations

import shlex
import subprocess

TAG = "correlate-lab"
CHAINS = ("INPUT", "OUTPUT")


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True,
                          timeout=30, check=check)


def our_rules() -> list[list[str]]:
    """Our rules as `iptables -S` prints them (["-A", "INPUT", ...])."""
    rules = []
    for chain in CHAINS:
        for line in _iptables("-S", chain).stdout.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and TAG in words:
                rules.append(words)
    return rules


def block_ports(host: str, ports: list[int], action: str) -> None:
    """Reject (ICMP port unreachable) or drop TCP to `host`:`ports`; `action` REJECT or DROP."""
    target = ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"] if action == "REJECT" \
        else ["-j", "DROP"]
    for port in ports:
        _iptables("-I", "INPUT", "-d", f"{host}/32", "-p", "tcp", "--dport", str(port),
                  "-m", "comment", "--comment", TAG, *target)


def remove_ours() -> int:
    """Delete every rule tagged with our comment; returns how many."""
    rules = our_rules()
    for words in rules:
        _iptables("-D", *words[1:])
    return len(rules)
