"""The client volfile (GETSPEC reply): which bricks form each replica or disperse set.

A volfile is a list of translator blocks:

    volume labvol-client-0
        type protocol/client
        option remote-host 127.0.0.2
        option remote-subvolume /srv/b1
    end-volume
    volume labvol-replicate-0
        type cluster/replicate
        subvolumes labvol-client-0 labvol-client-1 labvol-client-2
    end-volume

Only what the detectors need is kept: the sets (replicate, disperse) with their member
bricks as (remote-host, remote-subvolume). Parsing is line by line and bounded.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_BLOCKS = 4096
MAX_MEMBERS = 64
SET_TYPES = {"cluster/replicate": "replicate", "cluster/disperse": "disperse"}


@dataclass(frozen=True)
class BrickSet:
    name: str                              # e.g. labvol-replicate-0
    kind: str                              # replicate | disperse
    bricks: tuple[tuple[str, str], ...]    # (remote-host, remote-subvolume)


def blocks(text: str) -> dict[str, dict]:
    """The translator blocks: name -> {type, options, subvolumes}."""
    blocks: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "volume" and len(words) > 1 and len(blocks) < MAX_BLOCKS:
            current = blocks.setdefault(words[1], {"type": "", "options": {}, "subvolumes": []})
        elif words[0] == "end-volume":
            current = None
        elif current is None:
            continue
        elif words[0] == "type" and len(words) > 1:
            current["type"] = words[1]
        elif words[0] == "option" and len(words) > 2:
            current["options"][words[1]] = words[2]
        elif words[0] == "subvolumes":
            current["subvolumes"] = words[1:1 + MAX_MEMBERS]
    return blocks


def _brick_of(block: dict) -> tuple[str, str]:
    opts = block["options"]
    return (opts.get("remote-host", ""), opts.get("remote-subvolume", ""))


def brick_sets(text: str) -> list[BrickSet]:
    """The replicate and disperse sets of a volfile, in file order."""
    return sets_of(blocks(text))


def sets_of(blocks: dict[str, dict]) -> list[BrickSet]:
    sets = []
    for name, block in blocks.items():
        kind = SET_TYPES.get(block["type"])
        if kind is None:
            continue
        members = []
        for sub in block["subvolumes"]:
            client = blocks.get(sub)
            if client and client["type"] == "protocol/client":
                members.append(_brick_of(client))
        sets.append(BrickSet(name, kind, tuple(members)))
    return sets


def clients_of(blocks: dict[str, dict]) -> tuple[list[tuple[str, str]], str | None]:
    """Every brick a client volfile connects to (its protocol/client blocks: a brick in no
    set is the only copy of its files), and their `ping-timeout` when the volfile sets it
    (glusterd writes it only when network.ping-timeout was changed from 42)."""
    bricks, timeout = [], None
    for block in blocks.values():
        if block["type"] == "protocol/client":
            bricks.append(_brick_of(block))
            timeout = timeout or block["options"].get("ping-timeout")
    return bricks[:MAX_BLOCKS], timeout
